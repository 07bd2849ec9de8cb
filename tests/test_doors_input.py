"""Bad input gets a 4xx, never a 500: non-finite numbers, malformed CSV lines, 405 with Allow, a little fuzzing."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from trackly_exec.app import Trackly
from trackly_exec.store import constants as c

from .api_support import run_cli as run
from .api_support import setup_list
from .doors_support import seed_api as seed

H = {"Authorization": "Bearer test-token", "Content-Type": "application/json"}
HUGE = ["1e999999", "-1e999999", "1E400"]


async def _post_raw(cl: TestClient[Any, Any], path: str, raw: str) -> tuple[int, Any]:
    r = await cl.post(f"/api/v1{path}", data=raw.encode(), headers=H)
    return r.status, await r.json()


@pytest.mark.parametrize("huge", HUGE)
async def test_infinite_numbers_are_422(admin: TestClient[Any, Any], trackly: Trackly, huge: str) -> None:
    ids = await seed(admin)
    cases = [
        ("/accounts", '{"name": "a", "balance": %s}', "body.balance"),
        (
            "/sending-lists",
            f'{{"account_id": {ids["account"]}, "name": "l", "driver": "echo", "from_number": "+15550001111", '
            '"price_per_segment": %s}',
            "body.price_per_segment",
        ),
        (
            "/sending-lists",
            f'{{"account_id": {ids["account"]}, "name": "l", "driver": "echo", "from_number": "+15550001111", '
            '"cooldown_minutes": %s}',
            "body.cooldown_minutes",
        ),
        (
            "/creatives",
            f'{{"account_id": {ids["account"]}, "name": "c", "variants": [{{"key": "a", "body": "hi", "weight": '
            "%s}]}",
            "body.variants.0.weight",
        ),
        (
            f"/sending-lists/{ids['list']}/contacts",
            '{"contacts": [{"phone": "+12125550100", "attributes": {"score": %s}}]}',
            "body.contacts.0.attributes.score",
        ),
        (
            f"/sending-lists/{ids['list']}/contacts",
            '{"contacts": [{"phone": "+12125550100", "attributes": {"nested": {"x": [1, %s]}}}]}',
            None,
        ),
    ]
    before = {name: await trackly.db[name].count_documents({}) for name in (c.ACCOUNTS, c.SENDING_LISTS, c.CONTACTS)}
    for path, template, loc in cases:
        status, data = await _post_raw(admin, path, template.replace("%s", huge))
        if path.endswith("/contacts"):  # a bulk import: that row is rejected by its index, the others kept
            assert status == 200 and data["inserted"] == 0 and data["rejected"][0]["index"] == 0, (path, data)
            assert "not finite" in data["rejected"][0]["reason"]
            if loc:
                assert data["rejected"][0]["reason"].startswith(loc.removeprefix("body.contacts.0.") + ":")
            continue
        assert status == 422, (path, data)
        if loc:
            assert data["details"][0]["loc"] == loc
    after = {name: await trackly.db[name].count_documents({}) for name in (c.ACCOUNTS, c.SENDING_LISTS, c.CONTACTS)}
    assert after == before


@pytest.mark.parametrize("when", ["9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+14:00"])
async def test_dates_beyond_the_stores_range_are_422_and_lose_nothing_else(
    admin: TestClient[Any, Any], trackly: Trackly, when: str
) -> None:
    """A valid ISO 8601 time that is no date in UTC (years 1 to 9999) is a 422 naming the field on every route that
    takes a date (it was a 500 from the store's encoder); in a contacts import only that row is refused, the others
    are stored; an audience filter holding one is refused when written, and one stored before fails its campaign's run
    with the reason instead of leaving it evaluating."""
    from .api_support import create_campaign, post
    from .api_support import seed as seed_parts

    ids = await seed_parts(admin)
    out = await post(
        admin,
        f"/sending-lists/{ids['list']}/contacts",
        {"contacts": [{"phone": "+12125550401"}, {"phone": "+12125550402", "last_sent_at": when}]},
        200,
    )
    assert out["inserted"] == 1 and out["rejected"][0]["index"] == 1 and "out of range" in out["rejected"][0]["reason"]
    camp = await create_campaign(admin, ids)
    body = {"account_id": ids["account"], "sending_list_id": ids["list"], "audience_ids": [ids["audience"]]}
    body["creative_id"] = ids["creative"]
    for method, path, data, loc in (
        ("POST", "/campaigns", {**body, "schedule": {"at": when}}, "body.schedule.at"),
        ("POST", "/campaigns", {**body, "end_at": when}, "body.end_at"),
        ("PATCH", f"/campaigns/{camp['id']}", {"end_at": when}, "body.end_at"),
        ("PATCH", f"/campaigns/{camp['id']}", {"schedule": {"at": when}}, "body.schedule.at"),
        ("POST", "/dead-letters/redrive", {"since": when}, "body.since"),
        (
            "POST",
            "/audiences",
            {"sending_list_id": ids["list"], "name": "d", "filter": {"last_sent_at": {"gt": when}}},
            None,
        ),
    ):
        r = await admin.request(method, f"/api/v1{path}", json=data, headers=H)
        got = await r.json()
        assert r.status == 422, (path, data, got)
        if loc:
            assert got["details"][0]["loc"] == loc, got
    for path in ("/dead-letters", "/dead-letters/summary"):
        for key in ("since", "until"):
            r = await admin.get(f"/api/v1{path}", params={key: when}, headers=H)
            assert r.status == 422 and (await r.json())["details"][0]["loc"] == f"query.{key}", (path, key)
    # an audience written before filters were checked this way
    await trackly.db[c.AUDIENCES].update_one(
        {"_id": ids["audience"]}, {"$set": {"filter": {"last_sent_at": {"gt": when}}}}
    )
    r = await admin.post(f"/api/v1/campaigns/{camp['id']}/estimate", json={}, headers=H)
    assert 400 <= r.status < 500, await r.text()
    started = await post(admin, f"/campaigns/{camp['id']}/trigger?wait=true", None, 202)
    ex = await trackly.db[c.EXECUTIONS].find_one({"_id": started["execution_id"]})
    assert ex["status"] == "failed" and "out of range" in ex["reason"], ex


def _refuse(name: str) -> None:
    pytest.fail(f"answered {name}")


async def test_absurd_prices_and_balances_are_422_and_answers_stay_strict_json(
    admin: TestClient[Any, Any], trackly: Trackly
) -> None:
    """A finite but absurd price per segment or opening balance (1.7e308) is a 422 naming the field, on create and on
    edit; and an answer never carries ``Infinity``: a price another tool wrote that overflows an estimate's cost
    is answered as null, in JSON any strict parser reads."""
    from .api_support import create_campaign, post
    from .api_support import seed as seed_parts

    ids = await seed_parts(admin)
    lst = {"account_id": ids["account"], "name": "P", "driver": "echo", "from_number": "+15550001111"}
    for path, body, loc in (
        ("/sending-lists", {**lst, "price_per_segment": 1.7e308}, "body.price_per_segment"),
        ("/sending-lists", {**lst, "price_per_segment": 1001}, "body.price_per_segment"),
        ("/accounts", {"name": "rich", "balance": 1e300}, "body.balance"),
    ):
        status, data = await _post_raw(admin, path, json.dumps(body))
        assert status == 422 and data["details"][0]["loc"] == loc, data
    r = await admin.patch(f"/api/v1/sending-lists/{ids['list']}", json={"price_per_segment": 1e308}, headers=H)
    assert r.status == 422 and (await r.json())["details"][0]["loc"] == "body.price_per_segment"
    await post(admin, f"/sending-lists/{ids['list']}/contacts", {"contacts": [{"phone": "+12125550100"}]}, 200)
    camp = await create_campaign(admin, ids)
    await trackly.db[c.SENDING_LISTS].update_one({"_id": ids["list"]}, {"$set": {"price_per_segment": 1.7e308}})
    await trackly.db[c.CREATIVES].update_one({"_id": ids["creative"]}, {"$set": {"variants.0.body": "x" * 400}})
    for verb in ("estimate", "preview"):
        r = await admin.post(f"/api/v1/campaigns/{camp['id']}/{verb}", json={}, headers=H)
        text = await r.text()
        assert r.status == 200 and "Infinity" not in text, (verb, text[:300])
        json.loads(text, parse_constant=_refuse)


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
async def test_nan_literals_are_refused(admin: TestClient[Any, Any], literal: str) -> None:
    status, _ = await _post_raw(admin, "/accounts", f'{{"name": "a", "balance": {literal}}}')
    assert status in (400, 422)


@pytest.mark.parametrize(
    ("path", "body", "loc"),
    [
        ("/accounts", {"name": "a", "balance": False}, "body.balance"),
        ("/accounts", {"name": "a", "balance": "100"}, "body.balance"),
        ("/accounts", {"name": 7}, "body.name"),
        ("/dead-letters/redrive", {"dry_run": 0}, "body.dry_run"),
        ("/dead-letters/redrive", {"dry_run": "false"}, "body.dry_run"),
        ("/dead-letters/redrive", {"limit": 10.5}, "body.limit"),
        (
            "/sending-lists",
            {"name": "l", "driver": "echo", "from_number": "+15550001111", "active": "yes"},
            "body.active",
        ),
        (
            "/sending-lists",
            {"name": "l", "driver": "echo", "from_number": "+15550001111", "rate_limit_per_minute": "9"},
            "body.rate_limit_per_minute",
        ),
        ("/campaigns", {"name": "c", "audience_ids": [1], "track_links": 1}, "body.track_links"),
    ],
)
async def test_body_types_are_json_types(
    admin: TestClient[Any, Any], trackly: Trackly, path: str, body: dict[str, Any], loc: str
) -> None:
    """A boolean is true or false, a number is a number: 0, "yes", "false" or "100" are a 422 naming the field,
    never read as what they might mean (a redrive with ``"dry_run": 0`` would have re-queued for real)."""
    ids = await seed(admin)
    refs = {"/sending-lists": ("account_id",), "/campaigns": ("account_id", "sending_list_id", "creative_id")}
    named = {"account_id": ids["account"], "sending_list_id": ids["list"], "creative_id": ids["creative"]}
    body = {**{k: named[k] for k in refs.get(path, ())}, **body}
    before = {name: await trackly.db[name].count_documents({}) for name in (c.ACCOUNTS, c.SENDING_LISTS, c.CAMPAIGNS)}
    status, answer = await _post_raw(admin, path, json.dumps(body))
    assert status == 422, answer
    assert loc in [d["loc"] for d in answer["details"]], answer
    assert {name: await trackly.db[name].count_documents({}) for name in before} == before


async def test_json_strings_still_carry_dates_and_choices(admin: TestClient[Any, Any]) -> None:
    """The neighbours: dates (with a time, or a date alone) and enumerations as strings, an integer written 1e1 or
    10.0 (JSON Schema's integer), an integer for a float field, all accepted as JSON gives them."""
    status, answer = await _post_raw(
        admin,
        "/dead-letters/redrive",
        json.dumps({"dry_run": True, "since": "2026-01-01T00:00:00Z", "reasons": ["STALE"], "limit": 1e1}),
    )
    assert status == 200 and answer["dry_run"] is True, answer
    status, answer = await _post_raw(
        admin, "/dead-letters/redrive", json.dumps({"since": "2026-01-01", "dry_run": True})
    )
    assert status == 200, answer  # a date alone: its midnight, as before
    status, answer = await _post_raw(admin, "/dead-letters/redrive", json.dumps({"since": 1767225600}))
    assert status == 422 and answer["details"][0]["loc"] == "body.since", answer  # a number is no date
    status, answer = await _post_raw(admin, "/dead-letters/redrive", json.dumps({"since": "2026-13-45"}))
    assert status == 422 and answer["details"][0]["loc"] == "body.since", answer
    status, answer = await _post_raw(admin, "/accounts", json.dumps({"name": "a", "balance": 100}))
    assert status == 201 and answer["balance"] == 100.0, answer


async def test_405_carries_allow(admin: TestClient[Any, Any]) -> None:
    r = await admin.delete("/api/v1/accounts", headers=H)
    assert r.status == 405 and set(r.headers["Allow"].replace(" ", "").split(",")) >= {"GET", "POST"}
    r = await admin.put("/api/v1/accounts/1", headers=H)
    assert r.status == 405 and "GET" in r.headers["Allow"]


async def test_fuzzed_bodies_never_500(admin: TestClient[Any, Any]) -> None:
    """Random JSON shapes and values on every POST route: 4xx or 2xx, never 5xx."""
    ids = await seed(admin)
    rng = random.Random(20261130)
    atoms: list[Any] = [
        None,
        True,
        False,
        0,
        -1,
        2**63,
        -(2**63) - 1,
        1.5,
        "1e999999",
        "",
        "x" * 5000,
        "\u0000",
        "+12125550100",
        [],
        {},
        ids["account"],
        ids["list"],
        "é",
        1e308,
        -0.0,
    ]

    def value(depth: int = 0) -> Any:
        roll = rng.random()
        if depth > 3 or roll < 0.6:
            return rng.choice(atoms)
        if roll < 0.8:
            return [value(depth + 1) for _ in range(rng.randint(0, 3))]
        return {
            rng.choice(
                [
                    "name",
                    "phone",
                    "attributes",
                    "weight",
                    "balance",
                    "x",
                    "variants",
                    "contacts",
                    "key",
                    "body",
                    "filter",
                    "schedule",
                ]
            ): value(depth + 1)
            for _ in range(rng.randint(0, 4))
        }

    paths = [
        "/accounts",
        "/sending-lists",
        "/audiences",
        "/creatives",
        "/campaigns",
        f"/sending-lists/{ids['list']}/contacts",
    ]
    for _ in range(150):
        path = rng.choice(paths)
        body = (
            value()
            if rng.random() < 0.3
            else {
                k: value()
                for k in rng.sample(
                    [
                        "name",
                        "account_id",
                        "sending_list_id",
                        "driver",
                        "from_number",
                        "balance",
                        "webhook_url",
                        "contacts",
                        "variants",
                        "audience_ids",
                        "creative_id",
                        "filter",
                        "price_per_segment",
                        "schedule",
                    ],
                    rng.randint(1, 6),
                )
            }
        )
        raw = json.dumps(body)
        if rng.random() < 0.2:  # a number beyond float range somewhere
            raw = raw.replace("1.5", "1e999999")
        r = await admin.post(f"/api/v1{path}", data=raw.encode(), headers=H)
        assert r.status < 500, (path, raw[:300], await r.text())


async def test_unterminated_quote_rejects_only_its_line(
    admin_url: str,
    trackly: Trackly,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A quote left open is a rejected row (by line number); the rows after it are still imported."""
    await setup_list(trackly)
    f = tmp_path / "c.csv"
    f.write_text(
        'phone,first_name,tier\n+12125550100,Ann,gold\n+12125550101,"Bob,silver\n'
        '+12125550102,Cy,bronze\n+12125550103,"Di"x,gold\n+12125550104,"Ed, Jr.",gold\n'
    )
    assert await run(admin_url, "contacts", "import", str(f), "--list", "1") == 0
    out = capsys.readouterr().out
    assert "inserted 3, updated 0, rejected 2" in out, out
    assert "line 3: malformed CSV line" in out and "line 5: malformed CSV line" in out
    phones = sorted([d["phone"] async for d in trackly.db[c.CONTACTS].find({})])
    assert phones == ["+12125550100", "+12125550102", "+12125550104"]
    assert (await trackly.db[c.CONTACTS].find_one({"phone": "+12125550104"}))["first_name"] == "Ed, Jr."
