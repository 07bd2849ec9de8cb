"""One test per failure reason, plus the send-time holds (quiet hours), 429 storms and a Redis outage."""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import time
from typing import Any

import pytest

from trackly_exec.config import Settings
from trackly_exec.executor import recovery
from trackly_exec.executor.coordinator import Coordinator
from trackly_exec.store import constants as c
from trackly_exec.store.client import Store
from trackly_exec.store.models import FailedMessage, utcnow
from trackly_exec.testing.fakes.control import Behaviour

from .executor_support import (
    assert_one_record_each,
    drivers_for,
    executor,
    ids_in,
    open_trackly,
    seed,
    with_executor,
    zone_at_hour,
)


async def failed(store: Store, reason: str) -> list[str]:
    return sorted(await ids_in(store, c.FAILED, {"reason": reason}))


async def run(coord: Coordinator) -> dict[str, int]:
    try:
        return await coord.run_until_idle()
    finally:
        await coord.trackly.close(close_store=False)


async def test_stale(settings: Settings, store: Store, fakes: dict[str, Any]) -> None:
    """A message more than 30 minutes past its sendtime is STALE and never sent; a recent backoff is not stale."""
    old = utcnow() - dt.timedelta(minutes=31)
    stale = await seed(store, 3, sendtime=old)
    backoff = await seed(store, 2, sendtime=old, first_contact=10, execution_id=2)
    await store.db[c.QUEUED].update_many(
        {"_id": {"$in": backoff}}, {"$set": {"not_before": utcnow() - dt.timedelta(minutes=1)}}
    )
    counts = await run(await executor(settings, store, fakes))
    assert await failed(store, "STALE") == sorted(stale) and counts["sent"] == 2, (counts, fakes["infobip"].summary())
    assert set(fakes["infobip"].accepted_counts()) == set(backoff)
    events = await store.db[c.EVENTS].find({"kind": "failed_message"}).to_list(None)
    assert sorted(e["data"]["message_id"] for e in events) == sorted(stale)
    assert {e["data"]["reason"] for e in events} == {"STALE"}


async def test_blocked_content(settings: Settings, store: Store, fakes: dict[str, Any]) -> None:
    """List and global blocked words match whole words in any case; other words go out."""
    ids = await seed(store, 4, blocked_words=["casino"], body="x")
    bodies = ["Win at the CASINO now", "cheap Viagra here", "casinos are not a blocked word", "hello"]
    for mid, body in zip(ids, bodies, strict=True):
        await store.db[c.QUEUED].update_one({"_id": mid}, {"$set": {"body": body}})
    counts = await run(await executor(settings, store, fakes, blocked_words=["viagra"]))
    assert await failed(store, "BLOCKED_CONTENT") == sorted(ids[:2]) and counts["sent"] == 2
    rec = FailedMessage.from_doc(await store.db[c.FAILED].find_one({"_id": ids[0]}))
    assert "CASINO" in rec.detail


async def test_contact_blocked(settings: Settings, store: Store, fakes: dict[str, Any]) -> None:
    """A contact unsubscribed or blocked after queuing is CONTACT_BLOCKED at send time."""
    ids = await seed(store, 4)
    await store.db[c.CONTACTS].update_one({"_id": 1}, {"$set": {"subscribed": False}})
    await store.db[c.CONTACTS].update_one({"_id": 2}, {"$set": {"blocked": True}})
    counts = await run(await executor(settings, store, fakes))
    assert await failed(store, "CONTACT_BLOCKED") == sorted(ids[:2]) and counts["sent"] == 2
    assert set(fakes["infobip"].accepted_counts()) == set(ids[2:])


