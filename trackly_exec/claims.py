"""Claims on queued messages: claim, fence, release, complete.

A batch is claimed with a token unique to this process *and* this claim (``"<instance>:<uuid hex>"``):

1. read the ids of up to ``limit`` due messages of one list (FIFO: ``sendtime, _id``);
2. ``update_many({_id in ids, claimed_by: None}, {$set: {claimed_by: token, claimed_at: now}})`` — per
   document atomic, so two processes racing for the same ids each get a disjoint part;
3. read back ``find({claimed_by: token})``: exactly what this claim got.

Every later write about a claimed message is conditional on ``claimed_by == token`` (fencing): a process
that lost its claim (paused past the claim TTL while recovery released or dead-lettered it) matches
nothing, so it can neither mark intent (and so never sends) nor delete the queue entry.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

from pymongo import UpdateMany

from . import constants as c


def new_token(instance: str) -> str:
    """A claim token: the instance name plus a random part, so every claim batch is distinct."""
    return f"{instance}:{uuid.uuid4().hex}"


def due_filter(now: dt.datetime, list_id: int | None = None) -> dict[str, Any]:
    """Unclaimed messages whose sendtime (and backoff, if any) has come."""
    flt: dict[str, Any] = {
        "claimed_by": None,
        "sendtime": {"$lte": now},
        "$or": [{"not_before": None}, {"not_before": {"$lte": now}}],
    }
    if list_id is not None:
        flt = {"sending_list_id": list_id, **flt}
    return flt


async def due_lists(db: Any, now: dt.datetime) -> list[int]:
    """Ids of the sending lists that have due, unclaimed messages."""
    return [int(v) for v in await db[c.QUEUED].distinct("sending_list_id", due_filter(now)) if v is not None]


async def claim(db: Any, list_id: int, token: str, now: dt.datetime, limit: int) -> list[dict[str, Any]]:
    """Claim up to ``limit`` due messages of one list; returns the claimed documents (oldest first)."""
    q = db[c.QUEUED]
    ids = [d["_id"] async for d in q.find(due_filter(now, list_id), {"_id": 1})
           .sort([("sendtime", 1), ("_id", 1)]).limit(limit)]
    if not ids:
        return []
    res = await q.update_many({"_id": {"$in": ids}, "claimed_by": None},
                              {"$set": {"claimed_by": token, "claimed_at": now}})
    if res.matched_count == 0:
        return []
    docs = await q.find({"claimed_by": token}).to_list(None)
    docs.sort(key=lambda d: (d["sendtime"], d["_id"]))
    return docs


async def held(db: Any, ids: Sequence[str], token: str) -> set[str]:
    """Which of ``ids`` this claim still holds."""
    return {d["_id"] async for d in db[c.QUEUED].find({"_id": {"$in": list(ids)}, "claimed_by": token}, {"_id": 1})}


async def mark(db: Any, ids: Sequence[str], token: str, fields: dict[str, Any]) -> set[str]:
    """Fenced ``$set`` of ``fields`` on ``ids``; returns the ids still held (re-read only when some were lost)."""
    if not ids:
        return set()
    res = await db[c.QUEUED].update_many({"_id": {"$in": list(ids)}, "claimed_by": token}, {"$set": fields})
    if res.matched_count == len(ids):
        return set(ids)
    return await held(db, ids, token)


async def mark_intent(db: Any, ids: Sequence[str], token: str, now: dt.datetime) -> set[str]:
    """Send intent (``sending_at``), fenced: only the returned ids may be sent."""
    return await mark(db, ids, token, {"sending_at": now})


async def release(db: Any, token: str, groups: Iterable[tuple[Sequence[str], dict[str, Any]]]) -> int:
    """Give messages back to the queue (fenced), each group with extra ``$set`` fields (e.g. ``not_before``).

    One round trip for every group. Messages with a send intent are never released by the executor.
    """
    ops = [
        UpdateMany({"_id": {"$in": list(ids)}, "claimed_by": token, "sending_at": None},
                   {"$set": {**extra, "claimed_by": None, "claimed_at": None}})
        for ids, extra in groups if ids
    ]
    if not ops:
        return 0
    res = await db[c.QUEUED].bulk_write(ops, ordered=False)
    return int(res.modified_count)


async def release_tokens(db: Any, tokens: Iterable[str]) -> int:
    """Release everything still held under ``tokens`` that has no send intent (shutdown)."""
    tokens = list(tokens)
    if not tokens:
        return 0
    res = await db[c.QUEUED].update_many(
        {"claimed_by": {"$in": tokens}, "sending_at": None}, {"$set": {"claimed_by": None, "claimed_at": None}}
    )
    return int(res.modified_count)


async def complete(db: Any, ids: Sequence[str], token: str) -> int:
    """Remove recorded messages from the queue (fenced). Returns how many this claim still held."""
    if not ids:
        return 0
    res = await db[c.QUEUED].delete_many({"_id": {"$in": list(ids)}, "claimed_by": token})
    return int(res.deleted_count)
