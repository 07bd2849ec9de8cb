"""The customer's delivery-status webhook, delivered at least once from a MongoDB-backed outbox.

Delivery ingestion (:mod:`trackly_exec.tracking.delivery`) writes the events of the *final* delivery states it recorded,
in the same pass, each with a stable event id (``"<message id>:delivery"``): only the report that moved a message
out of ``delivered: None`` creates its event, so duplicates of a report never create a second one. The
:class:`Outbox` component POSTs them, separately from sending and ingestion, so a slow or dead customer endpoint
only ever delays its own events:

- the URL never reaches an internal address (:mod:`trackly_exec.tracking.netguard`): an IP literal is checked before the
  POST and a name's addresses when it is resolved for the connection (a DNS name can change after the URL was
  accepted); a refused URL counts as a failed attempt; ``tracking.webhook_url_allowlist`` admits internal receivers;
- concurrency bounded by ``tracking.outbox_concurrency`` overall and ``tracking.outbox_per_account_concurrency``
  per account (the claim reads past an account at its cap, so its backlog never hides another's); each POST has
  its own timeout (``tracking.outbox_timeout_seconds``), redirects are not followed;
- 2xx is success; anything else is retried with exponential backoff and jitter
  (``outbox_initial_backoff_seconds`` doubling up to ``outbox_max_backoff_seconds``) until the event is
  ``outbox_max_age_hours`` old; then it is marked ``dead`` and a ``webhook_dead`` alert event is published;
- entries are claimed with a lease (:mod:`trackly_exec.store.lease`: ``claimed_by`` token + ``next_attempt_at``
  pushed past the timeout), so several daemons can share one outbox and a crashed one's entries are retried after
  the lease. The lease is one POST's time, but a batch is many POSTs: while an entry's POSTs go its lease is
  renewed (fenced on the token) every quarter of it, so a live worker's entry is never claimed and re-POSTed by
  another (or the same) daemon, and a POST starts only while the lease will outlast it: a worker that stalled or
  lost the store past its lease posts nothing more of the entry (its outcome is then fenced out, and the rest
  continue from the new holder).

Payload, headers, signature and the two document forms (single event, batch): :mod:`tracking.customer_webhook`
(:func:`verify_signature` is re-exported here). A batch is attempted as a whole, at most
``outbox_per_account_concurrency`` POSTs at a time and no new POST after a failure (a dead endpoint costs one
timeout, not a hundred); its failed and unattempted events continue as single-event documents.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from pymongo import UpdateOne
from pymongo.errors import BulkWriteError

from trackly_exec.app import Loop, TaskSet, Trackly, backoff
from trackly_exec.logs import get_logger
from trackly_exec.store import constants as c
from trackly_exec.store.documents import AccountDoc, Filter, JsonObject, OutboxDoc, OutboxEventDoc, Update
from trackly_exec.store.events import Event, EventKind
from trackly_exec.store.lease import Lease, new_token
from trackly_exec.tracking.customer_webhook import (
    DEAD,
    DELIVERED,
    DROPPED,
    PENDING,
    sign,
    single_entry,
    verify_signature,
)
from trackly_exec.tracking.netguard import Allowlist, guarded_connector, refusal

log = get_logger(__name__)

__all__ = ["Outbox", "verify_signature"]

SPLIT = "split"  # a batch whose failed events continue as single-event entries
#: an entry's lease is one POST's timeout plus this; while its POSTs go it is renewed every half of this margin, so
#: it always holds at least one POST's timeout more (a POST starts only then)
LEASE_MARGIN_SECONDS = 30.0
#: Settled entries leave the ``next_attempt_at`` index: the due-scan only ever walks pending entries.
_OFF_SCHEDULE = {"$unset": {"next_attempt_at": ""}}
USER_AGENT = "trackly-exec-webhooks/1"


# --------------------------------------------------------------------------------------------- the component


@dataclass
class _Result:
    """One event's POST (or why it was not attempted)."""

    eid: str
    payload: JsonObject
    ok: bool
    status: int | None = None
    error: str | None = None
    attempted: bool = True


@dataclass
class _Attempt:
    """The outcome of one claimed entry, recorded (fenced on the claim token) in the next batched write."""

    doc: OutboxDoc
    results: list[_Result]
    drop: bool = False


