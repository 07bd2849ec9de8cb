"""The scheduler: due campaigns to executions exactly once, validation, lateness, resume (cron itself: test_cron.py)."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from trackly_exec.app import Trackly
from trackly_exec.campaigns.scheduler import CampaignNotFound, Scheduler, trigger
from trackly_exec.store import constants as c
from trackly_exec.store.models import QueuedTextMessage, utcnow

from .campaign_fixtures import contact, register_echo, seed_campaign, zone_where


async def test_trigger_counts_every_filter(trackly: Trackly) -> None:
    """A manual trigger queues the union once and records per-audience counts, overlap and each skip reason."""
    register_echo()
    inside, outside = zone_where(True), zone_where(False)
    people = [contact(i, timezone=inside) for i in range(1, 101)]
    people[0]["subscribed"] = False
    people[1]["blocked"] = True
    people[2]["phone"] = "+1555"  # not a valid number
    people[3]["in_workflow"] = True
    people[4]["timezone"] = outside  # quiet hours
    people[5]["first_name"] = None  # {first_name} has no default in variant B... and A has one
    people[6]["last_sent_at"] = utcnow()  # frequency cap via the contact
    camp = await seed_campaign(
        trackly.store,
        contacts=people,
        audiences=[
            {"_id": 1, "sending_list_id": 1, "filter": {"id": {"lte": 60}}},
            {"_id": 2, "sending_list_id": 1, "filter": {"id": {"gt": 50}}},
        ],
        variants=[{"key": "A", "body": "Hi {first_name}, see {city}", "weight": 1}],
        list_kw={"cooldown_minutes": 60},
        campaign_kw={"exclude_in_workflow": True},
    )
    await trackly.db[c.CAMPAIGNS].update_one({"_id": 1}, {"$set": {"audience_ids": [1, 2, 1]}})  # listed twice: once
    await trackly.db[c.SENT].insert_one(
        {"_id": "m1", "sending_list_id": 1, "account_id": 1, "to_number": people[7]["phone"], "timestamp": utcnow()}
    )  # a non-campaign send: no execution_id
    eid = await trigger(trackly, camp["_id"])
    ex = await trackly.db[c.EXECUTIONS].find_one({"_id": eid})
    assert ex["status"] == "queued" and ex["occurrence_key"] == "1:manual:1"
    k = ex["counts"]
    assert k["per_audience"] == {"1": 60, "2": 50} and k["audience_total"] == 110
    assert k["unique"] == 100 and k["overlap"] == 10
    assert k["skipped"] == {
        "unsubscribed": 2,
        "invalid_phone": 1,
        "in_workflow": 1,
        "frequency_cap": 2,
        "quiet_hours": 1,
        "missing_placeholder": 1,
    }
    assert k["queued"] == 92 == k["unique"] - sum(k["skipped"].values())
    assert ex["evaluated_at"] and ex["queued_at"] and ex["queued_at"] >= ex["triggered_at"]
    docs = await trackly.db[c.QUEUED].find({"execution_id": eid}).to_list(None)
    assert len(docs) == 92 and len({d["contact_id"] for d in docs}) == 92
    for d in docs[:5]:
        m = QueuedTextMessage.from_doc(d)
        assert m.send_type == "campaign" and m.body == f"Hi Ann{m.contact_id}, see Paris" and m.segments == 1
    # The executor drains the queue: the execution completes.
    await trackly.db[c.QUEUED].delete_many({"execution_id": eid})
    assert (await Scheduler(trackly).run_until_idle())["completed"] == 1
    assert (await trackly.db[c.EXECUTIONS].find_one({"_id": eid}))["status"] == "completed"
    with pytest.raises(CampaignNotFound):
        await trigger(trackly, 404)


async def test_quiet_hours_hold_queues_for_the_opening(trackly: Trackly) -> None:
    """With policy hold, a contact outside the window is queued with sendtime = its window's opening."""
    register_echo()
    outside = zone_where(False)
    camp = await seed_campaign(
        trackly.store,
        contacts=[contact(1, timezone=outside), contact(2, timezone=zone_where(True))],
        campaign_kw={"quiet_hours_policy": "hold"},
    )
    eid = await trigger(trackly, camp["_id"])
    ex = await trackly.db[c.EXECUTIONS].find_one({"_id": eid})
    assert (
        ex["counts"]["queued"] == 2
        and ex["counts"]["held_quiet_hours"] == 1
        and ex["counts"]["skipped"]["quiet_hours"] == 0
    )
    held = await trackly.db[c.QUEUED].find_one({"contact_id": 1})
    assert held["sendtime"] > utcnow() and held["not_before"] == held["sendtime"]
    assert held["sendtime"].astimezone(ZoneInfo(outside)).strftime("%H:%M") == "08:00"
    now_doc = await trackly.db[c.QUEUED].find_one({"contact_id": 2})
    assert now_doc["sendtime"] <= utcnow() and now_doc["not_before"] is None


