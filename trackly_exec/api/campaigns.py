"""Admin API routes for campaigns, their executions and stats (registered into :data:`api.ROUTES`).

Creating a campaign checks every referenced id (404 naming which one is unknown) and that they belong
together (422: the list and the creative to the account, the audiences to the list). ``schedule`` is
``{at}`` (now or later) or ``{cron, timezone}``; it sets ``next_run_at``. Without a schedule the campaign
only runs when triggered. Trigger creates one execution now and answers at once (202); the execution is evaluated
and queued in the background (``?wait=true`` answers once it is queued). It answers 409 with ``execution_id``
while another execution of the campaign is evaluating or sending, and for a one-off campaign that already ran
unless ``force`` is given (body ``{"force": true}`` or ``?force=true``).
"""

from __future__ import annotations

import asyncio
import datetime as dt

from aiohttp import web

from trackly_exec.api import models as m
from trackly_exec.api import models_campaigns as mc
from trackly_exec.api.campaign_stats import campaign_stats
from trackly_exec.api.routes import (
    ApiError,
    Problems,
    _json,
    _new_id,
    _tr,
    field_error,
    get_or_404,
    ids_text,
    name_match,
    page,
    path_doc,
    path_id,
    read_body,
    read_query,
    read_routes,
    route,
)
from trackly_exec.app import Trackly
from trackly_exec.errors import TracklyError
from trackly_exec.executor import claims
from trackly_exec.logs import get_logger
from trackly_exec.store import constants as c
from trackly_exec.store.documents import CampaignDoc, CreativeDoc, ExecutionDoc, Filter, SendingListDoc, Update
from trackly_exec.store.models import (
    CANCEL_DESCRIPTION,
    PAUSE_DESCRIPTION,
    RESUME_DESCRIPTION,
    CampaignStatus,
    ExecutionStatus,
)

log = get_logger(__name__)

AT_TOLERANCE = dt.timedelta(seconds=60)  # schedule.at may be this much in the past ("now")


def next_cron(expr: str, timezone: str, after: dt.datetime) -> dt.datetime:
    """The first occurrence of ``expr`` (read in ``timezone``) strictly after ``after``, in UTC.

    Raises ValueError with the scheduler's readable message for an invalid expression.
    """
    from trackly_exec.campaigns.cron import CronError, next_occurrence

    try:
        return next_occurrence(expr, timezone, after)
    except CronError as exc:
        raise ValueError(str(exc)) from exc


def next_run(s: mc.ScheduleIn | None, now: dt.datetime) -> dt.datetime | None:
    """When a campaign with schedule ``s`` runs next (None: only when triggered)."""
    if s is None:
        return None
    if s.at is not None:
        return s.at.astimezone(dt.UTC)
    assert s.cron is not None
    return next_cron(s.cron, s.timezone, now)


def check_schedule(
    schedule: mc.ScheduleIn | None, end_at: dt.datetime | None, now: dt.datetime, problems: Problems
) -> dt.datetime | None:
    """The campaign's next run (problems added for a past ``at``, a bad cron or an ``end_at`` in the past)."""
    if schedule is not None and schedule.at is not None and schedule.at < now - AT_TOLERANCE:
        problems.add("body.schedule.at", "must be now or in the future")
    if end_at is not None and end_at <= now:
        problems.add("body.end_at", "must be in the future")
    try:
        nxt = next_run(schedule, now)
    except ValueError as exc:
        problems.add("body.schedule.cron", str(exc))
        return None
    if end_at is not None and nxt is not None and nxt > end_at and end_at > now:
        problems.add("body.end_at", f"the first occurrence ({nxt.isoformat()}) is after end_at")
    return nxt


