"""Test sends: through the real executor path, recorded as sendType "test", compliance checks unless overridden."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient

from trackly_exec.app import Trackly
from trackly_exec.executor.coordinator import Coordinator
from trackly_exec.store import constants as c

from .api_support import H, create_campaign, post, seed
from .campaign_fixtures import INSIDE, zone_where

OUTSIDE = zone_where(False)


async def test_test_send_goes_through_the_executor(admin: TestClient[Any, Any], trackly: Trackly) -> None:
    """A test send queues under a test execution, the executor sends it (MessageSent with send_type "test"), and
    the execution completes; an opted-out contact's number is skipped, one outside quiet hours is held."""
    ids = await seed(admin)
    await post(
        admin,
        f"/sending-lists/{ids['list']}/contacts",
        {
            "contacts": [
                {"phone": "+12125550100", "first_name": "Ann", "timezone": INSIDE},
                {"phone": "+12125550101", "first_name": "Bob", "timezone": INSIDE, "subscribed": False},
                {"phone": "+12125550102", "first_name": "Cy", "timezone": OUTSIDE},
            ]
        },
        200,
    )
    out = await post(
        admin,
        f"/sending-lists/{ids['list']}/test-send",
        {"creative_id": ids["creative"], "numbers": ["(212) 555-0100", "+12125550101", "+12125550102", "+12125550199"]},
        202,
    )
    rows = {r["to_number"]: r for r in out["messages"]}
    assert rows["+12125550100"]["body"] == "Hi Ann" and rows["+12125550100"]["held_until"] is None
    assert rows["+12125550101"]["skipped"] == "unsubscribed" and rows["+12125550101"]["message_id"] is None
    assert rows["+12125550102"]["held_until"] is not None  # outside its window: held
    assert rows["+12125550199"]["body"] == "Hi there" and rows["+12125550199"]["contact_id"] is None
    ex = await trackly.db[c.EXECUTIONS].find_one({"_id": out["execution_id"]})
    assert ex["kind"] == "test" and ex["campaign_id"] == 0 and ex["status"] == "queued" and ex["overrides"] == []
    await Coordinator(trackly).run_until_idle()
    sent = {d["to_number"]: d async for d in trackly.db[c.SENT].find({"execution_id": out["execution_id"]})}
    stranger_inside = rows["+12125550199"]["held_until"] is None  # no contact: New York's window decides
    assert set(sent) == {"+12125550100"} | ({"+12125550199"} if stranger_inside else set())
    assert all(d["send_type"] == "test" and d["overrides"] is None and d["campaign_id"] is None for d in sent.values())
    held = await trackly.db[c.QUEUED].find_one({"to_number": "+12125550102"})
    assert held is not None and held["not_before"] is not None
    r = await admin.get(f"/api/v1/executions/{out['execution_id']}", headers=H)
    assert (await r.json())["kind"] == "test"


async def test_test_send_overrides_are_explicit_and_recorded(admin: TestClient[Any, Any], trackly: Trackly) -> None:
    """With override_opt_out and override_quiet_hours the executor sends to an opted-out number outside its
    window now, and every record says which checks were lifted; without them the executor still refuses a
    contact who opted out after queuing."""
    ids = await seed(admin)
    await post(
        admin,
        f"/sending-lists/{ids['list']}/contacts",
        {
            "contacts": [
                {"phone": "+12125550101", "first_name": "Bob", "timezone": OUTSIDE, "subscribed": False},
                {"phone": "+12125550103", "first_name": "Di", "timezone": INSIDE},
            ]
        },
        200,
    )
    camp = await create_campaign(admin, ids)
    out = await post(
        admin,
        f"/campaigns/{camp['id']}/test-send",
        {"numbers": ["+12125550101"], "override_opt_out": True, "override_quiet_hours": True},
        202,
    )
    assert out["overrides"] == ["opt_out", "quiet_hours"] and out["messages"][0]["held_until"] is None
    late = await post(admin, f"/campaigns/{camp['id']}/test-send", {"numbers": ["+12125550103"]}, 202)
    await trackly.db[c.CONTACTS].update_one(
        {"phone": "+12125550103"}, {"$set": {"subscribed": False}}
    )  # STOP meanwhile
    await Coordinator(trackly).run_until_idle()
    sent = await trackly.db[c.SENT].find_one({"execution_id": out["execution_id"]})
    assert sent["to_number"] == "+12125550101" and sent["overrides"] == ["opt_out", "quiet_hours"]
    assert sent["send_type"] == "test" and sent["body"] == "Hi Bob"
    failed = await trackly.db[c.FAILED].find_one({"execution_id": late["execution_id"]})
    assert failed["reason"] == "CONTACT_BLOCKED" and failed["send_type"] == "test"
    ex = await trackly.db[c.EXECUTIONS].find_one({"_id": out["execution_id"]})
    assert ex["test_of_campaign"] == camp["id"] and ex["overrides"] == ["opt_out", "quiet_hours"]
    # campaign stats do not count test sends
    r = await admin.get(f"/api/v1/campaigns/{camp['id']}/stats", headers=H)
    stats = await r.json()
    assert stats["sent"] == 0 and stats["executions"] == 0


async def test_test_send_errors(admin: TestClient[Any, Any], trackly: Trackly) -> None:
    """Bad numbers, an unknown variant or creative, a placeholder with no value and no default: 422s."""
    ids = await seed(admin)
    path = f"/api/v1/sending-lists/{ids['list']}/test-send"
    cre = await post(
        admin,
        "/creatives",
        {"account_id": ids["account"], "name": "x", "variants": [{"key": "a", "body": "Code {code}"}]},
    )
    for body, loc in (
        ({"creative_id": ids["creative"], "numbers": ["nope"]}, "body.numbers.0"),
        ({"creative_id": ids["creative"], "numbers": ["+12125550100"], "variant": "z"}, "body.variant"),
        ({"creative_id": 999, "numbers": ["+12125550100"]}, "body.creative_id"),
        ({"creative_id": cre["id"], "numbers": ["+12125550100"]}, "body.contact_id"),
        ({"creative_id": ids["creative"], "numbers": [f"+1212555{i:04d}" for i in range(11)]}, "body.numbers"),
        ({"creative_id": ids["creative"], "numbers": []}, "body.numbers"),
    ):
        r = await admin.post(path, headers=H, json=body)
        data = await r.json()
        assert r.status == 422 and data["details"][0]["loc"] == loc, (body, data)
    assert await trackly.db[c.QUEUED].count_documents({}) == 0
