"""The customer's delivery-status webhook: outbox entries, signed POSTs, retries, give-up, isolation from ingestion."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import hmac
import json
import time
from collections import Counter
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from trackly_exec.config import Settings
from trackly_exec.store import constants as c
from trackly_exec.store.client import Store
from trackly_exec.store.models import utcnow
from trackly_exec.tracking import outbox as outbox_mod
from trackly_exec.tracking.customer_webhook import single_entry
from trackly_exec.tracking.outbox import Outbox, sign, verify_signature

from .doors_support import serve_hook
from .tracking_support import (
    IB_STATUS,
    TW_SID,
    TW_TOKEN,
    Daemon,
    infobip_body,
    infobip_report,
    seed_account,
    seed_sent,
    start_daemon,
)

SECRET = "whsec_test_0123456789"
FIELDS = {
    "id",
    "account",
    "sendingList",
    "messageCreative",
    "fromNumber",
    "toNumber",
    "delivered",
    "sendType",
    "filterBots",
    "length",
    "timestamp",
}


class Receiver:
    """A customer endpoint on loopback: answers the scripted statuses in order (then 200), after ``delay``
    seconds, or hangs."""

    def __init__(self, *statuses: int, hang: bool = False, delay: float = 0.0) -> None:
        self.statuses = list(statuses)
        self.hang = hang
        self.delay = delay
        self.requests: list[tuple[dict[str, str], bytes, int]] = []
        self.got = asyncio.Event()
        self._release = asyncio.Event()
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if self.hang:
            self.requests.append((dict(request.headers), body, 0))
            self.got.set()
            await self._release.wait()
        if self.delay:
            await asyncio.sleep(self.delay)
        status = self.statuses.pop(0) if self.statuses else 200
        self.requests.append((dict(request.headers), body, status))
        self.got.set()
        return web.Response(status=status, text="ok" if status < 300 else "nope")

    async def start(self) -> Receiver:
        self.runner, port = await serve_hook(self.handle)
        self.url = f"http://127.0.0.1:{port}/hook"
        return self

    async def stop(self) -> None:
        self._release.set()
        if self.runner is not None:
            await self.runner.cleanup()

    def delivered_ids(self) -> list[str]:
        return [h["X-Trackly-Event-Id"] for h, _, s in self.requests if 200 <= s < 300]


@pytest.fixture
async def daemon(settings: Settings, store: Store) -> AsyncIterator[Daemon]:
    async for d in start_daemon(settings, store, outbox_timeout_seconds=1.0, outbox_poll_seconds=0.05):
        yield d


@pytest.fixture
async def receivers() -> AsyncIterator[list[Receiver]]:
    made: list[Receiver] = []
    yield made
    for r in made:
        await r.stop()


async def _receiver(receivers: list[Receiver], *statuses: int, hang: bool = False, delay: float = 0.0) -> Receiver:
    r = await Receiver(*statuses, hang=hang, delay=delay).start()
    receivers.append(r)
    return r


def _independent_check(headers: dict[str, str], body: bytes) -> bool:
    """The README's receiver-side verification, written out without trackly_exec."""
    ts = headers["X-Trackly-Timestamp"]
    expected = hmac.new(SECRET.encode(), ts.encode() + b"." + body, hashlib.sha256).hexdigest()
    return abs(time.time() - int(ts)) <= 300 and hmac.compare_digest(headers["X-Trackly-Signature"], "v1=" + expected)