async def test_quiet_hours_hold_at_send_time(settings: Settings, store: Store, fakes: dict[str, Any]) -> None:
    """A contact whose local time is outside the window is not sent to; the message waits for the opening."""
    ids = await seed(store, 3, contact_tz=zone_at_hour(3))
    counts = await run(await executor(settings, store, fakes))
    assert counts.get("sent", 0) == 0 and fakes["infobip"].summary()["accepted"] == 0
    docs = await store.db[c.QUEUED].find({"_id": {"$in": ids}}).to_list(None)
    assert all(d["claimed_by"] is None and d["sending_at"] is None for d in docs)
    opens = {d["not_before"] for d in docs}
    assert len(opens) == 1
    wait = next(iter(opens)) - utcnow()
    assert dt.timedelta(hours=4) < wait <= dt.timedelta(hours=5)  # 03:xx local -> 08:00 local


async def test_rate_limit_timeout(settings: Settings, store: Store, fakes: dict[str, Any]) -> None:
    """A message that cannot get a token within rate_limit_wait_seconds is RATE_LIMIT_TIMEOUT."""
    ids = await seed(store, 3, rate=60)
    coord = await executor(settings, store, fakes, rate_limit_wait_seconds=5)
    await coord.limiter.acquire(1, 100, 60, 1e9)  # someone took the next 100 seconds of tokens
    counts = await run(coord)
    assert await failed(store, "RATE_LIMIT_TIMEOUT") == sorted(ids) and counts.get("sent", 0) == 0
    assert fakes["infobip"].summary()["accepted"] == 0


async def test_a_slow_list_paces_its_backlog_instead_of_timing_it_out(
    settings: Settings, store: Store, fakes: dict[str, Any]
) -> None:
    """A list slower than its batches (600/min with a 0.3 s wait: 3 tokens within the wait) is worked on in batches
    that its tokens within the wait hold: its backlog is paced out, none RATE_LIMIT_TIMEOUT (concurrent batches of
    its 2 s of tokens used to reserve beyond the wait and time the later ones out at once)."""
    ids = await seed(store, 45, rate=600)
    coord = await executor(settings, store, fakes, rate_limit_wait_seconds=0.3)
    info = await coord.list_info(1)
    assert info is not None
    assert coord.worker.batches_per_list(info.doc) == 1 and coord.worker.claim_limit(info.doc) == 3
    started = time.monotonic()
    counts = await run(coord)
    assert await failed(store, "RATE_LIMIT_TIMEOUT") == [] and counts.get("sent", 0) == len(ids)
    assert fakes["infobip"].summary()["accepted"] == len(ids)
    assert time.monotonic() - started >= 3.5  # 45 messages at 10/s: paced, not sent at once
    await assert_one_record_each(store, ids)


async def test_transient_errors_outlasting_the_retries_hold_the_messages(
    settings: Settings, store: Store, fakes: dict[str, Any]
) -> None:
    """Transient failures that outlast retry_max_attempts are not dead-lettered: the messages are held (unclaimed,
    no intent, ``not_before`` = now + provider_hold_seconds), keep the time they were due, and are sent once the
    provider recovers; held past the stale cutoff they end STALE, never PROVIDER_ERROR."""
    ids = await seed(store, 4)
    sendtime = (await store.db[c.QUEUED].find_one({"_id": ids[0]}))["sendtime"]
    fakes["infobip"].set_default(Behaviour("429"))
    before = utcnow()
    counts = await run(await executor(settings, store, fakes, retry_max_attempts=3, provider_hold_seconds=7))
    assert await ids_in(store, c.FAILED) == [] and counts["held.provider"] == 4 and counts.get("sent", 0) == 0
    assert fakes["infobip"].requests == 3 and counts["provider_transient"] == 12
    # alerted though far below the burst threshold: a slow list in an outage never reaches it
    [hold] = await store.db[c.EVENTS].find({"kind": "provider_hold"}).to_list(None)
    assert hold["severity"] == "critical" and hold["data"]["messages"] == 4 and hold["data"]["sending_list_id"] == 1
    assert await store.db[c.EVENTS].count_documents({"kind": "recovered"}) == 0
    docs = await store.db[c.QUEUED].find({}).to_list(None)
    assert len(docs) == 4 and all(d["claimed_by"] is None and d["sending_at"] is None for d in docs)
    assert all(d["throttled_due"] == sendtime and d["throttled_until"] == d["not_before"] for d in docs)
    assert all(dt.timedelta(seconds=7) <= d["not_before"] - before <= dt.timedelta(seconds=30) for d in docs)

    coord = await executor(settings, store, fakes)  # still down; a hold is not a new due time for staleness
    coord.clock = lambda: utcnow() + dt.timedelta(minutes=31)
    await store.db[c.QUEUED].update_many(
        {"_id": ids[3]},  # one that was due only 1 min before the shifted clock
        {"$set": {"throttled_due": utcnow() + dt.timedelta(minutes=30)}},
    )
    fakes["infobip"].set_default(Behaviour("ok"))
    counts = await run(coord)
    assert await failed(store, "STALE") == sorted(ids[:3]) and counts["sent"] == 1
    assert fakes["infobip"].accepted_counts() == {ids[3]: 1}
    await assert_one_record_each(store, ids)