async def check_refs(
    trackly: Trackly,
    account_id: int,
    sending_list_id: int,
    audience_ids: list[int],
    creative_id: int,
    problems: Problems,
    track_links: bool = False,
) -> None:
    """Add a problem for every missing, archived or foreign reference of a campaign (all of them, not the first);
    with ``track_links``, a variant that puts ``{phone}`` inside a link too."""
    db = trackly.store
    acc = await db[c.ACCOUNTS].find_one({"_id": account_id}, {"_id": 1})
    if acc is None:
        problems.add("body.account_id", f"account {account_id} does not exist")
    lst = await db[c.SENDING_LISTS].find_one({"_id": sending_list_id}, {"account_id": 1, "archived": 1})
    if lst is None:
        problems.add("body.sending_list_id", f"sending list {sending_list_id} does not exist")
    elif lst.get("archived"):
        problems.add("body.sending_list_id", f"sending list {sending_list_id} is archived")
    elif lst["account_id"] != account_id:
        problems.add("body.sending_list_id", f"sending list {sending_list_id} belongs to another account")
    wanted = list(dict.fromkeys(audience_ids))
    found = {
        d["_id"]: d async for d in db[c.AUDIENCES].find({"_id": {"$in": wanted}}, {"sending_list_id": 1, "archived": 1})
    }
    missing = [a for a in wanted if a not in found]
    if missing:
        problems.add(
            "body.audience_ids", f"{ids_text('audience', missing)} {'do' if len(missing) > 1 else 'does'} not exist"
        )
    archived = [a for a in wanted if a in found and found[a].get("archived")]
    if archived:
        problems.add(
            "body.audience_ids", f"{ids_text('audience', archived)} {'are' if len(archived) > 1 else 'is'} archived"
        )
    if lst is not None:
        foreign = [a for a in wanted if a in found and found[a]["sending_list_id"] != sending_list_id]
        if foreign:
            problems.add(
                "body.audience_ids",
                f"{ids_text('audience', foreign)} belong{'' if len(foreign) > 1 else 's'} to another sending list",
            )
    creative = await db[c.CREATIVES].find_one({"_id": creative_id}, {"account_id": 1, "archived": 1, "variants": 1})
    if creative is not None and track_links:
        from trackly_exec.campaigns.compose import tracked_phone_problems

        for problem in tracked_phone_problems(creative.get("variants")):
            problems.add("body.track_links", f"creative {creative_id} {problem}")
    if creative is None:
        problems.add("body.creative_id", f"creative {creative_id} does not exist")
    elif creative.get("archived"):
        problems.add("body.creative_id", f"creative {creative_id} is archived")
    elif creative["account_id"] != account_id:
        problems.add("body.creative_id", f"creative {creative_id} belongs to another account")


@route("POST", "/campaigns", "Create a campaign", body=mc.CampaignIn, response=mc.CampaignOut, status=201)
async def create_campaign(request: web.Request) -> web.Response:
    body = await read_body(request, mc.CampaignIn)
    trackly = _tr(request)
    problems = Problems()
    await check_refs(
        trackly, body.account_id, body.sending_list_id, body.audience_ids, body.creative_id, problems, body.track_links
    )
    now = trackly.now()
    next_run_at = check_schedule(body.schedule, body.end_at, now, problems)
    problems.raise_if_any()
    cid = await _new_id(trackly, c.CAMPAIGNS)
    doc = {
        "_id": cid,
        **body.model_dump(exclude={"schedule"}),
        "name": body.name or f"campaign {cid}",
        "audience_ids": list(dict.fromkeys(body.audience_ids)),
        "schedule": body.schedule.model_dump() if body.schedule else {"at": None, "cron": None, "timezone": "UTC"},
        "status": CampaignStatus.ACTIVE.value,
        "next_run_at": next_run_at,
        "created_at": now,
    }
    await trackly.db[c.CAMPAIGNS].insert_one(doc)
    log.info("campaign_created", campaign_id=doc["_id"], next_run_at=next_run_at)
    return _json(mc.CampaignOut.from_doc(doc), 201)


