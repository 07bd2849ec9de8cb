"""Reconciliation: ask the provider what became of messages whose send answer was lost (``NO_RESPONSE``).

A NO_RESPONSE FailedMessage (``ambiguous=True``: a 5xx, timeout or reset after the request was written, or a
process that died after its send intent; see :mod:`outcomes` and :mod:`recovery`) is due for a look-up at once
(``reconcile_at``). A pass takes up to ``reconcile.batch_size`` due messages under a lease (``reconcile_by`` until
``reconcile_at``, a :class:`~trackly_exec.store.lease.Lease`, so several daemons never ask about one message at the
same time), groups them by driver instance (the list's, with its ``driver_settings``), and calls
:meth:`Driver.resolve` in batches of the driver's ``max_lookup_batch``, at most ``reconcile.concurrency`` requests
in flight per driver. Per message:

- **found** (the provider has it): it was sent. One MessageSent (``submitted=True``, the provider's id,
  ``resolved_from_no_response=True``) is inserted and the FailedMessage removed: exactly one record. The delivery
  state the provider reported with it is applied like a delivery report (customer webhook, opt-out, spam).
  A provider id already recorded for another message, or matched twice in one pass, is not trusted (unknown).
- **rejected** (the provider has it, refused): the FailedMessage becomes PROVIDER_ERROR (no longer ambiguous),
  refunded. Never sent again.
- **not found** (the provider positively has no such message, at least ``lookup_settle_seconds`` after the
  attempt and within the provider's record horizon: see :meth:`Driver.resolve`): it was not sent. It is released
  back into the queue under the same id, refunded (the executor charges it again when it sends), due as of its
  attempt (so the STALE rule still applies from then): marked ``releasing`` (with a lease), inserted into the queue
  claimed by the pass, the FailedMessage removed, then the claim dropped. The executor cannot take it before the
  FailedMessage is gone; a pass that dies half-way is finished by the next one once its lease expired (the queue
  entry exists: only the FailedMessage is removed; it does not: it is inserted).
- **unknown** (the provider could not be asked, or cannot tell yet): asked again after an exponential backoff
  (``backoff_initial_seconds`` doubling per look-up, jittered, at most ``backoff_max_seconds``).

A driver without :meth:`Driver.lookup` (CM: its documents give no message-status query) leaves its messages
``unsupported``; messages older than ``max_age_hours`` after their attempt are left ``expired``. Both stay
NO_RESPONSE until a delivery report resolves them (:mod:`delivery`), as before.

The component (:class:`Reconciler`, in ``daemon.COMPONENTS``) runs a pass every ``interval_seconds``;
``run_until_idle()`` runs passes until nothing is due. Counters: :data:`COUNTS` (this process), rendered as
``trackly_reconcile_total{outcome=...}`` at ``/metrics``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pymongo import UpdateOne

from trackly_exec.app import Loop, backoff
from trackly_exec.drivers.contract import DeliveryReport, Driver, Found, LookupQuery, LookupResult, NotFound, Rejected
from trackly_exec.executor import billing, claims
from trackly_exec.executor.outcomes import insert_records, sent_doc
from trackly_exec.executor.redrive import reopen_executions
from trackly_exec.logs import get_logger
from trackly_exec.store import constants as c
from trackly_exec.store.documents import FailedDoc, SendingListDoc
from trackly_exec.store.lease import Lease, new_token
from trackly_exec.store.models import FailureReason, MessageFields, entering_queue

if TYPE_CHECKING:
    from trackly_exec.app import Trackly

log = get_logger(__name__)

NO_RESPONSE = str(FailureReason.NO_RESPONSE)
#: Process-wide counters: look-ups asked, and messages found / rejected / released / still unknown /
#: unsupported / expired, look-up errors.
COUNTS: Counter[str] = Counter()
_QUEUE_DEFAULTS = {
    "billing_blocked_since": None,
    "paused": False,
    "attempts": 0,
}


def _query(d: FailedDoc) -> LookupQuery:
    return LookupQuery(
        id=d["_id"],
        to=d["to_number"],
        sender=d["from_number"],
        body=d["body"],
        attempted_at=d.get("attempted_at") or d["failed_at"],
    )


async def reconcile_once(trackly: Trackly, *, now: dt.datetime | None = None) -> Counter[str]:
    """One pass. Returns what it did: ``{"found": n, "rejected": n, "released": n, "unknown": n, ...}``."""
    cfg = trackly.settings.reconcile
    now = now or trackly.now()
    out: Counter[str] = Counter()
    col = trackly.db[c.FAILED]
    await _finish_releases(trackly, now, out)
    due = (
        await col.find(
            # a message an operator is re-driving (redrive.py) is theirs
            {
                "reason": NO_RESPONSE,
                "reconcile_state": "pending",
                "reconcile_at": {"$lte": now},
                "redrive_token": {"$eq": None},
            },
            {"_id": 1},
        )
        .sort("reconcile_at", 1)
        .limit(cfg.batch_size)
        .to_list(None)
    )
    if not due:
        return out
    token = new_token(f"{trackly.instance}-reconcile")
    ids = [d["_id"] for d in due]
    await _lease(trackly).claim(
        col, {"_id": {"$in": ids}, "reconcile_state": "pending", "redrive_token": {"$eq": None}}, token, now, read=False
    )
    docs = await col.find({"reconcile_by": token, "reason": NO_RESPONSE, "reconcile_state": "pending"}).to_list(None)
    if not docs:
        return out
    oldest = now - dt.timedelta(hours=cfg.max_age_hours)
    expired = [d for d in docs if (d.get("attempted_at") or d["failed_at"]) < oldest]
    await _park(trackly, token, expired, "expired", out)
    docs = [d for d in docs if (d.get("attempted_at") or d["failed_at"]) >= oldest]

    lists = {
        x["_id"]: x
        async for x in trackly.db[c.SENDING_LISTS].find({"_id": {"$in": sorted({d["sending_list_id"] for d in docs})}})
    }
    groups: dict[int, tuple[Driver[Any], str, list[FailedDoc]]] = {}
    unsupported: list[FailedDoc] = []
    failed: list[FailedDoc] = []
    for d in docs:
        lst = lists.get(d["sending_list_id"])
        instance = d.get("provider") or (lst or {}).get("driver")
        if lst is None or not instance:
            unsupported.append(d)
            continue
        overrides = lst.get("driver_settings") or {} if lst.get("driver") == instance else {}
        try:
            driver = await trackly.drivers.get(instance, overrides)
        except Exception as exc:  # misconfigured or gone: ask again later
            log.warning("reconcile_driver_unavailable", driver=instance, error=str(exc))
            failed.append(d)
            continue
        if not driver.supports_lookup:
            unsupported.append(d)
            continue
        groups.setdefault(id(driver), (driver, instance, []))[2].append(d)
    await _park(trackly, token, unsupported, "unsupported", out)
    await _backoff(trackly, token, failed, now, out, "errors")

    answers: list[tuple[FailedDoc, str, LookupResult]] = []
    await asyncio.gather(
        *(
            _ask(driver, instance, items, cfg.concurrency, now, answers, out)
            for driver, instance, items in groups.values()
        )
    )
    await _apply(trackly, token, answers, lists, now, out)
    COUNTS.update(out)
    if out:
        log.info("reconciled", **dict(out))
    return out


async def _ask(
    driver: Driver[Any],
    instance: str,
    docs: list[FailedDoc],
    concurrency: int,
    now: dt.datetime,
    answers: list[tuple[FailedDoc, str, LookupResult]],
    out: Counter[str],
) -> None:
    """Look ``docs`` up with one driver, in batches, ``concurrency`` requests at a time."""
    sem = asyncio.Semaphore(concurrency)
    size = max(1, driver.max_lookup_batch)

    async def one(batch: Sequence[FailedDoc]) -> None:
        async with sem:
            results = await driver.resolve([_query(d) for d in batch], now=now)
        out["lookups"] += len(batch)
        answers.extend((d, instance, r) for d, r in zip(batch, results, strict=True))

    await asyncio.gather(*(one(docs[i : i + size]) for i in range(0, len(docs), size)))


async def _apply(
    trackly: Trackly,
    token: str,
    answers: list[tuple[FailedDoc, str, LookupResult]],
    lists: dict[int, SendingListDoc],
    now: dt.datetime,
    out: Counter[str],
) -> None:
    found = [(d, i, r) for d, i, r in answers if isinstance(r, Found)]
    # A provider id that two messages claim, or that another message already has, proves nothing.
    pids = Counter(r.provider_message_id for _, _, r in found)
    ours = {d["_id"] for d, _, _ in found}
    taken = {
        x["provider_message_id"]
        async for x in trackly.db[c.SENT].find(
            {"provider_message_id": {"$in": sorted(pids)}}, {"provider_message_id": 1}
        )
        if x["_id"] not in ours
    }
    doubtful = {p for p, n in pids.items() if n > 1} | taken
    unknown = [d for d, _, r in answers if r.kind == "unknown"]
    unknown += [d for d, _, r in found if r.provider_message_id in doubtful]
    found = [(d, i, r) for d, i, r in found if r.provider_message_id not in doubtful]
    await _resolve_found(trackly, token, found, lists, now, out)
    await _reject(trackly, token, [(d, r) for d, _, r in answers if isinstance(r, Rejected)], lists, out)
    await _release(trackly, token, [d for d, _, r in answers if isinstance(r, NotFound)], lists, now, out)
    await _backoff(trackly, token, unknown, now, out, "unknown")


async def _resolve_found(
    trackly: Trackly,
    token: str,
    found: list[tuple[FailedDoc, str, Found]],
    lists: dict[int, SendingListDoc],
    now: dt.datetime,
    out: Counter[str],
) -> None:
    """MessageSent for each, then the FailedMessage removed (the MessageSent wins if both ever exist)."""
    if not found:
        return
    from trackly_exec.tracking.delivery import ingest

    docs = []
    for d, instance, r in found:
        price = float((lists.get(d["sending_list_id"]) or {}).get("price_per_segment") or 0.0)
        sent = sent_doc(
            d,
            provider=instance,
            provider_message_id=r.provider_message_id,
            segments=r.segments or int(d.get("segments") or 1),
            cost=billing.message_cost(d, price),
            now=d.get("attempted_at") or d["failed_at"],
        )
        sent["resolved_from_no_response"] = True
        docs.append(sent)
    await insert_records(trackly.db, c.SENT, docs)
    ids = [d["_id"] for d, _, _ in found]
    await trackly.db[c.FAILED].delete_many({"_id": {"$in": ids}, "reason": NO_RESPONSE})
    out["found"] += len(found)
    reports: dict[str, list[DeliveryReport]] = {}
    for d, instance, r in found:
        if r.report is not None:
            reports.setdefault(instance, []).append(r.report.model_copy(update={"message_id": d["_id"]}))
    for instance, batch in reports.items():
        await ingest(trackly, instance, batch, park=False)


async def _reject(
    trackly: Trackly,
    token: str,
    items: list[tuple[FailedDoc, Rejected]],
    lists: dict[int, SendingListDoc],
    out: Counter[str],
) -> None:
    """The provider has it and refused it: PROVIDER_ERROR, refunded, not ambiguous any more."""
    if not items:
        return
    await trackly.db[c.FAILED].bulk_write(
        [
            UpdateOne(
                {"_id": d["_id"], "reconcile_by": token, "reason": NO_RESPONSE},
                {
                    "$set": {
                        "reason": str(FailureReason.PROVIDER_ERROR),
                        "ambiguous": False,
                        "provider_code": r.code,
                        "detail": (r.detail or "rejected by the provider (found by reconciliation)")[:500],
                        "spam": r.spam,
                        "opted_out": r.opted_out,
                        "reconcile_state": "rejected",
                        "reconcile_at": None,
                        "reconcile_by": None,
                    }
                },
            )
            for d, r in items
        ],
        ordered=False,
    )
    await _refund(trackly, [d for d, _ in items], lists)
    out["rejected"] += len(items)


async def _release(
    trackly: Trackly,
    token: str,
    docs: list[FailedDoc],
    lists: dict[int, SendingListDoc],
    now: dt.datetime,
    out: Counter[str],
) -> None:
    """Not at the provider: back into the queue under the same id (see the module docstring for the order)."""
    if not docs:
        return
    col = trackly.db[c.FAILED]
    ids = [d["_id"] for d in docs]
    await _lease(trackly).update(
        col,
        token,
        {"_id": {"$in": ids}, "reason": NO_RESPONSE},
        {"$set": {"reconcile_state": "releasing"}},
        renew_at=now,
    )
    held = [d async for d in col.find({"_id": {"$in": ids}, "reconcile_by": token, "reconcile_state": "releasing"})]
    n = await _requeue(trackly, held, now)
    await _refund(trackly, held, lists)
    out["released"] += n


def _lease(trackly: Trackly) -> Lease:
    """A pass's lease on the FailedMessages it looks up or releases: ``reconcile_by`` (its token) until
    ``reconcile_at`` (which is also when a pending message is next looked up)."""
    return Lease(
        "reconcile_by", until="reconcile_at", ttl=dt.timedelta(seconds=trackly.settings.reconcile.lease_seconds)
    )


async def _requeue(trackly: Trackly, docs: list[FailedDoc], now: dt.datetime) -> int:
    """Insert queue entries (claimed by this pass), remove the FailedMessages, drop the claim."""
    if not docs:
        return 0
    claim = new_token(f"{trackly.instance}-reconcile")
    fields = MessageFields.model_fields
    queued = [
        {
            "_id": d["_id"],
            **{k: v for k, v in d.items() if k in fields},
            **_QUEUE_DEFAULTS,
            "created_at": now,
            # claimed by this pass until the FailedMessage is gone: no executor sends it before
            **entering_queue(
                d["_id"],
                d["sendtime"],
                not_before=d.get("attempted_at") or d["failed_at"],
                claimed_by=claim,
                claimed_at=now,
            ),
        }
        for d in docs
    ]
    await insert_records(trackly.db, c.QUEUED, queued)
    await reopen_executions(trackly.db, {int(e) for d in docs if (e := d.get("execution_id")) is not None})
    ids = [d["_id"] for d in docs]
    res = await trackly.db[c.FAILED].delete_many({"_id": {"$in": ids}, "reconcile_state": "releasing"})
    await claims.give_back(trackly.db, ids, claim)
    log.info("released_for_resend", count=res.deleted_count)
    return int(res.deleted_count)


async def _finish_releases(trackly: Trackly, now: dt.datetime, out: Counter[str]) -> None:
    """Releases whose pass died half-way (their lease expired): finish them."""
    col = trackly.db[c.FAILED]
    stuck = (
        await col.find({"reason": NO_RESPONSE, "reconcile_state": "releasing", "reconcile_at": {"$lte": now}})
        .limit(trackly.settings.reconcile.batch_size)
        .to_list(None)
    )
    if not stuck:
        return
    ids = [d["_id"] for d in stuck]
    present = {d["_id"] async for d in trackly.db[c.QUEUED].find({"_id": {"$in": ids}}, {"_id": 1})}
    present |= {d["_id"] async for d in trackly.db[c.SENT].find({"_id": {"$in": ids}}, {"_id": 1})}
    if present:  # the hand-back got as far as the queue: only the FailedMessage is left to remove
        await col.delete_many({"_id": {"$in": sorted(present)}, "reconcile_state": "releasing"})
    out["released"] += await _requeue(trackly, [d for d in stuck if d["_id"] not in present], now) + len(present)


async def _refund(trackly: Trackly, docs: list[FailedDoc], lists: dict[int, SendingListDoc]) -> None:
    """A NO_RESPONSE kept its charge (it may have been sent); one that was not sent gets it back."""
    by_account: Counter[int] = Counter()
    for d in docs:
        price = float((lists.get(d["sending_list_id"]) or {}).get("price_per_segment") or 0.0)
        by_account[d["account_id"]] += billing.message_cost(d, price)  # type: ignore[assignment]
    for account, amount in by_account.items():
        await billing.adjust(trackly.db, account, amount)


async def _park(trackly: Trackly, token: str, docs: list[FailedDoc], state: str, out: Counter[str]) -> None:
    """No more look-ups for these (``unsupported`` / ``expired``): they stay NO_RESPONSE."""
    if docs:
        await trackly.db[c.FAILED].update_many(
            {"_id": {"$in": [d["_id"] for d in docs]}, "reconcile_by": token},
            {"$set": {"reconcile_state": state, "reconcile_at": None, "reconcile_by": None}},
        )
        out[state] += len(docs)


async def _backoff(
    trackly: Trackly, token: str, docs: list[FailedDoc], now: dt.datetime, out: Counter[str], what: str
) -> None:
    """Ask again later: exponential backoff per look-up, jittered."""
    if not docs:
        return
    cfg = trackly.settings.reconcile
    ops = []
    for d in docs:
        n = int(d.get("lookups") or 0)
        delay = backoff(n + 1, initial=cfg.backoff_initial_seconds, cap=cfg.backoff_max_seconds, jitter=(0.75, 1.0))
        when = now + dt.timedelta(seconds=delay)
        ops.append(
            UpdateOne(
                {"_id": d["_id"], "reconcile_by": token, "reconcile_state": "pending"},
                {"$set": {"reconcile_at": when, "reconcile_by": None}, "$inc": {"lookups": 1}},
            )
        )
    await trackly.db[c.FAILED].bulk_write(ops, ordered=False)
    out[what] += len(docs)


class Reconciler:
    """Daemon component: a reconciliation pass every ``reconcile.interval_seconds``."""

    name = "reconciler"

    def __init__(self, trackly: Trackly) -> None:
        self.trackly = trackly
        self.counts: Counter[str] = Counter()
        self._loop = Loop(
            "reconciler", self._tick, trackly.settings.reconcile.interval_seconds, on_error=self._tick_failed
        )

    async def start(self) -> None:
        self._loop.start()

    async def stop(self, grace: float) -> None:
        await self._loop.stop(grace)

    async def run_until_idle(self, *, now: dt.datetime | None = None) -> Counter[str]:
        """Passes until nothing more is due now (burst mode: tests, ``--burst``)."""
        total: Counter[str] = Counter()
        for _ in range(1000):
            done = await reconcile_once(self.trackly, now=now)
            total.update(done)
            if not any(done[k] for k in ("lookups", "expired", "unsupported", "released", "errors")):
                break
            if not await self.trackly.db[c.FAILED].find_one(
                {
                    "reason": NO_RESPONSE,
                    "reconcile_state": "pending",
                    "reconcile_at": {"$lte": now or self.trackly.now()},
                }
            ):
                break
        self.counts.update(total)
        return total

    async def _tick(self) -> None:
        self.counts.update(await reconcile_once(self.trackly))

    def _tick_failed(self, exc: Exception) -> None:  # the store or a provider may be briefly unreachable
        log.warning("reconcile_pass_failed", error=str(exc))
        COUNTS["errors"] += 1
