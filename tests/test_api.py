"""The admin API over real HTTP (aiohttp test server) against the real store."""

from __future__ import annotations

import datetime as dt
import io
import json
import random
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from trackly_exec import api
from trackly_exec.api.openapi import document
from trackly_exec.app import Trackly
from trackly_exec.drivers import registry
from trackly_exec.operations.web import make_app
from trackly_exec.store import constants as c
from trackly_exec.store.models import utcnow

from .api_support import EchoDriver, H, add_contacts, campaign_body, create_campaign, post, seed


async def test_auth_required(admin: TestClient[Any, Any]) -> None:
    """Missing or wrong bearer tokens get a 401 JSON error; the OpenAPI document needs none."""
    r = await admin.get("/api/v1/accounts")
    assert r.status == 401 and (await r.json())["error"] == "unauthorized"
    r = await admin.get("/api/v1/accounts", headers={"Authorization": "Bearer nope"})
    assert r.status == 401
    r = await admin.get("/api/v1/accounts", headers={"Authorization": "Basic dGVzdC10b2tlbg=="})
    assert r.status == 401
    r = await admin.get("/api/v1/openapi.json")
    assert r.status == 200 and (await r.json())["openapi"].startswith("3.")


async def test_create_and_get_masks_secrets(admin: TestClient[Any, Any]) -> None:
    """Resources round-trip through POST and GET, and secrets never come back."""
    ids = await seed(admin)
    r = await admin.get(f"/api/v1/accounts/{ids['account']}", headers=H)
    acc = await r.json()
    assert acc["name"] == "Acme" and acc["webhook_secret"] == "**********"
    r = await admin.get(f"/api/v1/sending-lists/{ids['list']}", headers=H)
    lst = await r.json()
    assert lst["driver_settings"] == {"batch_size": 5} and lst["quiet_hours"]["start"] == "08:00"
    r = await admin.get(f"/api/v1/audiences/{ids['audience']}", headers=H)
    assert (await r.json())["filter"] == {"subscribed": {"eq": True}}


async def test_validation_errors_have_field_paths(admin: TestClient[Any, Any]) -> None:
    """Invalid bodies answer 422 with body.field.path locations; unknown keys are refused."""
    ids = await seed(admin)
    r = await admin.post(
        "/api/v1/sending-lists",
        headers=H,
        json={
            "account_id": ids["account"],
            "name": "x",
            "driver": "echo",
            "from_number": "+15550001111",
            "quiet_hours": {"start": "25:00"},
            "colour": "red",
        },
    )
    data = await r.json()
    assert r.status == 422 and data["error"] == "validation"
    locs = {d["loc"] for d in data["details"]}
    assert {"body.quiet_hours.start", "body.colour"} <= locs
    # a sending window that is empty, or runs across midnight (texting at night), is refused with its reason
    for window, why in ((("08:00", "08:00"), "is empty"), (("22:00", "06:00"), "across midnight")):
        body = {
            "account_id": ids["account"],
            "name": "y",
            "driver": "echo",
            "from_number": "+15550001111",
            "quiet_hours": {"start": window[0], "end": window[1]},
        }
        r = await admin.post("/api/v1/sending-lists", headers=H, json=body)
        data = await r.json()
        assert (
            r.status == 422 and data["details"][0]["loc"] == "body.quiet_hours" and why in data["details"][0]["msg"]
        ), data
        r = await admin.patch(
            f"/api/v1/sending-lists/{ids['list']}", headers=H, json={"quiet_hours": body["quiet_hours"]}
        )
        assert r.status == 422, await r.json()
    r = await admin.post(
        "/api/v1/creatives",
        headers=H,
        json={"account_id": ids["account"], "name": "c", "variants": [{"key": "a", "body": ""}]},
    )
    assert r.status == 422 and (await r.json())["details"][0]["loc"] == "body.variants.0.body"
    r = await admin.post(
        "/api/v1/creatives",
        headers=H,
        json={
            "account_id": ids["account"],
            "name": "c",
            "variants": [{"key": "a", "body": "ok {first_name}"}, {"key": "b", "body": "50% off {oops"}],
        },
    )
    data = await r.json()
    assert r.status == 422 and data["details"][0]["loc"] == "body.variants.1.body" and "stray" in data["message"]


