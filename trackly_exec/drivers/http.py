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
* HTTP 408                                            -> :class:`UnknownOutcomeError`, like a 5xx: none of our
  providers documents it, and one sent by a proxy or an edge in front of the provider after forwarding the request
  would not mean "not processed" (RFC 9110's reading, "did not receive a complete request message", is the
  origin's); reconciliation asks the provider
* other HTTP 4xx                                      -> :class:`PermanentSendError`
* HTTP 5xx (500, 502, 503, 504, ...), and 1xx/3xx     -> :class:`UnknownOutcomeError`: the provider may have
  accepted the message before failing (recorded NO_RESPONSE, never re-sent blindly; :mod:`tracking.reconcile`
  asks the provider what happened). A driver may pass ``not_processed=True`` for an answer its provider
  documents as "not processed"; none of the built-in providers documents one for a 5xx (see each driver)
* failures before the request was written (connection refused, DNS, TLS handshake, connect timeout)
                                                      -> :class:`TransientSendError`
* failures after the request was written (read timeout, server disconnect, connection reset, truncated or
  unparsable answer)                                  -> :class:`UnknownOutcomeError`

Sends (:meth:`HttpClient.post`) go through one of two clients, chosen per driver by ``send_client``
(:func:`choose_send_client`; ``"auto"``, the default, takes the keep-alive client unless an HTTP proxy of the
environment applies to the driver's ``base_url`` or the URL carries credentials, then aiohttp):

* ``"aiohttp"``: an aiohttp ``ClientSession`` used as cheaply as aiohttp allows (the body encoded
  once to ``bytes``, the headers prepared once per set of extra headers, one session-level timeout, no redirects
  followed, no trace hooks). An HTTP proxy in the environment (``HTTPS_PROXY``/``HTTP_PROXY``/``NO_PROXY``, as aiohttp's
  ``trust_env`` reads them) is honoured: it is resolved once when the driver starts, with aiohttp's own lookup,
  rather than by ``trust_env=True``, which reads the environment and ``~/.netrc`` in worker threads on every request.
  Whether the request was written is marked by a ``ClientRequest`` subclass when aiohttp starts sending it (the
  moment its ``on_request_headers_sent`` trace hook would fire).
* ``"keepalive"``: a small HTTP/1.1 keep-alive client of our own (:class:`_Pool`): the request is encoded
  once into one ``bytes`` (its head is cached per path) and written in one call, the answer is parsed with nothing
  but ``bytes`` operations, and idle connections are kept for the next request. It costs less CPU per request
  (aiohttp's per-request objects dominate a one-message request such as Twilio's), but speaks HTTP/1.1 only and
  supports no HTTP proxy (hence ``"auto"`` leaves a proxied provider to aiohttp).

Both map outcomes identically (above): from the moment the request is handed to the connection, the provider may
have it (``written``). Look-ups (:meth:`HttpClient.get`) always use aiohttp. Drivers never retry: the executor does,
only transient failures.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import email.utils
import json
import ssl
import zlib
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import urlencode

import aiohttp
import orjson
from aiohttp.helpers import get_env_proxy_for_url
from multidict import CIMultiDict
from yarl import URL

from trackly_exec.drivers.contract import DriverSettings
from trackly_exec.errors import PermanentSendError, TracklyError, TransientSendError, UnknownOutcomeError
from trackly_exec.store.documents import JsonObject as JsonObject  # a request body or a provider's answer

__all__ = [
    "HttpClient",
    "HttpReply",
    "MalformedAnswer",
    "dumps",
    "parse_answer",
    "parse_json",
    "parse_retry_after",
    "raise_for_status",
]


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
        return orjson.loads(body)
    except ValueError:  # orjson is stricter (integers beyond 64 bits, NaN): the standard parser decides
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
    if status == 429 or not_processed:
        raise TransientSendError(detail, code=code, retry_after=reply.retry_after)
    if status == 401:  # the credentials were refused before anything was processed: the account's trouble, not the
        # message's; held (and alerted as a provider-error burst) until the operator fixes the key, never dead-lettered
        raise TransientSendError(f"credentials refused (HTTP 401): {detail}", code=code, retry_after=reply.retry_after)
    if 400 <= status < 500 and status != 408:
        raise PermanentSendError(detail, code=code)
    # 5xx: the provider may have accepted the message before failing; 1xx/3xx: we cannot tell what happened.
    raise UnknownOutcomeError(
        f"HTTP {status} after the request was sent (the provider may have accepted it): {detail}", code=code
    )


def dumps(value: Any) -> bytes:
    """Compact JSON (UTF-8) of a request body."""
    try:
        return orjson.dumps(value)
    except TypeError:  # what orjson refuses (integers beyond 64 bits, non-string keys): the standard encoder
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


#: An idle connection older than this is closed rather than reused (aiohttp's default keep-alive): a server that
#: closed it meanwhile would make a request written onto it an unknown outcome.
KEEPALIVE_SECONDS = 15.0
_MAX_HEAD = 65536
#: The keep-alive client checks its requests' deadlines this often (at most; a tenth of the timeout when shorter).
SWEEP_SECONDS = 0.1


class MalformedAnswer(TracklyError, ValueError):
    """The provider's answer is not HTTP/1.x we can read."""


def _dechunk(buf: bytearray, pos: int) -> tuple[bytes, int] | None:
    """A chunked body starting at ``pos``: ``(body, end)``, or None while incomplete."""
    out = bytearray()
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return None
        try:
            size = int(bytes(buf[pos:eol]).split(b";", 1)[0].strip(), 16)
        except ValueError as exc:
            raise MalformedAnswer("bad chunk size") from exc
        if size < 0:
            raise MalformedAnswer("bad chunk size")
        pos = eol + 2
        if size == 0:
            while True:  # trailer fields up to an empty line
                eol = buf.find(b"\r\n", pos)
                if eol < 0:
                    return None
                if eol == pos:
                    return bytes(out), eol + 2
                pos = eol + 2
        if len(buf) < pos + size + 2:
            return None
        out += buf[pos : pos + size]
        if buf[pos + size : pos + size + 2] != b"\r\n":
            raise MalformedAnswer("bad chunk end")
        pos += size + 2


class Headers(Mapping[str, str]):
    """An answer's header fields, looked up in any case (a repeated field's values joined with ", ")."""

    __slots__ = ("_fields",)

    def __init__(self, fields: dict[str, str]) -> None:
        self._fields = fields  # by lower-case name

    def __getitem__(self, name: str) -> str:
        return self._fields[name.lower()]

    def get(self, name: str, default: Any = None) -> Any:
        return self._fields.get(name.lower(), default)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._fields

    def __iter__(self) -> Iterator[str]:
        return iter(self._fields)

    def __len__(self) -> int:
        return len(self._fields)

    def __repr__(self) -> str:
        return f"Headers({self._fields!r})"


@dataclass(slots=True)
class _Answer:
    status: int
    headers: Headers
    body: bytes
    keep_alive: bool


def parse_answer(buf: bytearray, eof: bool) -> _Answer | None:
    """The first complete HTTP/1.x answer in ``buf`` (interim 1xx answers are skipped and removed), or None while
    it is incomplete; raises :class:`MalformedAnswer` for what is not HTTP."""
    while True:
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if len(buf) > _MAX_HEAD or (eof and buf):
                raise MalformedAnswer("no complete status line and header")
            return None
        lines = bytes(buf[:end]).decode("latin-1").split("\r\n")
        version, _, rest = lines[0].partition(" ")
        code = rest[:3]
        if (
            not version.startswith("HTTP/1.")
            or len(code) != 3
            or not (code.isascii() and code.isdigit())
            or rest[3:4] not in ("", " ")
        ):
            raise MalformedAnswer(f"bad status line {lines[0][:80]!r}")
        status = int(code)
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep or not name or name != name.strip():
                raise MalformedAnswer(f"bad header line {line[:80]!r}")
            name, value = name.lower(), value.strip()
            seen = headers.get(name)
            if seen is None:
                headers[name] = value
            elif name == "content-length":
                if seen != value:
                    raise MalformedAnswer("conflicting Content-Length fields")
            else:
                headers[name] = f"{seen}, {value}"
        start = end + 4
        if 100 <= status < 200 and status != 101:  # interim answer (100 Continue, 103 Early Hints): the answer follows
            del buf[:start]
            continue
        break
    connection = headers.get("connection", "").lower()
    keep = ("close" not in connection) if version == "HTTP/1.1" else ("keep-alive" in connection)
    if status in (204, 304):
        body, used = b"", start
    elif "chunked" in headers.get("transfer-encoding", "").lower():
        got = _dechunk(buf, start)
        if got is None:
            if eof:
                raise MalformedAnswer("truncated chunked body")
            return None
        body, used = got
    elif "content-length" in headers:
        value = headers["content-length"]
        if not (value.isascii() and value.isdigit()):
            raise MalformedAnswer("bad Content-Length")
        used = start + int(value)
        if len(buf) < used:
            if eof:
                raise MalformedAnswer("truncated body")
            return None
        body = bytes(buf[start:used])
    else:  # the body runs to the end of the connection
        if not eof:
            return None
        body, used, keep = bytes(buf[start:]), len(buf), False
    if len(buf) > used:  # bytes beyond the answer: never reuse this connection
        keep = False
    encoding = headers.get("content-encoding", "").lower()
    if encoding in ("gzip", "x-gzip", "deflate") and body:
        try:
            body = zlib.decompress(body, 16 + zlib.MAX_WBITS if "gzip" in encoding else zlib.MAX_WBITS)
        except zlib.error as exc:
            raise MalformedAnswer(f"bad {encoding} body") from exc
    return _Answer(status, Headers(headers), body, keep)


class _Conn(asyncio.Protocol):
    """One keep-alive connection: at most one request in flight, its answer delivered to ``waiter``."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.waiter: asyncio.Future[_Answer] | None = None
        self.closed = False
        self.eof = False
        self.idle_since = 0.0
        self.deadline = 0.0  # of the request in flight (loop time), checked by the pool's sweep

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not asyncio.Transport subclasses

    def data_received(self, data: bytes) -> None:
        if self.waiter is None:  # bytes nobody asked for: this connection cannot carry another request
            self.abort()
            return
        self.buf += data
        self._advance(None)

    def eof_received(self) -> bool:
        self.eof = True
        self._advance(None)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = self.eof = True
        self._advance(exc)

    def _advance(self, exc: Exception | None) -> None:
        waiter = self.waiter
        if waiter is None or waiter.done():
            return
        try:
            answer = parse_answer(self.buf, self.eof)
        except MalformedAnswer as bad:
            waiter.set_exception(bad)
            return
        if answer is not None:
            waiter.set_result(answer)
        elif self.closed:
            waiter.set_exception(exc or ConnectionResetError("the server closed the connection without an answer"))

    @property
    def usable(self) -> bool:
        return not (self.closed or self.eof or self.transport is None or self.transport.is_closing())

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


def _expire(waiter: asyncio.Future[_Answer], total: float) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError(f"no answer within {total:g}s"))


class _Pool:
    """Keep-alive connections to one origin, at most ``limit`` at once; created in the event loop that uses it.

    Requests in flight are timed out by one sweep every ``tick`` seconds while any is in flight (a timer per request
    costs more than the rest of the request's bookkeeping): a request fails between ``timeout_seconds`` and
    ``timeout_seconds + tick`` after it started."""

    def __init__(self, url: URL, limit: int, total: float) -> None:
        self.loop = asyncio.get_running_loop()  # cached: each get_running_loop() is a getpid() system call
        self.host = url.raw_host or ""
        self.port = url.port or (443 if url.scheme == "https" else 80)
        self.ssl: ssl.SSLContext | None = ssl.create_default_context() if url.scheme == "https" else None
        self.slots = asyncio.Semaphore(limit)
        self.idle: list[_Conn] = []
        self.busy: set[_Conn] = set()  # a request in flight on each
        self.total = total
        self.tick = min(SWEEP_SECONDS, total / 10)
        self.sweeping: asyncio.TimerHandle | None = None
        self.closed = False

    def idle_conn(self, now: float) -> _Conn | None:
        """The most recently used idle connection still fit to carry a request, if any."""
        idle = self.idle
        while idle:
            conn = idle.pop()
            if conn.usable and now - conn.idle_since < KEEPALIVE_SECONDS:
                return conn
            conn.abort()
        return None

    async def connect(self, timeout: float) -> _Conn:
        """A new connection (connection errors mapped: nothing sent)."""
        try:
            async with asyncio.timeout(timeout):
                _, conn = await self.loop.create_connection(
                    _Conn, self.host, self.port, ssl=self.ssl, server_hostname=self.host if self.ssl else None
                )
        except TimeoutError as exc:
            raise TransientSendError(f"connect timeout after {timeout:g}s", code="connect-timeout") from exc
        except OSError as exc:  # refused, DNS, TLS handshake: nothing was sent
            raise TransientSendError(f"cannot connect: {type(exc).__name__}: {exc}", code="connect") from exc
        return conn

    def watch(self, conn: _Conn, deadline: float) -> None:
        """Time out ``conn``'s request at ``deadline`` (until :meth:`release`)."""
        conn.deadline = deadline
        self.busy.add(conn)
        if self.sweeping is None:
            self.sweeping = self.loop.call_later(self.tick, self._sweep)

    def _sweep(self) -> None:
        self.sweeping = None
        now = self.loop.time()
        for conn in [c for c in self.busy if c.deadline <= now]:
            self.busy.discard(conn)
            if conn.waiter is not None:
                _expire(conn.waiter, self.total)
        if self.busy:
            self.sweeping = self.loop.call_later(self.tick, self._sweep)

    def release(self, conn: _Conn, keep: bool) -> None:
        self.busy.discard(conn)
        conn.waiter = None
        conn.buf.clear()
        if keep and conn.usable and not self.closed:
            conn.idle_since = self.loop.time()
            self.idle.append(conn)
        else:
            conn.abort()

    def close(self) -> None:
        self.closed = True
        idle, self.idle = self.idle, []
        for conn in idle:
            conn.abort()


#: The current send's "written" mark (one list per :meth:`HttpClient.post` call on the aiohttp client).
_WRITTEN: ContextVar[list[bool] | None] = ContextVar("trackly_http_written", default=None)


class _SendRequest(aiohttp.ClientRequest):
    """aiohttp's request, marking the current send as written when aiohttp starts sending it (where the
    ``on_request_headers_sent`` trace hook fires; a trace config would cost several hooks per request). A proxy's
    CONNECT goes through aiohttp's own request class: a failure there is before the write."""

    async def send(self, conn: Any) -> aiohttp.ClientResponse:
        mark = _WRITTEN.get()
        if mark is not None:
            mark[0] = True
        return await super().send(conn)


def env_proxy(url: URL) -> tuple[URL | None, dict[str, str] | None]:
    """The HTTP proxy the environment asks for ``url`` (``HTTP(S)_PROXY``, ``NO_PROXY``, credentials in the URL or
    ``~/.netrc``: aiohttp's ``trust_env`` lookup), and its ``Proxy-Authorization`` header; ``(None, None)`` for none."""
    try:
        proxy, auth = get_env_proxy_for_url(url)
    except LookupError:
        return None, None
    return proxy, ({"Proxy-Authorization": auth.encode()} if auth is not None else None)


def choose_send_client(setting: str, base: URL, proxy: URL | None) -> str:
    """The send client a driver uses: ``setting`` when it names one; for ``"auto"``, the keep-alive client unless
    aiohttp is needed for ``base``: an HTTP proxy of the environment applies to it (``proxy``), it carries
    credentials (aiohttp sends them as Basic auth), or it is not a plain ``http(s)://host`` URL."""
    if setting != "auto":
        return setting
    plain = base.scheme in ("http", "https") and bool(base.raw_host)
    if proxy is not None or not plain or base.raw_user is not None or base.raw_password is not None:
        return "aiohttp"
    return "keepalive"


class HttpClient:
    """One driver's HTTP client, opened in ``startup()`` and closed in ``shutdown()``: sends (:meth:`post`) on the
    send client chosen for it (:attr:`send_client`: our own keep-alive connections or an aiohttp session), look-ups
    (:meth:`get`) on the aiohttp session."""

    def __init__(self, settings: DriverSettings, headers: Mapping[str, str] | None = None) -> None:
        self.settings = settings
        self.base_url = settings.base_url.rstrip("/")
        self._headers = dict(headers or {})
        for name, value in self._headers.items():
            if any(ch in f"{name}{value}" for ch in "\r\n\0"):
                raise ValueError(f"HTTP header {name!r} contains a line break")
        self._session: aiohttp.ClientSession | None = None
        #: the send client in use (``settings.send_client`` resolved by :func:`choose_send_client` in :meth:`open`)
        self.send_client: str = settings.send_client
        self._pool: _Pool | None = None
        self._proxy: URL | None = None
        self._proxy_headers: dict[str, str] | None = None
        self._urls: dict[str, URL] = {}  # parsed once per path: aiohttp would parse the string on every request
        self._heads: dict[tuple[str, tuple[tuple[str, str], ...]], bytes] = {}  # request heads up to Content-Length
        self._fields: dict[tuple[tuple[str, str], ...], CIMultiDict[str]] = {}  # aiohttp: all headers, per extra

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
        base = URL(self.base_url)
        if base.absolute:
            self._proxy, self._proxy_headers = env_proxy(base)
        self.send_client = choose_send_client(self.settings.send_client, base, self._proxy)
        if self.send_client == "keepalive" and base.scheme in ("http", "https") and base.raw_host:
            self._pool = _Pool(base, self.settings.max_connections, self.settings.timeout_seconds)
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self.settings.max_connections, keepalive_timeout=KEEPALIVE_SECONDS),
            timeout=aiohttp.ClientTimeout(
                total=self.settings.timeout_seconds, sock_connect=self.settings.connect_timeout_seconds
            ),
            headers={"User-Agent": "trackly-exec"},
            skip_auto_headers=("Accept-Encoding",),  # as the keep-alive client: providers answer uncompressed
            request_class=_SendRequest,
            proxy=self._proxy,
        )

    async def close(self) -> None:
        session, self._session = self._session, None
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()
        if session is not None:
            await session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("driver not started: call startup() first")
        return self._session

    def _head(self, path: str, headers: Mapping[str, str] | None) -> bytes:
        """``POST <target> HTTP/1.1`` and every header but Content-Length (cached per path and extra headers)."""
        extra = tuple(headers.items()) if headers else ()
        key = (path, extra)
        head = self._heads.get(key)
        if head is None:
            url = self.url(path)
            host = url.raw_host or ""
            if ":" in host:
                host = f"[{host}]"
            if not url.is_default_port():
                host = f"{host}:{url.port}"
            fields = {"Host": host, "User-Agent": "trackly-exec", **self._headers, **dict(extra)}
            for name, value in fields.items():
                if any(ch in f"{name}{value}" for ch in "\r\n\0"):
                    raise ValueError(f"HTTP header {name!r} contains a line break")
            lines = [f"POST {url.raw_path_qs} HTTP/1.1", *(f"{k}: {v}" for k, v in fields.items())]
            head = ("\r\n".join(lines) + "\r\nContent-Length: ").encode("latin-1")
            if len(self._heads) < 64:
                self._heads[key] = head
        return head

    def _request_fields(self, headers: Mapping[str, str] | None) -> CIMultiDict[str]:
        """The aiohttp client's request headers: the driver's and ``headers`` (prepared once per extra headers)."""
        extra = tuple(headers.items()) if headers else ()
        fields = self._fields.get(extra)
        if fields is None:
            fields = CIMultiDict({**self._headers, **dict(extra)})
            if len(self._fields) < 64:
                self._fields[extra] = fields
        return fields

    async def post(
        self, path: str, *, json_body: Any = None, data: Any = None, headers: Mapping[str, str] | None = None
    ) -> HttpReply:
        """POST and read the whole answer; connection-level failures raise the mapped error family.

        ``json_body`` is sent as compact JSON; ``data`` as given (bytes, with the Content-Type in ``headers``) or
        URL-encoded (a mapping or pairs)."""
        if json_body is not None:
            body = dumps(json_body)
            headers = {"Content-Type": "application/json", **(headers or {})}
        elif isinstance(data, bytes | bytearray):
            body = bytes(data)
        elif data is not None:
            body = urlencode(data).encode("ascii")
            headers = {"Content-Type": "application/x-www-form-urlencoded", **(headers or {})}
        else:
            body = b""
        if self._pool is not None:
            return await self._post_keepalive(self._pool, path, body, headers)
        session = self.session
        if self.settings.send_client == "keepalive":
            raise TransientSendError(f"not an http(s) URL: {self.base_url!r}", code="not-sent")
        mark = [False]
        token = _WRITTEN.set(mark)
        try:
            async with session.post(
                self.url(path),
                data=body,
                headers=self._request_fields(headers),
                allow_redirects=False,  # a 3xx is an unknown outcome, never a second POST
                proxy_headers=self._proxy_headers,
            ) as resp:
                payload = await resp.read()
                return HttpReply(resp.status, resp.headers, payload)
        except aiohttp.ClientConnectorError as exc:  # refused, DNS, TLS handshake, proxy: nothing was sent
            raise TransientSendError(f"cannot connect: {exc}", code="connect") from exc
        except aiohttp.ConnectionTimeoutError as exc:
            raise TransientSendError(f"connect timeout: {exc}", code="connect-timeout") from exc
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            what = type(exc).__name__
            if mark[0]:
                raise UnknownOutcomeError(f"{what} after the request was sent: {exc}", code="no-response") from exc
            raise TransientSendError(f"{what} before the request was sent: {exc}", code="not-sent") from exc
        except Exception as exc:  # anything else aiohttp raises (a request it refuses to build): the same rule
            if mark[0]:
                raise UnknownOutcomeError(f"{type(exc).__name__} after the request was sent: {exc}") from exc
            raise TransientSendError(f"not sent: {type(exc).__name__}: {exc}", code="not-sent") from exc
        finally:
            _WRITTEN.reset(token)

    async def _post_keepalive(
        self, pool: _Pool, path: str, body: bytes, headers: Mapping[str, str] | None
    ) -> HttpReply:
        """:meth:`post` on our own keep-alive connections."""
        request = b"".join((self._head(path, headers), str(len(body)).encode(), b"\r\n\r\n", body))
        loop = pool.loop
        total = self.settings.timeout_seconds
        deadline = loop.time() + total  # one deadline for slot, connection and answer (the pool's sweep enforces it)
        written = False
        conn: _Conn | None = None
        try:
            if pool.slots.locked():
                await asyncio.wait_for(pool.slots.acquire(), total)
            else:
                await pool.slots.acquire()
            try:
                conn = pool.idle_conn(loop.time())
                if conn is None:
                    wait = min(self.settings.connect_timeout_seconds, max(0.0, deadline - loop.time()))
                    conn = await pool.connect(wait)
                transport = conn.transport
                if transport is None:
                    raise ConnectionError("connection without a transport")
                waiter: asyncio.Future[_Answer] = loop.create_future()
                conn.waiter = waiter
                pool.watch(conn, deadline)
                written = True  # from here on the provider may have the request
                transport.write(request)
                try:
                    answer = await waiter
                finally:
                    keep = waiter.done() and not waiter.cancelled() and waiter.exception() is None
                    pool.release(conn, keep and waiter.result().keep_alive)
                    conn = None
            finally:
                pool.slots.release()
            return HttpReply(answer.status, answer.headers, answer.body)
        except TransientSendError:
            raise
        except (TimeoutError, OSError, MalformedAnswer) as exc:
            what = type(exc).__name__
            if written:
                raise UnknownOutcomeError(f"{what} after the request was sent: {exc}", code="no-response") from exc
            raise TransientSendError(f"{what} before the request was sent: {exc}", code="not-sent") from exc
        finally:
            if conn is not None:  # cancelled or failed before the request went out: not reusable
                conn.abort()

    async def get(self, path: str, *, params: Any = None, headers: Mapping[str, str] | None = None) -> HttpReply:
        """GET and read the whole answer (look-ups: idempotent, so any failure only means "ask again later").

        ``params`` may be a mapping or a list of pairs (repeated names). Raises :class:`TransientSendError` when
        the provider could not be reached or answered nothing usable."""
        try:
            async with self.session.get(
                self.base_url + path, params=params, headers={**self._headers, **(headers or {})}
            ) as resp:
                payload = await resp.read()
                return HttpReply(resp.status, resp.headers, payload)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise TransientSendError(f"look-up failed: {type(exc).__name__}: {exc}", code="lookup") from exc
