"""Edit and retire: PATCH what is safe, DELETE archives, end dates, erasing a contact."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any, ClassVar

import pytest
from aiohttp.test_utils import TestClient

from trackly_exec import Accepted, OutboundMessage, SendResult
from trackly_exec.app import Trackly
from trackly_exec.drivers import registry
from trackly_exec.executor.coordinator import Coordinator
from trackly_exec.store import constants as c
from trackly_exec.store.models import utcnow
from trackly_exec.tracking.clicks import Visit, record_clicks

from .api_support import EchoDriver, H, campaign_body, create_campaign, post, seed
from .campaign_fixtures import INSIDE


async def call(cl: TestClient[Any, Any], method: str, path: str, body: Any = None, status: int = 200) -> Any:
    r = await cl.request(method, f"/api/v1{path}", json=body, headers=H)
    data = await r.json()
    assert r.status == status, data
    return data


async def test_patch_campaign_refused_while_running(admin: TestClient[Any, Any], trackly: Trackly) -> None:
    """A campaign's name changes any time; its creative, audiences and schedule only while no execution of it is
    running (409 naming the execution); references are validated like at creation."""
    ids = await seed(admin)
    camp = await create_campaign(admin, ids, name="Spring")
    cre2 = await post(
        admin,
        "/creatives",
        {"account_id": ids["account"], "name": "v2", "variants": [{"key": "a", "body": "New text"}]},
    )
    out = await call(
        admin,
        "PATCH",
        f"/campaigns/{camp['id']}",
        {"creative_id": cre2["id"], "track_links": True, "description": "second try"},
    )
    assert out["creative_id"] == cre2["id"] and out["track_links"] is True and out["description"] == "second try"
    await trackly.db[c.EXECUTIONS].insert_one({"_id": 77, "campaign_id": camp["id"], "status": "queued"})
    r = await admin.patch(f"/api/v1/campaigns/{camp['id']}", headers=H, json={"creative_id": ids["creative"]})
    data = await r.json()
    assert r.status == 409 and "execution 77" in data["message"] and "queued" in data["message"]
    assert (await call(admin, "PATCH", f"/campaigns/{camp['id']}", {"name": "Spring!"}))["name"] == "Spring!"
    await trackly.db[c.EXECUTIONS].update_one({"_id": 77}, {"$set": {"status": "completed"}})
    r = await admin.patch(
        f"/api/v1/campaigns/{camp['id']}", headers=H, json={"audience_ids": [404], "creative_id": 405}
    )
    data = await r.json()
    assert r.status == 422 and {d["loc"] for d in data["details"]} == {"body.audience_ids", "body.creative_id"}
    cron = await call(admin, "PATCH", f"/campaigns/{camp['id']}", {"schedule": {"cron": "0 9 * * *"}})
    assert cron["next_run_at"] is not None and cron["schedule"]["cron"] == "0 9 * * *"
    r = await admin.patch(f"/api/v1/campaigns/{camp['id']}", headers=H, json={"name": None})
    assert r.status == 422
    r = await admin.patch(f"/api/v1/campaigns/{camp['id']}", headers=H, json={"status": "active"})
    assert r.status == 422 and (await r.json())["details"][0]["loc"] == "body.status"


class OtherEchoDriver(EchoDriver):
    """A second provider: what it was asked to send."""

    sent: ClassVar[list[str]] = []

    async def send(self, messages: Sequence[OutboundMessage]) -> list[SendResult]:
        OtherEchoDriver.sent.extend(m.to for m in messages)
        return [Accepted(message_id=m.id, provider_message_id=f"other-{m.id}") for m in messages]


async def test_patch_sending_list_driver(admin: TestClient[Any, Any], trackly: Trackly) -> None:
    """A sending list's driver changes through PATCH, checked like at creation (a known driver, settings it lets a
    list override, re-checked against the new driver); the executor sends through it from its next read of the
    list, and what was sent before stays with the old provider."""
    registry.register("echo2", OtherEchoDriver)
    OtherEchoDriver.sent = []
    ids = await seed(admin)  # the list: driver echo, driver_settings {"batch_size": 5}
    path = f"/sending-lists/{ids['list']}"
    await post(admin, f"{path}/contacts", {"contacts": [{"phone": "+12125550100", "timezone": INSIDE}]}, 200)
    coord = Coordinator(trackly)
    coord.cfg = coord.cfg.model_copy(update={"list_cache_seconds": 0})  # read the list on every poll

    async def test_send() -> dict[str, Any]:
        out = await post(admin, f"{path}/test-send", {"creative_id": ids["creative"], "numbers": ["+12125550100"]}, 202)
        await coord.run_until_idle()
        sent = await trackly.db[c.SENT].find_one({"execution_id": out["execution_id"]})
        assert sent is not None
        return dict(sent)

    assert (await test_send())["provider"] == "echo"
    for body, loc in (
        ({"driver": "nope"}, "body.driver"),
        ({"driver": None}, "body.driver"),
        ({"driver": "echo2", "driver_settings": {"base_url": "http://elsewhere"}}, "body.driver_settings.base_url"),
        ({"driver_settings": {"batch_size": 0}}, "body.driver_settings.batch_size"),
        # a value of another type is refused, never guessed (lax validation took "5" as 5 and true as 1)
        ({"driver_settings": {"batch_size": "5"}}, "body.driver_settings.batch_size"),
        ({"driver_settings": {"batch_size": True}}, "body.driver_settings.batch_size"),
    ):
        r = await admin.patch(f"/api/v1{path}", headers=H, json=body)
        data = await r.json()
        assert r.status == 422 and data["details"][0]["loc"] == loc, (body, data)
    assert (await trackly.db[c.SENDING_LISTS].find_one({"_id": ids["list"]}))["driver"] == "echo"  # unchanged
    out = await call(admin, "PATCH", path, {"driver": "echo2"})
    assert out["driver"] == "echo2" and out["driver_settings"] == {"batch_size": 5}
    moved = await test_send()
    assert moved["provider"] == "echo2" and moved["provider_message_id"].startswith("other-")
    assert OtherEchoDriver.sent == ["+12125550100"]
    assert await trackly.db[c.SENT].count_documents({"provider": "echo"}) == 1  # the first send keeps its provider
    out = await call(admin, "PATCH", path, {"driver": "echo", "driver_settings": {}})
    assert out["driver"] == "echo" and out["driver_settings"] == {}


async def test_patch_creative_in_use_by_running_execution(admin: TestClient[Any, Any], trackly: Trackly) -> None:
    """A creative's variants change only while no running execution uses it; bad templates are 422s."""
    ids = await seed(admin)
    camp = await create_campaign(admin, ids)
    out = await call(
        admin,
        "PATCH",
        f"/creatives/{ids['creative']}",
        {"variants": [{"key": "a", "body": "Hello {first_name|you}"}], "name": "c2"},
    )
    assert out["variants"][0]["body"] == "Hello {first_name|you}" and out["name"] == "c2"
    r = await admin.patch(
        f"/api/v1/creatives/{ids['creative']}", headers=H, json={"variants": [{"key": "a", "body": "{oops"}]}
    )
    assert r.status == 422 and (await r.json())["details"][0]["loc"] == "body.variants.0.body"
    await trackly.db[c.EXECUTIONS].insert_one({"_id": 5, "campaign_id": camp["id"], "status": "evaluating"})
    r = await admin.patch(
        f"/api/v1/creatives/{ids['creative']}", headers=H, json={"variants": [{"key": "a", "body": "x"}]}
    )
    data = await r.json()
    assert r.status == 409 and "execution 5 of campaign" in data["message"]
    r = await admin.patch(f"/api/v1/audiences/{ids['audience']}", headers=H, json={"filter": {}})
    assert r.status == 409 and "execution 5" in (await r.json())["message"]
    assert (await call(admin, "PATCH", f"/audiences/{ids['audience']}", {"name": "everyone"}))["name"] == "everyone"
    lst = await call(
        admin,
        "PATCH",
        f"/sending-lists/{ids['list']}",
        {"from_number": "ACME", "blocked_words": ["x"], "price_per_segment": 0.02},
    )
    assert lst["from_number"] == "ACME" and lst["price_per_segment"] == 0.02
    r = await admin.patch(f"/api/v1/sending-lists/{ids['list']}", headers=H, json={"from_number": "+1"})
    assert r.status == 422
    r = await admin.patch(f"/api/v1/sending-lists/{ids['list']}", headers=H, json={"driver": "other"})
    assert r.status == 422 and (await r.json())["details"][0]["loc"] == "body.driver"


