"""Names, list filters and validation at creation (issue 11, "Before sending")."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient

from trackly_exec.app import Trackly
from trackly_exec.store import constants as c

from .api_support import H, campaign_body, post, seed


async def get(cl: TestClient[Any, Any], path: str, status: int = 200) -> Any:
    r = await cl.get(f"/api/v1{path}", headers=H)
    data = await r.json()
    assert r.status == status, data
    return data


async def test_campaign_names_and_defaults(admin: TestClient[Any, Any], trackly: Trackly) -> None:
    """A campaign carries a name and description; one created without a name, or stored before names, shows
    "campaign <id>" (in the API and in stats)."""
    ids = await seed(admin)
    base = campaign_body(ids)
    named = await post(admin, "/campaigns", {**base, "name": "Spring sale", "description": "20% off"})
    assert named["name"] == "Spring sale" and named["description"] == "20% off"
    plain = await post(admin, "/campaigns", base)
    assert plain["name"] == f"campaign {plain['id']}"
    await trackly.db[c.CAMPAIGNS].update_one({"_id": named["id"]}, {"$unset": {"name": ""}})  # an old record
    assert (await get(admin, f"/campaigns/{named['id']}"))["name"] == f"campaign {named['id']}"
    await trackly.db[c.CREATIVES].update_one({"_id": ids["creative"]}, {"$unset": {"name": ""}})
    assert (await get(admin, f"/creatives/{ids['creative']}"))["name"] == f"creative {ids['creative']}"
    stats = await get(admin, f"/campaigns/{plain['id']}/stats")
    assert stats["name"] == f"campaign {plain['id']}"
    lst = await get(admin, f"/sending-lists/{ids['list']}")
    assert lst["name"] == "L" and lst["archived"] is False and lst["description"] is None


async def test_list_filters_name_archived_status(admin: TestClient[Any, Any], trackly: Trackly) -> None:
    """Lists filter by name (substring, any case), archived (hidden by default) and a campaign's state."""
    ids = await seed(admin)
    base = campaign_body(ids)
    a = await post(admin, "/campaigns", {**base, "name": "Spring SALE"})
    b = await post(admin, "/campaigns", {**base, "name": "Winter sale"})
    d = await post(admin, "/campaigns", {**base, "name": "Newsletter (a+b)"})
    await post(admin, f"/campaigns/{b['id']}/pause", None, 200)
    await trackly.db[c.CAMPAIGNS].update_one({"_id": d["id"]}, {"$set": {"archived": True}})

    async def names(query: str) -> list[str]:
        return [x["name"] for x in (await get(admin, f"/campaigns?{query}"))["items"]]

    assert await names("") == ["Spring SALE", "Winter sale"]
    assert await names("name=sale") == ["Spring SALE", "Winter sale"]
    assert await names("name=spring") == ["Spring SALE"]
    assert await names("status=paused") == ["Winter sale"]
    assert await names("status=active&name=sale") == ["Spring SALE"]
    assert await names("archived=true") == ["Newsletter (a+b)"]
    assert await names("archived=true&name=(a%2Bb)") == ["Newsletter (a+b)"]  # regex characters are literal
    assert (await get(admin, "/campaigns?status=nope", 422))["details"][0]["loc"] == "query.status"
    assert [x["id"] for x in (await get(admin, "/sending-lists?name=l"))["items"]] == [ids["list"]]
    assert (await get(admin, "/audiences?name=nothing-like-it"))["items"] == []
    assert len((await get(admin, "/creatives?archived=false"))["items"]) == 1
    assert a["id"]


async def test_sending_list_sender_and_driver_validated(admin: TestClient[Any, Any]) -> None:
    """A driver that is not configured and a from_number that is no valid sender are 422s; short codes and
    alphanumeric ids of up to 11 characters are accepted."""
    ids = await seed(admin)
    base = {"account_id": ids["account"], "name": "x", "driver": "echo"}
    for good in ("+15550001111", "+447911123456", "12345", "ACME Shoes", "Shop-2"):
        await post(admin, "/sending-lists", {**base, "from_number": good})
    for bad in ("+1", "+123", "15550001111", "12", "TwelveChars!", "AcmeShoesInc", "123 456", "", "+1555abc1111"):
        r = await admin.post("/api/v1/sending-lists", headers=H, json={**base, "from_number": bad})
        data = await r.json()
        assert r.status == 422 and data["details"][0]["loc"] == "body.from_number", (bad, data)
    r = await admin.post(
        "/api/v1/sending-lists",
        headers=H,
        json={**base, "driver": "nosuch", "account_id": 999, "from_number": "+15550001111"},
    )
    data = await r.json()
    assert r.status == 422
    locs = {d["loc"]: d["msg"] for d in data["details"]}
    assert "not configured" in locs["body.driver"] and "account 999" in locs["body.account_id"]


