"""The store client (store/client.py): integer id sequences (the store itself is exercised by every test that
takes the ``store`` fixture; the embedded server: test_nxserver.py, test_daemon.py)."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import pytest
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import OperationFailure

from trackly_exec.store import constants as c
from trackly_exec.store.client import INDEXES, OBSOLETE_INDEXES, Store, count, find_by_ids
from trackly_exec.store.models import utcnow


async def test_next_ids(store: Store) -> None:
    """Id sequences hand out consecutive, never-repeated ranges."""
    assert await store.next_ids("x", 3) == [1, 2, 3]
    assert await store.next_id("x") == 4


async def test_find_by_ids_reads_whole_documents_across_batches(store: Store) -> None:
    """find_by_ids answers the documents of the ids that exist (whole, datetimes tz-aware as every other read),
    also when the server cuts the answer into several batches; no ids: no round trip, nothing."""
    when = dt.datetime(2026, 11, 29, 10, 0, 5, tzinfo=dt.UTC)
    await store.db["things"].insert_many([{"_id": f"t{i:04d}", "n": i, "at": when} for i in range(450)])
    ids = [f"t{i:04d}" for i in range(450)] + ["missing"]
    docs = await find_by_ids(store.db, "things", ids)
    assert sorted(d["_id"] for d in docs) == ids[:-1]
    assert sorted(d["_id"] for d in await find_by_ids(store.db, "things", ids, batch_size=100)) == ids[:-1]
    assert {d["n"] for d in docs} == set(range(450)) and all(d["at"] == when and d["at"].tzinfo for d in docs)
    assert await find_by_ids(store.db, "things", ["t0007"]) == [{"_id": "t0007", "n": 7, "at": when}]
    assert await find_by_ids(store.db, "things", []) == []


async def test_start_up_drops_the_indexes_no_query_uses_any_more(store: Store) -> None:
    """A store created by an earlier version keeps indexes no query uses (the queue's sendtime ones): every claim
    and send intent rewrote them. Start-up drops them, keeps every index of the current set, and does it once."""
    queue = store.db[c.QUEUED]
    await queue.create_index([("sendtime", 1)])
    await queue.create_index([("sending_list_id", 1), ("claimed_by", 1), ("sendtime", 1)])
    await store.db[c.OUTBOX].create_index([("status", 1), ("next_attempt_at", 1)])

    async def keys(name: str) -> list[list[tuple[str, int]]]:
        return [[(k, int(v)) for k, v in ix["key"].items()] async for ix in await store.db[name].list_indexes()]

    assert [("sendtime", 1)] in await keys(c.QUEUED)
    for _ in range(2):
        await store.ensure_indexes()
        for name in (c.QUEUED, c.OUTBOX, c.CONTACTS):
            now = await keys(name)
            assert not [k for k in now if k in OBSOLETE_INDEXES.get(name, [])]
            assert all([(k, int(v)) for k, v in m.document["key"].items()] in now for m in INDEXES[name])


async def test_two_daemons_starting_together_drop_an_obsolete_index_once(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two start-ups at the same time both see the obsolete index; the one that drops it second starts anyway.
    MongoDB answers that second drop IndexNotFound (nx-27017 answers ok): the drop is made to answer as MongoDB
    does once the index is gone."""
    await store.db[c.QUEUED].create_index([("sendtime", 1)])
    real = AsyncCollection.drop_index
    refused: list[str] = []

    async def drop_index(self: AsyncCollection[Any], name: str, *args: Any, **kwargs: Any) -> None:
        await real(self, name, *args, **kwargs)  # the other daemon's drop
        refused.append(name)
        raise OperationFailure(f"index not found with name [{name}]", code=27)

    monkeypatch.setattr(AsyncCollection, "drop_index", drop_index)
    await asyncio.gather(store.ensure_indexes(), store.ensure_indexes())
    keys = [list(ix["key"].items()) async for ix in await store.db[c.QUEUED].list_indexes()]
    assert [("sendtime", 1)] not in keys
    assert refused  # the refusal was met, and start-up went on


async def test_count_command_counts_what_count_documents_counts(store: Store) -> None:
    """The shapes the daemon counts (equality on a number, a string; a date range, alone and with an
    equality; nothing at all) answer the same with the ``count`` command (store.client.count) as with
    ``count_documents``, which nx-27017 runs as a Python aggregation over every document (and logs two warnings
    for)."""
    now = utcnow()
    docs = [
        {
            "_id": f"d{i}",
            "campaign_id": i % 3,
            "status": ["pending", "dead", None][i % 3],
            "at": now - dt.timedelta(minutes=i * 30),
            "n": i,
        }
        for i in range(12)
    ] + [{"_id": "bare"}]
    await store.db["counted"].insert_many(docs)
    await store.db["counted"].create_index("at")
    shapes: list[dict[str, object]] = [
        {},
        {"campaign_id": 1},
        {"campaign_id": 7},
        {"status": "pending"},
        {"at": {"$gte": now - dt.timedelta(hours=2)}},
        {"at": {"$lte": now - dt.timedelta(hours=2)}},
        {"status": "pending", "at": {"$lte": now - dt.timedelta(hours=1)}},
        {"campaign_id": 2, "at": {"$gte": now - dt.timedelta(hours=3)}},
    ]
    for shape in shapes:
        assert await count(store.db, "counted", shape) == await store.db["counted"].count_documents(shape), shape
    # None matches a missing field too, as on MongoDB (nx-27017's count_documents answers 1 here)
    assert await count(store.db, "counted", {"status": None}) == 5


def test_retryable_writes_only_where_a_server_has_them(store: Store) -> None:
    """A standalone server (the embedded store here) is asked for no retryable writes (PyMongo would not retry
    there, and asking costs CPU per write); a replica-set member or a mongos keeps mongo.retry_writes."""
    from trackly_exec.store.client import _standalone

    assert store.client.options.retry_writes is False
    assert _standalone({"isWritablePrimary": True, "maxWireVersion": 17})
    assert not _standalone({"isWritablePrimary": True, "setName": "rs0"})
    assert not _standalone({"isWritablePrimary": True, "msg": "isdbgrid"})
