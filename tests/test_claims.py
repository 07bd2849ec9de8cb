"""Claims on queued messages (executor/claims.py): two claims never overlap, and a claim taken over fences its old
holder (that only this module writes the claim fields: test_claims_owner.py)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from trackly_exec.config import Settings
from trackly_exec.executor import claims
from trackly_exec.store import constants as c
from trackly_exec.store.client import Store
from trackly_exec.store.models import QueuedTextMessage, due_ms, epoch_ms, slot_of, utcnow

from .executor_support import ids_in, seed


async def test_lost_claim_cannot_send_or_record(settings: Settings, store: Store) -> None:
    """A claim taken over by someone else fences the old holder: its intent and its delete match nothing."""
    ids = await seed(store, 4)
    db = store.db
    docs = await claims.claim(db, 1, "old:1", utcnow(), 10)
    assert len(docs) == 4
    await db[c.QUEUED].update_many({"_id": {"$in": ids[:2]}}, {"$set": {"claimed_by": "other:2"}})
    held = await claims.mark_intent(db, ids, "old:1", utcnow())
    assert held == set(ids[2:])
    assert await claims.complete(db, ids[:2], "old:1") == 0
    assert len(await ids_in(store, c.QUEUED, {"claimed_by": "other:2", "sending_at": {"$in": [None]}})) == 2


async def test_two_claims_never_overlap(settings: Settings, store: Store) -> None:
    """Two claims of the same list get disjoint sets of messages."""
    await seed(store, 30)
    a = await claims.claim(store.db, 1, "a:1", utcnow(), 20)
    b = await claims.claim(store.db, 1, "b:1", utcnow(), 20)
    assert len(a) == 20 and len(b) == 10 and not {d["_id"] for d in a} & {d["_id"] for d in b}
    QueuedTextMessage.from_doc(a[0])


async def test_due_time_and_slot_written_at_entry(store: Store) -> None:
    """A queued message carries ``due_ms`` = max(sendtime, not_before) and ``slot`` from its id; the due query
    finds exactly the messages whose due time has come, oldest due first."""
    now = utcnow()
    soon = await seed(store, 2, sendtime=now + dt.timedelta(minutes=5))
    ready = await seed(store, 3, first_contact=10, execution_id=2)
    docs = {d["_id"]: d async for d in store.db[c.QUEUED].find({})}
    for mid, d in docs.items():
        assert d["due_ms"] == due_ms(d["sendtime"], d["not_before"]) and d["slot"] == slot_of(mid)
    assert all(docs[m]["due_ms"] > epoch_ms(now) for m in soon)
    found = await claims.find_due(store.db, 1, utcnow(), 10)
    assert sorted(d["_id"] for d in found) == sorted(ready)
    assert [d["due_ms"] for d in found] == sorted(d["due_ms"] for d in found)
    assert await claims.due_lists(store.db, utcnow()) == [1]
    assert await claims.due_lists(store.db, now - dt.timedelta(hours=1)) == []


async def test_due_lists_probe_each_list(store: Store) -> None:
    """The lists with due, unclaimed messages: not one whose messages are all claimed, not one whose messages are
    due later, not a list turned off or that no longer exists (no worker would send its messages); in a share, only
    lists with due messages in it."""
    now = utcnow()
    await seed(store, 3, list_id=1)
    claimed = await seed(store, 2, list_id=2, first_contact=100, execution_id=2)
    await seed(store, 2, list_id=3, first_contact=200, execution_id=3, sendtime=now + dt.timedelta(minutes=5))
    await seed(store, 2, list_id=4, first_contact=300, execution_id=4)
    await store.db[c.QUEUED].update_many({"_id": {"$in": claimed}}, {"$set": {"claimed_by": "x:1"}})
    await store.db[c.SENDING_LISTS].delete_one({"_id": 4})
    assert await claims.due_lists(store.db, utcnow()) == [1]
    await store.db[c.SENDING_LISTS].update_one({"_id": 1}, {"$set": {"active": False}})  # turned off: not probed
    assert await claims.due_lists(store.db, utcnow()) == []
    await store.db[c.SENDING_LISTS].update_one({"_id": 1}, {"$set": {"active": True}})
    assert await claims.due_lists(store.db, now + dt.timedelta(minutes=6)) == [1, 3]
    ids = await seed(store, 1, list_id=5, first_contact=400, execution_id=5)
    inside = (
        claims.share_bounds(0, 2) if claims.in_share(ids[0], claims.share_bounds(0, 2)) else claims.share_bounds(1, 2)
    )
    outside = claims.share_bounds(1, 2) if inside == claims.share_bounds(0, 2) else claims.share_bounds(0, 2)
    assert 5 in await claims.due_lists(store.db, utcnow(), inside)
    assert 5 not in await claims.due_lists(store.db, utcnow(), outside)


async def test_a_hold_moves_the_due_time(store: Store) -> None:
    """Held by the executor (quiet hours, backoff), a message is due again at the hold's end, not before."""
    ids = await seed(store, 3)
    now = utcnow()
    docs = await claims.claim(store.db, 1, "a:1", now, 10)
    until = now + dt.timedelta(minutes=10)
    assert await claims.hold(store.db, "a:1", [(ids[:2], until, {})]) == 2
    assert await claims.release(store.db, "a:1", [(ids[2:], {})]) == 1
    assert len(docs) == 3
    got = {d["_id"]: d async for d in store.db[c.QUEUED].find({})}
    assert all(got[m]["due_ms"] == epoch_ms(until) for m in ids[:2])
    assert got[ids[2]]["due_ms"] == docs[2]["due_ms"]  # a release without a hold keeps it
    assert [d["_id"] for d in await claims.find_due(store.db, 1, utcnow(), 10)] == ids[2:]
    later = until + dt.timedelta(seconds=1)
    assert sorted(d["_id"] for d in await claims.find_due(store.db, 1, later, 10)) == sorted(ids)


