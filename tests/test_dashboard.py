"""The live dashboard: its JSON (campaign state, ETA, grouped alerts, outbox backlog, samples over time) and the
page itself in a real browser (Debian's Chromium driven by Playwright; no browser download)."""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import json
import re
import shutil
from typing import Any

import aiohttp
import pytest

from trackly_exec.app import Trackly
from trackly_exec.operations import dashboard, metrics
from trackly_exec.operations.dashboard import SAMPLER, Sampler, summary
from trackly_exec.operations.metrics import FIGURES
from trackly_exec.operations.web import HttpServer
from trackly_exec.store import constants as c
from trackly_exec.store.events import Event, EventKind
from trackly_exec.store.models import utcnow
from trackly_exec.tracking import stats

from .tracking_support import figures_base


async def seed(trackly: Trackly) -> dt.datetime:
    """Campaign 3 sending (20 queued, 40 sent in the last minute), campaign 4 completed, campaign 5 archived; 3 alerts
    of one key."""
    now = utcnow()
    db = trackly.db
    base = {
        "account_id": 1,
        "sending_list_id": 7,
        "from_number": "+15550000000",
        "body": "x",
        "length": 1,
        "sendtime": now,
    }
    await db[c.CAMPAIGNS].insert_many(
        [
            {"_id": 3, "name": "Spring sale", "status": "active"},
            {"_id": 4, "name": "Welcome", "status": "active", "archived": False},
            {"_id": 5, "name": "Old promo", "status": "active", "archived": True},
        ]
    )
    await db[c.EXECUTIONS].insert_many(
        [
            {"_id": 1, "campaign_id": 3, "status": "queued", "triggered_at": now - dt.timedelta(minutes=5)},
            {
                "_id": 2,
                "campaign_id": 4,
                "status": "completed",
                "triggered_at": now - dt.timedelta(minutes=30),
                "completed_at": now - dt.timedelta(minutes=20),
            },
        ]
    )
    await db[c.QUEUED].insert_many(
        [
            {
                **base,
                "_id": f"q{i}",
                "campaign_id": 3,
                "execution_id": 1,
                "contact_id": i,
                "to_number": "+12025550100",
                "claimed_by": None,
            }
            for i in range(20)
        ]
    )
    await db[c.SENT].insert_many(
        [
            {
                **base,
                "_id": f"s{i}",
                "campaign_id": 3,
                "execution_id": 1,
                "to_number": "+12025550100",
                "timestamp": now - dt.timedelta(seconds=10),
                "delivered": i < 30,
            }
            for i in range(40)
        ]
    )
    await db[c.FAILED].insert_many(
        [
            {
                **base,
                "_id": f"f{i}",
                "campaign_id": 4,
                "execution_id": 2,
                "reason": r,
                "to_number": "+12025550100",
                "failed_at": now,
            }
            for i, r in enumerate(["PROVIDER_ERROR", "PROVIDER_ERROR", "STALE"])
        ]
    )
    await trackly.bus.publish(
        *[
            Event(
                kind=EventKind.FAILED_MESSAGE,
                severity="warning",
                key="failed_message:7:STALE",
                message=f"STALE: message m{i}",
                data={},
            )
            for i in range(3)
        ]
    )
    await db[c.OUTBOX].insert_many(
        [
            {
                "_id": "a:delivery",
                "account_id": 1,
                "status": "pending",
                "created_at": now - dt.timedelta(minutes=3),
                "next_attempt_at": now,
                "payload": {},
            },
            {"_id": "b:delivery", "account_id": 1, "status": "dead", "created_at": now, "payload": {}},
        ]
    )
    return now


