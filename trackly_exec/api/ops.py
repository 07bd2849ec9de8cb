"""Admin API routes for after the send (registered into :data:`trackly_exec.api.ROUTES`): the message log and
its CSV export, dead letters (list, summary, re-drive) and the customer-webhook outbox (backlog, re-drive).

CSV exports are streamed a batch of messages at a time (memory does not grow with the campaign) and every cell
is neutralised against formula injection (:mod:`trackly_exec.api.csvsafe`: a phone number reads ``'+1555...``).
"""

from __future__ import annotations

import datetime as dt
import io
from typing import Any

from aiohttp import web

from trackly_exec.api import csvsafe
from trackly_exec.api import models_ops as o
from trackly_exec.api.routes import (
    _json,
    _tr,
    count_by,
    field_error,
    get_or_404,
    keyset_page,
    path_id,
    read_body,
    read_query,
    route,
)
from trackly_exec.executor import redrive
from trackly_exec.logs import get_logger
from trackly_exec.store import constants as c
from trackly_exec.store.client import count
from trackly_exec.store.documents import FailedDoc, Filter
from trackly_exec.tracking import messagelog
from trackly_exec.tracking.customer_webhook import DEAD, DROPPED, PENDING

log = get_logger(__name__)

_RETRYABLE = {str(r) for r in redrive.RETRYABLE}


# --------------------------------------------------------------------------------------------- message log


@route(
    "GET",
    "/messages",
    "Message log: a number's, contact's, campaign's or execution's messages "
    "(queued, sent with its tristates, failed with its reason; clicks)",
    query=o.MessageQuery,
    response=o.MessagePage,
)
async def list_messages(request: web.Request) -> web.Response:
    q = read_query(request, o.MessageQuery)
    match: Filter = {}
    phone = None
    if q.phone:
        phone = messagelog.lookup_phone(q.phone, q.region.upper())
        if phone is None:
            raise field_error("query.phone", f"not a valid phone number: {q.phone!r} (region {q.region.upper()})")
        match["to_number"] = phone
    for key in ("contact_id", "campaign_id", "execution_id"):
        if getattr(q, key) is not None:
            match[key] = getattr(q, key)
    store = _tr(request).store
    states = (q.state,) if q.state else messagelog.STATES
    hinted = False
    if q.contact_id is not None and "to_number" not in match and not (q.campaign_id or q.execution_id):
        # a contact's messages went to its number: the to_number index finds them without a collection scan
        contact = await store.db[c.CONTACTS].find_one({"_id": q.contact_id}, {"phone": 1})
        if contact is not None and str(contact.get("phone") or "").startswith("+"):
            match["to_number"], hinted = contact["phone"], True
    try:
        items, nxt = await messagelog.page(store, match, limit=q.limit, after=q.after, states=states)
        if hinted and not items and not q.after:  # its number changed (erasure): by contact id alone
            match.pop("to_number")
            items, nxt = await messagelog.page(store, match, limit=q.limit, after=q.after, states=states)
    except ValueError as exc:
        raise field_error("query.after", str(exc)) from exc
    return _json(o.MessagePage(phone=phone, items=[o.MessageOut.model_validate(i) for i in items], next_after=nxt))


async def _export(request: web.Request, match: Filter, filename: str) -> web.StreamResponse:
    resp = web.StreamResponse(
        headers={"Content-Type": "text/csv; charset=utf-8", "Content-Disposition": f'attachment; filename="{filename}"'}
    )
    await resp.prepare(request)
    buf = io.StringIO()
    w = csvsafe.writer(buf)
    w.writerow(messagelog.COLUMNS)
    rows = 0
    async for batch in messagelog.export_rows(_tr(request).store, match):
        w.writerows(batch)
        rows += len(batch)
        await resp.write(buf.getvalue().encode("utf-8"))
        buf.seek(0)
        buf.truncate()
    if buf.tell():
        await resp.write(buf.getvalue().encode("utf-8"))
    await resp.write_eof()
    log.info("messages_exported", rows=rows, filename=filename)
    return resp


@route(
    "GET",
    "/campaigns/{id}/messages.csv",
    "CSV of every message of a campaign (streamed; cells neutralised "
    "against spreadsheet formulas: a phone number reads '+1555...)",
    response="text/csv",
)
async def export_campaign(request: web.Request) -> web.StreamResponse:
    cid = path_id(request, "campaign")
    await get_or_404(_tr(request), c.CAMPAIGNS, cid, "campaign")
    return await _export(request, {"campaign_id": cid}, f"campaign-{cid}-messages.csv")


