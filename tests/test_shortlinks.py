"""Tracked links (campaigns/shortlinks.py): every http(s) URL of a body becomes ``{short_base}/{code}``."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from trackly_exec.campaigns.compose import phone_in_link
from trackly_exec.campaigns.shortlinks import find_urls, track

from .api_support import H, campaign_body, post, seed


def test_links_are_tracked_with_random_codes() -> None:
    """Each URL becomes short_base/code with a fresh 12-char code; trailing punctuation stays outside."""
    body = "Sale! https://shop.example/x?a=1&b=2. And http://e.org/p) and https://t.example/l/keep"
    out, links = track(body, "https://t.example/l")
    assert [d for _, d in links] == ["https://shop.example/x?a=1&b=2", "http://e.org/p"]
    codes = [code for code, _ in links]
    assert all(len(code) == 12 for code in codes) and len(set(codes)) == 2
    assert (
        out == f"Sale! https://t.example/l/{codes[0]}. And https://t.example/l/{codes[1]}) and https://t.example/l/keep"
    )
    assert find_urls(out)[0] == f"https://t.example/l/{codes[0]}"
    assert len({track(body, "https://t.example/l")[1][0][0] for _ in range(200)}) == 200


def test_brackets_of_the_url_stay_in_it() -> None:
    """A closing bracket that closes one of the URL's own is part of it (Wikipedia-style paths); one that closes
    the sentence's bracket, or punctuation after it, stays outside."""
    body = (
        "See http://example.org/a(b) and (https://en.wikipedia.org/wiki/Mercury_(planet)). Also (http://x.example/p)"
        " and https://y.example/q[1]."
    )
    out, links = track(body, "https://t.example/l")
    assert [d for _, d in links] == [
        "http://example.org/a(b)",
        "https://en.wikipedia.org/wiki/Mercury_(planet)",
        "http://x.example/p",
        "https://y.example/q[1]",
    ]
    c1, c2, c3, c4 = (code for code, _ in links)
    assert out == (
        f"See https://t.example/l/{c1} and (https://t.example/l/{c2}). Also (https://t.example/l/{c3})"
        f" and https://t.example/l/{c4}."
    )
    assert find_urls(body) == [d for _, d in links]


def test_a_capitalised_url_alone_is_tracked() -> None:
    """``Https://`` (a phone capitalises the start of a sentence) is a URL like any other, alone in a body too."""
    body, links = track("Visit Https://Example.com/a today", "https://t.example/l")
    assert [dest for _, dest in links] == ["Https://Example.com/a"] and "Example.com" not in body


async def test_phone_inside_a_tracked_link_is_refused(admin: Any, trackly: Any) -> None:
    """A tracked link's destination is served by a public redirect (GET /l/<code>): a variant that puts {phone}
    inside a link cannot go with link tracking: refused at campaign create and edit, at test send, and (a campaign
    written another way) at the trigger; without tracking it goes (the recipient alone sees its own number)."""
    assert phone_in_link("Hi https://example.com/?p={phone}&n={first_name}")
    assert not phone_in_link("Hi {phone}, see https://example.com/?n={first_name}")
    ids = await seed(admin)
    creative = await post(
        admin,
        "/creatives",
        {
            "account_id": ids["account"],
            "name": "p",
            "variants": [{"key": "a", "body": "Hi https://x.example/?p={phone}"}],
        },
    )
    bad = await post(admin, "/campaigns", campaign_body(ids, creative_id=creative["id"], track_links=True), 422)
    assert "{phone} inside a link" in json.dumps(bad) and "body.track_links" in json.dumps(bad)
    camp = await post(admin, "/campaigns", campaign_body(ids, creative_id=creative["id"]))  # untracked: fine
    r = await admin.patch(f"/api/v1/campaigns/{camp['id']}", json={"track_links": True}, headers=H)
    assert r.status == 422 and "{phone} inside a link" in await r.text()
    sent = await post(
        admin,
        f"/sending-lists/{ids['list']}/test-send",
        {"creative_id": creative["id"], "numbers": ["+12125550178"], "track_links": True},
        422,
    )
    assert "{phone} inside a link" in json.dumps(sent)
    # written around the API: the trigger refuses it with the same reason, and no short link is made
    await trackly.db["campaigns"].update_one({"_id": camp["id"]}, {"$set": {"track_links": True}})
    r = await admin.post(f"/api/v1/campaigns/{camp['id']}/trigger", headers=H)
    execution_id = (await r.json())["execution_id"]
    for _ in range(200):
        ex = await trackly.db["executions"].find_one({"_id": execution_id})
        if ex["status"] == "failed":
            break
        await asyncio.sleep(0.02)
    assert ex["status"] == "failed" and "{phone} inside a link" in ex["reason"], ex
    assert await trackly.db["message_short_links"].count_documents({}) == 0
