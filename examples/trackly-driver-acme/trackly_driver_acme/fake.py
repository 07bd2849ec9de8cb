"""A local fake of the (made-up) Acme SMS API: the API's whole description, served.

- ``POST /v2/sms``, ``Authorization: Bearer <key>``, JSON ``{"messages": [{"ref", "to", "from", "text",
  "ttl"?, "callback_url"?}]}``, 1-500 messages (``ttl``: seconds Acme may keep a message before delivering it).
  ``200 {"results": [{"ref", "status": "accepted", "id", "parts"} | {"ref", "status": "rejected", "error": {"code",
  "message"}}]}``: each message is accepted or refused on its own (``INVALID_NUMBER``, ``OPTED_OUT``,
  ``EMPTY_TEXT``).
- Errors: ``{"error": {"code", "message"}}`` with 400 (``BAD_REQUEST``, malformed; ``REFUSED``, the whole request
  refused), 401 (``UNAUTHORIZED``), 429 (``RATE_LIMITED``, with ``Retry-After``: nothing was taken), 500
  (``INTERNAL``: Acme says the messages may or may not have been taken). A proxy in front answers 502-504 in HTML.
- Delivery reports: ``POST <callback_url>`` with ``{"reports": [{"ref", "id", "status", "error_code", "at"}]}``;
  ``status`` is ``queued``, ``sent`` (intermediate), ``delivered``, ``failed``, ``expired``, ``rejected`` or ``spam``.
- Inbound messages: ``POST <inbound url>`` with ``{"id", "from", "to", "text"}``.

Everything else (the ledger of accepted messages, scripted failures such as ``5xx_after`` or ``accept_then_reset``,
the remote control of ``trackly fake-provider acme``) comes from :class:`FakeProvider`.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, ClassVar

import orjson
from aiohttp import web

from trackly_exec.testing.fakes.base import (
    FakeBadRequest,
    FakeProvider,
    LedgerEntry,
    Rejection,
    ReportRequest,
    Submitted,
    gateway_error,
    json_answer,
)

DEFAULT_KEY = "acme-test-key"
MESSAGES = {
    "INVALID_NUMBER": "The 'to' number is not a valid phone number",
    "OPTED_OUT": "The recipient opted out",
    "EMPTY_TEXT": "The text is empty",
    "REFUSED": "Request refused",
}
_STATUSES = {"undelivered": "failed", "pending": "queued"}  # the canonical outcomes in Acme's words


def acme_error(status: int, code: str, message: str = "") -> web.Response:
    return json_answer({"error": {"code": code, "message": message or MESSAGES.get(code, code)}}, status=status)


class AcmeFake(FakeProvider):
    """Acme SMS fake."""

    name: ClassVar[str] = "acme"
    default_reject_code: ClassVar[str] = "INVALID_NUMBER"

    def __init__(self, api_key: str = DEFAULT_KEY, report_url: str | None = None, **kwargs: Any) -> None:
        super().__init__(report_url=report_url, **kwargs)
        self.api_key = api_key

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/v2/sms", self.handle_send)

    def check_auth(self, request: web.Request) -> web.Response | None:
        if request.headers.get("Authorization") == f"Bearer {self.api_key}":
            return None
        return acme_error(401, "UNAUTHORIZED", "Missing or wrong API key")

    def parse_submission(self, request: web.Request, body: bytes) -> list[Submitted]:
        try:
            messages = orjson.loads(body)["messages"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            raise FakeBadRequest(acme_error(400, "BAD_REQUEST", 'Body must be {"messages": [...]}')) from None
        if not isinstance(messages, list) or not 1 <= len(messages) <= 500:
            raise FakeBadRequest(acme_error(400, "BAD_REQUEST", "1 to 500 messages per request"))
        items = []
        for k, m in enumerate(messages):
            if not isinstance(m, dict) or not isinstance(m.get("ref"), str) or not isinstance(m.get("from"), str):
                raise FakeBadRequest(acme_error(400, "BAD_REQUEST", f"messages[{k}] needs a ref and a from"))
            to, text = m.get("to"), m.get("text")
            item = Submitted(m["ref"], str(to), str(text or ""), m["from"], m.get("callback_url"), k)
            ttl = m.get("ttl")
            item.valid_for = ttl if type(ttl) is int and ttl >= 1 else None
            if not isinstance(to, str) or not to.startswith("+") or not to[1:].isdigit():
                item.invalid = "INVALID_NUMBER"
            elif not text:
                item.invalid = "EMPTY_TEXT"
            items.append(item)
        return items

    def accepted_response(self, entries: list[LedgerEntry], rejections: list[Rejection]) -> web.Response:
        accepted = [
            {"ref": e.message_id, "status": "accepted", "id": e.provider_message_id, "parts": e.segments}
            for e in entries
        ]
        return json_answer({"results": accepted + [self._rejected(r.item, r.code) for r in rejections]})

    @staticmethod
    def _rejected(item: Submitted, code: str) -> dict[str, Any]:
        return {
            "ref": item.message_id,
            "status": "rejected",
            "error": {"code": code, "message": MESSAGES.get(code, code)},
        }

    def reject_response(self, items: list[Submitted], code: str | None) -> web.Response:
        if code is None or code == "REFUSED":  # the whole request refused
            return acme_error(400, "REFUSED")
        return json_answer({"results": [self._rejected(i, code) for i in items]})

    def throttled_response(self, retry_after: float | None) -> web.Response:
        resp = acme_error(429, "RATE_LIMITED", "Too many requests")
        if retry_after is not None:
            resp.headers["Retry-After"] = f"{retry_after:g}"
        return resp

    def server_error_response(self, status: int = 500) -> web.Response:
        return acme_error(500, "INTERNAL", "Something went wrong") if status == 500 else gateway_error(status)

    def report_requests(self, url: str, reports: list[tuple[LedgerEntry, str, str | None]]) -> list[ReportRequest]:
        at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        items = [
            {
                "ref": e.message_id,
                "id": e.provider_message_id,
                "status": _STATUSES.get(s, s),
                "error_code": err,
                "at": at,
            }
            for e, s, err in reports
        ]
        return [ReportRequest(url, orjson.dumps({"reports": items}), {"Content-Type": "application/json"})]

    def inbound_request(self, url: str, from_number: str, to_number: str, text: str) -> ReportRequest:
        body = {
            "id": self.next_provider_id(Submitted(None, to_number, text, from_number)),
            "from": from_number,
            "to": to_number,
            "text": text,
        }
        return ReportRequest(url, orjson.dumps(body), {"Content-Type": "application/json"})

    def driver_settings(self) -> dict[str, Any]:
        return {"base_url": self.url, "api_key": self.api_key}

    def wrong_credentials(self) -> dict[str, Any]:
        return {"api_key": "not-the-key"}
