"""Inbound messages and opt-out keywords over the daemon's HTTP server, and STOP in the middle of a campaign."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlencode

import pytest
from twilio.request_validator import RequestValidator

from trackly_exec.app import Trackly
from trackly_exec.config import Settings
from trackly_exec.store import constants as c
from trackly_exec.store.client import Store
from trackly_exec.testing.fakes.infobip import InfobipFake
from trackly_exec.tracking.optout import keyword

from .doors_support import IB_INBOUND, mo
from .executor_support import assert_one_record_each, seed
from .tracking_support import (
    CM_TOKEN,
    PUBLIC,
    TW_SID,
    TW_TOKEN,
    Daemon,
    seed_account,
    seed_contact,
    seed_list,
    snapshot,
    start_daemon,
    tri,
)

LIST_NUMBER = "+14155550100"
PHONE = "+14155550123"


async def _subscribed(d: Daemon, contact_id: int) -> bool | None:
    return tri((await d.store[c.CONTACTS].find_one({"_id": contact_id}))["subscribed"])


@pytest.mark.parametrize(
    "text,word",
    [
        ("STOP", "STOP"),
        ("  stop\n", "STOP"),
        ("Unsubscribe", "UNSUBSCRIBE"),
        ("cancel", "CANCEL"),
        ("END", "END"),
        ("quit", "QUIT"),
        ("REVOKE", "REVOKE"),
        ("optout", "OPTOUT"),
        ("StopAll", "STOPALL"),
        ("Stop.", "STOP"),
        ("STOP!", "STOP"),
        ("'stop' ", "STOP"),
        ("Unsubscribe!!", "UNSUBSCRIBE"),
        ("start.", "START"),
        ("STOP PLEASE", None),
        ("STOP. PLEASE", None),
        ("...", None),
        ("please stop", None),
        ("", None),
        ("start", "START"),
        ("help", "HELP"),
    ],
)
def test_keywords_are_whole_messages(text: str, word: str | None) -> None:
    """Keywords match only as the whole (trimmed, case-insensitive) message."""
    assert keyword(text) == word


async def test_stop_unsubscribes_on_the_list_of_that_number(daemon: Daemon) -> None:
    """STOP to a list's number unsubscribes the sender on that list only, stores the message and publishes opt_out."""
    await seed_account(daemon.store)
    await seed_list(daemon.store, list_id=1)
    await seed_list(daemon.store, list_id=2, from_number="+14155550199")
    await seed_contact(daemon.store, contact_id=1, list_id=1, phone=PHONE)
    await seed_contact(daemon.store, contact_id=2, list_id=2, phone=PHONE)
    await seed_contact(daemon.store, contact_id=3, list_id=1, phone="+14155550124")
    assert (await daemon.post(IB_INBOUND, mo(" Stop ")))[0] == 200
    assert (await _subscribed(daemon, 1), await _subscribed(daemon, 2), await _subscribed(daemon, 3)) == (
        False,
        True,
        True,
    )
    [stored] = await daemon.store[c.INBOUND].find({}).to_list(None)
    assert stored["from_number"] == PHONE and stored["keyword"] == "STOP" and stored["sending_list_ids"] == [1]
    [event] = await daemon.store[c.EVENTS].find({"kind": "opt_out"}).to_list(None)
    assert event["data"]["keyword"] == "STOP" and event["data"]["sending_list_id"] == 1
    assert event["data"]["phone"] == "+1415•••0123"  # kept masked, as the message is


async def test_not_a_keyword_changes_nothing_but_is_stored(daemon: Daemon) -> None:
    """'STOP PLEASE' is not an opt-out: the contact stays subscribed, the message is stored."""
    await seed_account(daemon.store)
    await seed_list(daemon.store)
    await seed_contact(daemon.store, contact_id=1, phone=PHONE)
    assert (await daemon.post(IB_INBOUND, mo("STOP PLEASE")))[0] == 200
    assert await _subscribed(daemon, 1) is True
    assert await daemon.store[c.INBOUND].count_documents({}) == 1