@dataclass
class OutboxCounts:
    delivered: int = 0
    failed: int = 0
    dead: int = 0
    dropped: int = 0
    attempts: int = 0

    def as_dict(self) -> dict[str, int]:
        return {
            "delivered": self.delivered,
            "failed": self.failed,
            "dead": self.dead,
            "dropped": self.dropped,
            "attempts": self.attempts,
        }


class Outbox:
    """Daemon component delivering the customer delivery-status webhooks; ``run_until_idle()`` for tests."""

    name = "outbox"

    def __init__(self, trackly: Trackly) -> None:
        self.trackly = trackly
        self.cfg = trackly.settings.tracking
        self._sem = asyncio.Semaphore(self.cfg.outbox_concurrency)
        self._tasks = TaskSet()  # deliveries in flight
        self._keepers = TaskSet()  # their lease renewals (:meth:`_keep`), one per delivery, cancelled as it ends
        self._results: list[_Attempt] = []
        self._per_account: Counter[int] = Counter()
        self._session: aiohttp.ClientSession | None = None
        self.allow = Allowlist.parse(self.cfg.webhook_url_allowlist)
        self._loop = Loop("outbox", self._tick, self.cfg.outbox_poll_seconds)
        self.counts = OutboxCounts()
        #: an entry is leased by pushing its ``next_attempt_at`` past the POST timeout (and renewed while its POSTs
        #: go: :meth:`_keep`): a crashed daemon's entries are simply due again after it
        self.lease = Lease(
            "claimed_by",
            until="next_attempt_at",
            ttl=dt.timedelta(seconds=self.cfg.outbox_timeout_seconds + LEASE_MARGIN_SECONDS),
        )

    @property
    def col(self) -> Any:
        return self.trackly.db[c.OUTBOX]

    # -- lifecycle ----------------------------------------------------------------------------

    async def _ensure_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.cfg.outbox_timeout_seconds),
                connector=guarded_connector(self.allow, limit=self.cfg.outbox_concurrency, limit_per_host=0),
                headers={"User-Agent": USER_AGENT},
            )
        return self._session

    async def start(self) -> None:
        await self._ensure_session()
        self._loop.start()
        log.info("outbox_started", concurrency=self.cfg.outbox_concurrency)

    async def stop(self, grace: float) -> None:
        await self._loop.stop(grace)
        await self._tasks.stop(grace)
        await self._keepers.stop(0)  # (each delivery cancels its own; none outlives them)
        await self._flush()
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- burst mode ---------------------------------------------------------------------------

    async def run_until_idle(self, now: dt.datetime | None = None) -> dict[str, int]:
        """Deliver every entry due at ``now`` (default: ``trackly.now()``), retries that fall due included, and
        return counts. Failed entries are rescheduled after ``now``, so this always terminates."""
        await self._ensure_session()
        before = self.counts.as_dict()
        while True:
            at = now or self.trackly.now()
            docs = await self._claim(self.cfg.outbox_concurrency * 4, at)
            if not docs:
                break
            await asyncio.gather(*(self._attempt(doc) for doc in docs))
            await self._flush(now)
        after = self.counts.as_dict()
        return {k: after[k] - v for k, v in before.items()}

    # -- the loop -----------------------------------------------------------------------------

    async def _tick(self) -> bool:
        """Start deliveries for due entries; True when the claim filled every free slot (more may be due)."""
        claimed = 0
        try:
            free = self.cfg.outbox_concurrency - len(self._tasks)
            if free > 0:
                docs = await self._claim(free, self.trackly.now())
                claimed = len(docs)
                for doc in docs:
                    self._tasks.spawn(self._attempt(doc), on_done=self._task_done)
            await self._flush()
        except Exception as exc:  # the store may be briefly unreachable: keep polling
            log.warning("outbox_poll_failed", error=str(exc))
        return bool(claimed) and claimed >= self.cfg.outbox_concurrency - len(self._tasks)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("outbox_task_failed", error=str(task.exception()))
        self._loop.wake()

    # -- claim, attempt, record ---------------------------------------------------------------

    async def _claim(self, limit: int, now: dt.datetime) -> list[OutboxDoc]:
        """Lease up to ``limit`` due entries (respecting the per-account cap) to a fresh claim token.

        Due entries are read oldest first, a window of ``limit * 4`` at a time, leaving out the accounts already at
        their cap (in flight here) and, in each further window, every account an earlier window held: one account's
        backlog (a dead endpoint's batch split into thousands of single entries, all due) fills at most its cap,
        never the window, so every other account's due entries are reached in the same claim."""
        if limit <= 0:
            return []
        cap = self.cfg.outbox_per_account_concurrency
        taken: Counter[int] = Counter()
        ids: list[str] = []
        skip = {acc for acc, n in self._per_account.items() if n >= cap}
        while len(ids) < limit:
            due: Filter = {"status": PENDING, "next_attempt_at": {"$lte": now}}
            if skip:
                due["account_id"] = {"$nin": sorted(skip)}
            candidates = (
                await self.col.find(due, {"_id": 1, "account_id": 1})
                .sort("next_attempt_at", 1)
                .limit(limit * 4)
                .to_list(None)
            )
            before = len(ids)
            for cand in candidates:
                acc = cand.get("account_id")
                skip.add(acc)  # the next window reads other accounts' entries
                if self._per_account[acc] + taken[acc] >= cap:
                    continue
                taken[acc] += 1
                ids.append(cand["_id"])
                if len(ids) >= limit:
                    break
            # every due entry was read; or a window gave nothing (each holds an account below its cap: it cannot)
            if len(candidates) < limit * 4 or len(ids) == before:
                break
        if not ids:
            return []
        since = asyncio.get_running_loop().time()  # before the claim: the lease surely holds until since + ttl
        docs: list[OutboxDoc] = await self.lease.claim(
            self.col, {"_id": {"$in": ids}, "status": PENDING}, new_token(self.trackly.instance), now
        )
        assert self.lease.ttl is not None
        accounts = await self._accounts({d["account_id"] for d in docs})
        for doc in docs:
            doc["_account"] = accounts.get(doc["account_id"]) or {}
            doc["_held_until"] = since + self.lease.ttl.total_seconds()
            self._per_account[doc["account_id"]] += 1
        return docs

    async def _accounts(self, ids: set[int]) -> dict[int, AccountDoc]:
        if not ids:
            return {}
        rows = (
            await self.trackly.db[c.ACCOUNTS]
            .find({"_id": {"$in": list(ids)}}, {"webhook_url": 1, "webhook_secret": 1})
            .to_list(None)
        )
        return {r["_id"]: r for r in rows}

    async def _attempt(self, doc: OutboxDoc) -> None:
        """POST the entry's event(s) and queue the outcome for the batched write. Within a batch at most
        ``outbox_per_account_concurrency`` POSTs run at once, and none starts after a failure, nor once the lease
        (renewed meanwhile: :meth:`_keep`) may not outlast it."""
        account = doc.get("_account") or {}
        url = account.get("webhook_url")
        events: list[OutboxEventDoc] = (
            doc["events"] if "events" in doc else [{"id": doc["_id"], "payload": doc["payload"]}]
        )
        keeper = self._keepers.spawn(self._keep(doc), name="outbox-lease")
        try:
            if not url or not str(url).lower().startswith(("http://", "https://")):
                if url:
                    log.warning("outbox_bad_webhook_url", account_id=doc["account_id"])
                self._results.append(_Attempt(doc, [], drop=True))
                return
            secret = account.get("webhook_secret")
            local = asyncio.Semaphore(self.cfg.outbox_per_account_concurrency)
            results: list[_Result] = []
            broken = False

            async def one(event: OutboxEventDoc) -> None:
                nonlocal broken
                async with local:
                    outcome = None
                    if not broken:
                        async with self._sem:
                            if self._holds(doc):  # the lease outlasts this POST: no other worker can start it
                                outcome = await self._post(url, secret, event["id"], event["payload"])
                    if outcome is None:  # after a failure, or the lease ran out (stalled, the store unreachable)
                        broken = True
                        results.append(_Result(event["id"], event["payload"], ok=False, attempted=False))
                        return
                    ok, status, error = outcome
                    broken = broken or not ok
                    results.append(_Result(event["id"], event["payload"], ok, status, error))

            await asyncio.gather(*(one(e) for e in events))
            self._results.append(_Attempt(doc, results))
        finally:
            keeper.cancel()
            self._per_account[doc["account_id"]] -= 1
            if self._per_account[doc["account_id"]] <= 0:
                del self._per_account[doc["account_id"]]

    def _holds(self, doc: OutboxDoc) -> bool:
        """Whether ``doc``'s lease surely lasts one more POST (its timeout)."""
        left = doc.get("_held_until", 0.0) - asyncio.get_running_loop().time()
        return left > self.cfg.outbox_timeout_seconds

    async def _keep(self, doc: OutboxDoc) -> None:
        """Renew ``doc``'s lease (fenced on its claim token) every half of the lease margin until cancelled (the
        entry's POSTs are done). The lease is one POST's time, a batch is many POSTs: without this the batch's
        entry fell due while its POSTs went, was claimed again and re-POSTed whole, and the first attempt's outcome
        was fenced out, over and over. The renewal is stamped on the claim's clock (its ``now`` plus the time since:
        a burst run claims at a given ``now``), so it never moves the lease back. A renewal the store does not
        answer leaves the lease running down (no POST starts once it may have expired); one that finds the entry no
        longer held (taken over after a stall) ends it at once."""
        assert self.lease.ttl is not None
        ttl = self.lease.ttl.total_seconds()
        every = max(0.05, (ttl - self.cfg.outbox_timeout_seconds) / 2)
        token = doc["claimed_by"]
        assert token is not None  # a claimed entry
        clock = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(every)
            t = clock.time()
            at = doc["next_attempt_at"] - dt.timedelta(seconds=doc["_held_until"] - t)  # lease time now
            try:
                held = await self.lease.renew(self.col, token, {"_id": doc["_id"]}, at)
            except Exception as exc:  # the store may be briefly unreachable: the lease runs down meanwhile
                log.warning("outbox_renew_failed", entry=doc["_id"], error=str(exc))
                continue
            if not held:
                log.warning("outbox_lease_lost", entry=doc["_id"])
                doc["_held_until"] = 0.0
                return
            doc["_held_until"] = t + ttl
            doc["next_attempt_at"] = at + self.lease.ttl

    async def _post(
        self, url: str, secret: str | None, eid: str, payload: Mapping[str, Any]
    ) -> tuple[bool, int | None, str | None]:
        session = await self._ensure_session()
        refused = refusal(url, self.allow)
        if refused:  # an IP literal is connected to without the resolver: check it here
            log.warning("outbox_url_refused", url_problem=refused)
            return False, None, f"refused: webhook URL {refused}"
        body = json.dumps(payload, separators=(",", ":")).encode()
        ts = str(int(self.trackly.now().timestamp()))
        headers = {"Content-Type": "application/json", "X-Trackly-Event-Id": eid, "X-Trackly-Timestamp": ts}
        if secret:
            headers["X-Trackly-Signature"] = sign(secret, ts, body)
        try:
            async with asyncio.timeout(self.cfg.outbox_timeout_seconds + 1):
                async with session.post(url, data=body, headers=headers, allow_redirects=False) as resp:
                    await resp.content.read(4096)
                    if 200 <= resp.status < 300:
                        return True, resp.status, None
                    return False, resp.status, f"HTTP {resp.status}"
        except TimeoutError:
            return False, None, "timeout"
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            return False, None, f"{type(exc).__name__}: {exc}"[:300]

    async def _still_held(self, splits: Mapping[str, tuple[str, list[OutboxDoc]]]) -> list[str]:
        """The split batches their claim token still holds. A batch's continuations are inserted before the batch
        is marked split (a crash in between loses no event), so not by an attempt whose lease was taken over: the
        new holder POSTs the whole batch again, and the continuations would POST its failed events once more."""
        if not splits:
            return []
        rows = await self.col.find({"_id": {"$in": list(splits)}}, {"claimed_by": 1}).to_list(None)
        return [r["_id"] for r in rows if r.get("claimed_by") == splits[r["_id"]][0]]

    def _backoff(self, attempts: int) -> float:
        return backoff(
            attempts, initial=self.cfg.outbox_initial_backoff_seconds, cap=self.cfg.outbox_max_backoff_seconds
        )

    async def _flush(self, now: dt.datetime | None = None) -> None:
        """Write every queued outcome in one bulk_write (fenced on each entry's claim token), plus the
        single-event entries a partly failed batch continues as, and the give-up alerts."""
        attempts, self._results = self._results, []
        if not attempts:
            return
        now = now or self.trackly.now()
        ops: list[UpdateOne] = []
        splits: dict[str, tuple[str, list[OutboxDoc]]] = {}  # batch id -> its claim token, its continuations
        dead_events: list[Event] = []
        failures: list[str] = []
        for a in attempts:
            doc = a.doc
            token = doc["claimed_by"]
            assert token is not None  # a claimed entry
            fence = self.lease.fence(token, {"_id": doc["_id"]})
            tried = [r for r in a.results if r.attempted]
            ok = [r for r in a.results if r.ok]
            self.counts.attempts += len(tried)
            self.counts.delivered += len(ok)
            failures.extend(r.error or "" for r in tried if not r.ok)
            last = tried[-1] if tried else None
            base: Update = {
                **self.lease.released(),
                "attempts": int(doc.get("attempts", 0)) + (1 if tried else 0),
                "last_status": last.status if last else None,
                "last_error": last.error if last else None,
                "last_attempt_at": now,
            }
            if a.drop:
                self.counts.dropped += max(1, len(doc.get("events", ())))
                ops.append(UpdateOne(fence, {"$set": {**base, "status": DROPPED}, **_OFF_SCHEDULE}))
            elif len(ok) == len(a.results):
                ops.append(
                    UpdateOne(fence, {"$set": {**base, "status": DELIVERED, "delivered_at": now}, **_OFF_SCHEDULE})
                )
            elif "events" in doc:  # a batch: the rest continue one by one
                rest: list[OutboxDoc] = []
                splits[doc["_id"]] = (token, rest)
                ops.append(
                    UpdateOne(
                        fence,
                        {
                            "$set": {
                                **base,
                                "status": SPLIT,
                                "delivered_at": now,
                                "failed_events": len(a.results) - len(ok),
                            },
                            **_OFF_SCHEDULE,
                        },
                    )
                )
                for r in a.results:
                    if not r.ok:
                        n = 1 if r.attempted else 0
                        self.counts.failed += n
                        rest.append(
                            single_entry(
                                r.eid,
                                doc["account_id"],
                                r.payload,
                                now,
                                attempts=n,
                                created_at=doc.get("created_at"),
                                next_at=now + dt.timedelta(seconds=self._backoff(max(1, n))),
                            )
                        )
            else:
                next_at = now + dt.timedelta(seconds=self._backoff(base["attempts"]))
                created = doc.get("redriven_at") or doc.get("created_at") or now  # a re-drive restarts the age
                if next_at - created > dt.timedelta(hours=self.cfg.outbox_max_age_hours):
                    self.counts.dead += 1
                    ops.append(UpdateOne(fence, {"$set": {**base, "status": DEAD}, **_OFF_SCHEDULE}))
                    dead_events.append(
                        Event(
                            kind=EventKind.WEBHOOK_DEAD,
                            severity="warning",
                            key=f"webhook_dead:{doc['account_id']}",
                            message=f"customer webhook {doc['_id']} given up after {base['attempts']} attempts: "
                            f"{base['last_error']}",
                            data={
                                "event_id": doc["_id"],
                                "account_id": doc["account_id"],
                                "attempts": base["attempts"],
                                "error": base["last_error"],
                            },
                        )
                    )
                else:
                    self.counts.failed += 1
                    ops.append(UpdateOne(fence, {"$set": {**base, "next_attempt_at": next_at}}))
        retries = [r for i in await self._still_held(splits) for r in splits[i][1]]
        if retries:
            try:
                await self.col.insert_many(retries, ordered=False)
            except BulkWriteError as exc:  # already split by an earlier attempt of the same batch
                if any(e.get("code") != 11000 for e in exc.details.get("writeErrors", [])):
                    raise
        try:
            await self.col.bulk_write(ops, ordered=False)
        except BulkWriteError as exc:
            log.warning("outbox_record_failed", errors=len(exc.details.get("writeErrors", [])))
        if dead_events:
            await self.trackly.bus.publish(*dead_events)
        if failures:
            log.info("outbox_attempts_failed", failed=len(failures), sample=failures[0])
