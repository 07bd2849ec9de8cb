"""Dead letters: list FailedMessage records and re-drive the retryable ones back into the queue.

Retryable: ``RATE_LIMIT_TIMEOUT``, ``BILLING_BLOCKED``, ``PROVIDER_ERROR`` (by default), ``STALE`` when asked for
by name, ``NO_RESPONSE`` only with ``allow_duplicates`` (the provider may have accepted it: re-sending may text the
person twice). ``BLOCKED_CONTENT`` and ``CONTACT_BLOCKED`` never. A PROVIDER_ERROR the provider flagged as spam or
as an opt-out at the provider is not re-driven either.

Before anything is queued, every message is checked again: the contact must still be subscribed and not blocked,
outside the list's cooldown (no MessageSent to the number on the list within ``cooldown_minutes``, and its cooldown
reservation free or its own: :mod:`trackly_exec.campaigns.reservations`, taken before the queue insert), and a message
whose recipient is in quiet hours now is queued held until their window opens (the executor checks quiet hours
and the block list again at send time, as for any message). A re-driven message keeps its id; it is due now
(``sendtime`` = the re-drive time, so STALE counts from then), its campaign's pause holds it like any other.

Exactly one record per message, with no transaction (a standalone mongod has none), in three fenced steps:

1. **mark** the FailedMessage records with a fresh ``redrive_token`` (only unmarked ones: two re-drives of the
   same message cannot both proceed);
2. **insert** the queue documents, *held*: ``not_before`` far in the future and the same ``redrive_token``, so no
   executor can claim one yet, and the claim-recovery sweep never touches them (they are not claimed);
3. **delete** the marked FailedMessage records (fenced on the token), then **release** the queue documents
   (``not_before`` = now or the quiet-hours opening) only for the ids whose FailedMessage is gone; an id whose
   FailedMessage is still there (its mark was cleared, see below) loses its queue document instead.

A crash leaves one of: a marked FailedMessage and no queue document (still one record: the failure); both, with
the queue document held (never sent while held); a held queue document alone (one record). :func:`recover` —
run at the start of every re-drive and by the executor's claim-recovery sweep — finishes each such re-drive older
than :data:`RECOVER_AFTER`: a marked FailedMessage whose queue document exists is deleted and the document
released; one without a queue document is unmarked (the re-drive is abandoned, the failure stays); a held queue
document whose FailedMessage is gone is released, and one whose FailedMessage is back unmarked is deleted. Every
step is fenced on the token, so recovery racing a live re-drive still ends with exactly one record.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from pymongo import DeleteMany
from pymongo.errors import BulkWriteError

from trackly_exec.campaigns import reservations
from trackly_exec.campaigns.queue import PAUSED_UNTIL
from trackly_exec.executor import claims
from trackly_exec.executor.checks import in_window_now
from trackly_exec.executor.outcomes import dead_letter_claimed
from trackly_exec.logs import get_logger
from trackly_exec.store import constants as c
from trackly_exec.store import quiethours
from trackly_exec.store.client import opted_out
from trackly_exec.store.documents import ContactDoc, FailedDoc, Filter, JsonObject, QueuedDoc, SendingListDoc
from trackly_exec.store.models import FailedMessage, FailureReason, MessageFields, QuietHours, entering_queue

log = get_logger(__name__)

DEFAULT_REASONS = (FailureReason.RATE_LIMIT_TIMEOUT, FailureReason.BILLING_BLOCKED, FailureReason.PROVIDER_ERROR)
RETRYABLE = (*DEFAULT_REASONS, FailureReason.STALE, FailureReason.NO_RESPONSE, FailureReason.CANCELLED)
NEVER = (FailureReason.BLOCKED_CONTENT, FailureReason.CONTACT_BLOCKED)
BATCH = 500
RECOVER_AFTER = dt.timedelta(minutes=2)
HELD = PAUSED_UNTIL
DUPLICATE_WARNING = (
    "NO_RESPONSE messages may have been accepted by the provider before the failure was recorded: "
    "re-sending them can text these people twice"
)
_FIELDS = tuple(MessageFields.model_fields)


@dataclass
class RedriveResult:
    matched: int = 0
    requeued: int = 0
    would_requeue: int = 0
    held_quiet_hours: int = 0
    held_paused: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    message_ids: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    dry_run: bool = False

    def as_dict(self) -> JsonObject:
        return {
            "matched": self.matched,
            "requeued": self.requeued,
            "would_requeue": self.would_requeue,
            "held_quiet_hours": self.held_quiet_hours,
            "held_paused": self.held_paused,
            "skipped": {k: v for k, v in self.skipped.items() if v},
            "message_ids": self.message_ids[:1000],
            "warnings": self.warnings,
            "dry_run": self.dry_run,
        }


def dead_letter_filter(
    *,
    reasons: list[str] | None = None,
    campaign_id: int | None = None,
    execution_id: int | None = None,
    sending_list_id: int | None = None,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    message_ids: list[str] | None = None,
) -> Filter:
    q: Filter = {}
    if reasons:
        q["reason"] = {"$in": list(reasons)}
    if campaign_id is not None:
        q["campaign_id"] = campaign_id
    if execution_id is not None:
        q["execution_id"] = execution_id
    if sending_list_id is not None:
        q["sending_list_id"] = sending_list_id
    if since is not None or until is not None:
        q["failed_at"] = {**({"$gte": since} if since else {}), **({"$lt": until} if until else {})}
    if message_ids is not None:
        q["_id"] = {"$in": list(message_ids)}
    return q


def _why_not(doc: FailedDoc, reasons: set[str], allow_duplicates: bool) -> str | None:
    """Why this FailedMessage is not re-driven (None: it may be)."""
    reason = str(doc.get("reason"))
    if reason in {str(r) for r in NEVER}:
        return f"not_retryable_{reason}"
    if reason == FailureReason.NO_RESPONSE and not allow_duplicates:
        return "no_response_needs_allow_duplicates"
    if reason not in reasons:
        return f"reason_not_selected_{reason}"
    if doc.get("opted_out"):
        return "opted_out_at_provider"
    if doc.get("spam"):
        return "flagged_spam"
    return None


async def cancel_queued(db: Any, campaign_id: int, now: dt.datetime, bus: Any = None) -> tuple[int, int]:
    """Dead-letter every unclaimed queued message of the campaign as CANCELLED (claimed, recorded, deleted fenced,
    as a STOP ends a contact's); returns ``(cancelled, still claimed)``. Claimed ones are an executor's: with the
    campaign paused, its send-time re-check gives them back, and a later call ends them."""
    token = f"cancel:{uuid.uuid4().hex}"
    query: Filter = {"campaign_id": {"$eq": campaign_id}}
    docs = await claims.claim_matching(db, query, token, now)
    if docs:
        failed = [
            FailedMessage.model_validate(
                {
                    **d,
                    "id": d["_id"],
                    "reason": FailureReason.CANCELLED,
                    "detail": f"campaign {campaign_id} cancelled",
                    "failed_at": now,
                }
            ).to_doc()
            for d in docs
        ]
        await dead_letter_claimed(db, token, failed, bus)
    left = await db[c.QUEUED].count_documents(query)
    return len(docs), int(left)


#: What a re-drive would do with a dead letter (:func:`outlook`): ``default`` (a plain re-drive takes it),
#: ``by_reason`` (only when its reason is named: STALE), ``allow_duplicates`` (NO_RESPONSE: only with
#: allow_duplicates), ``opted_out`` / ``contact_blocked`` / ``spam`` (skipped: the number said STOP, the contact is
#: blocked, the provider flagged it), ``no`` (never re-driven: the message itself is the problem).
OUTLOOKS = ("default", "by_reason", "allow_duplicates", "opted_out", "contact_blocked", "spam", "no")


async def outlook(db: Any, docs: Sequence[FailedDoc]) -> dict[str, str]:
    """What a re-drive would do with each of ``docs`` (see :data:`OUTLOOKS`), by message id, by the re-drive's own
    checks (:func:`_why_not`, :func:`_opted_out_now`): its reason, the provider's flags, and the contact's and
    number's opt-out now (two reads for the whole page)."""
    contacts = await _contacts(db, [int(cid) for d in docs if (cid := d.get("contact_id")) is not None])
    stops = await opted_out(db, {(int(d["sending_list_id"]), d["to_number"]) for d in docs if d.get("to_number")})
    default = {str(r) for r in DEFAULT_REASONS}
    every = {str(r) for r in RETRYABLE}
    by_why = {"opted_out_at_provider": "opted_out", "flagged_spam": "spam"}
    out: dict[str, str] = {}
    for d in docs:
        reason = str(d.get("reason"))
        contact = contacts.get(int(cid)) if (cid := d.get("contact_id")) is not None else None
        if (why := _why_not(d, every, allow_duplicates=True)) is not None:
            out[d["_id"]] = by_why.get(why, "no")
        elif (said := _opted_out_now(d, contact, stops)) is not None:
            out[d["_id"]] = said
        elif reason == FailureReason.NO_RESPONSE:
            out[d["_id"]] = "allow_duplicates"
        else:
            out[d["_id"]] = "default" if reason in default else "by_reason"
    return out


def _opted_out_now(doc: FailedDoc, contact: ContactDoc | None, stops: set[tuple[int, str]]) -> str | None:
    """``opted_out`` / ``contact_blocked`` when the message's contact or number says no now (unless a test send
    lifted the opt-out on request), else None."""
    if "opt_out" in set(doc.get("overrides") or ()):  # a test send's checks lifted on request stay lifted
        return None
    if contact is not None and (contact.get("subscribed") is False or contact.get("blocked") is True):
        return "opted_out" if contact.get("subscribed") is False else "contact_blocked"
    if (int(doc["sending_list_id"]), doc.get("to_number")) in stops:
        return "opted_out"
    return None


async def _contacts(db: Any, ids: list[int]) -> dict[int, ContactDoc]:
    if not ids:
        return {}
    docs = (
        await db[c.CONTACTS]
        .find({"_id": {"$in": ids}}, {"subscribed": 1, "blocked": 1, "timezone": 1, "phone": 1})
        .to_list(None)
    )
    return {int(d["_id"]): d for d in docs}


async def _lists(db: Any, ids: set[int]) -> dict[int, SendingListDoc]:
    docs = await db[c.SENDING_LISTS].find({"_id": {"$in": list(ids)}}).to_list(None)
    return {int(d["_id"]): d for d in docs}


async def _cooled(
    db: Any, lists: dict[int, SendingListDoc], docs: list[FailedDoc], now: dt.datetime
) -> tuple[set[str], dict[int, reservations.View]]:
    """Ids of messages whose number got a MessageSent on the same list within the list's cooldown, or whose
    number's cooldown reservation is held by another message; and the reservations read, per list."""
    out: set[str] = set()
    views: dict[int, reservations.View] = {}
    by_list: dict[int, list[FailedDoc]] = {}
    for d in docs:
        by_list.setdefault(int(d["sending_list_id"]), []).append(d)
    for list_id, group in by_list.items():
        minutes = float((lists.get(list_id) or {}).get("cooldown_minutes") or 0)
        if minutes <= 0:
            continue
        numbers = list({d["to_number"] for d in group})
        cutoff = now - dt.timedelta(minutes=minutes)
        recent = {
            d["to_number"]
            async for d in db[c.SENT].find(
                {"sending_list_id": list_id, "timestamp": {"$gte": cutoff}, "to_number": {"$in": numbers}},
                {"to_number": 1},
            )
        }
        out.update(d["_id"] for d in group if d["to_number"] in recent)
        views[list_id] = view = await reservations.lookup(db, list_id, numbers, [d["_id"] for d in group], cutoff, now)
        out.update(d["_id"] for d in group if d["to_number"] in view.blocked)
    return out, views


async def _reserve(db: Any, views: dict[int, reservations.View], docs: list[FailedDoc], now: dt.datetime) -> set[str]:
    """Take the cooldown reservations of the messages on lists with a cooldown; returns the ids that lost theirs
    (the number was reserved by another message since it was looked up)."""
    lost: set[str] = set()
    by_list: dict[int, list[FailedDoc]] = {}
    for d in docs:
        if int(d["sending_list_id"]) in views:
            by_list.setdefault(int(d["sending_list_id"]), []).append(d)
    for list_id, group in by_list.items():
        won = await reservations.take(db, group, views[list_id], now)
        lost.update(d["_id"] for d in group if d["_id"] not in won)
    return lost


async def _paused_campaigns(db: Any, ids: set[int]) -> set[int]:
    if not ids:
        return set()
    return {
        int(d["_id"]) async for d in db[c.CAMPAIGNS].find({"_id": {"$in": list(ids)}, "status": "paused"}, {"_id": 1})
    }


async def redrive(
    trackly: Any,
    match: Filter,
    *,
    reasons: list[str] | None = None,
    allow_duplicates: bool = False,
    dry_run: bool = False,
    limit: int = 10_000,
    now: dt.datetime | None = None,
) -> RedriveResult:
    """Re-drive the FailedMessage records matching ``match`` whose reason is in ``reasons`` (default
    :data:`DEFAULT_REASONS`). See the module docstring for the checks and the crash-safety argument."""
    db = trackly.db
    now = now or trackly.now()
    wanted = {str(r) for r in (reasons or DEFAULT_REASONS)}
    res = RedriveResult(dry_run=dry_run)
    if FailureReason.NO_RESPONSE in wanted:
        res.warnings.append(DUPLICATE_WARNING)
    await recover(trackly, now=now)
    # the ids first (one cursor, ids only), then the records batch by batch by _id: no re-scan per batch, and the
    # cursor is not read while the batches delete what it walks
    ids = [d["_id"] async for d in db[c.FAILED].find(dict(match), {"_id": 1}).limit(limit).batch_size(10_000)]
    for k in range(0, len(ids), BATCH):
        docs = await db[c.FAILED].find({"_id": {"$in": ids[k : k + BATCH]}}).to_list(None)
        res.matched += len(docs)
        await _redrive_batch(trackly, docs, wanted, allow_duplicates, dry_run, now, res)
    log.info(
        "dead_letters_redriven",
        matched=res.matched,
        requeued=res.requeued,
        skipped=dict(res.skipped),
        dry_run=dry_run,
        allow_duplicates=allow_duplicates,
    )
    return res


async def _redrive_batch(
    trackly: Any,
    docs: list[FailedDoc],
    wanted: set[str],
    allow_duplicates: bool,
    dry_run: bool,
    now: dt.datetime,
    res: RedriveResult,
) -> None:
    db = trackly.db
    todo: list[FailedDoc] = []
    for d in docs:
        why = _why_not(d, wanted, allow_duplicates)
        if why is None and d.get("redrive_token"):
            why = "redrive_in_progress"
        if why:
            res.skipped[why] += 1
        else:
            todo.append(d)
    if not todo:
        return
    contacts = await _contacts(db, [int(cid) for d in todo if (cid := d.get("contact_id")) is not None])
    # the number's own STOP on its list, contact or not (a test send's number, a contact stored in another spelling)
    stops = await opted_out(db, {(int(d["sending_list_id"]), d["to_number"]) for d in todo})
    lists = await _lists(db, {int(d["sending_list_id"]) for d in todo})
    cooled, views = await _cooled(db, lists, todo, now)
    already = {d["_id"] async for d in db[c.SENT].find({"_id": {"$in": [d["_id"] for d in todo]}}, {"_id": 1})}
    paused = await _paused_campaigns(db, {int(cid) for d in todo if (cid := d.get("campaign_id")) is not None})
    go: list[tuple[FailedDoc, dt.datetime, bool]] = []  # (doc, not_before, paused)
    memo: dict[Any, Any] = {}
    for d in todo:
        contact = contacts.get(int(cid)) if (cid := d.get("contact_id")) is not None else None
        lst = lists.get(int(d["sending_list_id"]))
        if d["_id"] in already:
            res.skipped["already_sent"] += 1
            continue
        if lst is None:
            res.skipped["sending_list_gone"] += 1
            continue
        if (said := _opted_out_now(d, contact, stops)) is not None:
            res.skipped[said] += 1
            continue
        if d["_id"] in cooled:
            res.skipped["cooldown"] += 1
            continue
        quiet = QuietHours.model_validate(lst.get("quiet_hours") or {})
        window = quiethours.Window.from_quiet_hours(quiet)
        tz = contact.get("timezone") if contact else None
        inside, zones = (
            (True, None)
            if "quiet_hours" in (d.get("overrides") or ())  # a test send's checks lifted on request stay lifted
            else in_window_now(d["to_number"], tz, quiet.default_timezone, now, window, memo)
        )
        not_before = now
        if not inside:
            zones = zones or quiethours.contact_zones(d["to_number"], tz, quiet.default_timezone)
            not_before = quiethours.next_opening(now, zones, window)
            res.held_quiet_hours += 1
        is_paused = (cid := d.get("campaign_id")) is not None and int(cid) in paused
        res.held_paused += is_paused
        go.append((d, not_before, is_paused))
    if dry_run:
        res.would_requeue += len(go)
        res.message_ids += [d["_id"] for d, _, _ in go]
        return
    if not go:
        return
    token = f"{trackly.instance}:redrive:{uuid.uuid4().hex}"
    ids = [d["_id"] for d, _, _ in go]
    await db[c.REDRIVES].insert_one({"_id": token, "ids": ids, "at": now})
    # 1. mark (only unmarked records: a concurrent re-drive of the same message gets none of them; nor one the
    # reconciler holds right now: it is asking the provider about it, see reconcile.py)
    not_reconciling = {"$or": [{"reconcile_by": {"$eq": None}}, {"reconcile_at": {"$lte": now}}]}
    marking = await db[c.FAILED].update_many(
        {"_id": {"$in": ids}, "redrive_token": {"$eq": None}, "$and": [not_reconciling]},
        {"$set": {"redrive_token": token, "redrive_at": now}},
    )
    if marking.modified_count == len(ids):  # all of them (the usual case): no read-back
        marked = set(ids)
    else:
        marked = {d["_id"] async for d in db[c.FAILED].find({"_id": {"$in": ids}, "redrive_token": token}, {"_id": 1})}
    res.skipped["redrive_in_progress"] += len(ids) - len(marked)
    go = [g for g in go if g[0]["_id"] in marked]
    if not go:
        await db[c.REDRIVES].delete_one({"_id": token})
        return
    # 1b. cooldown reservations (a reservation left by an abandoned re-drive is free: its message is a failure)
    lost = await _reserve(db, views, [d for d, _, _ in go], now)
    if lost:
        await db[c.FAILED].update_many(
            {"_id": {"$in": list(lost)}, "redrive_token": token}, {"$unset": {"redrive_token": "", "redrive_at": ""}}
        )
        res.skipped["cooldown"] += len(lost)
        go = [g for g in go if g[0]["_id"] not in lost]
        if not go:
            await db[c.REDRIVES].delete_one({"_id": token})
            return
    # 2. insert, held
    # a contact stored in another spelling of its number is held to the number's STOP at send time (evaluation)
    odd = {
        d["_id"]
        for d, _, _ in go
        if (cid := d.get("contact_id")) is not None
        and (contact := contacts.get(int(cid))) is not None
        and contact.get("phone") != d["to_number"]
    }
    queued = [_queue_doc(d, token, now, number_stop=d["_id"] in odd) for d, _, _ in go]
    refused: set[str] = set()
    try:
        await db[c.QUEUED].insert_many(queued, ordered=False)
    except BulkWriteError as exc:
        errors = exc.details.get("writeErrors", [])
        if any(e.get("code") != 11000 for e in errors):
            raise
        refused = {queued[int(e["index"])]["_id"] for e in errors}
    if refused:  # already queued (or its execution already has this contact queued): leave the failure as it is
        await db[c.FAILED].update_many(
            {"_id": {"$in": list(refused)}, "redrive_token": token}, {"$unset": {"redrive_token": "", "redrive_at": ""}}
        )
        res.skipped["already_queued"] += len(refused)
        go = [g for g in go if g[0]["_id"] not in refused]
    # 3. delete the failures, then release what lost its failure record
    await db[c.FAILED].delete_many({"_id": {"$in": [d["_id"] for d, _, _ in go]}, "redrive_token": token})
    n = await _release(db, token, {d["_id"]: (nb, p) for d, nb, p in go}, now)
    res.requeued += n
    res.message_ids += [d["_id"] for d, _, _ in go][:n]
    await db[c.REDRIVES].delete_one({"_id": token})
    await reopen_executions(db, {int(eid) for d, _, _ in go if (eid := d.get("execution_id")) is not None})


def _queue_doc(failed: FailedDoc, token: str, now: dt.datetime, *, number_stop: bool = False) -> QueuedDoc:
    doc: dict[str, object] = {k: failed.get(k) for k in _FIELDS if k in failed}
    if number_stop:
        doc["number_stop"] = True
    doc.update(
        {
            "_id": failed["_id"],
            "sendtime": now,
            "created_at": now,
            **entering_queue(failed["_id"], now, not_before=HELD),
            "billing_blocked_since": None,
            "paused": False,
            "attempts": 0,
            "redrive_token": token,
            "redriven_at": now,
            "redriven_from": str(failed.get("reason")),
            "redrive_count": int(failed.get("redrive_count") or 0) + 1,
        }
    )
    return cast("QueuedDoc", doc)  # the record's MessageFields, and a queued message's own fields


async def _release(db: Any, token: str, plan: dict[str, tuple[dt.datetime, bool]], now: dt.datetime) -> int:
    """Release the held queue documents of ``plan`` whose FailedMessage is gone; delete the others' (their
    FailedMessage is back unmarked: the re-drive was abandoned by :func:`recover`). Returns how many were released."""
    if not plan:
        return 0
    ids = list(plan)
    still = {d["_id"] async for d in db[c.FAILED].find({"_id": {"$in": ids}}, {"_id": 1})}
    ops: list[Any] = []
    if still:
        ops.append(DeleteMany({"_id": {"$in": list(still)}, "redrive_token": token}))
    groups: dict[tuple[dt.datetime, bool], list[str]] = {}
    for mid, (nb, paused) in plan.items():
        if mid not in still:
            groups.setdefault((nb, paused), []).append(mid)
    for (nb, paused), group in groups.items():
        query = {"_id": {"$in": group}, "redrive_token": token}
        ops.append(claims.hold_op(query, HELD if paused else nb, paused=paused, unset={"redrive_token": ""}))
    if not ops:
        return 0
    out = await db[c.QUEUED].bulk_write(ops, ordered=False)
    return int(out.modified_count)


async def reopen_executions(db: Any, ids: set[int]) -> None:
    """A completed execution has messages in the queue again (a re-drive, a reconciliation's release): it is
    ``queued`` until they are done (its campaign counts as running meanwhile: not archived, not edited)."""
    if ids:
        await db[c.EXECUTIONS].update_many(
            {"_id": {"$in": list(ids)}, "status": "completed"}, {"$set": {"status": "queued", "completed_at": None}}
        )


async def recover(
    trackly: Any, *, now: dt.datetime | None = None, older_than: dt.timedelta = RECOVER_AFTER
) -> Counter[str]:
    """Finish or abandon re-drives interrupted by a crash (see the module docstring). Safe to run anywhere, any time.

    Each re-drive batch journals its token and ids (``redrives`` collection) before step 1 and removes the journal
    entry after step 3, so this only reads the journal entries older than ``older_than`` (normally none)."""
    db = trackly.db
    now = now or trackly.now()
    out: Counter[str] = Counter()
    for entry in await db[c.REDRIVES].find({"at": {"$lt": now - older_than}}).limit(100).to_list(None):
        token, ids = entry["_id"], list(entry.get("ids") or [])
        marked = {d["_id"] async for d in db[c.FAILED].find({"_id": {"$in": ids}, "redrive_token": token}, {"_id": 1})}
        held = {d["_id"] async for d in db[c.QUEUED].find({"_id": {"$in": ids}, "redrive_token": token}, {"_id": 1})}
        # past step 2 (held queue document and marked failure): the decision was made, the failure goes
        if marked & held:
            r = await db[c.FAILED].delete_many({"_id": {"$in": list(marked & held)}, "redrive_token": token})
            out["finished"] += r.deleted_count
        # before step 2 (marked failure, no queue document): the re-drive is abandoned, the failure stays
        if marked - held:
            r = await db[c.FAILED].update_many(
                {"_id": {"$in": list(marked - held)}, "redrive_token": token},
                {"$unset": {"redrive_token": "", "redrive_at": ""}},
            )
            out["abandoned"] += r.modified_count
        if held:  # released when their failure is gone, deleted when it is back unmarked
            paused = await _paused_of(db, list(held))
            out["released"] += await _release(db, token, {mid: (now, mid in paused) for mid in held}, now)
        await db[c.REDRIVES].delete_one({"_id": token})
    if out:
        log.warning("redrives_recovered", **dict(out))
    return out


async def _paused_of(db: Any, ids: list[str]) -> set[str]:
    docs = await db[c.QUEUED].find({"_id": {"$in": ids}}, {"campaign_id": 1}).to_list(None)
    paused = await _paused_campaigns(db, {int(d["campaign_id"]) for d in docs if d.get("campaign_id") is not None})
    return {d["_id"] for d in docs if d.get("campaign_id") is not None and int(d["campaign_id"]) in paused}
