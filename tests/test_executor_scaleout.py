"""Scale-out: N executor processes on one store and one Redis take disjoint shares of the queue (ranges of message
ids), so each due message is read about once and no claim comes back empty; a peer that stops or dies has its share
taken over; without Redis every process takes the whole queue (claims stay safe)."""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import secrets
from typing import Any

from trackly_exec.config import Settings
from trackly_exec.executor import claims
from trackly_exec.executor.coordinator import Coordinator
from trackly_exec.store import constants as c
from trackly_exec.store.client import Store
from trackly_exec.store.models import epoch_ms, slot_of, utcnow

from .executor_support import assert_one_record_each, drivers_for, open_trackly, seed, with_executor


def test_every_id_in_exactly_one_share() -> None:
    rng = random.Random(12)
    ids = [f"{rng.getrandbits(64):016x}" for _ in range(20_000)]
    odd = ["", "0", "0000", "ffff", "ffffffffffffffff", "7fff", "8000", "ABC", "batch:1", "zz", "\u00e9t\u00e9", "-"]
    for n in range(1, 6):
        shares = [claims.share_bounds(k, n) for k in range(n)]
        for mid in ids + odd:
            assert sum(claims.in_share(mid, s) for s in shares) == 1, (mid, n)
        sizes = [sum(claims.in_share(mid, s) for mid in ids) for s in shares]
        assert max(sizes) - min(sizes) < 0.05 * len(ids) / n * n, (n, sizes)  # balanced within 5 % of the total
        assert all(abs(size - len(ids) / n) < 0.03 * len(ids) for size in sizes), (n, sizes)
    assert claims.share_bounds(0, 1) == (None, None)
    assert claims.share_bounds(0, 2) == (None, 0x8000) and claims.share_bounds(1, 2) == (0x8000, None)
    # a hexadecimal id's slot is its first four digits: a share is a contiguous range of ids
    assert claims.in_share("7fffffffffffffff", (None, 0x8000)) and claims.in_share("8000000000000000", (0x8000, None))


async def test_the_store_splits_the_queue_by_share(store: Store) -> None:
    """The due query of each share, run by the store, returns exactly the ids :func:`claims.in_share` gives it."""
    ids = await seed(store, 300, hashed_ids=True)
    extra = ["ABCDEF0123456789", "batch-1", "0", "ffffffffffffffff"]
    template = await store.db[c.QUEUED].find_one({"_id": ids[0]}, {"_id": 0})
    assert template is not None
    await store.db[c.QUEUED].insert_many(
        [{**template, "_id": mid, "slot": slot_of(mid), "contact_id": 10_000 + k} for k, mid in enumerate(extra)]
    )
    now = utcnow()
    for n in (1, 2, 3, 5):
        seen: list[str] = []
        for k in range(n):
            share = claims.share_bounds(k, n)
            got = [d["_id"] for d in await claims.find_due(store.db, 1, now, 10_000, share)]
            assert sorted(got) == sorted(m for m in ids + extra if claims.in_share(m, share))
            assert sorted(await claims.due_lists(store.db, now, share)) == ([1] if got else [])
            seen += got
        assert sorted(seen) == sorted(ids + extra)


async def test_claimed_candidates_stand_for_the_claim_unless_changed_since_read(store: Store) -> None:
    """A claim that took every candidate uses the documents read (no second read), whatever their ``not_before``;
    a candidate another process claimed and released with new fields (and a new ``not_before``) after it was read
    is not claimed on the strength of that stale read."""
    db = store.db
    ids = await seed(store, 6, hashed_ids=True)
    earlier = utcnow() - dt.timedelta(minutes=1)
    # held, due again: an earlier due time than the others' (as a release would leave it)
    await db[c.QUEUED].update_many(
        {"_id": {"$in": ids[:3]}}, {"$set": {"not_before": earlier, "due_ms": epoch_ms(earlier)}}
    )
    now = utcnow()
    docs, reads = await claims.claim_docs(db, await claims.find_due(db, 1, now, 10), "me:1", now)
    assert sorted(d["_id"] for d in docs) == sorted(ids) and reads == 0
    assert await db[c.QUEUED].count_documents({"claimed_by": "me:1"}) == 6
    await claims.release(db, "me:1", [(ids, {})])

    now = utcnow()
    candidates = await claims.find_due(db, 1, now, 10)
    changed = ids[3:5]
    peer, _ = await claims.claim_docs(db, [d for d in candidates if d["_id"] in changed], "peer:1", now)
    assert len(peer) == 2
    await claims.release(db, "peer:1", [(changed, {"not_before": now - dt.timedelta(seconds=1), "attempts": 7})])
    docs, reads = await claims.claim_docs(db, candidates, "me:2", now)
    assert sorted(d["_id"] for d in docs) == sorted(set(ids) - set(changed)) and reads == 4  # read back
    fresh = await claims.claim(db, 1, "me:3", utcnow(), 10)
    assert sorted(d["_id"] for d in fresh) == sorted(changed)
    assert await db[c.QUEUED].count_documents({"_id": {"$in": changed}, "attempts": 7, "claimed_by": "me:3"}) == 2