async def test_fails_then_recovers_delivered_once_with_valid_signature(
    daemon: Daemon, receivers: list[Receiver]
) -> None:
    """A 500 then 200 endpoint gets the event retried with backoff and delivered exactly once, correctly signed."""
    rcv = await _receiver(receivers, 500)
    await seed_account(daemon.store, webhook_url=rcv.url, secret=SECRET)
    [m] = await seed_sent(daemon.store, 1)
    report = infobip_body(infobip_report(m.id))
    assert (await daemon.post(IB_STATUS, report))[0] == 200
    assert (await daemon.post(IB_STATUS, report))[0] == 200  # duplicate report: still one event
    outbox = Outbox(daemon.trackly)
    try:
        assert (await outbox.run_until_idle())["failed"] == 1
        entry = await daemon.store[c.OUTBOX].find_one({})
        assert entry["status"] == "pending" and entry["attempts"] == 1 and entry["next_attempt_at"] > utcnow()
        assert (await outbox.run_until_idle())["attempts"] == 0  # not due yet: nothing is re-sent early
        later = utcnow() + dt.timedelta(hours=1)
        assert (await outbox.run_until_idle(now=later))["delivered"] == 1
        assert (await outbox.run_until_idle(now=later + dt.timedelta(hours=2)))["attempts"] == 0
    finally:
        await outbox.stop(1)
    assert rcv.delivered_ids() == [f"{m.id}:delivery"]
    assert len(rcv.requests) == 2 and len({h["X-Trackly-Event-Id"] for h, _, _ in rcv.requests}) == 1
    headers, body, _ = rcv.requests[-1]
    assert _independent_check(headers, body)
    assert verify_signature(SECRET, headers["X-Trackly-Timestamp"], body, headers["X-Trackly-Signature"])
    payload = json.loads(body)
    assert set(payload) == FIELDS
    assert payload["id"] == m.id and payload["account"] == 1 and payload["sendingList"] == 1
    assert payload["messageCreative"] == 789 and payload["delivered"] is True and payload["sendType"] == "campaign"
    assert payload["fromNumber"] == m.from_number and payload["toNumber"] == m.to_number
    assert payload["filterBots"] is False and payload["length"] == 5
    assert payload["timestamp"] == m.timestamp.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert (await daemon.store[c.OUTBOX].find_one({}))["status"] == "delivered"


async def test_batch_with_a_failed_event_continues_it_alone(daemon: Daemon, receivers: list[Receiver]) -> None:
    """The events of one report batch share an outbox document; an event that fails is retried on its own and
    every event is delivered exactly once."""
    rcv = await _receiver(receivers, 500)
    await seed_account(daemon.store, webhook_url=rcv.url, secret=SECRET)
    sent = await seed_sent(daemon.store, 3)
    assert (await daemon.post(IB_STATUS, infobip_body(*(infobip_report(m.id) for m in sent))))[0] == 200
    [batch] = await daemon.store[c.OUTBOX].find({}).to_list(None)
    assert batch["_id"].startswith("batch:") and [e["id"] for e in batch["events"]] == [
        f"{m.id}:delivery" for m in sent
    ]
    outbox = Outbox(daemon.trackly)
    try:
        first = await outbox.run_until_idle()
        assert (first["delivered"], first["failed"]) == (2, 1)
        assert (await outbox.run_until_idle(now=utcnow() + dt.timedelta(hours=1)))["delivered"] == 1
    finally:
        await outbox.stop(1)
    assert sorted(rcv.delivered_ids()) == sorted(f"{m.id}:delivery" for m in sent)
    statuses = sorted(d["status"] for d in await daemon.store[c.OUTBOX].find({}).to_list(None))
    assert statuses == ["delivered", "split"]
    assert all(_independent_check(h, b) for h, b, _ in rcv.requests)


async def test_gives_up_after_max_age_with_alert(daemon: Daemon, receivers: list[Receiver]) -> None:
    """An endpoint that keeps failing is retried until outbox_max_age_hours, then marked dead with an alert."""
    rcv = await _receiver(receivers, *([503] * 100))
    await seed_account(daemon.store, webhook_url=rcv.url, secret=SECRET)
    [m] = await seed_sent(daemon.store, 1)
    await daemon.post(IB_STATUS, infobip_body(infobip_report(m.id, "UNDELIVERABLE_NOT_DELIVERED", "UNDELIVERABLE")))
    outbox = Outbox(daemon.trackly)
    try:
        now = utcnow()
        totals = {"failed": 0, "dead": 0}
        for hours in range(30):
            counts = await outbox.run_until_idle(now=now + dt.timedelta(hours=hours))
            totals["failed"] += counts["failed"]
            totals["dead"] += counts["dead"]
    finally:
        await outbox.stop(1)
    entry = await daemon.store[c.OUTBOX].find_one({})
    assert entry["status"] == "dead" and totals["dead"] == 1 and totals["failed"] >= 5
    assert json.loads(rcv.requests[0][1])["delivered"] is False
    events = await daemon.store[c.EVENTS].find({"kind": "webhook_dead"}).to_list(None)
    assert len(events) == 1 and events[0]["data"]["event_id"] == f"{m.id}:delivery"


