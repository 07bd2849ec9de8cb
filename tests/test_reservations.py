"""The cooldown holds across overlapping executions, campaigns and daemons: at most one message per
(sending list, phone) within ``cooldown_minutes`` (cooldown reservations, see ``trackly_exec.campaigns.reservations``)."""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
from typing import Any

import pytest

from trackly_exec.app import Trackly
from trackly_exec.campaigns import reservations
from trackly_exec.campaigns.scheduler import Scheduler, trigger
from trackly_exec.config import Settings
from trackly_exec.executor.coordinator import Coordinator
from trackly_exec.executor.outcomes import failed_doc, insert_records
from trackly_exec.store import constants as c
from trackly_exec.store.client import Store
from trackly_exec.store.models import Campaign, FailureReason, utcnow
from trackly_exec.testing.fakes.infobip import InfobipFake

from .campaign_fixtures import contact, seed_campaign
from .executor_support import open_trackly, with_executor

AUDIENCE = 300


async def _daemons(settings: Settings, store: Store, fake: InfobipFake, n: int) -> list[Trackly]:
    """``n`` Trackly processes (distinct instance names) on one store."""
    out = []
    for i in range(n):
        s = with_executor(settings, {"infobip": fake.driver_settings()})
        s = s.model_copy(update={"daemon": s.daemon.model_copy(update={"instance_name": f"daemon-{i}"})})
        out.append(await open_trackly(s, store))
    return out


async def _seed(store: Store, campaigns: int, **campaign_kw: Any) -> None:
    await seed_campaign(
        store,
        contacts=[contact(i) for i in range(1, AUDIENCE + 1)],
        list_kw={"driver": "infobip", "cooldown_minutes": 60},
        campaign_kw=campaign_kw,
    )
    for cid in range(2, campaigns + 1):
        doc = Campaign(id=cid, account_id=1, sending_list_id=1, audience_ids=[1], creative_id=1, **campaign_kw).to_doc()
        await store.db[c.CAMPAIGNS].insert_one(doc)


async def _check_once_each(store: Store, fake: InfobipFake, executions: int) -> list[dict[str, Any]]:
    per_phone = collections.Counter(e.to for e in fake.ledger)
    twice = [p for p, k in per_phone.items() if k > 1]
    assert not twice, f"{len(twice)} phones texted more than once within the cooldown"
    assert len(per_phone) == AUDIENCE
    exs = await store.db[c.EXECUTIONS].find({}).to_list(None)
    assert len(exs) == executions
    for ex in exs:  # every execution's counts add up: queued + frequency_cap = audience
        k = ex["counts"]
        assert k["queued"] + k["skipped"]["frequency_cap"] == AUDIENCE == k["unique"], k
        assert sum(k["skipped"].values()) == k["skipped"]["frequency_cap"]
    assert sum(ex["counts"]["queued"] for ex in exs) == AUDIENCE
    return exs


@pytest.mark.parametrize(("campaigns", "daemons"), [(2, 1), (3, 2)])
async def test_campaigns_triggered_together_text_each_contact_once(
    settings: Settings, store: Store, redis_client: Any, campaigns: int, daemons: int
) -> None:
    """N campaigns on one list and one audience, triggered at the same moment through M daemons, then sent
    by those daemons' executors: every contact is texted once; the executions' counts add up."""
    fake = await InfobipFake().start()
    procs = await _daemons(settings, store, fake, daemons)
    try:
        for t in procs:
            t.settings.scheduler.evaluation_batch_size = 100  # several batches, interleaved
        await _seed(store, campaigns)
        await asyncio.gather(*(trigger(procs[i % daemons], i + 1) for i in range(campaigns)))
        await asyncio.gather(*(Coordinator(t).run_until_idle() for t in procs))
        await _check_once_each(store, fake, campaigns)
        assert await store.db[c.RESERVATIONS].count_documents({"state": "sent"}) == AUDIENCE
    finally:
        for t in procs:
            await t.close(close_store=False)
        await fake.stop()


async def test_due_campaigns_in_two_schedulers_text_each_contact_once(
    settings: Settings, store: Store, redis_client: Any
) -> None:
    """Three one-off campaigns due now, two daemons' schedulers racing on them (concurrent evaluations)."""
    fake = await InfobipFake().start()
    procs = await _daemons(settings, store, fake, 2)
    try:
        for t in procs:
            t.settings.scheduler.evaluation_batch_size = 100
            t.settings.scheduler.max_concurrent_evaluations = 3
        await _seed(store, 3, schedule={"at": utcnow() - dt.timedelta(seconds=1)})
        await asyncio.gather(*(Scheduler(t).run_until_idle() for t in procs))
        await asyncio.gather(*(Coordinator(t).run_until_idle() for t in procs))
        await _check_once_each(store, fake, 3)
    finally:
        for t in procs:
            await t.close(close_store=False)
        await fake.stop()