async def test_due_one_off_runs_exactly_once_with_two_schedulers(trackly: Trackly) -> None:
    """Two schedulers racing on a due one-off campaign create one execution and queue each contact once."""
    register_echo()
    at = utcnow() - dt.timedelta(minutes=1)
    await seed_campaign(
        trackly.store, contacts=[contact(i) for i in range(1, 301)], campaign_kw={"schedule": {"at": at}}
    )
    s1, s2 = Scheduler(trackly), Scheduler(trackly)
    s2.runner.owner = "other-process"
    await asyncio.gather(s1.run_until_idle(), s2.run_until_idle())
    exs = await trackly.db[c.EXECUTIONS].find({}).to_list(None)
    assert len(exs) == 1 and exs[0]["occurrence_key"] == f"1:{exs[0]['scheduled_for'].isoformat()}"
    assert exs[0]["status"] == "queued" and exs[0]["counts"]["queued"] == 300
    assert await trackly.db[c.QUEUED].count_documents({}) == 300
    camp = await trackly.db[c.CAMPAIGNS].find_one({"_id": 1})
    assert camp["status"] == "done"
    assert (await Scheduler(trackly).run_until_idle())["started"] == 0


#: The time the clock-driven tests run at (a weekday morning: 11:00 UTC is inside every contact's window in UTC).
T = dt.datetime(2026, 3, 2, 11, 0, 30, tzinfo=dt.UTC)


async def test_cron_after_downtime_runs_only_the_latest(trackly: Trackly) -> None:
    """A per-minute campaign down for 3 hours runs one execution (the latest minute), not 180, and advances."""
    register_echo()
    trackly.clock = lambda: T
    await seed_campaign(
        trackly.store,
        contacts=[contact(1, timezone="UTC")],
        campaign_kw={
            "schedule": {"cron": "* * * * *", "timezone": "Europe/Paris"},
            "next_run_at": dt.datetime(2026, 3, 2, 8, 0, tzinfo=dt.UTC),
        },
    )
    await Scheduler(trackly).run_until_idle()
    exs = await trackly.db[c.EXECUTIONS].find({}).to_list(None)
    assert len(exs) == 1 and exs[0]["status"] == "queued"
    assert exs[0]["scheduled_for"] == dt.datetime(2026, 3, 2, 11, 0, tzinfo=dt.UTC)
    assert exs[0]["occurrence_key"] == "1:2026-03-02T11:00:00+00:00" and exs[0]["counts"]["queued"] == 1
    camp = await trackly.db[c.CAMPAIGNS].find_one({"_id": 1})
    assert camp["next_run_at"] == dt.datetime(2026, 3, 2, 11, 1, tzinfo=dt.UTC) and camp["status"] == "active"


async def test_too_late_occurrence_is_skipped_and_reported(trackly: Trackly) -> None:
    """An occurrence later than max_lateness gets a skipped execution, an event, and nothing is queued."""
    register_echo()
    trackly.clock = lambda: T
    five_h = T - dt.timedelta(hours=5)
    cron = f"{five_h.minute} {five_h.hour} * * *"
    await seed_campaign(
        trackly.store,
        contacts=[contact(1)],
        campaign_kw={
            "schedule": {"cron": cron, "timezone": "UTC"},
            "next_run_at": five_h.replace(second=0, microsecond=0),
        },
    )
    await Scheduler(trackly).run_until_idle()
    ex = await trackly.db[c.EXECUTIONS].find_one({})
    assert ex["status"] == "skipped" and "late" in ex["reason"]
    assert await trackly.db[c.QUEUED].count_documents({}) == 0
    ev = await trackly.db[c.EVENTS].find_one({"kind": "occurrence_skipped"})
    assert ev is not None and ev["data"]["campaign_id"] == 1
    camp = await trackly.db[c.CAMPAIGNS].find_one({"_id": 1})
    assert camp["next_run_at"] == five_h.replace(second=0) + dt.timedelta(days=1)


