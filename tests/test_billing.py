"""Billing: atomic conditional debit, partial cover, billing-blocked backoff and TTL, refunds.

Time is driven through the documents (``billing_blocked_since`` / ``not_before``), never by waiting.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Sequence
from typing import Any

import pytest

from trackly_exec.config import Settings
from trackly_exec.drivers.contract import Accepted, Driver, DriverSettings, OutboundMessage, SendResult
from trackly_exec.executor import billing
from trackly_exec.executor.worker import ListInfo
from trackly_exec.store import constants as c
from trackly_exec.store import quiethours
from trackly_exec.store.client import Store
from trackly_exec.store.models import SendingList, epoch_ms, utcnow
from trackly_exec.testing.fakes.control import Behaviour

from .executor_support import assert_one_record_each, executor, ids_in, seed


async def balance(store: Store) -> float:
    return float((await store.db[c.ACCOUNTS].find_one({"_id": 1}))["balance"])


async def test_debit_is_conditional_and_splits(store: Store) -> None:
    """A debit takes the whole chunk when covered, else the longest affordable prefix, never going negative."""
    await store.db[c.ACCOUNTS].insert_one({"_id": 1, "name": "a", "balance": 2.5})
    docs = [{"_id": f"m{i}", "segments": 1} for i in range(4)]
    out = await billing.debit(store.db, 1, docs, 1.0)
    assert [d["_id"] for d in out.charged] == ["m0", "m1"] and [d["_id"] for d in out.blocked] == ["m2", "m3"]
    assert await balance(store) == pytest.approx(0.5)
    out = await billing.debit(store.db, 1, docs[2:], 1.0)
    assert out.charged == [] and len(out.blocked) == 2 and await balance(store) == pytest.approx(0.5)


async def test_free_list_is_not_billed(store: Store) -> None:
    """A list with no price never touches the balance."""
    out = await billing.debit(store.db, 99, [{"_id": "m", "segments": 3}], 0.0)
    assert len(out.charged) == 1 and out.costs == {"m": 0.0}


async def test_blocked_messages_back_off(settings: Settings, store: Store, fakes: dict[str, Any]) -> None:
    """Insufficient balance sends what it covers and releases the rest with a 5-minute backoff."""
    ids = await seed(store, 5, price=1.0, balance=3.0)
    coord = await executor(settings, store, fakes)
    before = utcnow()
    counts = await coord.run_until_idle()
    await coord.trackly.close(close_store=False)
    assert counts["sent"] == 3 and counts["held.billing"] == 2 and await balance(store) == pytest.approx(0.0)
    # the operator hears of it now (one alert event), not when the messages are dead-lettered an hour later
    [event] = await store.db[c.EVENTS].find({"kind": "billing_blocked"}).to_list(None)
    assert event["severity"] == "critical" and event["data"]["account_id"] == 1 and event["data"]["messages"] == 2
    assert "top the account up" in event["message"]
    assert set(fakes["infobip"].accepted_counts()) == set(ids[:3])
    docs = await store.db[c.QUEUED].find({"_id": {"$in": ids[3:]}}).to_list(None)
    for d in docs:
        assert d["claimed_by"] is None and d["billing_blocked_since"] >= before - dt.timedelta(seconds=1)
        assert d["not_before"] - d["billing_blocked_since"] == dt.timedelta(minutes=5)


async def test_blocked_again_keeps_first_block_time(settings: Settings, store: Store, fakes: dict[str, Any]) -> None:
    """A message blocked again within the TTL keeps its first-block time and gets a new backoff."""
    ids = await seed(store, 1, price=1.0, balance=0.0)
    first = utcnow() - dt.timedelta(minutes=30)
    await store.db[c.QUEUED].update_one(
        {"_id": ids[0]}, {"$set": {"billing_blocked_since": first, "not_before": utcnow() - dt.timedelta(seconds=1)}}
    )
    coord = await executor(settings, store, fakes)
    await coord.run_until_idle()
    await coord.trackly.close(close_store=False)
    doc = await store.db[c.QUEUED].find_one({"_id": ids[0]})
    assert doc["billing_blocked_since"] == first and doc["not_before"] > utcnow() + dt.timedelta(minutes=4)


async def test_billing_ttl_dead_letters(settings: Settings, store: Store, fakes: dict[str, Any]) -> None:
    """Still blocked 60 minutes after the first block: FailedMessage BILLING_BLOCKED, never sent."""
    ids = await seed(store, 2, price=1.0, balance=0.0)
    await store.db[c.QUEUED].update_many(
        {"_id": {"$in": ids}},
        {
            "$set": {
                "billing_blocked_since": utcnow() - dt.timedelta(minutes=61),
                "not_before": utcnow() - dt.timedelta(seconds=1),
            }
        },
    )
    coord = await executor(settings, store, fakes)
    counts = await coord.run_until_idle()
    await coord.trackly.close(close_store=False)
    assert counts["failed.BILLING_BLOCKED"] == 2 and fakes["infobip"].summary()["accepted"] == 0
    assert sorted(await ids_in(store, c.FAILED, {"reason": "BILLING_BLOCKED"})) == sorted(ids)
    await assert_one_record_each(store, ids)


async def test_topped_up_account_sends(settings: Settings, store: Store, fakes: dict[str, Any]) -> None:
    """A blocked message whose backoff ended is sent once the account has money again."""
    ids = await seed(store, 2, price=1.0, balance=0.0)
    coord = await executor(settings, store, fakes)
    await coord.run_until_idle()
    await store.db[c.ACCOUNTS].update_one({"_id": 1}, {"$set": {"balance": 5.0}})
    ended = utcnow() - dt.timedelta(seconds=1)  # the backoff's end, moved to the past (with its due time)
    await store.db[c.QUEUED].update_many(
        {"_id": {"$in": ids}}, {"$set": {"not_before": ended, "due_ms": epoch_ms(ended)}}
    )
    counts = await coord.run_until_idle()
    await coord.trackly.close(close_store=False)
    assert counts["sent"] == 2 and await balance(store) == pytest.approx(3.0)


async def test_not_accepted_is_refunded(settings: Settings, store: Store, fakes: dict[str, Any]) -> None:
    """Rejected sends and sends held after a provider storm (transient failures outlasting the retries) are
    refunded; accepted ones are charged (the held one when it is sent later)."""
    ids = await seed(store, 3, price=1.0, balance=10.0)
    fakes["infobip"].script(Behaviour("reject"), Behaviour("429"), Behaviour("429"))
    coord = await executor(settings, store, fakes, claim_batch_size=1, workers_per_list=1, retry_max_attempts=2)
    counts = await coord.run_until_idle()
    await coord.trackly.close(close_store=False)
    assert counts.get("sent", 0) == 0 and counts["failed.PROVIDER_ERROR"] == 1 and counts["held.provider"] == 1
    assert await balance(store) == pytest.approx(10.0)
    coord = await executor(settings, store, fakes)
    coord.clock = lambda: utcnow() + dt.timedelta(minutes=1)
    assert (await coord.run_until_idle())["sent"] == 2
    await coord.trackly.close(close_store=False)
    assert await balance(store) == pytest.approx(8.0)
    await assert_one_record_each(store, ids)


class _EchoDriver(Driver[DriverSettings]):
    """The README's plugin example: accepts everything and reports no segment count."""

    async def send(self, messages: Sequence[OutboundMessage]) -> list[SendResult]:
        return [Accepted(message_id=m.id, provider_message_id=f"echo-{m.id}") for m in messages]


