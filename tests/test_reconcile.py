"""Reconciliation of NO_RESPONSE (ambiguous) messages by asking the provider (issue 8, part 4).

Found at the provider -> MessageSent (one record); not found -> released and sent exactly once; the provider
cannot tell -> stays ambiguous (and is asked again later); a driver without look-ups (CM) -> stays ambiguous.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from trackly_exec.app import Trackly
from trackly_exec.config import Settings
from trackly_exec.executor.coordinator import Coordinator
from trackly_exec.store import constants as c
from trackly_exec.store.client import Store
from trackly_exec.store.models import FailedMessage, MessageSent, utcnow
from trackly_exec.testing.fakes.control import Behaviour
from trackly_exec.tracking.reconcile import Reconciler

from .executor_support import assert_one_record_each, ids_in, open_trackly, seed, with_executor

LOOKUP_PROVIDERS = ["infobip", "twilio"]


async def daemon(settings: Settings, store: Store, fakes: dict[str, Any], **driver: Any) -> Trackly:
    drivers = {
        name: {**fake.driver_settings(), "timeout_seconds": 1.0, "lookup_settle_seconds": 0, **driver}
        for name, fake in fakes.items()
    }
    return await open_trackly(with_executor(settings, drivers, retry_initial_backoff_seconds=0.01), store)


async def no_response(store: Store) -> list[str]:
    return sorted(await ids_in(store, c.FAILED, {"reason": "NO_RESPONSE"}))


async def balance(store: Store) -> float:
    return float((await store.db[c.ACCOUNTS].find_one({"_id": 1}))["balance"])


@pytest.mark.parametrize("provider", LOOKUP_PROVIDERS)
async def test_confirmed_send_becomes_message_sent(
    settings: Settings, store: Store, fakes: dict[str, Any], provider: str
) -> None:
    """Accepted then 500: NO_RESPONSE; the provider's records show it sent -> MessageSent (its provider id,
    submitted), the FailedMessage removed, still charged, sent once; its delivery state applied."""
    ids = await seed(store, 3, driver=provider, price=1.0, balance=10.0)
    fake = fakes[provider]
    fake.set_default(Behaviour("5xx_after", code="500"))
    trackly = await daemon(settings, store, fakes)
    try:
        await Coordinator(trackly).run_until_idle()
        assert await no_response(store) == sorted(ids)
        fake.dlr_outcome = lambda e: "delivered" if e.message_id == ids[0] else None
        await fake.flush_reports()  # the provider knows; its report did not reach us (no report URL in the test)
        counts = await Reconciler(trackly).run_until_idle()
    finally:
        await trackly.close(close_store=False)
    assert counts["found"] == 3 and counts["lookups"] == 3
    split = await assert_one_record_each(store, ids)
    assert split[c.SENT] == 3 and split[c.FAILED] == 0
    pids = {e.message_id: e.provider_message_id for e in fake.ledger}
    for mid in ids:
        sent = MessageSent.from_doc(await store.db[c.SENT].find_one({"_id": mid}))
        assert sent.submitted is True and sent.resolved_from_no_response and sent.provider == provider
        assert sent.provider_message_id == pids[mid]
    assert (await store.db[c.SENT].find_one({"_id": ids[0]}))["delivered"] is True
    assert all(fake.accepted_counts()[m] == 1 for m in ids)
    assert await balance(store) == 7.0


@pytest.mark.parametrize("provider", LOOKUP_PROVIDERS)
async def test_confirmed_non_send_is_resent_exactly_once(
    settings: Settings, store: Store, fakes: dict[str, Any], provider: str
) -> None:
    """The connection was reset before the provider took the request (from our side: ambiguous): NO_RESPONSE;
    the provider has no such message -> released under the same id, refunded, sent exactly once, one record."""
    ids = await seed(store, 2, driver=provider, price=1.0, balance=10.0)
    fake = fakes[provider]
    fake.script(*[Behaviour("reset_before")] * (1 if provider == "infobip" else len(ids)))  # one request each
    trackly = await daemon(settings, store, fakes)
    try:
        coord = Coordinator(trackly)
        await coord.run_until_idle()
        assert await no_response(store) == sorted(ids) and not fake.ledger
        assert await balance(store) == 8.0
        # their execution had ended (nothing left in the queue): released, they make it run again until sent
        await store.db[c.EXECUTIONS].insert_one(
            {"_id": 1, "campaign_id": 1, "status": "completed", "completed_at": utcnow()}
        )
        counts = await Reconciler(trackly).run_until_idle()
        assert counts["released"] == 2 and sorted(await ids_in(store, c.QUEUED)) == sorted(ids)
        assert await balance(store) == 10.0
        ex = await store.db[c.EXECUTIONS].find_one({"_id": 1})
        assert ex["status"] == "queued" and ex["completed_at"] is None, ex
        sent = await coord.run_until_idle()
        again = await Reconciler(trackly).run_until_idle()
    finally:
        await trackly.close(close_store=False)
    assert sent["sent"] == 2 and not again.get("released")
    split = await assert_one_record_each(store, ids)
    assert split[c.SENT] == 2
    assert all(fake.accepted_counts()[m] == 1 for m in ids) and len(fake.ledger) == 2
    assert await balance(store) == 8.0


@pytest.mark.parametrize("provider", LOOKUP_PROVIDERS)
async def test_unknown_stays_ambiguous(settings: Settings, store: Store, fakes: dict[str, Any], provider: str) -> None:
    """A look-up the provider fails, or a "not found" too soon after the attempt, proves nothing: the message stays
    NO_RESPONSE (not re-sent), asked again after a backoff."""
    ids = await seed(store, 1, driver=provider)
    fake = fakes[provider]
    fake.script(Behaviour("reset_before"))
    trackly = await daemon(settings, store, fakes, lookup_settle_seconds=600)
    try:
        await Coordinator(trackly).run_until_idle()
        first = await Reconciler(trackly).run_until_idle()  # not found, but 10 minutes have not passed
        fake.script_lookups(Behaviour("5xx_before"))
        later = utcnow() + dt.timedelta(hours=1)
        second = await Reconciler(trackly).run_until_idle(now=later)  # the provider fails the look-up
    finally:
        await trackly.close(close_store=False)
    assert first["unknown"] == 1 and second["unknown"] == 1 and not first["released"] and not second["released"]
    rec = FailedMessage.from_doc(await store.db[c.FAILED].find_one({"_id": ids[0]}))
    assert rec.reason == "NO_RESPONSE" and rec.ambiguous and rec.lookups == 2 and rec.reconcile_state == "pending"
    assert rec.reconcile_at is not None and rec.reconcile_at > later
    assert not await ids_in(store, c.QUEUED) and not fake.ledger
    await assert_one_record_each(store, ids)


async def test_driver_without_lookup_stays_ambiguous(settings: Settings, store: Store, fakes: dict[str, Any]) -> None:
    """CM documents no message-status query: its NO_RESPONSE messages stay so (a delivery report still resolves
    them) and are not asked about again."""
    ids = await seed(store, 2, driver="cm")
    fakes["cm"].set_default(Behaviour("5xx_after", code="502"))
    trackly = await daemon(settings, store, fakes)
    try:
        await Coordinator(trackly).run_until_idle()
        counts = await Reconciler(trackly).run_until_idle()
        again = await Reconciler(trackly).run_until_idle()
    finally:
        await trackly.close(close_store=False)
    assert counts["unsupported"] == 2 and not again
    assert await no_response(store) == sorted(ids)
    assert {d["reconcile_state"] async for d in store.db[c.FAILED].find({})} == {"unsupported"}


async def test_too_old_to_look_up_expires(settings: Settings, store: Store, fakes: dict[str, Any]) -> None:
    """Past ``reconcile.max_age_hours`` after the attempt a message is no longer asked about: it stays NO_RESPONSE."""
    ids = await seed(store, 1)
    fakes["infobip"].script(Behaviour("reset_before"))
    trackly = await daemon(settings, store, fakes)
    try:
        await Coordinator(trackly).run_until_idle()
        counts = await Reconciler(trackly).run_until_idle(now=utcnow() + dt.timedelta(hours=49))
    finally:
        await trackly.close(close_store=False)
    assert counts["expired"] == 1 and not counts["lookups"]
    assert await no_response(store) == ids


async def test_half_done_release_is_finished(settings: Settings, store: Store, fakes: dict[str, Any]) -> None:
    """A pass that died while handing a message back (marked ``releasing``) is finished by a later pass: the
    message ends queued exactly once (inserted if missing), its FailedMessage removed."""
    ids = await seed(store, 2, price=1.0, balance=10.0)
    fakes["infobip"].set_default(Behaviour("reset_before"))
    trackly = await daemon(settings, store, fakes)
    try:
        await Coordinator(trackly).run_until_idle()
        past = utcnow() - dt.timedelta(seconds=1)
        await store.db[c.FAILED].update_many({}, {"$set": {"reconcile_state": "releasing", "reconcile_at": past}})
        doc = await store.db[c.FAILED].find_one({"_id": ids[0]})
        queued = {
            k: doc[k]
            for k in (
                "account_id",
                "sending_list_id",
                "from_number",
                "to_number",
                "body",
                "length",
                "segments",
                "sendtime",
            )
        }
        await store.db[c.QUEUED].insert_one({"_id": ids[0], **queued, "claimed_by": None, "sending_at": None})
        counts = await Reconciler(trackly).run_until_idle()
    finally:
        await trackly.close(close_store=False)
    assert counts["released"] == 2
    split = await assert_one_record_each(store, ids)
    assert split[c.QUEUED] == 2


async def test_a_provider_id_already_recorded_is_not_trusted(
    settings: Settings, store: Store, fakes: dict[str, Any]
) -> None:
    """Twilio echoes none of our ids: a look-up matches by recipient, sender and body. When the one match is a
    message already recorded for another of ours (same text to the same number), it proves nothing: the ambiguous
    message stays NO_RESPONSE instead of being marked sent (it never was) or resent blindly."""
    [first] = await seed(store, 1, driver="twilio")
    trackly = await daemon(settings, store, fakes)
    try:
        await Coordinator(trackly).run_until_idle()
        [second] = await seed(store, 1, driver="twilio", execution_id=2, first_contact=50)
        doc = await store.db[c.SENT].find_one({"_id": first})
        await store.db[c.QUEUED].update_one(
            {"_id": second}, {"$set": {"to_number": doc["to_number"], "body": doc["body"]}}
        )
        fakes["twilio"].script(Behaviour("reset_before"))
        await Coordinator(trackly).run_until_idle()
        counts = await Reconciler(trackly).run_until_idle()
    finally:
        await trackly.close(close_store=False)
    assert counts["unknown"] == 1 and not counts["found"] and not counts["released"]
    assert await no_response(store) == [second] and len(fakes["twilio"].ledger) == 1


async def test_a_message_being_redriven_is_left_alone(settings: Settings, store: Store, fakes: dict[str, Any]) -> None:
    """An operator's dead-letter re-drive (redrive.py) owns the messages it marked: no look-up, no release."""
    ids = await seed(store, 2)
    fakes["infobip"].script(Behaviour("reset_before"))
    trackly = await daemon(settings, store, fakes)
    try:
        await Coordinator(trackly).run_until_idle()
        await store.db[c.FAILED].update_one({"_id": ids[0]}, {"$set": {"redrive_token": "operator:1"}})
        counts = await Reconciler(trackly).run_until_idle()
    finally:
        await trackly.close(close_store=False)
    assert counts["released"] == 1 and counts["lookups"] == 1
    assert await no_response(store) == [ids[0]] and await ids_in(store, c.QUEUED) == [ids[1]]


