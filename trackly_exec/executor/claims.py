"""Claims on queued messages: claim, fence, hold, release, intent, complete. The only writer of a queued
message's ``claimed_by``, ``claimed_at``, ``sending_at``, ``not_before`` and ``due_ms`` after it entered the queue
(:func:`trackly_exec.store.models.entering_queue`); tests/test_claims_owner.py keeps it so.

A message is due at ``due_ms`` = max(sendtime, not_before) in epoch milliseconds (:func:`models.due_ms`), stored
beside the two datetimes and moved with ``not_before`` by every hold, pause and resume here: the due query
(:func:`due_filter`) is one flat, numeric, indexed range on both MongoDB and nx-27017. The send-time checks read
the datetimes themselves (:func:`checks.evaluate`): a message claimed before its sendtime or hold has come is given
back until then, so a ``due_ms`` that disagrees can only delay a message, never send it early.

A batch is claimed with a token unique to this process *and* this claim (``"<instance>:<uuid hex>"``):

1. read the due messages of one list (FIFO by ``due_ms``; :func:`find_due`, whole documents); the worker
   reads several batches' worth at once and hands them out to its batches (one scan of the queue per several
   claims);
2. ``update_many({_id in ids, claimed_by: None, due_ms: <as read>}, {$set: {claimed_by: token, claimed_at:
   now}})`` — per document atomic, so two processes racing for the same ids each get a disjoint part;
3. when every candidate was claimed, the documents read in 1. are exactly what this claim got (no second read:
   each due message is read about once); otherwise read back ``find({claimed_by: token})``.

Why the documents of 1. may stand for the claimed ones: while a message is unclaimed nothing but a claim
changes it, except the pause (``due_ms`` = far future) and resume (``due_ms`` = max(sendtime, now)). Every release
that changes a message's fields (quiet-hours, billing and provider holds, requeues) sets ``not_before`` and so
``due_ms`` to a new, later time too; releases that leave them alone change nothing but the claim fields. So a
message whose ``due_ms`` is still the value read was not changed since; the claim's ``due_ms`` condition makes
any other candidate fail to match, and the claim falls back to the read-back.

Several executor processes partition the queue by ``slot`` (:func:`share_bounds`: contiguous ranges of the
first four hexadecimal digits of the message ids, :func:`models.slot_of`, so each process reads only its own
candidates and claims never collide); see :mod:`trackly_exec.executor.peers` for how a process learns its rank
and the number of live executors.

Every later write about a claimed message is conditional on ``claimed_by == token`` (fencing): a process
that lost its claim (paused past the claim TTL while recovery released or dead-lettered it) matches
nothing, so it can neither mark intent (and so never sends) nor delete the queue entry.

The lease itself (token, fields, fence, release) is :data:`LEASE`, a :class:`trackly_exec.store.lease.Lease`
like the outbox's and the executions'; the queue-specific conditions (due, no send intent) stay here.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from pymongo import UpdateMany, UpdateOne

from trackly_exec.campaigns.queue import PAUSED_UNTIL
from trackly_exec.store import constants as c
from trackly_exec.store.documents import ClaimedDoc, Filter, QueuedDoc, Update
from trackly_exec.store.lease import Lease
from trackly_exec.store.lease import new_token as new_token  # a claim's token (re-exported)
from trackly_exec.store.models import SLOTS, MessageFields, due_ms, epoch_ms, slot_of

#: What the executor uses of a claimed message: the fields every record carries (``MessageFields``) and what the
#: checks and the outcome need (due time and holds, billing backoff, send intent); not the claim bookkeeping (token,
#: claim time, created_at, paused, attempts). It reads whole documents all the same: nx-27017 applies a projection
#: in Python on a deep copy of each document, which costs its server twice the document itself (measured: 88 vs
#: 41 us per document), and the client decodes the few extra fields in about 1 us.
CLAIMED_FIELDS: dict[str, int] = dict.fromkeys(
    [
        "_id",
        *MessageFields.model_fields,
        "not_before",
        "due_ms",
        "throttled_until",
        "throttled_due",
        "billing_blocked_since",
        "sending_at",
        "redrive_count",  # carried to the FailedMessage, so a second re-drive counts 2
    ],
    1,
)

#: A queued message's claim: ``claimed_by`` (the token) and ``claimed_at`` (its age, for recovery's claim TTL; epoch
#: ms, like the send intent ``sending_at``: nx-27017 sets a number in SQL, a date in Python on a copy of the document).
LEASE = Lease("claimed_by", stamp="claimed_at", stamp_ms=True)


#: A share of the queue: ``(lo, hi)`` bounds of the messages' ``slot`` (``lo <= slot < hi``; None = unbounded on
#: that side). A message's slot is the first four hexadecimal digits of its id (:func:`models.slot_of`).
Share = tuple[int | None, int | None]


def share_bounds(rank: int, n: int) -> Share:
    """The ``rank``-th of ``n`` contiguous shares of the queue by slot (so by ``_id``: see :func:`models.slot_of`).

    Every slot falls in exactly one share (the first is open below, the last open above, the cuts strictly
    increase); message ids are random or HMAC hexadecimal, so the shares hold equal parts of the queue. 65,536
    slots: up to thousands of processes.
    """
    if not 0 <= rank < n:
        raise ValueError(f"rank {rank} out of 0..{n - 1}")

    def cut(k: int) -> int | None:
        return None if k in (0, n) else k * SLOTS // n

    return cut(rank), cut(rank + 1)


def in_share(mid: str, share: Share | None) -> bool:
    """Whether message id ``mid`` falls in ``share`` (None: the whole queue)."""
    if share is None:
        return True
    lo, hi = share
    slot = slot_of(mid)
    return (lo is None or slot >= lo) and (hi is None or slot < hi)


def _share_cond(share: Share | None) -> dict[str, int] | None:
    if share is None or share == (None, None):
        return None
    lo, hi = share
    rng: dict[str, int] = {}
    if lo is not None:
        rng["$gte"] = lo
    if hi is not None:
        rng["$lt"] = hi
    return rng


def due_filter(now: dt.datetime, list_id: int | None = None, share: Share | None = None) -> Filter:
    """Unclaimed messages whose due time (``due_ms`` = max(sendtime, not_before)) has come (in ``share`` of the
    queue, if given).

    Flat, numeric and ``$eq`` on purpose: on nx-27017 this is one SQL query served by the ``(sending_list_id,
    claimed_by, due_ms)`` index (a bare equality on a non-``_id`` field may match arrays and scans the table; a
    comparison against a datetime, a top-level ``$and`` / ``$or`` or a range of ``_id`` read every document in
    Python); on MongoDB the same index serves it.
    """
    flt: Filter = {}
    if list_id is not None:
        flt["sending_list_id"] = {"$eq": list_id}
    flt["claimed_by"] = None
    flt["due_ms"] = {"$lte": epoch_ms(now)}
    rng = _share_cond(share)
    if rng is not None:
        flt["slot"] = rng
    return flt


async def due_lists(db: Any, now: dt.datetime, share: Share | None = None) -> list[int]:
    """Ids of the sending lists that have due, unclaimed messages (in ``share`` of the queue, if given).

    One probe per sending list for one due message, served by the ``(sending_list_id, claimed_by, due_ms)`` index
    (a handful of index entries read), sent together (at most :data:`PROBES` at once). Not a ``distinct`` over the
    due filter: no index starts with ``claimed_by``, so that reads every unclaimed message (on nx-27017 0.1 s of the
    store per 100,000 queued messages, at every poll of every executor). A list turned off (``active: false``) or
    that no longer exists is not probed: no worker would send its messages.
    """
    lists = [
        d["_id"]
        async for d in db[c.SENDING_LISTS].find({}, {"_id": 1, "active": 1})
        if isinstance(d.get("_id"), int) and d.get("active") is not False
    ]
    gate = asyncio.Semaphore(PROBES)

    async def due(list_id: int) -> bool:
        async with gate:
            return await db[c.QUEUED].find_one(due_filter(now, list_id, share), {"_id": 1}) is not None

    found = await asyncio.gather(*(due(i) for i in lists))
    return [i for i, yes in zip(lists, found, strict=True) if yes]


#: Probes of :func:`due_lists` in flight at once.
PROBES = 16


async def find_due(db: Any, list_id: int, now: dt.datetime, limit: int, share: Share | None = None) -> list[ClaimedDoc]:
    """Up to ``limit`` due, unclaimed messages of one list (in ``share`` of the queue, if given), oldest
    due first (FIFO by ``due_ms``): the candidates of :func:`claim_docs` (whole documents, see
    :data:`CLAIMED_FIELDS`).

    (Sorted by ``due_ms`` only, which the index serves: a campaign's messages share one due time.)
    """
    docs: list[ClaimedDoc] = (
        await db[c.QUEUED]
        .find(due_filter(now, list_id, share))  # whole documents: see CLAIMED_FIELDS
        .sort([("due_ms", 1)])
        .limit(limit)
        .batch_size(limit)  # one reply (the server's default first batch is ~100-200 documents)
        .to_list(None)
    )
    return docs


async def claim_docs(
    db: Any, candidates: Sequence[ClaimedDoc], token: str, now: dt.datetime
) -> tuple[list[ClaimedDoc], int]:
    """Claim whichever of ``candidates`` (documents read by :func:`find_due`) are still due, unclaimed and
    unchanged; returns the claimed documents (FIFO) and how many documents were read back for it (0 when every
    candidate was claimed: the candidates are then the claimed documents, see the module docstring).

    The update repeats the due conditions, so candidates read a moment ago (possibly by another process,
    possibly released since with a backoff) are only claimed if they are claimable now.
    """
    if not candidates:
        return [], 0
    q = db[c.QUEUED]
    groups: dict[int, list[str]] = {}
    for d in candidates:
        groups.setdefault(d["due_ms"], []).append(d["_id"])
    claim_set = {"$set": LEASE.taken(token, now)}
    now_ms = epoch_ms(now)
    # still unclaimed, and due at the time read (every change to an unclaimed message moves its due time; a due
    # time as read was at most ``now``): flat, so nx-27017 runs it as SQL, on the _id index (no index starts with
    # claimed_by: see store.client.INDEXES)
    filters: list[Filter] = [
        {"_id": {"$in": ids}, "claimed_by": None, "due_ms": {"$eq": due}}
        for due, ids in groups.items()
        if due <= now_ms
    ]
    if not filters:
        return [], 0
    if len(filters) == 1:
        matched = (await q.update_many(filters[0], claim_set)).matched_count
    else:
        matched = (await q.bulk_write([UpdateMany(f, claim_set) for f in filters], ordered=False)).matched_count
    if matched == 0:
        return [], 0
    if matched == len(candidates):
        docs = list(candidates)
        reads = 0
    else:
        # one reply for the whole claim (the server's default first batch is ~100-200 documents)
        mine = LEASE.fence(token, {"_id": {"$in": [d["_id"] for d in candidates]}})  # on the _id index
        docs = await q.find(mine).batch_size(max(1, matched)).to_list(None)
        reads = len(docs)
    docs.sort(key=lambda d: (d["due_ms"], d["_id"]))
    return docs, reads


async def claim(
    db: Any, list_id: int, token: str, now: dt.datetime, limit: int, share: Share | None = None
) -> list[ClaimedDoc]:
    """Claim up to ``limit`` due messages of one list; returns the claimed documents (oldest first)."""
    docs, _ = await claim_docs(db, await find_due(db, list_id, now, limit, share), token, now)
    return docs


async def held(db: Any, ids: Sequence[str], token: str) -> set[str]:
    """Which of ``ids`` this claim still holds."""
    return {d["_id"] async for d in db[c.QUEUED].find(LEASE.fence(token, {"_id": {"$in": list(ids)}}), {"_id": 1})}


async def mark(db: Any, ids: Sequence[str], token: str, fields: Update) -> set[str]:
    """Fenced ``$set`` of ``fields`` on ``ids``; returns the ids still held (re-read only when some were lost)."""
    if not ids:
        return set()
    matched = await LEASE.update(db[c.QUEUED], token, {"_id": {"$in": list(ids)}}, {"$set": fields})
    if matched == len(ids):
        return set(ids)
    return await held(db, ids, token)


async def mark_intent(db: Any, ids: Sequence[str], token: str, now: dt.datetime) -> set[str]:
    """Send intent (``sending_at``, epoch ms: a number is cheaper for nx-27017 to set than a date), fenced: only
    the returned ids may be sent."""
    return await mark(db, ids, token, {"sending_at": epoch_ms(now)})


async def withdraw_intent(db: Any, ids: Sequence[str], token: str) -> int:
    """Take back the send intent of ``ids`` (fenced), for messages none of which was handed to a driver: their
    intent write failed without an answer (it may have been applied). Returns how many this claim still held."""
    if not ids:
        return 0
    return await LEASE.update(db[c.QUEUED], token, {"_id": {"$in": list(ids)}}, {"$set": {"sending_at": None}})


def _with_due(extra: Update) -> Update:
    """``extra`` with the due time that goes with its ``not_before``, if it sets one.

    Only claimed messages are released with a ``not_before``, and a claimed message was due: the hold ends at
    or after its sendtime, so ``due_ms`` = the hold's end (:func:`models.due_ms`)."""
    nb = extra.get("not_before")
    if isinstance(nb, dt.datetime):
        return {**extra, "due_ms": epoch_ms(nb)}
    if "not_before" in extra:
        raise ValueError("a release cannot clear not_before (the due time would be lost)")
    return extra


async def release(db: Any, token: str, groups: Iterable[tuple[Sequence[str], Update]]) -> int:
    """Give messages back to the queue (fenced), each group with extra ``$set`` fields (e.g. ``not_before``,
    which moves ``due_ms`` with it).

    One round trip for every group. Messages with a send intent are never released by the executor.
    """
    ops = [
        UpdateMany(
            LEASE.fence(token, {"_id": {"$in": list(ids)}, "sending_at": None}),
            {"$set": {**_with_due(extra), **LEASE.released()}},
        )
        for ids, extra in groups
        if ids
    ]
    if not ops:
        return 0
    res = await db[c.QUEUED].bulk_write(ops, ordered=False)
    return int(res.modified_count)


async def hold_unsent(db: Any, token: str, groups: Iterable[tuple[Sequence[str], Update]]) -> int:
    """Give messages that carry a send intent but that the provider certainly did not accept (a transient answer:
    429, or a failure before the request was written) back to the queue, fenced, each group with extra ``$set``
    fields (the backoff). Returns how many this claim still held."""
    ops = [
        UpdateMany(
            LEASE.fence(token, {"_id": {"$in": list(ids)}}),
            {"$set": {**_with_due(extra), **LEASE.released(), "sending_at": None}},
        )
        for ids, extra in groups
        if ids
    ]
    if not ops:
        return 0
    res = await db[c.QUEUED].bulk_write(ops, ordered=False)
    return int(res.modified_count)


async def release_tokens(db: Any, held: Mapping[str, int]) -> int:
    """Release everything still held under the tokens of ``held`` (token: the sending list of its claim) that has
    no send intent (shutdown, a failed batch). One fenced update per token, on its list: the due index serves
    ``sending_list_id, claimed_by`` (nx-27017 runs an ``$in`` on a field as a scan)."""
    ops = [
        UpdateMany(
            LEASE.fence(token, {"sending_list_id": {"$eq": list_id}, "sending_at": None}), {"$set": LEASE.released()}
        )
        for token, list_id in held.items()
    ]
    if not ops:
        return 0
    return int((await db[c.QUEUED].bulk_write(ops, ordered=False)).modified_count)


async def complete(db: Any, ids: Sequence[str], token: str) -> int:
    """Remove recorded messages from the queue (fenced). Returns how many this claim still held."""
    if not ids:
        return 0
    return await LEASE.delete(db[c.QUEUED], token, {"_id": {"$in": list(ids)}})


async def hold(db: Any, token: str, groups: Iterable[tuple[Sequence[str], dt.datetime, Update]]) -> int:
    """Release claimed messages held until a time (quiet hours, billing backoff): ``(ids, until, extra fields)``."""
    return await release(db, token, [(ids, {**extra, "not_before": until}) for ids, until, extra in groups])


async def renew(db: Any, list_id: int, token: str, now: dt.datetime) -> int:
    """Renew the claim ``token`` holds on messages of list ``list_id`` (``claimed_at`` = ``now``, fenced): a batch
    that lasts longer than the claim TTL (a slow provider, a long wait for the pool) is never taken for dead by
    recovery while its process lives. Returns how many messages it still holds (0: none left, or lost)."""
    return await LEASE.renew(db[c.QUEUED], token, {"sending_list_id": {"$eq": list_id}}, now)


async def give_back(db: Any, ids: Sequence[str], token: str) -> int:
    """Release ``ids`` including their send intent: nothing was accepted for them (a stop during retries, a
    reconciliation's re-queue). Fenced on ``token``."""
    if not ids:
        return 0
    return await LEASE.release(db[c.QUEUED], token, {"_id": {"$in": list(ids)}}, sending_at=None)


async def claim_matching(db: Any, query: Filter, token: str, now: dt.datetime) -> list[QueuedDoc]:
    """Claim every unclaimed message matching ``query`` whatever its sendtime (opt-out, erasure: they are
    recorded elsewhere, then :func:`drop`-ped); returns the documents this claim holds. ``query`` names fields a
    claim does not change (a list, a contact): the claimed documents are read back by it and the token. With the
    list as ``{"$eq": id}`` the due index serves both (the list's unclaimed messages, then its token's)."""
    docs: list[QueuedDoc] = await LEASE.claim(db[c.QUEUED], query, token, now, flat=True)
    return docs


async def drop(db: Any, token: str, ids: Sequence[str]) -> int:
    """Delete the messages ``ids`` this claim holds (recorded elsewhere first)."""
    if not ids:
        return 0
    return await LEASE.delete(db[c.QUEUED], token, {"_id": {"$in": list(ids)}})


async def release_expired(db: Any, now: dt.datetime, ttl: dt.timedelta) -> int:
    """Recovery: release claims older than ``ttl`` at ``now`` that have no send intent (their process died)."""
    return await LEASE.release_expired(db[c.QUEUED], now, {"sending_at": None}, ttl=ttl)


async def take_over(db: Any, by_token: dict[str, list[str]], token: str, now: dt.datetime) -> None:
    """Recovery: move expired claims (fenced on each old token) to ``token``, with a fresh ``claimed_at`` so
    other sweepers no longer see them as expired."""
    if not by_token:
        return
    await db[c.QUEUED].bulk_write(
        [
            UpdateMany(LEASE.fence(old, {"_id": {"$in": ids}}), {"$set": LEASE.taken(token, now)})
            for old, ids in by_token.items()
        ],
        ordered=False,
    )


async def _execution_ids(db: Any, campaign_id: int) -> list[int]:
    return [d["_id"] async for d in db[c.EXECUTIONS].find({"campaign_id": campaign_id}, {"_id": 1})]


async def pause_campaign(db: Any, campaign_id: int) -> int:
    """Pause: hold the campaign's unclaimed queued messages (``paused``). Returns how many were held."""
    ids = await _execution_ids(db, campaign_id)
    if not ids:
        return 0
    res = await db[c.QUEUED].update_many(
        {"execution_id": {"$in": ids}, **LEASE.free()},
        {"$set": {"not_before": PAUSED_UNTIL, "due_ms": epoch_ms(PAUSED_UNTIL), "paused": True}},
    )
    return int(res.modified_count)


async def _unpause(db: Any, query: Filter, now: dt.datetime) -> int:
    """Due again from ``now`` (``not_before`` = now): the paused, unclaimed messages matching ``query``.

    A message's due time is ``max(sendtime, now)`` (a quiet-hours hold's sendtime may still be ahead), and its
    staleness still counts from its sendtime (``throttled_due``, as after a provider-storm hold: see
    :func:`checks.due_at`): a pause delays a message, it does not make its content newer, so one resumed more than
    ``stale_after_minutes`` past its sendtime is dead-lettered STALE when it comes up (the product's rule against
    outdated content; a re-drive naming STALE sends it anyway). Read the sendtimes, then one fenced update per
    distinct sendtime (a campaign has few), until none is left (messages paused meanwhile, e.g. by a running
    evaluation, are resumed too)."""
    q = db[c.QUEUED]
    free = {**query, **LEASE.free(), "paused": True}
    done, now_ms = 0, epoch_ms(now)
    for _ in range(10):
        by_sendtime: dict[dt.datetime, list[str]] = {}
        async for d in q.find(free, {"sendtime": 1}):
            by_sendtime.setdefault(d["sendtime"], []).append(d["_id"])
        if not by_sendtime:
            break
        for sendtime, ids in by_sendtime.items():
            fields = {
                "not_before": now,
                "due_ms": max(epoch_ms(sendtime), now_ms),
                "paused": False,
                "throttled_until": now,
                "throttled_due": sendtime,
            }
            for k in range(0, len(ids), 5000):
                res = await q.update_many({**free, "_id": {"$in": ids[k : k + 5000]}}, {"$set": fields})
                done += int(res.modified_count)
    return done


async def resume(db: Any, ids: Sequence[str], now: dt.datetime) -> int:
    """The paused (unclaimed) messages among ``ids`` are due again from ``now``."""
    if not ids:
        return 0
    return await _unpause(db, {"_id": {"$in": list(ids)}}, now)


async def resume_campaign(db: Any, campaign_id: int, now: dt.datetime) -> int:
    """Resume: the campaign's paused messages are due again from ``now``. Returns how many."""
    ids = await _execution_ids(db, campaign_id)
    if not ids:
        return 0
    return await _unpause(db, {"execution_id": {"$in": ids}}, now)


async def backfill(db: Any) -> int:
    """Give ``due_ms`` and ``slot`` to queued messages written without them, and epoch-ms claim stamps and send
    intents to claimed ones written as dates (by a version before they existed).

    Run once at executor start; a queue without such messages costs two queries. Returns how many were updated."""
    q = db[c.QUEUED]
    ops: list[UpdateOne] = []
    async for d in q.find({"claimed_by": {"$gt": ""}}, {"claimed_by": 1, "claimed_at": 1, "sending_at": 1}):
        dated = {k: epoch_ms(v) for k in ("claimed_at", "sending_at") if isinstance(v := d.get(k), dt.datetime)}
        if dated:  # fenced on the holder, so a claim that moved meanwhile is left alone
            ops.append(UpdateOne(LEASE.fence(d["claimed_by"], {"_id": d["_id"]}), {"$set": dated}))
    done = int((await q.bulk_write(ops, ordered=False)).modified_count) if ops else 0
    while True:
        docs = await q.find({"due_ms": None}, {"sendtime": 1, "not_before": 1}).limit(1000).to_list(None)
        docs += await q.find({"slot": None}, {"sendtime": 1, "not_before": 1}).limit(1000).to_list(None)
        ops = [
            UpdateOne(
                {"_id": d["_id"]},
                {"$set": {"due_ms": due_ms(d["sendtime"], d.get("not_before")), "slot": slot_of(d["_id"])}},
            )
            for d in {d["_id"]: d for d in docs if isinstance(d.get("sendtime"), dt.datetime)}.values()
        ]
        if not ops:
            return done
        done += int((await q.bulk_write(ops, ordered=False)).modified_count)


def hold_op(query: Filter, until: dt.datetime, *, paused: bool, unset: Update | None = None) -> UpdateMany:
    """The bulk-write operation holding the messages matching ``query`` until ``until`` (a re-drive's release)."""
    update: Update = {"$set": {"not_before": until, "due_ms": epoch_ms(until), "paused": paused}}
    if unset:
        update["$unset"] = unset
    return UpdateMany(query, update)
