"""Provider webhooks: ``POST /webhooks/{driver}/status[/{token}]`` and ``POST /webhooks/{driver}/inbound[/{token}]``
(``GET`` too, with the parameters in the query string, where the driver says its provider may call that way:
``Driver.get_webhooks``; otherwise 405).

``{driver}`` is a driver *instance* configured under ``[drivers.NAME]`` (anything else: 404). Each request:

1. body larger than ``tracking.webhook_max_body_bytes``: 413 (checked on Content-Length and while reading);
2. a :class:`~drivers.contract.WebhookRequest` with ``url = http.public_url + path + query`` (what Twilio signs)
   and ``path_token`` = the optional last path segment;
3. ``driver.authenticate()``: failure is 403 and nothing changes. It fails closed: an instance with no path
   token, Basic auth or signature refuses everything unless ``allow_unauthenticated_webhooks = true``; the
   daemon generates a token for such an instance on its first run (``data_dir/webhook_tokens.json``,
   ``trackly webhook-urls`` prints the URLs);
4. ``driver.parse_status()`` / ``parse_inbound()``: a malformed body is 400 and nothing changes; entries that name
   nothing (a sender or recipient that is not a number, a report without a message id) are dropped and logged, and
   a request with none usable is a 400;
5. :func:`trackly_exec.tracking.delivery.ingest` (reports for unknown ids: 200, logged, no record; a report for a
   message the executor has not recorded yet is parked and applied once it is, see :mod:`~.parked`) or
   :func:`trackly_exec.tracking.optout.handle_inbound` (the reply, e.g. HELP text, goes back through
   ``driver.inbound_response()``, TwiML for Twilio).

A store failure answers 500, so the provider retries later (ingestion is idempotent).
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from trackly_exec.app import Trackly
from trackly_exec.drivers.contract import DeliveryReport, Driver, InboundMessage, WebhookRequest
from trackly_exec.errors import WebhookAuthError, WebhookError, WebhookFormatError
from trackly_exec.logs import get_logger
from trackly_exec.tracking import delivery, optout

log = get_logger(__name__)


class _TooLarge(WebhookError):
    pass


async def _read_body(request: web.Request, limit: int) -> bytes:
    if request.content_length is not None and request.content_length > limit:
        raise _TooLarge
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(65536):
        size += len(chunk)
        if size > limit:
            raise _TooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def _plain(status: int, text: str) -> web.Response:
    return web.Response(status=status, text=text)


def utf8_text(value: str) -> bool:
    """Whether ``value`` can be written as UTF-8: a lone surrogate cannot (``"\\ud800"``, which JSON's escapes can
    spell and the standard parser lets through; bytes that are not UTF-8, which aiohttp keeps as surrogates)."""
    if value.isascii():
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _storable(item: Any) -> bool:
    """Whether every text of a parsed item can be stored (:func:`utf8_text`)."""
    return all(utf8_text(v) for v in getattr(item, "__dict__", {}).values() if isinstance(v, str))


#: A number as a provider writes one: digits, a leading ``+`` or ``00``, and the usual separators (a short code has
#: three digits or more).
_PHONE_SHAPED = re.compile(r"\+?[0-9][0-9 ().-]{1,30}[0-9]")


def _usable(item: Any) -> str | None:
    """Why a parsed item cannot be applied (None: it can): an inbound message whose sender or recipient is not a
    number (a STOP from it could unsubscribe nobody), a delivery report naming no message."""
    if isinstance(item, InboundMessage):
        for field in ("from_number", "to_number"):
            if not _PHONE_SHAPED.fullmatch(getattr(item, field).strip()):
                return f"{field} is not a phone number"
    elif isinstance(item, DeliveryReport) and not (item.message_id or item.provider_message_id):
        return "no message id"
    return None


def _clean(items: Any, driver: str, kind: str) -> Any:
    """The parsed items that can be stored and applied; the others are dropped and logged (the rest of the request
    still counts). None of them: a malformed request (400, which the provider does not retry), not a store failure
    (500, retried for days)."""
    if not isinstance(items, list):
        return items
    kept = [item for item in items if _storable(item)]
    if len(kept) < len(items):
        log.warning(f"{kind}_unstorable_text", driver=driver, dropped=len(items) - len(kept), kept=len(kept))
        if not kept:
            raise WebhookFormatError("no text of the request is valid Unicode (lone surrogate)")
    why = [(item, _usable(item)) for item in kept]
    bad = [w for _, w in why if w is not None]
    if bad:
        log.warning(f"{kind}_unusable", driver=driver, dropped=len(bad), kept=len(kept) - len(bad), why=bad[0])
        kept = [item for item, w in why if w is None]
        if not kept:
            raise WebhookFormatError(bad[0])
    return kept


class WebhookHandler:
    """The two webhook endpoints of one daemon."""

    def __init__(self, trackly: Trackly) -> None:
        self.trackly = trackly

    async def _prepare(self, request: web.Request, endpoint: str) -> tuple[Driver[Any], WebhookRequest] | web.Response:
        """Size limit, driver lookup, the WebhookRequest and authentication; a Response when refused."""
        name = request.match_info["driver"]
        if name not in self.trackly.drivers.names():
            return _plain(404, "unknown driver")
        try:
            body = await _read_body(request, self.trackly.settings.tracking.webhook_max_body_bytes)
        except _TooLarge:
            log.warning("webhook_too_large", driver=name, content_length=request.content_length)
            return _plain(413, "request body too large")
        try:
            driver = await self.trackly.drivers.get(name)
        except Exception as exc:
            log.error("webhook_driver_unavailable", driver=name, error=str(exc))
            return _plain(404, "unknown driver")
        if request.method == "GET" and endpoint not in driver.get_webhooks:
            return web.Response(status=405, text="method not allowed", headers={"Allow": "POST"})
        try:
            hook = WebhookRequest(
                url=self.trackly.settings.http.public_url + request.raw_path,
                headers=dict(request.headers.items()),
                body=body,
                content_type=request.headers.get("Content-Type", ""),
                path_token=request.match_info.get("token"),
                method=request.method,
            )
        except WebhookFormatError as exc:
            log.warning("webhook_malformed", driver=name, error=str(exc))
            return _plain(400, "malformed request")
        try:
            driver.authenticate(hook)
        except WebhookAuthError as exc:
            # no path in the log: it may carry the (right) path token when another check failed
            log.warning("webhook_forbidden", driver=name, error=str(exc), remote=request.remote)
            return _plain(403, "forbidden")
        return driver, hook

    async def _handle(
        self,
        request: web.Request,
        kind: str,
        what: str,
        parse: Callable[[Driver[Any], WebhookRequest], Any],
        apply: Callable[[Driver[Any], Any], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        """Authenticate, parse (400 when malformed: nothing changes), apply (500 when the store fails)."""
        prepared = await self._prepare(request, "status" if kind == "delivery_report" else "inbound")
        if isinstance(prepared, web.Response):
            return prepared
        driver, hook = prepared
        try:
            items = _clean(parse(driver, hook), driver.name, kind)
        except Exception as exc:  # WebhookFormatError, or a parser tripping over a malformed body
            log.warning(f"{kind}_malformed", driver=driver.name, error=f"{type(exc).__name__}: {exc}")
            return _plain(400, f"malformed {what}")
        try:
            return await apply(driver, items)
        except Exception as exc:
            log.error(f"{kind}_failed", driver=driver.name, items=len(items), error=str(exc))
            return _plain(500, "temporarily unavailable")

    async def status(self, request: web.Request) -> web.StreamResponse:
        async def apply(driver: Driver[Any], reports: Any) -> web.StreamResponse:
            result = await delivery.ingest(self.trackly, driver.name, reports)
            return web.Response(text=json.dumps(result.as_dict()), content_type="application/json")

        return await self._handle(request, "delivery_report", "delivery report", lambda d, h: d.parse_status(h), apply)

    async def inbound(self, request: web.Request) -> web.StreamResponse:
        async def apply(driver: Driver[Any], messages: Any) -> web.StreamResponse:
            answer = driver.inbound_response(await optout.handle_inbound(self.trackly, driver.name, messages))
            return web.Response(
                status=answer.status, body=answer.body, headers={"Content-Type": answer.content_type or "text/plain"}
            )

        return await self._handle(request, "inbound", "inbound message", lambda d, h: d.parse_inbound(h), apply)


def _warn_unauthenticated(trackly: Trackly) -> None:
    """Log each configured instance whose webhooks are refused for want of a credential."""
    for problem in trackly.drivers.auth_problems():
        log.warning("webhook_unauthenticated", driver=problem.split(".")[1], problem=problem)


def setup(app: web.Application, trackly: Trackly) -> None:
    """Add the provider webhook routes."""
    _warn_unauthenticated(trackly)
    handler = WebhookHandler(trackly)
    for path, endpoint in (("status", handler.status), ("inbound", handler.inbound)):
        for route in (f"/webhooks/{{driver}}/{path}", f"/webhooks/{{driver}}/{path}/{{token}}"):
            app.router.add_post(route, endpoint)
            # a provider configured to call by GET (Twilio's inbound URL may be; CM's older status reports):
            # its parameters are the query string, authenticated the same way
            app.router.add_get(route, endpoint, allow_head=False)
