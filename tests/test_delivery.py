"""Delivery reports onto MessageSent over the daemon's HTTP endpoint: tristate, monotonic, NO_RESPONSE, signals."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from typing import Any

import pytest

from trackly_exec.drivers.contract import DeliveryReport
from trackly_exec.store import constants as c
from trackly_exec.store.client import Store
from trackly_exec.store.models import MessageSent, utcnow
from trackly_exec.tracking import delivery
from trackly_exec.tracking.delivery import ingest

from .tracking_support import (
    CM_STATUS,
    IB_STATUS,
    Daemon,
    cm_report,
    infobip_body,
    infobip_report,
    message_fields,
    seed_account,
    seed_contact,
    seed_list,
    seed_no_response,
    seed_sent,
    tri,
    twilio_status,
)


async def _doc(d: Daemon, mid: str) -> dict:
    return await d.store[c.SENT].find_one({"_id": mid})


async def test_final_report_sets_the_tristate_and_details(daemon: Daemon) -> None:
    """DELIVERED sets delivered=True with status, no error code and the provider's doneAt as delivered_at."""
    await seed_account(daemon.store)
    [m] = await seed_sent(daemon.store, 1)
    assert (await daemon.post(IB_STATUS, infobip_body(infobip_report(m.id))))[0] == 200
    doc = await _doc(daemon, m.id)
    assert tri(doc["delivered"]) is True and doc["delivery_status"] == "DELIVERED_TO_HANDSET"
    assert doc["delivery_error_code"] is None
    assert doc["delivered_at"].isoformat().startswith("2026-11-29T10:00:00")


async def test_delivered_to_operator_is_intermediate_and_the_final_report_decides(daemon: Daemon) -> None:
    """Infobip's DELIVERED_TO_OPERATOR (group DELIVERED, "intermediate" in its status codes, sent with
    ``intermediateReport``) moves the status only; the final report after it decides, either way, with one
    customer-webhook event."""
    await seed_account(daemon.store, webhook_url="http://127.0.0.1:9/hook")
    ok, ko = await seed_sent(daemon.store, 2)
    operator = [infobip_report(m.id, "DELIVERED_TO_OPERATOR", "DELIVERED") for m in (ok, ko)]
    for r in operator:
        r["status"]["id"] = 2
    status, text = await daemon.post(IB_STATUS, infobip_body(*operator))
    assert status == 200 and json.loads(text)["final"] == 0
    for m in (ok, ko):
        doc = await _doc(daemon, m.id)
        assert tri(doc["delivered"]) is None and doc["delivery_status"] == "DELIVERED_TO_OPERATOR"
    final = [
        infobip_report(ok.id),
        infobip_report(ko.id, "UNDELIVERABLE_NOT_DELIVERED", "UNDELIVERABLE", error="EC_ABSENT_SUBSCRIBER_SM"),
    ]
    status, text = await daemon.post(IB_STATUS, infobip_body(*final))
    assert status == 200 and json.loads(text)["final"] == 2
    assert tri((await _doc(daemon, ok.id))["delivered"]) is True
    doc = await _doc(daemon, ko.id)
    assert tri(doc["delivered"]) is False and doc["delivery_error_code"] == "EC_ABSENT_SUBSCRIBER_SM"
    outbox = await daemon.store[c.OUTBOX].find({}).to_list(None)
    events = [e["id"] for o in outbox for e in o.get("events", [])] + [o["_id"] for o in outbox if "events" not in o]
    assert sorted(events) == sorted(f"{m.id}:delivery" for m in (ok, ko))


async def test_undeliverable_records_error_and_publishes_failure(daemon: Daemon) -> None:
    """UNDELIVERABLE sets delivered=False, stores the error code and publishes one delivery_failure event."""
    await seed_account(daemon.store)
    [m] = await seed_sent(daemon.store, 1)
    body = infobip_body(
        infobip_report(m.id, "UNDELIVERABLE_NOT_DELIVERED", "UNDELIVERABLE", error="EC_UNKNOWN_SUBSCRIBER")
    )
    assert (await daemon.post(IB_STATUS, body))[0] == 200
    doc = await _doc(daemon, m.id)
    assert tri(doc["delivered"]) is False and doc["delivery_error_code"] == "EC_UNKNOWN_SUBSCRIBER"
    events = await daemon.store[c.EVENTS].find({"kind": "delivery_failure"}).to_list(None)
    assert [e["data"]["message_id"] for e in events] == [m.id]