async def test_no_webhook_url_no_entries(daemon: Daemon) -> None:
    """Accounts without a webhook_url get no outbox entries; intermediate reports never create one."""
    await seed_account(daemon.store)
    await seed_account(daemon.store, account_id=2, webhook_url="http://127.0.0.1:9/hook")
    [a] = await seed_sent(daemon.store, 1)
    [b] = await seed_sent(daemon.store, 1, start=1, account_id=2)
    await daemon.post(IB_STATUS, infobip_body(infobip_report(a.id), infobip_report(b.id, "PENDING_ENROUTE", "PENDING")))
    assert await daemon.store[c.OUTBOX].count_documents({}) == 0


async def test_non_http_webhook_url_is_never_called(daemon: Daemon) -> None:
    """An entry whose account's webhook_url is not http(s), or was removed since, is dropped without a request."""
    await seed_account(daemon.store, webhook_url="http://127.0.0.1:9/hook")
    [m] = await seed_sent(daemon.store, 1)
    await daemon.post(IB_STATUS, infobip_body(infobip_report(m.id)))
    await daemon.store[c.ACCOUNTS].update_one({"_id": 1}, {"$set": {"webhook_url": "file:///etc/passwd"}})
    outbox = Outbox(daemon.trackly)
    try:
        assert (await outbox.run_until_idle())["dropped"] == 1
    finally:
        await outbox.stop(1)
    assert (await daemon.store[c.OUTBOX].find_one({}))["status"] == "dropped"


async def test_filter_bots_comes_from_the_account(daemon: Daemon) -> None:
    """filterBots in the payload is the account's filter_bots setting."""
    await seed_account(daemon.store, webhook_url="http://127.0.0.1:9/hook", filter_bots=True)
    [m] = await seed_sent(daemon.store, 1)
    await daemon.post(IB_STATUS, infobip_body(infobip_report(m.id)))
    assert (await daemon.store[c.OUTBOX].find_one({}))["payload"]["filterBots"] is True


async def test_hanging_endpoint_delays_neither_ingestion_nor_other_accounts(
    daemon: Daemon, receivers: list[Receiver]
) -> None:
    """While one account's endpoint hangs, reports are still ingested and another account is served."""
    hung = await _receiver(receivers, hang=True)
    good = await _receiver(receivers)
    await seed_account(daemon.store, webhook_url=hung.url, secret=SECRET)
    await seed_account(daemon.store, account_id=2, webhook_url=good.url, secret=SECRET)
    slow = await seed_sent(daemon.store, 50)
    outbox = Outbox(daemon.trackly)
    await outbox.start()
    try:
        await daemon.post(IB_STATUS, infobip_body(*(infobip_report(m.id) for m in slow)))
        await asyncio.wait_for(hung.got.wait(), 30)  # a liveness bound
        fast = await seed_sent(daemon.store, 100, start=100, account_id=2)
        status, body = await daemon.post(IB_STATUS, infobip_body(*(infobip_report(m.id) for m in fast)))
        assert status == 200 and json.loads(body)["final"] == 100
        deadline = time.monotonic() + 10
        while len(good.delivered_ids()) < 100 and time.monotonic() < deadline:
            await asyncio.wait_for(good.got.wait(), 5)
            good.got.clear()
        assert len(set(good.delivered_ids())) == 100
    finally:
        await outbox.stop(0.5)
    per_account = daemon.trackly.settings.tracking.outbox_per_account_concurrency
    assert len(hung.requests) <= per_account  # the batch stops after its first timeouts: no 50 hung POSTs


