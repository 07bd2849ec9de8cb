"""The lease helper (store.lease) against the real test store: claims, fencing, renewal, expiry takeover, races."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import pytest

from trackly_exec.store.client import Store
from trackly_exec.store.lease import Lease, new_token

T0 = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)
TTL = dt.timedelta(minutes=5)
STAMPED = Lease("claimed_by", stamp="claimed_at", ttl=TTL)
DEADLINE = Lease("claimed_by", until="next_attempt_at", ttl=TTL)


async def _seed(store: Store, n: int, **fields: Any) -> Any:
    col = store.db["lease_test"]
    await col.insert_many([{"_id": f"d{i:03d}", "claimed_by": None, **fields} for i in range(n)])
    return col


def test_tokens_are_distinct_and_name_the_instance() -> None:
    a, b = new_token("host-1"), new_token("host-1")
    assert a != b and a.startswith("host-1:") and b.startswith("host-1:")


def test_a_lease_has_one_kind_of_time() -> None:
    with pytest.raises(ValueError):
        Lease("x", stamp="a", until="b", ttl=TTL)
    with pytest.raises(ValueError):
        Lease("x", stamp=None, until=None)
    with pytest.raises(ValueError):
        Lease("x", stamp=None, until="b")  # a deadline needs its ttl
    with pytest.raises(ValueError):
        Lease("x", stamp="a").expired(T0)  # no ttl: it never expires unless the caller says when


async def test_claim_fences_and_releases(store: Store) -> None:
    """A claim reads back exactly what it got; fenced writes by another token match nothing."""
    col = await _seed(store, 10)
    token = new_token("a")
    got = await STAMPED.claim(col, {"_id": {"$in": ["d000", "d001", "d002"]}}, token, T0)
    assert sorted(d["_id"] for d in got) == ["d000", "d001", "d002"]
    assert all(d["claimed_by"] == token and d["claimed_at"] == T0 for d in got)
    # a second claim of the same documents gets nothing: they are held
    assert await STAMPED.claim(col, {"_id": {"$in": ["d000", "d001"]}}, new_token("b"), T0) == []
    # fencing: another token updates, renews, releases and deletes nothing
    other = new_token("b")
    assert await STAMPED.update(col, other, {}, {"$set": {"x": 1}}) == 0
    assert await STAMPED.renew(col, other, {}, T0) == 0
    assert await STAMPED.release(col, other) == 0
    assert await STAMPED.delete(col, other) == 0
    # the holder does
    assert await STAMPED.update(col, token, {"_id": "d000"}, {"$set": {"x": 1}}, renew_at=T0 + TTL) == 1
    d0 = await col.find_one({"_id": "d000"})
    assert d0["x"] == 1 and d0["claimed_at"] == T0 + TTL
    assert await STAMPED.delete(col, token, {"_id": "d001"}) == 1
    assert await STAMPED.release(col, token, note="back") == 2
    assert await col.count_documents({"claimed_by": token}) == 0
    d2 = await col.find_one({"_id": "d002"})
    assert d2["claimed_at"] is None and d2["note"] == "back"


async def test_a_lost_lease_matches_nothing(store: Store) -> None:
    """Taken over after expiry, the old holder's fenced writes match nothing; the new holder's do."""
    col = await _seed(store, 3)
    old, new = new_token("old"), new_token("new")
    assert len(await STAMPED.claim(col, {}, old, T0)) == 3
    # not expired yet: a takeover gets nothing
    assert await STAMPED.claim(col, {}, new, T0 + TTL, expired_only=True) == []
    got = await STAMPED.claim(col, {}, new, T0 + TTL + dt.timedelta(seconds=1), expired_only=True)
    assert len(got) == 3
    assert await STAMPED.update(col, old, {}, {"$set": {"sent": True}}) == 0
    assert await STAMPED.delete(col, old) == 0
    assert await STAMPED.release(col, old) == 0
    assert await col.count_documents({"sent": True}) == 0
    assert await STAMPED.update(col, new, {}, {"$set": {"sent": True}}) == 3


async def test_renewal_keeps_a_lease_from_expiring(store: Store) -> None:
    col = await _seed(store, 2)
    token = new_token("a")
    await STAMPED.claim(col, {}, token, T0)
    assert await STAMPED.renew(col, token, {"_id": "d000"}, T0 + TTL) == 1
    later = T0 + TTL + dt.timedelta(seconds=1)
    got = await STAMPED.claim(col, {}, new_token("b"), later)  # free or expired: only d001 expired
    assert [d["_id"] for d in got] == ["d001"]


async def test_release_expired(store: Store) -> None:
    col = await _seed(store, 4)
    await STAMPED.claim(col, {"_id": {"$in": ["d000", "d001"]}}, new_token("a"), T0)
    await STAMPED.claim(col, {"_id": {"$in": ["d002"]}}, new_token("b"), T0 + TTL)
    assert await STAMPED.release_expired(col, T0 + TTL + dt.timedelta(seconds=1)) == 2
    assert await col.count_documents({"claimed_by": {"$eq": None}}) == 3


async def test_deadline_lease_expires_into_due(store: Store) -> None:
    """A deadline lease (the outbox's ``next_attempt_at``): free documents are claimable once due; a claim pushes
    the deadline by the ttl, after which another token takes it over."""
    col = await _seed(store, 2, next_attempt_at=T0)
    col2 = store.db["lease_test"]
    await col2.update_one({"_id": "d001"}, {"$set": {"next_attempt_at": T0 + dt.timedelta(hours=1)}})
    a = new_token("a")
    got = await DEADLINE.claim(col, {}, a, T0)
    assert [d["_id"] for d in got] == ["d000"] and got[0]["next_attempt_at"] == T0 + TTL
    assert await DEADLINE.claim(col, {}, new_token("b"), T0 + TTL - dt.timedelta(seconds=1)) == []
    b = new_token("b")
    got = await DEADLINE.claim(col, {"_id": "d000"}, b, T0 + TTL)
    assert [d["claimed_by"] for d in got] == [b]
    assert await DEADLINE.update(col, a, {}, {"$set": {"status": "delivered"}}) == 0
    assert await DEADLINE.release(col, b, next_attempt_at=T0) == 1
    assert (await col.find_one({"_id": "d000"}))["next_attempt_at"] == T0


async def test_claim_one_takes_over_one_expired_document(store: Store) -> None:
    col = await _seed(store, 2, attempts=1)
    await STAMPED.claim(col, {}, "dead-process", T0)
    later = T0 + TTL + dt.timedelta(seconds=1)
    first = await STAMPED.claim_one(col, {}, "me", later, expired_only=True, inc={"attempts": 1})
    second = await STAMPED.claim_one(col, {}, "me", later, expired_only=True, inc={"attempts": 1})
    assert first is not None and second is not None and first["_id"] != second["_id"]
    assert first["claimed_by"] == "me" and first["attempts"] == 2 and first["claimed_at"] == later
    assert await STAMPED.claim_one(col, {}, "me", later, expired_only=True) is None


@pytest.mark.parametrize("lease", [STAMPED, DEADLINE], ids=["stamp", "deadline"])
async def test_racing_claims_get_disjoint_sets(store: Store, lease: Lease) -> None:
    """Several claims racing for the same documents: each document goes to exactly one of them."""
    col = await _seed(store, 300, next_attempt_at=T0)
    ids = [f"d{i:03d}" for i in range(300)]
    tokens = [new_token(f"p{i}") for i in range(4)]
    got = await asyncio.gather(*(lease.claim(col, {"_id": {"$in": ids}}, t, T0) for t in tokens))
    sets = [{d["_id"] for d in docs} for docs in got]
    for i, s in enumerate(sets):
        assert all(d["claimed_by"] == tokens[i] for d in got[i])
        for other in sets[i + 1 :]:
            assert not s & other
    assert set().union(*sets) == set(ids)


async def test_claim_beside_in_conditions(store: Store) -> None:
    """A claim whose query has several ``$in`` conditions (opt-out, erasure) finds the free documents (nx-27017
    matches nothing with a bare ``None`` there)."""
    col = await _seed(store, 6, group=1)
    ids = ["d001", "d002", "d004"]
    got = await STAMPED.claim(col, {"group": {"$in": [1]}, "_id": {"$in": ids}}, new_token("a"), T0)
    assert sorted(d["_id"] for d in got) == ids
    assert await col.count_documents(STAMPED.free()) == 3