async def test_duplicates_and_out_of_order_never_change_a_final_state(daemon: Daemon) -> None:
    """After a final report, duplicates, a contrary final report and a late intermediate one are all no-ops."""
    await seed_account(daemon.store, webhook_url="http://127.0.0.1:9/hook")
    [m] = await seed_sent(daemon.store, 1)
    final = infobip_body(infobip_report(m.id))
    assert (await daemon.post(IB_STATUS, final))[0] == 200
    settled = await _doc(daemon, m.id)
    for body in (
        final,
        final,
        infobip_body(infobip_report(m.id, "PENDING_ENROUTE", "PENDING")),
        infobip_body(infobip_report(m.id, "UNDELIVERABLE_NOT_DELIVERED", "UNDELIVERABLE", error="X")),
        infobip_body(infobip_report(m.id, "EXPIRED_EXPIRED", "EXPIRED", done_at="2026-12-06T10:00:00.000+0000")),
    ):
        status, resp = await daemon.post(IB_STATUS, body)
        assert status == 200 and json.loads(resp)["updated"] == 0
    assert await _doc(daemon, m.id) == settled
    assert await daemon.store[c.OUTBOX].count_documents({}) == 1
    assert await daemon.store[c.EVENTS].count_documents({"kind": "delivery_failure"}) == 0


async def test_intermediate_then_final(daemon: Daemon) -> None:
    """An intermediate report only moves delivery_status while delivered is None; the final one settles it."""
    await seed_account(daemon.store)
    [m] = await seed_sent(daemon.store, 1)
    await daemon.post(IB_STATUS, infobip_body(infobip_report(m.id, "PENDING_ENROUTE", "PENDING")))
    doc = await _doc(daemon, m.id)
    assert tri(doc["delivered"]) is None and doc["delivery_status"] == "PENDING_ENROUTE"
    await daemon.post(IB_STATUS, infobip_body(infobip_report(m.id, "EXPIRED_EXPIRED", "EXPIRED")))
    doc = await _doc(daemon, m.id)
    assert tri(doc["delivered"]) is False and doc["delivery_status"] == "EXPIRED_EXPIRED"


async def test_final_and_intermediate_in_one_batch(daemon: Daemon) -> None:
    """Within one request the final report wins whatever its position."""
    await seed_account(daemon.store)
    a, b = await seed_sent(daemon.store, 2)
    body = infobip_body(
        infobip_report(a.id),
        infobip_report(a.id, "PENDING_ENROUTE", "PENDING"),
        infobip_report(b.id, "PENDING_ENROUTE", "PENDING"),
        infobip_report(b.id),
    )
    assert (await daemon.post(IB_STATUS, body))[0] == 200
    for m in (a, b):
        doc = await _doc(daemon, m.id)
        assert tri(doc["delivered"]) is True and doc["delivery_status"] == "DELIVERED_TO_HANDSET"


async def test_cm_report_matched_by_reference(daemon: Daemon) -> None:
    """A CM status report is matched by our id in `reference`; code 2 is delivered, 3 failed."""
    await seed_account(daemon.store)
    a, b = await seed_sent(daemon.store, 2, provider="cm")
    assert (await daemon.post(CM_STATUS, cm_report(a.id, "2")))[0] == 200
    assert (await daemon.post(CM_STATUS, cm_report(b.id, "3", "12", "Not delivered")))[0] == 200
    assert tri((await _doc(daemon, a.id))["delivered"]) is True
    doc_b = await _doc(daemon, b.id)
    assert tri(doc_b["delivered"]) is False and doc_b["delivery_error_code"] == "12"


async def test_cm_xml_and_get_reports(daemon: Daemon) -> None:
    """CM's portal posts status reports as JSON or XML (``<MESSAGES><MSG RECEIVED><TO/><REFERENCE/><STATUS><CODE/>
    <ERRORCODE/><ERRORDESCRIPTION/></STATUS></MSG></MESSAGES>``), older gateways by GET with upper-case parameters:
    all are applied. An XML document type (entities) or broken XML is a 400 that changes nothing, and a GET without
    the path token a 403."""
    await seed_account(daemon.store)
    a, b, g = await seed_sent(daemon.store, 3, provider="cm")
    xml = (
        '<?xml version="1.0"?><MESSAGES>'
        f'<MSG RECEIVED="2026-11-29T10:00:05"><TO>0014155550123</TO><REFERENCE>{a.id}</REFERENCE>'
        "<STATUS><CODE>2</CODE><ERRORCODE></ERRORCODE><ERRORDESCRIPTION></ERRORDESCRIPTION></STATUS></MSG>"
        f'<MSG RECEIVED="2026-11-29T10:00:06"><TO>0014155550124</TO><REFERENCE>{b.id}</REFERENCE>'
        "<STATUS><CODE>3</CODE><ERRORCODE>12</ERRORCODE><ERRORDESCRIPTION>Not delivered</ERRORDESCRIPTION></STATUS>"
        "</MSG></MESSAGES>"
    )
    status, text = await daemon.post(CM_STATUS, xml, "application/xml")
    assert status == 200 and json.loads(text)["final"] == 2
    doc_a, doc_b = await _doc(daemon, a.id), await _doc(daemon, b.id)
    assert tri(doc_a["delivered"]) is True and doc_a["delivered_at"].isoformat().startswith("2026-11-29T10:00:05")
    assert tri(doc_b["delivered"]) is False and doc_b["delivery_error_code"] == "12"
    query = f"?REFERENCE={g.id}&STATUS=2&TO=0014155550125&STATUSDESCRIPTION=0"
    async with daemon.http.get(daemon.url + "/webhooks/cm/status" + query) as resp:
        assert resp.status == 403
    async with daemon.http.get(daemon.url + CM_STATUS + query) as resp:
        assert resp.status == 200
    assert tri((await _doc(daemon, g.id))["delivered"]) is True
    entity = '<?xml version="1.0"?><!DOCTYPE m [<!ENTITY x "2">]><MSG><REFERENCE>r</REFERENCE><STATUS><CODE>&x;</CODE>'
    for bad in (entity + "</STATUS></MSG>", "<MESSAGES><MSG>", "<MESSAGES/>"):
        assert (await daemon.post(CM_STATUS, bad, "application/xml"))[0] == 400, bad


