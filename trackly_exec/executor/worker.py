"""The per-batch pipeline of the executor: claim -> checks -> rate limit -> billing -> intent -> send -> record.

One call of :meth:`Worker.run_batch` claims one batch of one sending list (see :mod:`claims`) and takes it
to the end. Every store and Redis operation is per batch (or per chunk on rate-limited lists), never per
message:

1. **claim** up to ``claim_batch_size`` due messages (a rate-limited list claims at most
   ``rate_limit_claim_seconds`` of its tokens, so one worker never sits on a long backlog); one read of
   the queue (this process's share of it, see :mod:`peers`) yields candidate documents for ``workers_per_list``
   batches, each claimed conditionally (the documents read stand for the claimed ones: no second read);
2. **checks** (:mod:`checks`): STALE / BLOCKED_CONTENT / CONTACT_BLOCKED are dead-lettered, quiet hours hold
   the message (released with ``not_before`` = the window's next opening);
3. **rate limit** (a rate-limited list): the batch reserves the tokens of all it may send at once, in the order
   this process claimed the list's batches (so a list sends in queue order: a later batch never overtakes an earlier
   one); over ``rate_limit_wait_seconds`` -> RATE_LIMIT_TIMEOUT; limiter unreachable -> release and pause the list.
   The batch is then cut into rounds of ``rate_limit_round_seconds`` of tokens, each of whole chunks of
   ``rate_limit_chunk_seconds`` (the whole remainder, one chunk, when the list is unlimited), each at its slot in
   the batch's tokens. Per round: **billing** (:mod:`billing`; not
   covered -> backoff or BILLING_BLOCKED) -> (pacing wait) -> **re-check** (:func:`checks.recheck`, one store round
   trip per round: contact blocked or unsubscribed since the claim -> CONTACT_BLOCKED, campaign paused -> held by
   the pause, quiet hours begun -> held; all refunded); then per chunk, one chunk's time apart: **admission**
   (rate-limited lists: the list's sends of the last second, every process's, have room for the chunk, or it waits
   and is re-checked; see :mod:`ratelimit`) -> **intent** (fenced ``sending_at``; only what is still held is sent) ->
   **send** (``driver.max_batch_size`` messages per request, each request holding one slot of the process-wide
   pool; transient failures retried with tenacity: exponential backoff with jitter, at least ``Retry-After``, within
   ``retry_max_attempts`` and ``retry_budget_seconds``, each retry taking rate-limit tokens and admission again; the
   admission is then moved to the send's time); the round's sends are **recorded** (:mod:`outcomes`) after its last
   chunk (after a chunk with provider errors at once).

Provider errors (transient failures: 429, 5xx) multiply the list's rate-limit interval; a clean chunk relaxes it.
Transient failures that outlast the retries are a provider storm, not a verdict: those messages and the rest of
the batch are held (``not_before``, at least Retry-After; see :meth:`outcomes.Outcomes.throttle_until`), the list
rests in this process until then, and only staleness (30 min after they were due) or a permanent answer ends them.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import groupby
from typing import TYPE_CHECKING, Any

from pymongo.errors import PyMongoError
from tenacity import AsyncRetrying, retry_if_result, stop_after_attempt, stop_before_delay

from trackly_exec import failpoints
from trackly_exec.app import backoff
from trackly_exec.campaigns import queue
from trackly_exec.drivers.contract import Driver, OutboundMessage, SendResult, TransientFailure, outbound_message
from trackly_exec.errors import TracklyError
from trackly_exec.executor import billing, checks, claims
from trackly_exec.executor.outcomes import Outcomes, throttle_groups
from trackly_exec.executor.ratelimit import Admission, Grant, LimiterUnavailable, RateLimiter
from trackly_exec.logs import get_logger
from trackly_exec.store import quiethours
from trackly_exec.store.documents import ClaimedDoc, Update
from trackly_exec.store.models import FailureReason, SendingList

if TYPE_CHECKING:
    from trackly_exec.app import Trackly

log = get_logger(__name__)


@dataclass
class ListInfo:
    """A sending list as the hot path needs it (cached by the coordinator for a few seconds)."""

    doc: SendingList
    driver: Driver[Any]
    blocked: re.Pattern[str] | None
    window: quiethours.Window

    @property
    def id(self) -> int:
        return self.doc.id


# A consumer of a chunk's one-message requests (Twilio's) keeps its pool slot for up to this many requests in a row
# while other requests wait for one (a wait for a slot per request cost more than the request's own bookkeeping).
HOLD_REQUESTS = 16


#: A chunk's requests that get their pool slot (or their send intent written) longer than this after the chunk's
#: send-time re-check are re-checked again before they go (:meth:`Worker._refresh`): once per this interval per chunk
#: in flight, for what of the chunk has not gone yet (a STOP answered more than this long before a send holds).
LATE_RECHECK_SECONDS = 1.0


@dataclass(frozen=True)
class _Pace:
    """A rate-limited batch's tokens: the first one's slot (``time.time()``), the time between two, the slow-down."""

    at: float
    interval: float
    factor: float


class _Turns:
    """The order in which a rate-limited list's batches of this process take their tokens: the order they were
    claimed (due order), so no later batch's messages overtake an earlier one's. A batch's turn is done once it has
    taken its tokens, or has ended without taking any."""

    def __init__(self) -> None:
        self._next = 0  # the next turn to hand out
        self._first = 0  # the oldest turn not done
        self._done: set[int] = set()
        self._waiting: dict[int, asyncio.Future[None]] = {}  # turn -> woken once every earlier turn is done

    def take(self) -> int:
        turn, self._next = self._next, self._next + 1
        return turn

    async def wait(self, turn: int) -> None:
        """Until every turn before ``turn`` is done."""
        if self._first >= turn:
            return
        waiter = self._waiting.setdefault(turn, asyncio.get_running_loop().create_future())
        try:
            await waiter
        finally:
            self._waiting.pop(turn, None)

    def done(self, turn: int) -> None:
        if turn < self._first or turn in self._done:
            return
        self._done.add(turn)
        while self._first in self._done:
            self._done.discard(self._first)
            self._first += 1
        for waiting, waiter in list(self._waiting.items()):
            if waiting <= self._first and not waiter.done():
                waiter.set_result(None)


def _slot(grant: Grant) -> float:
    """When a grant's tokens may be sent (local ``time.time()``)."""
    return grant.at if grant.at is not None else time.time() + grant.wait