async def test_unsent_failure_releases_and_no_response_keeps(
    settings: Settings, store: Store, redis_client: Any
) -> None:
    """Messages dead-lettered without a send (BLOCKED_CONTENT) release their reservations: the next campaign
    texts those contacts; a NO_RESPONSE keeps it (the provider may have accepted it)."""
    fake = await InfobipFake().start()
    (trackly,) = await _daemons(settings, store, fake, 1)
    try:
        await _seed(store, 3)
        await store.db[c.SENDING_LISTS].update_one({"_id": 1}, {"$set": {"blocked_words": ["Ann1"]}})
        first = await trigger(trackly, 1)
        assert await store.db[c.RESERVATIONS].count_documents({"state": "held"}) == AUDIENCE
        await Coordinator(trackly).run_until_idle()
        failed = await store.db[c.FAILED].count_documents({"reason": "BLOCKED_CONTENT"})
        assert 0 < failed < AUDIENCE
        assert await store.db[c.RESERVATIONS].count_documents({}) == AUDIENCE - failed
        await store.db[c.SENDING_LISTS].update_one({"_id": 1}, {"$set": {"blocked_words": []}})
        second = await trigger(trackly, 2)
        ex = await store.db[c.EXECUTIONS].find_one({"_id": second})
        assert ex["counts"]["queued"] == failed and ex["counts"]["skipped"]["frequency_cap"] == AUDIENCE - failed
        # One of those is recorded NO_RESPONSE (e.g. the process died after the send intent): it keeps its phone.
        msg = await store.db[c.QUEUED].find_one({"execution_id": second})
        rec = failed_doc(msg, FailureReason.NO_RESPONSE, "unknown", utcnow(), ambiguous=True)
        await insert_records(store.db, c.FAILED, [rec])
        await store.db[c.QUEUED].delete_one({"_id": msg["_id"]})
        res = await store.db[c.RESERVATIONS].find_one({"message_id": msg["_id"]})
        assert res["state"] == "sent" and res["sent_at"] is not None
        await Coordinator(trackly).run_until_idle()
        third = await trigger(trackly, 3)
        ex = await store.db[c.EXECUTIONS].find_one({"_id": third})
        assert ex["counts"]["queued"] == 0 and ex["counts"]["skipped"]["frequency_cap"] == AUDIENCE
        assert first != second
        assert max(collections.Counter(e.to for e in fake.ledger).values()) == 1
    finally:
        await trackly.close(close_store=False)
        await fake.stop()


