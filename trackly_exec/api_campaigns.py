"""Admin API routes for campaigns, their executions and stats (registered into :data:`api.ROUTES`).

Creating a campaign checks every referenced id (404 naming which one is unknown) and that they belong
together (422: the list and the creative to the account, the audiences to the list). ``schedule`` is
``{at}`` (now or later) or ``{cron, timezone}``; it sets ``next_run_at``. Without a schedule the campaign
only runs when triggered. Trigger runs one execution now (evaluated and queued before the answer); it answers
409 with ``execution_id`` while another execution of the campaign is evaluating or sending, and for a one-off
campaign that already ran unless ``force`` is given (body ``{"force": true}`` or ``?force=true``).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from aiohttp import web

from . import apimodels as m
from . import constants as c
from . import queue
from .api import (
    ApiError,
    _json,
    _new_id,
    _tr,
    field_error,
    get_or_404,
    page,
    path_id,
    read_body,
    read_query,
    read_routes,
    route,
)
from .app import Trackly
from .campaign_stats import campaign_stats
from .errors import TracklyError
from .logs import get_logger
from .models import PAUSE_DESCRIPTION, RESUME_DESCRIPTION, CampaignStatus, utcnow

log = get_logger(__name__)

AT_TOLERANCE = dt.timedelta(seconds=60)  # schedule.at may be this much in the past ("now")


def next_cron(expr: str, timezone: str, after: dt.datetime) -> dt.datetime:
    """The first occurrence of ``expr`` (read in ``timezone``) strictly after ``after``, in UTC.

    Raises ValueError with the scheduler's readable message for an invalid expression.
    """
    from .cron import CronError, next_occurrence

    try:
        return next_occurrence(expr, timezone, after)
    except CronError as exc:
        raise ValueError(str(exc)) from exc


def next_run(s: m.ScheduleIn | None, now: dt.datetime) -> dt.datetime | None:
    """When a campaign with schedule ``s`` runs next (None: only when triggered)."""
    if s is None:
        return None
    if s.at is not None:
        return s.at.astimezone(dt.UTC)
    assert s.cron is not None
    return next_cron(s.cron, s.timezone, now)


async def _check_refs(trackly: Trackly, body: m.CampaignIn) -> None:
    db = trackly.store
    await get_or_404(trackly, c.ACCOUNTS, body.account_id, "account")
    lst = await get_or_404(trackly, c.SENDING_LISTS, body.sending_list_id, "sending list")
    if lst["account_id"] != body.account_id:
        raise field_error("body.sending_list_id", f"sending list {lst['_id']} belongs to another account")
    wanted = list(dict.fromkeys(body.audience_ids))
    found = {d["_id"]: d async for d in db[c.AUDIENCES].find({"_id": {"$in": wanted}}, {"sending_list_id": 1})}
    missing = [a for a in wanted if a not in found]
    if missing:
        raise ApiError(404, "not_found", f"audience {', '.join(map(str, missing))} not found")
    foreign = [a for a in wanted if found[a]["sending_list_id"] != body.sending_list_id]
    if foreign:
        raise field_error(
            "body.audience_ids", f"audience {', '.join(map(str, foreign))} belongs to another sending list"
        )
    creative = await get_or_404(trackly, c.CREATIVES, body.creative_id, "creative")
    if creative["account_id"] != body.account_id:
        raise field_error("body.creative_id", f"creative {creative['_id']} belongs to another account")


@route("POST", "/campaigns", "Create a campaign", body=m.CampaignIn, response=m.CampaignOut, status=201)
async def create_campaign(request: web.Request) -> web.Response:
    body = await read_body(request, m.CampaignIn)
    trackly = _tr(request)
    await _check_refs(trackly, body)
    now = utcnow()
    if body.schedule is not None and body.schedule.at is not None and body.schedule.at < now - AT_TOLERANCE:
        raise field_error("body.schedule.at", "must be now or in the future")
    try:
        next_run_at = next_run(body.schedule, now)
    except ValueError as exc:
        raise field_error("body.schedule.cron", str(exc)) from exc
    doc = {
        "_id": await _new_id(trackly, c.CAMPAIGNS),
        **body.model_dump(exclude={"schedule"}),
        "audience_ids": list(dict.fromkeys(body.audience_ids)),
        "schedule": body.schedule.model_dump() if body.schedule else {"at": None, "cron": None, "timezone": "UTC"},
        "status": CampaignStatus.ACTIVE.value,
        "next_run_at": next_run_at,
        "created_at": now,
    }
    await trackly.store[c.CAMPAIGNS].insert_one(doc)
    log.info("campaign_created", campaign_id=doc["_id"], next_run_at=next_run_at)
    return _json(m.CampaignOut.from_doc(doc), 201)


@route(
    "POST",
    "/campaigns/{id}/trigger",
    "Run the campaign now (one execution, evaluated and queued before the answer). 409 names the execution in "
    "the way: one still evaluating or sending, or, for a one-off campaign that already ran, its completed run "
    "(pass force to run it again; the list's cooldown still applies)",
    body=m.TriggerIn,
    body_required=False,
    query=m.TriggerQuery,
    response=m.TriggerOut,
    status=202,
    errors=(409,),
)
async def trigger_campaign(request: web.Request) -> web.Response:
    trackly = _tr(request)
    cid = path_id(request, "campaign")
    query = read_query(request, m.TriggerQuery)
    body = await read_body(request, m.TriggerIn) if await request.read() else m.TriggerIn()
    doc = await get_or_404(trackly, c.CAMPAIGNS, cid, "campaign")
    if doc.get("status") == CampaignStatus.PAUSED.value:
        raise ApiError(409, "conflict", f"campaign {cid} is paused; resume it first")
    from .scheduler import TriggerConflict, trigger

    try:
        execution_id = await trigger(trackly, cid, force=body.force or query.force)
    except TriggerConflict as exc:
        raise ApiError(409, "conflict", str(exc), extra={"execution_id": exc.execution_id}) from exc
    except (ValueError, LookupError, TracklyError) as exc:
        raise ApiError(409, "conflict", f"campaign {cid} cannot run: {exc}") from exc
    ex = await trackly.store[c.EXECUTIONS].find_one({"_id": execution_id})
    out = m.TriggerOut(execution_id=execution_id, execution=m.ExecutionOut.from_doc(ex) if ex else None)
    return _json(out, 202)


async def _set_status(request: web.Request, status: CampaignStatus) -> web.Response:
    trackly = _tr(request)
    cid = path_id(request, "campaign")
    doc = await get_or_404(trackly, c.CAMPAIGNS, cid, "campaign")
    if doc.get("status") == CampaignStatus.DONE.value:
        raise ApiError(409, "conflict", f"campaign {cid} is done (it can still be triggered)")
    update: dict[str, Any] = {"status": status.value}
    sched = doc.get("schedule") or {}
    if status is CampaignStatus.ACTIVE and sched.get("cron"):
        try:  # resume schedules the next occurrence from now: no burst of missed ones
            update["next_run_at"] = next_cron(sched["cron"], sched.get("timezone") or "UTC", utcnow())
        except ValueError as exc:
            log.warning("resume_bad_cron", campaign_id=cid, error=str(exc))
    await trackly.store[c.CAMPAIGNS].update_one({"_id": cid}, {"$set": update})
    if status is CampaignStatus.PAUSED:
        moved = await queue.hold_campaign(trackly.db, cid)
    else:
        moved = await queue.release_campaign(trackly.db, cid, utcnow())
    log.info("campaign_status", campaign_id=cid, status=status.value, queued_messages=moved)
    return _json(m.CampaignOut.from_doc({**doc, **update}))


@route("POST", "/campaigns/{id}/pause", PAUSE_DESCRIPTION, response=m.CampaignOut, errors=(409,))
async def pause_campaign(request: web.Request) -> web.Response:
    return await _set_status(request, CampaignStatus.PAUSED)


@route("POST", "/campaigns/{id}/resume", RESUME_DESCRIPTION, response=m.CampaignOut, errors=(409,))
async def resume_campaign(request: web.Request) -> web.Response:
    return await _set_status(request, CampaignStatus.ACTIVE)


@route(
    "GET",
    "/campaigns/{id}/stats",
    "A campaign's numbers: queued, sent, delivered, failed, clicks, per variant",
    response=m.CampaignStatsOut,
)
async def get_campaign_stats(request: web.Request) -> web.Response:
    trackly = _tr(request)
    cid = path_id(request, "campaign")
    await get_or_404(trackly, c.CAMPAIGNS, cid, "campaign")
    return _json(await campaign_stats(trackly.store, cid))


@route(
    "GET",
    "/executions",
    "List executions (optionally of one campaign)",
    query=m.ExecutionQuery,
    response=m.Page[m.ExecutionOut],
)
async def list_executions(request: web.Request) -> web.Response:
    q = read_query(request, m.ExecutionQuery)
    return await page(request, c.EXECUTIONS, m.ExecutionOut, q, {"campaign_id": q.campaign_id} if q.campaign_id else {})


@route("GET", "/executions/{id}", "Get an execution with its counts", response=m.ExecutionOut)
async def get_execution(request: web.Request) -> web.Response:
    doc = await get_or_404(_tr(request), c.EXECUTIONS, path_id(request, "execution"), "execution")
    return _json(m.ExecutionOut.from_doc(doc))


read_routes("/campaigns", c.CAMPAIGNS, m.CampaignOut, "campaign")