async def test_stopall_unsubscribes_on_every_list_of_the_account(daemon: Daemon) -> None:
    """STOPALL unsubscribes the sender on every list of that account, not on other accounts' lists."""
    await seed_account(daemon.store)
    await seed_account(daemon.store, account_id=2)
    await seed_list(daemon.store, list_id=1)
    await seed_list(daemon.store, list_id=2, from_number="+14155550199")
    await seed_list(daemon.store, list_id=3, account_id=2, from_number="+14155550198")
    for cid, lid in ((1, 1), (2, 2), (3, 3)):
        await seed_contact(daemon.store, contact_id=cid, list_id=lid, phone=PHONE)
    assert (await daemon.post(IB_INBOUND, mo("STOPALL")))[0] == 200
    assert [await _subscribed(daemon, i) for i in (1, 2, 3)] == [False, False, True]


async def test_start_resubscribes(daemon: Daemon) -> None:
    """START (and YES, UNSTOP) after STOP resubscribes the contact."""
    await seed_account(daemon.store)
    await seed_list(daemon.store)
    await seed_contact(daemon.store, contact_id=1, phone=PHONE)
    for text, expected, mid in (
        ("STOP", False, "a"),
        ("START", True, "b"),
        ("QUIT", False, "c"),
        ("yes", True, "d"),
        ("end", False, "e"),
        ("UNSTOP", True, "f"),
    ):
        assert (await daemon.post(IB_INBOUND, mo(text, message_id=mid)))[0] == 200
        assert await _subscribed(daemon, 1) is expected, text


def _at(minute: int) -> str:
    return f"2026-11-29T10:{minute:02d}:00.000+0000"


async def test_a_replayed_start_does_not_undo_a_later_stop(daemon: Daemon) -> None:
    """STOP, START, STOP, then the START delivered again (a provider's retry, or a replay of the request): the second
    delivery of an inbound message id already stored is not applied again, so the contact stays unsubscribed. A START
    with a new id that the provider received before the last STOP (late, out of order) changes nothing either; one
    received after it resubscribes."""
    await seed_account(daemon.store)
    await seed_list(daemon.store)
    await seed_contact(daemon.store, contact_id=1, phone=PHONE)
    for text, mid, minute, expected in (
        ("STOP", "m1", 1, False),
        ("START", "m2", 2, True),
        ("STOP", "m3", 3, False),
        ("START", "m2", 2, False),  # the same message again
        ("START", "m2", 9, False),  # even with another receive time
        ("START", "m0", 2, False),  # received before the last STOP, delivered after it
        ("START", "m4", 4, True),
    ):
        assert (await daemon.post(IB_INBOUND, mo(text, message_id=mid, received_at=_at(minute))))[0] == 200
        assert await _subscribed(daemon, 1) is expected, (text, mid)
    assert await daemon.store[c.INBOUND].count_documents({}) == 5


async def test_a_replayed_twilio_start_does_not_undo_a_later_stop(daemon: Daemon) -> None:
    """Twilio's inbound webhook has no receive time (ours is taken): its retry of a START after a later STOP is known
    by its MessageSid, and is not applied again."""
    await seed_account(daemon.store)
    await seed_list(daemon.store, driver="twilio")
    await seed_contact(daemon.store, contact_id=1, phone=PHONE)
    path = "/webhooks/twilio/inbound"
    for text, sid, expected in (("STOP", "SM1", False), ("START", "SM2", True), ("STOP", "SM3", False)):
        assert (await daemon.twilio(path, _twilio_inbound(text, sid)))[0] == 200
        assert await _subscribed(daemon, 1) is expected, sid
    assert (await daemon.twilio(path, _twilio_inbound("START", "SM2")))[0] == 200
    assert await _subscribed(daemon, 1) is False
    assert (await daemon.twilio(path, _twilio_inbound("STOP", "SM1")))[0] == 200  # a STOP again only ever holds
    assert await _subscribed(daemon, 1) is False