async def test_match_by_provider_message_id(daemon: Daemon) -> None:
    """A report carrying only the provider's id is matched by (provider instance, provider_message_id)."""
    await seed_account(daemon.store)
    a, b = await seed_sent(daemon.store, 2, provider="twilio")
    await seed_sent(daemon.store, 1, provider="infobip", start=5, provider_message_id="P0-other")
    res = await ingest(
        daemon.trackly, "twilio", [DeliveryReport(provider_message_id="P1", status="delivered", delivered=True)]
    )
    assert res.updated == 1
    assert tri((await _doc(daemon, b.id))["delivered"]) is True
    assert tri((await _doc(daemon, a.id))["delivered"]) is None


async def test_no_response_is_resolved_by_a_report(daemon: Daemon) -> None:
    """A report for a NO_RESPONSE dead letter turns it into one MessageSent (submitted, delivered) and removes it."""
    await seed_account(daemon.store, webhook_url="http://127.0.0.1:9/hook")
    lst = await seed_list(daemon.store)
    await daemon.store[c.SENDING_LISTS].update_one({"_id": lst.id}, {"$set": {"price_per_segment": 0.0075}})
    f = await seed_no_response(daemon.store, 42)
    body = infobip_body(infobip_report(f.id))
    status, resp = await daemon.post(IB_STATUS, body)
    assert status == 200 and json.loads(resp)["resolved"] == 1
    assert await daemon.store[c.FAILED].count_documents({}) == 0
    doc = await _doc(daemon, f.id)
    assert (
        tri(doc["submitted"]) is True
        and tri(doc["delivered"]) is True
        and tri(doc["resolved_from_no_response"]) is True
    )
    assert doc["to_number"] == f.to_number and doc["campaign_id"] == f.campaign_id and doc["provider"] == "infobip"
    assert doc["cost"] == 0.0075  # what the account was charged: 1 segment at the list's price, as reconciliation
    # a duplicate of the report changes nothing and leaves exactly one record
    assert json.loads((await daemon.post(IB_STATUS, body))[1])["updated"] == 0
    assert await daemon.store[c.SENT].count_documents({"_id": f.id}) == 1
    assert await daemon.store[c.FAILED].count_documents({"_id": f.id}) == 0
    assert await daemon.store[c.OUTBOX].count_documents({}) == 1


async def test_a_refused_message_is_not_submitted(daemon: Daemon) -> None:
    """A final report of a message the provider or network refused outright (Infobip's REJECTED group, CM's code 1,
    Twilio's "failed") records ``submitted = False`` beside ``delivered = False``; one submitted and not delivered
    (UNDELIVERABLE, CM 3, Twilio "undelivered") stays ``submitted = True``."""
    await seed_account(daemon.store)
    ib_rejected, ib_undelivered = await seed_sent(daemon.store, 2)
    cm_rejected, cm_failed = await seed_sent(daemon.store, 2, provider="cm", start=2)
    tw_failed, tw_undelivered = await seed_sent(daemon.store, 2, provider="twilio", start=4)
    reports = [
        infobip_report(ib_rejected.id, "REJECTED_NETWORK", "REJECTED"),
        infobip_report(ib_undelivered.id, "UNDELIVERABLE_NOT_DELIVERED", "UNDELIVERABLE"),
    ]
    assert (await daemon.post(IB_STATUS, infobip_body(*reports)))[0] == 200
    assert (await daemon.post(CM_STATUS, cm_report(cm_rejected.id, "1")))[0] == 200
    assert (await daemon.post(CM_STATUS, cm_report(cm_failed.id, "3")))[0] == 200
    for m, status in ((tw_failed, "failed"), (tw_undelivered, "undelivered")):
        path = f"/webhooks/twilio/status?mid={m.id}"
        assert (await daemon.twilio(path, twilio_status(f"SM{m.id}", status, "30008")))[0] == 200
    for m, submitted in (
        (ib_rejected, False),
        (ib_undelivered, True),
        (cm_rejected, False),
        (cm_failed, True),
        (tw_failed, False),
        (tw_undelivered, True),
    ):
        doc = await _doc(daemon, m.id)
        assert (tri(doc["submitted"]), tri(doc["delivered"])) == (submitted, False), (m.provider, doc)