async def test_summary_state_eta_alerts_outbox_and_samples(trackly: Trackly) -> None:
    """A sending campaign has a start, a running duration and an ETA; a completed one its end and duration; an
    archived one is not listed, only counted; alerts of one key are one row with a count; the outbox backlog and the
    samples are in the JSON."""
    now = await seed(trackly)
    sampler = Sampler()
    sampler.add({"sent": 0, "delivered": 0, "failed_by_reason": {}}, now - dt.timedelta(seconds=30))
    data = await summary(trackly, sampler=sampler)
    rows = {r["id"]: r for r in data["campaigns"]}
    assert set(rows) == {3, 4} and data["archived_campaigns"] == 1  # the archived campaign 5: counted, not listed
    sending, done = rows[3], rows[4]
    assert sending["state"] == "sending" and sending["name"] == "Spring sale"
    assert sending["send_rate_per_second"] == round(40 / 60, 2) and sending["eta_seconds"] == 30
    assert 290 <= sending["duration_seconds"] <= 400 and sending["ended_at"] is None
    assert done["state"] == "completed" and done["duration_seconds"] == 600 and done["eta_seconds"] is None
    assert done["failed_by_reason"] == {"PROVIDER_ERROR": 2, "STALE": 1}
    alerts = [a for a in data["alerts"] if a["key"] == "failed_message:7:STALE"]
    assert len(alerts) == 1 and alerts[0]["count"] == 3
    assert data["outbox"]["pending_events"] == 1 and data["outbox"]["dead_events"] == 1
    # no ETA while nothing of it can go: every queued message held (billing, quiet hours), or the campaign paused
    later = now + dt.timedelta(minutes=5)
    await trackly.db[c.QUEUED].update_many({"campaign_id": 3}, {"$set": {"not_before": later}})
    rows = {r["id"]: r for r in (await summary(trackly, sampler=sampler))["campaigns"]}
    assert rows[3]["state"] == "sending" and rows[3]["eta_seconds"] is None
    await trackly.db[c.QUEUED].update_many({"campaign_id": 3}, {"$set": {"not_before": None}})
    await trackly.db[c.CAMPAIGNS].update_one({"_id": 3}, {"$set": {"status": "paused"}})
    rows = {r["id"]: r for r in (await summary(trackly, sampler=sampler))["campaigns"]}
    assert rows[3]["state"] == "paused" and rows[3]["eta_seconds"] is None
    assert [s["sent"] for s in data["series"]] == [0, 40]


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


async def test_dashboard_in_a_real_browser(trackly: Trackly) -> None:
    """Chromium renders the dashboard: the three charts are drawn from the samples (inline SVG, no external
    request), campaign states with duration and ETA, grouped alerts, units on the figures, the outbox backlog."""
    exe = _chromium()
    if exe is None:
        pytest.skip("Chromium is not installed and could not be (make services runs: apt-get install chromium)")
    from playwright.async_api import async_playwright

    now = await seed(trackly)
    server = HttpServer(trackly)
    await server.start()
    try:
        assert server.runner is not None
        sampler = server.runner.app[SAMPLER]
        sampler.samples.clear()
        for age, sent, delivered, fails in (
            (30, 0, 0, {}),
            (20, 100, 60, {"PROVIDER_ERROR": 5}),
            (1, 300, 250, {"PROVIDER_ERROR": 7, "STALE": 2}),
        ):
            sampler.add(
                {"sent": sent, "delivered": delivered, "failed_by_reason": fails},
                now - dt.timedelta(seconds=age),
                min_gap=0,
            )
        requests: list[str] = []
        async with async_playwright() as p:
            browser = await p.chromium.launch(executable_path=exe, args=["--no-sandbox", "--disable-gpu"])
            try:
                # the operator surfaces may need a token: the API's, as a bearer header on every request
                context = await browser.new_context(extra_http_headers={"Authorization": "Bearer test-token"})
                page = await context.new_page()
                page.on("request", lambda r: requests.append(r.url))
                errors: list[str] = []
                page.on("pageerror", lambda e: errors.append(str(e)))
                await page.goto(server.url + "/dashboard")
                await page.wait_for_selector("body[data-ready='1']", timeout=20_000)
                q: Any = page
                assert await q.locator("#chart-rate polyline.series").count() == 1
                # (the page's own polls may add a live sample after the three made here)
                rate_pts = await q.get_attribute("#chart-rate polyline.series", "points")
                assert len(rate_pts.split()) >= 2
                assert len((await q.get_attribute("#chart-delivered polyline.series", "points")).split()) >= 3
                assert await q.locator("#chart-failures rect.bar-PROVIDER_ERROR").count() == 2
                assert await q.locator("#chart-failures rect.bar-STALE").count() == 1
                assert "STALE" in await q.inner_text("#legend-failures")
                row3 = q.locator("tr[data-campaign='3']")
                assert await row3.locator(".state").inner_text() == "sending"
                assert await row3.locator(".eta").inner_text() == "30 s"
                assert "min" in await row3.locator(".duration").inner_text()
                row4 = q.locator("tr[data-campaign='4']")
                assert await row4.locator(".state").inner_text() == "completed"
                assert await row4.locator(".duration").inner_text() == "10 min 0 s"
                assert "PROVIDER_ERROR 2" in await row4.locator(".fails").inner_text()
                assert await q.locator("tr[data-campaign='5']").count() == 0
                assert await q.inner_text("#archived") == "(1 archived, not shown)"
                stale = q.locator("#alerts tr.alert", has_text="STALE: message")
                assert await stale.count() == 1 and await stale.locator(".count").inner_text() == "3"
                cards = await q.inner_text("#cards")
                assert "messages/s" in cards and "Webhook backlog" in cards and "events pending" in cards
                assert "1 dead" in cards
                # the figures' age: they come from the one background refresh, not from this poll
                assert re.fullmatch(r"figures as of \d+ s ago \(.+\)", await q.inner_text("#age"))
                headers = await q.inner_text("table thead")
                assert "Queued (msgs)" in headers and "Delivery (%)" in headers and "Rate (msg/s)" in headers
                assert errors == []
            finally:
                await browser.close()
        assert requests and all(u.startswith(server.url) for u in requests), requests
    finally:
        await server.stop(1)


