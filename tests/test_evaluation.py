"""A resumed evaluation queues nobody twice, whatever happened to a contact's first message meanwhile.

The crash is simulated in the test process (the ``after_queue_batch`` failpoint raising after a batch), the
executor sends with a real provider fake (Infobip), and the bar is the number of sends per phone at the fake.
"""

from __future__ import annotations

import collections
import datetime as dt
from collections.abc import Sequence
from typing import Any

import pytest

from trackly_exec import failpoints
from trackly_exec.app import Trackly
from trackly_exec.campaigns import evaluation
from trackly_exec.campaigns.queue import QueueResult
from trackly_exec.campaigns.scheduler import Scheduler, trigger
from trackly_exec.config import Settings
from trackly_exec.executor.coordinator import Coordinator
from trackly_exec.store import constants as c
from trackly_exec.store.client import Store
from trackly_exec.store.models import utcnow
from trackly_exec.testing.fakes.infobip import InfobipFake

from .campaign_fixtures import contact, seed_campaign
from .executor_support import open_trackly, with_executor

N = 1000


def crash_after(batches: int) -> Any:
    """A failpoint hook that raises (the process "dies") after the N-th queue batch was written."""
    seen = collections.Counter[str]()

    def hit(name: str) -> None:
        seen[name] += 1
        if name == "after_queue_batch" and seen[name] == batches:
            raise RuntimeError("killed after a queue batch")

    return hit


async def expire_lease(trackly: Trackly) -> dict[str, Any]:
    ex = await trackly.db[c.EXECUTIONS].find_one({})
    assert ex["status"] == "evaluating"
    stale = {**ex, "lease_owner": "dead", "heartbeat_at": utcnow() - dt.timedelta(minutes=5)}
    await trackly.db[c.EXECUTIONS].replace_one({"_id": ex["_id"]}, stale)
    return ex


@pytest.mark.parametrize("sent_before_resume", [0, 150])
async def test_resume_racing_the_executor_texts_each_phone_once(
    settings: Settings, store: Store, redis_client: Any, monkeypatch: pytest.MonkeyPatch, sent_before_resume: int
) -> None:
    """Crash after 3 of 10 batches; part of the queue is sent; the resumed evaluation races the executor (which
    drains the queue between each batch's check and its insert): every phone is texted exactly once."""
    fake = await InfobipFake().start()
    trackly = await open_trackly(with_executor(settings, {"infobip": fake.driver_settings()}), store)
    try:
        trackly.settings.scheduler.evaluation_batch_size = 100
        await seed_campaign(store, contacts=[contact(i) for i in range(1, N + 1)], list_kw={"driver": "infobip"})
        monkeypatch.setattr(failpoints, "hit", crash_after(3))
        with pytest.raises(RuntimeError, match="killed"):
            await trigger(trackly, 1)
        monkeypatch.setattr(failpoints, "hit", lambda name: None)
        assert await store.db[c.QUEUED].count_documents({}) == 300
        if sent_before_resume:  # the executor sends part of the queue: those entries leave it
            aside = (await store.db[c.QUEUED].find({}).to_list(None))[sent_before_resume:]
            await store.db[c.QUEUED].delete_many({"_id": {"$in": [d["_id"] for d in aside]}})
            await Coordinator(trackly).run_until_idle()
            await store.db[c.QUEUED].insert_many(aside)
            assert await store.db[c.SENT].count_documents({}) == sent_before_resume
        first = await expire_lease(trackly)

        real = evaluation.insert_batch

        async def racing(
            db: Any, messages: Sequence[dict[str, Any]], links: Sequence[dict[str, Any]] = ()
        ) -> QueueResult:
            await Coordinator(trackly).run_until_idle()  # a concurrent executor empties the queue meanwhile
            return await real(db, messages, links)

        monkeypatch.setattr(evaluation, "insert_batch", racing)
        assert (await Scheduler(trackly).run_until_idle())["resumed"] == 1
        await Coordinator(trackly).run_until_idle()
        per_phone = collections.Counter(e.to for e in fake.ledger)
        twice = sorted(p for p, n in per_phone.items() if n > 1)
        assert not twice, f"{len(twice)} phones texted more than once, e.g. {twice[:3]}"
        assert len(per_phone) == N
        ex = await store.db[c.EXECUTIONS].find_one({"_id": first["_id"]})
        assert ex["attempts"] == 2 and ex["counts"]["queued"] == N
        assert ex["counts"]["already_queued"] + ex["counts"]["already_processed"] == 300
        assert ex["counts"]["already_processed"] >= sent_before_resume  # (the rest: sent while resuming)
        sent_ids = [d["_id"] async for d in store.db[c.SENT].find({}, {"_id": 1})]
        assert len(sent_ids) == N and collections.Counter(fake.accepted_counts()).most_common(1)[0][1] == 1
    finally:
        await trackly.close(close_store=False)
        await fake.stop()