async def test_pause_and_resume_keep_the_due_time(store: Store) -> None:
    """Paused, a campaign's messages are not due; resumed, each is due at max(its sendtime, the resume): a message
    held for quiet hours until later stays held."""
    now = utcnow()
    past = await seed(store, 2)
    ahead = await seed(store, 2, first_contact=10, sendtime=now + dt.timedelta(hours=2))
    await store.db[c.EXECUTIONS].insert_one({"_id": 1, "campaign_id": 7})
    assert await claims.pause_campaign(store.db, 7) == 4
    assert await claims.find_due(store.db, 1, now + dt.timedelta(days=3), 10) == []
    resumed_at = utcnow()
    assert await claims.resume_campaign(store.db, 7, resumed_at) == 4
    due = {d["_id"]: d["due_ms"] async for d in store.db[c.QUEUED].find({})}
    assert all(due[m] == epoch_ms(resumed_at) for m in past)
    assert all(due[m] == epoch_ms(now + dt.timedelta(hours=2)) for m in ahead)
    assert sorted(d["_id"] for d in await claims.find_due(store.db, 1, utcnow(), 10)) == sorted(past)


async def test_messages_queued_without_a_due_time_are_backfilled(store: Store) -> None:
    """Messages written by a version before ``due_ms`` and ``slot`` get them when the executor starts."""
    ids = await seed(store, 3)
    later = utcnow() + dt.timedelta(minutes=3)
    await store.db[c.QUEUED].update_many({}, {"$unset": {"due_ms": "", "slot": ""}})
    await store.db[c.QUEUED].update_one({"_id": ids[0]}, {"$set": {"not_before": later}})
    assert await claims.find_due(store.db, 1, utcnow(), 10) == []
    assert await claims.backfill(store.db) == 3
    assert await claims.backfill(store.db) == 0
    assert sorted(d["_id"] for d in await claims.find_due(store.db, 1, utcnow(), 10)) == sorted(ids[1:])
    doc = await store.db[c.QUEUED].find_one({"_id": ids[0]})
    assert doc is not None and doc["due_ms"] == epoch_ms(later) and doc["slot"] == slot_of(ids[0])


