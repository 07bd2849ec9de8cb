"""Delivery reports onto MessageSent: matching, the ``delivered`` tristate, NO_RESPONSE resolution, side effects.

One webhook request (up to 100 Infobip reports, one Twilio callback, one CM report) is one :func:`ingest` call
and a handful of round trips, whatever the number of reports:

1. read the matching MessageSent documents (by our message id, else by (provider instance, provider message id));
2. read NO_RESPONSE FailedMessage documents for the ids MessageSent lacks, then the queue for the rest; ids found
   in none of the three are read again, dead letters then MessageSent, since a message recorded between the first
   read and the queue read (a record is written before its message leaves the queue) was seen in none of them;
3. one ``bulk_write`` of ``UpdateOne({"_id": id, "delivered": None}, {"$set": ...})`` (``UpdateMany`` with
   ``{"_id": {"$in": ids}, "delivered": None}`` for the messages that take the same ``$set``): the filter makes every
   update monotonic and idempotent (a final state never changes; duplicates, out-of-order and days-late reports
   are no-ops; an intermediate report only moves ``delivery_status`` while ``delivered`` is still None);
4. NO_RESPONSE resolution: insert the MessageSent (``submitted=True``, ``resolved_from_no_response=True``,
   fields copied from the FailedMessage) then delete the FailedMessage, so exactly one record remains; when
   another writer recorded the message first (a concurrent report of it, the executor), the report is applied to
   that record as in 3;
5. side effects of the state changes this call made: customer-webhook events (one outbox document per account),
   opted-out contacts unsubscribed, ``spam_complaint`` and ``delivery_failure`` events, each batched.

Reports for unknown ids (found nowhere, twice) are counted, logged and dropped: nothing is created for them. A
report for a message still in the queue (the provider answered the send and reported before the executor recorded
it) is counted as ``pending`` and parked in ``delivery_reports``; :mod:`trackly_exec.tracking.parked` applies it
once the message is recorded (providers that never retry, such as Twilio, lose nothing). A provider time that
cannot be expressed in UTC is treated as absent.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pymongo.errors import BulkWriteError

from trackly_exec.app import Trackly
from trackly_exec.drivers.contract import DeliveryReport
from trackly_exec.executor.billing import message_cost
from trackly_exec.logs import get_logger
from trackly_exec.store import constants as c
from trackly_exec.store.client import find_by_ids, remember_opt_outs, update_ids
from trackly_exec.store.documents import DeliveryFields, FailedDoc, JsonObject, SentDoc
from trackly_exec.store.events import Event, EventKind
from trackly_exec.store.models import FailureReason, MessageFields, MessageSent, epoch_ms
from trackly_exec.tracking.customer_webhook import event_id, outbox_documents, webhook_payload

log = get_logger(__name__)

#: Projection of the MessageSent read by provider id: whole documents (they are small; nx-27017 applies
#: projections in Python, which made the read ~25% slower than fetching everything). The read by our ids is
#: one ``find`` command (:func:`~trackly_exec.store.client.find_by_ids`), whole documents too.
_SENT_FIELDS: dict[str, int] | None = None


@dataclass
class IngestResult:
    """What one :func:`ingest` call did."""

    received: int = 0
    matched: int = 0
    updated: int = 0  # state changes: final states recorded plus intermediate statuses moved
    final: int = 0  # final states recorded (delivered True/False), resolutions included
    ignored: int = 0  # matched, but already final (duplicate, out of order, late)
    unknown: int = 0
    resolved: int = 0  # NO_RESPONSE messages turned into MessageSent
    pending: int = 0  # reports for messages still in the queue (the provider was faster than our record)
    outbox: int = 0
    unknown_ids: list[str] = field(default_factory=list)
    pending_ids: list[str] = field(default_factory=list)

    def as_dict(self) -> JsonObject:
        return {k: v for k, v in self.__dict__.items() if not k.endswith("_ids")}


def _collapse(reports: Iterable[DeliveryReport]) -> list[DeliveryReport]:
    """One report per message: the first final one in the request, else the last intermediate one."""
    chosen: dict[tuple[str, str], DeliveryReport] = {}
    for r in reports:
        if r.message_id:
            key = ("id", r.message_id)
        elif r.provider_message_id:
            key = ("pid", r.provider_message_id)
        else:
            continue
        prev = chosen.get(key)
        if prev is None or (prev.delivered is None):
            chosen[key] = r
    return list(chosen.values())


def _delivery_set(r: DeliveryReport, now: dt.datetime) -> DeliveryFields:
    """The ``$set`` a report makes on a message whose ``delivered`` is still None."""
    out: DeliveryFields = {"delivery_status": r.status}
    if r.delivered is not None:
        out["delivered"] = r.delivered
        if r.delivered is False and r.rejected:  # refused outright: never submitted for delivery
            out["submitted"] = False
        out["delivery_error_code"] = r.error_code
        out["delivered_at"] = _aware(r.done_at) or now
    if r.spam:
        out["spam"] = True
    return out


def _aware(value: dt.datetime | None) -> dt.datetime | None:
    """``value`` in UTC at the store's millisecond precision (naive: taken as UTC). None when absent, and when it
    cannot be expressed in UTC: a provider time such as ``9999-12-31T23:59:59-23:59`` parses, but falls outside
    the datetime range once converted (OverflowError). Such a time is treated as absent (the report's other
    fields still apply) rather than failing the whole request, which the provider would retry for days."""
    if value is None:
        return None
    value = value if value.tzinfo else value.replace(tzinfo=dt.UTC)
    try:
        value = value.astimezone(dt.UTC)
    except OverflowError:
        return None
    return value.replace(microsecond=value.microsecond // 1000 * 1000)


async def ingest(
    trackly: Trackly, provider: str, reports: Sequence[DeliveryReport], *, park: bool = True
) -> IngestResult:
    """Apply a batch of ``provider``'s (driver instance name) reports; see the module docstring. Reports for
    messages still in the queue are parked (``park=False``: only listed in ``pending_ids``)."""
    res = IngestResult(received=len(reports))
    reports = _collapse(reports)
    if not reports:
        return res
    db = trackly.store
    now = trackly.now()
    allowed = {provider, trackly.drivers.entry_point(provider)}
    batch = uuid.uuid4().hex  # marks this call's updates: after a race, the ones it won are exactly these

    # 1. MessageSent by our id, else by the provider's id.
    ids = [r.message_id for r in reports if r.message_id]
    pids = [r.provider_message_id for r in reports if not r.message_id and r.provider_message_id]
    sent: dict[str, SentDoc] = {}
    by_pid: dict[str, SentDoc] = {}
    if ids:
        for doc in await find_by_ids(trackly.db, c.SENT, ids):
            sent[doc["_id"]] = doc
    if pids:
        for doc in (
            await db[c.SENT]
            .find({"provider": {"$in": sorted(allowed)}, "provider_message_id": {"$in": pids}}, _SENT_FIELDS)
            .to_list(None)
        ):
            by_pid[doc["provider_message_id"]] = doc

    # 2. NO_RESPONSE dead letters for the ids MessageSent lacks, then the queue for the rest.
    missing = [i for i in ids if i not in sent]
    failed = await _dead_letters(trackly, missing, allowed) if missing else {}
    in_queue: set[str] = set()
    if len(failed) < len(missing):
        rest = [i for i in missing if i not in failed]
        in_queue = {d["_id"] for d in await db[c.QUEUED].find({"_id": {"$in": rest}}, {"_id": 1}).to_list(None)}
        # Ids found nowhere. These reads ran in the order MessageSent, dead letters, queue, and a message moves
        # the other way (its record is written before it leaves the queue; a resolution's MessageSent before its
        # dead letter goes): one that the executor (or recovery, or a concurrent resolution) recorded between the
        # first read and the queue read was seen in none of them. Read again, dead letters then MessageSent: in
        # that order it cannot be missed (the evaluation's argument, see campaigns/evaluation.py), so only an id
        # found nowhere is unknown. Costs round trips only when some id is.
        nowhere = [i for i in rest if i not in in_queue]
        if nowhere:
            failed.update(await _dead_letters(trackly, nowhere, allowed))
            for doc in await find_by_ids(trackly.db, c.SENT, nowhere):
                sent[doc["_id"]] = doc

    changes: dict[tuple[tuple[str, object], ...], tuple[DeliveryFields, list[str]]] = {}
    planned: list[tuple[DeliveryReport, SentDoc]] = []  # (report, message doc) of each update
    resolutions: list[tuple[DeliveryReport, FailedDoc]] = []
    stale_dead_letters: list[str] = []
    for r in reports:
        doc = sent.get(r.message_id) if r.message_id else by_pid.get(r.provider_message_id or "")
        if doc is None:
            if r.message_id and r.message_id in failed:
                resolutions.append((r, failed[r.message_id]))
                res.matched += 1
                continue
            if r.message_id and r.message_id in in_queue:
                res.pending += 1
                res.pending_ids.append(r.message_id)
                continue
            res.unknown += 1
            res.unknown_ids.append(r.message_id or f"provider:{r.provider_message_id}")
            continue
        if doc.get("provider") not in allowed:
            res.unknown += 1
            res.unknown_ids.append(doc["_id"])
            log.warning(
                "delivery_report_provider_mismatch",
                message_id=doc["_id"],
                provider=provider,
                recorded=doc.get("provider"),
            )
            continue
        res.matched += 1
        if doc.get("resolved_from_no_response"):
            stale_dead_letters.append(doc["_id"])
        if doc.get("delivered") is not None:
            res.ignored += 1
            continue
        change = _delivery_set(r, now)
        changes.setdefault(tuple(change.items()), (change, []))[1].append(doc["_id"])
        planned.append((r, doc))

    if park and res.pending_ids:
        await park_reports(trackly, provider, [r for r in reports if r.message_id in set(res.pending_ids)], now)

    # 3. The state changes, one round trip.
    applied = planned
    if planned:
        result = await db[c.SENT].bulk_write(_updates(changes, batch), ordered=False)
        if result.matched_count != len(planned):
            applied = await _still_applied(trackly, planned, batch)
            res.ignored += len(planned) - len(applied)
    res.updated += len(applied)

    # 4. NO_RESPONSE resolutions (each message has a MessageSent afterwards: its dead letter can go).
    resolved: list[tuple[DeliveryReport, SentDoc]] = []
    merged: list[tuple[DeliveryReport, SentDoc]] = []
    if resolutions:
        resolved, merged = await _resolve(trackly, provider, resolutions, now, batch)
        res.ignored += len(resolutions) - len(resolved) - len(merged)
    res.resolved = len(resolved)
    res.updated += len(resolved) + len(merged)
    cleanup = stale_dead_letters + [f["_id"] for _, f in resolutions]
    if cleanup:
        await db[c.FAILED].delete_many({"_id": {"$in": cleanup}, "reason": str(FailureReason.NO_RESPONSE)})

    # 5. Side effects of what changed.
    changed = applied + resolved + merged
    finals = [(r, doc) for r, doc in changed if r.delivered is not None]
    res.final = len(finals)
    if finals:
        res.outbox = await _write_outbox(trackly, finals, now)
    await _unsubscribe(trackly, [doc for r, doc in changed if r.opted_out])
    await _publish(trackly, provider, changed)
    if res.unknown:
        log.info("delivery_reports_unknown", provider=provider, count=res.unknown, sample=res.unknown_ids[:5])
    return res


async def _dead_letters(trackly: Trackly, ids: list[str], allowed: set[str]) -> dict[str, FailedDoc]:
    """The NO_RESPONSE FailedMessage documents of ``ids`` recorded for one of the ``allowed`` provider names."""
    return {
        doc["_id"]: doc
        for doc in await trackly.db[c.FAILED]
        .find({"_id": {"$in": ids}, "reason": str(FailureReason.NO_RESPONSE)})
        .to_list(None)
        if doc.get("provider") in (None, *allowed)
    }


def _updates(changes: dict[tuple[tuple[str, object], ...], tuple[DeliveryFields, list[str]]], batch: str) -> list[Any]:
    """The conditional updates of the planned state changes: one statement per distinct change (reports with the
    same status and done time, as a provider's batch often has: ``UpdateMany`` over their ids; nx-27017 spends
    ~25 % less CPU per report on one multi-document statement than on one statement per message), each still
    conditional on ``delivered`` being None per message."""
    return [
        update_ids(ids, {"$set": {**change, "delivery_batch": batch}}, {"delivered": None})
        for change, ids in changes.values()
    ]


async def _still_applied(
    trackly: Trackly, planned: list[tuple[DeliveryReport, SentDoc]], batch: str
) -> list[tuple[DeliveryReport, SentDoc]]:
    """After a race with a concurrent request (a duplicate of the report, say): the updates this call made are
    those whose ``delivery_batch`` is still its own (a final state is never written again), so only one of two
    racing duplicates produces the customer-webhook event and the alerts."""
    ids = [doc["_id"] for _, doc in planned]
    mine = {
        d["_id"]
        for d in await trackly.db[c.SENT].find({"_id": {"$in": ids}, "delivery_batch": batch}, {"_id": 1}).to_list(None)
    }
    return [(r, doc) for r, doc in planned if doc["_id"] in mine]


async def _resolve(
    trackly: Trackly, provider: str, items: list[tuple[DeliveryReport, FailedDoc]], now: dt.datetime, batch: str
) -> tuple[list[tuple[DeliveryReport, SentDoc]], list[tuple[DeliveryReport, SentDoc]]]:
    """Turn NO_RESPONSE dead letters into MessageSent records (the report proves the provider accepted them), each
    with the cost its account was charged when it was sent (its segments at its list's price, as reconciliation
    records it: a NO_RESPONSE is never refunded).

    A message recorded meanwhile by another writer (a concurrent request resolving it with another report of the
    same message, as Twilio's 'sent' and 'delivered' callbacks arrive together; the executor's late record) makes
    the insert a duplicate: the report is then applied to the record that won like any report on the normal path
    (conditional on ``delivered`` being None, marked with ``batch``), so a final state is never lost to an
    intermediate one that happened to insert first, nor recorded twice.

    Returns (the records inserted, the (report, record) pairs of the reports applied to a record that won)."""
    list_ids = sorted({f["sending_list_id"] for _, f in items if f.get("sending_list_id") is not None})
    prices = {
        d["_id"]: float(d.get("price_per_segment") or 0.0)
        for d in await trackly.db[c.SENDING_LISTS]
        .find({"_id": {"$in": list_ids}}, {"price_per_segment": 1})
        .to_list(None)
    }
    docs: list[SentDoc] = []
    for r, f in items:
        fields = {k: v for k, v in f.items() if k in MessageFields.model_fields}
        sent = MessageSent(
            id=f["_id"],
            **fields,
            cost=message_cost(f, prices.get(f.get("sending_list_id"), 0.0)),
            provider=f.get("provider") or provider,
            provider_message_id=r.provider_message_id,
            timestamp=f.get("failed_at") or now,
            resolved_from_no_response=True,
            **{"submitted": True, **_delivery_set(r, now)},
        ).to_doc()
        docs.append(sent)
    inserted = {d["_id"] for d in docs}
    try:
        await trackly.db[c.SENT].insert_many(docs, ordered=False)
    except BulkWriteError as exc:  # recorded concurrently (another report of the message, the executor)
        for err in exc.details.get("writeErrors", []):
            if err.get("code") == 11000:
                inserted.discard(docs[err["index"]]["_id"])
            else:
                raise
    log.info("no_response_resolved", provider=provider, count=len(inserted))
    resolved = [(r, d) for (r, _), d in zip(items, docs, strict=True) if d["_id"] in inserted]
    lost = [(r, d) for (r, _), d in zip(items, docs, strict=True) if d["_id"] not in inserted]
    return resolved, await _apply_to_winners(trackly, lost, now, batch) if lost else []


async def _apply_to_winners(
    trackly: Trackly, lost: list[tuple[DeliveryReport, SentDoc]], now: dt.datetime, batch: str
) -> list[tuple[DeliveryReport, SentDoc]]:
    """Apply the reports whose resolution lost the insert to the MessageSent that won, with the normal path's
    conditional updates; returns the (report, record as updated) pairs this call changed (read back by
    ``delivery_batch``, as :func:`_still_applied` does), for the side effects."""
    changes: dict[tuple[tuple[str, object], ...], tuple[DeliveryFields, list[str]]] = {}
    for r, d in lost:
        change = _delivery_set(r, now)
        changes.setdefault(tuple(change.items()), (change, []))[1].append(d["_id"])
    result = await trackly.db[c.SENT].bulk_write(_updates(changes, batch), ordered=False)
    if not result.matched_count:  # every winner was final already
        return []
    ids = [d["_id"] for _, d in lost]
    mine: dict[str, SentDoc] = {
        d["_id"]: d for d in await trackly.db[c.SENT].find({"_id": {"$in": ids}, "delivery_batch": batch}).to_list(None)
    }
    return [(r, mine[d["_id"]]) for r, d in lost if d["_id"] in mine]


async def _write_outbox(trackly: Trackly, finals: list[tuple[DeliveryReport, SentDoc]], now: dt.datetime) -> int:
    """The customer-webhook events of this batch's final states, one outbox document per account (a single
    entry, or a batch of events): for accounts with a ``webhook_url`` only. Returns the number of events."""
    account_ids = list({doc["account_id"] for _, doc in finals})
    # A plain $in read: on nx-27017 a `$ne` condition and a projection each cost more than they save.
    accounts = {
        a["_id"]: a
        for a in await trackly.db[c.ACCOUNTS].find({"_id": {"$in": account_ids}}).to_list(None)
        if a.get("webhook_url")
    }
    by_account: dict[int, list[tuple[str, JsonObject]]] = {}
    for r, doc in finals:
        account = accounts.get(doc["account_id"])
        if account is not None:
            payload = webhook_payload({**doc, "delivered": r.delivered}, account)
            by_account.setdefault(doc["account_id"], []).append((event_id(doc["_id"]), payload))
    if not by_account:
        return 0
    docs = [outbox_documents(acc, events, now) for acc, events in by_account.items()]
    written = sum(len(events) for events in by_account.values())
    try:
        await trackly.db[c.OUTBOX].insert_many(docs, ordered=False)
    except BulkWriteError as exc:  # a single-event entry that exists already
        dups = [e for e in exc.details.get("writeErrors", []) if e.get("code") == 11000]
        if len(dups) != len(exc.details.get("writeErrors", [])):
            raise
        written -= len(dups)
    return written


async def _unsubscribe(trackly: Trackly, docs: list[SentDoc]) -> None:
    """Provider codes meaning "recipient opted out" (Twilio 21610) unsubscribe the contact, and keep the number as
    opted out on its list like a STOP (an import saying subscribed does not undo it)."""
    now = trackly.now()
    await remember_opt_outs(
        trackly.db,
        [
            (int(d["sending_list_id"]), d["to_number"], "PROVIDER", epoch_ms(now))
            for d in docs
            if d.get("sending_list_id")
        ],
        now,
    )
    contact_ids = list({d["contact_id"] for d in docs if d.get("contact_id") is not None})
    if not contact_ids:
        return
    await trackly.db[c.CONTACTS].update_many(
        {"_id": {"$in": contact_ids}}, {"$set": {"subscribed": False, "updated_at": trackly.now()}}
    )
    log.info("contacts_unsubscribed_by_report", count=len(contact_ids))


async def _publish(trackly: Trackly, provider: str, changed: list[tuple[DeliveryReport, SentDoc]]) -> None:
    """``spam_complaint`` and ``delivery_failure`` events for this batch's state changes, in one publish."""
    events: list[Event] = []
    for r, doc in changed:
        if not r.spam and r.delivered is not False:
            continue
        data = {
            "message_id": doc["_id"],
            "provider": provider,
            "code": r.error_code,
            "status": r.status,
            "sending_list_id": doc.get("sending_list_id"),
            "campaign_id": doc.get("campaign_id"),
        }
        if r.spam:
            events.append(
                Event(
                    kind=EventKind.SPAM_COMPLAINT,
                    severity="critical",
                    data=data,
                    message=f"carrier spam filtering on message {doc['_id']} ({provider} {r.error_code or r.status})",
                    key=f"spam:{doc.get('sending_list_id')}",
                )
            )
        if r.delivered is False:
            events.append(
                Event(
                    kind=EventKind.DELIVERY_FAILURE,
                    severity="warning",
                    data=data,
                    message=f"delivery failed for message {doc['_id']}: {r.status} {r.error_code or ''}".strip(),
                    key=f"delivery_failure:{doc.get('sending_list_id')}",
                )
            )
    if events:
        await trackly.bus.publish(*events)


async def park_reports(trackly: Trackly, provider: str, reports: Sequence[DeliveryReport], now: dt.datetime) -> None:
    """Keep ``reports`` (of messages still in the queue) until their message is recorded. The done time is kept as
    :func:`_aware` reads it (an out-of-range one as absent: the store could not encode it)."""
    await trackly.db[c.DELIVERY_REPORTS].insert_many(
        [
            {
                "_id": uuid.uuid4().hex,
                "provider": provider,
                "message_id": r.message_id,
                "report": {**r.model_dump(mode="python"), "done_at": _aware(r.done_at)},
                "received_at": now,
            }
            for r in reports
        ],
        ordered=False,
    )