async def test_driver_and_filter_validated(admin: TestClient[Any, Any]) -> None:
    """An unknown driver, bad driver settings and a bad audience filter are 422s naming the field."""
    ids = await seed(admin)
    base = {"account_id": ids["account"], "name": "x", "from_number": "+15550001111"}
    r = await admin.post("/api/v1/sending-lists", headers=H, json={**base, "driver": "nosuch"})
    data = await r.json()
    assert r.status == 422 and data["details"][0]["loc"] == "body.driver" and "nosuch" in data["message"]
    r = await admin.post(
        "/api/v1/sending-lists", headers=H, json={**base, "driver": "echo", "driver_settings": {"bogus": 1}}
    )
    assert r.status == 422 and (await r.json())["details"][0]["loc"] == "body.driver_settings.bogus"
    r = await admin.post(
        "/api/v1/audiences",
        headers=H,
        json={"sending_list_id": ids["list"], "name": "a", "filter": {"phone": {"regex": ".*"}}},
    )
    data = await r.json()
    assert r.status == 422 and data["details"][0]["loc"].startswith("body.filter") and "regex" in data["message"]


async def test_rate_limit_zero_is_an_unlimited_list(admin: TestClient[Any, Any]) -> None:
    """``rate_limit_per_minute`` 0 is an unlimited list (as the executor and the README treat it), at creation and
    in an edit; a negative rate is a 422 naming the field."""
    ids = await seed(admin)
    base = {"account_id": ids["account"], "name": "u", "from_number": "+15550001111", "driver": "echo"}
    r = await admin.post("/api/v1/sending-lists", headers=H, json={**base, "rate_limit_per_minute": 0})
    assert r.status == 201, await r.text()
    created = await r.json()
    assert created["rate_limit_per_minute"] == 0
    r = await admin.patch(f"/api/v1/sending-lists/{ids['list']}", headers=H, json={"rate_limit_per_minute": 0})
    assert r.status == 200 and (await r.json())["rate_limit_per_minute"] == 0
    r = await admin.post("/api/v1/sending-lists", headers=H, json={**base, "rate_limit_per_minute": -1})
    assert r.status == 422 and (await r.json())["details"][0]["loc"] == "body.rate_limit_per_minute"


async def test_unknown_ids_404_naming_which(admin: TestClient[Any, Any]) -> None:
    """Unknown path ids answer 404 naming the resource; unknown ids in a body 422 naming them."""
    ids = await seed(admin)
    for path in (
        "/accounts/999",
        "/sending-lists/999",
        "/audiences/999",
        "/creatives/999",
        "/campaigns/999",
        "/executions/999",
        "/contacts/999",
        "/accounts/abc",
        "/campaigns/999/stats",
        # digits str.isdigit() accepts but int() refuses (a 500), or reads as another id (fullwidth one as 1)
        "/accounts/%C2%B9",
        "/executions/%E2%91%A0",
        f"/campaigns/{'%EF%BC%91'}",
        f"/accounts/{'%D9%A1'}",
    ):
        r = await admin.get(f"/api/v1{path}", headers=H)
        assert r.status == 404, path
    camp = campaign_body(ids, audience_ids=[ids["audience"], 77])
    # an unknown id inside a body is a 422 naming it (every one of them: see test_api_names)
    r = await admin.post("/api/v1/campaigns", headers=H, json=camp)
    assert r.status == 422 and "audience 77" in (await r.json())["message"]
    r = await admin.post(
        "/api/v1/campaigns", headers=H, json={**camp, "audience_ids": [ids["audience"]], "creative_id": 55}
    )
    assert r.status == 422 and "creative 55" in (await r.json())["message"]
    r = await admin.post(
        "/api/v1/sending-lists",
        headers=H,
        json={"account_id": 42, "name": "x", "driver": "echo", "from_number": "+15550001111"},
    )
    assert r.status == 422 and "account 42" in (await r.json())["message"]
    r = await admin.post("/api/v1/campaigns/999/trigger", headers=H)
    assert r.status == 404