async def test_other_failures_are_not_resolved(daemon: Daemon) -> None:
    """A report for a message dead-lettered for another reason (PROVIDER_ERROR) creates nothing."""
    f = await seed_no_response(daemon.store, 43)
    await daemon.store[c.FAILED].update_one({"_id": f.id}, {"$set": {"reason": "PROVIDER_ERROR"}})
    assert json.loads((await daemon.post(IB_STATUS, infobip_body(infobip_report(f.id))))[1])["unknown"] == 1
    assert await daemon.store[c.SENT].count_documents({}) == 0


async def test_spam_code_flags_message_and_alerts(daemon: Daemon) -> None:
    """Infobip REJECTED_FLOODING_FILTER and Twilio 30007 set spam=True and publish spam_complaint events."""
    await seed_account(daemon.store)
    [ib] = await seed_sent(daemon.store, 1)
    [tw] = await seed_sent(daemon.store, 1, provider="twilio", start=1)
    await daemon.post(IB_STATUS, infobip_body(infobip_report(ib.id, "REJECTED_FLOODING_FILTER", "REJECTED")))
    res = await ingest(
        daemon.trackly,
        "twilio",
        [DeliveryReport(message_id=tw.id, status="undelivered", delivered=False, error_code="30007", spam=True)],
    )
    assert res.final == 1
    for m in (ib, tw):
        doc = await _doc(daemon, m.id)
        assert tri(doc["spam"]) is True and tri(doc["delivered"]) is False
    kinds = sorted(
        e["data"]["message_id"] for e in await daemon.store[c.EVENTS].find({"kind": "spam_complaint"}).to_list(None)
    )
    assert kinds == sorted([ib.id, tw.id])


async def test_opted_out_code_unsubscribes_contact(daemon: Daemon) -> None:
    """A Twilio 21610 (recipient opted out) report unsubscribes the message's contact."""
    await seed_account(daemon.store)
    [m] = await seed_sent(daemon.store, 1, provider="twilio")
    await seed_contact(daemon.store, contact_id=m.contact_id, phone=m.to_number)
    res = await ingest(
        daemon.trackly,
        "twilio",
        [DeliveryReport(message_id=m.id, status="failed", delivered=False, error_code="21610", opted_out=True)],
    )
    assert res.final == 1
    assert tri((await daemon.store[c.CONTACTS].find_one({"_id": m.contact_id}))["subscribed"]) is False


async def test_twilio_real_format_with_drivers_parser(daemon: Daemon) -> None:
    """A signed form-encoded Twilio callback with ErrorCode 21610 unsubscribes through the real driver parser."""
    await seed_account(daemon.store)
    [m] = await seed_sent(daemon.store, 1, provider="twilio")
    await seed_contact(daemon.store, contact_id=m.contact_id, phone=m.to_number)
    status, _ = await daemon.twilio(f"/webhooks/twilio/status?mid={m.id}", twilio_status("P0", "failed", "21610"))
    assert status == 200
    assert tri((await daemon.store[c.CONTACTS].find_one({"_id": m.contact_id}))["subscribed"]) is False


async def test_ingestion_is_batched(daemon: Daemon) -> None:
    """100 reports in one request cost a constant handful of store commands, not one per report."""
    await seed_account(daemon.store, webhook_url="http://127.0.0.1:9/hook")
    sent = await seed_sent(daemon.store, 100)
    from pymongo import monitoring

    class Count(monitoring.CommandListener):
        def __init__(self) -> None:
            self.n = 0

        def started(self, event: monitoring.CommandStartedEvent) -> None:
            self.n += 1

        def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
            pass

        def failed(self, event: monitoring.CommandFailedEvent) -> None:
            pass

    from pymongo import AsyncMongoClient

    from trackly_exec.store.client import Store as S

    listener = Count()
    client: AsyncMongoClient = AsyncMongoClient(
        daemon.trackly.settings.mongo.uri.get_secret_value(), tz_aware=True, event_listeners=[listener]
    )
    try:
        counted = S(client, client[daemon.trackly.settings.mongo.database])
        real = daemon.trackly.store
        daemon.trackly.store = counted
        daemon.trackly.bus.store = counted
        reports = [
            DeliveryReport(message_id=m.id, status="UNDELIVERABLE", delivered=False, error_code="E") for m in sent
        ]
        res = await ingest(daemon.trackly, "infobip", reports)
        daemon.trackly.store = real
        daemon.trackly.bus.store = real
    finally:
        await client.close()
    assert res.final == 100 and res.outbox == 100
    assert listener.n <= 6, listener.n