class _Stop(TracklyError):
    """The executor is stopping: give what was not accepted back to the queue."""


@dataclass
class _Fresh:
    """The send-time re-check of one chunk, shared by its requests (see :meth:`Worker._refresh`)."""

    at: float | None  # time.monotonic() of the last re-check (None: not tracked)
    timezones: dict[int, str] = field(default_factory=dict)  # the contacts' stored zones, as read at the claim
    gone: set[str] = field(default_factory=set)  # handed to the driver
    dropped: set[str] = field(default_factory=set)  # found ineligible by a later re-check
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class _ClaimExpiring(TracklyError):
    """The batch's claim would not outlast the request (lost, or not renewed in time): do not send; give back."""


class Worker:
    """Runs batches for every list of one executor process (shared pool, limiter and counters)."""

    def __init__(
        self,
        trackly: Trackly,
        limiter: RateLimiter,
        pool: asyncio.Semaphore,
        stopping: asyncio.Event,
        counts: collections.Counter[str],
        clock: Callable[[], dt.datetime] | None = None,
    ) -> None:
        self.trackly = trackly
        self.db = trackly.db
        self.cfg = trackly.settings.executor
        self.limiter = limiter
        self.pool = pool
        self.stopping = stopping
        self.counts = counts
        self.clock = clock or trackly.now  # the application's clock unless given one
        self.outcomes = Outcomes(trackly, counts)
        self.tokens: dict[str, int] = {}  # claims in progress and their lists (released on shutdown)
        #: claim token -> time.monotonic() of its last stamp (the claim, then each renewal; -inf once lost): a
        #: request goes only while the claim will outlast it (:meth:`lease_holds`)
        self.leases: dict[str, float] = {}
        self.paused: dict[int, float] = {}  # list id -> monotonic time until which it must not be claimed
        self._candidates: dict[int, collections.deque[ClaimedDoc]] = {}  # list id -> due documents read ahead
        #: this process's share of the queue (None: the whole queue); the coordinator sets it from the membership
        self.share: Callable[[], claims.Share | None] = lambda: None
        #: how many executor processes share the queue (1 alone or without a live membership; the coordinator sets it)
        self.executors: Callable[[], int] = lambda: 1
        self._fetching: dict[int, asyncio.Lock] = {}
        #: a rate-limited list's batches take their tokens in the order they were claimed (FIFO: see _Turns)
        self._turns: dict[int, _Turns] = {}

    # -- sizes ------------------------------------------------------------------------------------

    def chunk_size(self, lst: SendingList) -> int:
        if lst.rate_limit_per_minute <= 0:
            return self.cfg.claim_batch_size
        return max(1, int(lst.rate_limit_per_minute / 60 * self.cfg.rate_limit_chunk_seconds))

    def round_size(self, lst: SendingList) -> int:
        """The messages a rate-limited list takes tokens for, bills, re-checks and records at once
        (``rate_limit_round_seconds`` of its rate, whole chunks), sending them chunk by chunk; else one chunk."""
        chunk = self.chunk_size(lst)
        if lst.rate_limit_per_minute <= 0:
            return chunk
        lasts = chunk * 60.0 / lst.rate_limit_per_minute  # a chunk's time (a slow list's one message can last longer)
        return chunk * max(1, int(self.cfg.rate_limit_round_seconds / lasts + 1e-9))

    def claim_limit(self, lst: SendingList) -> int:
        if lst.rate_limit_per_minute <= 0:
            return self.cfg.claim_batch_size
        by_rate = math.ceil(lst.rate_limit_per_minute / 60 * self.cfg.rate_limit_claim_seconds)
        return max(self.chunk_size(lst), min(self.cfg.claim_batch_size, by_rate, self.tokens_within_wait(lst)))

    def tokens_within_wait(self, lst: SendingList) -> int:
        """This process's part of the tokens a rate-limited list grants within ``rate_limit_wait_seconds`` (at least
        1): all of them alone, a 1/N part when N executor processes share the queue (they book the same list's
        tokens, each for the messages of its own share)."""
        tokens = lst.rate_limit_per_minute / 60 * self.cfg.rate_limit_wait_seconds
        return max(1, int(tokens / max(1, self.executors()) + 1e-9))

    def batches_per_list(self, lst: SendingList) -> int:
        """How many batches of a list this process works on at once: ``workers_per_list``, but for a slow list no
        more than its tokens within the wait hold (a 4/min list: 4 batches of 1), so that no batch this process
        claims waits past ``rate_limit_wait_seconds`` behind its own others and ends RATE_LIMIT_TIMEOUT while it
        could have stayed queued. With N executor processes each takes a 1/N part of those tokens, so that together
        they book no more than the wait holds (others' reservations beyond that still can: the timeout's case)."""
        if lst.rate_limit_per_minute <= 0:
            return self.cfg.workers_per_list
        return max(1, min(self.cfg.workers_per_list, self.tokens_within_wait(lst) // self.claim_limit(lst)))

    # -- one batch --------------------------------------------------------------------------------

    async def run_batch(self, info: ListInfo) -> int:
        """Claim and process one batch of ``info``'s list; returns how many messages were claimed."""
        token = claims.new_token(self.trackly.instance)
        self.tokens[token] = info.id
        try:
            n = await self._run(info, token)
        except asyncio.CancelledError:
            raise  # the token stays listed: the coordinator releases it after cancelling
        except Exception:
            log.exception("batch_failed", sending_list_id=info.id)
            self.counts["batch_errors"] += 1
            try:
                await claims.release_tokens(self.db, {token: info.id})
            except Exception as exc:  # the store is gone too: recovery will release it after the claim TTL
                log.error("batch_release_failed", sending_list_id=info.id, error=str(exc))
            self.tokens.pop(token, None)
            self.leases.pop(token, None)
            self.paused[info.id] = time.monotonic() + 1.0
            return 0
        self.tokens.pop(token, None)
        self.leases.pop(token, None)
        return n

    # -- claim leases -----------------------------------------------------------------------------

    @property
    def claim_ttl(self) -> float:
        return self.cfg.claim_ttl_minutes * 60.0

    async def renew_claims(self) -> int:
        """Renew every claim of this process's running batches (``claimed_at`` = now, fenced on each token; the
        coordinator calls it every eighth of the claim TTL), so recovery never takes a live batch for dead however
        long it lasts. A claim found lost (taken over) is marked so, and nothing more of it is sent. Returns the
        claims renewed."""
        now, stamped = self.clock(), time.monotonic()
        renewed = 0
        for token, list_id in list(self.tokens.items()):
            if token not in self.leases:  # not claimed yet
                continue
            held = await claims.renew(self.db, list_id, token, now)
            if token in self.leases:  # (still running)
                self.leases[token] = stamped if held else -math.inf
                renewed += bool(held)
        return renewed

    def lease_holds(self, token: str | None, timeout: float) -> bool:
        """Whether claim ``token`` will still be this process's when a request of up to ``timeout`` seconds started
        now ends, with a tenth of the TTL to spare (for the clocks of other processes' recovery sweeps): its last
        stamp (claim or renewal) is recent enough. False once it is lost or stale (the event loop stalled, the
        store unreachable for the renewals): nothing more of it may be sent, recovery owns it."""
        stamped = self.leases.get(token) if token is not None else None
        if stamped is None:
            return True  # not a tracked batch claim
        ttl = self.claim_ttl
        # (a request timeout the configuration allows beyond half the TTL, a list's own driver settings, counts as
        # half of it: never a batch that can send nothing and is claimed again and again)
        return time.monotonic() - stamped + min(timeout, ttl / 2) < ttl * 0.9

    async def _run(self, info: ListInfo, token: str) -> int:
        lst = info.doc
        now, stamped = self.clock(), time.monotonic()
        docs, turn = await self._claim(lst, token, now)
        if not docs:
            return 0
        turns = self._turns.get(lst.id)
        try:
            return await self._run_claimed(info, token, docs, now, stamped, turn)
        finally:
            if turns is not None and turn is not None:
                turns.done(turn)  # (already, once it took its tokens; or without taking any)

    async def _run_claimed(
        self, info: ListInfo, token: str, docs: list[ClaimedDoc], now: dt.datetime, stamped: float, turn: int | None
    ) -> int:
        lst = info.doc
        self.leases[token] = stamped  # the claim's stamp is ``now``
        failpoints.hit("after_claim")
        self.counts["claimed"] += len(docs)
        verdict = await checks.evaluate(
            self.db,
            docs,
            now,
            stale_after=dt.timedelta(minutes=self.cfg.stale_after_minutes),
            blocked=info.blocked,
            window=info.window,
            default_tz=lst.quiet_hours.default_timezone,
        )
        if verdict.hold:
            groups: list[tuple[list[str], dt.datetime, Update]] = [
                ([d["_id"] for d, _ in grp], nb, {})
                for nb, grp in groupby(sorted(verdict.hold, key=lambda h: h[1]), key=lambda h: h[1])
            ]
            self.counts["held.quiet_hours"] += await claims.hold(self.db, token, groups)
        if verdict.early:
            by_due: dict[dt.datetime, list[str]] = {}
            for d, due in verdict.early:
                by_due.setdefault(due, []).append(d["_id"])
            self.counts["held.not_due"] += await claims.hold(self.db, token, [(i, u, {}) for u, i in by_due.items()])
        await self.outcomes.fail_unsent(token, verdict.fail, now)
        send = verdict.send
        size = self.round_size(lst)
        paused: set[int] = set()  # campaigns a re-check of this batch found paused
        pace: _Pace | None = None
        if lst.rate_limit_per_minute > 0 and send:
            # the whole batch's tokens at once, in claim order: a list's messages go in the order they were queued
            # (batches taking tokens round by round interleaved them: a later batch's rounds overtook an earlier's)
            turns = self._turns.get(lst.id)
            if turns is not None and turn is not None:
                await turns.wait(turn)
            grant = await self._tokens(lst, len(send))
            if turns is not None and turn is not None:
                turns.done(turn)
            if grant is None:
                self.counts["released"] += await claims.release(self.db, token, [([d["_id"] for d in send], {})])
                return len(docs)
            if not grant.granted:
                detail = (
                    f"no rate-limit token within {self.cfg.rate_limit_wait_seconds:g}s "
                    f"(next in {grant.wait:.1f}s at {lst.rate_limit_per_minute}/min, slow-down x{grant.factor:g})"
                )
                await self.outcomes.fail_unsent(
                    token, [(d, FailureReason.RATE_LIMIT_TIMEOUT, detail) for d in send], self.clock()
                )
                return len(docs)
            pace = _Pace(_slot(grant), 60.0 / lst.rate_limit_per_minute * grant.factor, grant.factor)
        start = 0
        while start < len(send):
            step = (
                "release"
                if self.stopping.is_set()
                else await self._chunk(
                    info,
                    token,
                    send[start : start + size],
                    send[start + size :],
                    verdict.timezones,
                    paused,
                    pace.at + start * pace.interval if pace is not None else None,
                    pace.factor if pace is not None else 1.0,
                )
            )
            if step == "release":
                rest = [d["_id"] for d in send[start:]]
                self.counts["released"] += await claims.release(self.db, token, [(rest, {})])
            if step != "next":
                break
            start += size
            later = [d for d in send[start:] if d.get("campaign_id") in paused] if paused else []
            if later:  # held at once, not round by round (each waiting for rate-limit tokens it would not use)
                await self._hold_paused(token, later, self.clock())
                send = send[:start] + [d for d in send[start:] if d.get("campaign_id") not in paused]
        return len(docs)

    async def _claim(self, lst: SendingList, token: str, now: dt.datetime) -> tuple[list[ClaimedDoc], int | None]:
        """Claim one batch from this list's candidates (re-read from the queue when they run out); with its turn
        among the list's batches to take rate-limit tokens (None: not rate-limited, or nothing claimed).

        One claim at a time per list in this process (a claim is one round trip; the batch's work after it runs
        concurrently): so a re-read of the queue never returns candidates another batch of this process is still
        claiming, and each due message is read about once."""
        limit = self.claim_limit(lst)
        async with self._fetching.setdefault(lst.id, asyncio.Lock()):
            for _ in range(3):  # candidates may all have been taken by another process meanwhile
                candidates = await self._candidates_for(lst.id, now, limit)
                if not candidates:
                    return [], None
                docs, reads = await claims.claim_docs(self.db, candidates, token, now)
                self.counts["queue_reads"] += reads
                if docs:
                    if lst.rate_limit_per_minute <= 0:
                        return docs, None
                    return docs, self._turns.setdefault(lst.id, _Turns()).take()
                self.counts["empty_claims"] += 1
                self._candidates.get(lst.id, collections.deque()).clear()  # stale: read the queue again
            return [], None

    async def _candidates_for(self, list_id: int, now: dt.datetime, limit: int) -> list[ClaimedDoc]:
        """Up to ``limit`` candidate documents; one queue scan serves ``workers_per_list`` batches."""
        pending = self._candidates.setdefault(list_id, collections.deque())
        if not pending:
            docs = await claims.find_due(self.db, list_id, now, limit * self.cfg.workers_per_list, self.share())
            self.counts["queue_reads"] += len(docs)
            pending.extend(docs)
        return [pending.popleft() for _ in range(min(limit, len(pending)))]

    async def _chunk(
        self,
        info: ListInfo,
        token: str,
        chunk: Sequence[ClaimedDoc],
        rest: Sequence[ClaimedDoc],
        timezones: dict[int, str] | None = None,
        paused: set[int] | None = None,
        at: float | None = None,
        factor: float = 1.0,
    ) -> str:
        """Bill, (pacing wait,) re-check, then per pacing chunk admit, mark intent and send; record.

        ``chunk`` is one round (:meth:`round_size`): a rate-limited list bills and re-checks a round at once and
        sends it in pacing chunks (:meth:`chunk_size`) one ``chunk`` of time apart from ``at`` (its slot in the
        batch's tokens, taken by :meth:`_run_claimed`; ``factor`` the provider-error slow-down they were taken
        with), each admitted to the send window and marked with its own send intent right before it goes; the
        records of a round are written once, after its last chunk (at once when a chunk met provider errors, so a
        storm holds the list as soon as it shows). An unlimited list's round is one chunk.

        Returns ``"next"`` (go on), ``"release"`` (stop; give back what of this round was not sent, and the rest)
        or ``"done"`` (stop; the rest is already dealt with).
        """
        lst = info.doc
        limited = lst.rate_limit_per_minute > 0
        now = self.clock()
        deb = await billing.debit(self.db, lst.account_id, chunk, lst.price_per_segment)
        if deb.blocked:
            await self._billing_blocked(token, deb.blocked, now)
            if (alert := self.outcomes.billing_blocked(lst.account_id, lst.id, len(deb.blocked))) is not None:
                await self.outcomes.publish([alert])
        if not deb.charged:
            return "next"
        if not deb.blocked and (covered := self.outcomes.billing_covered(lst.account_id)) is not None:
            await self.outcomes.publish([covered])
        pending = deb.charged  # billed, neither sent nor ended yet
        step = self.chunk_size(lst) if limited else len(pending)
        spacing = step * 60.0 / lst.rate_limit_per_minute * factor if limited else 0.0
        sent: list[ClaimedDoc] = []  # sent since the last records
        results: dict[str, SendResult] = {}
        requeue: set[str] = set()
        errors = False
        recheck = True  # the whole round before its first chunk; a chunk again after waiting for the window
        checked = time.monotonic()  # when the last re-check was

        async def refund(docs: Sequence[ClaimedDoc]) -> None:
            await billing.adjust(self.db, lst.account_id, sum(deb.costs.get(d["_id"], 0.0) for d in docs))

        async def record() -> dt.datetime | None:
            nonlocal sent, results, requeue
            if not sent:
                return None
            until = await self.outcomes.record_sends(info, token, sent, results, deb.costs, self.clock(), requeue)
            sent, results, requeue = [], {}, set()
            return until

        async def give_back() -> str:
            """Stop this round: record what went, refund what did not (it has no intent yet: it is released)."""
            await refund(pending)
            await record()
            return "release"

        while pending:
            admitted: Admission | None = None
            while True:
                if at is not None and at > time.time():  # pacing: billed before the wait, so only the re-check,
                    self.counts["limiter_waits"] += 1  # the admission and the intent stand between waking and sending
                    if await self._sleep(at - time.time()):
                        return await give_back()
                    now = self.clock()
                if recheck or time.monotonic() - checked > self.cfg.rate_limit_round_seconds:
                    # (again when the round outlasts its time: a provider-error slow-down stretches the pace)
                    pending = await self._recheck(info, token, pending, deb.costs, now, timezones, paused)
                    recheck, checked = False, time.monotonic()
                if not pending or not limited:
                    break
                # Admitted to the list's send window right before the intent: a chunk woken late (a stalled event
                # loop, a starting process) sends late only if the last second of the list's sends, in every
                # process, has room for it; otherwise it waits until it has (and is re-checked after that wait).
                try:
                    admitted = await self.limiter.admit(
                        lst.id, min(step, len(pending)), lst.rate_limit_per_minute, step
                    )
                except LimiterUnavailable:
                    self.paused[lst.id] = time.monotonic() + 1.0
                    self.counts["limiter_unavailable"] += 1
                    return await give_back()
                if admitted.wait <= 0:
                    break
                self.counts["rate_window_waits"] += 1
                at = time.time() + admitted.wait
                recheck = True
            if not pending:
                break
            part, pending = pending[:step], pending[step:]
            now = self.clock()
            try:
                held = await claims.mark_intent(self.db, [d["_id"] for d in part], token, now)
            except PyMongoError as exc:
                # The intent may have been written with its answer lost (fault matrix row 7), but nothing of
                # ``part`` went: take the intent back, then refund and give back the round like any unsent part.
                # Should the store not answer that either, the batch fails and recovery decides (NO_RESPONSE).
                log.warning("intent_unconfirmed", sending_list_id=lst.id, messages=len(part), error=str(exc)[:200])
                await claims.withdraw_intent(self.db, [d["_id"] for d in part], token)
                self.counts["intent_withdrawn"] += len(part)
                pending = [*part, *pending]
                return await give_back()
            if len(held) < len(part):
                lost = [d for d in part if d["_id"] not in held]
                await refund(lost)
                self.counts["claim_lost_before_send"] += len(lost)
                log.warning("claim_lost_before_send", sending_list_id=lst.id, lost=len(lost))
            to_send = [d for d in part if d["_id"] in held]
            if not to_send:
                await self._mark_sent(lst, admitted, 0, None)
            else:
                failpoints.hit("after_intent")
                started: list[float] = []
                got, again, had_errors = await self._send(info, to_send, started, token, checked, timezones)
                # the send window holds when they went (the first request), not when they were admitted
                await self._mark_sent(lst, admitted, len(to_send) if started else 0, started[0] if started else None)
                sent += to_send
                results.update(got)
                requeue |= again
                errors = errors or had_errors
                if had_errors:  # recorded at once: a provider storm holds the list before its next chunk
                    now = self.clock()
                    held_until = await record()
                    if held_until is not None:  # hold what is left of the round and of the batch, let the list rest
                        await refund(pending)
                        left = [*pending, *rest]
                        if left:
                            self.counts["held.provider"] += await claims.release(
                                self.db, token, throttle_groups(left, held_until)
                            )
                        self.paused[lst.id] = time.monotonic() + max(0.0, (held_until - now).total_seconds())
                        return "done"
            if at is not None:
                at += spacing  # the next chunk's moment in the round's slot
            if pending and self.stopping.is_set():  # no intent yet on what is left: it goes back to the queue
                return await give_back()
        await record()
        if not errors and factor > 1 and limited:
            with contextlib.suppress(LimiterUnavailable):
                await self.limiter.relax(lst.id)
        return "next"

    async def _recheck(
        self,
        info: ListInfo,
        token: str,
        docs: list[ClaimedDoc],
        costs: dict[str, float],
        now: dt.datetime,
        timezones: dict[int, str] | None,
        paused: set[int] | None = None,
    ) -> list[ClaimedDoc]:
        """The send-time re-check (:func:`checks.recheck`) of a billed chunk, just before its send intent.

        What changed since the claim takes effect here, fenced on this claim and refunded: a contact blocked or
        unsubscribed (a STOP) ends CONTACT_BLOCKED; a campaign paused meanwhile is held like the pause holds it
        (``queue.PAUSED_UNTIL``, ``paused``: resume makes it due again); outside quiet hours now, held until the
        window opens. Returns what may be sent.
        """
        lst = info.doc
        rc = await checks.recheck(
            self.db, docs, now, window=info.window, default_tz=lst.quiet_hours.default_timezone, timezones=timezones
        )
        if len(rc.send) == len(docs):
            return rc.send
        dropped = [d for d, _ in rc.blocked] + [d for d, _ in rc.hold] + rc.paused
        await billing.adjust(self.db, lst.account_id, sum(costs.get(d["_id"], 0.0) for d in dropped))
        if rc.hold:
            self.counts["held.quiet_hours"] += await claims.release(
                self.db,
                token,
                [
                    ([d["_id"] for d, _ in grp], {"not_before": nb})
                    for nb, grp in groupby(sorted(rc.hold, key=lambda h: h[1]), key=lambda h: h[1])
                ],
            )
        if rc.paused:
            held = await self._hold_paused(token, rc.paused, now)
            if paused is not None:
                paused |= held
        if rc.blocked:
            log.info("blocked_after_claim", sending_list_id=lst.id, messages=len(rc.blocked))
            await self.outcomes.fail_unsent(
                token,
                [(d, FailureReason.CONTACT_BLOCKED, f"{why} (checked before sending)") for d, why in rc.blocked],
                now,
            )
        return rc.send

    async def _hold_paused(self, token: str, docs: list[ClaimedDoc], now: dt.datetime) -> set[int]:
        """Release messages of a campaign paused since the claim with the pause's own hold; returns the campaigns
        still paused (the batch holds the rest of their messages at once).

        A resume between the re-check and this release would miss them (it makes due what is held when it runs),
        so the campaigns are read again afterwards and what has been resumed meanwhile is made due at once.
        """
        ids = [d["_id"] for d in docs]
        self.counts["held.paused"] += await claims.hold(self.db, token, [(ids, queue.PAUSED_UNTIL, {"paused": True})])
        campaign_ids = sorted({cid for d in docs if (cid := d.get("campaign_id")) is not None})
        still = await checks.paused_campaigns(self.db, campaign_ids)
        resumed = [d["_id"] for d in docs if d["campaign_id"] not in still]
        if resumed:
            await claims.resume(self.db, resumed, now)
        return {int(cid) for cid in still}

    async def _mark_sent(self, lst: SendingList, admitted: Admission | None, sent: int, at: float | None) -> None:
        """Move an admitted chunk's entry in the list's send window to its send at ``at`` (``time.time()``; None and
        ``sent`` 0: nothing went, the room is given back), see :meth:`RateLimiter.mark_sent`."""
        if admitted is not None:
            with contextlib.suppress(LimiterUnavailable):  # sent already: only the window's accuracy is at stake
                await self.limiter.mark_sent(
                    lst.id, admitted, sent, now=None if at is None else self.limiter.clock_at(at)
                )

    async def _tokens(self, lst: SendingList, n: int) -> Grant | None:
        """Reserve ``n`` tokens of a rate-limited list; None when the limiter is unreachable (the list pauses)."""
        try:
            return await self.limiter.acquire(lst.id, n, lst.rate_limit_per_minute, self.cfg.rate_limit_wait_seconds)
        except LimiterUnavailable:
            self.paused[lst.id] = time.monotonic() + 1.0
            self.counts["limiter_unavailable"] += 1
            return None

    async def _billing_blocked(self, token: str, docs: Sequence[ClaimedDoc], now: dt.datetime) -> None:
        expired, first, again = billing.split_blocked(docs, now, dt.timedelta(minutes=self.cfg.billing_ttl_minutes))
        retry_at = now + dt.timedelta(minutes=self.cfg.billing_backoff_minutes)
        self.counts["held.billing"] += await claims.hold(
            self.db,
            token,
            [
                ([d["_id"] for d in first], retry_at, {"billing_blocked_since": now}),
                ([d["_id"] for d in again], retry_at, {}),
            ],
        )
        await self.outcomes.fail_unsent(
            token,
            [
                (
                    d,
                    FailureReason.BILLING_BLOCKED,
                    f"balance insufficient since {(d.get('billing_blocked_since') or now).isoformat()}"  # set: expired
                    f" (over {self.cfg.billing_ttl_minutes:g} min)",
                )
                for d in expired
            ],
            now,
        )

    async def _sleep(self, seconds: float) -> bool:
        """Sleep, waking early when the executor stops. True if it is stopping."""
        if self.stopping.is_set():
            return True
        try:
            await asyncio.wait_for(self.stopping.wait(), timeout=seconds)
        except TimeoutError:
            return False
        return True

    # -- sending ----------------------------------------------------------------------------------

    async def _send(
        self,
        info: ListInfo,
        docs: Sequence[ClaimedDoc],
        started: list[float] | None = None,
        token: str | None = None,
        checked: float | None = None,
        timezones: dict[int, str] | None = None,
    ) -> tuple[dict[str, SendResult], set[str], bool]:
        """Submit ``docs`` in requests of ``max_batch_size``; one final result per message. ``started`` receives the
        ``time.time()`` of each request's first attempt as it is handed to the driver. Each request goes only while
        claim ``token`` will outlast it (:meth:`lease_holds`); the others are given back to the queue. ``checked``:
        the ``time.monotonic()`` of the chunk's re-check; a request that got its pool slot more than
        :data:`LATE_RECHECK_SECONDS` later is re-checked again first (a STOP or a pause meanwhile)."""
        size = max(1, info.driver.max_batch_size)
        default_sender = info.doc.from_number
        build = outbound_message  # plain values: no validation (half pydantic's cost); anything else validated
        valid_for = self._validity(info, timezones or {})
        msgs = [
            build(
                d["_id"],
                d["to_number"],
                d.get("from_number") or default_sender,
                d["body"],
                int(d.get("segments") or 1),
                valid_for(d),
            )
            for d in docs
        ]
        results: dict[str, SendResult] = {}
        requeue: set[str] = set()
        errors = [False]
        by_id = {d["_id"]: d for d in docs}
        fresh = _Fresh(checked, timezones or {})
        requests = [msgs[i : i + size] for i in range(0, len(msgs), size)]
        if len(requests) == 1:
            await self._request(
                info, requests[0], results, requeue, errors, by_id, started=started, token=token, fresh=fresh
            )
            return results, requeue, errors[0]
        # bounded concurrency: as many consumers as the pool has slots, not one task per request (a chunk of
        # one-message requests, Twilio's, would otherwise create a task per message); each consumer keeps its
        # slot from one request to the next (handing it back every HOLD_REQUESTS when others wait, and before a
        # retry's backoff: see _request)
        pending = iter(requests)
        pool = self.pool

        async def consume() -> None:
            slot = [False]  # whether this consumer holds a pool slot
            try:
                for n, batch in enumerate(pending, 1):
                    if slot[0] and n % HOLD_REQUESTS == 0 and pool.locked():
                        slot[0] = False
                        pool.release()  # to the back of the line: the waiters' turn
                    if not slot[0]:
                        await pool.acquire()
                        slot[0] = True
                    await self._request(info, batch, results, requeue, errors, by_id, slot, started, token, fresh)
            finally:
                if slot[0]:
                    pool.release()

        await asyncio.gather(*(consume() for _ in range(min(len(requests), self.cfg.pool_size))))
        return results, requeue, errors[0]

    async def _request(
        self,
        info: ListInfo,
        msgs: list[OutboundMessage],
        results: dict[str, SendResult],
        requeue: set[str],
        errors: list[bool],
        docs: dict[str, ClaimedDoc] | None = None,
        slot: list[bool] | None = None,
        started: list[float] | None = None,
        token: str | None = None,
        fresh: _Fresh | None = None,
    ) -> None:
        """One provider request, retried for the messages that failed transiently (a retry is a new send: what
        became ineligible meanwhile, a STOP or a pause, goes back to the queue instead, see :meth:`_retry_recheck`).

        Each attempt takes a pool slot, unless the caller holds one (``slot == [True]``, :meth:`_send`'s consumers):
        the first attempt then uses it, and it is handed back (``slot[0] = False``) before a retry's backoff."""
        pending = list(msgs)
        last: list[TransientFailure] = []
        timeout = float(getattr(info.driver.settings, "timeout_seconds", 30.0))

        def lease() -> None:
            """Right before the driver is handed the request (the pool slot held): the claim must outlast it."""
            if not self.lease_holds(token, timeout):
                raise _ClaimExpiring()

        async def still_fresh() -> None:
            """The first attempt, its pool slot held: the chunk's re-check, redone when older than
            :data:`LATE_RECHECK_SECONDS` (a long wait for the pool, a slow intent write; see :meth:`_refresh`); what it
            drops goes back to the queue."""
            nonlocal pending
            if last or fresh is None:
                return
            dropped = await self._refresh(fresh, docs or {}, info)
            for m in pending:
                if m.id in dropped:
                    results[m.id] = TransientFailure(message_id=m.id, code="rechecked", detail="re-checked: not sent")
                    requeue.add(m.id)
            pending = [m for m in pending if m.id not in dropped]
            fresh.gone.update(m.id for m in pending)

        async def attempt() -> list[TransientFailure]:
            nonlocal pending, last
            admitted = None
            if last:  # a retry: take rate-limit tokens again so retries never exceed the list's rate
                self.counts["retries"] += len(pending)
                admitted = await self._retry_tokens(info, len(pending))
                zones = fresh.timezones if fresh is not None else {}
                dropped = await self._retry_recheck(pending, docs or {}, info, zones)
                if dropped:
                    for t in last:
                        if t.message_id in dropped:
                            results[t.message_id] = t
                            requeue.add(t.message_id)
                    pending = [m for m in pending if m.id not in dropped]
                    last = [t for t in last if t.message_id not in dropped]
                    if not pending:
                        await self._mark_sent(info.doc, admitted, 0, None)
                        return []
                pending = self._valid_again(info, pending, docs or {}, zones)  # the validity left now, not at first
            if slot is not None and slot[0]:
                await still_fresh()
                if not pending:
                    return []
                lease()
                submitted = time.time()  # no await between this reading and the driver's
                out = await info.driver.submit(pending)
            else:
                async with self.pool:
                    await still_fresh()
                    if not pending:
                        return []
                    lease()
                    submitted = time.time()
                    out = await info.driver.submit(pending)
            if admitted is not None:  # a retry's own admission
                await self._mark_sent(info.doc, admitted, len(pending), submitted)
            elif started is not None:  # the first attempt: the chunk's admission is moved once the chunk has gone
                started.append(submitted)
            if any(r.kind == "accepted" for r in out):
                failpoints.hit("after_provider_accept")
            transient = [r for r in out if isinstance(r, TransientFailure)]
            for r in out:
                if not isinstance(r, TransientFailure):
                    results[r.message_id] = r
            if transient:
                errors[0] = True
                said = transient[-1]
                await self._provider_trouble(info, len(transient), str(said.detail or said.code or "transient"))
                ids = {r.message_id for r in transient}
                pending = [m for m in pending if m.id in ids]
            last = transient
            return transient

        try:
            if not await attempt():  # the common case: one attempt, no retry machinery
                return
        except _ClaimExpiring:
            self._not_sent_claim_expiring(info, pending, results, requeue)
            return
        if slot is not None and slot[0]:  # no slot held through a backoff: each retry takes one
            slot[0] = False
            self.pool.release()

        def wait(attempt_done: int) -> float:
            """Exponential backoff with jitter after ``attempt_done`` attempts, at least the Retry-After hint."""
            hinted = max((r.retry_after or 0.0 for r in last), default=0.0)
            first = self.cfg.retry_initial_backoff_seconds
            return backoff(attempt_done, initial=first, cap=30.0, jitter=(1.0, 2.0), retry_after=hinted)

        async def sleep(seconds: float) -> None:
            if await self._sleep(seconds):
                raise _Stop()

        final = last
        try:
            if self.cfg.retry_max_attempts > 1:
                await sleep(wait(1))
                final = await AsyncRetrying(  # attempts 2..max (the one above was attempt 1)
                    stop=stop_after_attempt(self.cfg.retry_max_attempts - 1)
                    | stop_before_delay(self.cfg.retry_budget_seconds),
                    wait=lambda state: wait(state.attempt_number + 1),
                    sleep=sleep,
                    retry=retry_if_result(bool),
                    retry_error_callback=lambda state: last,
                )(attempt)
        except (_Stop, LimiterUnavailable):
            requeue.update(r.message_id for r in last)
            final = last
        except _ClaimExpiring:
            self._not_sent_claim_expiring(info, pending, results, requeue)
            return
        for r in final:
            results[r.message_id] = r

    def _not_sent_claim_expiring(
        self, info: ListInfo, msgs: Sequence[OutboundMessage], results: dict[str, SendResult], requeue: set[str]
    ) -> None:
        """A request not sent because its claim would not outlast it: given back to the queue (fenced: if recovery
        has taken the claim over, its record stands and reconciliation finds the message was never sent)."""
        for m in msgs:
            results[m.id] = TransientFailure(message_id=m.id, code="claim-expiring", detail="claim expiring: not sent")
            requeue.add(m.id)
        if not self.counts["claim_expiring_unsent"]:  # once per process (then the count, in the metrics)
            log.warning("claim_expiring_not_sent", sending_list_id=info.id, messages=len(msgs))
        self.counts["claim_expiring_unsent"] += len(msgs)

    async def _refresh(self, fresh: _Fresh, docs: dict[str, ClaimedDoc], info: ListInfo) -> set[str]:
        """The ids of the chunk ``docs`` that may no longer go: when its re-check is older than
        :data:`LATE_RECHECK_SECONDS`, what of it has not gone yet is re-checked once (:meth:`_retry_recheck`, and the
        quiet-hours window again, with its margin, on the contacts' zones read at the claim: a loop starved for
        seconds must not carry a message past 21:00), for all of its requests together, and again that long later."""
        if fresh.at is None or time.monotonic() - fresh.at <= LATE_RECHECK_SECONDS:
            return fresh.dropped
        async with fresh.lock:
            if time.monotonic() - fresh.at > LATE_RECHECK_SECONDS:
                fresh.at = time.monotonic()
                waiting = [d for mid, d in docs.items() if mid not in fresh.gone and mid not in fresh.dropped]
                fresh.dropped |= await self._rechecked_out(waiting)
                fresh.dropped |= self._out_of_window(info, waiting, fresh.timezones)
                self.counts["late_rechecks"] += 1
        return fresh.dropped

    def _out_of_window(self, info: ListInfo, docs: Sequence[ClaimedDoc], timezones: dict[int, str]) -> set[str]:
        """The ids among ``docs`` whose quiet-hours window is closed now or closes within
        :data:`checks.QUIET_HOURS_MARGIN` (a test send's ``quiet_hours`` override lifts it). In memory: no store
        read."""
        soon = self.clock() + checks.QUIET_HOURS_MARGIN
        default_tz = info.doc.quiet_hours.default_timezone
        memo: dict[Any, Any] = {}
        out = set()
        for d in docs:
            if "quiet_hours" in (d.get("overrides") or ()):
                continue
            cid = d.get("contact_id")
            tz = timezones.get(cid) if cid is not None else None
            if checks.window_hold(d, tz, default_tz, soon, info.window, memo) is not None:
                out.add(d["_id"])
        if out:
            self.counts["held.quiet_hours_late"] += len(out)
        return out

    async def _retry_recheck(
        self,
        pending: Sequence[OutboundMessage],
        docs: dict[str, ClaimedDoc],
        info: ListInfo,
        timezones: dict[int, str],
    ) -> set[str]:
        """Before a retry (after its backoff and its tokens): the ids whose contact was blocked or unsubscribed, or
        whose campaign was paused, since the chunk's re-check, and those whose quiet-hours window has closed (or closes
        within the margin) or that turned stale meanwhile. Nothing was accepted for them: they are given back to the
        queue (refunded) rather than sent, and the claim-time checks / the next re-check end them CONTACT_BLOCKED or
        STALE or hold them. (A retry skipped the window: messages retried after a 429 went seconds past 21:00.)"""
        mine = [docs[m.id] for m in pending if m.id in docs]
        out = await self._rechecked_out(mine)
        out |= self._out_of_window(info, mine, timezones)
        now, stale_after = self.clock(), dt.timedelta(minutes=self.cfg.stale_after_minutes)
        out |= {d["_id"] for d in mine if checks.is_stale(d, now, stale_after)}
        return out

    def _validity(self, info: ListInfo, timezones: dict[int, str]) -> Callable[[ClaimedDoc], int]:
        """Each message's validity at the provider as of now (:func:`checks.valid_for`: what is left of its
        quiet-hours window and of its freshness), memoised across the messages it is asked for."""
        now, default_tz = self.clock(), info.doc.quiet_hours.default_timezone
        stale_after = dt.timedelta(minutes=self.cfg.stale_after_minutes)
        memo: dict[Any, Any] = {}

        def valid_for(d: ClaimedDoc) -> int:
            tz = timezones.get(d.get("contact_id") or 0)
            return checks.valid_for(d, tz, default_tz, now, info.window, stale_after, memo)

        return valid_for

    def _valid_again(
        self,
        info: ListInfo,
        pending: list[OutboundMessage],
        docs: dict[str, ClaimedDoc],
        timezones: dict[int, str],
    ) -> list[OutboundMessage]:
        """``pending`` with each message's validity period as it is now (a retry goes later than its first attempt)."""
        valid_for = self._validity(info, timezones)
        out = []
        for m in pending:
            valid = valid_for(docs[m.id]) if m.id in docs else m.valid_for
            out.append(m if valid == m.valid_for else m.model_copy(update={"valid_for": valid}))
        return out

    async def _rechecked_out(self, mine: Sequence[ClaimedDoc]) -> set[str]:
        """The ids among ``mine`` whose contact is blocked or unsubscribed now (or, for a message without a contact
        or whose contact stores another spelling of its number, whose number sent STOP on its list), or whose
        campaign is paused."""
        if not mine:
            return set()
        contact_ids = sorted({cid for d in mine if (cid := d.get("contact_id")) is not None})
        campaign_ids = sorted({cid for d in mine if (cid := d.get("campaign_id")) is not None})
        stopped, paused, stopped_numbers = await asyncio.gather(
            checks.blocked_contacts(self.db, contact_ids),
            checks.paused_campaigns(self.db, campaign_ids),
            checks.number_stops(self.db, mine),
        )
        out = {
            d["_id"]
            for d in mine
            if (
                (d.get("contact_id") in stopped or (int(d["sending_list_id"]), d["to_number"]) in stopped_numbers)
                and "opt_out" not in (d.get("overrides") or ())
            )
            or d.get("campaign_id") in paused
        }
        if out:
            self.counts["retry_rechecked_out"] += len(out)
        return out

    async def _retry_tokens(self, info: ListInfo, n: int) -> Admission | None:
        """Tokens for a retry of ``n`` messages: a slot, then the send window (as a chunk's send, see _chunk)."""
        lst = info.doc
        if lst.rate_limit_per_minute <= 0:
            return None
        grant = await self.limiter.acquire(lst.id, n, lst.rate_limit_per_minute, self.cfg.rate_limit_wait_seconds)
        if not grant.granted:
            raise LimiterUnavailable("no rate-limit token for a retry within the wait")
        if grant.wait > 0:
            self.counts["limiter_waits"] += 1
            if await self._sleep(grant.wait):
                raise _Stop()
        while (admitted := await self.limiter.admit(lst.id, n, lst.rate_limit_per_minute, self.chunk_size(lst))).wait:
            self.counts["rate_window_waits"] += 1
            if await self._sleep(admitted.wait):
                raise _Stop()
        return admitted

    async def _provider_trouble(self, info: ListInfo, n: int, last: str = "") -> None:
        """Transient provider errors (``last``: what the provider last said): slow the list down and count them
        toward a burst alert."""
        self.counts["provider_transient"] += n
        if info.doc.rate_limit_per_minute > 0:
            try:
                await self.limiter.penalize(info.id)
                self.counts["slowdowns"] += 1
            except LimiterUnavailable:
                pass
        event = self.outcomes.note_errors(info.id, info.driver.name, n, last)
        if event is not None:
            await self.outcomes.publish([event])