async def test_new_campaigns_get_next_run_and_paused_are_ignored(trackly: Trackly) -> None:
    """A new cron campaign gets its next occurrence filled in; a paused due campaign is not run."""
    register_echo()
    await seed_campaign(
        trackly.store, contacts=[contact(1)], campaign_kw={"schedule": {"cron": "0 9 * * *", "timezone": "Asia/Tokyo"}}
    )
    await Scheduler(trackly).run_until_idle()
    camp = await trackly.db[c.CAMPAIGNS].find_one({"_id": 1})
    assert camp["next_run_at"].astimezone(ZoneInfo("Asia/Tokyo")).strftime("%H:%M") == "09:00"
    camp = {**camp, "status": "paused", "next_run_at": utcnow()}
    await trackly.db[c.CAMPAIGNS].replace_one({"_id": 1}, camp)
    await Scheduler(trackly).run_until_idle()
    assert await trackly.db[c.EXECUTIONS].count_documents({}) == 0


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({c.SENDING_LISTS: {"active": False}}, "not active"),
        ({c.SENDING_LISTS: {"driver": "nope"}}, "not available"),
        ({c.AUDIENCES: {"sending_list_id": 2}}, "another sending list"),
        ({c.CREATIVES: {"variants": [{"key": "A", "body": "x", "weight": 0}]}}, "no variant"),
        ({c.CREATIVES: {"account_id": 2}}, "another account"),
        ({c.CREATIVES: {"variants": [{"key": "A", "body": "Hi {first name}", "weight": 1}]}}, "bad placeholder"),
        ({c.AUDIENCES: {"filter": {"$where": "1"}}}, "invalid filter"),
    ],
)
async def test_invalid_campaign_fails_with_reason(trackly: Trackly, change: dict[str, Any], words: str) -> None:
    """An invalid campaign gets a failed execution with the reason and a campaign_failed event, and queues nothing."""
    register_echo()
    await seed_campaign(trackly.store, contacts=[contact(1)])
    for coll, fields in change.items():
        await trackly.db[coll].update_one({}, {"$set": fields})
    eid = await trigger(trackly, 1)
    ex = await trackly.db[c.EXECUTIONS].find_one({"_id": eid})
    assert ex["status"] == "failed" and words in ex["reason"], ex["reason"]
    ev = await trackly.db[c.EVENTS].find_one({"kind": "campaign_failed"})
    assert ev["data"]["execution_id"] == eid and words in ev["data"]["reason"]
    assert await trackly.db[c.QUEUED].count_documents({}) == 0


async def test_crashed_evaluation_is_resumed_without_duplicates(trackly: Trackly) -> None:
    """An execution left evaluating by a dead process is resumed: nobody is queued twice, sent ones are not re-queued."""
    register_echo()
    camp = await seed_campaign(trackly.store, contacts=[contact(i) for i in range(1, 251)])
    eid = await trigger(trackly, camp["_id"])
    first = await trackly.db[c.EXECUTIONS].find_one({"_id": eid})
    # Simulate: contact 1 was sent (queue entry gone, MessageSent exists), 2 dead-lettered, the process died
    # mid-evaluation with its lease expired, and half the queue entries were never written.
    q1 = await trackly.db[c.QUEUED].find_one_and_delete({"contact_id": 1})
    await trackly.db[c.SENT].insert_one({**q1, "provider": "echo", "timestamp": utcnow()})
    q2 = await trackly.db[c.QUEUED].find_one_and_delete({"contact_id": 2})
    await trackly.db[c.FAILED].insert_one({**q2, "reason": "PROVIDER_ERROR"})
    await trackly.db[c.QUEUED].delete_many({"contact_id": {"$gt": 125}})
    stuck = {**first, "status": "evaluating", "lease_owner": "dead", "heartbeat_at": utcnow() - dt.timedelta(minutes=2)}
    await trackly.db[c.EXECUTIONS].replace_one(
        {"_id": eid}, stuck
    )  # (replace: $set would store the date as text on nx-27017)
    stats = await Scheduler(trackly).run_until_idle()
    assert stats["resumed"] == 1
    ex = await trackly.db[c.EXECUTIONS].find_one({"_id": eid})
    assert ex["status"] == "queued" and ex["attempts"] == 2
    assert ex["counts"]["queued"] == first["counts"]["queued"] == 250
    assert ex["counts"]["already_processed"] == 2 and ex["counts"]["already_queued"] == 123
    assert await trackly.db[c.QUEUED].count_documents({"execution_id": eid}) == 248
    assert await trackly.db[c.QUEUED].count_documents({"contact_id": {"$in": [1, 2]}}) == 0


