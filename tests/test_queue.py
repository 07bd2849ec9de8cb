"""Queuing: unordered bulk inserts, duplicate (execution, contact) pairs ignored, links only for inserted messages."""

from __future__ import annotations

from typing import Any

from trackly_exec.campaigns.queue import has_pending, insert_batch, pending_count
from trackly_exec.store import constants as c
from trackly_exec.store.client import Store
from trackly_exec.store.models import QueuedTextMessage, new_message_id, utcnow


def _msg(contact_id: int, execution_id: int = 1) -> dict[str, Any]:
    return QueuedTextMessage(
        account_id=1,
        sending_list_id=1,
        execution_id=execution_id,
        contact_id=contact_id,
        from_number="+15550001111",
        to_number="+12122000001",
        body="hi",
        length=2,
        sendtime=utcnow(),
    ).to_doc()


def _link(msg: dict[str, Any]) -> dict[str, Any]:
    return {"_id": new_message_id(), "message_id": msg["_id"], "destination": "https://e.x", "account_id": 1}


async def test_retried_batch_queues_nobody_twice(store: Store) -> None:
    """Re-inserting a batch (a retried evaluation) inserts only the new contacts and their links, and raises nothing."""
    first = [_msg(i) for i in range(1, 6)]
    res = await insert_batch(store.db, first, [_link(m) for m in first])
    assert (res.inserted, res.duplicates, res.links) == (5, 0, 5)
    retry = [_msg(i) for i in range(1, 9)]  # 1-5 again (new message ids), 6-8 new
    res = await insert_batch(store.db, retry, [_link(m) for m in retry])
    assert (res.inserted, res.duplicates, res.links) == (3, 5, 3)
    assert await pending_count(store.db, 1) == 8
    assert await store[c.SHORT_LINKS].count_documents({}) == 8  # no orphan links for the refused duplicates
    ids = {d["_id"] for d in await store[c.QUEUED].find({}, {"_id": 1}).to_list(None)}
    assert {lk["message_id"] for lk in await store[c.SHORT_LINKS].find({}).to_list(None)} == ids
    assert await has_pending(store.db, 1) and not await has_pending(store.db, 2)
    assert (await insert_batch(store.db, [])).inserted == 0


async def test_same_contact_in_another_execution_is_queued(store: Store) -> None:
    """The unique key is (execution, contact): the same contact can be queued by two executions."""
    await insert_batch(store.db, [_msg(1, execution_id=1)])
    res = await insert_batch(store.db, [_msg(1, execution_id=2)])
    assert res.inserted == 1 and await store[c.QUEUED].count_documents({"contact_id": 1}) == 2
