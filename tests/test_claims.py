"""Claims on queued messages (executor/claims.py): two claims never overlap, and a claim taken over fences its old
holder (that only this module writes the claim fields: test_claims_owner.py)."""

from __future__ import annotations

from trackly_exec.config import Settings
from trackly_exec.executor import claims
from trackly_exec.store import constants as c
from trackly_exec.store.client import Store
from trackly_exec.store.models import QueuedTextMessage, utcnow

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