async def test_redrive_leaves_a_message_the_reconciler_holds(
    settings: Settings, store: Store, fakes: dict[str, Any]
) -> None:
    """While a pass holds a NO_RESPONSE message (asking the provider), an operator's re-drive skips it (else both
    could act on it: a look-up that finds it sent plus a re-drive would text the person twice); after the lease it
    may."""
    from trackly_exec.executor import redrive

    ids = await seed(store, 2)
    fakes["infobip"].script(Behaviour("reset_before"))
    trackly = await daemon(settings, store, fakes)
    try:
        await Coordinator(trackly).run_until_idle()
        lease = utcnow() + dt.timedelta(minutes=2)
        await store.db[c.FAILED].update_one(
            {"_id": ids[0]}, {"$set": {"reconcile_by": "x-reconcile:1", "reconcile_at": lease}}
        )
        match = redrive.dead_letter_filter(reasons=["NO_RESPONSE"])
        res = await redrive.redrive(trackly, match, reasons=["NO_RESPONSE"], allow_duplicates=True)
    finally:
        await trackly.close(close_store=False)
    assert res.requeued == 1 and res.skipped["redrive_in_progress"] == 1, res.as_dict()
    assert await no_response(store) == [ids[0]] and await ids_in(store, c.QUEUED) == [ids[1]]