async def test_reservation_rules(trackly: Trackly) -> None:
    """What blocks and what is free: queued / sent within or past the cooldown (counted from the send) /
    dead-lettered / NO_RESPONSE / never queued (in flight or its evaluator died); a release touches only the
    reservation of that very message."""
    db = trackly.db
    now = utcnow()
    cutoff = now - dt.timedelta(minutes=60)
    old = now - dt.timedelta(hours=2)

    def res(phone: str, mid: str, state: str = "held", sent_at: Any = None, reserved_at: Any = now) -> dict[str, Any]:
        return {
            "_id": f"1:{phone}",
            "sending_list_id": 1,
            "to_number": phone,
            "message_id": mid,
            "state": state,
            "sent_at": sent_at,
            "reserved_at": reserved_at,
        }

    await db[c.RESERVATIONS].insert_many(
        [
            res("+1", "q1"),  # held, still queued -> blocked
            res("+2", "s2", "sent", now - dt.timedelta(minutes=5)),  # sent 5 min ago -> blocked
            res("+3", "s3", "sent", old),  # sent 2 h ago -> free
            res("+4", "r4"),  # held, MessageSent recorded (settle lost), recent -> blocked
            res("+5", "r5"),  # held, MessageSent 2 h ago -> free
            res("+6", "f6"),  # held, dead-lettered without a send -> free
            res("+7", "n7"),  # held, NO_RESPONSE recently -> blocked
            res("+8", "x8"),  # held, nowhere, just reserved (being queued) -> blocked
            res("+9", "x9", reserved_at=old),  # held, nowhere for 2 h (evaluator died) -> free
            res("+10", "mine"),  # ours (a resumed evaluation) -> kept
            res("+12", "rq", "sent", old),  # sent 2 h ago but queued again (released for a resend) -> blocked
        ]
    )
    await db[c.QUEUED].insert_many([{"_id": "q1", "execution_id": 1}, {"_id": "rq", "execution_id": 1}])
    await db[c.SENT].insert_many([{"_id": "r4", "timestamp": now}, {"_id": "r5", "timestamp": old}])
    await db[c.FAILED].insert_many(
        [
            {"_id": "f6", "reason": "STALE", "ambiguous": False, "failed_at": now},
            {"_id": "n7", "reason": "NO_RESPONSE", "ambiguous": True, "failed_at": now},
        ]
    )
    phones = [f"+{i}" for i in range(1, 13)]
    view = await reservations.lookup(db, 1, phones, ["mine"], cutoff, now)
    assert view.blocked == {"+1", "+2", "+4", "+7", "+8", "+12"}
    assert set(view.takeover) == {"1:+3", "1:+5", "1:+6", "1:+9"}
    assert view.ours == {"1:+10"}
    msgs = [{"_id": f"new{p}", "sending_list_id": 1, "to_number": p} for p in ["+3", "+6", "+9", "+10", "+11"]]
    msgs[3]["_id"] = "mine"
    won = await reservations.take(db, msgs, view, now)
    assert won == {"new+3", "new+6", "new+9", "mine", "new+11"}
    # a second taker with the same (now stale) view gets nothing but what is its own
    assert await reservations.take(db, [{**m, "_id": "other" + m["_id"]} for m in msgs], view, now) == set()
    # a late failure of the message that held +6 before does not release the new holder's reservation
    assert await reservations.release(db, ["f6"]) == 0
    assert (await db[c.RESERVATIONS].find_one({"_id": "1:+6"}))["message_id"] == "new+6"
    # settling: sent counts from the record's time; a release after a send changes nothing
    sent_at = now + dt.timedelta(seconds=30)
    await reservations.settle(db, c.SENT, [{"_id": "new+3", "timestamp": sent_at}])
    assert await reservations.release(db, ["new+3"]) == 0
    doc = await db[c.RESERVATIONS].find_one({"_id": "1:+3"})
    assert doc["state"] == "sent" and doc["sent_at"] == sent_at
    await reservations.settle(db, c.FAILED, [{"_id": "new+11", "reason": "STALE", "failed_at": now}])
    assert await db[c.RESERVATIONS].find_one({"_id": "1:+11"}) is None


async def test_redrive_respects_reservations(settings: Settings, store: Store, redis_client: Any) -> None:
    """A dead letter (its reservation released) whose number another campaign has queued since is not re-driven
    (skipped as cooldown, dry run too); the others are, and take their reservation again."""
    from trackly_exec.executor import redrive

    fake = await InfobipFake().start()
    (trackly,) = await _daemons(settings, store, fake, 1)
    try:
        await _seed(store, 2)
        await store.db[c.SENDING_LISTS].update_one({"_id": 1}, {"$set": {"blocked_words": ["Ann1"]}})
        await trigger(trackly, 1)
        await Coordinator(trackly).run_until_idle()
        dead = await store.db[c.FAILED].find({}).to_list(None)
        assert (
            dead
            and await store.db[c.RESERVATIONS].count_documents({"message_id": {"$in": [d["_id"] for d in dead]}}) == 0
        )
        # Turn them into re-drivable failures; campaign 2 then reserves (queues) half of those numbers.
        await store.db[c.FAILED].update_many({}, {"$set": {"reason": "PROVIDER_ERROR"}})
        await store.db[c.SENDING_LISTS].update_one({"_id": 1}, {"$set": {"blocked_words": []}})
        half = dead[: len(dead) // 2]
        await store.db[c.AUDIENCES].insert_one(
            {
                "_id": 2,
                "sending_list_id": 1,
                "name": "half",
                "filter": None,
                "contact_ids": [d["contact_id"] for d in half],
            }
        )
        await store.db[c.CAMPAIGNS].update_one({"_id": 2}, {"$set": {"audience_ids": [2]}})
        second = await trigger(trackly, 2)
        assert (await store.db[c.EXECUTIONS].find_one({"_id": second}))["counts"]["queued"] == len(half)
        match = redrive.dead_letter_filter(reasons=["PROVIDER_ERROR"])
        dry = await redrive.redrive(trackly, match, dry_run=True)
        assert dry.skipped["cooldown"] == len(half) and dry.would_requeue == len(dead) - len(half)
        res = await redrive.redrive(trackly, match)
        assert res.skipped["cooldown"] == len(half) and res.requeued == len(dead) - len(half)
        requeued = set(res.message_ids)
        held = await store.db[c.RESERVATIONS].find({"message_id": {"$in": list(requeued)}}).to_list(None)
        assert len(held) == len(requeued)
        await Coordinator(trackly).run_until_idle()
        assert max(collections.Counter(e.to for e in fake.ledger).values()) == 1
    finally:
        await trackly.close(close_store=False)
        await fake.stop()
