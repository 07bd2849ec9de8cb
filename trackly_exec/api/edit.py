"""Admin API routes to edit and retire: ``PATCH`` of accounts, ``PATCH`` and ``DELETE`` (archive) of sending lists,
audiences, creatives and campaigns, and erasing a contact (registered into :data:`trackly_exec.api.ROUTES`).

* ``PATCH`` changes what is safe to change. Names and descriptions always; an account's customer webhook and bot
  filter too (its balance only by ``POST /accounts/{id}/balance``). A campaign's other fields, an
  audience's contacts and a creative's variants only while no execution that uses them is running (pending,
  evaluating or queued): 409 naming the execution otherwise. A sending list's settings any time (queued
  messages keep what they were composed with), its driver and driver settings too, checked like at creation.
* ``DELETE`` archives: the record stays (its history refers to it), is hidden from lists unless
  ``?archived=true``, cannot be used by a new or edited campaign, and an archived campaign is never scheduled
  or triggered again. A list, audience or creative still used by an active or paused campaign is not
  archived (409 naming the campaigns); nor is a campaign with a running execution.
* ``POST /contacts/{id}/erase``: a privacy request (:mod:`trackly_exec.api.erasure`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel

from trackly_exec.api import models as m
from trackly_exec.api import models_campaigns as mc
from trackly_exec.api.campaigns import check_refs, check_schedule
from trackly_exec.api.resources import _undollar, check_audience, check_driver, check_variants, check_webhook_url
from trackly_exec.api.routes import ApiError, Problems, _json, _tr, path_doc, read_body, route
from trackly_exec.app import Trackly
from trackly_exec.campaigns.scheduler import running_execution
from trackly_exec.store import constants as c
from trackly_exec.store.documents import (
    AccountDoc,
    AnyDocument,
    AudienceDoc,
    CampaignDoc,
    ContactDoc,
    CreativeDoc,
    ExecutionDoc,
    SendingListDoc,
    Update,
)
from trackly_exec.store.models import CampaignStatus
from trackly_exec.store.names import label

ALWAYS = {"name", "description"}


def _busy(what: str, ex: ExecutionDoc) -> ApiError:
    return ApiError(
        409,
        "conflict",
        f"{what} is in use by execution {ex['_id']} of campaign {ex['campaign_id']} "
        f"({ex['status']}); change it once that execution has completed",
    )


async def _users(trackly: Trackly, field: str, doc_id: int) -> list[CampaignDoc]:
    """The campaigns that refer to ``doc_id`` in ``field`` (not archived)."""
    docs = await trackly.db[c.CAMPAIGNS].find({field: doc_id}, {"name": 1, "status": 1, "archived": 1}).to_list(None)
    return [d for d in docs if not d.get("archived")]


async def _archive(trackly: Trackly, coll: str, doc: Mapping[str, Any]) -> AnyDocument:
    changes = {"archived": True, "archived_at": trackly.now()}
    await trackly.db[coll].update_one({"_id": doc["_id"]}, {"$set": changes})
    return {**doc, **changes}


async def _refuse_if_used(trackly: Trackly, field: str, doc_id: int, what: str) -> None:
    live = [
        d
        for d in await _users(trackly, field, doc_id)
        if d.get("status") in (CampaignStatus.ACTIVE.value, CampaignStatus.PAUSED.value)
    ]
    if live:
        names = ", ".join(label(d, "campaign") for d in live[:10])
        raise ApiError(
            409, "conflict", f"{what} is used by {names}; archive those campaigns (or point them elsewhere) first"
        )


def _not_archived(doc: Mapping[str, Any], what: str) -> None:
    if doc.get("archived"):
        raise ApiError(409, "conflict", f"{what} is archived")


@dataclass(frozen=True)
class Kind:
    """What the edit and archive routes of one resource need: its collection, its name in messages, its response
    model's ``from_doc`` and the campaign field that refers to it."""

    coll: str
    what: str
    out: Callable[[Mapping[str, Any]], BaseModel]
    used_by: str