@route(
    "GET",
    "/executions/{id}/messages.csv",
    "CSV of every message of an execution (streamed; cells neutralised against spreadsheet formulas)",
    response="text/csv",
)
async def export_execution(request: web.Request) -> web.StreamResponse:
    eid = path_id(request, "execution")
    await get_or_404(_tr(request), c.EXECUTIONS, eid, "execution")
    return await _export(request, {"execution_id": eid}, f"execution-{eid}-messages.csv")


# --------------------------------------------------------------------------------------------- dead letters


def _dl_match(q: o.DeadLetterQuery) -> Filter:
    if q.since and q.until and q.since >= q.until:
        raise field_error("query.until", "until must be after since")
    return redrive.dead_letter_filter(
        reasons=[q.reason] if q.reason else None,
        campaign_id=q.campaign_id,
        execution_id=q.execution_id,
        sending_list_id=q.sending_list_id,
        since=q.since,
        until=q.until,
    )


def _dead_letter(doc: FailedDoc, outlook: str) -> o.DeadLetterOut:
    # what a re-drive skips whatever reasons it is given (an opt-out at the provider, a spam flag) is not retryable
    retryable = str(doc.get("reason")) in _RETRYABLE and not doc.get("opted_out") and not doc.get("spam")
    return o.DeadLetterOut.model_validate({**doc, "message_id": doc["_id"], "retryable": retryable, "redrive": outlook})


@route(
    "GET",
    "/dead-letters",
    "List FailedMessage records by reason, campaign, execution, list and time",
    query=o.DeadLetterQuery,
    response=o.DeadLetterPage,
)
async def list_dead_letters(request: web.Request) -> web.Response:
    q = read_query(request, o.DeadLetterQuery)
    store = _tr(request).store
    docs: list[FailedDoc]
    docs, next_after = await keyset_page(store, c.FAILED, _dl_match(q), q.after or None, q.limit, {"body": 0})
    outlooks = await redrive.outlook(store.db, docs)
    return _json(o.DeadLetterPage(items=[_dead_letter(d, outlooks[d["_id"]]) for d in docs], next_after=next_after))


@route(
    "GET",
    "/dead-letters/summary",
    "Dead letters counted by reason and by campaign",
    query=o.DeadLetterQuery,
    response=o.DeadLetterSummary,
)
async def dead_letter_summary(request: web.Request) -> web.Response:
    q = read_query(request, o.DeadLetterQuery)
    match = _dl_match(q)
    store = _tr(request).store
    by_reason = await count_by(store, c.FAILED, match, "reason")
    by_campaign = await count_by(store, c.FAILED, match, "campaign_id", none="-")
    chosen = (match.get("reason") or {}).get("$in")  # the query's own reason, if it names one
    default = [str(r) for r in redrive.DEFAULT_REASONS if chosen is None or str(r) in chosen]
    # as a re-drive with the default reasons would take them: not an opt-out at the provider, not flagged spam
    retryable = (
        await count(
            store.db,
            c.FAILED,
            {**match, "reason": {"$in": default}, "opted_out": {"$ne": True}, "spam": {"$ne": True}},
        )
        if default
        else 0
    )
    return _json(
        o.DeadLetterSummary(
            total=sum(by_reason.values()),
            by_reason=dict(sorted(by_reason.items())),
            by_campaign=by_campaign,
            retryable=retryable,
        )
    )


@route(
    "POST",
    "/dead-letters/redrive",
    "Re-drive retryable dead letters into the queue (same message id; re-checked against opt-out, cooldown and "
    "quiet hours). NO_RESPONSE needs allow_duplicates: the provider may already have sent them",
    body=o.RedriveIn,
    response=o.RedriveOut,
)
async def redrive_dead_letters(request: web.Request) -> web.Response:
    body = await read_body(request, o.RedriveIn)
    if body.since and body.until and body.since >= body.until:
        raise field_error("body.until", "until must be after since")
    reasons = [str(r) for r in body.reasons] if body.reasons else None
    match = redrive.dead_letter_filter(
        reasons=reasons or [str(r) for r in redrive.DEFAULT_REASONS],
        campaign_id=body.campaign_id,
        execution_id=body.execution_id,
        sending_list_id=body.sending_list_id,
        since=body.since,
        until=body.until,
        message_ids=body.message_ids,
    )
    if body.message_ids is not None:  # named messages: report why each is not re-driven, whatever its reason
        match.pop("reason", None)
    res = await redrive.redrive(
        _tr(request),
        match,
        reasons=reasons,
        allow_duplicates=body.allow_duplicates,
        dry_run=body.dry_run,
        limit=body.limit,
    )
    return _json(o.RedriveOut.model_validate(res.as_dict()))