@pytest.mark.parametrize("stop_last", [True, False])
async def test_stop_and_start_in_one_request_follow_their_receive_times(daemon: Daemon, stop_last: bool) -> None:
    """A report request carrying a START and a STOP of one number: the one the provider received last wins, whatever
    their order in the request."""
    await seed_account(daemon.store)
    await seed_list(daemon.store)
    await seed_contact(daemon.store, contact_id=1, phone=PHONE)
    stop = json.loads(mo("STOP", message_id="s", received_at=_at(5 if stop_last else 1)))["results"][0]
    start = json.loads(mo("START", message_id="g", received_at=_at(1 if stop_last else 5)))["results"][0]
    body = json.dumps({"results": [start, stop] if stop_last else [stop, start], "messageCount": 2})
    assert (await daemon.post(IB_INBOUND, body))[0] == 200
    assert await _subscribed(daemon, 1) is (not stop_last)


async def test_help_answers_with_twiml_on_twilio(daemon: Daemon) -> None:
    """HELP through a signed Twilio inbound webhook answers TwiML with the list's help text (XML-escaped)."""
    await seed_account(daemon.store)
    await seed_list(daemon.store, driver="twilio", help_text="Acme <alerts>: reply STOP to opt out")
    params = {
        "AccountSid": "AC" + "0" * 32,
        "Body": "help",
        "From": PHONE,
        "To": LIST_NUMBER,
        "MessageSid": "SM9",
        "NumMedia": "0",
        "SmsStatus": "received",
    }
    status, body = await daemon.twilio("/webhooks/twilio/inbound", params)
    assert status == 200
    text = body.decode()
    assert "<Response><Message>Acme &lt;alerts&gt;: reply STOP to opt out</Message></Response>" in text
    status, body = await daemon.twilio("/webhooks/twilio/inbound", {**params, "Body": "hello", "MessageSid": "SM10"})
    assert status == 200 and "<Response/>" in body.decode()


def _twilio_inbound(body: str, sid: str, **extra: str) -> dict[str, str]:
    return {"AccountSid": TW_SID, "Body": body, "From": PHONE, "To": LIST_NUMBER, "MessageSid": sid, **extra}


async def test_twilio_opt_out_type_follows_the_providers_keywords(daemon: Daemon) -> None:
    """With Advanced Opt-Out, Twilio sends ``OptOutType`` (STOP/START/HELP) for its own, possibly custom or localized,
    keywords: a French ``ARRET`` marked STOP unsubscribes, ``REPRENDRE`` marked START resubscribes; our own STOPALL
    keeps its meaning under Twilio's STOP, and a message without the field is read by our list."""
    await seed_account(daemon.store)
    await seed_list(daemon.store, driver="twilio", help_text="Aide: ecrivez ARRET")
    await seed_contact(daemon.store, contact_id=1, phone=PHONE)
    path = "/webhooks/twilio/inbound"
    assert (await daemon.twilio(path, _twilio_inbound("ARRET", "SM1", OptOutType="STOP")))[0] == 200
    assert await _subscribed(daemon, 1) is False
    stored = await daemon.store[c.INBOUND].find_one({"_id": "twilio:SM1"})
    assert stored["keyword"] == "STOP"
    assert (await daemon.twilio(path, _twilio_inbound("REPRENDRE", "SM2", OptOutType="START")))[0] == 200
    assert await _subscribed(daemon, 1) is True
    status, body = await daemon.twilio(path, _twilio_inbound("AIDE", "SM3", OptOutType="HELP"))
    assert status == 200 and "Aide: ecrivez ARRET" in body.decode()
    assert await _subscribed(daemon, 1) is True
    assert (await daemon.twilio(path, _twilio_inbound("stopall", "SM4", OptOutType="STOP")))[0] == 200
    assert (await daemon.store[c.INBOUND].find_one({"_id": "twilio:SM4"}))["keyword"] == "STOPALL"
    assert await _subscribed(daemon, 1) is False
    assert (await daemon.twilio(path, _twilio_inbound("start", "SM5")))[0] == 200  # no OptOutType: our list
    assert await _subscribed(daemon, 1) is True
    assert (await daemon.twilio(path, _twilio_inbound("ARRET", "SM6")))[0] == 200  # not ours, not marked: a message
    assert await _subscribed(daemon, 1) is True


