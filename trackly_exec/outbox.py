"""The customer's delivery-status webhook, delivered at least once from a MongoDB-backed outbox.

Delivery ingestion (:mod:`trackly_exec.delivery`) writes one outbox document per *final* delivery state, in the
same pass that records the state, with a stable ``_id`` (``"<message id>:delivery"``, the event id): a duplicate
report can never create a second event. The :class:`Outbox` component POSTs them, separately from sending and
ingestion, so a slow or dead customer endpoint only ever delays its own events:

- concurrency bounded by ``tracking.outbox_concurrency`` overall and ``tracking.outbox_per_account_concurrency``
  per account; each POST has its own timeout (``tracking.outbox_timeout_seconds``), redirects are not followed;
- 2xx is success; anything else is retried with exponential backoff and jitter
  (``outbox_initial_backoff_seconds`` doubling up to ``outbox_max_backoff_seconds``) until the event is
  ``outbox_max_age_hours`` old; then it is marked ``dead`` and a ``webhook_dead`` alert event is published;
- entries are claimed with a lease (``claimed_by`` token + ``next_attempt_at`` pushed past the timeout), so
  several daemons can share one outbox and a crashed one's entries are retried after the lease.

The body is the product document's payload (camelCase, exactly these fields)::

    {"id": "a1b2c3d4e5f60718", "account": 12, "sendingList": 45, "messageCreative": 789,
     "fromNumber": "+15551234567", "toNumber": "+15559876543", "delivered": true, "sendType": "campaign",
     "filterBots": false, "length": 142, "timestamp": "2024-01-15T10:30:00Z"}

``timestamp`` is the MessageSent ``timestamp`` (when the provider accepted the message), ``filterBots`` is the
account's ``filter_bots`` setting (whether its click statistics exclude bot clicks; False by default).
Headers: ``X-Trackly-Event-Id`` (de-duplicate on it), ``X-Trackly-Timestamp`` (unix seconds of this attempt) and,
when the account has a ``webhook_secret``, ``X-Trackly-Signature: v1=<hex HMAC-SHA256(secret, f"{timestamp}.{body}")>``.
Receivers check it with :func:`verify_signature` (or the 10-line snippet in the README) and reject timestamps
more than 5 minutes old.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import hmac
import json
import random
import time
import uuid
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from pymongo import UpdateOne
from pymongo.errors import BulkWriteError

from . import constants as c
from .app import Trackly
from .events import Event, EventKind
from .logs import get_logger
from .models import utcnow

log = get_logger(__name__)

PENDING, DELIVERED, DEAD, DROPPED = "pending", "delivered", "dead", "dropped"
LEASE_MARGIN_SECONDS = 30.0
USER_AGENT = "trackly-exec-webhooks/1"


# --------------------------------------------------------------------------------------------- payload & signature


def iso_z(value: dt.datetime | None) -> str | None:
    """ISO 8601 in UTC with a ``Z`` suffix, second precision (``2024-01-15T10:30:00Z``)."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def event_id(message_id: str) -> str:
    """The stable id of a message's final-delivery-state event."""
    return f"{message_id}:delivery"


def webhook_payload(message: Mapping[str, Any], account: Mapping[str, Any]) -> dict[str, Any]:
    """The product document's payload for one MessageSent document with a final ``delivered`` state."""
    return {
        "id": message["_id"],
        "account": message["account_id"],
        "sendingList": message["sending_list_id"],
        "messageCreative": message.get("creative_id"),
        "fromNumber": message.get("from_number"),
        "toNumber": message.get("to_number"),
        "delivered": message.get("delivered"),
        "sendType": message.get("send_type", "campaign"),
        "filterBots": bool(account.get("filter_bots", False)),
        "length": message.get("length"),
        "timestamp": iso_z(message.get("timestamp")),
    }