class _CountingDriver(Driver[DriverSettings]):
    """A driver that reports the provider's own segment count (2 here, whatever we counted)."""

    async def send(self, messages: Sequence[OutboundMessage]) -> list[SendResult]:
        return [Accepted(message_id=m.id, provider_message_id=f"n-{m.id}", segments=2) for m in messages]


@pytest.mark.parametrize("driver,billed", [(_EchoDriver, 3), (_CountingDriver, 2)])
async def test_segments_billed_from_the_message_unless_the_driver_reports_them(
    settings: Settings,
    store: Store,
    fakes: dict[str, Any],
    driver: type[Driver[DriverSettings]],
    billed: int,
) -> None:
    """A 3-part message sent through a driver that does not report segments is billed 3 parts (not 1); a driver's
    own count, when it reports one, is what is billed (the difference settled in the refund)."""
    ids = await seed(store, 2, price=0.5, balance=10.0)
    await store.db[c.QUEUED].update_many({}, {"$set": {"segments": 3}})
    coord = await executor(settings, store, fakes)
    lst = SendingList.from_doc(await store.db[c.SENDING_LISTS].find_one({"_id": 1}))
    coord._lists[1] = (
        time.monotonic(),
        ListInfo(
            lst, driver(DriverSettings(), name="plugin"), None, quiethours.Window.from_quiet_hours(lst.quiet_hours)
        ),
    )
    counts = await coord.run_until_idle()
    await coord.trackly.close(close_store=False)
    assert counts["sent"] == 2
    sent = await store.db[c.SENT].find({"_id": {"$in": ids}}).to_list(None)
    assert [(s["segments"], s["cost"]) for s in sent] == [(billed, billed * 0.5)] * 2
    assert await balance(store) == pytest.approx(10.0 - 2 * billed * 0.5)


async def test_a_topped_up_account_is_said_to_have_recovered(
    settings: Settings, store: Store, fakes: dict[str, Any]
) -> None:
    """The alert channel says when an incident ends: once the account is topped up and its held messages are charged
    again, one RECOVERED event (condition billing_blocked) follows the billing_blocked one."""
    ids = await seed(store, 5, price=1.0, balance=3.0)
    coord = await executor(settings, store, fakes)
    await coord.run_until_idle()
    assert await store.db[c.EVENTS].count_documents({"kind": "recovered"}) == 0
    await store.db[c.ACCOUNTS].update_one({"_id": 1}, {"$set": {"balance": 10.0}})
    await store.db[c.QUEUED].update_many({}, {"$set": {"not_before": None, "due_ms": 0}})
    counts = await coord.run_until_idle()
    await coord.trackly.close(close_store=False)
    assert counts["sent"] == 5 and set(fakes["infobip"].accepted_counts()) == set(ids)  # (counts are cumulative)
    [event] = await store.db[c.EVENTS].find({"kind": "recovered"}).to_list(None)
    assert event["data"] == {"condition": "billing_blocked", "account_id": 1} and event["severity"] == "info"