async def test_report_before_the_send_is_recorded_is_parked_then_applied(daemon: Daemon) -> None:
    """A report for a message still in the queue is accepted (200) and parked, the other reports of the batch
    apply at once; once the executor records the message, the parked report is applied and leaves the park."""
    from trackly_exec.tracking.parked import replay

    await seed_account(daemon.store)
    [done] = await seed_sent(daemon.store, 1)
    early = f"{77:016x}"
    await daemon.store[c.QUEUED].insert_one({"_id": early, "claimed_by": "x:1", "sending_list_id": 1})
    body = infobip_body(infobip_report(done.id), infobip_report(early))
    status, resp = await daemon.post(IB_STATUS, body)
    assert status == 200 and json.loads(resp)["pending"] == 1 and json.loads(resp)["updated"] == 1
    assert tri((await _doc(daemon, done.id))["delivered"]) is True
    assert await daemon.store[c.DELIVERY_REPORTS].count_documents({}) == 1
    assert await replay(daemon.trackly) == 0  # still queued: stays parked
    assert await daemon.store[c.DELIVERY_REPORTS].count_documents({}) == 1
    await daemon.store[c.QUEUED].delete_one({"_id": early})  # the executor records the send
    await seed_sent(daemon.store, 1, start=77)
    assert await replay(daemon.trackly) == 1
    assert tri((await _doc(daemon, early))["delivered"]) is True
    assert await daemon.store[c.DELIVERY_REPORTS].count_documents({}) == 0


async def test_parked_report_of_a_message_that_ended_otherwise_is_dropped(daemon: Daemon) -> None:
    """A parked report whose message left the queue without a MessageSent (say STALE) is dropped, creating nothing."""
    from trackly_exec.tracking.parked import replay

    await seed_account(daemon.store)
    early = f"{78:016x}"
    await daemon.store[c.QUEUED].insert_one({"_id": early, "claimed_by": "x:1", "sending_list_id": 1})
    status, _ = await daemon.post(IB_STATUS, infobip_body(infobip_report(early)))
    assert status == 200
    await daemon.store[c.QUEUED].delete_one({"_id": early})
    assert await replay(daemon.trackly) == 0
    assert await daemon.store[c.DELIVERY_REPORTS].count_documents({}) == 0
    assert await daemon.store[c.SENT].count_documents({}) == 0


async def test_store_keeps_types_of_set_values(store: Store) -> None:
    """The embedded store keeps a $set datetime a date and a $set boolean a boolean (nx-27017 alone does not)."""
    from pymongo import UpdateOne

    from trackly_exec.store.models import utcnow

    now = utcnow()
    await store[c.SENT].insert_many([{"_id": "a", "delivered": None}, {"_id": "b", "delivered": None}])
    await store[c.SENT].update_one({"_id": "a", "delivered": None}, {"$set": {"delivered": True, "delivered_at": now}})
    await store[c.SENT].bulk_write([UpdateOne({"_id": "b"}, {"$set": {"delivered": False, "delivered_at": now}})])
    docs = await store[c.SENT].find({}).sort("_id", 1).to_list(None)
    assert [d["delivered"] for d in docs] == [True, False]
    assert all(d["delivered_at"] == now for d in docs)
    assert await store[c.SENT].count_documents({"delivered_at": {"$lte": now}}) == 2