async def test_a_body_that_says_it_is_not_json_is_a_415(admin: TestClient[Any, Any], trackly: Trackly) -> None:
    """XML, multipart, an image or a charset other than UTF-8: 415 and nothing created; a JSON body sent without a
    type, as curl's default form type or as plain text is read as JSON (what a shell user sends)."""
    body = b'{"name": "ct", "webhook_secret": "abcdefgh12"}'
    for kind in ("application/xml", "multipart/form-data; boundary=x", "image/png", "application/json; charset=utf-16"):
        r = await admin.post("/api/v1/accounts", headers={**H, "Content-Type": kind}, data=body)
        assert r.status == 415 and "application/json" in (await r.json())["message"], kind
    assert await trackly.db[c.ACCOUNTS].count_documents({"name": "ct"}) == 0
    for kind in ("application/json", "text/plain", "application/x-www-form-urlencoded", "application/merge+json"):
        r = await admin.post("/api/v1/accounts", headers={**H, "Content-Type": kind}, data=body)
        assert r.status == 201, kind


async def test_malformed_and_too_big(admin: TestClient[Any, Any], trackly: Trackly) -> None:
    """Malformed JSON is a 400, a body over http.max_body_bytes a 413, both JSON with a request id."""
    r = await admin.post("/api/v1/accounts", headers=H, data=b"{nope")
    data = await r.json()
    assert r.status == 400 and data["error"] == "bad_json" and data["request_id"] == r.headers["X-Request-Id"]
    r = await admin.post("/api/v1/accounts", headers=H, data=b"NaN")
    assert r.status == 400
    big = b'{"name": "' + b"x" * (trackly.settings.http.max_body_bytes + 10) + b'"}'
    r = await admin.post("/api/v1/accounts", headers=H, data=io.BytesIO(big))
    assert r.status == 413 and (await r.json())["error"] == "too_large"


async def test_pagination(admin: TestClient[Any, Any]) -> None:
    """Lists page with limit/after and next_after; a bad limit is a 422 on the query."""
    for i in range(5):
        await post(admin, "/accounts", {"name": f"a{i}"})
    seen: list[int] = []
    after = 0
    while True:
        r = await admin.get(f"/api/v1/accounts?limit=2&after={after}", headers=H)
        data = await r.json()
        seen += [a["id"] for a in data["items"]]
        if data["next_after"] is None:
            break
        after = data["next_after"]
    assert seen == sorted(seen) and len(seen) == 5
    r = await admin.get("/api/v1/accounts?limit=0", headers=H)
    assert r.status == 422 and (await r.json())["details"][0]["loc"] == "query.limit"


async def test_contacts_bulk_upsert(admin: TestClient[Any, Any]) -> None:
    """Bulk upsert normalises phones, reports bad rows by index and keeps the good ones."""
    ids = await seed(admin)
    rows = [
        {"phone": "(212) 555-0100", "first_name": "Ann", "attributes": {"tier": "gold"}},
        {"phone": "not a phone"},
        {"phone": "+44 20 7946 0958", "timezone": "Mars/Base"},
        {"phone": "+44 20 7946 0958", "subscribed": "no"},
        "junk",
        {"phone": "212-555-0101", "extra": 1},
    ]
    data = await post(admin, f"/sending-lists/{ids['list']}/contacts", {"contacts": rows}, 200)
    assert data["inserted"] == 2 and data["updated"] == 0
    assert [(x["index"], x["reason"][:14]) for x in data["rejected"]] == [
        (1, "invalid phone "),
        (2, "timezone: Valu"),
        (4, "row must be an"),
        (5, "extra: unknown"),
    ]
    again = await post(
        admin,
        f"/sending-lists/{ids['list']}/contacts",
        {"contacts": [{"phone": "+12125550100", "last_name": "Lee", "attributes": {"n": 1}}]},
        200,
    )
    assert again == {"inserted": 0, "updated": 1, "rejected": []}
    r = await admin.get(f"/api/v1/sending-lists/{ids['list']}/contacts", headers=H)
    items = {c["phone"]: c for c in (await r.json())["items"]}
    ann = items["+12125550100"]
    assert ann["first_name"] == "Ann" and ann["last_name"] == "Lee" and ann["attributes"] == {"tier": "gold", "n": 1}
    assert items["+442079460958"]["subscribed"] is False