async def test_twilio_inbound_by_get_is_signed_and_applied(daemon: Daemon) -> None:
    """Twilio calls an inbound URL configured for GET with the parameters in the query string and signs the whole
    URL: a signed GET STOP unsubscribes and answers TwiML; unsigned or wrongly signed, 403 and nothing changes."""
    await seed_account(daemon.store)
    await seed_list(daemon.store, driver="twilio")
    await seed_contact(daemon.store, contact_id=1, phone=PHONE)
    path = "/webhooks/twilio/inbound?" + urlencode(_twilio_inbound("STOP", "SMg1"))
    good = RequestValidator(TW_TOKEN).compute_signature(PUBLIC + path, {})
    for headers in ({}, {"X-Twilio-Signature": RequestValidator("other").compute_signature(PUBLIC + path, {})}):
        async with daemon.http.get(daemon.url + path, headers=headers) as resp:
            assert resp.status == 403
    assert await _subscribed(daemon, 1) is True
    async with daemon.http.get(daemon.url + path, headers={"X-Twilio-Signature": good}) as resp:
        assert resp.status == 200 and "<Response/>" in await resp.text()
    assert await _subscribed(daemon, 1) is False
    async with daemon.http.head(daemon.url + path, headers={"X-Twilio-Signature": good}) as resp:
        assert resp.status == 405


async def test_a_stop_before_the_contact_exists_holds_for_the_contact_and_test_sends(daemon: Daemon) -> None:
    """A STOP from a number that is not (yet) a contact of the list is remembered for that list: the contact created
    for it later starts unsubscribed, whatever the import says, and a test send to the number is skipped; its START
    forgets it, and the next import subscribes it again. Another list's contact of the number is untouched."""
    from trackly_exec.api.contacts import upsert
    from trackly_exec.campaigns.testsend import send_test

    await seed_account(daemon.store)
    lst = await seed_list(daemon.store)
    await seed_list(daemon.store, list_id=2, from_number="+14155550199")
    assert (await daemon.post(IB_INBOUND, mo("STOP", message_id="s1")))[0] == 200
    assert await daemon.store[c.OPT_OUTS].count_documents({}) == 1
    row = {"phone": PHONE, "first_name": "Ann", "subscribed": True}
    assert (await upsert(daemon.store, 1, [row])).inserted == 1
    assert (await upsert(daemon.store, 2, [row])).inserted == 1
    one = await daemon.store[c.CONTACTS].find_one({"sending_list_id": 1, "phone": PHONE})
    two = await daemon.store[c.CONTACTS].find_one({"sending_list_id": 2, "phone": PHONE})
    assert tri(one["subscribed"]) is False and tri(two["subscribed"]) is True
    assert (await upsert(daemon.store, 1, [row])).updated == 1  # a re-import does not resubscribe it either
    assert tri((await daemon.store[c.CONTACTS].find_one({"_id": one["_id"]}))["subscribed"]) is False
    creative = {"_id": 1, "account_id": 1, "name": "c", "variants": [{"key": "a", "body": "hello", "weight": 1}]}
    await daemon.store[c.CONTACTS].delete_one({"_id": one["_id"]})  # the number, not a contact again
    result = await send_test(daemon.trackly, sending_list=lst.to_doc(), creative=creative, numbers=[PHONE])
    assert [(m["skipped"], m["message_id"]) for m in result["messages"]] == [("unsubscribed", None)]
    assert (await daemon.post(IB_INBOUND, mo("START", message_id="s2")))[0] == 200
    assert await daemon.store[c.OPT_OUTS].count_documents({}) == 0
    assert (await upsert(daemon.store, 1, [row])).inserted == 1
    assert tri((await daemon.store[c.CONTACTS].find_one({"sending_list_id": 1, "phone": PHONE}))["subscribed"]) is True