async def test_random_report_sequences_settle_on_the_first_final(daemon: Daemon) -> None:
    """Across random interleavings of duplicate, intermediate and contrary final reports in random batches, each
    message keeps the first final state it received and gets exactly one customer-webhook event."""
    import random

    rng = random.Random(5)
    await seed_account(daemon.store, webhook_url="http://127.0.0.1:9/hook")
    sent = await seed_sent(daemon.store, 40)
    kinds = [
        ("DELIVERED_TO_HANDSET", True),
        ("UNDELIVERABLE_NOT_DELIVERED", False),
        ("EXPIRED_EXPIRED", False),
        ("PENDING_ENROUTE", None),
        ("PENDING_ACCEPTED", None),
    ]
    stream = [(m.id, *rng.choice(kinds)) for m in sent for _ in range(rng.randint(1, 6))]
    rng.shuffle(stream)
    first_final: dict[str, tuple[str, bool]] = {}
    last_status: dict[str, str] = {}
    while stream:
        batch = stream[: rng.randint(1, 12)]
        stream = stream[len(batch) :]
        reports = [DeliveryReport(message_id=mid, status=st, delivered=d) for mid, st, d in batch]
        chosen: dict[str, tuple[str, bool | None]] = {}
        for mid, st, d in batch:  # the rule within one request: first final, else the last intermediate
            if mid not in chosen or chosen[mid][1] is None:
                chosen[mid] = (st, d)
        for mid, (st, d) in chosen.items():
            if mid in first_final:
                continue
            if d is None:
                last_status[mid] = st
            else:
                first_final[mid] = (st, d)
        await ingest(daemon.trackly, "infobip", reports)
    for m in sent:
        doc = await _doc(daemon, m.id)
        if m.id in first_final:
            assert (doc["delivery_status"], tri(doc["delivered"])) == first_final[m.id]
        else:
            assert tri(doc["delivered"]) is None and doc["delivery_status"] == last_status[m.id]
    events = [
        e["id"]
        for d in await daemon.store[c.OUTBOX].find({}).to_list(None)
        for e in d.get("events", [{"id": d["_id"]}])
    ]
    assert sorted(events) == sorted(f"{mid}:delivery" for mid in first_final)


async def test_concurrent_duplicates_create_one_event_each(daemon: Daemon) -> None:
    """The same batch of reports arriving several times at once (over HTTP, and racing inside the daemon) records
    each state once and creates one customer-webhook event and one alert per message."""
    import asyncio

    await seed_account(daemon.store, webhook_url="http://127.0.0.1:9/hook")
    over_http = await seed_sent(daemon.store, 30)
    racing = await seed_sent(daemon.store, 30, start=100)
    body = infobip_body(*(infobip_report(m.id, "UNDELIVERABLE_NOT_DELIVERED", "UNDELIVERABLE") for m in over_http))
    answers = await asyncio.gather(*(daemon.post(IB_STATUS, body) for _ in range(4)))
    assert {status for status, _ in answers} == {200}
    assert sum(json.loads(b)["final"] for _, b in answers) == 30
    reports = [DeliveryReport(message_id=m.id, status="UNDELIVERABLE", delivered=False) for m in racing]
    direct = await asyncio.gather(*(ingest(daemon.trackly, "infobip", reports) for _ in range(4)))
    assert sum(r.final for r in direct) == 30
    outbox = await daemon.store[c.OUTBOX].find({}).to_list(None)
    events = [e["id"] for d in outbox for e in d.get("events", [{"id": d["_id"]}])]
    assert sorted(events) == sorted(f"{m.id}:delivery" for m in over_http + racing)
    assert await daemon.store[c.EVENTS].count_documents({"kind": "delivery_failure"}) == 60


async def test_reports_sharing_a_change_are_applied_together_each_conditionally(daemon: Daemon) -> None:
    """Reports with the same change (status and done time) go out as one statement over their ids, each message
    still conditional on its own ``delivered`` being None: in one batch, a shared done time, distinct ones, an
    intermediate status and a message already final all end as if updated one by one, with one event per
    final state recorded."""
    await seed_account(daemon.store, webhook_url="http://127.0.0.1:9/hook")
    sent = await seed_sent(daemon.store, 7)
    done = "2026-11-29T10:00:0{}.000+0000"
    first = await daemon.post(IB_STATUS, infobip_body(infobip_report(sent[6].id, done_at=done.format(9))))
    assert first[0] == 200
    reports = [infobip_report(m.id, done_at=done.format(1)) for m in sent[:3]]  # one shared change
    reports += [infobip_report(sent[3].id, done_at=done.format(2)), infobip_report(sent[4].id, done_at=done.format(3))]
    reports += [infobip_report(sent[5].id, "PENDING_ENROUTE", "PENDING")]  # intermediate
    reports += [infobip_report(sent[6].id, "UNDELIVERABLE_NOT_DELIVERED", "UNDELIVERABLE", error="EC_X")]  # final
    status, text = await daemon.post(IB_STATUS, infobip_body(*reports))
    assert status == 200
    result = json.loads(text)
    assert (result["matched"], result["updated"], result["final"], result["ignored"]) == (7, 6, 5, 1)
    docs = {d["_id"]: d for d in await daemon.store[c.SENT].find({}).to_list(None)}
    seconds = [docs[m.id]["delivered_at"].second if docs[m.id].get("delivered_at") else None for m in sent]
    assert seconds == [1, 1, 1, 2, 3, None, 9]
    assert [tri(docs[m.id]["delivered"]) for m in sent] == [True] * 5 + [None, True]
    assert docs[sent[5].id]["delivery_status"] == "PENDING_ENROUTE"
    outbox = await daemon.store[c.OUTBOX].find({}).to_list(None)
    events = [e["id"] for o in outbox for e in o.get("events", [])] + [o["_id"] for o in outbox if "events" not in o]
    assert sorted(events) == sorted(f"{m.id}:delivery" for m in sent[:5] + sent[6:])


