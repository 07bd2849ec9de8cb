"""``FakeProvider``: the common part of every local provider fake (aiohttp on 127.0.0.1).

A fake checks authentication and request shape as the real API does, records every accepted message in
its :attr:`~FakeProvider.ledger` (the ground truth tests count sends against), can be scripted per request,
and posts delivery reports in the provider's own format to the URL each request carried::

    fake = InfobipFake(api_key="k")
    await fake.start()                       # fake.url -> http://127.0.0.1:<port>
    fake.script(Behaviour("429", retry_after=1), Behaviour("5xx_after"))   # next two requests, then "ok"
    fake.dlr_outcome = lambda entry: "delivered"
    ...
    await fake.flush_reports()               # burst mode: post pending delivery reports now
    assert fake.accepted_counts()[message_id] == 1
    await fake.stop()

Behaviours: ``ok``; ``reject`` (every message of the request refused, ``code`` optional); ``429``
(``retry_after`` seconds in ``Retry-After``); ``5xx_before`` (a 5xx, nothing recorded); ``5xx_after``
(recorded in the ledger, then a 5xx: a retry of it is a duplicate send) -- for both, ``code`` is the HTTP
status (``"500"`` by default; ``"502"``, ``"503"``, ``"504"`` ...), answered in the provider's own error format
where it has one; ``accept_then_hang`` (recorded, never answered); ``accept_then_reset`` (recorded, then the
connection is reset without an answer); ``accept_then_garbage`` (recorded, then HTTP 200 with a body that is
not the provider's format); ``reset_before`` (the request is read, nothing is recorded, the connection is reset:
from the client's side indistinguishable from ``accept_then_reset``); ``slow`` (``delay`` seconds, then ok).
A refused connection (nothing written) needs no mode: point the driver at a closed port. Numbers in
:attr:`reject_numbers` are refused one by one with the provider's per-recipient error code.

Look-ups (the provider's message logs / message list, as the real APIs answer them) are served by the
subclasses from the ledger; :attr:`lookups` counts them, and ``lookup_behaviour`` (``ok``, ``429``,
``5xx_before``) scripts their failures.

``dlr_outcome(entry)`` returns a status for the entry's delivery report: one of ``delivered``,
``undelivered``, ``failed``, ``expired``, ``rejected``, ``spam`` (final: carrier filtering, in each provider's
own terms) or ``sent`` / ``pending`` (intermediate), optionally as ``(status, error_code)``; None posts no report.

Run as its own process (``trackly fake-provider NAME``), it is driven by the remote-control endpoints
``GET /_fake/ledger``, ``POST /_fake/script``, ``POST /_fake/reset`` (plus ``POST /_fake/flush`` and
``POST /_fake/inbound``).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import os
import socket
import struct
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import aiohttp
import orjson
from aiohttp import web

from trackly_exec.errors import TracklyError
from trackly_exec.logs import get_logger
from trackly_exec.store.documents import ConfigTable
from trackly_exec.store.segments import segment_count
from trackly_exec.testing.fakes.control import Behaviour, RemoteControl

log = get_logger(__name__)

FINAL_STATUSES = frozenset({"delivered", "undelivered", "failed", "expired", "rejected", "spam"})
INTERMEDIATE_STATUSES = frozenset({"sent", "pending", "accepted"})

Outcome = str | tuple[str, str | None] | None


@dataclass(slots=True)
class Submitted:
    """One message as parsed from a send request (before acceptance)."""

    message_id: str | None
    to: str
    body: str
    sender: str
    report_url: str | None = None
    index: int = 0
    #: The provider's per-message error code when this message is invalid on its own (the rest go through).
    invalid: str | None = None
    #: The validity period the request asked for, in seconds (None: the provider's default).
    valid_for: int | None = None
    #: The provider's API flavour the request used, where it has several (Infobip's legacy ``v2``); None: its own.
    api: str | None = None


@dataclass(slots=True)
class LedgerEntry:
    """One accepted message."""

    message_id: str | None
    to: str
    body: str
    sender: str
    provider_message_id: str
    accepted_at: dt.datetime
    segments: int = 1
    report_url: str | None = None
    #: The message's current state at the provider (a canonical outcome, as ``dlr_outcome`` returns) and error
    #: code: ``accepted`` until a delivery report was decided for it. Look-ups answer from these.
    status: str = "accepted"
    error: str | None = None
    #: The validity period the request asked for, in seconds (None: the provider's default).
    valid_for: int | None = None
    #: The API flavour of the request (see :attr:`Submitted.api`): its reports take that flavour's shape.
    api: str | None = None


@dataclass(slots=True)
class Rejection:
    """A message of an accepted request refused on its own (per-recipient error)."""

    item: Submitted
    code: str


@dataclass
class ReportRequest:
    """One HTTP request the fake will make to deliver reports or an inbound message."""

    url: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


class FakeBadRequest(TracklyError):
    """Raised by a subclass's parser: answer with this response (the provider's own error envelope)."""

    def __init__(self, response: web.Response) -> None:
        super().__init__(response.status)
        self.response = response


def segments(text: str) -> int:
    """SMS parts of ``text`` as the providers count them (GSM-7 160/153 septets, an escape pair never split across
    two parts; otherwise UCS-2 70/67 code units, a surrogate pair never split): providers.md §4, the product's own
    rule (:func:`trackly_exec.store.segments.segment_count`)."""
    return segment_count(text)


def reset_connection(request: web.Request) -> web.Response:
    """Reset the client's connection (TCP RST, no answer). The returned response is never written."""
    transport = request.transport
    if transport is not None:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
    return web.Response(status=500)


