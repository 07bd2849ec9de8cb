"""Clock skew between VMs (fault matrix row 8): every decision is timed on the store's clock, not the host's.

A host clock two hours ahead is simulated by the :class:`StoreClock`'s ``wall`` (this host's clock); the store, a
real nx-27017, keeps the true time. Each case also shows what the host's own clock (``daemon.clock = "local"``)
would have decided, so the test proves the store clock is what holds the promise.
"""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

import pytest

from trackly_exec.app import Trackly
from trackly_exec.campaigns.scheduler import Scheduler
from trackly_exec.config import Settings
from trackly_exec.executor import claims, recovery
from trackly_exec.executor.coordinator import Coordinator
from trackly_exec.operations.clocksync import ClockSync
from trackly_exec.operations.metrics import StoreFigures, make_registry
from trackly_exec.store import constants as c
from trackly_exec.store.client import Store
from trackly_exec.store.clock import StoreClock
from trackly_exec.store.models import utcnow

from .campaign_fixtures import contact, register_echo, seed_campaign
from .executor_support import assert_one_record_each, executor, seed, zone_at_hour

AHEAD = 2 * 3600.0  # seconds


async def run(coord: Coordinator) -> dict[str, int]:
    try:
        return await coord.run_until_idle()
    finally:
        await coord.trackly.close(close_store=False)


def ahead() -> float:
    return time.time() + AHEAD


async def skew(trackly: Trackly, seconds: float = AHEAD) -> None:
    """This process's host clock runs ``seconds`` ahead; the daemon measures the store's clock again."""
    trackly.store_clock.wall = lambda: time.time() + seconds
    await trackly.sync_clock()


def local_clock(trackly: Trackly, seconds: float = AHEAD) -> None:
    """What ``daemon.clock = "local"`` on that host would read."""
    trackly.clock = lambda: utcnow() + dt.timedelta(seconds=seconds)


async def test_the_store_clock_measures_the_hosts_offset(store: Store) -> None:
    same = StoreClock()
    assert abs(await same.sync(store.db)) < 0.05 and same.error is not None and same.error < 0.05
    skewed = StoreClock(wall=ahead)
    offset = await skewed.sync(store.db)
    assert abs(offset - AHEAD) < 0.05
    assert abs((skewed.now() - utcnow()).total_seconds()) < 0.05  # the store's time, not the host's
    assert skewed.now().tzinfo is not None and skewed.now().microsecond % 1000 == 0


async def test_the_daemon_times_its_decisions_on_the_store_clock_by_default(trackly: Trackly) -> None:
    assert trackly.settings.daemon.clock == "store" and trackly.store_clock.synced_at is not None
    await skew(trackly)
    assert abs((trackly.now() - utcnow()).total_seconds()) < 0.05
    local = await Trackly.open(
        trackly.settings.model_copy(update={"daemon": trackly.settings.daemon.model_copy(update={"clock": "local"})}),
        store=trackly.store,
    )
    try:
        assert local.store_clock.synced_at is None and abs((local.now() - utcnow()).total_seconds()) < 0.05
    finally:
        await local.close(close_store=False)


async def test_a_host_two_hours_ahead_does_not_take_over_live_claims(
    settings: Settings, store: Store, fakes: dict[str, Any]
) -> None:
    """Another daemon claimed a batch a moment ago; this host's recovery sweep (claim TTL 10 min) must see a
    fresh claim, not one two hours old: nothing released, nothing dead-lettered NO_RESPONSE."""
    ids = await seed(store, 20)
    live = await claims.claim(store.db, 1, "live-token", utcnow(), 10)
    await claims.mark_intent(store.db, [d["_id"] for d in live[:5]], "live-token", utcnow())
    coord = await executor(settings, store, fakes)
    try:
        await skew(coord.trackly)
        swept = await recovery.sweep(coord.trackly)
        assert swept["released"] == 0 and swept["no_response"] == 0, swept
        assert await store.db[c.QUEUED].count_documents({"claimed_by": "live-token"}) == 10
        local_clock(coord.trackly)  # the hazard the store clock removes
        taken = await recovery.sweep(coord.trackly)
        assert taken["released"] == 5 and taken["no_response"] == 5, taken
    finally:
        await coord.trackly.close(close_store=False)
    await assert_one_record_each(store, ids)


