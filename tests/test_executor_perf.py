"""Executor hot-path costs (issue 12): bounded request concurrency, pre-encoded Twilio form bodies (quoted like
``quote_plus``)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote_plus, urlencode

import pytest
from pydantic import ValidationError
from trackly_drivers.twilio import TwilioDriver, quote_form

from trackly_exec.config import Settings
from trackly_exec.drivers.contract import (
    Accepted,
    OutboundMessage,
    SendResult,
    TransientFailure,
    accepted,
    outbound_message,
)
from trackly_exec.store.client import Store
from trackly_exec.testing.contract import DriverHarness

from .executor_support import executor, seed


async def test_twilio_form_body_is_the_urlencoded_form() -> None:
    """The pre-encoded body is byte for byte ``urlencode(form(m))`` (quoting cached per sender and callback URL),
    and the provider takes it."""
    async with DriverHarness(TwilioDriver) as h:
        odd = OutboundMessage(id="a/b?c=d", to="+12025550100", sender="Shop & Co", body="Héllo 100% & = + / ? 😀")
        ascii_odd = OutboundMessage(id="a b", to="+12025550100", sender="Shop+Co", body="100% & = + / ? ~_.- %2B")
        msgs = [*h.messages(2), odd, ascii_odd]
        driver: Any = h.driver
        for m in msgs:
            assert driver.form_body(m) == urlencode(driver.form(m)).encode()
        results = await h.submit(msgs)
        assert all(isinstance(r, Accepted) for r in results)


def test_quote_form_is_quote_plus() -> None:
    """The form quoting of Twilio bodies is ``quote_plus``, byte for byte: every ASCII character alone and in text
    (``%`` and ``+`` among the escapes, spaces last), and non-ASCII text (left to quote_plus)."""
    samples = [chr(i) for i in range(128)]
    samples += ["", "plain", "Your code is 12345. Reply STOP to opt out", "+31612345678", "100% + 1 = 2 %2B", "a b+c%d"]
    samples += ["".join(chr(i) for i in range(128)), "Héllo 😀 100% + ok"]
    for text in samples:
        assert quote_form(text) == quote_plus(text), text


def test_hot_path_messages_and_results_equal_validated_ones() -> None:
    """``outbound_message`` and ``accepted`` build what the validating constructors build (equal, same fields set,
    same dump and hash); a value of another type is validated as before (converted, or refused)."""
    fields: dict[str, Any] = {
        "id": "0123abcd",
        "to": "+31612345678",
        "sender": "Shop",
        "body": "Hi 100%",
        "segments": 2,
    }
    for extra in ({}, {"valid_for": 600}):
        fast, slow = outbound_message(**fields, **extra), OutboundMessage(**fields, **extra)
        assert type(fast) is OutboundMessage and fast == slow and hash(fast) == hash(slow)
        assert fast.model_fields_set == slow.model_fields_set and fast.model_dump() == slow.model_dump()
        assert repr(fast) == repr(slow)
    with pytest.raises(ValidationError):
        outbound_message("a", "+1", "s", "b", 1, 0)  # a validity of no time at all
    with pytest.raises(ValidationError):
        fast.body = "changed"  # frozen like any other
    assert outbound_message("a", "+1", "s", "b", "3").segments == 3  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        outbound_message("a", None, "s", "b", 1)  # type: ignore[arg-type]
    got, want = accepted("m1", "SM1", 2), Accepted(message_id="m1", provider_message_id="SM1", segments=2)
    assert type(got) is Accepted and got == want and got.model_fields_set == want.model_fields_set
    assert got.model_dump() == want.model_dump() and got.kind == "accepted"
    with pytest.raises(ValidationError):
        accepted("m1", 7, 1)  # type: ignore[arg-type]


async def test_requests_run_on_pool_size_consumers_not_a_task_each(
    settings: Settings, store: Store, fakes: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A chunk of 24 one-message (Twilio) requests runs on at most ``pool_size`` tasks, not one task per request;
    every message is still sent once and recorded once."""
    ids = await seed(store, 24, driver="twilio")
    seen: list[int] = []
    original = TwilioDriver.send

    async def send(self: TwilioDriver, messages: Sequence[OutboundMessage]) -> list[SendResult]:
        seen.append(sum(1 for t in asyncio.all_tasks() if t.get_coro().__qualname__.startswith("Worker.")))  # type: ignore[union-attr]
        return await original(self, messages)

    monkeypatch.setattr(TwilioDriver, "send", send)
    coord = await executor(settings, store, fakes, claim_batch_size=24, workers_per_list=1, pool_size=3)
    counts = await coord.run_until_idle()
    await coord.trackly.close(close_store=False)
    assert counts["sent"] == 24 and len(seen) == 24
    assert max(seen) <= 3
    assert sorted(e.message_id for e in fakes["twilio"].ledger) == sorted(ids)


async def test_consumers_keep_their_slot_but_never_through_a_retry_backoff(
    settings: Settings, store: Store, fakes: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A chunk's consumer keeps its pool slot from one one-message request to the next (never more requests in
    flight than ``pool_size``), and hands it back before a retry's backoff: a request waiting to be retried holds
    no slot. Every message is still sent once and recorded once."""
    ids = await seed(store, 12, driver="twilio")
    flaky = ids[0]
    in_flight, peak, attempts = [0], [0], {flaky: 0}
    free_at_backoff: list[int] = []
    original = TwilioDriver.send

    async def send(self: TwilioDriver, messages: Sequence[OutboundMessage]) -> list[SendResult]:
        in_flight[0] += 1
        peak[0] = max(peak[0], in_flight[0])
        try:
            await asyncio.sleep(0)  # let the other consumers reach their own request
            if messages[0].id == flaky and attempts[flaky] == 0:
                attempts[flaky] += 1
                return [TransientFailure(message_id=flaky, code="20429", detail="too many requests")]
            return await original(self, messages)
        finally:
            in_flight[0] -= 1

    monkeypatch.setattr(TwilioDriver, "send", send)
    coord = await executor(settings, store, fakes, claim_batch_size=12, workers_per_list=1, pool_size=1)
    worker_sleep = coord.worker._sleep

    async def sleep(seconds: float) -> bool:
        free_at_backoff.append(coord.pool._value)  # the semaphore's free slots
        return await worker_sleep(seconds)

    monkeypatch.setattr(coord.worker, "_sleep", sleep)
    counts = await coord.run_until_idle()
    await coord.trackly.close(close_store=False)
    assert counts["sent"] == 12 and attempts[flaky] == 1
    assert peak[0] == 1  # one slot: one request at a time, across the consumer's run of requests
    assert free_at_backoff and free_at_backoff[0] == 1  # the slot was handed back before the retry's backoff
    assert sorted(e.message_id for e in fakes["twilio"].ledger) == sorted(ids)
    assert await store.db["message_sent"].count_documents({}) == 12