async def test_next_run_written_as_text_is_healed(trackly: Trackly) -> None:
    """A next_run_at that a $set stored as text (nx-27017) is turned back into a date and the campaign runs."""
    register_echo()
    await seed_campaign(
        trackly.store,
        contacts=[contact(1)],
        campaign_kw={"schedule": {"cron": "* * * * *", "timezone": "UTC"}, "next_run_at": utcnow()},
    )
    await trackly.db[c.CAMPAIGNS].update_one({"_id": 1}, {"$set": {"next_run_at": utcnow() - dt.timedelta(seconds=5)}})
    await Scheduler(trackly).run_until_idle()
    assert await trackly.db[c.EXECUTIONS].count_documents({"status": "queued"}) == 1
    assert isinstance((await trackly.db[c.CAMPAIGNS].find_one({"_id": 1}))["next_run_at"], dt.datetime)


async def test_component_runs_due_campaigns_in_the_background(trackly: Trackly) -> None:
    """Started as a daemon component, the scheduler picks up a due campaign by itself and stops cleanly."""
    register_echo()
    trackly.settings.scheduler.poll_interval_seconds = 0.05
    await seed_campaign(
        trackly.store, contacts=[contact(i) for i in range(1, 11)], campaign_kw={"schedule": {"at": utcnow()}}
    )
    sched = Scheduler(trackly)
    await sched.start()
    try:
        ex = None
        for _ in range(200):  # bounded wait for the background loop (no burst mode here)
            ex = await trackly.db[c.EXECUTIONS].find_one({"status": "queued"})
            if ex is not None:
                break
            await asyncio.sleep(0.05)
    finally:
        await sched.stop(5.0)
    assert ex is not None and ex["counts"]["queued"] == 10
    assert not sched._loop.running and not sched._tasks


_CRASHING_TRIGGER = """
import asyncio, sys
sys.path.insert(0, sys.argv[3])
from trackly_exec.app import Trackly
from trackly_exec.config import Settings
from trackly_exec.store.client import Store
from trackly_exec.campaigns.scheduler import trigger
from tests.campaign_fixtures import register_echo

async def main():
    register_echo()
    settings = Settings(mongo={"uri": sys.argv[1], "database": sys.argv[2]}, scheduler={"evaluation_batch_size": 100})
    store = await Store.connect(sys.argv[1], sys.argv[2])
    await trigger(Trackly(settings, store), 1)

asyncio.run(main())
"""