async def test_a_row_the_store_cannot_keep_is_rejected_alone(admin: TestClient[Any, Any]) -> None:
    """A lone surrogate (or NUL in a name) in one contact row rejects that row by its index; the good rows of the
    request are imported (the whole request used to be a 422)."""
    ids = await seed(admin)
    rows = [
        {"phone": "+12125550181", "first_name": "\ud800"},
        {"phone": "+12125550182", "first_name": "Good"},
        {"phone": "+12125550183", "attributes": {"k\x00": 1}},
        {"phone": "+12125550184", "timezone": "Europe/Paris\udfff"},
    ]
    data = await post(admin, f"/sending-lists/{ids['list']}/contacts", {"contacts": rows}, 200)
    assert data["inserted"] == 1, data
    assert [x["index"] for x in data["rejected"]] == [0, 2, 3]
    assert "first_name" in data["rejected"][0]["reason"] and "lone surrogate" in data["rejected"][0]["reason"]


async def test_campaign_schedule_validation(admin: TestClient[Any, Any]) -> None:
    """A campaign's schedule must be a future time or a valid cron in a valid zone; ownership is checked."""
    ids = await seed(admin)
    camp = campaign_body(ids)
    past = (utcnow() - dt.timedelta(hours=1)).isoformat()
    r = await admin.post("/api/v1/campaigns", headers=H, json={**camp, "schedule": {"at": past}})
    assert r.status == 422 and (await r.json())["details"][0]["loc"] == "body.schedule.at"
    r = await admin.post(
        "/api/v1/campaigns", headers=H, json={**camp, "schedule": {"cron": "0 9 * * *", "timezone": "Nowhere/X"}}
    )
    assert r.status == 422 and (await r.json())["details"][0]["loc"] == "body.schedule.timezone"
    r = await admin.post("/api/v1/campaigns", headers=H, json={**camp, "schedule": {"at": past, "cron": "0 9 * * *"}})
    assert r.status == 422
    future = (utcnow() + dt.timedelta(days=1)).replace(microsecond=0)
    c1 = await post(admin, "/campaigns", {**camp, "schedule": {"at": future.isoformat()}, "track_links": True})
    assert dt.datetime.fromisoformat(c1["next_run_at"]) == future and c1["status"] == "active"
    other = await post(admin, "/accounts", {"name": "Other"})
    r = await admin.post("/api/v1/campaigns", headers=H, json={**camp, "account_id": other["id"]})
    assert r.status == 422 and (await r.json())["details"][0]["loc"] == "body.sending_list_id"


async def test_campaign_cron_schedule(admin: TestClient[Any, Any]) -> None:
    """A cron schedule sets next_run_at to its next occurrence; an invalid cron is a 422."""
    pytest.importorskip("trackly_exec.campaigns.cron")
    ids = await seed(admin)
    camp = campaign_body(ids)
    c1 = await post(admin, "/campaigns", {**camp, "schedule": {"cron": "30 9 * * *", "timezone": "Europe/Amsterdam"}})
    nxt = dt.datetime.fromisoformat(c1["next_run_at"])
    local = nxt.astimezone(__import__("zoneinfo").ZoneInfo("Europe/Amsterdam"))
    assert (local.hour, local.minute) == (9, 30) and nxt > utcnow()
    r = await admin.post("/api/v1/campaigns", headers=H, json={**camp, "schedule": {"cron": "61 * * *"}})
    assert r.status == 422 and (await r.json())["details"][0]["loc"] == "body.schedule.cron"


async def test_pause_resume_trigger_stats(admin: TestClient[Any, Any], trackly: Trackly) -> None:
    """Pause blocks triggers (409), resume allows them; trigger returns an execution with counts; stats answer."""
    pytest.importorskip("trackly_exec.campaigns.scheduler")
    ids = await seed(admin)
    await add_contacts(admin, ids["list"], 10)
    camp = await create_campaign(admin, ids, quiet_hours_policy="hold")
    assert (await post(admin, f"/campaigns/{camp['id']}/pause", None, 200))["status"] == "paused"
    r = await admin.post(f"/api/v1/campaigns/{camp['id']}/trigger", headers=H)
    assert r.status == 409
    assert (await post(admin, f"/campaigns/{camp['id']}/resume", None, 200))["status"] == "active"
    out = await post(admin, f"/campaigns/{camp['id']}/trigger?wait=true", None, 202)
    r = await admin.get(f"/api/v1/executions/{out['execution_id']}", headers=H)
    ex = await r.json()
    assert ex["campaign_id"] == camp["id"] and ex["counts"]["unique"] == 10
    r = await admin.get(f"/api/v1/campaigns/{camp['id']}/stats", headers=H)
    stats = await r.json()
    assert (
        stats["executions"] == 1
        and stats["queued"] + stats["sent"] + sum(stats["failed"].values()) == ex["counts"]["queued"]
    )
    r = await admin.get(f"/api/v1/executions?campaign_id={camp['id']}", headers=H)
    assert [e["id"] for e in (await r.json())["items"]] == [out["execution_id"]]