async def test_429_storm_longer_than_the_retries_delays_and_slows_down(
    settings: Settings, store: Store, fakes: dict[str, Any]
) -> None:
    """A 429 storm longer than the retry budget (with or without Retry-After) holds the list's messages, the rest
    of the batch included, for at least Retry-After and slows the list down; when the provider recovers every
    message is sent once and none is dead-lettered."""
    ids = await seed(store, 30, rate=6000)  # chunks of 5, batches of 10
    fake = fakes["infobip"]
    fake.set_default(Behaviour("429", retry_after=12))
    before = utcnow()
    coord = await executor(
        settings,
        store,
        fakes,
        retry_max_attempts=2,
        claim_batch_size=10,
        workers_per_list=1,
        retry_initial_backoff_seconds=0.0,
    )
    coord.worker._sleep = _no_sleep  # type: ignore[method-assign]  # burst mode: the Retry-After wait is not the point
    counts = await run(coord)
    assert await ids_in(store, c.FAILED) == [] and counts.get("sent", 0) == 0
    assert fake.requests == 2  # one batch tried; the list then rests: the other batches are not even claimed
    docs = await store.db[c.QUEUED].find({}).to_list(None)
    assert len(docs) == 30 and counts["slowdowns"] >= 1
    held = [d for d in docs if d.get("throttled_until") is not None]
    assert len(held) == 10 and counts["held.provider"] == 10
    assert all(d["not_before"] - before >= dt.timedelta(seconds=12) and d["claimed_by"] is None for d in held)

    fake.set_default(Behaviour("ok"))  # recovered (and without Retry-After from now on)
    coord = await executor(settings, store, fakes)
    coord.clock = lambda: utcnow() + dt.timedelta(seconds=20)
    counts = await run(coord)
    assert counts["sent"] == 30 and fake.summary()["duplicates"] == 0
    assert all(fake.accepted_counts()[m] == 1 for m in ids)
    await assert_one_record_each(store, ids)


async def _no_sleep(seconds: float) -> bool:
    return False


async def test_no_response_is_ambiguous_and_never_resent(
    settings: Settings, store: Store, fakes: dict[str, Any]
) -> None:
    """A provider that accepts and never answers gives NO_RESPONSE (ambiguous, charged), sent exactly once."""
    ids = await seed(store, 2, price=1.0, balance=10.0)
    fakes["infobip"].script(Behaviour("accept_then_hang"))
    trackly_drivers = {"timeout_seconds": 0.5}
    coord = await executor(settings, store, fakes)
    coord.trackly.drivers = type(coord.trackly.drivers)(
        coord.trackly.settings.model_copy(
            update={"drivers": {n: {**v, **trackly_drivers} for n, v in coord.trackly.settings.drivers.items()}}
        )
    )
    counts = await run(coord)
    assert await failed(store, "NO_RESPONSE") == sorted(ids) and counts["failed.NO_RESPONSE"] == 2
    rec = FailedMessage.from_doc(await store.db[c.FAILED].find_one({"_id": ids[0]}))
    assert rec.ambiguous is True
    assert all(fakes["infobip"].accepted_counts()[m] == 1 for m in ids)
    assert (await store.db[c.ACCOUNTS].find_one({"_id": 1}))["balance"] == 8.0  # charged: it may have been sent