async def test_installed_but_unconfigured_driver(admin: TestClient[Any, Any], trackly: Trackly) -> None:
    """An installed driver (twilio) without credentials in a [drivers.twilio] section is "not configured" (the
    credential is named, never shown); once the config has them, a list may use it."""
    from trackly_exec.drivers.pool import DriverPool

    ids = await seed(admin)
    body = {"account_id": ids["account"], "name": "x", "driver": "twilio", "from_number": "+15550001111"}
    r = await admin.post("/api/v1/sending-lists", headers=H, json=body)
    data = await r.json()
    assert r.status == 422 and data["details"][0]["loc"] == "body.driver", data
    assert "not configured: its credential auth_token is empty" in data["message"]
    assert "add [drivers.twilio] with it to the config file" in data["message"]
    configured = trackly.settings.model_copy(
        update={"drivers": {"twilio": {"account_sid": "AC1", "auth_token": "tok-very-secret"}}}
    )
    trackly.drivers = DriverPool(configured)
    r = await admin.post("/api/v1/sending-lists", headers=H, json=body)
    assert r.status == 201 and "tok-very-secret" not in await r.text()


async def test_every_reference_error_reported(admin: TestClient[Any, Any], trackly: Trackly) -> None:
    """A campaign naming a missing list, audience and creative gets one 422 listing all three; an audience
    naming missing contacts or contacts of another list says which."""
    ids = await seed(admin)
    r = await admin.post(
        "/api/v1/campaigns",
        headers=H,
        json={
            "account_id": ids["account"],
            "sending_list_id": 404,
            "audience_ids": [ids["audience"], 77, 78],
            "creative_id": 55,
        },
    )
    data = await r.json()
    assert r.status == 422, data
    msgs = {d["loc"]: d["msg"] for d in data["details"]}
    assert msgs["body.sending_list_id"] == "sending list 404 does not exist"
    assert msgs["body.audience_ids"] == "audiences 77, 78 do not exist"
    assert msgs["body.creative_id"] == "creative 55 does not exist"
    assert all(x in data["message"] for x in ("sending list 404", "audiences 77, 78", "creative 55"))
    await post(admin, f"/sending-lists/{ids['list']}/contacts", {"contacts": [{"phone": "+12125550100"}]}, 200)
    other = await post(
        admin,
        "/sending-lists",
        {"account_id": ids["account"], "name": "other", "driver": "echo", "from_number": "+15550001111"},
    )
    await post(admin, f"/sending-lists/{other['id']}/contacts", {"contacts": [{"phone": "+12125550101"}]}, 200)
    mine = (await trackly.db[c.CONTACTS].find_one({"sending_list_id": ids["list"]}))["_id"]
    theirs = (await trackly.db[c.CONTACTS].find_one({"sending_list_id": other["id"]}))["_id"]
    r = await admin.post(
        "/api/v1/audiences",
        headers=H,
        json={"sending_list_id": ids["list"], "name": "vip", "contact_ids": [mine, theirs, 9001, 9002]},
    )
    data = await r.json()
    assert r.status == 422, data
    msgs = [d["msg"] for d in data["details"]]
    assert msgs == ["contacts 9001, 9002 do not exist", f"contact {theirs} is not on sending list {ids['list']}"]
    r = await admin.post(
        "/api/v1/audiences", headers=H, json={"sending_list_id": 999, "name": "x", "filter": {"phone": {"regex": "x"}}}
    )
    data = await r.json()
    assert r.status == 422 and len(data["details"]) == 2
    aud = await post(admin, "/audiences", {"sending_list_id": ids["list"], "name": "vip", "contact_ids": [mine]})
    assert aud["contact_ids"] == [mine]
    r = await admin.post(
        "/api/v1/creatives",
        headers=H,
        json={"account_id": 999, "name": "c", "variants": [{"key": "a", "body": "{oops"}, {"key": "b", "body": "x}"}]},
    )
    data = await r.json()
    assert r.status == 422 and [d["loc"] for d in data["details"]] == [
        "body.variants.0.body",
        "body.variants.1.body",
        "body.account_id",
    ]