OP = {"Authorization": "Bearer test-token"}


async def test_dashboard_page_and_summary_over_http(trackly: Trackly) -> None:
    """/dashboard serves the page and live JSON (/metrics: test_metrics.py)."""
    now = utcnow()
    base = figures_base(now)
    await trackly.db[c.CAMPAIGNS].insert_one({"_id": 3, "status": "active"})
    await trackly.db[c.SENT].insert_many(
        [{**base, "_id": f"s{i}", "timestamp": now, "delivered": i < 3} for i in range(4)]
    )
    await trackly.db[c.FAILED].insert_one({**base, "_id": "f1", "reason": "STALE", "failed_at": now})
    await trackly.db[c.QUEUED].insert_many(
        [
            {**base, "_id": "q1", "execution_id": 1, "contact_id": 1, "claimed_by": None},
            {**base, "_id": "q2", "execution_id": 1, "contact_id": 2, "claimed_by": "t:x"},
        ]
    )
    server = HttpServer(trackly)
    await server.start()
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(server.url + "/dashboard", headers=OP) as r:
                assert r.status == 200 and "trackly-exec" in await r.text()
            async with http.get(server.url + "/dashboard/summary.json", headers=OP) as r:
                data = await r.json()
            camp = data["campaigns"][0]
            assert (camp["id"], camp["queued"], camp["sent"], camp["delivered"], camp["failed"]) == (3, 2, 4, 3, 1)
            assert camp["delivery_rate"] == 75.0
    finally:
        await server.stop(1)


async def test_concurrent_polls_count_the_store_once_per_interval(
    trackly: Trackly, monkeypatch: pytest.MonkeyPatch
) -> None:
    """However many pages poll summary.json at once, the store is counted by the one background refresh: a burst of
    polls costs one refresh (the totals and the page's part), a second burst within the interval none; each answer
    carries the figures' age and this process's live executor counts, and no phone number."""
    calls: collections.Counter[str] = collections.Counter()

    def spy(module: Any, name: str) -> None:
        real = getattr(module, name)

        async def counted(*args: Any, **kwargs: Any) -> Any:
            calls[name] += 1
            return await real(*args, **kwargs)

        monkeypatch.setattr(module, name, counted)

    spy(metrics, "overview")  # the totals (/metrics and the dashboard)
    spy(dashboard, "store_part")  # the dashboard's campaigns, outbox and alerts
    spy(stats, "store_count")  # every count command, whoever sends it
    trackly.settings.http.metrics_refresh_seconds = 3600.0  # no refresh by the clock during the test
    trackly.settings.http.dashboard_refresh_seconds = 3600.0
    await seed(trackly)
    await trackly.bus.publish(
        Event(kind=EventKind.FAILED_MESSAGE, severity="warning", key="k", message="STALE: to +12025550100", data={})
    )
    await trackly.db[c.EXECUTIONS].update_one({"_id": 1}, {"$set": {"reason": "test send to +12025550100"}})
    trackly.executor_counts.append(collections.Counter({"sent": 5, "failed.STALE": 2, "claimed": 9}))
    server = HttpServer(trackly)
    await server.start()
    try:
        assert server.runner is not None
        figures = server.runner.app[FIGURES]
        while figures.last is None:  # the refresh the server starts with (nobody polled yet: the totals only)
            await asyncio.sleep(0.05)
        assert figures.last.extra is None and calls["overview"] == 1 and calls["store_part"] == 0
        before = dict(calls)

        async def poll(http: aiohttp.ClientSession) -> tuple[int, str]:
            async with http.get(server.url + "/dashboard/summary.json", headers=OP) as r:
                return r.status, await r.text()

        async with aiohttp.ClientSession() as http:
            first = await asyncio.gather(*(poll(http) for _ in range(25)))
            after_first = dict(calls)
            second = await asyncio.gather(*(poll(http) for _ in range(25)))
        assert all(status == 200 for status, _ in first + second), first + second
        # the first burst: one refresh for all 25 polls (started by them: nobody wanted the page's part before)
        assert after_first["overview"] - before["overview"] == 1 and after_first["store_part"] == 1
        # the second burst, within the interval: nothing counted at all
        assert calls == after_first, (calls, after_first)
        assert figures.refreshes == 2
        datas = [json.loads(body) for _, body in first + second]
        assert all(d["as_of"] == datas[0]["as_of"] and d["overview"] == datas[0]["overview"] for d in datas)
        d = datas[-1]
        assert d["overview"]["sent"] == 40 and {r["id"] for r in d["campaigns"]} == {3, 4}
        assert d["age_seconds"] >= 0 and d["live"]["executors"] == 1
        assert (d["live"]["sent"], d["live"]["failed"], d["live"]["claimed"]) == (5, 2, 9)
        # an open page: aggregates only, phone numbers masked wherever text could hold one
        for _, body in first + second:
            assert "2025550100" not in body and "5550000000" not in body, body
        assert any("STALE: to" in a["message"] for a in d["alerts"])
    finally:
        await server.stop(1)


