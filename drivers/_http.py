"""HTTP plumbing shared by the built-in drivers: one session per driver, and the outcome mapping.

The mapping is the safety rule of the whole executor, so it lives in one place:

* HTTP 400/401/403 (and other 4xx except 408/429)  -> :class:`PermanentSendError`
* HTTP 429, 408 and 5xx                             -> :class:`TransientSendError` (``Retry-After`` honoured);
  with the driver setting ``server_errors = "unknown"``, a 5xx other than 503 -> :class:`UnknownOutcomeError`
* connection refused, DNS failure, connect timeout  -> :class:`TransientSendError` (the request was never written)
* read timeout, server disconnect or reset after the request was written -> :class:`UnknownOutcomeError`

Whether the request was written is tracked with an aiohttp trace hook (``on_request_headers_sent``), so a
timeout is only called transient when the provider cannot have seen the request. A 5xx is transient by this
mapping even though a provider may have accepted the message before failing (the fakes' ``5xx_after``
behaviour shows exactly that): the executor bounds such retries, and the fakes' ledger lets tests measure it.
Where a duplicate is worse than a dead letter, ``server_errors = "unknown"`` records such answers NO_RESPONSE
(never re-sent; a later delivery report still resolves them); 503 (the service did not take the request) stays
transient either way.
Drivers never retry: the executor does.
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

from trackly_exec.driver import DriverSettings
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
    reply: HttpReply, *, code: str | None = None, detail: str = "", server_errors: str = "transient"
) -> None:
    """Raise the error family for a non-2xx reply (the common mapping); return on 2xx."""
    status = reply.status
    if 200 <= status < 300:
        return
    detail = detail or f"HTTP {status}"
    code = code or str(status)
    if status >= 500 and status != 503 and server_errors == "unknown":
        raise UnknownOutcomeError(f"HTTP {status} (the provider may have accepted it): {detail}", code=code)
    if status == 429 or status == 408 or status >= 500:
        raise TransientSendError(detail, code=code, retry_after=reply.retry_after)
    if 400 <= status < 500:
        raise PermanentSendError(detail, code=code)
    # 1xx/3xx: we cannot tell what happened to the request.
    raise UnknownOutcomeError(f"unexpected HTTP {status}: {detail}", code=code)


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
                self.base_url + path,
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