async def test_a_host_two_hours_ahead_sends_fresh_messages_and_keeps_quiet_hours(
    settings: Settings, store: Store, fakes: dict[str, Any]
) -> None:
    """Fresh messages are not STALE to it, and a contact at 06:xx local (08:xx by the host's clock) is held."""
    fresh = await seed(store, 5)
    early = await seed(store, 3, contact_tz=zone_at_hour(6), first_contact=100, execution_id=2)
    coord = await executor(settings, store, fakes)
    await skew(coord.trackly)
    counts = await run(coord)
    assert counts.get("sent") == 5 and not counts.get("stale"), counts
    assert set(fakes["infobip"].accepted_counts()) == set(fresh)
    held = await store.db[c.QUEUED].find({"_id": {"$in": early}}).to_list(None)
    assert len(held) == 3 and all(d["not_before"] > utcnow() + dt.timedelta(minutes=1) for d in held)
    await assert_one_record_each(store, fresh + early)

    # the same host on its own clock: the fresh messages look two hours late, the early contacts awake
    more = await seed(store, 4, first_contact=200, execution_id=3)
    await store.db[c.QUEUED].update_many({"_id": {"$in": early}}, {"$set": {"not_before": None}})
    coord = await executor(settings, store, fakes)
    local_clock(coord.trackly)
    await run(coord)
    stale = {d["_id"] async for d in store.db[c.FAILED].find({"reason": "STALE"}, {"_id": 1})}
    assert set(more) <= stale


@pytest.mark.parametrize("clock", ["store", "local"])
async def test_a_host_two_hours_ahead_starts_no_campaign_early(trackly: Trackly, clock: str) -> None:
    """A one-off campaign due in 30 minutes is left alone by a host whose clock says it is 90 minutes late (on its
    own clock it would be given up as too late, or started early)."""
    register_echo()
    at = utcnow() + dt.timedelta(minutes=30)
    await seed_campaign(trackly.store, contacts=[contact(i) for i in range(1, 4)], campaign_kw={"schedule": {"at": at}})
    await skew(trackly)
    if clock == "local":
        local_clock(trackly)
    await Scheduler(trackly).run_until_idle()
    executions = await trackly.db[c.EXECUTIONS].count_documents({})
    skipped = await trackly.db[c.EVENTS].count_documents({"kind": "occurrence_skipped"})
    if clock == "store":
        assert executions == 0 and skipped == 0
        assert (await trackly.db[c.CAMPAIGNS].find_one({"_id": 1}))["status"] == "active"
    else:
        assert executions + skipped > 0


async def test_a_skewed_host_is_reported_once(trackly: Trackly) -> None:
    """Beyond ``clock_skew_warn_seconds`` the clock-sync component publishes one CLOCK_SKEW alert (not one per
    sync) and /metrics exports the offset."""
    sync = ClockSync(trackly)
    await skew(trackly)
    await sync.start()
    try:
        await sync.tick()
        await sync.tick()
        events = await trackly.db[c.EVENTS].find({"kind": "clock_skew"}).to_list(None)
        assert len(events) == 1 and abs(events[0]["data"]["offset_seconds"] - AHEAD) < 0.05
        assert events[0]["data"]["instance"] == trackly.instance
        registry, _ = make_registry(trackly, StoreFigures(trackly, 60.0))
        assert abs(registry.get_sample_value("trackly_clock_offset_seconds") - AHEAD) < 0.05
        await skew(trackly, 0.0)
        await sync.tick()
        assert not sync.skewed
    finally:
        await sync.stop(1.0)