# --------------------------------------------------------------------------------------------- outbox


@route(
    "GET",
    "/outbox",
    "Customer-webhook outbox entries (the backlog: pending; given up: dead)",
    query=o.OutboxQuery,
    response=o.OutboxPage,
)
async def list_outbox(request: web.Request) -> web.Response:
    q = read_query(request, o.OutboxQuery)
    match: Filter = {}
    if q.status:
        match["status"] = q.status
    if q.account_id:
        match["account_id"] = q.account_id
    docs, next_after = await keyset_page(_tr(request).store, c.OUTBOX, match, q.after or None, q.limit, {"payload": 0})
    items = [o.entry_out(d) for d in docs]
    return _json(o.OutboxPage(items=items, next_after=None if next_after is None else str(next_after)))


async def outbox_summary(store: Any, now: dt.datetime) -> o.OutboxSummary:
    """The outbox backlog (API, CLI and dashboard) at ``now``."""
    col = store.db[c.OUTBOX]
    by_status = await count_by(store, c.OUTBOX, {}, "status")

    async def events(status: str) -> int:
        n = await count(store.db, c.OUTBOX, {"status": status})
        # (not {"events.id": 1}: nx-27017 projects a dotted path into an array as nothing)
        batches = col.find({"status": status, "_id": {"$gte": "batch:", "$lt": "batch;"}}, {"events": 1})
        async for b in batches.limit(10_000):
            n += len(b.get("events") or []) - 1
        return n

    oldest = await col.find_one({"status": PENDING}, {"created_at": 1}, sort=[("created_at", 1)])
    oldest_at = oldest.get("created_at") if oldest else None
    if oldest_at is not None and oldest_at.tzinfo is None:
        oldest_at = oldest_at.replace(tzinfo=dt.UTC)
    return o.OutboxSummary(
        by_status=dict(sorted(by_status.items())),
        pending_events=await events(PENDING),
        dead_events=await events(DEAD),
        oldest_pending_at=oldest_at,
        oldest_pending_age_seconds=round((now - oldest_at).total_seconds(), 1) if oldest_at else None,
        due_now=await count(store.db, c.OUTBOX, {"status": PENDING, "next_attempt_at": {"$lte": now}}),
    )


@route(
    "GET",
    "/outbox/summary",
    "Customer-webhook backlog: entries by status, pending and dead events, oldest age",
    response=o.OutboxSummary,
)
async def get_outbox_summary(request: web.Request) -> web.Response:
    trackly = _tr(request)
    return _json(await outbox_summary(trackly.store, trackly.now()))


@route(
    "POST",
    "/outbox/redrive",
    "Make dead (or, named by id, dropped) customer-webhook entries pending again, due "
    "now; their give-up age counts from now",
    body=o.OutboxRedriveIn,
    response=o.OutboxRedriveOut,
)
async def redrive_outbox(request: web.Request) -> web.Response:
    body = await read_body(request, o.OutboxRedriveIn)
    now = _tr(request).now()
    match: Filter = {"status": DEAD}
    if body.ids is not None:
        match = {"_id": {"$in": body.ids}, "status": {"$in": [DEAD, DROPPED]}}
    if body.account_id:
        match["account_id"] = body.account_id
    col = _tr(request).db[c.OUTBOX]
    ids = [d["_id"] for d in await col.find(match, {"_id": 1}).limit(body.limit).to_list(None)]
    if not ids:
        return _json(o.OutboxRedriveOut(redriven=0))
    res = await col.update_many(
        {"_id": {"$in": ids}, "status": {"$in": [DEAD, DROPPED]}},
        {"$set": {"status": PENDING, "next_attempt_at": now, "redriven_at": now, "claimed_by": None, "attempts": 0}},
    )
    log.info("outbox_redriven", entries=res.modified_count)
    return _json(o.OutboxRedriveOut(redriven=int(res.modified_count)))