def json_answer(data: Any, status: int = 200) -> web.Response:
    """A JSON answer, as ``web.json_response`` writes it (``application/json; charset=utf-8``), encoded by orjson
    (compact: the standard library's encoder was a tenth of a Twilio fake's CPU per request)."""
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json", charset="utf-8")


def gateway_error(status: int) -> web.Response:
    """What a load balancer in front of an API answers (HTML, not the provider's JSON): 502/503/504."""
    text = {502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout"}.get(status, "Server Error")
    return web.Response(
        status=status, text=f"<html><body><h1>{status} {text}</h1></body></html>", content_type="text/html"
    )


def _default_outcome(entry: LedgerEntry) -> Outcome:
    return "delivered"


class FakeProvider(RemoteControl):
    """Base class of the provider fakes; subclasses speak the provider's wire format."""

    #: Driver entry-point name this fakes (``trackly fake-provider NAME``).
    name: ClassVar[str] = "fake"
    #: The provider's per-recipient refusal code used by ``reject``/``reject_numbers`` when none is given.
    default_reject_code: ClassVar[str] = "rejected"
    #: Whether ``report_url`` also serves requests that name no report URL (an account-level webhook setting).
    report_url_fallback: ClassVar[bool] = True
    #: Reports the provider puts in one webhook POST.
    report_batch: ClassVar[int] = 1
    #: How the provider retries a report or inbound message whose POST failed (no answer, 429 or 5xx): the delays
    #: before each retry, in the provider's minutes (none: it does not retry). A fake's minute lasts
    #: ``retry_minute`` seconds, so a test sees the retries.
    report_retry_minutes: ClassVar[tuple[float, ...]] = ()

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        report_url: str | None = None,
        inbound_url: str | None = None,
        auto_reports: bool = False,
        report_delay: float = 1.0,
        report_concurrency: int = 20,
        retry_minute: float = 1.0,
    ) -> None:
        self.host = host
        self.report_url = report_url
        self.inbound_url = inbound_url
        self.auto_reports = auto_reports
        self.report_delay = report_delay
        self.ledger: list[LedgerEntry] = []
        self.requests = 0
        self.reject_numbers: dict[str, str] = {}
        self.dlr_outcome: Callable[[LedgerEntry], Outcome] = _default_outcome
        self.reports_posted = 0
        self.report_failures: list[tuple[str, str]] = []
        self.lookups = 0
        self._lookup_behaviours: deque[Behaviour] = deque()
        self._counts: Counter[str | None] = Counter()
        self._behaviours: deque[Behaviour] = deque()
        self._default = Behaviour("ok")
        self._pending: deque[tuple[float, LedgerEntry]] = deque()
        self.retry_minute = retry_minute
        #: Failed webhook POSTs waiting for their retry: (due, request, reports in it, retries made).
        self._retries: list[tuple[float, ReportRequest, int, int]] = []
        self._seq = itertools.count(1)
        self._id_prefix = os.urandom(4).hex()
        self._closing = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._report_sem = asyncio.Semaphore(report_concurrency)
        self._runner: web.AppRunner | None = None
        self._client: aiohttp.ClientSession | None = None
        self.port: int | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError("fake not started")
        return f"http://{self.host}:{self.port}"

    def make_app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        self.add_routes(app)
        self.add_remote_control(app)
        return app

    async def start(self, port: int = 0) -> FakeProvider:
        self._closing.clear()
        self._runner = web.AppRunner(self.make_app(), access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, port, reuse_address=True)
        await site.start()
        server: Any = getattr(site, "_server", None)
        self.port = server.sockets[0].getsockname()[1] if server and server.sockets else port
        self._client = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        if self.auto_reports:
            self._spawn(self._report_loop())
        return self

    async def stop(self) -> None:
        self._closing.set()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def __aenter__(self) -> FakeProvider:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- scripting and the ledger ------------------------------------------------------------

    def script(self, *behaviours: Behaviour) -> None:
        """Behaviours for the next requests, consumed in order (then the default)."""
        self._behaviours.extend(behaviours)

    def set_default(self, behaviour: Behaviour) -> None:
        self._default = behaviour

    def script_lookups(self, *behaviours: Behaviour) -> None:
        """Behaviours for the next look-up requests (``ok``, ``429``, ``5xx_before``), then ``ok``."""
        self._lookup_behaviours.extend(behaviours)

    def lookup_failure(self) -> web.Response | None:
        """Count a look-up request; the scripted failure answer for it, or None to answer it."""
        self.lookups += 1
        behaviour = self._lookup_behaviours.popleft() if self._lookup_behaviours else None
        if behaviour is None or behaviour.mode == "ok":
            return None
        if behaviour.mode == "429":
            return self.throttled_response(behaviour.retry_after)
        return self.server_error_response(behaviour.http_status)

    def entries_for(self, message_ids: set[str] | None = None) -> list[LedgerEntry]:
        """Ledger entries (of ``message_ids`` if given), newest first, as a provider's log lists them."""
        out = [e for e in self.ledger if message_ids is None or e.message_id in message_ids]
        return sorted(out, key=lambda e: e.accepted_at, reverse=True)

    def accepted_counts(self) -> Counter[str | None]:
        """How many times each of our message ids was accepted (more than 1 is a duplicate send)."""
        return Counter(self._counts)

    def summary(self) -> dict[str, int]:
        accepted = len(self.ledger)
        unique = len(self._counts)
        return {"accepted": accepted, "unique": unique, "duplicates": accepted - unique, "requests": self.requests}

    def reset(self) -> None:
        self.ledger.clear()
        self._counts.clear()
        self._behaviours.clear()
        self._pending.clear()
        self._retries.clear()
        self._lookup_behaviours.clear()
        self.lookups = 0
        self.reject_numbers.clear()
        self._default = Behaviour("ok")
        self.requests = 0
        self.reports_posted = 0
        self.report_failures.clear()

    def next_provider_id(self, item: Submitted) -> str:
        return f"{self._id_prefix}{next(self._seq):024x}"

    # -- the send path -----------------------------------------------------------------------

    async def handle_send(self, request: web.Request) -> web.StreamResponse:
        """The common send flow: auth, parse, behaviour, ledger, answer."""
        self.requests += 1
        denied = self.check_auth(request)
        if denied is not None:
            return denied
        try:
            items = self.parse_submission(request, await request.read())
        except FakeBadRequest as exc:
            return exc.response
        behaviour = self._behaviours.popleft() if self._behaviours else self._default
        mode = behaviour.mode
        if mode == "slow":
            await asyncio.sleep(behaviour.delay)
        elif mode == "reject":
            return self.reject_response(items, behaviour.code)
        elif mode == "429":
            return self.throttled_response(behaviour.retry_after)
        elif mode == "5xx_before":
            return self.server_error_response(behaviour.http_status)
        elif mode == "reset_before":
            return reset_connection(request)
        entries, rejections = self._accept(items)
        if mode == "5xx_after":
            return self.server_error_response(behaviour.http_status)
        if mode == "accept_then_reset":
            return reset_connection(request)
        if mode == "accept_then_garbage":
            return web.Response(status=200, body=b"<html><body>OK</body></html>", content_type="text/html")
        if mode == "accept_then_hang":
            await self._closing.wait()
            return self.server_error_response(500)
        return self.accepted_response(entries, rejections)

    def _accept(self, items: Sequence[Submitted]) -> tuple[list[LedgerEntry], list[Rejection]]:
        now = dt.datetime.now(dt.UTC)
        entries: list[LedgerEntry] = []
        rejections: list[Rejection] = []
        reject = self.reject_numbers
        due = time.monotonic() + self.report_delay
        fallback = self.report_url if self.report_url_fallback else None
        for item in items:
            if item.invalid is not None:
                rejections.append(Rejection(item, item.invalid))
                continue
            if reject and item.to in reject:
                rejections.append(Rejection(item, reject[item.to]))
                continue
            entry = LedgerEntry(
                item.message_id,
                item.to,
                item.body,
                item.sender,
                self.next_provider_id(item),
                now,
                segments(item.body),
                item.report_url or fallback,
                valid_for=item.valid_for,
                api=item.api,
            )
            entries.append(entry)
            if entry.report_url:
                self._pending.append((due, entry))
        self.ledger.extend(entries)
        self._counts.update(e.message_id for e in entries)
        return entries, rejections

    # -- subclass hooks ----------------------------------------------------------------------

    def add_routes(self, app: web.Application) -> None:
        raise NotImplementedError

    def check_auth(self, request: web.Request) -> web.Response | None:
        """None when the request is authenticated, else the provider's 401 answer."""
        raise NotImplementedError

    def parse_submission(self, request: web.Request, body: bytes) -> list[Submitted]:
        """The messages of a send request; raise :class:`FakeBadRequest` for a malformed one."""
        raise NotImplementedError

    def accepted_response(self, entries: list[LedgerEntry], rejections: list[Rejection]) -> web.Response:
        raise NotImplementedError

    def reject_response(self, items: list[Submitted], code: str | None) -> web.Response:
        raise NotImplementedError

    def throttled_response(self, retry_after: float | None) -> web.Response:
        raise NotImplementedError

    def server_error_response(self, status: int = 500) -> web.Response:
        """The provider's answer with HTTP ``status`` (5xx); see :func:`gateway_error` for statuses it has no
        format for."""
        raise NotImplementedError

    def report_requests(self, url: str, reports: list[tuple[LedgerEntry, str, str | None]]) -> list[ReportRequest]:
        """Delivery-report HTTP requests for ``(entry, status, error_code)`` going to ``url``."""
        raise NotImplementedError

    def inbound_request(self, url: str, from_number: str, to_number: str, text: str) -> ReportRequest:
        raise NotImplementedError

    def inbound_sent(self, from_number: str, to_number: str, text: str) -> None:
        """A contact texted us (a provider that keeps an opt-out of its own, as Twilio does, records it here)."""

    def driver_settings(self) -> ConfigTable:
        """Settings of the matching driver that talk to this fake with valid credentials."""
        raise NotImplementedError

    def wrong_credentials(self) -> ConfigTable:
        """Settings overrides with credentials this fake refuses."""
        raise NotImplementedError

    # -- delivery reports --------------------------------------------------------------------

    async def flush_reports(self, *, due_only: bool = False) -> int:
        """Post pending delivery reports now (all of them, or only those past ``report_delay``).
        Returns how many reports were delivered (HTTP 2xx)."""
        now = time.monotonic()
        again = [(r, n, k) for due, r, n, k in self._retries if not due_only or due <= now]
        self._retries = [x for x in self._retries if due_only and x[0] > now]
        retried = await asyncio.gather(*(self._post_report(r, n, k) for r, n, k in again)) if again else []
        taken: list[LedgerEntry] = []
        while self._pending and (not due_only or self._pending[0][0] <= now):
            taken.append(self._pending.popleft()[1])
        by_url: dict[str, list[tuple[LedgerEntry, str, str | None]]] = {}
        for entry in taken:
            outcome = self.dlr_outcome(entry)
            if outcome is None:
                continue
            status, error = (outcome, None) if isinstance(outcome, str) else outcome
            entry.status, entry.error = status, error
            if entry.report_url is None:
                continue
            by_url.setdefault(entry.report_url, []).append((entry, status, error))
        requests: list[tuple[ReportRequest, int]] = []
        for url, reports in by_url.items():
            for start in range(0, len(reports), self.report_batch):
                chunk = reports[start : start + self.report_batch]
                requests.extend((r, len(chunk)) for r in self.report_requests(url, chunk))
        if not requests:
            return sum(retried)
        done = await asyncio.gather(*(self._post_report(r, n) for r, n in requests))
        return sum(done) + sum(retried)

    async def _post_report(self, req: ReportRequest, count: int, retries: int = 0) -> int:
        async with self._report_sem:
            status = await self.post(req)
        if 200 <= status < 300:
            self.reports_posted += count
            return count
        self.report_failures.append((req.url, f"HTTP {status}" if status else "connection failed"))
        self._retry_later(req, status, count, retries)
        return 0

    def _retry_later(self, req: ReportRequest, status: int, count: int, retries: int) -> None:
        """Schedule the provider's next retry of a webhook POST that failed with ``status`` (0: no answer) after
        ``retries`` retries, when the provider retries such a failure (:attr:`report_retry_minutes`)."""
        schedule = self.report_retry_minutes
        if (status == 0 or status == 429 or status >= 500) and retries < len(schedule):
            due = time.monotonic() + schedule[retries] * self.retry_minute
            self._retries.append((due, req, count, retries + 1))

    async def post(self, req: ReportRequest) -> int:
        """POST one webhook request; the HTTP status, or 0 when it could not be delivered."""
        if self._client is None:
            raise RuntimeError("fake not started")
        try:
            async with self._client.post(req.url, data=req.body, headers=req.headers) as resp:
                await resp.read()
                return resp.status
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            log.warning("fake_webhook_failed", fake=self.name, url=req.url, error=str(exc))
            return 0

    async def _report_loop(self) -> None:
        interval = max(0.02, min(0.25, self.report_delay / 2))
        while not self._closing.is_set():
            await asyncio.sleep(interval)
            now = time.monotonic()
            if (self._pending and self._pending[0][0] <= now) or any(due <= now for due, *_ in self._retries):
                try:
                    await self.flush_reports(due_only=True)
                except Exception as exc:  # keep the loop alive: a bad dlr_outcome must not stop reports
                    log.warning("fake_report_loop_error", fake=self.name, error=repr(exc))

    async def send_inbound(self, from_number: str, to_number: str, text: str, url: str | None = None) -> int:
        """Post an inbound message (a contact texting us) in the provider's format; returns the HTTP status."""
        target = url or self.inbound_url
        if not target:
            raise ValueError("no inbound URL: pass url= or set inbound_url")
        req = self.inbound_request(target, from_number, to_number, text)
        self.inbound_sent(from_number, to_number, text)
        status = await self.post(req)
        self._retry_later(req, status, 0, 0)  # retried like a report (it carries no report: counts 0)
        return status