async def test_delete_archives(admin: TestClient[Any, Any], trackly: Trackly) -> None:
    """DELETE archives: hidden from lists unless ?archived=true, not usable by a campaign, an archived campaign
    cannot be triggered or edited; something still used by a live campaign is not archived (409 naming it)."""
    ids = await seed(admin)
    camp = await create_campaign(admin, ids, name="Spring")
    r = await admin.delete(f"/api/v1/creatives/{ids['creative']}", headers=H)
    data = await r.json()
    assert r.status == 409 and f"'Spring' (campaign {camp['id']})" in data["message"]
    out = await call(admin, "DELETE", f"/campaigns/{camp['id']}")
    assert out["archived"] is True and out["status"] == "done"
    assert (await call(admin, "GET", "/campaigns"))["items"] == []
    assert [x["id"] for x in (await call(admin, "GET", "/campaigns?archived=true"))["items"]] == [camp["id"]]
    r = await admin.post(f"/api/v1/campaigns/{camp['id']}/trigger", headers=H)
    assert r.status == 409 and "archived" in (await r.json())["message"]
    r = await admin.patch(f"/api/v1/campaigns/{camp['id']}", headers=H, json={"name": "x"})
    assert r.status == 409
    for path in (f"/creatives/{ids['creative']}", f"/audiences/{ids['audience']}", f"/sending-lists/{ids['list']}"):
        assert (await call(admin, "DELETE", path))["archived"] is True
        assert (await call(admin, "GET", path))["archived"] is True
    assert (await call(admin, "GET", "/creatives"))["items"] == []
    r = await admin.post(
        "/api/v1/campaigns",
        headers=H,
        json=campaign_body(ids),
    )
    data = await r.json()
    assert r.status == 422 and len(data["details"]) == 3 and all("archived" in d["msg"] for d in data["details"])
    assert await trackly.db[c.CAMPAIGNS].count_documents({}) == 1  # still there, with its history