async def test_the_latest_execution_and_campaigns_past_nine(trackly: Trackly) -> None:
    """Past ids 9, 99, ...: the dashboard shows each campaign's latest execution (11, not 8) and the newest
    campaigns first, by number (the embedded store orders some queries by the text of an integer id)."""
    db = trackly.db
    now = dt.datetime.now(dt.UTC)
    await db[c.CAMPAIGNS].insert_many(
        [{"_id": i, "name": f"c{i}", "account_id": 1, "sending_list_id": 1, "status": "active"} for i in range(1, 13)]
    )
    await db[c.EXECUTIONS].insert_many(
        [
            {"_id": eid, "campaign_id": 5, "status": status, "triggered_at": now - dt.timedelta(minutes=20 - eid)}
            for eid, status in ((7, "completed"), (8, "completed"), (11, "queued"))
        ]
    )
    data = await summary(trackly, sampler=Sampler())
    # the one with an execution under way first, then the newest by number
    assert [r["id"] for r in data["campaigns"]][:5] == [5, 12, 11, 10, 9]
    row = next(r for r in data["campaigns"] if r["id"] == 5)
    assert row["last_execution"]["id"] == 11 and row["last_execution"]["status"] == "queued", row
    assert row["state"] != "completed" and row["ended_at"] is None, row


async def test_a_poll_with_old_figures_in_hand_waits_briefly(trackly: Trackly) -> None:
    """A poll whose figures are old (the store stalled) waits at most STALE_WAIT_SECONDS for fresher ones, then shows
    the old ones with their age; only a poll with no figures at all waits up to FIRST_WAIT_SECONDS (every poll waited
    20 s while the store was stalled)."""
    from trackly_exec.operations import dashboard
    from trackly_exec.operations.metrics import StoreFigures

    figures = StoreFigures(trackly, 5.0)
    feed = dashboard.DashboardFeed(trackly, figures, Sampler())
    waited: list[float] = []

    async def wait_extra(*, max_age: float, timeout: float) -> None:
        waited.append(timeout)

    figures.wait_extra = wait_extra  # type: ignore[method-assign]
    assert await feed.body() is None and waited == [dashboard.FIRST_WAIT_SECONDS]
    figures.last_extra = object()  # type: ignore[assignment]  # (any figures in hand, however old)
    await feed.body()
    assert waited[-1] == dashboard.STALE_WAIT_SECONDS < dashboard.FIRST_WAIT_SECONDS


async def test_a_sending_campaign_is_listed_however_many_newer_ones_exist(trackly: Trackly) -> None:
    """A campaign with an execution under way is always a row, first, even behind twenty newer drafts (it was hidden:
    only the newest twenty were listed)."""
    now = await seed(trackly)
    await trackly.db[c.CAMPAIGNS].insert_many(
        [{"_id": 100 + i, "name": f"draft-{i}", "status": "active", "account_id": 1} for i in range(25)]
    )
    data = await summary(trackly, sampler=Sampler())
    ids = [r["id"] for r in data["campaigns"]]
    assert ids[0] == 3 and len(ids) == 20 and 124 in ids, ids
    assert next(r["state"] for r in data["campaigns"] if r["id"] == 3) == "sending" and now is not None