@pytest.mark.chaos
async def test_evaluation_killed_mid_way_is_resumed_exactly(trackly: Trackly) -> None:
    """A process SIGKILLed after its 3rd queue batch leaves a stuck execution; another scheduler resumes it to the same counts, nobody twice."""
    import subprocess
    import sys
    from pathlib import Path

    register_echo()
    await seed_campaign(trackly.store, contacts=[contact(i) for i in range(1, 1001)])
    root = str(Path(__file__).resolve().parent.parent)
    env = {**__import__("os").environ, "TRACKLY_FAILPOINT": "after_queue_batch:3"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _CRASHING_TRIGGER,
        trackly.settings.mongo.uri.get_secret_value(),
        trackly.settings.mongo.database,
        root,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    _, err = await proc.communicate()
    assert proc.returncode == -9, err.decode()[-2000:]
    ex = await trackly.db[c.EXECUTIONS].find_one({})
    assert ex["status"] == "evaluating"
    assert 300 <= await trackly.db[c.QUEUED].count_documents({}) < 1000
    lease = dt.timedelta(seconds=trackly.settings.scheduler.evaluation_lease_seconds)
    trackly.clock = lambda: utcnow() + lease  # the dead process's heartbeat is stale from now on
    stats = await Scheduler(trackly).run_until_idle()
    assert stats["resumed"] == 1
    ex = await trackly.db[c.EXECUTIONS].find_one({})
    assert ex["status"] == "queued" and ex["attempts"] == 2 and ex["counts"]["queued"] == 1000
    assert ex["counts"]["already_queued"] >= 300
    assert await trackly.db[c.QUEUED].count_documents({}) == 1000


@pytest.mark.chaos
async def test_evaluation_killed_then_resumed_while_the_executor_sends(trackly: Trackly) -> None:
    """SIGKILL after the 3rd queue batch; a running executor sends (and removes) the queued messages while
    another scheduler resumes the evaluation: every phone is texted exactly once (counted at the driver)."""
    import collections
    import subprocess
    import sys
    from collections.abc import Sequence
    from pathlib import Path

    from trackly_exec.drivers import registry
    from trackly_exec.drivers.contract import OutboundMessage, SendResult
    from trackly_exec.executor.coordinator import Coordinator

    from .campaign_fixtures import EchoDriver

    sends: collections.Counter[str] = collections.Counter()

    class Recording(EchoDriver):
        async def send(self, messages: Sequence[OutboundMessage]) -> list[SendResult]:
            sends.update(m.to for m in messages)
            return await super().send(messages)

    registry.register("echo", Recording)
    await seed_campaign(trackly.store, contacts=[contact(i) for i in range(1, 5001)])
    root = str(Path(__file__).resolve().parent.parent)
    env = {**__import__("os").environ, "TRACKLY_FAILPOINT": "after_queue_batch:10"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _CRASHING_TRIGGER, trackly.settings.mongo.uri.get_secret_value(),
        trackly.settings.mongo.database, root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    _, err = await proc.communicate()
    assert proc.returncode == -9, err.decode()[-2000:]
    trackly.settings.scheduler.evaluation_batch_size = 100
    lease = dt.timedelta(seconds=trackly.settings.scheduler.evaluation_lease_seconds)
    executor = Coordinator(trackly)
    await executor.start()
    try:
        for _ in range(600):  # bounded wait until the executor is sending (observable state, not the clock)
            if sends:
                break
            await asyncio.sleep(0.05)
        assert sends
        trackly.clock = lambda: utcnow() + lease  # the dead process's heartbeat is stale from now on
        assert (await Scheduler(trackly).run_until_idle())["resumed"] == 1
    finally:
        await executor.stop(5.0)
    await Coordinator(trackly).run_until_idle()
    twice = [p for p, n in sends.items() if n > 1]
    assert not twice, f"{len(twice)} phones texted twice"
    assert len(sends) == 5000
    ex = await trackly.db[c.EXECUTIONS].find_one({})
    assert ex["counts"]["queued"] == 5000 and ex["attempts"] == 2


async def test_invalid_stored_cron_is_reported_once_and_paused(trackly: Trackly) -> None:
    """A campaign stored with an invalid cron gets one failed execution and event, and is paused."""
    register_echo()
    await seed_campaign(
        trackly.store, contacts=[contact(1)], campaign_kw={"schedule": {"cron": "61 * * * *", "timezone": "UTC"}}
    )
    await Scheduler(trackly).run_until_idle()
    await Scheduler(trackly).run_until_idle()
    ex = await trackly.db[c.EXECUTIONS].find({}).to_list(None)
    assert len(ex) == 1 and ex[0]["status"] == "failed" and "invalid schedule" in ex[0]["reason"]
    assert (await trackly.db[c.CAMPAIGNS].find_one({"_id": 1}))["status"] == "paused"
    assert await trackly.db[c.EVENTS].count_documents({"kind": "campaign_failed"}) == 1


async def test_an_evaluation_that_keeps_crashing_fails_with_its_error(trackly: Trackly) -> None:
    """An evaluation that raised is resumed (a store that went away), but after MAX_EVALUATION_ATTEMPTS crashes the
    execution fails, naming the error, instead of staying evaluating for ever with its campaign un-triggerable."""
    from trackly_exec.campaigns import scheduler as sched

    from .campaign_fixtures import register_echo, seed_campaign

    register_echo()
    await seed_campaign(trackly.store)
    runner, execution = await sched._claim_manual(trackly, 1, False)
    await runner.crashed(execution, RuntimeError("boom"))  # the first crash: resumed later
    doc = await trackly.db[c.EXECUTIONS].find_one({"_id": execution["_id"]})
    assert doc["status"] != "failed"
    execution["attempts"] = sched.MAX_EVALUATION_ATTEMPTS - 1  # (as resume_stale counts them)
    await runner.crashed(execution, RuntimeError("boom"))
    doc = await trackly.db[c.EXECUTIONS].find_one({"_id": execution["_id"]})
    assert doc["status"] == "failed" and "RuntimeError: boom" in doc["reason"], doc
