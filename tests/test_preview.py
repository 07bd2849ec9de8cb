"""Preview: a creative rendered for sample contacts, with what would skip or dead-letter messages."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient

from trackly_exec.app import Trackly
from trackly_exec.store import constants as c

from .api_support import H, create_campaign, post


async def _seed(cl: TestClient[Any, Any], trackly: Trackly) -> dict[str, Any]:
    acc = await post(cl, "/accounts", {"name": "Acme", "balance": 100})
    lst = await post(
        cl,
        "/sending-lists",
        {
            "account_id": acc["id"],
            "name": "L",
            "driver": "echo",
            "from_number": "+15550001111",
            "blocked_words": ["casino"],
            "price_per_segment": 0.01,
            "opt_out_footer": "STOP to end",
        },
    )
    rows: list[dict[str, Any]] = [
        {"phone": f"+1212555{n:04d}", "first_name": f"Ann{n}", "attributes": {"city": "Oslo"}} for n in range(100, 110)
    ]
    rows += [{"phone": f"+1212555{n:04d}", "first_name": f"Bo{n}"} for n in range(110, 113)]  # no city
    rows += [
        {"phone": "+12125550200", "first_name": "Zoë", "attributes": {"city": "Köln"}},
        {"phone": "+12125550201", "first_name": "Casino Joe", "attributes": {"city": "Reno"}},
    ]
    await post(cl, f"/sending-lists/{lst['id']}/contacts", {"contacts": rows}, 200)
    aud = await post(cl, "/audiences", {"sending_list_id": lst["id"], "name": "all", "filter": {}})
    cre = await post(
        cl,
        "/creatives",
        {
            "account_id": acc["id"],
            "name": "promo",
            "variants": [
                {"key": "A", "body": "Hi {first_name|there}, deals in {city}: https://shop.example.com/a"},
                {"key": "B", "body": "Hey {frist_name}, win at the CASINO {citty|near you}"},
            ],
        },
    )
    ids = {d["phone"]: d["_id"] async for d in trackly.db[c.CONTACTS].find({})}
    return {"list": lst["id"], "audience": aud["id"], "creative": cre["id"], "account": acc["id"], "ids": ids}


async def test_preview_flags_typos_skips_and_blocked_words(admin: TestClient[Any, Any], trackly: Trackly) -> None:
    """Every variant is rendered exactly (links, footer, encoding, segments, cost); a placeholder that is no
    field of the list's contacts is flagged with the closest name; placeholders without a default say how many
    contacts they would skip; blocked words in a variant or in a personalised body are flagged."""
    s = await _seed(admin, trackly)
    trackly.settings.executor.blocked_words = ["lottery"]
    zoe, joe = s["ids"]["+12125550200"], s["ids"]["+12125550201"]
    out = await post(
        admin,
        f"/creatives/{s['creative']}/preview",
        {"audience_id": s["audience"], "contact_ids": [zoe, joe], "track_links": True},
        200,
    )
    assert out["sending_list_id"] == s["list"] and out["scanned"] == 15 and out["scan_complete"] is True
    a, b = out["variants"]
    pa = {p["name"]: p for p in a["placeholders"]}
    assert pa["first_name"]["known"] and pa["first_name"]["would_skip"] == 0
    assert pa["city"] == {
        "name": "city",
        "default": None,
        "known": True,
        "suggestion": None,
        "missing": 3,
        "would_skip": 3,
    }
    assert a["would_skip"] == 3 and a["blocked_words"] == []
    z = a["samples"][0]
    assert z["contact_id"] == zoe and z["encoding"] == "UCS-2" and z["body"].startswith("Hi Zoë, deals in Köln: ")
    assert z["body"].endswith("\nSTOP to end") and z["links"][0]["destination"] == "https://shop.example.com/a"
    assert z["links"][0]["short_url"] in z["body"] and z["cost"] == round(z["segments"] * 0.01, 6)
    j = a["samples"][1]
    assert j["encoding"] == "GSM-7" and j["blocked_words"] == [{"word": "Casino", "source": "list"}]
    pb = {p["name"]: p for p in b["placeholders"]}
    assert pb["frist_name"]["known"] is False and pb["frist_name"]["suggestion"] == "first_name"
    assert pb["frist_name"]["would_skip"] == 15 and b["would_skip"] == 15
    assert pb["citty"]["known"] is False and pb["citty"]["suggestion"] == "city" and pb["citty"]["would_skip"] == 0
    assert b["blocked_words"] == [{"word": "CASINO", "source": "list"}]
    assert all(x["skipped"] == "missing_placeholder" and x["missing"] == ["frist_name"] for x in b["samples"])
    text = "\n".join(out["warnings"])
    assert "did you mean {first_name}" in text and "did you mean {city}" in text and "'CASINO'" in text
    assert f"contact {joe}" in text and "3 of 15 contacts" in text

    # A global blocked word, the list's default sample, and the campaign form (its list, its link tracking).
    cre = await post(
        admin,
        "/creatives",
        {
            "account_id": s["account"],
            "name": "lotto",
            "variants": [{"key": "A", "body": "Lottery night, {first_name|friend}!"}],
        },
    )
    out = await post(admin, f"/creatives/{cre['id']}/preview", {"sending_list_id": s["list"], "sample": 2}, 200)
    v = out["variants"][0]
    assert v["blocked_words"] == [{"word": "Lottery", "source": "global"}] and len(v["samples"]) == 2
    camp = await create_campaign(admin, s)
    out = await post(admin, f"/campaigns/{camp['id']}/preview", {}, 200)
    assert out["track_links"] is False and len(out["variants"][0]["samples"]) == 3
    assert "https://shop.example.com/a" in out["variants"][0]["samples"][0]["body"]
    assert (
        await trackly.db[c.QUEUED].count_documents({}) == 0 and await trackly.db[c.SHORT_LINKS].count_documents({}) == 0
    )


async def test_preview_bad_references_are_422(admin: TestClient[Any, Any], trackly: Trackly) -> None:
    """Unknown contacts or contacts of another list, an unknown audience, or nothing to render for: 422s."""
    s = await _seed(admin, trackly)
    path = f"/api/v1/creatives/{s['creative']}/preview"
    for body, loc in (
        ({"contact_ids": [999]}, "body.contact_ids"),
        ({"audience_id": 999}, "body.audience_id"),
        ({}, "body"),
        ({"sending_list_id": s["list"], "contact_ids": [1, 998]}, "body.contact_ids"),
        ({"sending_list_id": 999}, "body.sending_list_id"),
    ):
        r = await admin.post(path, headers=H, json=body)
        data = await r.json()
        assert r.status == 422 and data["details"][0]["loc"] == loc, (body, data)
    r = await admin.post("/api/v1/creatives/999/preview", headers=H, json={})
    assert r.status == 404


async def test_preview_texts_the_number_the_run_texts(admin: TestClient[Any, Any], trackly: Trackly) -> None:
    """A contact stored by another tool in a spaced spelling is previewed with the E.164 number the run texts, in
    ``{phone}`` too (so the length, segments and cost match the send); an invalid number says it is skipped."""
    s = await _seed(admin, trackly)
    await trackly.db[c.CONTACTS].insert_many(
        [
            {"_id": 900, "sending_list_id": s["list"], "phone": "+1 212 555 7111", "subscribed": True},
            {"_id": 901, "sending_list_id": s["list"], "phone": "+1 (212) 555-7112", "subscribed": True},
            {"_id": 902, "sending_list_id": s["list"], "phone": "12345", "subscribed": True},
        ]
    )
    cre = await post(
        admin,
        "/creatives",
        {
            "account_id": s["account"],
            "name": "num",
            "variants": [{"key": "A", "body": "Your number {phone} " + "x" * 121}],
        },
    )
    out = await post(
        admin, f"/creatives/{cre['id']}/preview", {"audience_id": s["audience"], "contact_ids": [900, 901, 902]}, 200
    )
    a, b, bad = out["variants"][0]["samples"]
    assert a["phone"] == "+12125557111" and a["body"].startswith("Your number +12125557111 ")
    assert a["length"] == 158 and a["segments"] == 1 and a["cost"] == 0.01
    assert b["phone"] == "+12125557112" and b["segments"] == 1
    assert bad["skipped"] == "invalid_phone" and bad.get("body") is None


async def test_campaign_preview_says_who_would_not_be_texted(admin: TestClient[Any, Any], trackly: Trackly) -> None:
    """A campaign's preview marks, as its run would decide now, the samples it would not text (unsubscribed or
    blocked, in a workflow the campaign excludes, within the list's cooldown, outside their quiet hours) and, for a
    campaign that holds rather than skips, when a sample would go; the others read as before."""
    import datetime as dt

    from .campaign_fixtures import zone_where

    s = await _seed(admin, trackly)
    await trackly.db[c.SENDING_LISTS].update_one({"_id": s["list"]}, {"$set": {"cooldown_minutes": 60}})
    inside, outside = zone_where(True), zone_where(False)
    people = {
        "unsub": {"subscribed": False, "timezone": inside},
        "blocked": {"blocked": True, "timezone": inside},
        "wf": {"in_workflow": True, "timezone": inside},
        "recent": {"last_sent_at": dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5), "timezone": inside},
        "asleep": {"timezone": outside},
        "ok": {"timezone": inside},
    }
    ids = {}
    for n, (name, fields) in enumerate(people.items()):
        ids[name] = 800 + n
        await trackly.db[c.CONTACTS].insert_one(
            {
                "_id": 800 + n,
                "sending_list_id": s["list"],
                "phone": f"+1212555{8000 + n}",
                "first_name": name,
                "attributes": {"city": "Oslo"},
                **fields,
            }
        )
    camp = await create_campaign(admin, s, exclude_in_workflow=True)
    out = await post(admin, f"/campaigns/{camp['id']}/preview", {"contact_ids": list(ids.values())}, 200)
    rows = {r["contact_id"]: r for r in out["variants"][0]["samples"]}
    assert {name: rows[i]["skipped"] for name, i in ids.items()} == {
        "unsub": "unsubscribed",
        "blocked": "unsubscribed",
        "wf": "in_workflow",
        "recent": "frequency_cap",
        "asleep": "quiet_hours",
        "ok": None,
    }
    assert all(rows[i]["body"] for i in ids.values())  # shown all the same, to read
    held = await create_campaign(admin, s, quiet_hours_policy="hold")
    out = await post(admin, f"/campaigns/{held['id']}/preview", {"contact_ids": [ids["asleep"], ids["ok"]]}, 200)
    asleep, ok = out["variants"][0]["samples"]
    assert asleep["skipped"] is None and asleep["held_until"] is not None and ok["held_until"] is None