@route(
    "POST",
    "/campaigns/{id}/trigger",
    "Run the campaign now: answers at once (202) with the execution, evaluated and queued in the background "
    "(follow it with GET /executions/{id}; ?wait=true answers once it is queued). 409 names the execution in "
    "the way: one still evaluating or sending, or, for a one-off campaign that already ran, its completed run "
    "(pass force to run it again; the list's cooldown still applies)",
    body=mc.TriggerIn,
    body_required=False,
    query=mc.TriggerQuery,
    response=mc.TriggerOut,
    status=202,
    errors=(409,),
)
async def trigger_campaign(request: web.Request) -> web.Response:
    trackly = _tr(request)
    cid = path_id(request, "campaign")
    q = read_query(request, mc.TriggerQuery)
    body = await read_body(request, mc.TriggerIn) if await request.read() else mc.TriggerIn()
    doc: CampaignDoc = await get_or_404(trackly, c.CAMPAIGNS, cid, "campaign")
    if doc.get("archived"):
        raise ApiError(409, "conflict", f"campaign {cid} is archived")
    if doc.get("status") == CampaignStatus.PAUSED.value:
        raise ApiError(409, "conflict", f"campaign {cid} is paused; resume it first")
    from trackly_exec.campaigns.scheduler import TriggerConflict, start_trigger

    try:
        execution_id, task = await start_trigger(trackly, cid, force=body.force or q.force)
    except TriggerConflict as exc:
        raise ApiError(409, "conflict", str(exc), extra={"execution_id": exc.execution_id}) from exc
    except (ValueError, LookupError, TracklyError) as exc:
        raise ApiError(409, "conflict", f"campaign {cid} cannot run: {exc}") from exc
    if q.wait:
        await asyncio.shield(task)
    ex = await trackly.db[c.EXECUTIONS].find_one({"_id": execution_id})
    out = mc.TriggerOut(execution_id=execution_id, execution=mc.ExecutionOut.from_doc(ex) if ex else None)
    return _json(out, 202)


@route(
    "POST",
    "/campaigns/{id}/estimate",
    "Dry run: what a run now would queue (per audience, overlap, unique, skipped by reason, segments, cost); "
    "nothing is queued",
    response=mc.EstimateOut,
    errors=(409,),
)
async def estimate_campaign(request: web.Request) -> web.Response:
    trackly = _tr(request)
    doc: CampaignDoc = await path_doc(request, c.CAMPAIGNS, "campaign")
    cid: int = doc["_id"]
    from trackly_exec.campaigns.estimate import CannotRun, estimate

    try:
        out = await estimate(trackly, doc)
    except CannotRun as exc:
        raise ApiError(409, "conflict", f"campaign {cid} cannot run: {exc}") from exc
    return _json(mc.EstimateOut.model_validate(out))


async def run_preview(
    trackly: Trackly,
    creative: CreativeDoc,
    list_id: int,
    audience_id: int | None,
    contact_ids: list[int] | None,
    sample: int,
    track_links: bool,
    scan_limit: int,
    campaign: CampaignDoc | None = None,
) -> web.Response:
    from trackly_exec.api.preview import PreviewError, preview

    problems = Problems()
    lst = await trackly.db[c.SENDING_LISTS].find_one({"_id": list_id})
    if lst is None:
        problems.add("body.sending_list_id", f"sending list {list_id} does not exist")
    audience = None
    if audience_id is not None:
        audience = await trackly.db[c.AUDIENCES].find_one({"_id": audience_id})
        if audience is None:
            problems.add("body.audience_id", f"audience {audience_id} does not exist")
        elif audience.get("sending_list_id") != list_id:
            problems.add("body.audience_id", f"audience {audience_id} belongs to another sending list")
    problems.raise_if_any()
    assert lst is not None
    try:
        out = await preview(
            trackly,
            creative,
            lst,
            audience=audience,
            contact_ids=contact_ids,
            sample=sample,
            track_links=track_links,
            scan_limit=scan_limit,
            campaign=campaign,
        )
    except PreviewError as exc:
        raise ApiError(
            422, "validation", str(exc), [{"loc": "body.contact_ids", "msg": str(exc), "type": "value_error"}]
        ) from exc
    return _json(mc.PreviewOut.model_validate(out))


