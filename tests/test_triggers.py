"""Idempotent triggers: one execution per trigger burst, 409 naming the execution in the way, force for a
one-off campaign's second run (the cooldown still applies), and the CLI's --again."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from trackly_exec import api
from trackly_exec.api.openapi import document
from trackly_exec.app import Trackly
from trackly_exec.campaigns.scheduler import TRIGGER_LOCK_STALE, Scheduler, TriggerConflict, stop_background, trigger
from trackly_exec.drivers import registry
from trackly_exec.executor.coordinator import Coordinator
from trackly_exec.store import constants as c
from trackly_exec.store.models import utcnow

from .campaign_fixtures import EchoDriver, contact, register_echo, seed_campaign

H = {"Authorization": "Bearer test-token"}


async def _send_all(trackly: Trackly) -> None:
    """The executor drains the queue (echo driver: everything is accepted)."""
    await Coordinator(trackly).run_until_idle()
    assert await trackly.db[c.QUEUED].count_documents({}) == 0


async def test_concurrent_triggers_make_one_execution(trackly: Trackly) -> None:
    """Twelve triggers of one campaign at once: exactly one execution; every other one is refused naming it."""
    register_echo()
    await seed_campaign(trackly.store, contacts=[contact(i) for i in range(1, 401)])
    results = await asyncio.gather(*(trigger(trackly, 1) for _ in range(12)), return_exceptions=True)
    won = [r for r in results if isinstance(r, int)]
    lost = [r for r in results if isinstance(r, TriggerConflict)]
    assert len(won) == 1 and len(lost) == 11, results
    assert await trackly.db[c.EXECUTIONS].count_documents({}) == 1
    assert all(e.execution_id == won[0] and f"execution {won[0]}" in str(e) for e in lost)
    assert await trackly.db[c.QUEUED].count_documents({}) == 400
    # Still sending (everything queued): refused, naming the execution and why.
    with pytest.raises(TriggerConflict, match=rf"execution {won[0]} sending \(400 messages still queued\)"):
        await trigger(trackly, 1)


async def test_concurrent_api_triggers_answer_one_202_and_409s(admin: TestClient[Any, Any], trackly: Trackly) -> None:
    """Concurrent POST /trigger: one 202; the others 409 with the execution id in the body and the message."""
    await seed_campaign(trackly.store, contacts=[contact(i) for i in range(1, 301)])
    answers = await asyncio.gather(*(admin.post("/api/v1/campaigns/1/trigger", headers=H) for _ in range(8)))
    bodies = [(r.status, await r.json()) for r in answers]
    ok = [b for s, b in bodies if s == 202]
    refused = [b for s, b in bodies if s == 409]
    assert len(ok) == 1 and len(refused) == 7, bodies
    eid = ok[0]["execution_id"]
    for b in refused:
        assert b["error"] == "conflict" and b["execution_id"] == eid and f"execution {eid}" in b["message"]
    assert await trackly.db[c.EXECUTIONS].count_documents({}) == 1
    await stop_background(trackly, 60)  # the trigger answers at once; its evaluation runs in the background
    assert await trackly.db[c.QUEUED].count_documents({}) == 300


async def test_finished_one_off_needs_force_and_keeps_the_cooldown(
    admin: TestClient[Any, Any], trackly: Trackly
) -> None:
    """A one-off campaign that ran: a plain trigger is 409 naming its run; force runs it, within the cooldown
    everyone is skipped as frequency_cap; body and query both carry force; a bad body is 422."""
    await seed_campaign(trackly.store, contacts=[contact(i) for i in range(1, 51)], list_kw={"cooldown_minutes": 60})
    first = await admin.post("/api/v1/campaigns/1/trigger?wait=true", headers=H)
    assert first.status == 202
    eid = (await first.json())["execution_id"]
    await _send_all(trackly)
    r = await admin.post("/api/v1/campaigns/1/trigger", headers=H)
    body = await r.json()
    assert r.status == 409 and body["execution_id"] == eid and "already ran" in body["message"]
    assert "force" in body["message"] and "--again" in body["message"]
    assert (await trackly.db[c.EXECUTIONS].find_one({"_id": eid}))["status"] == "completed"  # finished on the way
    r = await admin.post("/api/v1/campaigns/1/trigger", headers=H, json={"force": "maybe"})
    assert r.status == 422
    r = await admin.post("/api/v1/campaigns/1/trigger?wait=true", headers=H, json={"force": True})
    assert r.status == 202, await r.json()
    again = (await r.json())["execution"]
    assert again["counts"]["skipped"]["frequency_cap"] == 50 and again["counts"]["queued"] == 0
    assert again["status"] == "completed"
    r = await admin.post("/api/v1/campaigns/1/trigger?force=true&wait=true", headers=H)
    assert r.status == 202
    assert await trackly.db[c.EXECUTIONS].count_documents({}) == 3


async def test_failed_run_and_cron_campaigns_need_no_force(trackly: Trackly) -> None:
    """A one-off whose run failed (nothing sent) and a recurring campaign can be triggered again plainly."""
    register_echo()
    await seed_campaign(trackly.store, contacts=[contact(1)])
    await trackly.db[c.SENDING_LISTS].update_one({"_id": 1}, {"$set": {"active": False}})
    failed = await trigger(trackly, 1)
    assert (await trackly.db[c.EXECUTIONS].find_one({"_id": failed}))["status"] == "failed"
    await trackly.db[c.SENDING_LISTS].update_one({"_id": 1}, {"$set": {"active": True}})
    ran = await trigger(trackly, 1)
    await _send_all(trackly)
    with pytest.raises(TriggerConflict, match="already ran") as info:
        await trigger(trackly, 1)
    assert info.value.execution_id == ran
    await trackly.db[c.CAMPAIGNS].update_one(
        {"_id": 1}, {"$set": {"schedule": {"cron": "0 3 * * *", "timezone": "UTC"}}}
    )
    assert await trigger(trackly, 1) > ran


async def test_scheduled_execution_in_progress_blocks_a_trigger(trackly: Trackly) -> None:
    """A scheduler occurrence still sending blocks a manual trigger (409 naming it); once drained it does not."""
    register_echo()
    await seed_campaign(
        trackly.store,
        contacts=[contact(i) for i in range(1, 21)],
        campaign_kw={
            "schedule": {"cron": "* * * * *", "timezone": "UTC"},
            "next_run_at": utcnow() - dt.timedelta(seconds=5),
        },
    )
    await Scheduler(trackly).run_until_idle()
    scheduled = await trackly.db[c.EXECUTIONS].find_one({})
    assert scheduled["status"] == "queued"
    with pytest.raises(TriggerConflict) as info:
        await trigger(trackly, 1)
    assert info.value.execution_id == scheduled["_id"]
    await _send_all(trackly)
    assert await trigger(trackly, 1) != scheduled["_id"]


async def test_trigger_lock_left_by_a_dead_process(trackly: Trackly) -> None:
    """A lock naming an execution that was never created: refused while young, taken over once stale."""
    register_echo()
    await seed_campaign(trackly.store, contacts=[contact(1)])
    t0 = utcnow()
    trackly.clock = lambda: t0
    await trackly.db[c.LOCKS].insert_one({"_id": "trigger:1", "execution_id": 999, "campaign_id": 1, "at": t0})
    trackly.clock = lambda: t0 + TRIGGER_LOCK_STALE - dt.timedelta(milliseconds=1)
    with pytest.raises(TriggerConflict, match="being triggered") as info:
        await trigger(trackly, 1)
    assert info.value.execution_id == 999
    trackly.clock = lambda: t0 + TRIGGER_LOCK_STALE  # stale from now on: taken over
    eid = await trigger(trackly, 1)
    assert (await trackly.db[c.LOCKS].find_one({"_id": "trigger:1"}))["execution_id"] == eid


def test_openapi_documents_force_and_409() -> None:
    """The trigger's optional body and query flag and its 409 (with execution_id) are in the OpenAPI document."""
    doc = document()
    op = doc["paths"]["/api/v1/campaigns/{id}/trigger"]["post"]
    assert op["requestBody"]["required"] is False
    assert any(p["name"] == "force" and p["in"] == "query" for p in op["parameters"])
    assert "409" in op["responses"]
    assert "force" in doc["components"]["schemas"]["TriggerIn"]["properties"]
    assert "execution_id" in doc["components"]["schemas"]["ErrorOut"]["properties"]