async def coordinator(settings: Settings, store: Store, fakes: dict[str, Any], name: str, **cfg: Any) -> Coordinator:
    named = settings.model_copy(update={"daemon": settings.daemon.model_copy(update={"instance_name": name})})
    cfg.setdefault("retry_initial_backoff_seconds", 0.01)
    return Coordinator(await open_trackly(with_executor(named, drivers_for(fakes), **cfg), store))


async def seed_two_lists(store: Store, n: int) -> list[str]:
    ids = await seed(store, n // 2, list_id=1, driver="infobip", hashed_ids=True)
    return ids + await seed(
        store, n - n // 2, list_id=2, driver="cm", first_contact=5000, execution_id=2, hashed_ids=True
    )


def accepted(fakes: dict[str, Any]) -> Any:
    return fakes["infobip"].accepted_counts() + fakes["cm"].accepted_counts()


async def test_two_coordinators_share_the_queue_without_collisions(
    settings: Settings, store: Store, fakes: dict[str, Any]
) -> None:
    """Two executors (two instance names) over one store and one Redis burst-send 4,000 messages on two lists:
    each message is sent once, no claim comes back empty, and each message is read about once."""
    ids = await seed_two_lists(store, 4000)
    a = await coordinator(settings, store, fakes, "exec-a", claim_batch_size=200)
    b = await coordinator(settings, store, fakes, "exec-b", claim_batch_size=200)
    try:
        await a.join()
        await b.join()
        assert a.membership is not None
        await a.membership.beat()  # a saw itself alone when it joined; now both (its next heartbeat would too)
        assert {a.share(), b.share()} == {(None, 0x8000), (0x8000, None)}
        ca, cb = await asyncio.gather(a.run_until_idle(), b.run_until_idle())
        counts = accepted(fakes)
        assert all(counts[m] == 1 for m in ids) and sum(counts.values()) == 4000
        assert (await assert_one_record_each(store, ids))[c.SENT] == 4000
        assert ca["sent"] > 0 and cb["sent"] > 0 and ca["sent"] + cb["sent"] == 4000
        assert ca.get("empty_claims", 0) == 0 and cb.get("empty_claims", 0) == 0, (ca, cb)
        reads = ca["queue_reads"] + cb["queue_reads"]
        assert reads <= 1.2 * 4000, (ca, cb)
        # each took exactly its own share
        for coord, share in ((a, (None, 0x8000)), (b, (0x8000, None))):
            sent = {m for m in ids if claims.in_share(m, share)}
            assert coord.counts["sent"] == len(sent)
        assert await store.db[c.QUEUED].count_documents({}) == 0
    finally:
        await a.trackly.close(close_store=False)
        await b.trackly.close(close_store=False)


async def test_a_peer_whose_heartbeat_expired_has_its_share_taken_over(
    settings: Settings, store: Store, fakes: dict[str, Any], redis_client: Any
) -> None:
    """A peer's heartbeat is live: this executor sends its own share only. The heartbeat expires (the peer died):
    the next run takes the rest. Every message once."""
    ids = await seed_two_lists(store, 2000)
    coord = await coordinator(settings, store, fakes, "exec-a", claim_batch_size=150)
    key = c.EXECUTORS_KEY + settings.mongo.database
    far = (int(utcnow().timestamp()) + 3600) * 1000
    await redis_client.zadd(key, {"exec-z": far})  # a peer ranked after us: the upper half is its share
    try:
        first = await coord.run_until_idle()
        mine = {m for m in ids if claims.in_share(m, (None, 0x8000))}
        assert first["sent"] == len(mine) and first.get("empty_claims", 0) == 0
        left = {d["_id"] async for d in store.db[c.QUEUED].find({}, {"_id": 1})}
        assert left == set(ids) - mine
        await redis_client.zadd(key, {"exec-z": 1})  # its heartbeat expired long ago
        second = await coord.run_until_idle()
        assert second["sent"] == 2000
        counts = accepted(fakes)
        assert all(counts[m] == 1 for m in ids) and sum(counts.values()) == 2000
        assert await redis_client.zscore(key, "exec-z") is None  # expired members are dropped
        assert await redis_client.zscore(key, "exec-a") is None  # a finished burst run leaves
    finally:
        await coord.trackly.close(close_store=False)


async def test_an_empty_share_steals_from_a_stuck_peer_after_the_grace(
    settings: Settings, store: Store, fakes: dict[str, Any], redis_client: Any
) -> None:
    """A peer stays live but sends nothing: once this executor's share has been empty for ``steal_after_seconds``
    (its clock, not the wall clock) while the peer's has due messages, it claims from the whole queue."""
    ids = await seed_two_lists(store, 600)
    coord = await coordinator(settings, store, fakes, "exec-a", steal_after_seconds=30)
    key = c.EXECUTORS_KEY + settings.mongo.database
    await redis_client.zadd(key, {"exec-z": (int(utcnow().timestamp()) + 3600) * 1000})
    start = utcnow()
    coord.clock = lambda: start
    try:
        first = await coord.run_until_idle()  # its own share; then the starvation clock starts
        assert 0 < first["sent"] < 600 and not first.get("steals")
        coord.clock = lambda: start + dt.timedelta(seconds=10)
        assert (await coord.run_until_idle())["sent"] == first["sent"]  # still within the grace
        coord.clock = lambda: start + dt.timedelta(seconds=31)
        last = await coord.run_until_idle()
        assert last["sent"] == 600 and last["steals"] == 1
        counts = accepted(fakes)
        assert all(counts[m] == 1 for m in ids)
    finally:
        await coord.trackly.close(close_store=False)


async def test_redis_down_every_executor_takes_the_whole_queue(
    settings: Settings, store: Store, fakes: dict[str, Any], redis_server: Any
) -> None:
    """Redis unreachable: no membership, so both executors poll the whole queue; claims stay disjoint (atomic,
    fenced): every message is sent once."""
    ids = await seed_two_lists(store, 2000)
    a = await coordinator(settings, store, fakes, "exec-a", claim_batch_size=100)
    b = await coordinator(settings, store, fakes, "exec-b", claim_batch_size=100)
    redis_server.stop()
    try:
        ca, cb = await asyncio.gather(a.run_until_idle(), b.run_until_idle())
        assert a.share() is None and b.share() is None
        assert ca["sent"] + cb["sent"] == 2000
        counts = accepted(fakes)
        assert all(counts[m] == 1 for m in ids) and sum(counts.values()) == 2000
        assert (await assert_one_record_each(store, ids))[c.SENT] == 2000
    finally:
        redis_server.start()
        await a.trackly.close(close_store=False)
        await b.trackly.close(close_store=False)


def test_random_ids_are_hex() -> None:
    """The shares are cut on hexadecimal prefixes: message ids are (random or HMAC) lowercase hex."""
    from trackly_exec.store.models import new_message_id

    assert all(set(new_message_id()) <= set("0123456789abcdef") for _ in range(100))
    assert len(secrets.token_hex(8)) == 16


async def test_a_running_executor_is_a_member_until_it_stops(
    settings: Settings, store: Store, fakes: dict[str, Any], redis_client: Any
) -> None:
    """The daemon's executor joins at start (its heartbeat in the executors' set of its database) and leaves at a
    clean stop, so its peers take its share at their next heartbeat rather than after the TTL."""
    coord = await coordinator(settings, store, fakes, "exec-a")
    key = c.EXECUTORS_KEY + settings.mongo.database
    await redis_client.zadd(key, {"exec-z": (int(utcnow().timestamp()) + 3600) * 1000})
    try:
        await coord.start()
        assert await redis_client.zscore(key, "exec-a") is not None
        assert coord.share() == (None, 0x8000)
        await coord.stop(1.0)
        assert await redis_client.zscore(key, "exec-a") is None
        assert await redis_client.zscore(key, "exec-z") is not None
    finally:
        await coord.trackly.close(close_store=False)


async def test_two_executors_on_a_slow_list_book_no_more_than_the_wait_holds(
    settings: Settings, store: Store, fakes: dict[str, Any]
) -> None:
    """A list of 600/min with a 0.4 s wait grants 4 tokens within the wait, and claims one message a batch (0.1 s of
    tokens). Alone an executor works 4 such batches at once; two executors sharing the queue work 2 each, so that
    together they never book past the wait: every message is paced out, none ends RATE_LIMIT_TIMEOUT (each used to
    work 4, and the last ones booked timed out at once)."""
    ids = await seed(store, 24, rate=600, hashed_ids=True)
    cfg = {"rate_limit_wait_seconds": 0.4, "rate_limit_claim_seconds": 0.1}
    a = await coordinator(settings, store, fakes, "exec-a", **cfg)
    b = await coordinator(settings, store, fakes, "exec-b", **cfg)
    try:
        info = await a.list_info(1)
        assert info is not None
        assert a.executors() == 1 and a.worker.claim_limit(info.doc) == 1  # alone, before the heartbeats
        assert a.worker.batches_per_list(info.doc) == 4
        await a.join()
        await b.join()
        assert a.membership is not None
        await a.membership.beat()
        assert a.executors() == b.executors() == 2
        assert a.worker.batches_per_list(info.doc) == b.worker.batches_per_list(info.doc) == 2
        ca, cb = await asyncio.gather(a.run_until_idle(), b.run_until_idle())
        assert await store.db[c.FAILED].count_documents({}) == 0, (ca, cb)
        assert ca["sent"] + cb["sent"] == 24 and ca["sent"] > 0 and cb["sent"] > 0
        counts = fakes["infobip"].accepted_counts()
        assert all(counts[m] == 1 for m in ids)
        await assert_one_record_each(store, ids)
    finally:
        await a.trackly.close(close_store=False)
        await b.trackly.close(close_store=False)
