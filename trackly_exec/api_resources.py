"""Admin API routes for accounts, sending lists, contacts, audiences and creatives (registered into
:data:`trackly_exec.api.ROUTES`).

Every referenced id is checked (404 naming which); a sending list's driver must build with its settings
(``trackly.drivers.build``), an audience filter must compile (:func:`trackly_exec.audience.compile_filter`)
and every creative variant body must be a valid template (:func:`trackly_exec.compose.check_body`), else 422.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from . import apimodels as m
from . import constants as c
from .api import (
    IMPORT_ROW_BYTES,
    ApiError,
    _json,
    _new_id,
    _tr,
    field_error,
    get_or_404,
    import_body_limit,
    page,
    path_id,
    read_body,
    read_query,
    read_routes,
    route,
)
from .app import Trackly
from .contacts import upsert
from .errors import DriverNotFound, TracklyError
from .models import utcnow
from .netguard import Allowlist, check_url
from .providers import ListOverrideError

# --------------------------------------------------------------------------------------------- accounts


async def check_webhook_url(trackly: Trackly, url: str, loc: str) -> None:
    """422 unless ``url`` may receive customer webhooks (no internal address: :mod:`trackly_exec.netguard`)."""
    problem = await check_url(url, Allowlist.parse(trackly.settings.tracking.webhook_url_allowlist))
    if problem:
        raise field_error(loc, f"webhook_url {problem}")


@route("POST", "/accounts", "Create an account", body=m.AccountIn, response=m.AccountOut, status=201)
async def create_account(request: web.Request) -> web.Response:
    body = await read_body(request, m.AccountIn)
    trackly = _tr(request)
    if body.webhook_url is not None:
        await check_webhook_url(trackly, body.webhook_url, "body.webhook_url")
    doc = {"_id": await _new_id(trackly, c.ACCOUNTS), **body.model_dump(), "created_at": utcnow()}
    await trackly.store[c.ACCOUNTS].insert_one(doc)
    return _json(m.AccountOut.from_doc(doc), 201)


# --------------------------------------------------------------------------------------------- sending lists


@route("POST", "/sending-lists", "Create a sending list", body=m.SendingListIn, response=m.SendingListOut, status=201)
async def create_sending_list(request: web.Request) -> web.Response:
    body = await read_body(request, m.SendingListIn)
    trackly = _tr(request)
    await get_or_404(trackly, c.ACCOUNTS, body.account_id, "account")
    try:
        trackly.drivers.build(body.driver, body.driver_settings)
    except DriverNotFound as exc:
        raise field_error("body.driver", str(exc)) from exc
    except ListOverrideError as exc:
        raise field_error(f"body.driver_settings.{exc.key}", str(exc)) from exc
    except Exception as exc:  # invalid settings (ConfigError), or a plugin that fails to build with them
        raise field_error("body.driver_settings", str(exc)) from exc
    doc = {"_id": await _new_id(trackly, c.SENDING_LISTS), **body.model_dump(), "created_at": utcnow()}
    await trackly.store[c.SENDING_LISTS].insert_one(doc)
    return _json(m.SendingListOut.from_doc(doc), 201)


@route(
    "POST",
    "/sending-lists/{id}/contacts",
    "Bulk upsert contacts by normalised phone",
    body=m.ContactsBulkIn,
    response=m.ContactsBulkOut,
)
async def upsert_contacts(request: web.Request) -> web.Response:
    trackly = _tr(request)
    list_id = path_id(request, "sending list")
    body = await read_body(
        request,
        m.ContactsBulkRaw,
        limit=import_body_limit(trackly.settings),
        limit_name=f"at most {m.MAX_BULK_CONTACTS} contacts of {IMPORT_ROW_BYTES} bytes",
    )
    await get_or_404(trackly, c.SENDING_LISTS, list_id, "sending list")
    result = await upsert(trackly.store, list_id, body.contacts, default_region=body.default_region)
    return _json(result.as_dict())


@route(
    "GET",
    "/sending-lists/{id}/contacts",
    "List a sending list's contacts",
    query=m.PageQuery,
    response=m.Page[m.ContactOut],
)
async def list_contacts(request: web.Request) -> web.Response:
    list_id = path_id(request, "sending list")
    query = read_query(request, m.PageQuery)
    await get_or_404(_tr(request), c.SENDING_LISTS, list_id, "sending list")
    return await page(request, c.CONTACTS, m.ContactOut, query, {"sending_list_id": list_id})


@route("GET", "/contacts/{id}", "Get a contact", response=m.ContactOut)
async def get_contact(request: web.Request) -> web.Response:
    doc = await get_or_404(_tr(request), c.CONTACTS, path_id(request, "contact"), "contact")
    return _json(m.ContactOut.from_doc(doc))


# --------------------------------------------------------------------------------------------- audiences


@route(
    "POST",
    "/audiences",
    "Create an audience (a filter or explicit contact ids)",
    body=m.AudienceIn,
    response=m.AudienceOut,
    status=201,
)
async def create_audience(request: web.Request) -> web.Response:
    body = await read_body(request, m.AudienceIn)
    trackly = _tr(request)
    await get_or_404(trackly, c.SENDING_LISTS, body.sending_list_id, "sending list")
    if body.filter is not None:
        from .audience import compile_filter

        try:
            compile_filter(body.filter)
        except (ValueError, TypeError, TracklyError) as exc:
            path = getattr(exc, "path", "filter")
            raise field_error(f"body.{path}", str(exc)) from exc
    doc = {"_id": await _new_id(trackly, c.AUDIENCES), **body.model_dump()}
    doc["filter"] = _undollar(doc["filter"])
    await trackly.store[c.AUDIENCES].insert_one(doc)
    return _json(m.AudienceOut.from_doc(doc), 201)


def _undollar(node: Any) -> Any:
    """The filter with ``$eq``-style operator keys stored as ``eq`` (the same meaning; MongoDB-safe keys)."""
    if isinstance(node, dict):
        return {(k[1:] if k.startswith("$") else k): _undollar(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_undollar(v) for v in node]
    return node


# --------------------------------------------------------------------------------------------- creatives


@route(
    "POST", "/creatives", "Create a creative (message variants)", body=m.CreativeIn, response=m.CreativeOut, status=201
)
async def create_creative(request: web.Request) -> web.Response:
    body = await read_body(request, m.CreativeIn)
    trackly = _tr(request)
    from .compose import check_body

    problems = [
        {"loc": f"body.variants.{i}.body", "msg": p, "type": "value_error"}
        for i, v in enumerate(body.variants)
        for p in check_body(v.body)
    ]
    if problems:
        raise ApiError(422, "validation", problems[0]["msg"], problems)
    await get_or_404(trackly, c.ACCOUNTS, body.account_id, "account")
    doc = {"_id": await _new_id(trackly, c.CREATIVES), **body.model_dump()}
    await trackly.store[c.CREATIVES].insert_one(doc)
    return _json(m.CreativeOut.from_doc(doc), 201)


# --------------------------------------------------------------------------------------------- reads

read_routes("/accounts", c.ACCOUNTS, m.AccountOut, "account", "an")
read_routes("/sending-lists", c.SENDING_LISTS, m.SendingListOut, "sending list")
read_routes("/audiences", c.AUDIENCES, m.AudienceOut, "audience", "an")
read_routes("/creatives", c.CREATIVES, m.CreativeOut, "creative")
