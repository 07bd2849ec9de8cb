"""Contacts bulk upsert against the real store."""

from __future__ import annotations

import asyncio

from trackly_exec.api.contacts import upsert
from trackly_exec.store import constants as c
from trackly_exec.store.client import Store


def phone(n: int) -> str:
    return f"+1212{2000000 + n:07d}"


async def test_large_batch_inserts_then_updates(store: Store) -> None:
    """2,500 rows insert across batches with unique integer ids; the same rows again are all updates."""
    rows = [{"phone": phone(i), "first_name": f"n{i}", "attributes": {"i": i}} for i in range(2500)]
    r = await upsert(store, 1, rows)
    assert (r.inserted, r.updated, r.rejected) == (2500, 0, [])
    ids = {d["_id"] async for d in store[c.CONTACTS].find({"sending_list_id": 1}, {"_id": 1})}
    assert len(ids) == 2500 and all(isinstance(i, int) for i in ids)
    r2 = await upsert(store, 1, [{"phone": p["phone"], "in_workflow": True} for p in rows])
    assert (r2.inserted, r2.updated) == (0, 2500)
    doc = await store[c.CONTACTS].find_one({"phone": phone(7)})
    # nx-27017 stores a $set boolean as 1/0 (queries on true/false still match it), hence bool().
    assert (
        doc is not None
        and bool(doc["in_workflow"]) is True
        and doc["first_name"] == "n7"
        and doc["attributes"] == {"i": 7}
    )


async def test_same_phone_twice_in_one_request_merges(store: Store) -> None:
    """Two rows with the same normalised phone make one contact; the later row's fields win."""
    r = await upsert(
        store,
        1,
        [
            {"phone": "(212) 200-0001", "first_name": "A", "timezone": "America/Chicago"},
            {"phone": "+1 212 200 0001", "first_name": "B"},
        ],
    )
    assert (r.inserted, r.updated) == (1, 1)
    docs = [d async for d in store[c.CONTACTS].find({})]
    assert len(docs) == 1 and docs[0]["first_name"] == "B" and docs[0]["timezone"] == "America/Chicago"


async def test_lists_are_separate(store: Store) -> None:
    """The same phone on two sending lists is two contacts."""
    await upsert(store, 1, [{"phone": phone(1)}])
    r = await upsert(store, 2, [{"phone": phone(1)}])
    assert r.inserted == 1 and await store[c.CONTACTS].count_documents({}) == 2


async def test_rejects_keep_good_rows(store: Store) -> None:
    """Bad rows are reported with index and reason; every good row is stored."""
    rows = [{"phone": phone(i)} for i in range(10)]
    rows[3] = {"phone": "12"}
    rows[6] = {"phone": phone(6), "subscribed": "maybe"}
    rows[8] = {"phone": phone(8), "attributes": {"bad key": 1}}
    r = await upsert(store, 1, rows)
    assert r.inserted == 7 and [x.index for x in r.rejected] == [3, 6, 8]
    assert "invalid phone" in r.rejected[0].reason and "subscribed" in r.rejected[1].reason
    assert await store[c.CONTACTS].count_documents({}) == 7


async def test_concurrent_upserts_do_not_duplicate(store: Store) -> None:
    """Two simultaneous imports of overlapping phones leave one contact per phone and count each row once."""
    a = [{"phone": phone(i)} for i in range(300)]
    b = [{"phone": phone(i)} for i in range(200, 500)]
    r1, r2 = await asyncio.gather(upsert(store, 1, a), upsert(store, 1, b))
    assert r1.inserted + r1.updated + r2.inserted + r2.updated == 600
    assert r1.inserted + r2.inserted == 500
    assert await store[c.CONTACTS].count_documents({}) == 500


async def test_last_sent_at_is_imported_in_utc(store: Store) -> None:
    """``last_sent_at`` (when another system last texted the number: the frequency cap counts it) is stored as a
    UTC time: with an offset as given, without one as UTC; by insert and by update; a text that is no date is a
    rejected row naming the field, the other rows kept."""
    import datetime as dt

    r = await upsert(
        store,
        1,
        [
            {"phone": phone(1), "last_sent_at": "2026-11-30T10:00:00+01:00"},
            {"phone": phone(2), "last_sent_at": "2026-11-30 10:00"},
            {"phone": phone(3), "last_sent_at": "yesterday"},
            {"phone": phone(4)},
        ],
    )
    assert (r.inserted, [x.index for x in r.rejected]) == (3, [2]) and "last_sent_at" in r.rejected[0].reason
    got = {d["phone"]: d["last_sent_at"] async for d in store[c.CONTACTS].find({}, {"phone": 1, "last_sent_at": 1})}
    assert got[phone(1)] == dt.datetime(2026, 11, 30, 9, 0, tzinfo=dt.UTC)
    assert got[phone(2)] == dt.datetime(2026, 11, 30, 10, 0, tzinfo=dt.UTC)
    assert got[phone(4)] is None
    await upsert(store, 1, [{"phone": phone(4), "last_sent_at": "2026-12-01T08:30:00Z"}, {"phone": phone(1)}])
    got = {d["phone"]: d["last_sent_at"] async for d in store[c.CONTACTS].find({}, {"phone": 1, "last_sent_at": 1})}
    assert got[phone(4)] == dt.datetime(2026, 12, 1, 8, 30, tzinfo=dt.UTC)
    assert got[phone(1)] == dt.datetime(2026, 11, 30, 9, 0, tzinfo=dt.UTC)  # a row without it leaves it as it was


async def test_an_id_another_tool_took_is_not_an_update(store: Store) -> None:
    """Contacts written by another tool with ids the sequence has not reached: new contacts whose reserved id is
    taken are inserted under fresh ids past the highest in use (they were counted as updated and lost), and an
    existing phone is still an update."""
    await upsert(store, 1, [{"phone": phone(1)}])
    seq = (await store[c.COUNTERS].find_one({"_id": c.CONTACTS}))["seq"]
    await store[c.CONTACTS].insert_many(
        [{"_id": seq + k, "sending_list_id": 2, "phone": f"(201) 555-{7770 + k}"} for k in range(1, 15)]
    )
    r = await upsert(store, 1, [{"phone": phone(2)}, {"phone": phone(3)}, {"phone": phone(1), "first_name": "x"}])
    assert (r.inserted, r.updated, r.rejected) == (2, 1, [])
    docs = {d["phone"]: d async for d in store[c.CONTACTS].find({"sending_list_id": 1})}
    assert sorted(docs) == [phone(1), phone(2), phone(3)] and docs[phone(1)]["first_name"] == "x"
    assert docs[phone(2)]["_id"] > seq + 14 and docs[phone(3)]["_id"] > seq + 14
