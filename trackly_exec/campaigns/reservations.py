"""Cooldown reservations: at most one message per (sending list, phone) within the list's ``cooldown_minutes``,
whatever the number of executions, campaigns and daemons.

One document per (list, phone) in ``send_reservations`` (only for lists with a cooldown)::

    {_id: "<list id>:<E.164>", sending_list_id, to_number, contact_id, execution_id, campaign_id,
     message_id, reserved_at, state: "held" | "sent", sent_at}

* **taking** (the evaluation, per queue batch, before the insert): a reservation that does not exist is
  inserted (unique ``_id``: of two evaluations racing for one phone exactly one inserts it); a free one is
  taken over by a conditional update on the message that held it. The batch's reservations are then read back:
  a message is queued only if its reservation names it. A few round trips per batch, never one per contact.
* **blocking**: another message's reservation blocks the phone (the contact is skipped as ``frequency_cap``)
  while its message is queued (whatever its sendtime: quiet-hours holds, billing backoffs and pauses included;
  also a message queued again after a send attempt: a NO_RESPONSE released for a resend by reconciliation), or
  ``sent`` less than the list's current cooldown ago. ``sent_at`` counts from the send, not from the queuing.
* **settling** (the executor, :func:`settle`, called wherever MessageSent / FailedMessage records are
  written): a MessageSent or an ambiguous FailedMessage (NO_RESPONSE: the provider may have accepted it) turns
  the reservation to ``sent`` with ``sent_at``; a FailedMessage of a message that was never sent deletes it.
  Both only touch the reservation of that very message (``message_id``), never a later holder's.
* **crash safety**: settling comes after the record, so a crash in between leaves a ``held`` reservation whose
  message has left the queue. Such a reservation is checked against the records when it is in the way (queue
  first, then MessageSent, then FailedMessage: a message leaves the queue only after its record is written):
  sent or NO_RESPONSE -> blocks for the cooldown from that time; dead-lettered without a send -> free; found
  nowhere -> either being queued right now by another evaluation (blocks) or its evaluator died between the
  reservation and the queue insert (free once older than :data:`IN_FLIGHT`). An evaluation resumed after a
  crash finds its own reservations (same message ids, see :mod:`evaluation`) and keeps them.

No TTL index is involved (expiry is decided by comparing ``sent_at`` with the cooldown at read time); the
collection holds at most one document per phone of each list with a cooldown.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pymongo import DeleteMany, InsertOne, UpdateMany, UpdateOne
from pymongo.errors import BulkWriteError

from trackly_exec.logs import get_logger
from trackly_exec.store import constants as c
from trackly_exec.store.documents import MessageDoc, ReservationDoc
from trackly_exec.store.models import FailureReason

log = get_logger(__name__)

HELD = "held"
SENT = "sent"
#: A held reservation whose message is nowhere (not queued, no record) is being queued by its evaluation;
#: after this long its evaluator is taken for dead and the reservation is free.
IN_FLIGHT = dt.timedelta(minutes=5)
DUPLICATE_KEY = 11000


def key(list_id: int, to_number: str) -> str:
    return f"{list_id}:{to_number}"


@dataclass
class View:
    """The reservations in the way of one batch: which phones are blocked, which documents may be taken over."""

    blocked: set[str] = field(default_factory=set)  # phones held by another message within the cooldown
    takeover: dict[str, ReservationDoc] = field(default_factory=dict)  # key -> the free document, as read
    ours: set[str] = field(default_factory=set)  # keys already held by one of our message ids


async def _locate(db: Any, message_ids: list[str]) -> dict[str, tuple[str, Mapping[str, Any]]]:
    """Where each message is: ``queued``, ``sent`` or ``failed`` (with its record); absent = nowhere.
    The queue is read first (see the module docstring)."""
    out: dict[str, tuple[str, Mapping[str, Any]]] = {}
    if not message_ids:
        return out
    async for d in db[c.QUEUED].find({"_id": {"$in": message_ids}}, {"_id": 1}):
        out[d["_id"]] = ("queued", d)
    rest = [m for m in message_ids if m not in out]
    if rest:
        async for d in db[c.SENT].find({"_id": {"$in": rest}}, {"_id": 1, "timestamp": 1}):
            out[d["_id"]] = ("sent", d)
        rest = [m for m in rest if m not in out]
    if rest:
        async for d in db[c.FAILED].find(
            {"_id": {"$in": rest}}, {"_id": 1, "ambiguous": 1, "reason": 1, "failed_at": 1}
        ):
            out[d["_id"]] = ("failed", d)
    return out


def _ambiguous(rec: Mapping[str, Any]) -> bool:
    """Whether a message record (MessageSent or FailedMessage) is an ambiguous failure (NO_RESPONSE)."""
    return bool(rec.get("ambiguous")) or rec.get("reason") == str(FailureReason.NO_RESPONSE)


async def lookup(
    db: Any, list_id: int, phones: Iterable[str], ours: Iterable[str], cutoff: dt.datetime, now: dt.datetime
) -> View:
    """Read the reservations of ``phones`` on the list (one query, plus up to three to check held ones):
    blocked phones, free documents that may be taken over, and the ones ``ours`` (message ids) already hold.
    Read-only: an estimate can call it without reserving anything."""
    view = View()
    keys = list(dict.fromkeys(key(list_id, p) for p in phones))
    if not keys:
        return view
    mine = set(ours)
    docs = await db[c.RESERVATIONS].find({"_id": {"$in": keys}}).to_list(None)
    held: list[ReservationDoc] = []
    expired: list[ReservationDoc] = []
    for d in docs:
        if d.get("message_id") in mine:
            view.ours.add(d["_id"])
        elif d.get("state") == SENT:
            sent_at = d.get("sent_at")
            if isinstance(sent_at, dt.datetime) and sent_at >= cutoff:
                view.blocked.add(d["to_number"])
            else:
                expired.append(d)
        else:
            held.append(d)
    if expired:  # sent long ago, unless queued again since (a NO_RESPONSE released for a resend, a re-drive)
        again = {
            q["_id"] async for q in db[c.QUEUED].find({"_id": {"$in": [d["message_id"] for d in expired]}}, {"_id": 1})
        }
        for d in expired:
            if d["message_id"] in again:
                view.blocked.add(d["to_number"])
            else:
                view.takeover[d["_id"]] = d
    if held:
        where = await _locate(db, [d["message_id"] for d in held])
        for d in held:
            state, rec = where.get(d["message_id"], ("", {}))
            when: Any = None
            if state == "queued":
                view.blocked.add(d["to_number"])
                continue
            if state == "sent":
                when = rec.get("timestamp")
            elif state == "failed":
                if not _ambiguous(rec):
                    view.takeover[d["_id"]] = d
                    continue
                when = rec.get("failed_at")
            else:  # nowhere: being queued right now, or its evaluator died before the queue insert
                reserved = d.get("reserved_at")
                if isinstance(reserved, dt.datetime) and now - reserved < IN_FLIGHT:
                    view.blocked.add(d["to_number"])
                else:
                    view.takeover[d["_id"]] = d
                continue
            if isinstance(when, dt.datetime) and when < cutoff:
                view.takeover[d["_id"]] = d
            else:
                view.blocked.add(d["to_number"])
    return view


def _doc(msg: MessageDoc, now: dt.datetime) -> ReservationDoc:
    return {
        "sending_list_id": msg["sending_list_id"],
        "to_number": msg["to_number"],
        "contact_id": msg.get("contact_id"),
        "execution_id": msg.get("execution_id"),
        "campaign_id": msg.get("campaign_id"),
        "message_id": msg["_id"],
        "reserved_at": now,
        "state": HELD,
        "sent_at": None,
    }


async def take(db: Any, messages: Sequence[MessageDoc], view: View, now: dt.datetime) -> set[str]:
    """Reserve (list, phone) for each of ``messages`` (queue documents); returns the ids that hold theirs.

    One ``bulk_write`` (inserts for new keys, conditional take-overs of free documents), then a read back of
    the keys whose outcome the write does not prove: an insert that did not fail holds its key (nothing takes a
    reservation over within :data:`IN_FLIGHT` of its taking), as does every take-over when all of them matched;
    the rest (a lost insert race, an unmatched take-over) is read back. Usually no read back at all."""
    if not messages:
        return set()
    ops: list[Any] = []
    keys: list[str] = []
    op_keys: list[str] = []  # the key of each op, in op order
    updates: list[str] = []
    for m in messages:
        k = key(int(m["sending_list_id"]), m["to_number"])
        keys.append(k)
        if k in view.ours:
            continue
        old = view.takeover.get(k)
        if old is None:
            ops.append(InsertOne({"_id": k, **_doc(m, now)}))
        else:
            ops.append(
                UpdateOne(
                    {"_id": k, "message_id": old["message_id"], "state": old.get("state")}, {"$set": _doc(m, now)}
                )
            )
            updates.append(k)
        op_keys.append(k)
    unproven: set[str] = set(view.ours)  # ours already: read back like before (it may have moved on since)
    if ops:
        matched = 0
        try:
            result = await db[c.RESERVATIONS].bulk_write(ops, ordered=False)
            matched = result.matched_count
        except BulkWriteError as exc:
            errors = exc.details.get("writeErrors", [])
            if any(e.get("code") != DUPLICATE_KEY for e in errors):
                raise
            unproven.update(op_keys[int(e["index"])] for e in errors)
            matched = int(exc.details.get("nMatched", 0))
        if updates and matched != len(updates):
            unproven.update(updates)
    if not unproven:
        return {m["_id"] for m in messages}
    holders = {
        d["_id"]: d.get("message_id")
        async for d in db[c.RESERVATIONS].find({"_id": {"$in": sorted(unproven)}}, {"message_id": 1})
    }
    return {m["_id"] for m, k in zip(messages, keys, strict=True) if k not in unproven or holders.get(k) == m["_id"]}


async def release(db: Any, message_ids: Sequence[str]) -> int:
    """Give up the reservations of messages that will not be sent (only those still held by them)."""
    if not message_ids:
        return 0
    res = await db[c.RESERVATIONS].delete_many({"message_id": {"$in": list(message_ids)}, "state": HELD})
    return int(res.deleted_count)


async def settle(db: Any, collection: str, records: Sequence[Mapping[str, Any]]) -> None:
    """After MessageSent / FailedMessage records were written: sent and ambiguous ones turn their reservation
    to ``sent`` (from the record's time), the others (never sent) release it. One round trip."""
    if not records:
        return
    if collection not in (c.SENT, c.FAILED):
        return
    sent: dict[dt.datetime, list[str]] = {}
    unsent: list[str] = []
    for r in records:
        if collection == c.SENT:
            sent.setdefault(r["timestamp"], []).append(r["_id"])
        elif _ambiguous(r):
            sent.setdefault(r["failed_at"], []).append(r["_id"])
        else:
            unsent.append(r["_id"])
    ops: list[Any] = [
        UpdateMany({"message_id": {"$in": ids}}, {"$set": {"state": SENT, "sent_at": at}}) for at, ids in sent.items()
    ]
    if unsent:
        ops.append(DeleteMany({"message_id": {"$in": unsent}, "state": HELD}))
    await db[c.RESERVATIONS].bulk_write(ops, ordered=False)