async def test_message_ids_are_stable_per_execution_and_contact(trackly: Trackly) -> None:
    """A contact's message id is the same in every run of one execution, differs across executions, and is
    16 hex characters; an execution created without a message key gets one."""
    from trackly_exec.campaigns.compose import Composer

    ex1 = {"_id": 1, "message_key": "a" * 32}
    ex2 = {"_id": 2, "message_key": "b" * 32}
    kw: dict[str, Any] = {
        "campaign": {"_id": 1, "account_id": 1},
        "sending_list": {"_id": 1, "from_number": "+1"},
        "creative": {"_id": 1, "variants": [{"key": "A", "body": "x"}]},
        "chooser": None,
        "short_base": "http://s",
    }
    a, a_again, b = (Composer(execution=e, **kw) for e in (ex1, dict(ex1), ex2))
    assert a.message_id(7) == a_again.message_id(7) != b.message_id(7)
    assert a.message_id(7) != a.message_id(8) and len(a.message_id(7)) == 16 and int(a.message_id(7), 16) >= 0
    await trackly.db[c.EXECUTIONS].insert_one({"_id": 5, "campaign_id": 1})
    doc: dict[str, Any] = {"_id": 5}
    key = await evaluation.message_key(trackly.db, doc)
    assert len(key) == 32 and doc["message_key"] == key
    assert await evaluation.message_key(trackly.db, {"_id": 5}) == key  # set once


async def test_contacts_another_tool_wrote_with_odd_types_wedge_nothing(trackly: Trackly) -> None:
    """A contact whose phone another tool stored as a number is texted as its digits, a timezone that is no text is
    ignored, a last_sent_at stored as ISO text counts for the cooldown, a phone of no usable type is an invalid
    phone: the campaign runs (one such contact raised at every evaluation, its execution stuck evaluating), and the
    contacts API shows them."""
    import datetime as dt

    from trackly_exec.campaigns.scheduler import trigger

    from .campaign_fixtures import contact, register_echo, seed_campaign

    register_echo()
    recent = (dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)).isoformat().replace("+00:00", "Z")
    contacts = [
        contact(1, phone="+12125550101"),
        {**contact(2, phone="x"), "phone": 12125550102},
        {**contact(3, phone="+12125550103"), "timezone": 5},
        {**contact(4, phone="+12125550104"), "last_sent_at": recent},
        {**contact(5, phone="x"), "phone": {"n": 1}},
        {**contact(6, phone="+12125550106"), "first_name": 42},
    ]
    # (a window open all day: contact 3's number is read as New York's, whatever time the tests run)
    all_day = {"start": "00:00", "end": "23:59", "default_timezone": "UTC"}
    await seed_campaign(trackly.store, contacts=contacts, list_kw={"cooldown_minutes": 60, "quiet_hours": all_day})
    eid = await trigger(trackly, 1)
    ex = await trackly.db[c.EXECUTIONS].find_one({"_id": eid})
    assert ex["status"] == "queued", ex
    queued = sorted(q["to_number"] for q in await trackly.db[c.QUEUED].find({}).to_list(None))
    assert queued == ["+12125550101", "+12125550102", "+12125550103", "+12125550106"], queued
    skipped = ex["counts"]["skipped"]
    assert skipped["frequency_cap"] == 1 and skipped["invalid_phone"] == 1, skipped
    from trackly_exec.api.models import ContactOut

    shown = [ContactOut.from_doc(d) for d in await trackly.db[c.CONTACTS].find({}).to_list(None)]
    assert {x.id: x.phone for x in shown}[2] == "12125550102" and {x.id: x.timezone for x in shown}[3] is None