async def test_cli_trigger_again(trackly: Trackly, capsys: pytest.CaptureFixture[str]) -> None:
    """`trackly campaign trigger ID` is refused for a one-off that ran (exit 1, naming the execution and --again);
    `--again` runs it."""
    from trackly_exec.cli import main as cli

    registry.register("echo", EchoDriver)
    app = web.Application(client_max_size=trackly.settings.http.max_body_bytes)
    api.setup(app, trackly)
    srv = TestServer(app, host="127.0.0.1")
    await srv.start_server()
    base = str(srv.make_url("")).rstrip("/")

    async def run(*argv: str) -> int:
        return await asyncio.to_thread(cli.main, [*argv, "--api", base, "--token", "test-token"])

    try:
        await seed_campaign(trackly.store, contacts=[contact(i) for i in range(1, 11)])
        assert await run("campaign", "trigger", "1") == 0
        assert "queued 10" in capsys.readouterr().out
        first = await trackly.db[c.EXECUTIONS].find_one({})
        await _send_all(trackly)
        assert await run("campaign", "trigger", "1") == 1
        err = capsys.readouterr().err
        assert "HTTP 409" in err and f"execution {first['_id']}" in err and "--again" in err
        assert await run("campaign", "trigger", "1", "--again") == 0
        assert "queued 10" in capsys.readouterr().out
        assert await trackly.db[c.EXECUTIONS].count_documents({}) == 2
    finally:
        await srv.close()


