"""Admin API routes for accounts, sending lists, contacts, audiences and creatives (registered into
:data:`trackly_exec.api.ROUTES`).

Every problem of a body is reported in one 422 (``details`` lists each): a referenced id that does not exist
or is archived (an account, a sending list, an audience's contact ids, naming which), a sending list's driver
that is not configured or does not build with its settings (``trackly.drivers.build``), a ``from_number``
that is not a valid sender, an audience filter that does not compile
(:func:`trackly_exec.campaigns.audience.compile_filter`), a creative variant body that is not a valid template
(:func:`trackly_exec.campaigns.compose.check_body`). Unknown ids in the path are 404s.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from pydantic import SecretStr
from pymongo import ReturnDocument

from trackly_exec.api import models as m
from trackly_exec.api.contacts import upsert
from trackly_exec.api.routes import (
    IMPORT_ROW_BYTES,
    ApiError,
    Problems,
    _json,
    _new_id,
    _tr,
    field_error,
    get_or_404,
    ids_text,
    import_body_limit,
    page,
    path_doc,
    path_id,
    read_body,
    read_query,
    read_routes,
    route,
)
from trackly_exec.app import Trackly
from trackly_exec.drivers.pool import ListOverrideError, strict_overrides
from trackly_exec.errors import DriverNotFound, TracklyError
from trackly_exec.logs import get_logger
from trackly_exec.store import constants as c
from trackly_exec.store.documents import ConfigTable, ContactDoc, Filter
from trackly_exec.tracking.netguard import Allowlist, check_url

log = get_logger(__name__)

# --------------------------------------------------------------------------------------------- accounts


async def check_webhook_url(trackly: Trackly, url: str, loc: str) -> None:
    """422 unless ``url`` may receive customer webhooks (no internal address: :mod:`trackly_exec.tracking.netguard`)."""
    problem = await check_url(url, Allowlist.parse(trackly.settings.tracking.webhook_url_allowlist))
    if problem:
        raise field_error(loc, f"webhook_url {problem}")


@route("POST", "/accounts", "Create an account", body=m.AccountIn, response=m.AccountOut, status=201)
async def create_account(request: web.Request) -> web.Response:
    body = await read_body(request, m.AccountIn)
    trackly = _tr(request)
    if body.webhook_url is not None:
        await check_webhook_url(trackly, body.webhook_url, "body.webhook_url")
    doc = {"_id": await _new_id(trackly, c.ACCOUNTS), **body.model_dump(), "created_at": trackly.now()}
    await trackly.db[c.ACCOUNTS].insert_one(doc)
    return _json(m.AccountOut.from_doc(doc), 201)


@route(
    "POST",
    "/accounts/{id}/balance",
    "Credit (top up) or debit an account's prepaid balance; billing-blocked messages go at their next retry",
    body=m.BalanceChange,
    response=m.AccountOut,
    errors=(409,),
)
async def change_balance(request: web.Request) -> web.Response:
    trackly = _tr(request)
    doc = await path_doc(request, c.ACCOUNTS, "account")
    body = await read_body(request, m.BalanceChange)
    amount = round(body.amount, 6)
    query: Filter = {"_id": doc["_id"]}
    if amount < 0:
        query["balance"] = {"$gte": -amount}  # atomic beside the executor's debits: never below zero
    after = await trackly.db[c.ACCOUNTS].find_one_and_update(
        query, {"$inc": {"balance": amount}}, return_document=ReturnDocument.AFTER
    )
    if after is None:
        raise ApiError(
            409,
            "conflict",
            f"account {doc['_id']} has a balance of {doc.get('balance', 0.0)}: it cannot be debited {-amount}",
        )
    log.info(
        "account_balance_changed", account_id=doc["_id"], amount=amount, balance=after.get("balance"), note=body.note
    )
    return _json(m.AccountOut.from_doc(after))


# --------------------------------------------------------------------------------------------- sending lists


def check_driver(trackly: Trackly, driver: str, driver_settings: ConfigTable, problems: Problems) -> None:
    """The list's driver must be configured (or installed) and build with the list's settings."""
    try:
        built = trackly.drivers.build(driver, driver_settings)
        strict_overrides(type(built), driver_settings)
        empty = [
            name for name, value in built.settings if isinstance(value, SecretStr) and not value.get_secret_value()
        ]
        if empty:
            where = (
                f"add [drivers.{driver}] with it to the config file"
                if driver not in trackly.drivers.names()
                else f"set it under [drivers.{driver}] in the config file"
            )
            problems.add(
                "body.driver",
                f"driver {driver!r} is not configured: its credential {', '.join(empty)} is empty; {where}",
            )
    except DriverNotFound as exc:
        configured = ", ".join(trackly.drivers.names()) or "none"
        problems.add(
            "body.driver",
            f"driver {driver!r} is not configured (no [drivers.{driver}] in the config and no "
            f"installed driver of that name; configured: {configured}): {exc}",
        )
    except ListOverrideError as exc:  # a driver setting a list may not override (the allow-list)
        problems.add(f"body.driver_settings.{exc.key}", str(exc))
    except Exception as exc:  # invalid settings (ConfigError), or a plugin that fails to build with them
        problems.add("body.driver_settings", f"driver {driver!r} cannot be built with these settings: {exc}")


async def check_account(trackly: Trackly, account_id: int, problems: Problems) -> None:
    if await trackly.db[c.ACCOUNTS].find_one({"_id": account_id}, {"_id": 1}) is None:
        problems.add("body.account_id", f"account {account_id} does not exist")


@route("POST", "/sending-lists", "Create a sending list", body=m.SendingListIn, response=m.SendingListOut, status=201)
async def create_sending_list(request: web.Request) -> web.Response:
    body = await read_body(request, m.SendingListIn)
    trackly = _tr(request)
    problems = Problems()
    await check_account(trackly, body.account_id, problems)
    check_driver(trackly, body.driver, body.driver_settings, problems)
    problems.raise_if_any()
    doc = {"_id": await _new_id(trackly, c.SENDING_LISTS), **body.model_dump(), "created_at": trackly.now()}
    await trackly.db[c.SENDING_LISTS].insert_one(doc)
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
        rows="contacts",
    )
    await get_or_404(trackly, c.SENDING_LISTS, list_id, "sending list")
    result = await upsert(trackly.store, list_id, body.contacts, default_region=body.default_region, clock=trackly.now)
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
    doc: ContactDoc = await path_doc(request, c.CONTACTS, "contact")
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
    problems = Problems()
    await check_audience(trackly, body.sending_list_id, body.filter, body.contact_ids, problems)
    problems.raise_if_any()
    doc = {"_id": await _new_id(trackly, c.AUDIENCES), **body.model_dump()}
    doc["filter"] = _undollar(doc["filter"])
    await trackly.db[c.AUDIENCES].insert_one(doc)
    return _json(m.AudienceOut.from_doc(doc), 201)


CONTACT_CHECK_CHUNK = 10_000


async def check_audience(
    trackly: Trackly, list_id: int, flt: Filter | None, contact_ids: list[int] | None, problems: Problems
) -> None:
    """The list exists (and is not archived), the filter compiles, every contact id is a contact of the list."""
    lst = await trackly.db[c.SENDING_LISTS].find_one({"_id": list_id}, {"archived": 1})
    if lst is None:
        problems.add("body.sending_list_id", f"sending list {list_id} does not exist")
    elif lst.get("archived"):
        problems.add("body.sending_list_id", f"sending list {list_id} is archived")
    if flt is not None:
        from trackly_exec.campaigns.audience import compile_filter

        try:
            compile_filter(flt)
        except (ValueError, TypeError, TracklyError) as exc:
            path = getattr(exc, "path", "filter")
            problems.add(f"body.{path}", str(exc))
    if contact_ids:
        wanted = list(dict.fromkeys(contact_ids))
        where: dict[int, int] = {}
        for i in range(0, len(wanted), CONTACT_CHECK_CHUNK):
            chunk = wanted[i : i + CONTACT_CHECK_CHUNK]
            async for d in trackly.db[c.CONTACTS].find({"_id": {"$in": chunk}}, {"sending_list_id": 1}):
                where[int(d["_id"])] = int(d["sending_list_id"])
        missing = [x for x in wanted if x not in where]
        if missing:
            problems.add(
                "body.contact_ids", f"{ids_text('contact', missing)} {'do' if len(missing) > 1 else 'does'} not exist"
            )
        foreign = [x for x in wanted if x in where and where[x] != list_id]
        if foreign and lst is not None:
            problems.add(
                "body.contact_ids",
                f"{ids_text('contact', foreign)} {'are' if len(foreign) > 1 else 'is'} not on sending list {list_id}",
            )


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
    problems = Problems()
    check_variants(body.variants, problems)
    await check_account(trackly, body.account_id, problems)
    problems.raise_if_any()
    doc = {"_id": await _new_id(trackly, c.CREATIVES), **body.model_dump()}
    await trackly.db[c.CREATIVES].insert_one(doc)
    return _json(m.CreativeOut.from_doc(doc), 201)


def check_variants(variants: list[Any], problems: Problems) -> None:
    from trackly_exec.campaigns.compose import check_body

    for i, v in enumerate(variants):
        for p in check_body(v.body):
            problems.add(f"body.variants.{i}.body", p)


# --------------------------------------------------------------------------------------------- reads

read_routes("/accounts", c.ACCOUNTS, m.AccountOut, "account", "an")
read_routes("/sending-lists", c.SENDING_LISTS, m.SendingListOut, "sending list", query=m.NamedQuery)
read_routes("/audiences", c.AUDIENCES, m.AudienceOut, "audience", "an", query=m.NamedQuery)
read_routes("/creatives", c.CREATIVES, m.CreativeOut, "creative", query=m.NamedQuery)