async def test_end_date_stops_a_recurring_campaign(admin: TestClient[Any, Any], trackly: Trackly) -> None:
    """A recurring campaign runs its occurrences up to end_at and is then done; one past it never runs."""
    from trackly_exec.campaigns.scheduler import Scheduler

    from .campaign_fixtures import INSIDE

    ids = await seed(admin)
    await post(
        admin,
        f"/sending-lists/{ids['list']}/contacts",
        {"contacts": [{"phone": "+12125550100", "timezone": INSIDE}]},
        200,
    )
    r = await admin.post(
        "/api/v1/campaigns",
        headers=H,
        json=campaign_body(ids, schedule={"cron": "0 9 * * *"}, end_at=(utcnow() - dt.timedelta(days=1)).isoformat()),
    )
    assert r.status == 422 and (await r.json())["details"][0]["loc"] == "body.end_at"
    end = utcnow() + dt.timedelta(days=30)
    camp = await create_campaign(admin, ids, schedule={"cron": "*/5 * * * *"}, end_at=end.isoformat())
    assert dt.datetime.fromisoformat(camp["end_at"]) == end.replace(microsecond=end.microsecond // 1000 * 1000)
    now = utcnow()
    # Due now, and the next occurrence would be after the end: this is its last run.
    await trackly.db[c.CAMPAIGNS].update_one(
        {"_id": camp["id"]},
        {"$set": {"next_run_at": now - dt.timedelta(seconds=5), "end_at": now + dt.timedelta(seconds=1)}},
    )
    sched = Scheduler(trackly)
    assert (await sched.run_until_idle())["started"] == 1
    doc = await trackly.db[c.CAMPAIGNS].find_one({"_id": camp["id"]})
    assert doc["status"] == "done"
    # An occurrence already past the end never runs.
    c2 = await create_campaign(admin, ids, schedule={"cron": "*/5 * * * *"}, end_at=end.isoformat())
    await trackly.db[c.CAMPAIGNS].update_one(
        {"_id": c2["id"]},
        {"$set": {"next_run_at": now - dt.timedelta(minutes=1), "end_at": now - dt.timedelta(minutes=2)}},
    )
    assert (await sched.run_until_idle())["started"] == 0
    assert (await trackly.db[c.CAMPAIGNS].find_one({"_id": c2["id"]}))["status"] == "done"
    assert await trackly.db[c.EXECUTIONS].count_documents({"campaign_id": c2["id"]}) == 0


async def test_erase_contact_redacts_every_record(admin: TestClient[Any, Any], trackly: Trackly) -> None:
    """Erasing a contact anonymises it, dead-letters its queued messages (redacted), and redacts its number from
    sent and failed records, inbound messages, webhook outbox payloads, alert events and its tracked links."""
    ids = await seed(admin)
    await post(
        admin,
        f"/sending-lists/{ids['list']}/contacts",
        {
            "contacts": [
                {"phone": "+12125550100", "first_name": "Ann", "attributes": {"tier": "gold"}},
                {"phone": "+12125550101", "first_name": "Bob"},
            ]
        },
        200,
    )
    ann = await trackly.db[c.CONTACTS].find_one({"phone": "+12125550100"})
    bob = await trackly.db[c.CONTACTS].find_one({"phone": "+12125550101"})
    base = {
        "account_id": ids["account"],
        "sending_list_id": ids["list"],
        "from_number": "+15550001111",
        "length": 6,
        "sendtime": utcnow(),
    }
    await trackly.db[c.QUEUED].insert_many(
        [
            {
                "_id": "q1",
                **base,
                "contact_id": ann["_id"],
                "to_number": ann["phone"],
                "body": "Hi Ann",
                "claimed_by": None,
            },
            {
                "_id": "q2",
                **base,
                "contact_id": ann["_id"],
                "to_number": ann["phone"],
                "body": "Hi Ann",
                "claimed_by": "x:1",
            },
            {
                "_id": "q3",
                **base,
                "contact_id": bob["_id"],
                "to_number": bob["phone"],
                "body": "Hi Bob",
                "claimed_by": None,
            },
        ]
    )
    await trackly.db[c.SENT].insert_many(
        [
            {"_id": "s1", **base, "contact_id": ann["_id"], "to_number": ann["phone"], "body": "Hi Ann"},
            {"_id": "s2", **base, "contact_id": None, "to_number": ann["phone"], "body": "test", "send_type": "test"},
            {"_id": "s3", **base, "contact_id": bob["_id"], "to_number": bob["phone"], "body": "Hi Bob"},
        ]
    )
    await trackly.db[c.FAILED].insert_one(
        {
            "_id": "f1",
            **base,
            "contact_id": ann["_id"],
            "to_number": ann["phone"],
            "body": "Hi Ann",
            "reason": "PROVIDER_ERROR",
        }
    )
    await trackly.db[c.INBOUND].insert_one({"_id": "i1", "from_number": ann["phone"], "text": "STOP, Ann here"})
    await trackly.db[c.CLICKS].insert_one(
        {"_id": "k1", "contact_id": ann["_id"], "user_agent": "Ann's phone", "ip_hash": "abc"}
    )
    await trackly.db[c.OUTBOX].insert_one({"_id": "o1", "payload": {"toNumber": ann["phone"], "id": "s1"}})
    await trackly.db[c.EVENTS].insert_many(
        [
            {
                "_id": "e1",
                "message": f"PROVIDER_ERROR: message f1 to {ann['phone']}",
                "data": {"phone": ann["phone"], "reason": "PROVIDER_ERROR"},
            },
            # as events were kept before their data was masked: the number in the data alone (the message masked)
            {"_id": "e2", "message": "+1212•••0100 sent STOP", "data": {"phone": ann["phone"], "keyword": "STOP"}},
        ]
    )
    await trackly.db[c.RESERVATIONS].insert_one(
        {
            "_id": f"{ids['list']}:{ann['phone']}",
            "sending_list_id": ids["list"],
            "to_number": ann["phone"],
            "contact_id": ann["_id"],
            "message_id": "s1",
            "state": "sent",
        }
    )
    await trackly.db[c.SHORT_LINKS].insert_many(
        [
            {
                "_id": "annlink00001",
                "message_id": "s1",
                "contact_id": ann["_id"],
                "account_id": ids["account"],
                "destination": "https://shop.example.com/deals?p=%2B12125550100&n=Ann",
                "clicks": 0,
                "human_clicks": 0,
            },
            {
                "_id": "boblink00001",
                "message_id": "s3",
                "contact_id": bob["_id"],
                "account_id": ids["account"],
                "destination": "https://shop.example.com/deals?n=Bob",
                "clicks": 0,
                "human_clicks": 0,
            },
        ]
    )
    out = await call(admin, "POST", f"/contacts/{ann['_id']}/erase")
    assert out == {
        "contact_id": ann["_id"],
        "queued_dead_lettered": 1,
        "in_flight": 1,
        "sent_redacted": 2,
        "failed_redacted": 1,
        "inbound_redacted": 1,
        "outbox_redacted": 1,
        "events_redacted": 2,
        "links_redacted": 1,
    }
    # the erased contact's link keeps only its destination's origin; a later click is counted without a trace
    link = await trackly.db[c.SHORT_LINKS].find_one({"_id": "annlink00001"})
    assert link["destination"] == "https://shop.example.com" and link["erased"] is True
    [click] = await record_clicks(trackly, [(link, Visit("Ann's new phone", "10.1.2.3"))])
    assert click["user_agent"] == "" and click["ip_hash"] is None
    doc = await trackly.db[c.CONTACTS].find_one({"_id": ann["_id"]})
    assert doc["phone"] == f"erased:{ann['_id']}" and doc["first_name"] is None and doc["attributes"] == {}
    assert doc["blocked"] is True and doc["subscribed"] is False
    assert await trackly.db[c.QUEUED].find_one({"_id": "q1"}) is None
    f = await trackly.db[c.FAILED].find_one({"_id": "q1"})
    assert f["reason"] == "CONTACT_BLOCKED" and f["to_number"] == "[erased]" and f["body"] == "[erased]"
    everything = []
    for coll in (c.SENT, c.FAILED, c.INBOUND, c.OUTBOX, c.EVENTS, c.CONTACTS, c.CLICKS, c.RESERVATIONS, c.SHORT_LINKS):
        everything += [str(d) async for d in trackly.db[coll].find({})]
    text = "\n".join(everything)
    assert "+12125550100" not in text and "Ann" not in text
    assert "+12125550101" in text and "Hi Bob" in text  # Bob is untouched
    assert await trackly.db[c.QUEUED].find_one({"_id": "q3"}) is not None
    r = await admin.post("/api/v1/contacts/999/erase", headers=H)
    assert r.status == 404


async def test_new_routes_never_500(admin: TestClient[Any, Any], trackly: Trackly) -> None:
    """Random and hostile bodies and queries on the edit, archive, preview, estimate, test-send and erase routes
    get 4xx answers (or success), never a 500; every documented example of the new bodies is valid."""
    import json
    import random

    from trackly_exec.api import models as m
    from trackly_exec.api import models_campaigns as mc

    for model in (
        m.SendingListPatch,
        m.AudiencePatch,
        m.CreativePatch,
        mc.CampaignPatch,
        mc.PreviewIn,
        mc.CampaignPreviewIn,
        mc.TestSendIn,
        mc.CampaignTestSendIn,
    ):
        for example in model.model_json_schema()["examples"]:
            model.model_validate(example)
    ids = await seed(admin)
    await post(admin, f"/sending-lists/{ids['list']}/contacts", {"contacts": [{"phone": "+12125550100"}]}, 200)
    camp = await create_campaign(admin, ids)
    rnd = random.Random(11)
    values: list[Any] = [
        None,
        True,
        -1,
        0,
        2**70,
        1.5e308,
        "",
        "x" * 300,
        "\x00",
        [],
        {},
        [1, "a"],
        {"$gt": 1},
        "\ud800",
        ids["creative"],
        ids["audience"],
        [ids["audience"]],
        "+12125550100",
        ["+1"],
        ["+12125550100"],
        {"cron": "* * * * *"},
        "2026-01-01T00:00:00",
        [{"key": "a", "body": "{x"}],
    ]
    fields = [
        "name",
        "description",
        "audience_ids",
        "creative_id",
        "schedule",
        "end_at",
        "filter",
        "contact_ids",
        "variants",
        "selection",
        "from_number",
        "numbers",
        "variant",
        "contact_id",
        "sample",
        "audience_id",
        "sending_list_id",
        "override_opt_out",
        "track_links",
        "quiet_hours",
        "blocked_words",
        "scan_limit",
    ]
    routes = [
        ("PATCH", f"/campaigns/{camp['id']}"),
        ("PATCH", f"/creatives/{ids['creative']}"),
        ("PATCH", f"/audiences/{ids['audience']}"),
        ("PATCH", f"/sending-lists/{ids['list']}"),
        ("POST", f"/creatives/{ids['creative']}/preview"),
        ("POST", f"/campaigns/{camp['id']}/preview"),
        ("POST", f"/sending-lists/{ids['list']}/test-send"),
        ("POST", f"/campaigns/{camp['id']}/test-send"),
    ]
    bodies: list[bytes] = [b"", b"[]", b'"s"', b"{", b"\xff"]
    bodies += [
        json.dumps({rnd.choice(fields): rnd.choice(values) for _ in range(rnd.randint(0, 5))}).encode()
        for _ in range(200)
    ]
    for i, body in enumerate(bodies):
        method, path = routes[i % len(routes)]
        r = await admin.request(method, f"/api/v1{path}", headers=H, data=body)
        assert r.status < 500, (method, path, body[:200], await r.text())
    for method, path in (
        ("POST", f"/campaigns/{camp['id']}/estimate"),
        ("POST", "/campaigns/99/estimate"),
        ("POST", "/contacts/99/erase"),
        ("DELETE", "/campaigns/99"),
        ("DELETE", f"/audiences/{2**64}"),
        ("POST", f"/campaigns/{camp['id']}/trigger?wait=maybe"),
    ):
        r = await admin.request(method, f"/api/v1{path}", headers=H)
        assert r.status < 500, (method, path, await r.text())
    for query in ("name=%00", "archived=maybe", "status=", "name=" + "x" * 300, "name=.*", "archived=1"):
        for path in ("/campaigns", "/creatives", "/audiences", "/sending-lists"):
            r = await admin.get(f"/api/v1{path}?{query}", headers=H)
            assert r.status < 500, (path, query, await r.text())


async def test_patch_schemas_say_which_fields_take_null(admin: TestClient[Any, Any], trackly: Trackly) -> None:
    """Each PATCH body's published schema allows null exactly where the route takes it (to clear a value): every
    other field set to null is a 422 "cannot be null", and a field the schema lets be null is never refused so."""
    ids = await seed(admin)
    camp = await create_campaign(admin, ids)
    doc = await call(admin, "GET", "/openapi.json")
    targets = {
        "/sending-lists/{id}": ids["list"],
        "/audiences/{id}": ids["audience"],
        "/creatives/{id}": ids["creative"],
        "/campaigns/{id}": camp["id"],
    }
    checked = 0
    for route, rid in targets.items():
        ref = doc["paths"]["/api/v1" + route]["patch"]["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        schema = doc["components"]["schemas"][ref.rsplit("/", 1)[1]]
        for name, prop in schema["properties"].items():
            takes_null = {"type": "null"} in prop.get("anyOf", []) or prop.get("type") == "null"
            r = await admin.patch(f"/api/v1{route.replace('{id}', str(rid))}", json={name: None}, headers=H)
            answer = await r.json()
            refused = r.status == 422 and any(d["msg"] == "cannot be null" for d in answer.get("details", []))
            assert refused is not takes_null, (route, name, r.status, answer)
            checked += 1
    assert checked >= 30


async def test_account_edit_and_balance(admin: TestClient[Any, Any], trackly: Trackly) -> None:
    """PATCH /accounts/{id} changes the name, the customer webhook (checked like at creation; null removes it) and
    the bot filter, never the balance; POST /accounts/{id}/balance credits or debits it atomically, refusing a debit
    past zero (409); the secret is never answered; bad bodies are 422 naming the field."""
    r = await admin.post("/api/v1/accounts", headers=H, json={"name": "A", "balance": 1.5, "filter_bots": True})
    assert r.status == 201
    acc = await r.json()
    assert acc["filter_bots"] is True
    url = f"/api/v1/accounts/{acc['id']}"
    body = {
        "name": "B",
        "webhook_url": "https://hooks.example.com/s",
        "webhook_secret": "s3cret-value",
        "filter_bots": False,
    }
    r = await admin.patch(url, headers=H, json=body)
    out = await r.json()
    assert r.status == 200, out
    assert (out["name"], out["webhook_url"], out["webhook_secret"], out["filter_bots"]) == (
        "B",
        "https://hooks.example.com/s",
        "**********",
        False,
    )
    stored = await trackly.db[c.ACCOUNTS].find_one({"_id": acc["id"]})
    assert stored["webhook_secret"] == "s3cret-value" and stored["balance"] == 1.5
    for bad, loc in (
        ({"balance": 5}, "body.balance"),
        ({"webhook_url": "http://169.254.169.254/x"}, "body.webhook_url"),
        ({"name": None}, "body.name"),
        ({"filter_bots": "maybe"}, "body.filter_bots"),
    ):
        r = await admin.patch(url, headers=H, json=bad)
        assert r.status == 422 and (await r.json())["details"][0]["loc"] == loc, bad
    r = await admin.patch(url, headers=H, json={"webhook_url": None, "webhook_secret": None})
    assert r.status == 200 and (await r.json())["webhook_url"] is None
    r = await admin.post(url + "/balance", headers=H, json={"amount": 10, "note": "top-up"})
    assert r.status == 200 and (await r.json())["balance"] == 11.5
    r = await admin.post(url + "/balance", headers=H, json={"amount": -20})
    assert r.status == 409 and (await trackly.db[c.ACCOUNTS].find_one({"_id": acc["id"]}))["balance"] == 11.5
    r = await admin.post(url + "/balance", headers=H, json={"amount": -11.5})
    assert r.status == 200 and (await r.json())["balance"] == 0
    for bad in ({}, {"amount": "x"}, {"amount": 1e12}):
        r = await admin.post(url + "/balance", headers=H, json=bad)
        assert r.status == 422 and (await r.json())["details"][0]["loc"] == "body.amount", bad
    assert (await admin.patch("/api/v1/accounts/999", headers=H, json={"name": "x"})).status == 404
    assert (await admin.post("/api/v1/accounts/999/balance", headers=H, json={"amount": 1})).status == 404


@pytest.mark.parametrize(
    "overrides,ok",
    [
        ({"intermediate_reports": True}, True),
        ({"intermediate_reports": "yes"}, False),
        ({"intermediate_reports": 1}, False),
        ({"intermediate_reports": "false"}, False),
        ({"batch_size": 50}, True),
        ({"batch_size": "5"}, False),
        ({"batch_size": True}, False),
    ],
)
def test_list_driver_settings_are_checked_strictly(overrides: dict[str, Any], ok: bool) -> None:
    """A sending list's driver settings are of their setting's type as given (a boolean is true or false, a number
    is no string): the admin API refuses anything else naming the key, instead of storing it and guessing."""
    from trackly_drivers.infobip import InfobipDriver

    from trackly_exec.drivers.pool import ListOverrideError, strict_overrides

    if ok:
        strict_overrides(InfobipDriver, overrides)
        return
    with pytest.raises(ListOverrideError) as e:
        strict_overrides(InfobipDriver, overrides)
    assert e.value.key == next(iter(overrides))