LIST = Kind(c.SENDING_LISTS, "sending list", m.SendingListOut.from_doc, "sending_list_id")
AUDIENCE = Kind(c.AUDIENCES, "audience", m.AudienceOut.from_doc, "audience_ids")
CREATIVE = Kind(c.CREATIVES, "creative", m.CreativeOut.from_doc, "creative_id")
CAMPAIGN = Kind(c.CAMPAIGNS, "campaign", mc.CampaignOut.from_doc, "")
ACCOUNT = Kind(c.ACCOUNTS, "account", m.AccountOut.from_doc, "account_id")

P = TypeVar("P", bound=m.Patch)
#: A resource's own part of a PATCH, given (trackly, id, stored document, body) once the body names a field other
#: than name and description: it checks them (raising a 409 or 422) and returns the changes they make.
Apply = Callable[[Trackly, int, Any, P], Awaitable[Update]]


async def _patch(request: web.Request, kind: Kind, body_model: type[P], apply: Apply[P]) -> web.Response:
    """One PATCH: the resource (404), the body (422), not archived (409), no null where a value is needed (422);
    name and description always change, ``apply`` checks and returns the rest; the changes are set at once and
    the response is the resource as changed."""
    trackly = _tr(request)
    doc = await path_doc(request, kind.coll, kind.what)
    rid: int = doc["_id"]
    body = await read_body(request, body_model)
    _not_archived(doc, f"{kind.what} {rid}")
    fields = body.model_fields_set
    for k in sorted(fields - body_model.NULLABLE):
        if getattr(body, k) is None:
            raise ApiError(
                422,
                "validation",
                f"{k} cannot be null",
                [{"loc": f"body.{k}", "msg": "cannot be null", "type": "value_error"}],
            )
    changes: Update = {k: getattr(body, k) for k in fields & ALWAYS}
    if fields - ALWAYS:
        changes.update(await apply(trackly, rid, doc, body))
    if changes:
        await trackly.db[kind.coll].update_one({"_id": rid}, {"$set": changes})
    return _json(kind.out({**doc, **changes}))


async def _archive_unused(request: web.Request, kind: Kind) -> web.Response:
    """DELETE of a sending list, audience or creative: archived unless an active or paused campaign uses it."""
    trackly = _tr(request)
    doc = await path_doc(request, kind.coll, kind.what)
    rid: int = doc["_id"]
    await _refuse_if_used(trackly, kind.used_by, rid, f"{kind.what} {rid}")
    return _json(kind.out(await _archive(trackly, kind.coll, doc)))


async def _refuse_if_running(trackly: Trackly, kind: Kind, rid: int) -> None:
    """409 while an execution of a campaign using the resource is running."""
    ex = await running_execution(trackly.db, [d["_id"] for d in await _users(trackly, kind.used_by, rid)])
    if ex is not None:
        raise _busy(f"{kind.what} {rid}", ex)


# --------------------------------------------------------------------------------------------- accounts


async def _account_changes(trackly: Trackly, aid: int, doc: AccountDoc, body: m.AccountPatch) -> Update:
    """The customer webhook (checked like at creation; null removes it) and the bot filter; never the balance
    (``POST /accounts/{id}/balance``)."""
    if body.webhook_url is not None:
        await check_webhook_url(trackly, body.webhook_url, "body.webhook_url")
    return {k: getattr(body, k) for k in sorted(body.model_fields_set - ALWAYS)}


@route(
    "PATCH",
    "/accounts/{id}",
    "Edit an account: name, customer webhook URL and secret (null removes them), bot filter",
    body=m.AccountPatch,
    response=m.AccountOut,
)
async def patch_account(request: web.Request) -> web.Response:
    return await _patch(request, ACCOUNT, m.AccountPatch, _account_changes)


# --------------------------------------------------------------------------------------------- sending lists