async def test_batch_outlasting_one_lease_is_posted_once(
    daemon: Daemon, receivers: list[Receiver], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch whose POSTs take longer than one entry's lease (one POST's timeout and margin) keeps its claim while
    they go: it is not claimed again and re-POSTed, and it settles delivered. (Scaled down: a 2 s lease, 32 events
    answered in 0.3 s, 4 at a time.)"""
    monkeypatch.setattr(outbox_mod, "LEASE_MARGIN_SECONDS", 1.0)
    rcv = await _receiver(receivers, delay=0.3)
    await seed_account(daemon.store, webhook_url=rcv.url, secret=SECRET)
    sent = await seed_sent(daemon.store, 32)
    assert (await daemon.post(IB_STATUS, infobip_body(*(infobip_report(m.id) for m in sent))))[0] == 200
    outbox = Outbox(daemon.trackly)
    assert outbox.lease.ttl == dt.timedelta(seconds=2)
    await outbox.start()
    try:
        deadline = time.monotonic() + 8  # a liveness bound: unfixed, the entry never settles
        while time.monotonic() < deadline:
            entry = await daemon.store[c.OUTBOX].find_one({})
            if entry["status"] != "pending":
                break
            await asyncio.sleep(0.1)
    finally:
        await outbox.stop(1)
    posts = Counter(h["X-Trackly-Event-Id"] for h, _, _ in rcv.requests)
    assert sorted(posts) == sorted(f"{m.id}:delivery" for m in sent)
    assert set(posts.values()) == {1}, f"events POSTed more than once: {dict(Counter(posts.values()))}"
    [entry] = await daemon.store[c.OUTBOX].find({}).to_list(None)
    assert entry["status"] == "delivered" and entry["attempts"] == 1 and entry["claimed_by"] is None


async def test_a_crashed_workers_entry_is_retried_after_the_lease(daemon: Daemon, receivers: list[Receiver]) -> None:
    """An entry claimed by a worker that died (no renewal, no outcome) is due again once its lease expires."""
    rcv = await _receiver(receivers)
    await seed_account(daemon.store, webhook_url=rcv.url, secret=SECRET)
    sent = await seed_sent(daemon.store, 3)
    assert (await daemon.post(IB_STATUS, infobip_body(*(infobip_report(m.id) for m in sent))))[0] == 200
    crashed, other = Outbox(daemon.trackly), Outbox(daemon.trackly)
    try:
        now = utcnow()
        assert len(await crashed._claim(10, now)) == 1  # claimed, then the worker is gone
        assert (await other.run_until_idle(now=now))["attempts"] == 0  # held: not taken over early
        assert crashed.lease.ttl is not None
        assert (await other.run_until_idle(now=now + crashed.lease.ttl))["delivered"] == 3
    finally:
        await crashed.stop(1)
        await other.stop(1)
    assert sorted(rcv.delivered_ids()) == sorted(f"{m.id}:delivery" for m in sent)


async def test_a_dead_endpoints_backlog_does_not_starve_other_accounts(
    daemon: Daemon, receivers: list[Receiver]
) -> None:
    """Account 1's endpoint hangs and its 200-event batch was split into 200 single entries, all due: account 2's
    new event is still attempted at once, not after account 1's backlog (4 per POST timeout)."""
    hung = await _receiver(receivers, hang=True)
    good = await _receiver(receivers)
    await seed_account(daemon.store, webhook_url=hung.url, secret=SECRET)
    await seed_account(daemon.store, account_id=2, webhook_url=good.url, secret=SECRET)
    backlog = await seed_sent(daemon.store, 200)
    [b] = await seed_sent(daemon.store, 1, start=500, account_id=2, sending_list_id=2)
    assert (await daemon.post(IB_STATUS, infobip_body(*(infobip_report(m.id) for m in backlog))))[0] == 200
    outbox = Outbox(daemon.trackly)
    try:
        assert (await outbox.run_until_idle())["failed"] > 0  # one timeout: the batch is split
        assert await daemon.store[c.OUTBOX].count_documents({"account_id": 1, "status": "pending"}) == 200
        past = utcnow() - dt.timedelta(minutes=1)  # their retries fall due (before anything account 2 has)
        await daemon.store[c.OUTBOX].update_many(
            {"account_id": 1, "status": "pending"}, {"$set": {"next_attempt_at": past}}
        )
        assert (await daemon.post(IB_STATUS, infobip_body(infobip_report(b.id))))[0] == 200
        await outbox.start()
        await asyncio.wait_for(good.got.wait(), 5)  # a liveness bound: unfixed, it waits for 200 timeouts / 4
    finally:
        await outbox.stop(0.5)
    assert good.delivered_ids() == [f"{b.id}:delivery"]


