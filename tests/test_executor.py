"""The executor in one process: the happy path on each provider fake, records, events (the claims themselves:
test_claims.py)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from trackly_exec.config import Settings
from trackly_exec.store import constants as c
from trackly_exec.store.client import Store
from trackly_exec.store.models import FailedMessage, MessageSent, epoch_ms, utcnow
from trackly_exec.testing.fakes.control import Behaviour

from .executor_support import FAKES, assert_one_record_each, executor, ids_in, seed


@pytest.mark.parametrize("provider", sorted(FAKES))
async def test_sends_every_due_message_once(
    settings: Settings, store: Store, fakes: dict[str, Any], provider: str
) -> None:
    """Every due message is accepted by the provider once and recorded as one MessageSent with all its fields."""
    ids = await seed(store, 120, driver=provider, price=0.01, balance=10.0)
    coord = await executor(settings, store, fakes, claim_batch_size=50)
    counts = await coord.run_until_idle()
    await coord.trackly.close(close_store=False)
    assert counts["sent"] == 120
    ledger = fakes[provider].accepted_counts()
    assert all(ledger[m] == 1 for m in ids) and len(ledger) == 120
    split = await assert_one_record_each(store, ids)
    assert split[c.SENT] == 120
    doc = await store.db[c.SENT].find_one({"_id": ids[0]})
    sent = MessageSent.from_doc(doc)
    assert sent.submitted is True and sent.delivered is None and sent.provider == provider
    assert sent.provider_message_id and sent.cost == pytest.approx(0.01) and sent.execution_id == 1
    acc = await store.db[c.ACCOUNTS].find_one({"_id": 1})
    assert acc["balance"] == pytest.approx(10.0 - 1.2)


async def test_not_due_messages_stay_queued(settings: Settings, store: Store, fakes: dict[str, Any]) -> None:
    """A message whose sendtime or backoff has not come is neither claimed nor sent."""
    later = await seed(store, 3, sendtime=utcnow() + dt.timedelta(minutes=5))
    held = await seed(store, 2, first_contact=100, execution_id=2)
    until = utcnow() + dt.timedelta(minutes=5)
    await store.db[c.QUEUED].update_many(
        {"_id": {"$in": held}}, {"$set": {"not_before": until, "due_ms": epoch_ms(until)}}
    )
    coord = await executor(settings, store, fakes)
    counts = await coord.run_until_idle()
    await coord.trackly.close(close_store=False)
    assert counts.get("sent", 0) == 0 and counts.get("claimed", 0) == 0
    assert fakes["infobip"].summary()["accepted"] == 0
    assert sorted(await ids_in(store, c.QUEUED, {"claimed_by": {"$in": [None]}})) == sorted(later + held)


async def test_a_hold_written_without_its_due_time_is_kept(
    settings: Settings, store: Store, fakes: dict[str, Any]
) -> None:
    """The due query reads ``due_ms``; the send-time checks read the sendtime and the hold themselves: a hold
    written by hand without its due time is claimed, given back until its end (``held.not_due``), not sent."""
    held = await seed(store, 2)
    until = utcnow() + dt.timedelta(minutes=5)
    await store.db[c.QUEUED].update_many({"_id": {"$in": held}}, {"$set": {"not_before": until}})
    coord = await executor(settings, store, fakes)
    counts = await coord.run_until_idle()
    await coord.trackly.close(close_store=False)
    assert counts.get("sent", 0) == 0 and counts["held.not_due"] == 2
    assert fakes["infobip"].summary()["accepted"] == 0
    docs = [d async for d in store.db[c.QUEUED].find({})]
    assert len(docs) == 2 and all(d["claimed_by"] is None and d["due_ms"] == epoch_ms(until) for d in docs)


async def test_fifo_within_a_list(settings: Settings, store: Store, fakes: dict[str, Any]) -> None:
    """Messages of a list are sent oldest sendtime first."""
    now = utcnow()
    first = await seed(store, 5, sendtime=now - dt.timedelta(minutes=2))
    second = await seed(store, 5, sendtime=now - dt.timedelta(minutes=1), first_contact=50, execution_id=2)
    coord = await executor(settings, store, fakes, claim_batch_size=5, workers_per_list=1)
    await coord.run_until_idle()
    await coord.trackly.close(close_store=False)
    order = [e.message_id for e in fakes["infobip"].ledger]
    assert order[:5] == first and sorted(order[5:]) == sorted(second)


async def test_provider_rejection_is_recorded_and_refunded(
    settings: Settings, store: Store, fakes: dict[str, Any]
) -> None:
    """A permanent rejection becomes FailedMessage PROVIDER_ERROR with the provider code, refunded, with an event."""
    ids = await seed(store, 3, price=0.5, balance=10.0)
    fakes["infobip"].script(Behaviour("reject", code="REJECTED_DESTINATION"))
    coord = await executor(settings, store, fakes)
    counts = await coord.run_until_idle()
    await coord.trackly.close(close_store=False)
    assert counts["failed.PROVIDER_ERROR"] == 3
    rec = FailedMessage.from_doc(await store.db[c.FAILED].find_one({"_id": ids[0]}))
    assert rec.reason == "PROVIDER_ERROR" and rec.provider == "infobip" and rec.provider_code
    assert (await store.db[c.ACCOUNTS].find_one({"_id": 1}))["balance"] == pytest.approx(10.0)
    events = await store.db[c.EVENTS].find({"kind": "failed_message"}).to_list(None)
    assert sorted(e["data"]["message_id"] for e in events) == sorted(ids)
    await assert_one_record_each(store, ids)


def test_send_time_quiet_hours_match_the_exact_lookup() -> None:
    """The hot-path quiet-hours decision equals quiethours.in_window(contact_zones(...)) at every hour."""
    import random

    from trackly_exec.executor.checks import in_window_now
    from trackly_exec.store import phones, quiethours

    rng = random.Random(7)
    numbers = ["+18005551234", "+19005551234", "+16715551234", "+18683861491", "+447802894016"]
    for cc, digits in [("1", 10), ("44", 10), ("31", 9), ("49", 10), ("61", 9), ("55", 11), ("7", 10)]:
        while sum(1 for x in numbers if x.startswith("+" + cc)) < 40:
            e164 = phones.normalize("+" + cc + "".join(rng.choice("0123456789") for _ in range(digits)))
            if e164:
                numbers.append(e164)
    window = quiethours.Window.parse("08:00", "21:00")
    for hour in range(24):
        now = dt.datetime(2026, 7, 1, hour, 30, tzinfo=dt.UTC)
        memo: dict[Any, bool] = {}
        for n in numbers:
            exact = quiethours.in_window(now, quiethours.contact_zones(n, None, "America/New_York"), window)
            assert in_window_now(n, None, "America/New_York", now, window, memo)[0] == exact, (n, hour)