@route(
    "POST",
    "/creatives/{id}/preview",
    "Render a creative for sample contacts of an audience (or given contacts): body, encoding, segments, cost, "
    "links; flags unknown placeholders, placeholders that would skip contacts, blocked words",
    body=mc.PreviewIn,
    response=mc.PreviewOut,
)
async def preview_creative(request: web.Request) -> web.Response:
    trackly = _tr(request)
    creative: CreativeDoc = await path_doc(request, c.CREATIVES, "creative")
    body = await read_body(request, mc.PreviewIn)
    list_id = body.sending_list_id
    if list_id is None and body.audience_id is not None:
        aud = await trackly.db[c.AUDIENCES].find_one({"_id": body.audience_id}, {"sending_list_id": 1})
        if aud is None:
            raise field_error("body.audience_id", f"audience {body.audience_id} does not exist")
        list_id = int(aud["sending_list_id"])
    if list_id is None and body.contact_ids:
        first = await trackly.db[c.CONTACTS].find_one({"_id": body.contact_ids[0]}, {"sending_list_id": 1})
        if first is None:
            raise field_error("body.contact_ids", f"contact {body.contact_ids[0]} does not exist")
        list_id = int(first["sending_list_id"])
    if list_id is None:
        raise field_error("body", "give sending_list_id, audience_id or contact_ids")
    return await run_preview(
        trackly, creative, list_id, body.audience_id, body.contact_ids, body.sample, body.track_links, body.scan_limit
    )


@route(
    "POST",
    "/campaigns/{id}/preview",
    "Render the campaign's creative for sample contacts of one of its audiences (or given contacts), with its "
    "list and link tracking; flags what would skip or dead-letter messages",
    body=mc.CampaignPreviewIn,
    response=mc.PreviewOut,
)
async def preview_campaign(request: web.Request) -> web.Response:
    trackly = _tr(request)
    camp: CampaignDoc = await path_doc(request, c.CAMPAIGNS, "campaign")
    body = await read_body(request, mc.CampaignPreviewIn)
    creative = await trackly.db[c.CREATIVES].find_one({"_id": camp["creative_id"]})
    if creative is None:
        raise ApiError(409, "conflict", f"creative {camp['creative_id']} of campaign {camp['_id']} does not exist")
    audience_id = body.audience_id
    if audience_id is not None and audience_id not in (camp.get("audience_ids") or []):
        raise field_error("body.audience_id", f"audience {audience_id} is not one of the campaign's audiences")
    if audience_id is None and not body.contact_ids:
        audience_id = next(iter(camp.get("audience_ids") or []), None)
    return await run_preview(
        trackly,
        creative,
        int(camp["sending_list_id"]),
        audience_id,
        body.contact_ids,
        body.sample,
        bool(camp.get("track_links")),
        body.scan_limit,
        camp,
    )


async def _test_send(
    trackly: Trackly,
    lst: SendingListDoc,
    creative: CreativeDoc,
    body: mc.CampaignTestSendIn,
    track_links: bool,
    campaign_id: int | None,
) -> web.Response:
    from trackly_exec.campaigns.testsend import SendTestError, send_test

    if lst.get("archived") or creative.get("archived"):
        what = f"sending list {lst['_id']}" if lst.get("archived") else f"creative {creative['_id']}"
        raise ApiError(409, "conflict", f"{what} is archived")
    if lst.get("account_id") != creative.get("account_id"):
        raise field_error("body.creative_id", f"creative {creative['_id']} belongs to another account")
    if track_links:
        from trackly_exec.campaigns.compose import tracked_phone_problems

        if found := tracked_phone_problems(creative.get("variants"), body.variant):
            raise field_error("body.track_links", found[0])
    try:
        out = await send_test(
            trackly,
            sending_list=lst,
            creative=creative,
            numbers=body.numbers,
            variant=body.variant,
            contact_id=body.contact_id,
            track_links=track_links,
            override_opt_out=body.override_opt_out,
            override_quiet_hours=body.override_quiet_hours,
            default_region=body.default_region,
            campaign_id=campaign_id,
        )
    except SendTestError as exc:
        raise field_error(exc.loc, str(exc)) from exc
    return _json(mc.TestSendOut.model_validate(out), 202)