async def test_openapi_covers_every_route(trackly: Trackly) -> None:
    """Every route the server registers under /api/v1 is in the OpenAPI document with its schemas."""
    registry.register("echo", EchoDriver)
    app = make_app(trackly)
    doc = document()
    registered = set()
    for sub in app._subapps:  # the /api/v1 sub-application
        for r in sub.router.routes():
            if r.method != "HEAD":
                registered.add((r.method.lower(), r.resource.canonical))
    documented = {(meth, path) for path, ops in doc["paths"].items() for meth in ops}
    assert registered and registered == documented
    op = doc["paths"]["/api/v1/sending-lists"]["post"]
    ref = op["requestBody"]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
    assert "rate_limit_per_minute" in doc["components"]["schemas"][ref]["properties"]
    json.dumps(doc)


async def test_fuzzed_bodies_never_500(admin: TestClient[Any, Any]) -> None:
    """Random and hostile bodies on every POST route get 4xx answers, never a 500."""
    ids = await seed(admin)
    rnd = random.Random(4)
    values: list[Any] = [
        None,
        True,
        -1,
        0,
        2**70,
        -(2**70),
        1.5e308,
        "",
        "x" * 300,
        "\x00",
        [],
        {},
        [1, "a"],
        {"$gt": 1},
        {"a\x00": 1},
        "\ud800",
        {"\udfff": 1},
        {"nested": {"deep": [{"x": 1}]}},
        "2026-01-01T00:00:00",
        ids["account"],
        ids["list"],
        "+15550001111",
        "echo",
        [{"key": "a", "body": "b"}],
    ]
    fields = [
        "name",
        "balance",
        "account_id",
        "sending_list_id",
        "driver",
        "driver_settings",
        "from_number",
        "quiet_hours",
        "filter",
        "contact_ids",
        "variants",
        "audience_ids",
        "creative_id",
        "schedule",
        "contacts",
        "phone",
        "webhook_url",
        "selection",
        "rate_limit_per_minute",
        "default_region",
    ]
    paths = [
        "/accounts",
        "/sending-lists",
        f"/sending-lists/{ids['list']}/contacts",
        "/audiences",
        "/creatives",
        "/campaigns",
        "/campaigns/1/pause",
    ]
    deep: Any = 1
    for _ in range(200):
        deep = [deep]
    bodies: list[Any] = [b"", b"[]", b'"str"', b"1e999999", json.dumps(deep).encode(), b"\xff\xfe", b'{"a":}']
    bodies.extend(
        json.dumps({rnd.choice(fields): rnd.choice(values) for _ in range(rnd.randint(0, 6))}).encode()
        for _ in range(250)
    )
    bodies.append(json.dumps({"contacts": [{"phone": v} for v in values if not isinstance(v, float)]}).encode())
    for i, body in enumerate(bodies):
        path = paths[i % len(paths)]
        r = await admin.post(f"/api/v1{path}", headers=H, data=body)
        assert r.status < 500, (path, body[:200], await r.text())
    for query in (
        "limit=abc",
        "after=-1",
        f"after={2**64}",
        "limit=1e3",
        "after=1&after=2",
        "x=1",
        f"campaign_id={2**70}",
        "limit=%00",
        "after=%F0%9F%92%A9",
    ):
        for path in ("/accounts", "/executions", f"/sending-lists/{ids['list']}/contacts", f"/accounts/{2**64}"):
            r = await admin.get(f"/api/v1{path}?{query}", headers=H)
            assert r.status < 500, (path, query, await r.text())


def test_openapi_document_is_valid() -> None:
    """An independent validator (openapi-spec-validator) accepts the generated OpenAPI 3.1 document."""
    from openapi_spec_validator import validate

    doc = json.loads(json.dumps(document("http://127.0.0.1:8080")))
    validate(doc)
    assert doc["openapi"] == "3.1.0" and doc["paths"]["/api/v1/openapi.json"]["get"]["security"] == []