async def _list_changes(trackly: Trackly, lid: int, doc: SendingListDoc, body: m.SendingListPatch) -> Update:
    changes = {k: v for k, v in body.model_dump().items() if k in body.model_fields_set - ALWAYS}
    if changes.keys() & {"driver", "driver_settings"}:  # the pair is checked together, as at creation
        problems = Problems()
        check_driver(
            trackly,
            changes.get("driver", doc["driver"]),
            changes.get("driver_settings", doc.get("driver_settings") or {}),
            problems,
        )
        problems.raise_if_any()
    return changes


@route(
    "PATCH",
    "/sending-lists/{id}",
    "Edit a sending list (names, driver, sender, limits, quiet hours, blocked words, price)",
    body=m.SendingListPatch,
    response=m.SendingListOut,
    errors=(409,),
)
async def patch_sending_list(request: web.Request) -> web.Response:
    return await _patch(request, LIST, m.SendingListPatch, _list_changes)


@route(
    "DELETE",
    "/sending-lists/{id}",
    "Archive a sending list (hidden from lists, no new campaign can use it)",
    response=m.SendingListOut,
    errors=(409,),
)
async def archive_sending_list(request: web.Request) -> web.Response:
    return await _archive_unused(request, LIST)


# --------------------------------------------------------------------------------------------- audiences


async def _audience_changes(trackly: Trackly, aid: int, doc: AudienceDoc, body: m.AudiencePatch) -> Update:
    if body.filter is None and body.contact_ids is None:
        raise ApiError(
            422,
            "validation",
            "give a filter or contact_ids",
            [{"loc": "body.filter", "msg": "give a filter or contact_ids", "type": "value_error"}],
        )
    await _refuse_if_running(trackly, AUDIENCE, aid)
    problems = Problems()
    await check_audience(trackly, int(doc["sending_list_id"]), body.filter, body.contact_ids, problems)
    problems.raise_if_any()
    return {"filter": _undollar(body.filter), "contact_ids": body.contact_ids}


@route(
    "PATCH",
    "/audiences/{id}",
    "Edit an audience (its contacts only while no running execution uses it)",
    body=m.AudiencePatch,
    response=m.AudienceOut,
    errors=(409,),
)
async def patch_audience(request: web.Request) -> web.Response:
    return await _patch(request, AUDIENCE, m.AudiencePatch, _audience_changes)


@route(
    "DELETE",
    "/audiences/{id}",
    "Archive an audience (hidden from lists, no new campaign can use it)",
    response=m.AudienceOut,
    errors=(409,),
)
async def archive_audience(request: web.Request) -> web.Response:
    return await _archive_unused(request, AUDIENCE)


# --------------------------------------------------------------------------------------------- creatives


async def _creative_changes(trackly: Trackly, cid: int, doc: CreativeDoc, body: m.CreativePatch) -> Update:
    await _refuse_if_running(trackly, CREATIVE, cid)
    changes: Update = {}
    if body.variants is not None:
        problems = Problems()
        check_variants(body.variants, problems)
        problems.raise_if_any()
        changes["variants"] = [v.model_dump() for v in body.variants]
    if body.selection is not None:
        changes["selection"] = body.selection
    return changes


@route(
    "PATCH",
    "/creatives/{id}",
    "Edit a creative (its variants only while no running execution uses it)",
    body=m.CreativePatch,
    response=m.CreativeOut,
    errors=(409,),
)
async def patch_creative(request: web.Request) -> web.Response:
    return await _patch(request, CREATIVE, m.CreativePatch, _creative_changes)


@route(
    "DELETE",
    "/creatives/{id}",
    "Archive a creative (hidden from lists, no new campaign can use it)",
    response=m.CreativeOut,
    errors=(409,),
)
async def archive_creative(request: web.Request) -> web.Response:
    return await _archive_unused(request, CREATIVE)


# --------------------------------------------------------------------------------------------- campaigns


def _campaign_running(cid: int, ex: ExecutionDoc, then: str) -> ApiError:
    return ApiError(
        409,
        "conflict",
        f"campaign {cid} has a running execution {ex['_id']} ({ex['status']}); "
        f"{then} once that execution has completed",
    )