@route(
    "POST",
    "/sending-lists/{id}/test-send",
    "Test send: a creative's variant to a few numbers through the executor (sendType test; opt-out and quiet "
    "hours apply unless overridden, and the override is recorded)",
    body=mc.TestSendIn,
    response=mc.TestSendOut,
    status=202,
    errors=(409,),
)
async def test_send_list(request: web.Request) -> web.Response:
    trackly = _tr(request)
    lst: SendingListDoc = await path_doc(request, c.SENDING_LISTS, "sending list")
    body = await read_body(request, mc.TestSendIn)
    creative = await trackly.db[c.CREATIVES].find_one({"_id": body.creative_id})
    if creative is None:
        raise field_error("body.creative_id", f"creative {body.creative_id} does not exist")
    return await _test_send(trackly, lst, creative, body, body.track_links, None)


@route(
    "POST",
    "/campaigns/{id}/test-send",
    "Test send of the campaign's creative (its list and link tracking) to a few numbers, through the executor",
    body=mc.CampaignTestSendIn,
    response=mc.TestSendOut,
    status=202,
    errors=(409,),
)
async def test_send_campaign(request: web.Request) -> web.Response:
    trackly = _tr(request)
    camp: CampaignDoc = await path_doc(request, c.CAMPAIGNS, "campaign")
    body = await read_body(request, mc.CampaignTestSendIn)
    lst = await trackly.db[c.SENDING_LISTS].find_one({"_id": camp["sending_list_id"]})
    creative = await trackly.db[c.CREATIVES].find_one({"_id": camp["creative_id"]})
    if lst is None or creative is None:
        raise ApiError(
            409, "conflict", f"campaign {camp['_id']} refers to a sending list or creative that does not exist"
        )
    return await _test_send(trackly, lst, creative, body, bool(camp.get("track_links")), int(camp["_id"]))


async def _set_status(request: web.Request, status: CampaignStatus) -> web.Response:
    trackly = _tr(request)
    doc: CampaignDoc = await path_doc(request, c.CAMPAIGNS, "campaign")
    cid: int = doc["_id"]
    if doc.get("archived"):
        raise ApiError(409, "conflict", f"campaign {cid} is archived")
    from trackly_exec.campaigns.scheduler import resumed_status, running_execution

    if doc.get("cancelled_at") is not None:
        when = doc["cancelled_at"]
        raise ApiError(409, "conflict", f"campaign {cid} was cancelled ({when:%Y-%m-%d %H:%M} UTC): for good")
    if doc.get("status") == CampaignStatus.DONE.value and not (
        status is CampaignStatus.PAUSED and await running_execution(trackly.db, [cid]) is not None
    ):  # a done campaign still sending (a one-off's run) can be paused; resumed, it is done again
        raise ApiError(409, "conflict", f"campaign {cid} is done (it can still be triggered)")
    if status is CampaignStatus.ACTIVE:
        status = await resumed_status(trackly.db, doc, trackly.now())
    update: Update = {"status": status.value}
    sched = doc.get("schedule") or {}
    cron = sched.get("cron")
    if status is CampaignStatus.ACTIVE and cron:
        try:  # resume schedules the next occurrence from now: no burst of missed ones
            update["next_run_at"] = next_cron(cron, sched.get("timezone") or "UTC", trackly.now())
        except ValueError as exc:
            log.warning("resume_bad_cron", campaign_id=cid, error=str(exc))
    await trackly.db[c.CAMPAIGNS].update_one({"_id": cid}, {"$set": update})
    if status is CampaignStatus.PAUSED:
        moved = await claims.pause_campaign(trackly.db, cid)
    else:
        moved = await claims.resume_campaign(trackly.db, cid, trackly.now())
    log.info("campaign_status", campaign_id=cid, status=status.value, queued_messages=moved)
    return _json(mc.CampaignOut.from_doc({**doc, **update}))