async def test_racing_resolutions_of_a_no_response_keep_the_final_state(
    daemon: Daemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two reports resolving the same NO_RESPONSE message at once (Twilio posts 'sent' and 'delivered' together):
    the one whose MessageSent insert loses is applied to the record that won, with the normal path's rule. The
    final state is kept whichever report inserts first, and written to the outbox once."""
    await seed_account(daemon.store, webhook_url="http://127.0.0.1:9/hook")
    late_final = await seed_no_response(daemon.store, 50, provider="twilio")  # 'sent' inserts, 'delivered' loses
    early_final = await seed_no_response(daemon.store, 51, provider="twilio")  # 'delivered' inserts, 'sent' loses

    def report(mid: str, status: str) -> DeliveryReport:
        return DeliveryReport(
            message_id=mid,
            provider_message_id=f"SM{mid}",
            status=status,
            delivered=True if status == "delivered" else None,
        )

    racing = {late_final.id: report(late_final.id, "sent"), early_final.id: report(early_final.id, "delivered")}
    real = delivery._dead_letters

    async def then_the_other_report_resolves_it(trackly: Any, ids: list[str], allowed: set[str]) -> Any:
        found = await real(trackly, ids, allowed)
        other = racing.pop(ids[0], None)
        if other is not None:  # the concurrent request, from its first read to its last write
            await ingest(trackly, "twilio", [other])
        return found

    monkeypatch.setattr(delivery, "_dead_letters", then_the_other_report_resolves_it)
    res = await ingest(daemon.trackly, "twilio", [report(late_final.id, "delivered")])
    assert (res.resolved, res.updated, res.final, res.ignored) == (0, 1, 1, 0)
    res = await ingest(daemon.trackly, "twilio", [report(early_final.id, "sent")])
    assert (res.resolved, res.updated, res.final, res.ignored) == (0, 0, 0, 1)
    for f in (late_final, early_final):
        doc = await _doc(daemon, f.id)
        assert tri(doc["delivered"]) is True and doc["delivery_status"] == "delivered", doc
        assert tri(doc["resolved_from_no_response"]) is True
    assert await daemon.store[c.FAILED].count_documents({}) == 0
    outbox = await daemon.store[c.OUTBOX].find({}).to_list(None)
    events = [e["id"] for o in outbox for e in o.get("events", [{"id": o["_id"]}])]
    assert sorted(events) == sorted(f"{f.id}:delivery" for f in (late_final, early_final))


async def test_concurrent_callbacks_resolving_no_response_messages_over_http(daemon: Daemon) -> None:
    """Twilio's 'sent' and 'delivered' callbacks for 30 NO_RESPONSE messages, all posted at once: every message
    ends delivered, with one record and one customer-webhook event."""
    await seed_account(daemon.store, webhook_url="http://127.0.0.1:9/hook")
    fs = [await seed_no_response(daemon.store, i, provider="twilio") for i in range(30)]
    answers = await asyncio.gather(
        *(
            daemon.twilio(f"/webhooks/twilio/status?mid={f.id}", twilio_status(f"SM{i:032d}", st))
            for i, f in enumerate(fs)
            for st in ("sent", "delivered")
        )
    )
    assert {status for status, _ in answers} == {200}
    docs = {d["_id"]: d for d in await daemon.store[c.SENT].find({}).to_list(None)}
    assert sorted(docs) == sorted(f.id for f in fs)
    assert [(docs[f.id]["delivery_status"], tri(docs[f.id]["delivered"])) for f in fs] == [("delivered", True)] * 30
    assert await daemon.store[c.FAILED].count_documents({}) == 0
    outbox = await daemon.store[c.OUTBOX].find({}).to_list(None)
    events = [e["id"] for o in outbox for e in o.get("events", [{"id": o["_id"]}])]
    assert sorted(events) == sorted(f"{f.id}:delivery" for f in fs)


@pytest.mark.parametrize("recorded_as", ["sent", "no_response"])
async def test_report_racing_the_record_of_its_message_is_applied(
    daemon: Daemon, monkeypatch: pytest.MonkeyPatch, recorded_as: str
) -> None:
    """A report read while its message is still in the queue, whose message is recorded (by the executor as
    MessageSent, or by recovery as NO_RESPONSE) and leaves the queue between ingest's first read and its queue
    read, was in none of the three places ingest looked: it is applied (or resolves the message), never
    dropped as unknown."""
    await seed_account(daemon.store, webhook_url="http://127.0.0.1:9/hook")
    mid = f"{42:016x}"
    await daemon.store[c.QUEUED].insert_one(
        {"_id": mid, "claimed_by": "x:1", "sending_list_id": 1, "sending_at": utcnow(), **message_fields(42)}
    )
    real = delivery._dead_letters
    fired: list[str] = []

    async def read_then_the_message_is_recorded(trackly: Any, ids: list[str], allowed: set[str]) -> Any:
        found = await real(trackly, ids, allowed)
        if not fired:  # after the MessageSent and dead-letter reads, before the queue read
            fired.append(mid)  # record, then leave the queue, as outcomes.record_sends and recovery do
            if recorded_as == "sent":
                sent = MessageSent(
                    id=mid, provider="infobip", provider_message_id=mid, timestamp=utcnow(), **message_fields(42)
                )
                await daemon.store[c.SENT].insert_one(sent.to_doc())
            else:
                await seed_no_response(daemon.store, 42)
            await daemon.store[c.QUEUED].delete_one({"_id": mid})
        return found

    monkeypatch.setattr(delivery, "_dead_letters", read_then_the_message_is_recorded)
    status, body = await daemon.post(IB_STATUS, infobip_body(infobip_report(mid)))
    assert fired and status == 200
    result = json.loads(body)
    assert (result["unknown"], result["pending"], result["final"]) == (0, 0, 1), result
    assert result["resolved"] == (recorded_as == "no_response")
    doc = await _doc(daemon, mid)
    assert tri(doc["delivered"]) is True
    assert await daemon.store[c.FAILED].count_documents({}) == 0
    assert await daemon.store[c.DELIVERY_REPORTS].count_documents({}) == 0
    assert await daemon.store[c.OUTBOX].count_documents({}) == 1


async def test_a_time_out_of_range_in_utc_is_ignored_and_the_batch_applied(daemon: Daemon) -> None:
    """A provider time that parses but overflows once converted to UTC (year 9999 with a negative offset, year 1
    with a positive one) is treated as absent: the report applies with the time of receipt, the other reports of
    the request too, over HTTP (Infobip doneAt, CM received in JSON and XML) and in ingest itself (a driver that
    lets such a time through), a parked report included."""
    await seed_account(daemon.store)
    good, odd = await seed_sent(daemon.store, 2)
    body = infobip_body(infobip_report(good.id), infobip_report(odd.id, done_at="9999-12-31T23:59:59.000-2359"))
    status, text = await daemon.post(IB_STATUS, body)
    assert status == 200 and json.loads(text)["final"] == 2, text
    assert tri((await _doc(daemon, good.id))["delivered"]) is True
    doc = await _doc(daemon, odd.id)
    assert tri(doc["delivered"]) is True and doc["delivered_at"].year == utcnow().year
    js, xml = await seed_sent(daemon.store, 2, provider="cm", start=2)
    status, text = await daemon.post(
        CM_STATUS, cm_report(js.id).replace("2026-11-29T10:00:00", "9999-12-31T23:59:59-23:59")
    )
    assert status == 200 and json.loads(text)["final"] == 1, text
    body = (
        f'<MESSAGES><MSG RECEIVED="0001-01-01T00:00:00+23:59"><TO>0014155550123</TO><REFERENCE>{xml.id}</REFERENCE>'
        "<STATUS><CODE>2</CODE></STATUS></MSG></MESSAGES>"
    )
    status, text = await daemon.post(CM_STATUS, body, "application/xml")
    assert status == 200 and json.loads(text)["final"] == 1, text
    for m in (js, xml):
        assert tri((await _doc(daemon, m.id))["delivered"]) is True
    [direct] = await seed_sent(daemon.store, 1, start=4)
    queued = f"{5:016x}"
    await daemon.store[c.QUEUED].insert_one({"_id": queued, "claimed_by": "x:1", "sending_list_id": 1})
    minus = dt.timezone(-dt.timedelta(hours=23, minutes=59))
    odd_time = dt.datetime(9999, 12, 31, 23, 59, 59, tzinfo=minus)
    reports = [
        DeliveryReport(message_id=i, status="DELIVERED", delivered=True, done_at=odd_time) for i in (direct.id, queued)
    ]
    res = await ingest(daemon.trackly, "infobip", reports)
    assert (res.final, res.pending) == (1, 1)
    assert (await _doc(daemon, direct.id))["delivered_at"].year == utcnow().year
    [parked] = await daemon.store[c.DELIVERY_REPORTS].find({}).to_list(None)
    assert parked["report"]["done_at"] is None