async def test_one_claim_reaches_every_account_with_due_entries(daemon: Daemon) -> None:
    """One claim takes each account's due entries up to its cap, however many older ones another account has."""
    now = utcnow()
    old = now - dt.timedelta(minutes=5)
    backlog = [
        single_entry(f"m{i}:delivery", 1, {"id": f"m{i}"}, old, next_at=old + dt.timedelta(seconds=i))
        for i in range(300)
    ]
    others = [single_entry(f"n{a}:delivery", a, {"id": f"n{a}"}, now, next_at=now) for a in (2, 3)]
    await daemon.store[c.OUTBOX].insert_many([*backlog, *others])
    outbox = Outbox(daemon.trackly)
    try:
        docs = await outbox._claim(daemon.trackly.settings.tracking.outbox_concurrency, now)
        cap = daemon.trackly.settings.tracking.outbox_per_account_concurrency
        assert Counter(d["account_id"] for d in docs) == {1: cap, 2: 1, 3: 1}
        assert sorted(d["_id"] for d in docs if d["account_id"] == 1) == [f"m{i}:delivery" for i in range(cap)]
        # account 1 at its cap (in flight): the next claim reads past its backlog at once
        more = [single_entry(f"n{a}:delivery", a, {"id": f"n{a}"}, now, next_at=now) for a in (4, 5)]
        await daemon.store[c.OUTBOX].insert_many(more)
        assert sorted(d["account_id"] for d in await outbox._claim(1, now) + await outbox._claim(1, now)) == [4, 5]
    finally:
        await outbox.stop(1)


def test_verify_signature() -> None:
    """verify_signature accepts a fresh valid signature and rejects tampering, wrong secrets and old timestamps."""
    body = b'{"id":"a1b2"}'
    ts = str(int(time.time()))
    header = sign(SECRET, ts, body)
    assert verify_signature(SECRET, ts, body, header)
    assert verify_signature(SECRET, ts, body.decode(), "v1=deadbeef, " + header)  # rotation: any v1 matches
    assert not verify_signature(SECRET, ts, body + b" ", header)
    assert not verify_signature("other", ts, body, header)
    old = str(int(time.time()) - 301)
    assert not verify_signature(SECRET, old, body, sign(SECRET, old, body))
    assert not verify_signature(SECRET, "", body, header)
    assert not verify_signature(SECRET, ts, body, "")


def test_signature_format() -> None:
    """The signature is v1= and the hex HMAC-SHA256 of "<timestamp>.<body>"."""
    expected = hmac.new(b"k", b"1700000000.{}", hashlib.sha256).hexdigest()
    assert sign("k", "1700000000", b"{}") == f"v1={expected}"


async def test_end_to_end_send_report_customer_webhook(
    settings: Settings, store: Store, receivers: list[Receiver]
) -> None:
    """Executor sends through the Twilio fake, its signed status callbacks reach the daemon over HTTP, and the
    customer receives one signed webhook per message with the final state (spam code flagged and alerted)."""
    from trackly_exec.executor.coordinator import Coordinator
    from trackly_exec.testing.fakes.twilio import TwilioFake

    from .executor_support import seed

    fake = TwilioFake(account_sid=TW_SID, auth_token=TW_TOKEN)
    await fake.start()
    fake.dlr_outcome = lambda e: "delivered" if int(e.to[-1]) % 2 else ("undelivered", "30007")
    try:
        async for d in start_daemon(settings, store, drivers={"twilio": {"base_url": fake.url}}):
            d.trackly.settings.http.public_url = d.url  # callbacks (and what Twilio signs) go to this server
            rcv = await _receiver(receivers)
            ids = await seed(store, 10, driver="twilio")
            await store[c.ACCOUNTS].update_one({"_id": 1}, {"$set": {"webhook_url": rcv.url, "webhook_secret": SECRET}})
            coordinator = Coordinator(d.trackly)
            await coordinator.run_until_idle()
            await coordinator.stop(1)
            assert len(fake.ledger) == 10
            assert await fake.flush_reports() == 10 and not fake.report_failures
            outbox = Outbox(d.trackly)
            try:
                assert (await outbox.run_until_idle())["delivered"] == 10
            finally:
                await outbox.stop(1)
            sent = {x["_id"]: x for x in await store[c.SENT].find({}).to_list(None)}
            assert sorted(sent) == sorted(ids)
            bodies = {json.loads(b)["id"]: json.loads(b) for h, b, _ in rcv.requests if _independent_check(h, b)}
            assert sorted(bodies) == sorted(ids) and len(rcv.requests) == 10
            for mid, doc in sent.items():
                assert bodies[mid]["delivered"] is bool(doc["delivered"]) and bool(doc["spam"]) is not doc["delivered"]
            spam = await store[c.EVENTS].count_documents({"kind": "spam_complaint"})
            assert spam == sum(1 for x in sent.values() if not x["delivered"]) > 0
    finally:
        await fake.stop()
