"""Remote control of a fake run as its own process (``trackly fake-provider NAME``).

``GET /_fake/ledger`` -> ``{"accepted", "unique", "duplicates", "requests", "reports_posted"}`` (``?entries=1``
adds every ledger entry); ``POST /_fake/script`` ``{"behaviours": [{"mode": "429", "retry_after": 1}, ...],
"default": {...}}``; ``POST /_fake/reset``; ``POST /_fake/flush`` (post pending reports now);
``POST /_fake/inbound`` ``{"from", "to", "text"[, "url"]}`` (a contact texting us).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from aiohttp import web

from trackly_exec.store.documents import JsonObject

MODES = frozenset(
    {
        "ok",
        "reject",
        "429",
        "5xx_before",
        "5xx_after",
        "accept_then_hang",
        "accept_then_reset",
        "accept_then_garbage",
        "reset_before",
        "slow",
    }
)


@dataclass
class Behaviour:
    """What the fake does with one send request."""

    mode: str = "ok"
    code: str | None = None
    retry_after: float | None = None
    delay: float = 0.0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown fake behaviour {self.mode!r}; one of {', '.join(sorted(MODES))}")
        if self.mode == "slow" and not self.delay:
            self.delay = 2.0
        if (
            self.mode in ("5xx_before", "5xx_after")
            and self.code is not None
            and not (self.code.isdigit() and 500 <= int(self.code) <= 599)
        ):
            raise ValueError(f"{self.mode}: code is the HTTP status (500-599), not {self.code!r}")

    @property
    def http_status(self) -> int:
        """The HTTP status of the ``5xx_*`` modes."""
        return int(self.code) if self.code and self.code.isdigit() else 500


class RemoteControl:
    """Mixin of :class:`drivers.fake.FakeProvider` (whose state it reads): the ``/_fake/...`` endpoints."""

    def add_remote_control(self, app: web.Application) -> None:
        app.router.add_get("/_fake/ledger", self._rc_ledger)
        app.router.add_post("/_fake/script", self._rc_script)
        app.router.add_post("/_fake/reset", self._rc_reset)
        app.router.add_post("/_fake/flush", self._rc_flush)
        app.router.add_post("/_fake/inbound", self._rc_inbound)

    async def _rc_ledger(self: Any, request: web.Request) -> web.Response:
        data: JsonObject = dict(self.summary())
        data["reports_posted"] = self.reports_posted
        if request.query.get("entries"):
            data["entries"] = [{**asdict(e), "accepted_at": e.accepted_at.isoformat()} for e in self.ledger]
        return web.json_response(data)

    async def _rc_script(self: Any, request: web.Request) -> web.Response:
        try:
            payload = await request.json()
            behaviours = [Behaviour(**b) for b in payload.get("behaviours", [])]
            default = Behaviour(**payload["default"]) if payload.get("default") else None
        except (ValueError, TypeError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        self.script(*behaviours)
        if default is not None:
            self.set_default(default)
        return web.json_response({"queued": len(self._behaviours)})

    async def _rc_reset(self: Any, request: web.Request) -> web.Response:
        self.reset()
        return web.json_response({"reset": True})

    async def _rc_flush(self: Any, request: web.Request) -> web.Response:
        return web.json_response({"posted": await self.flush_reports()})

    async def _rc_inbound(self: Any, request: web.Request) -> web.Response:
        payload = await request.json()
        status = await self.send_inbound(payload["from"], payload["to"], payload["text"], payload.get("url"))
        return web.json_response({"status": status})