async def test_cm_inbound_stop(daemon: Daemon) -> None:
    """A CM inbound STOP (numbers in 00 form) unsubscribes the contact."""
    await seed_account(daemon.store)
    await seed_list(daemon.store, driver="cm")
    await seed_contact(daemon.store, contact_id=1, phone=PHONE)
    body = json.dumps(
        {
            "reference": "r1",
            "from": {"number": "0014155550123"},
            "to": {"number": "0014155550100"},
            "message": {"text": "STOP"},
            "channel": "SMS",
        }
    )
    assert (await daemon.post(f"/webhooks/cm/inbound/{CM_TOKEN}", body))[0] == 200
    assert await _subscribed(daemon, 1) is False


async def test_forged_inbound_is_403_and_changes_nothing(daemon: Daemon) -> None:
    """An inbound STOP without the path token, or an unsigned Twilio one, is refused and changes nothing."""
    await seed_account(daemon.store)
    await seed_list(daemon.store)
    await seed_contact(daemon.store, contact_id=1, phone=PHONE)
    before = await snapshot(daemon.store)
    assert (await daemon.post("/webhooks/infobip/inbound", mo("STOP")))[0] == 403
    assert (await daemon.post("/webhooks/infobip/inbound/wrong", mo("STOP")))[0] == 403
    assert (
        await daemon.post(
            "/webhooks/twilio/inbound",
            "From=%2B14155550123&To=%2B14155550100&Body=STOP",
            "application/x-www-form-urlencoded",
        )
    )[0] == 403
    assert (await daemon.post(IB_INBOUND, '{"results": [{"to": "1"}]}'))[0] == 400
    assert await snapshot(daemon.store) == before


async def test_duplicate_inbound_is_stored_once(daemon: Daemon) -> None:
    """A provider retry of the same inbound message id is stored once."""
    await seed_account(daemon.store)
    await seed_list(daemon.store)
    for _ in range(3):
        assert (await daemon.post(IB_INBOUND, mo("hello there")))[0] == 200
    assert await daemon.store[c.INBOUND].count_documents({}) == 1


# ------------------------------------------------------------------------------------------------ mid-campaign


def _requeue(doc: dict[str, Any], execution_id: int) -> dict[str, Any]:
    return {
        **doc,
        "_id": f"{doc['_id'][:4]}{execution_id:04x}{doc['_id'][8:]}",
        "execution_id": execution_id,
        "claimed_by": None,
        "claimed_at": None,
        "sending_at": None,
    }


@pytest.mark.parametrize("open_execution", [True, False], ids=["by-execution", "queue-written-directly"])
async def test_stop_in_the_middle_of_a_running_campaign(settings: Settings, store: Store, open_execution: bool) -> None:
    """After STOP arrives mid-campaign, nothing more is sent to that contact: its queued message is dead-lettered
    CONTACT_BLOCKED at once, and a message queued later ends CONTACT_BLOCKED at send time. The queued message is
    found by its open execution and contact (the queue's unique index), or by the list's queue when no open
    execution is known."""
    from trackly_exec.executor.coordinator import Coordinator

    fake = InfobipFake(api_key="k")
    await fake.start()
    try:
        async for d in start_daemon(settings, store, drivers={"infobip": {"base_url": fake.url}}):
            first = await seed(store, 10, execution_id=1)
            contacts = {x["_id"]: x for x in await store[c.CONTACTS].find({}).to_list(None)}
            first_docs = await store[c.QUEUED].find({}).to_list(None)
            coordinator = Coordinator(d.trackly)
            await coordinator.run_until_idle()  # first half of the campaign
            assert len(fake.ledger) == 10
            second = [_requeue(doc, 2) for doc in first_docs]  # the rest of the campaign is queued
            await store[c.QUEUED].insert_many(second)
            if open_execution:
                await store[c.EXECUTIONS].insert_one({"_id": 2, "status": "queued", "sending_list_id": 1})
            stopper = contacts[3]
            events: list[Any] = []

            async def record(batch: Any, events: list[Any] = events) -> None:
                events.extend(batch)

            d.trackly.bus.subscribe(record)
            status, _ = await d.post(IB_INBOUND, mo("STOP", sender=stopper["phone"], to="+15550000000"))
            assert status == 200
            assert tri((await store[c.CONTACTS].find_one({"_id": 3}))["subscribed"]) is False
            blocked = await store[c.FAILED].find({"contact_id": 3}).to_list(None)
            assert [(f["execution_id"], f["reason"]) for f in blocked] == [(2, "CONTACT_BLOCKED")]
            # dead-lettered, so alerted like every dead letter (not only the opt-out itself)
            dead = [e for e in events if e.kind == "failed_message"]
            assert [(e.data["message_id"], e.data["reason"]) for e in dead] == [(blocked[0]["_id"], "CONTACT_BLOCKED")]
            late = _requeue(next(doc for doc in first_docs if doc["contact_id"] == 3), 3)
            await store[c.QUEUED].insert_one(late)  # queued after the STOP, e.g. by a race
            await coordinator.run_until_idle()  # second half
            phone = contacts[3]["phone"]
            assert [e.to for e in fake.ledger].count(phone) == 1  # only the first-half message
            assert len(fake.ledger) == 19
            late_record = await store[c.FAILED].find_one({"_id": late["_id"]})
            assert late_record is not None and late_record["reason"] == "CONTACT_BLOCKED"
            await assert_one_record_each(store, first + [x["_id"] for x in second] + [late["_id"]])
            assert await store[c.QUEUED].count_documents({}) == 0
            await coordinator.stop(1)
    finally:
        await fake.stop()