async def test_opt_out_and_spam_rejections(settings: Settings, store: Store, fakes: dict[str, Any]) -> None:
    """A STOP rejection unsubscribes the contact; a spam rejection is stored and published."""
    ids = await seed(store, 3, driver="twilio")
    docs = {d["_id"]: d async for d in store.db[c.QUEUED].find({})}
    fakes["twilio"].reject_numbers = {docs[ids[0]]["to_number"]: "21610", docs[ids[1]]["to_number"]: "30007"}
    await run(await executor(settings, store, fakes))
    stop = await store.db[c.FAILED].find_one({"_id": ids[0]})
    spam = await store.db[c.FAILED].find_one({"_id": ids[1]})
    assert stop["opted_out"] and stop["provider_code"] == "21610" and spam["spam"]
    assert (await store.db[c.CONTACTS].find_one({"_id": 1}))["subscribed"] is False
    assert await store.db[c.EVENTS].find_one({"kind": "spam_complaint"}) is not None
    await assert_one_record_each(store, ids)


async def test_429_storm_with_retry_after(settings: Settings, store: Store, fakes: dict[str, Any]) -> None:
    """A run of 429s with Retry-After is retried after the hinted delay: nothing lost, nothing sent twice."""
    ids = await seed(store, 40, rate=600_000)
    fakes["infobip"].script(*[Behaviour("429", retry_after=0.2)] * 3)
    coord = await executor(settings, store, fakes)
    counts = await run(coord)
    assert counts["sent"] == 40 and counts["provider_transient"] == 120 and counts["retries"] == 120
    assert counts["slowdowns"] == 3  # each 429 multiplied the list's interval (it decays back on success)
    assert all(fakes["infobip"].accepted_counts()[m] == 1 for m in ids)
    assert fakes["infobip"].summary()["duplicates"] == 0


@pytest.mark.slow
async def test_429_retry_waits_for_retry_after(settings: Settings, store: Store, fakes: dict[str, Any]) -> None:
    """Three 429s with Retry-After 0.2 s: the run takes at least 0.6 s (a timing check: slow suite only)."""
    await seed(store, 40, rate=600_000)
    fakes["infobip"].script(*[Behaviour("429", retry_after=0.2)] * 3)
    coord = await executor(settings, store, fakes)
    started = time.monotonic()
    counts = await run(coord)
    assert time.monotonic() - started >= 0.6, (counts, fakes["infobip"].requests)
    assert counts["sent"] == 40


async def test_redis_down_fails_closed_and_resumes(
    settings: Settings, store: Store, fakes: dict[str, Any], redis_server: Any
) -> None:
    """With Redis stopped a rate-limited list sends nothing (and says so); after a restart it sends everything."""
    first = await seed(store, 10, rate=600_000)
    coord = await executor(settings, store, fakes)
    assert (await coord.run_until_idle())["sent"] == 10
    second = await seed(store, 10, rate=600_000, first_contact=100, execution_id=2)
    redis_server.stop()
    try:
        counts = await coord.run_until_idle()
        assert counts["sent"] == 10 and counts["limiter_unavailable"] >= 1
        assert fakes["infobip"].summary()["accepted"] == 10
        assert sorted(await ids_in(store, c.QUEUED, {"claimed_by": {"$in": [None]}})) == sorted(second)
        assert await store.db[c.EVENTS].find_one({"kind": "rate_limiter_down"}) is not None
    finally:
        redis_server.start()
    coord.worker.paused.clear()
    counts = await run(coord)
    assert counts["sent"] == 20
    assert all(fakes["infobip"].accepted_counts()[m] == 1 for m in first + second)