async def test_a_manual_run_of_a_scheduled_one_off_is_its_one_run(trackly: Trackly) -> None:
    """A one-off scheduled for later and triggered by hand now: the trigger is its run (the campaign is done), its
    scheduled time passes without a second execution, and each contact is texted once."""
    register_echo()
    at = utcnow() + dt.timedelta(minutes=10)
    await seed_campaign(
        trackly.store,
        contacts=[contact(i) for i in range(1, 6)],
        campaign_kw={"schedule": {"at": at, "timezone": "UTC"}, "next_run_at": at},
    )
    eid = await trigger(trackly, 1)
    await _send_all(trackly)
    assert (await trackly.db[c.CAMPAIGNS].find_one({"_id": 1}))["status"] == "done"
    trackly.clock = lambda: at + dt.timedelta(seconds=1)
    await Scheduler(trackly).run_until_idle()
    assert [e["_id"] async for e in trackly.db[c.EXECUTIONS].find({})] == [eid]
    assert await trackly.db[c.SENT].count_documents({}) == 5
    with pytest.raises(TriggerConflict, match="already ran"):
        await trigger(trackly, 1)


async def test_a_one_off_run_by_hand_is_listed_done(admin: TestClient[Any, Any], trackly: Trackly) -> None:
    """A manual-only one-off that ran shows as done (``?status=done`` finds it); a recurring campaign triggered by
    hand stays active."""
    register_echo()
    await seed_campaign(trackly.store, contacts=[contact(1)])
    r = await admin.post("/api/v1/campaigns/1/trigger?wait=true", headers=H)
    assert r.status == 202
    listed = await (await admin.get("/api/v1/campaigns?status=done", headers=H)).json()
    assert [x["id"] for x in listed["items"]] == [1]
    await trackly.db[c.CAMPAIGNS].update_one(
        {"_id": 1}, {"$set": {"status": "active", "schedule": {"cron": "0 3 * * *", "timezone": "UTC"}}}
    )
    await _send_all(trackly)
    await trigger(trackly, 1)
    assert (await trackly.db[c.CAMPAIGNS].find_one({"_id": 1}))["status"] == "active"


async def test_a_failed_manual_run_keeps_the_one_offs_time(trackly: Trackly) -> None:
    """A manual run of a scheduled one-off that fails (nothing queued) gives its time back: it runs then."""
    register_echo()
    at = utcnow() + dt.timedelta(minutes=10)
    await seed_campaign(
        trackly.store,
        contacts=[contact(1), contact(2)],
        campaign_kw={"schedule": {"at": at, "timezone": "UTC"}, "next_run_at": at},
    )
    await trackly.db[c.SENDING_LISTS].update_one({"_id": 1}, {"$set": {"active": False}})
    failed = await trigger(trackly, 1)
    assert (await trackly.db[c.EXECUTIONS].find_one({"_id": failed}))["status"] == "failed"
    assert (await trackly.db[c.CAMPAIGNS].find_one({"_id": 1}))["status"] == "active"
    await trackly.db[c.SENDING_LISTS].update_one({"_id": 1}, {"$set": {"active": True}})
    trackly.clock = lambda: at + dt.timedelta(seconds=1)
    await Scheduler(trackly).run_until_idle()
    await _send_all(trackly)
    assert await trackly.db[c.SENT].count_documents({}) == 2
    assert (await trackly.db[c.CAMPAIGNS].find_one({"_id": 1}))["status"] == "done"


async def test_a_done_one_off_still_sending_can_be_paused(admin: TestClient[Any, Any], trackly: Trackly) -> None:
    """A one-off whose run is still sending (done: nothing more is scheduled) can be paused, which holds its
    messages; resumed, it is done again and they go. A done campaign with nothing running cannot be paused."""
    register_echo()
    at = utcnow() - dt.timedelta(seconds=5)
    await seed_campaign(
        trackly.store,
        contacts=[contact(i) for i in range(1, 11)],
        campaign_kw={"schedule": {"at": at, "timezone": "UTC"}, "next_run_at": at},
    )
    await Scheduler(trackly).run_until_idle()  # the scheduled run: queued, the campaign done
    assert (await trackly.db[c.CAMPAIGNS].find_one({"_id": 1}))["status"] == "done"
    r = await admin.post("/api/v1/campaigns/1/pause", headers=H)
    assert r.status == 200 and (await r.json())["status"] == "paused"
    await Coordinator(trackly).run_until_idle()
    assert await trackly.db[c.SENT].count_documents({}) == 0
    r = await admin.post("/api/v1/campaigns/1/resume", headers=H)
    assert r.status == 200 and (await r.json())["status"] == "done"
    await Scheduler(trackly).run_until_idle()  # done: its time does not fire again
    await _send_all(trackly)
    assert await trackly.db[c.SENT].count_documents({}) == 10
    assert await trackly.db[c.EXECUTIONS].count_documents({}) == 1
    await Scheduler(trackly).run_until_idle()  # the drained execution is completed
    r = await admin.post("/api/v1/campaigns/1/pause", headers=H)
    assert r.status == 409 and "done" in (await r.json())["message"]