async def test_contacts_stored_in_other_spellings_are_one_handset_and_held_to_its_stop(
    settings: Settings, store: Store
) -> None:
    """Contacts written by another tool may store a number in any spelling. A campaign texts each handset once, in
    E.164, whatever the spellings (a national form, spaces, dots; one beside the E.164 contact of the list); a STOP
    from the number, which cannot find such a contact, still holds: the queued message ends CONTACT_BLOCKED at
    send time and the next run skips the contact as unsubscribed."""
    from trackly_exec.campaigns.scheduler import trigger
    from trackly_exec.executor.coordinator import Coordinator

    from .campaign_fixtures import contact, seed_campaign

    fake = InfobipFake(api_key="k")
    await fake.start()
    try:
        async for d in start_daemon(settings, store, drivers={"infobip": {"base_url": fake.url}}):
            spellings = ["(415) 555-0123", "+1 415 555 0123", "415.555.0123", "+14155550124", "415-555-0124"]
            await seed_campaign(
                store,
                contacts=[contact(i + 1, phone=p) for i, p in enumerate(spellings)],
                list_kw={"driver": "infobip", "from_number": LIST_NUMBER},
            )
            first = await trigger(d.trackly, 1)
            ex = (await store[c.EXECUTIONS].find_one({"_id": first}))["counts"]
            assert ex["queued"] == 2 and ex["unique"] == 2 and sum(ex["skipped"].values()) == 0, ex
            # three other spellings of two handsets: merged, counted apart from the audiences' overlap
            assert ex["duplicate_handsets"] == 3 and ex["overlap"] == 0, ex
            queued = {q["to_number"]: q for q in await store[c.QUEUED].find({}).to_list(None)}
            assert sorted(queued) == [PHONE, "+14155550124"]
            assert queued[PHONE]["contact_id"] == 1 and queued[PHONE]["number_stop"] is True
            assert queued["+14155550124"]["contact_id"] == 4 and not queued["+14155550124"].get("number_stop")
            assert (await d.post(IB_INBOUND, mo("STOP", message_id="s-odd")))[0] == 200  # from PHONE
            assert tri((await store[c.CONTACTS].find_one({"_id": 1}))["subscribed"]) is True  # not found by number
            await Coordinator(d.trackly).run_until_idle()
            assert [e.to for e in fake.ledger] == ["+14155550124"]
            failed = await store[c.FAILED].find_one({"_id": queued[PHONE]["_id"]})
            assert failed["reason"] == "CONTACT_BLOCKED" and "STOP" in failed["detail"]
            await store[c.CAMPAIGNS].update_one({"_id": 1}, {"$set": {"status": "active"}})
            second = await trigger(d.trackly, 1, force=True)
            ex = (await store[c.EXECUTIONS].find_one({"_id": second}))["counts"]
            assert ex["queued"] == 1 and ex["skipped"]["unsubscribed"] == 1 and ex["unique"] == 2, ex
            assert [q["to_number"] for q in await store[c.QUEUED].find({}).to_list(None)] == ["+14155550124"]
    finally:
        await fake.stop()