@route("POST", "/campaigns/{id}/pause", PAUSE_DESCRIPTION, response=mc.CampaignOut, errors=(409,))
async def pause_campaign(request: web.Request) -> web.Response:
    return await _set_status(request, CampaignStatus.PAUSED)


#: How long a cancel waits for the executors to give back the messages they hold (paused: at their re-check).
CANCEL_WAIT_SECONDS = 10.0


@route("POST", "/campaigns/{id}/cancel", CANCEL_DESCRIPTION, response=mc.CancelOut)
async def cancel_campaign(request: web.Request) -> web.Response:
    trackly = _tr(request)
    doc: CampaignDoc = await path_doc(request, c.CAMPAIGNS, "campaign")
    cid: int = doc["_id"]
    from trackly_exec.campaigns.scheduler import complete_drained
    from trackly_exec.executor.redrive import cancel_queued

    # paused first: an executor that holds some of its messages gives them back at the send-time re-check; no next
    # run (a recurring one's stale time suggested it would run again), and when it was cancelled
    stamp = {} if doc.get("cancelled_at") else {"cancelled_at": trackly.now()}
    await trackly.db[c.CAMPAIGNS].update_one(
        {"_id": cid}, {"$set": {"status": CampaignStatus.PAUSED.value, "next_run_at": None, **stamp}}
    )
    cancelled, left = 0, 0
    deadline = asyncio.get_running_loop().time() + CANCEL_WAIT_SECONDS
    while True:
        n, left = await cancel_queued(trackly.db, cid, trackly.now(), trackly.bus)
        cancelled += n
        if not left or asyncio.get_running_loop().time() >= deadline:
            break
        await asyncio.sleep(0.2)
    evaluating = await trackly.db[c.EXECUTIONS].find_one(
        {"campaign_id": cid, "status": {"$in": [ExecutionStatus.PENDING.value, ExecutionStatus.EVALUATING.value]}}
    )
    status = CampaignStatus.PAUSED  # (an evaluation still queuing for it queues paused messages: cancel again)
    if not left and evaluating is None:  # nothing of it left: done for good (its executions complete as drained)
        status = CampaignStatus.DONE
        await trackly.db[c.CAMPAIGNS].update_one({"_id": cid}, {"$set": {"status": status.value}})
        await complete_drained(trackly)
    log.warning("campaign_cancelled", campaign_id=cid, cancelled=cancelled, still_claimed=left)
    out = mc.CancelOut(
        id=cid,
        status=status.value,
        cancelled=cancelled,
        still_claimed=left,
        evaluating=evaluating is not None,
    )
    return _json(out)


@route("POST", "/campaigns/{id}/resume", RESUME_DESCRIPTION, response=mc.CampaignOut, errors=(409,))
async def resume_campaign(request: web.Request) -> web.Response:
    return await _set_status(request, CampaignStatus.ACTIVE)


@route(
    "GET",
    "/campaigns/{id}/stats",
    "A campaign's numbers: queued, sent, delivered, failed, clicks, per variant",
    response=mc.CampaignStatsOut,
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
    query=mc.ExecutionQuery,
    response=m.Page[mc.ExecutionOut],
)
async def list_executions(request: web.Request) -> web.Response:
    q = read_query(request, mc.ExecutionQuery)
    return await page(
        request, c.EXECUTIONS, mc.ExecutionOut, q, {"campaign_id": q.campaign_id} if q.campaign_id else {}
    )


@route("GET", "/executions/{id}", "Get an execution with its counts", response=mc.ExecutionOut)
async def get_execution(request: web.Request) -> web.Response:
    doc: ExecutionDoc = await path_doc(request, c.EXECUTIONS, "execution")
    return _json(mc.ExecutionOut.from_doc(doc))


def _campaign_match(q: mc.CampaignQuery) -> Filter:
    match = name_match(q)
    if q.status is not None:
        match["status"] = q.status
    return match


read_routes("/campaigns", c.CAMPAIGNS, mc.CampaignOut, "campaign", query=mc.CampaignQuery, match=_campaign_match)