async def test_claim_stamps_are_epoch_ms_and_dated_ones_are_converted(store: Store) -> None:
    """The claim time and the send intent are epoch milliseconds (nx-27017 sets a number in SQL, a date in Python);
    claims written as dates by an older version are converted when the executor starts, so recovery's claim TTL
    and intent queries still see them."""
    ids = await seed(store, 4)
    now = utcnow()
    await claims.claim(store.db, 1, "a:1", now, 2)
    assert await claims.mark_intent(store.db, ids[:1], "a:1", now) == {ids[0]}
    got = {d["_id"]: d async for d in store.db[c.QUEUED].find({})}
    assert got[ids[0]]["claimed_at"] == epoch_ms(now) and got[ids[0]]["sending_at"] == epoch_ms(now)
    assert got[ids[1]]["sending_at"] is None and got[ids[2]]["claimed_at"] is None
    old = now - dt.timedelta(hours=1)
    await store.db[c.QUEUED].update_many(
        {"_id": {"$in": ids[2:]}}, {"$set": {"claimed_by": "old:1", "claimed_at": old, "sending_at": old}}
    )
    assert await claims.backfill(store.db) == 2
    got = {d["_id"]: d async for d in store.db[c.QUEUED].find({"claimed_by": "old:1"})}
    assert all(d["claimed_at"] == epoch_ms(old) and d["sending_at"] == epoch_ms(old) for d in got.values())
    expired = await store.db[c.QUEUED].count_documents(
        {**claims.LEASE.expired(now, dt.timedelta(minutes=10)), "sending_at": {"$gt": 0}}
    )
    assert expired == 2


async def test_release_tokens_gives_back_each_claim_on_its_list(store: Store) -> None:
    """Shutdown and a failed batch give back what each token holds on its list, except messages with a send
    intent (their outcome is unknown: recovery records them); other claims stay held."""
    a = await seed(store, 4, list_id=1)
    b = await seed(store, 3, list_id=2, first_contact=10, execution_id=2)
    db, now = store.db, utcnow()
    assert len(await claims.claim(db, 1, "x:a", now, 10)) == 4
    assert len(await claims.claim(db, 2, "x:b", now, 10)) == 3
    other = await seed(store, 2, list_id=1, first_contact=20, execution_id=3)
    assert len(await claims.claim(db, 1, "y:c", now, 10)) == 2
    assert await claims.mark_intent(db, a[:1], "x:a", now) == set(a[:1])
    assert await claims.release_tokens(db, {"x:a": 1, "x:b": 2}) == 3 + 3
    assert set(await ids_in(store, c.QUEUED, {"claimed_by": None})) == set(a[1:]) | set(b)
    assert set(await ids_in(store, c.QUEUED, {"claimed_by": "x:a"})) == set(a[:1])  # a send intent: kept
    assert set(await ids_in(store, c.QUEUED, {"claimed_by": "y:c"})) == set(other)
    assert await claims.release_tokens(db, {}) == 0


async def test_a_partly_taken_claim_reads_back_only_what_it_got(store: Store) -> None:
    """Candidates of which another claim took some meanwhile: the claim holds and returns the rest (read back by
    their ids and its token), never the other claim's."""
    ids = await seed(store, 6)
    db, now = store.db, utcnow()
    candidates = await claims.find_due(db, 1, now, 10)
    await claims.claim_docs(db, [d for d in candidates if d["_id"] in ids[:2]], "other:1", now)
    docs, reads = await claims.claim_docs(db, candidates, "mine:1", now)
    assert [d["_id"] for d in docs] == ids[2:] and reads == 4
    assert all(d["claimed_by"] == "mine:1" for d in docs)