async def test_claim_lost_during_pacing_wait_is_not_sent(
    settings: Settings, store: Store, fakes: dict[str, Any]
) -> None:
    """A worker whose claim is taken over while it waits for rate-limit tokens neither sends nor records, and refunds."""
    import asyncio

    ids = await seed(store, 5, rate=600, price=1.0, balance=10.0)
    coord = await executor(settings, store, fakes)
    await coord.limiter.acquire(1, 10, 600, 60.0)  # the next second of tokens is taken: the worker must wait
    run_task = asyncio.create_task(coord.run_until_idle())
    while len(await ids_in(store, c.QUEUED, {"claimed_by": {"$gt": ""}})) < 5:  # claimed, waiting for tokens
        await asyncio.sleep(0.01)
    await store.db[c.QUEUED].update_many({"_id": {"$in": ids}}, {"$set": {"claimed_by": "recovered:1"}})
    counts = await run_task
    await coord.trackly.close(close_store=False)
    assert counts["claim_lost_before_send"] == 5 and counts.get("sent", 0) == 0
    assert fakes["infobip"].summary()["accepted"] == 0
    assert not await ids_in(store, c.SENT) and not await ids_in(store, c.FAILED)
    assert (await store.db[c.ACCOUNTS].find_one({"_id": 1}))["balance"] == 10.0


async def test_provider_error_burst_event(settings: Settings, store: Store, fakes: dict[str, Any]) -> None:
    """More provider errors on a list within a minute than the threshold publish one PROVIDER_ERROR_BURST."""
    await seed(store, 6)
    fakes["infobip"].set_default(Behaviour("reject"))
    await run(await executor(settings, store, fakes, error_burst_threshold=3, claim_batch_size=2, workers_per_list=1))
    bursts = await store.db[c.EVENTS].find({"kind": "provider_error_burst"}).to_list(None)
    assert len(bursts) == 1 and bursts[0]["data"]["sending_list_id"] == 1 and bursts[0]["data"]["errors"] >= 4


@pytest.mark.slow
@pytest.mark.timeout(300)  # a 30-40 s storm, then up to 180 s for the held messages to go (the holds grow with it)
@pytest.mark.parametrize("retry_after", [5.0, None], ids=["retry-after-5", "no-retry-after"])
async def test_long_429_storm_delays_every_message_and_kills_none(
    settings: Settings, store: Store, fakes: dict[str, Any], retry_after: float | None
) -> None:
    """Issue 8's measurement, on the default settings: 429 for 30 s with Retry-After: 5 dead-lettered 500 of 1,000
    as PROVIDER_ERROR, and 40 s without Retry-After all 1,000. Now the daemon's executor holds them through the
    storm and sends every one once when the provider recovers."""
    n = 1000
    ids = await seed(store, n, rate=17000)
    fake = fakes["infobip"]
    fake.set_default(Behaviour("429", retry_after=retry_after))
    coord = await executor(settings, store, fakes, retry_initial_backoff_seconds=0.5)
    await coord.start()
    try:
        await asyncio.sleep(30 if retry_after else 40)
        assert await ids_in(store, c.FAILED) == []
        fake.set_default(Behaviour("ok"))
        deadline = time.monotonic() + 180
        while await store.db[c.QUEUED].count_documents({}) and time.monotonic() < deadline:
            await asyncio.sleep(1)
    finally:
        await coord.stop(5)
        await coord.trackly.close(close_store=False)
    assert await ids_in(store, c.FAILED) == []
    assert fake.accepted_counts() == dict.fromkeys(ids, 1)
    await assert_one_record_each(store, ids)