def outbox_entry(message: Mapping[str, Any], account: Mapping[str, Any], now: dt.datetime) -> dict[str, Any]:
    """The outbox document for one message's final delivery state (``_id`` = the stable event id)."""
    return {
        "_id": event_id(message["_id"]),
        "message_id": message["_id"],
        "account_id": message["account_id"],
        "payload": webhook_payload(message, account),
        "status": PENDING,
        "attempts": 0,
        "created_at": now,
        "next_attempt_at": now,
        "claimed_by": None,
        "last_error": None,
        "last_status": None,
        "delivered_at": None,
    }


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """``v1=<hex HMAC-SHA256(secret, f"{timestamp}.{body}")>``."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"v1={mac}"


def verify_signature(secret: str, timestamp: str, body: bytes | str, header: str, tolerance: float = 300,
                     *, now: float | None = None) -> bool:
    """Receiver side: True when ``header`` holds a valid ``v1=`` signature of ``timestamp.body`` and the
    timestamp is within ``tolerance`` seconds of now (older or future timestamps are rejected: replays)."""
    if isinstance(body, str):
        body = body.encode()
    ts = (timestamp or "").strip()
    if not ts.isdigit():
        return False
    if abs((time.time() if now is None else now) - int(ts)) > tolerance:
        return False
    expected = sign(secret, ts, body)[3:]
    candidates = [p.strip()[3:] for p in (header or "").split(",") if p.strip().startswith("v1=")]
    return any(hmac.compare_digest(expected.encode(), cand.encode()) for cand in candidates)


# --------------------------------------------------------------------------------------------- the component


@dataclass
class _Attempt:
    """The outcome of one POST, recorded (fenced on the claim token) in the next batched write."""

    doc: dict[str, Any]
    ok: bool
    status: int | None = None
    error: str | None = None
    drop: bool = False


@dataclass
class OutboxCounts:
    delivered: int = 0
    failed: int = 0
    dead: int = 0
    dropped: int = 0
    attempts: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"delivered": self.delivered, "failed": self.failed, "dead": self.dead, "dropped": self.dropped,
                "attempts": self.attempts}


class Outbox:
    """Daemon component delivering the customer delivery-status webhooks; ``run_until_idle()`` for tests."""

    name = "outbox"

    def __init__(self, trackly: Trackly) -> None:
        self.trackly = trackly
        self.cfg = trackly.settings.tracking
        self._sem = asyncio.Semaphore(self.cfg.outbox_concurrency)
        self._tasks: set[asyncio.Task[None]] = set()
        self._results: list[_Attempt] = []
        self._per_account: Counter[int] = Counter()
        self._session: aiohttp.ClientSession | None = None
        self._loop_task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._wake = asyncio.Event()
        self.counts = OutboxCounts()

    @property
    def col(self) -> Any:
        return self.trackly.store[c.OUTBOX]

    # -- lifecycle ----------------------------------------------------------------------------

    async def _ensure_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.cfg.outbox_timeout_seconds),
                connector=aiohttp.TCPConnector(limit=self.cfg.outbox_concurrency, limit_per_host=0),
                headers={"User-Agent": USER_AGENT},
            )
        return self._session

    async def start(self) -> None:
        await self._ensure_session()
        self._stopping.clear()
        self._loop_task = asyncio.create_task(self._run(), name="outbox")
        log.info("outbox_started", concurrency=self.cfg.outbox_concurrency)

    async def stop(self, grace: float) -> None:
        self._stopping.set()
        self._wake.set()
        if self._loop_task is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._loop_task
            self._loop_task = None
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
        await self._flush()
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- burst mode ---------------------------------------------------------------------------

    async def run_until_idle(self, now: dt.datetime | None = None) -> dict[str, int]:
        """Deliver every entry due at ``now`` (default: the current time), retries that fall due included, and
        return counts. Failed entries are rescheduled after ``now``, so this always terminates."""
        await self._ensure_session()
        before = self.counts.as_dict()
        while True:
            at = now or utcnow()
            docs = await self._claim(self.cfg.outbox_concurrency * 4, at)
            if not docs:
                break
            await asyncio.gather(*(self._attempt(doc) for doc in docs))
            await self._flush(now)
        after = self.counts.as_dict()
        return {k: after[k] - v for k, v in before.items()}

    # -- the loop -----------------------------------------------------------------------------

    async def _run(self) -> None:
        while not self._stopping.is_set():
            claimed = 0
            try:
                free = self.cfg.outbox_concurrency - len(self._tasks)
                if free > 0:
                    docs = await self._claim(free, utcnow())
                    claimed = len(docs)
                    for doc in docs:
                        task = asyncio.create_task(self._attempt(doc))
                        self._tasks.add(task)
                        task.add_done_callback(self._task_done)
                await self._flush()
            except Exception as exc:  # the store may be briefly unreachable: keep polling
                log.warning("outbox_poll_failed", error=str(exc))
            if claimed and claimed >= self.cfg.outbox_concurrency - len(self._tasks):
                await asyncio.sleep(0)
                continue
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.cfg.outbox_poll_seconds)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("outbox_task_failed", error=str(task.exception()))
        self._wake.set()

    # -- claim, attempt, record ---------------------------------------------------------------

    async def _claim(self, limit: int, now: dt.datetime) -> list[dict[str, Any]]:
        """Lease up to ``limit`` due entries (respecting the per-account cap) to a fresh claim token."""
        if limit <= 0:
            return []
        due = {"status": PENDING, "next_attempt_at": {"$lte": now}}
        candidates = await self.col.find(due, {"_id": 1, "account_id": 1}).sort("next_attempt_at", 1).limit(
            limit * 4).to_list(None)
        cap = self.cfg.outbox_per_account_concurrency
        taken: Counter[int] = Counter()
        ids: list[str] = []
        for cand in candidates:
            acc = cand.get("account_id")
            if self._per_account[acc] + taken[acc] >= cap:
                continue
            taken[acc] += 1
            ids.append(cand["_id"])
            if len(ids) >= limit:
                break
        if not ids:
            return []
        token = f"{self.trackly.instance}:{uuid.uuid4().hex}"
        lease = now + dt.timedelta(seconds=self.cfg.outbox_timeout_seconds + LEASE_MARGIN_SECONDS)
        await self.col.update_many({"_id": {"$in": ids}, **due},
                                   {"$set": {"claimed_by": token, "next_attempt_at": lease}})
        docs = await self.col.find({"_id": {"$in": ids}, "claimed_by": token}).to_list(None)
        accounts = await self._accounts({d["account_id"] for d in docs})
        for doc in docs:
            doc["_account"] = accounts.get(doc["account_id"])
            self._per_account[doc["account_id"]] += 1
        return docs

    async def _accounts(self, ids: set[int]) -> dict[int, dict[str, Any]]:
        if not ids:
            return {}
        rows = await self.trackly.store[c.ACCOUNTS].find(
            {"_id": {"$in": list(ids)}}, {"webhook_url": 1, "webhook_secret": 1}).to_list(None)
        return {r["_id"]: r for r in rows}

    async def _attempt(self, doc: dict[str, Any]) -> None:
        """POST one entry (bounded by the semaphore) and queue its outcome for the batched write."""
        account = doc.get("_account") or {}
        url = account.get("webhook_url")
        try:
            if not url:
                self._results.append(_Attempt(doc, ok=False, drop=True, error="account has no webhook_url"))
                return
            async with self._sem:
                ok, status, error = await self._post(url, account.get("webhook_secret"), doc)
            self._results.append(_Attempt(doc, ok=ok, status=status, error=error))
        finally:
            self._per_account[doc["account_id"]] -= 1
            if self._per_account[doc["account_id"]] <= 0:
                del self._per_account[doc["account_id"]]

    async def _post(self, url: str, secret: str | None, doc: Mapping[str, Any]) -> tuple[bool, int | None, str | None]:
        session = await self._ensure_session()
        body = json.dumps(doc["payload"], separators=(",", ":")).encode()
        ts = str(int(time.time()))
        headers = {"Content-Type": "application/json", "X-Trackly-Event-Id": doc["_id"], "X-Trackly-Timestamp": ts}
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

    def _backoff(self, attempts: int) -> float:
        base = self.cfg.outbox_initial_backoff_seconds * (2 ** max(0, attempts - 1))
        return min(self.cfg.outbox_max_backoff_seconds, base) * (0.5 + random.random() / 2)

    async def _flush(self, now: dt.datetime | None = None) -> None:
        """Write every queued outcome in one bulk_write, fenced on each entry's claim token."""
        results, self._results = self._results, []
        if not results:
            return
        now = now or utcnow()
        max_age = dt.timedelta(hours=self.cfg.outbox_max_age_hours)
        ops: list[UpdateOne] = []
        dead_events: list[Event] = []
        for r in results:
            doc = r.doc
            fence = {"_id": doc["_id"], "claimed_by": doc["claimed_by"]}
            attempts = int(doc.get("attempts", 0)) + (0 if r.drop else 1)
            base = {"claimed_by": None, "attempts": attempts, "last_status": r.status, "last_error": r.error,
                    "last_attempt_at": now}
            if r.ok:
                self.counts.delivered += 1
                ops.append(UpdateOne(fence, {"$set": {**base, "status": DELIVERED, "delivered_at": now}}))
            elif r.drop:
                self.counts.dropped += 1
                ops.append(UpdateOne(fence, {"$set": {**base, "status": DROPPED}}))
            else:
                next_at = now + dt.timedelta(seconds=self._backoff(attempts))
                created = doc.get("created_at") or now
                if next_at - created > max_age:
                    self.counts.dead += 1
                    ops.append(UpdateOne(fence, {"$set": {**base, "status": DEAD}}))
                    dead_events.append(Event(
                        kind=EventKind.WEBHOOK_DEAD, severity="warning",
                        message=f"customer webhook {doc['_id']} given up after {attempts} attempts: {r.error}",
                        data={"event_id": doc["_id"], "account_id": doc["account_id"], "attempts": attempts,
                              "error": r.error}, key=f"webhook_dead:{doc['account_id']}"))
                else:
                    self.counts.failed += 1
                    ops.append(UpdateOne(fence, {"$set": {**base, "next_attempt_at": next_at}}))
            if not r.drop:
                self.counts.attempts += 1
        try:
            await self.col.bulk_write(ops, ordered=False)
        except BulkWriteError as exc:
            log.warning("outbox_record_failed", errors=len(exc.details.get("writeErrors", [])))
        if dead_events:
            await self.trackly.bus.publish(*dead_events)
        failed = [r for r in results if not r.ok and not r.drop]
        if failed:
            log.info("outbox_attempts_failed", failed=len(failed), sample=failed[0].error)
