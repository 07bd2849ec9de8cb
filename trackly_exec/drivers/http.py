"""HTTP plumbing shared by the built-in drivers: one session per driver, and the outcome mapping.

The mapping is the safety rule of the whole executor, so it lives in one place. A send request is not
idempotent at any of our providers (Twilio says so of its 500: "If you get a 500 Server Error on these requests,
and you retry the request, it is possible for a customer to receive multiple messages",
https://www.twilio.com/docs/api/errors/20500; Infobip and CM document no idempotency key), so once the request
may have reached the provider, only an answer that says "not processed" may be retried:

* HTTP 2xx                                            -> the driver reads the per-message statuses (a 2xx whose
  body cannot be read is an unknown outcome, decided by each driver)
* HTTP 429                                            -> :class:`TransientSendError` (``Retry-After`` honoured):
  throttled, the provider did not take the request (Twilio 20429: "never processed and always safe to retry")
* HTTP 408                                            -> :class:`TransientSendError`: the server "did not receive a
  complete request message" (RFC 9110 §15.5.9), so it cannot have acted on it
* other HTTP 4xx                                      -> :class:`PermanentSendError`
* HTTP 5xx (500, 502, 503, 504, ...), and 1xx/3xx     -> :class:`UnknownOutcomeError`: the provider may have
  accepted the message before failing (recorded NO_RESPONSE, never re-sent blindly; :mod:`tracking.reconcile`
  asks the provider what happened). A driver may pass ``not_processed=True`` for an answer its provider
  documents as "not processed"; none of the built-in providers documents one for a 5xx (see each driver)
* failures before the request was written (connection refused, DNS, TLS handshake, connect timeout)
                                                      -> :class:`TransientSendError`
* failures after the request was written (read timeout, server disconnect, connection reset, truncated or
  unparsable answer)                                  -> :class:`UnknownOutcomeError`

Whether the request was written is tracked with an aiohttp trace hook (``on_request_headers_sent``): from the
moment the request headers are handed to the socket, the provider may have the request. Drivers never retry:
the executor does, only transient failures.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import json
from collections.abc import Mapping
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import aiohttp
from yarl import URL

from trackly_exec.drivers.contract import DriverSettings
from trackly_exec.errors import PermanentSendError, TransientSendError, UnknownOutcomeError

__all__ = ["HttpClient", "HttpReply", "parse_json", "parse_retry_after", "raise_for_status"]


@dataclass(slots=True)
class HttpReply:
    """A provider's HTTP answer, read in full."""

    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        return parse_json(self.body)

    @property
    def retry_after(self) -> float | None:
        return parse_retry_after(self.headers.get("Retry-After"))


def parse_json(body: bytes) -> Any:
    """The JSON value of ``body``, or None when it is empty or not JSON."""
    if not body:
        return None
    try:
        return json.loads(body)
    except ValueError:
        return None


def parse_retry_after(value: str | None) -> float | None:
    """``Retry-After`` as seconds: delta-seconds or an HTTP date (RFC 9110 §10.2.3)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return max(0.0, (when - dt.datetime.now(dt.UTC)).total_seconds())


def raise_for_status(
    reply: HttpReply, *, code: str | None = None, detail: str = "", not_processed: bool = False
) -> None:
    """Raise the error family for a non-2xx reply (the common mapping above); return on 2xx.

    ``not_processed``: the provider documents this answer as "the request was not processed" (safe to retry)."""
    status = reply.status
    if 200 <= status < 300:
        return
    detail = detail or f"HTTP {status}"
    code = code or str(status)
    if status == 429 or status == 408 or not_processed:
        raise TransientSendError(detail, code=code, retry_after=reply.retry_after)
    if 400 <= status < 500:
        raise PermanentSendError(detail, code=code)
    # 5xx: the provider may have accepted the message before failing; 1xx/3xx: we cannot tell what happened.
    raise UnknownOutcomeError(
        f"HTTP {status} after the request was sent (the provider may have accepted it): {detail}", code=code
    )


async def _on_headers_sent(session: aiohttp.ClientSession, ctx: SimpleNamespace, params: Any) -> None:
    state = ctx.trace_request_ctx
    if state is not None:
        state.written = True


class HttpClient:
    """One aiohttp session per driver, opened in ``startup()`` and closed in ``shutdown()``."""

    def __init__(self, settings: DriverSettings, headers: Mapping[str, str] | None = None) -> None:
        self.settings = settings
        self.base_url = settings.base_url.rstrip("/")
        self._headers = dict(headers or {})
        self._session: aiohttp.ClientSession | None = None
        self._urls: dict[str, URL] = {}  # parsed once per path: aiohttp would parse the string on every request

    def url(self, path: str) -> URL:
        """The parsed URL of ``path`` (cached: a driver's send paths are fixed)."""
        url = self._urls.get(path)
        if url is None:
            url = URL(self.base_url + path)
            if len(self._urls) < 64:
                self._urls[path] = url
        return url

    async def open(self) -> None:
        if self._session is not None:
            return
        trace = aiohttp.TraceConfig()
        trace.on_request_headers_sent.append(_on_headers_sent)
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self.settings.max_connections),
            timeout=aiohttp.ClientTimeout(
                total=self.settings.timeout_seconds, sock_connect=self.settings.connect_timeout_seconds
            ),
            headers=self._headers,
            trace_configs=[trace],
        )

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("driver not started: call startup() first")
        return self._session

    async def post(
        self, path: str, *, json_body: Any = None, data: Any = None, headers: Mapping[str, str] | None = None
    ) -> HttpReply:
        """POST and read the whole answer; connection-level failures raise the mapped error family."""
        state = SimpleNamespace(written=False)
        body: bytes | None = None
        content_type: dict[str, str] = {}
        if json_body is not None:
            body = json.dumps(json_body, separators=(",", ":")).encode()
            content_type = {"Content-Type": "application/json"}
        try:
            async with self.session.post(
                self.url(path),
                data=body if body is not None else data,
                headers={**content_type, **(headers or {})},
                trace_request_ctx=state,
            ) as resp:
                payload = await resp.read()
                return HttpReply(resp.status, resp.headers, payload)
        except aiohttp.ClientConnectorError as exc:  # refused, DNS, TLS handshake: nothing was sent
            raise TransientSendError(f"cannot connect: {exc}", code="connect") from exc
        except aiohttp.ConnectionTimeoutError as exc:
            raise TransientSendError(f"connect timeout: {exc}", code="connect-timeout") from exc
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            what = type(exc).__name__
            if state.written:
                raise UnknownOutcomeError(f"{what} after the request was sent: {exc}", code="no-response") from exc
            raise TransientSendError(f"{what} before the request was sent: {exc}", code="not-sent") from exc

    async def get(self, path: str, *, params: Any = None, headers: Mapping[str, str] | None = None) -> HttpReply:
        """GET and read the whole answer (look-ups: idempotent, so any failure only means "ask again later").

        ``params`` may be a mapping or a list of pairs (repeated names). Raises :class:`TransientSendError` when
        the provider could not be reached or answered nothing usable."""
        try:
            async with self.session.get(self.base_url + path, params=params, headers=dict(headers or {})) as resp:
                payload = await resp.read()
                return HttpReply(resp.status, resp.headers, payload)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise TransientSendError(f"look-up failed: {type(exc).__name__}: {exc}", code="lookup") from exc