async def _sweeping(coord: Coordinator, every: float) -> collections.Counter[str]:
    """Recovery sweeps every ``every`` seconds (as another daemon's would) until cancelled; their counts."""
    total: collections.Counter[str] = collections.Counter()
    try:
        while True:
            total.update(await recovery.sweep(coord.trackly))
            await asyncio.sleep(every)
    except asyncio.CancelledError:
        return total


async def test_a_batch_outliving_the_claim_ttl_keeps_its_claim(
    settings: Settings, store: Store, fakes: dict[str, Any]
) -> None:
    """A slow provider (0.2 s a request, one message a request, one pool slot): the batch lasts longer than the
    claim TTL (3 s). Its claim is renewed while it runs, so recovery sweeping meanwhile never takes it for dead:
    no NO_RESPONSE, every message sent once (recovery used to record the rest NO_RESPONSE while the live batch went
    on sending them, and reconciliation re-queued those not sent yet: sent twice)."""
    ids = await seed(store, 25, driver="twilio")
    fakes["twilio"].set_default(Behaviour("slow", delay=0.2))
    cfg = {"claim_ttl_minutes": 0.05, "retry_max_attempts": 2, "pool_size": 1, "workers_per_list": 1}
    coord = await executor(settings, store, fakes, **cfg)
    sweeper = asyncio.create_task(_sweeping(coord, 0.25))
    started = time.monotonic()
    counts = await run(coord)
    sweeper.cancel()
    swept = await sweeper
    assert time.monotonic() - started > 4.0  # the batch outlived the 3 s claim TTL
    assert swept["no_response"] == 0 and swept["released"] == 0, swept
    assert counts["sent"] == 25 and not counts.get("claim_expiring_unsent")
    assert fakes["twilio"].accepted_counts() == dict.fromkeys(ids, 1)
    await assert_one_record_each(store, ids)


async def test_a_request_is_not_sent_once_its_claim_is_lost(
    settings: Settings, store: Store, fakes: dict[str, Any]
) -> None:
    """Recovery takes a running batch's claim over (as after a stall past the TTL): the next renewal finds it lost
    and nothing more of the batch is sent; recovery's NO_RESPONSE stands for those (reconciliation asks the
    provider), and no message is sent twice."""
    ids = await seed(store, 25, driver="twilio")
    fakes["twilio"].set_default(Behaviour("slow", delay=0.2))
    cfg = {"claim_ttl_minutes": 0.05, "retry_max_attempts": 2, "pool_size": 1, "workers_per_list": 1}
    coord = await executor(settings, store, fakes, **cfg)
    run_task = asyncio.create_task(run(coord))
    while len(fakes["twilio"].ledger) < 3:
        await asyncio.sleep(0.02)
    swept = await recovery.sweep(coord.trackly, ttl=dt.timedelta(0))  # the claim, taken over
    counts = await run_task
    assert swept["no_response"] > 0 and counts["claim_expiring_unsent"] > 0, (swept, counts)
    accepted = fakes["twilio"].accepted_counts()
    assert set(accepted.values()) == {1} and len(accepted) < 10  # stopped within a renewal (0.4 s) of the loss
    for mid in set(ids) - set(accepted):
        assert (await store.db[c.FAILED].find_one({"_id": mid}))["reason"] == "NO_RESPONSE"
    await assert_one_record_each(store, ids)