def test_queue_statements_are_served_by_their_index() -> None:
    """On the embedded store (neosqlite with the shim, the queue's indexes as created), SQLite's plan for each of
    the queue's statements uses the index meant for it. A claim once scanned every unclaimed message: the planner
    took an index starting with ``claimed_by`` for its ``claimed_by: None``, over its 1,000 ids."""
    import neosqlite
    from neosqlite.collection.query_engine.crud_operations import CRUDOperationsMixin

    from trackly_exec.store import nxserver

    saved = CRUDOperationsMixin.__dict__["update_many"]
    nxserver.patch_bulk_set()  # the store's update path (undone at the end: other tests compare with neosqlite's)
    try:
        _plans_use_their_indexes(neosqlite.Connection(":memory:"))
    finally:
        CRUDOperationsMixin.update_many = saved  # type: ignore[method-assign]


def _plans_use_their_indexes(conn: Any) -> None:
    from trackly_exec.store.client import INDEXES

    q = conn[c.QUEUED]
    for model in INDEXES[c.QUEUED]:
        spec = model.document
        q.create_index(list(spec["key"].items()), unique=spec.get("unique", False))
    now = utcnow()
    q.insert_many(
        [
            {"_id": f"{i:016x}", "execution_id": 1, "contact_id": i, "sending_list_id": 1, "sending_at": None}
            | {"claimed_by": None, "claimed_at": None, "due_ms": epoch_ms(now), "slot": i}
            for i in range(50)
        ]
    )
    ids = [f"{i:016x}" for i in range(10)]
    plans: dict[str, list[str]] = {}

    def plan(name: str, run: object) -> None:
        sql: list[str] = []
        conn.db.set_trace_callback(sql.append)
        try:
            run()  # type: ignore[operator]
        finally:
            conn.db.set_trace_callback(None)
        statement = next(s for s in sql if s.startswith(("SELECT id", "UPDATE", "DELETE")))
        plans[name] = [row[3] for row in conn.db.execute("EXPLAIN QUERY PLAN " + statement)]

    token = "x:1"
    fenced = claims.LEASE.fence(token, {"_id": {"$in": ids}})
    plan("due", lambda: list(q.find(claims.due_filter(now, 1)).sort([("due_ms", 1)]).limit(5)))
    plan(
        "claim",
        lambda: q.update_many(
            {"_id": {"$in": ids}, "claimed_by": None, "due_ms": {"$eq": epoch_ms(now)}},
            {"$set": claims.LEASE.taken(token, now)},
        ),
    )
    plan("read back", lambda: list(q.find(fenced)))
    plan("intent", lambda: q.update_many(fenced, {"$set": {"sending_at": epoch_ms(now)}}))
    plan(
        "release",
        lambda: q.update_many(
            claims.LEASE.fence(token, {"sending_list_id": {"$eq": 1}, "sending_at": None}),
            {"$set": claims.LEASE.released()},
        ),
    )
    plan(
        "expired",
        lambda: list(q.find({**claims.LEASE.expired(now, dt.timedelta(minutes=30)), "sending_at": {"$gt": 0}})),
    )
    plan(
        "opt-out",
        lambda: q.update_many(
            {"sending_list_id": {"$eq": 1}, "contact_id": {"$in": [3]}, **claims.LEASE.free()},
            {"$set": claims.LEASE.taken("optout:1", now)},
        ),
    )
    plan("delete", lambda: q.delete_many(fenced))
    uses = {name: " ".join(p) for name, p in plans.items()}
    due_index = "USING INDEX idx_queued_text_messages_sending_list_id_claimed_by_due_ms"
    for name in ("claim", "read back", "intent", "delete"):
        assert "USING INDEX idx_queued_text_messages_id " in uses[name], (name, uses[name])
    for name in ("due", "release", "opt-out"):
        assert due_index in uses[name], (name, uses[name])
    assert "USING INDEX idx_queued_text_messages_claimed_at " in uses["expired"], uses["expired"]