@pytest.mark.parametrize("odd_first", [False, True], ids=["e164-contact-first", "odd-spelling-first"])
async def test_an_opt_out_stored_in_another_spelling_holds_the_handset(trackly: Trackly, odd_first: bool) -> None:
    """One handset on two contacts of a list, one in E.164 and one in another spelling (written by another tool):
    unsubscribed or blocked on either one, the number is not texted, whichever contact comes first; a number
    unsubscribed on neither is texted once."""
    from trackly_exec.campaigns.scheduler import trigger

    from .campaign_fixtures import contact, register_echo, seed_campaign

    register_echo()
    e164 = [
        contact(1, phone="+12125550401"),
        contact(2, phone="+12125550402"),
        contact(3, phone="+12125550403", subscribed=False),
        contact(4, phone="+12125550404"),
    ]
    odd = [
        contact(5, phone="(212) 555-0401"),
        contact(6, phone="(212) 555-0402", subscribed=False),
        contact(7, phone="212.555.0403"),
        contact(8, phone="+1 212 555 0404", blocked=True),
    ]
    if odd_first:  # the other tool's contacts have the lower ids: the union reaches them first
        for a, b in zip(e164, odd, strict=True):
            a["_id"], b["_id"] = b["_id"], a["_id"]
    await seed_campaign(trackly.store, contacts=e164 + odd)
    eid = await trigger(trackly, 1)
    counts = (await trackly.db[c.EXECUTIONS].find_one({"_id": eid}))["counts"]
    assert [q["to_number"] for q in await trackly.db[c.QUEUED].find({}).to_list(None)] == ["+12125550401"]
    assert counts["queued"] == 1 and counts["skipped"]["unsubscribed"] == 3, counts


async def test_a_contact_in_another_spelling_is_texted_when_its_e164_twin_is_not_selected(trackly: Trackly) -> None:
    """A contact stored in another spelling whose E.164 twin is a contact of the list but not of the campaign's
    audiences is the one the campaign selected: its handset is texted once, in E.164. Its twin still holds it back
    when unsubscribed or blocked there; a twin in the audiences stands for the handset (texted once, through it)."""
    from trackly_exec.campaigns.scheduler import trigger

    from .campaign_fixtures import contact, register_echo, seed_campaign

    register_echo()
    contacts = [
        contact(1, phone="+12125550201"),  # twin outside the audience
        contact(2, phone="+12125550202", subscribed=False),  # twin outside, unsubscribed
        contact(3, phone="+12125550203", blocked=True),  # twin outside, blocked
        contact(4, phone="+12125550204"),  # twin inside the audience
        contact(11, phone="(212) 555-0201"),
        contact(12, phone="(212) 555-0202"),
        contact(13, phone="212.555.0203"),
        contact(14, phone="+1 212 555 0204"),
        contact(15, phone="212-555-0201"),  # a second other spelling of the first handset
    ]
    audiences = [
        {"_id": 1, "sending_list_id": 1, "contact_ids": [11, 12, 13, 15]},
        {"_id": 2, "sending_list_id": 1, "filter": {"phone": {"in": ["+12125550204", "+1 212 555 0204"]}}},
    ]
    await seed_campaign(trackly.store, contacts=contacts, audiences=audiences)
    eid = await trigger(trackly, 1)
    counts = (await trackly.db[c.EXECUTIONS].find_one({"_id": eid}))["counts"]
    queued = {q["to_number"]: q["contact_id"] for q in await trackly.db[c.QUEUED].find({}).to_list(None)}
    assert queued == {"+12125550201": 11, "+12125550204": 4}, queued
    assert counts["queued"] == 2 and counts["skipped"]["unsubscribed"] == 2, counts
    assert counts["duplicate_handsets"] == 2, counts  # 15 (after 11) and 14 (its twin 4 is selected)