@pytest.mark.parametrize("provider", ["infobip", "twilio", "cm"])
async def test_refused_credentials_hold_the_list_instead_of_dead_lettering_it(
    settings: Settings, store: Store, fakes: dict[str, Any], provider: str
) -> None:
    """A key the provider refuses (an expired or rotated API key: HTTP 401, CM errorCode 101) is the account's
    trouble, not the messages': they are held (refunded, never dead-lettered) and a provider-error burst alert
    names the refusal, so that fixing the key sends them; the spec's troubleshooting asks "are provider
    credentials valid?" for delayed sends."""
    ids = await seed(store, 12, driver=provider, price=0.01, balance=10.0)
    drivers = drivers_for(fakes)
    drivers[provider] |= fakes[provider].wrong_credentials()
    cfg = {"retry_initial_backoff_seconds": 0.01, "error_burst_threshold": 5}
    coord = Coordinator(await open_trackly(with_executor(settings, drivers, **cfg), store))
    counts = await run(coord)
    assert await ids_in(store, c.FAILED) == [] and not counts.get("sent"), counts
    assert not fakes[provider].ledger
    held = await store.db[c.QUEUED].find({"_id": {"$in": ids}}).to_list(None)
    assert len(held) == 12 and all(d["not_before"] > utcnow() and d["claimed_by"] is None for d in held)
    assert (await store.db[c.ACCOUNTS].find_one({"_id": 1}))["balance"] == pytest.approx(10.0)  # refunded
    [burst] = await store.db[c.EVENTS].find({"kind": "provider_error_burst"}).to_list(None)
    assert burst["data"]["errors"] > 5 and "refused" in burst["data"]["last_error"] and "last: " in burst["message"], (
        burst
    )
    await assert_one_record_each(store, ids)


async def test_a_provider_hold_ends_with_a_recovered_event(
    settings: Settings, store: Store, fakes: dict[str, Any]
) -> None:
    """The alert channel says when the provider accepts again after a hold: one RECOVERED event (condition
    provider_hold) for the list, once its held messages go."""
    ids = await seed(store, 3)
    fakes["infobip"].set_default(Behaviour("429"))
    coord = await executor(settings, store, fakes, retry_max_attempts=2, provider_hold_seconds=7)
    await coord.run_until_idle()
    assert await store.db[c.EVENTS].count_documents({"kind": "provider_hold"}) == 1
    fakes["infobip"].set_default(Behaviour("ok"))
    await store.db[c.QUEUED].update_many({}, {"$set": {"not_before": None, "throttled_until": None, "due_ms": 0}})
    coord.worker.paused.clear()  # (the list's rest in this process: over)
    await coord.run_until_idle()
    await coord.trackly.close(close_store=False)
    assert set(fakes["infobip"].accepted_counts()) == set(ids)
    [event] = await store.db[c.EVENTS].find({"kind": "recovered"}).to_list(None)
    assert event["data"]["condition"] == "provider_hold" and event["data"]["sending_list_id"] == 1


async def test_a_provider_reported_opt_out_survives_a_contacts_import(
    settings: Settings, store: Store, fakes: dict[str, Any]
) -> None:
    """A send the provider refuses because the recipient opted out (Twilio 21610) unsubscribes the contact and keeps
    the number as opted out on its list, like a STOP: the next contacts import saying ``subscribed: yes`` (a nightly
    sync) leaves it unsubscribed (it was undone, and the number texted again)."""
    from trackly_exec.api.contacts import upsert

    from .tracking_support import tri

    ids = await seed(store, 2, driver="twilio")
    number = "+12125550161"  # (a valid number: the import refuses the seeded ones)
    await store.db[c.QUEUED].update_one({"_id": ids[0]}, {"$set": {"to_number": number}})
    doc = await store.db[c.QUEUED].find_one({"_id": ids[0]})
    await store.db[c.CONTACTS].update_one({"_id": doc["contact_id"]}, {"$set": {"phone": number}})
    fakes["twilio"].reject_numbers = {number: "21610"}
    coord = await executor(settings, store, fakes)
    await coord.run_until_idle()
    await coord.trackly.close(close_store=False)
    contact = await store.db[c.CONTACTS].find_one({"_id": doc["contact_id"]})
    assert tri(contact["subscribed"]) is False
    result = await upsert(store, 1, [{"phone": number, "subscribed": True}])
    assert result.updated == 1 and not result.rejected, result
    contact = await store.db[c.CONTACTS].find_one({"_id": doc["contact_id"]})
    assert tri(contact["subscribed"]) is False, contact