async def test_resume_recomputes_cron_from_now(admin: TestClient[Any, Any], trackly: Trackly) -> None:
    """Resuming a recurring campaign sets next_run_at to the next occurrence after now (no burst of missed ones)."""
    ids = await seed(admin)
    camp = await create_campaign(admin, ids, schedule={"cron": "*/5 * * * *", "timezone": "UTC"})
    await post(admin, f"/campaigns/{camp['id']}/pause", None, 200)
    now = dt.datetime(2026, 3, 2, 12, 3, 20, tzinfo=dt.UTC)
    trackly.clock = lambda: now
    await trackly.db["campaigns"].update_one({"_id": camp["id"]}, {"$set": {"next_run_at": now - dt.timedelta(days=3)}})
    out = await post(admin, f"/campaigns/{camp['id']}/resume", None, 200)
    assert dt.datetime.fromisoformat(out["next_run_at"]) == dt.datetime(2026, 3, 2, 12, 5, tzinfo=dt.UTC)
    r = await admin.get(f"/api/v1/campaigns/{camp['id']}", headers=H)
    assert (await r.json())["schedule"] == {"at": None, "cron": "*/5 * * * *", "timezone": "UTC"}


def test_documented_examples_are_valid() -> None:
    """Every request example in the OpenAPI document validates against its own model (and filter/template rules)."""
    from trackly_exec.api import models as m
    from trackly_exec.api import models_campaigns as mc
    from trackly_exec.campaigns.audience import compile_filter
    from trackly_exec.campaigns.compose import check_body

    for model in (m.AccountIn, m.SendingListIn, m.ContactsBulkIn, m.AudienceIn, m.CreativeIn, mc.CampaignIn):
        for example in model.model_json_schema()["examples"]:
            body = model.model_validate(example)
            if isinstance(body, m.AudienceIn):
                compile_filter(body.filter)
            if isinstance(body, m.CreativeIn):
                assert all(not check_body(v.body) for v in body.variants)


async def test_store_down_is_503(trackly: Trackly) -> None:
    """With the store unreachable, the API answers 503 JSON (not 500, not a hang)."""
    from pymongo import AsyncMongoClient

    from trackly_exec.store.client import Store
    from trackly_exec.store.embedded import free_port

    dead: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        f"mongodb://127.0.0.1:{free_port()}/?directConnection=true", serverSelectionTimeoutMS=300, tz_aware=True
    )
    down = Trackly(trackly.settings, Store(dead, dead["x"]))
    app = web.Application()
    api.setup(app, down)
    try:
        async with TestClient(TestServer(app)) as cl:
            r = await cl.get("/api/v1/accounts/1", headers=H)
            assert r.status == 503 and (await r.json())["error"] == "unavailable"
    finally:
        await dead.close()


async def test_pause_holds_queued_messages_and_resume_sends_them(admin: TestClient[Any, Any], trackly: Trackly) -> None:
    """Pausing a campaign mid-send holds its queued messages (the executor sends none); resuming sends them all."""
    import datetime as dt

    from trackly_exec.executor.coordinator import Coordinator
    from trackly_exec.store import constants as c

    offset = 12 - dt.datetime.now(dt.UTC).hour  # a zone where it is about noon now: inside the quiet-hours window
    noon = f"Etc/GMT{'-' if offset > 0 else '+'}{abs(offset)}"
    ids = await seed(admin)
    await post(
        admin,
        f"/sending-lists/{ids['list']}/contacts",
        {"contacts": [{"phone": f"+1212555{n:04d}", "timezone": noon} for n in range(100, 120)]},
        200,
    )
    camp = await create_campaign(admin, ids, quiet_hours_policy="hold")
    await post(admin, f"/campaigns/{camp['id']}/trigger?wait=true", None, 202)
    queued = await trackly.db[c.QUEUED].count_documents({})
    assert queued > 0
    await post(admin, f"/campaigns/{camp['id']}/pause", None, 200)
    coord = Coordinator(trackly)
    await coord.run_until_idle()
    assert await trackly.db[c.SENT].count_documents({}) == 0
    assert await trackly.db[c.QUEUED].count_documents({}) == queued
    await post(admin, f"/campaigns/{camp['id']}/resume", None, 200)
    await coord.run_until_idle()
    assert await trackly.db[c.SENT].count_documents({}) == queued == 20
    assert await trackly.db[c.QUEUED].count_documents({}) == 0