async def _campaign_changes(trackly: Trackly, cid: int, doc: CampaignDoc, body: mc.CampaignPatch) -> Update:
    ex = await running_execution(trackly.db, [cid])
    if ex is not None:
        raise _campaign_running(cid, ex, "change it")
    fields = body.model_fields_set
    changes: Update = {}
    problems = Problems()
    if fields & {"audience_ids", "creative_id", "track_links"}:
        audience_ids = list(dict.fromkeys(body.audience_ids or doc["audience_ids"]))
        creative_id = body.creative_id or doc["creative_id"]
        tracked = bool(body.track_links if "track_links" in fields else doc.get("track_links"))
        await check_refs(
            trackly, doc["account_id"], doc["sending_list_id"], audience_ids, creative_id, problems, tracked
        )
        if fields & {"audience_ids", "creative_id"}:
            changes.update(audience_ids=audience_ids, creative_id=creative_id)
    now = trackly.now()
    end_at = body.end_at if "end_at" in fields else doc.get("end_at")
    if "schedule" in fields:
        nxt = check_schedule(body.schedule, end_at, now, problems)
        changes["schedule"] = (
            body.schedule.model_dump() if body.schedule else {"at": None, "cron": None, "timezone": "UTC"}
        )
        changes["next_run_at"] = nxt
        if doc.get("status") == CampaignStatus.DONE.value and nxt is not None:
            changes["status"] = CampaignStatus.ACTIVE.value  # a finished one-off given a new time
    elif "end_at" in fields and end_at is not None and end_at <= now:
        problems.add("body.end_at", "must be in the future")
    if "end_at" in fields:
        changes["end_at"] = end_at
    for k in ("exclude_in_workflow", "quiet_hours_policy", "track_links"):
        if k in fields:
            changes[k] = getattr(body, k)
    problems.raise_if_any()
    return changes


@route(
    "PATCH",
    "/campaigns/{id}",
    "Edit a campaign: name and description any time; audiences, creative, schedule, end date and options only "
    "while none of its executions is running",
    body=mc.CampaignPatch,
    response=mc.CampaignOut,
    errors=(409,),
)
async def patch_campaign(request: web.Request) -> web.Response:
    return await _patch(request, CAMPAIGN, mc.CampaignPatch, _campaign_changes)


@route(
    "DELETE",
    "/campaigns/{id}",
    "Archive a campaign: never scheduled or triggered again, hidden from lists; its history stays",
    response=mc.CampaignOut,
    errors=(409,),
)
async def archive_campaign(request: web.Request) -> web.Response:
    trackly = _tr(request)
    doc: CampaignDoc = await path_doc(request, c.CAMPAIGNS, "campaign")
    cid: int = doc["_id"]
    if doc.get("archived"):
        return _json(mc.CampaignOut.from_doc(doc))
    ex = await running_execution(trackly.db, [cid])
    if ex is not None:
        raise _campaign_running(
            cid, ex, f"cancel it (POST /campaigns/{cid}/cancel, which ends its queued messages) or archive it"
        )
    changes = {"archived": True, "archived_at": trackly.now(), "status": CampaignStatus.DONE.value}
    await trackly.db[c.CAMPAIGNS].update_one({"_id": cid}, {"$set": changes})
    return _json(mc.CampaignOut.from_doc({**doc, **changes}))


# --------------------------------------------------------------------------------------------- contacts


@route(
    "POST",
    "/contacts/{id}/erase",
    "Erase a contact (privacy request): its number and personal data redacted from queued, sent and failed "
    "records, inbound messages, webhooks and alerts; the contact is anonymised and blocked",
    response=mc.ContactEraseOut,
)
async def erase_contact(request: web.Request) -> web.Response:
    trackly = _tr(request)
    doc: ContactDoc = await path_doc(request, c.CONTACTS, "contact")
    contact_id: int = doc["_id"]
    from trackly_exec.api.erasure import erase_contact as erase

    out = await erase(trackly, doc)
    return _json(mc.ContactEraseOut(contact_id=contact_id, **out))
