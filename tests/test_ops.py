"""After the send: the message log and its CSV export, dead letters and their re-drive, the customer-webhook
outbox backlog — over the admin API (real HTTP, real store) and the executor (provider fakes)."""

from __future__ import annotations

import csv
import datetime as dt
import io
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from trackly_exec.api import csvsafe
from trackly_exec.app import Trackly
from trackly_exec.campaigns.queue import PAUSED_UNTIL
from trackly_exec.cli import main as cli
from trackly_exec.config import Settings
from trackly_exec.executor import redrive
from trackly_exec.executor.coordinator import Coordinator
from trackly_exec.executor.outcomes import failed_doc, sent_doc
from trackly_exec.store import constants as c
from trackly_exec.store.client import Store
from trackly_exec.store.models import FailureReason, epoch_ms, utcnow
from trackly_exec.store.phones import opt_out_key
from trackly_exec.testing.fakes.infobip import InfobipFake

from .api_support import run_cli as run
from .executor_support import assert_one_record_each, open_trackly, seed, with_executor

H = {"Authorization": "Bearer test-token"}


async def get(cl: TestClient[Any, Any], path: str, status: int = 200) -> Any:
    r = await cl.get(f"/api/v1{path}", headers=H)
    data = await r.json()
    assert r.status == status, data
    return data


async def post(cl: TestClient[Any, Any], path: str, body: Any, status: int = 200) -> Any:
    r = await cl.post(f"/api/v1{path}", json=body, headers=H)
    data = await r.json()
    assert r.status == status, data
    return data


async def fail(store: Store, ids: list[str], reason: FailureReason, **kw: Any) -> None:
    """Move queued messages to FailedMessage (as the executor would)."""
    docs = await store.db[c.QUEUED].find({"_id": {"$in": ids}}).to_list(None)
    now = utcnow()
    await store.db[c.FAILED].insert_many(
        [failed_doc(d, reason, f"test {reason}", now, provider="infobip", **kw) for d in docs]
    )
    await store.db[c.QUEUED].delete_many({"_id": {"$in": ids}})


async def send(store: Store, ids: list[str], delivered: bool | None = None) -> None:
    docs = await store.db[c.QUEUED].find({"_id": {"$in": ids}}).to_list(None)
    now = utcnow()
    recs = [
        sent_doc(d, provider="infobip", provider_message_id=f"p-{d['_id']}", segments=1, cost=0.01, now=now)
        for d in docs
    ]
    for r in recs:
        r["delivered"] = delivered
    await store.db[c.SENT].insert_many(recs)
    await store.db[c.QUEUED].delete_many({"_id": {"$in": ids}})


# --------------------------------------------------------------------------------------------- message log


async def test_message_log_by_phone_contact_campaign_execution(admin: TestClient[Any, Any], store: Store) -> None:
    """One number's messages in every state, found from any way of writing the number; clicks counted."""
    ids = await seed(store, 6)
    await send(store, ids[:2], delivered=True)
    await fail(store, ids[2:4], FailureReason.PROVIDER_ERROR)
    await store.db[c.SHORT_LINKS].insert_one(
        {
            "_id": "abc",
            "message_id": ids[0],
            "destination": "https://x.example",
            "account_id": 1,
            "clicks": 3,
            "human_clicks": 2,
        }
    )
    contact = await store.db[c.CONTACTS].find_one({"_id": 1})
    phone = contact["phone"]  # +1202001000 1 -> format it three ways
    national = f"({phone[2:5]}) {phone[5:8]}-{phone[8:]}"
    for raw in (phone, national, "00" + phone[1:], phone[1:] if False else phone.replace("+1", "+1 ")):
        out = await get(admin, f"/messages?phone={raw.replace('+', '%2B').replace(' ', '%20')}")
        assert out["phone"] == phone
        assert [m["message_id"] for m in out["items"]] == [ids[0]]
    item = out["items"][0]
    assert item["state"] == "sent" and item["submitted"] is True and item["delivered"] is True
    assert item["provider_message_id"] == f"p-{ids[0]}" and item["clicks"] == 3 and item["human_clicks"] == 2
    out = await get(admin, "/messages?contact_id=3")
    assert out["items"][0]["state"] == "failed" and out["items"][0]["reason"] == "PROVIDER_ERROR"
    await store.db[c.CONTACTS].update_one({"_id": 3}, {"$set": {"phone": "+12025550199"}})  # number changed since
    assert [m["message_id"] for m in (await get(admin, "/messages?contact_id=3"))["items"]] == [ids[2]]
    assert out["items"][0]["detail"] == "test PROVIDER_ERROR"
    out = await get(admin, "/messages?campaign_id=1&limit=4")
    assert [m["state"] for m in out["items"]] == ["queued", "queued", "sent", "sent"] and out["next_after"]
    out2 = await get(admin, f"/messages?campaign_id=1&limit=4&after={out['next_after']}")
    assert [m["state"] for m in out2["items"]] == ["failed", "failed"] and out2["next_after"] is None
    assert {m["message_id"] for m in out["items"] + out2["items"]} == set(ids)
    out = await get(admin, "/messages?execution_id=1&state=failed")
    assert {m["message_id"] for m in out["items"]} == set(ids[2:4])
    await get(admin, "/messages?phone=12", 422)
    await get(admin, "/messages", 422)
    await get(admin, "/messages?campaign_id=1&after=bogus", 422)


async def test_csv_export_streams_every_message_neutralised(admin: TestClient[Any, Any], store: Store) -> None:
    """The campaign CSV lists every message once, in batches; phone numbers and hostile text cannot be formulas."""
    ids = await seed(store, 2300)
    await send(store, ids[:1200], delivered=True)
    await fail(store, ids[1200:1300], FailureReason.PROVIDER_ERROR)
    await store.db[c.FAILED].update_one({"_id": ids[1200]}, {"$set": {"detail": '=HYPERLINK("http://evil")'}})
    r = await admin.get("/api/v1/campaigns/1/messages.csv", headers=H)
    assert r.status == 404  # no campaign document yet
    await store.db[c.CAMPAIGNS].insert_one(
        {"_id": 1, "account_id": 1, "sending_list_id": 1, "audience_ids": [], "creative_id": 1, "status": "active"}
    )
    r = await admin.get("/api/v1/campaigns/1/messages.csv", headers=H)
    assert r.status == 200 and r.headers["Content-Type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(await r.text())))
    header, body = rows[0], rows[1:]
    assert len(body) == 2300 and len({row[0] for row in body}) == 2300
    col = {name: i for i, name in enumerate(header)}
    assert all(row[col["to_number"]].startswith("'+1202") for row in body)
    assert csvsafe.uncell(body[0][col["to_number"]]).startswith("+1202")
    evil = next(row for row in body if row[0] == ids[1200])
    assert evil[col["detail"]].startswith("'=") and evil[col["state"]] == "failed"
    states = {row[col["state"]] for row in body}
    assert states == {"queued", "sent", "failed"}
    r = await admin.get("/api/v1/executions/1/messages.csv", headers=H)
    assert r.status == 404
    r = await admin.get("/api/v1/campaigns/1/messages.csv")
    assert r.status == 401


def test_csvsafe_cells() -> None:
    """Formula-looking cells get a quote; numbers, booleans, dates and plain text are kept."""
    assert csvsafe.row(["=1+1", "+15551234567", "-2", "@SUM", "\tx", "\rx", "ok", 5, -3, 1.5, True, None]) == [
        "'=1+1",
        "'+15551234567",
        "'-2",
        "'@SUM",
        "'\tx",
        "'\rx",
        "ok",
        5,
        -3,
        1.5,
        True,
        "",
    ]
    assert csvsafe.uncell("'+15551234567") == "+15551234567" and csvsafe.uncell("'quoted") == "'quoted"


# --------------------------------------------------------------------------------------------- dead letters


async def executor(settings: Settings, store: Store, fake: InfobipFake) -> Coordinator:
    drivers = {"infobip": {**fake.driver_settings(), "timeout_seconds": 2.0}}
    trackly = await open_trackly(with_executor(settings, drivers, retry_initial_backoff_seconds=0.01), store)
    return Coordinator(trackly)


async def test_dead_letters_list_summary_and_redrive(
    admin: TestClient[Any, Any], settings: Settings, store: Store, fake: InfobipFake
) -> None:
    """Retryable dead letters go back to the queue with their id and are sent once; the others are refused or
    skipped with the reason; every message keeps exactly one record."""
    ids = await seed(store, 12)
    await fail(store, ids[0:3], FailureReason.PROVIDER_ERROR)
    await fail(store, ids[3:5], FailureReason.RATE_LIMIT_TIMEOUT)
    await fail(store, ids[5:6], FailureReason.NO_RESPONSE, ambiguous=True)
    await fail(store, ids[6:7], FailureReason.BLOCKED_CONTENT)
    await fail(store, ids[7:8], FailureReason.STALE)
    await fail(store, ids[8:9], FailureReason.PROVIDER_ERROR, opted_out=True)
    await fail(store, ids[9:10], FailureReason.BILLING_BLOCKED)
    await store.db[c.CONTACTS].update_one({"_id": 10}, {"$set": {"subscribed": False}})  # ids[9]: opted out since
    await store.db[c.EXECUTIONS].insert_one({"_id": 1, "campaign_id": 1, "status": "completed"})
    summary = await get(admin, "/dead-letters/summary?campaign_id=1")
    # retryable: the default reasons, but not the PROVIDER_ERROR the provider flagged as an opt-out (never re-driven)
    assert summary["total"] == 10 and summary["by_reason"]["PROVIDER_ERROR"] == 4 and summary["retryable"] == 6
    page = await get(admin, "/dead-letters?reason=PROVIDER_ERROR&limit=3")
    assert len(page["items"]) == 3 and page["next_after"] and all(i["retryable"] for i in page["items"])
    page2 = await get(admin, f"/dead-letters?reason=PROVIDER_ERROR&after={page['next_after']}")
    assert len(page2["items"]) == 1 and page2["next_after"] is None
    assert page2["items"][0]["message_id"] == ids[8] and page2["items"][0]["retryable"] is False  # the opt-out
    # what a re-drive would do with each, as the re-drive below does it
    every = {i["message_id"]: i["redrive"] for i in (await get(admin, "/dead-letters?limit=100"))["items"]}
    assert every == {
        **dict.fromkeys(ids[0:5], "default"),
        ids[5]: "allow_duplicates",
        ids[6]: "no",
        ids[7]: "by_reason",
        ids[8]: "opted_out",
        ids[9]: "opted_out",  # the contact opted out since
    }, every
    since = (utcnow() + dt.timedelta(minutes=1)).isoformat().replace("+00:00", "Z")
    assert (await get(admin, f"/dead-letters?since={since}"))["items"] == []
    # refused outright: never-retryable reasons, NO_RESPONSE without the flag
    err = await post(admin, "/dead-letters/redrive", {"reasons": ["BLOCKED_CONTENT"]}, 422)
    assert "never re-driven" in err["details"][0]["msg"]
    err = await post(admin, "/dead-letters/redrive", {"reasons": ["NO_RESPONSE"]}, 422)
    assert "allow_duplicates" in err["details"][0]["msg"]
    dry = await post(admin, "/dead-letters/redrive", {"dry_run": True})
    assert dry["would_requeue"] == 5 and dry["requeued"] == 0
    assert await store.db[c.FAILED].count_documents({}) == 10
    out = await post(admin, "/dead-letters/redrive", {})
    assert out["requeued"] == 5 and set(out["message_ids"]) == {*ids[0:3], *ids[3:5]}
    assert out["skipped"] == {"opted_out_at_provider": 1, "opted_out": 1}
    assert (await store.db[c.EXECUTIONS].find_one({"_id": 1}))["status"] == "queued"
    split = await assert_one_record_each(store, ids)
    assert split[c.QUEUED] == 2 + 5 and split[c.FAILED] == 5
    queued = await store.db[c.QUEUED].find_one({"_id": ids[0]})
    assert queued["redriven_from"] == "PROVIDER_ERROR" and "redrive_token" not in queued
    # STALE on request; NO_RESPONSE with the flag, and a warning
    out = await post(admin, "/dead-letters/redrive", {"reasons": ["STALE", "NO_RESPONSE"], "allow_duplicates": True})
    assert out["requeued"] == 2 and out["warnings"] and "twice" in out["warnings"][0]
    coord = await executor(settings, store, fake)
    counts = await coord.run_until_idle()
    await coord.trackly.close(close_store=False)
    assert counts["sent"] == 2 + 5 + 2
    assert all(n == 1 for n in fake.accepted_counts().values())
    split = await assert_one_record_each(store, ids)
    assert split == {c.QUEUED: 0, c.SENT: 9, c.FAILED: 3}


def _night_zone(now: dt.datetime) -> str:
    """A fixed-offset zone where it is 02:xx or 03:xx now (inside every list's quiet hours)."""
    return next(
        f"Etc/GMT{'-' if o > 0 else '+'}{abs(o)}"
        for o in range(-12, 15)
        if o and (now + dt.timedelta(hours=o)).hour in (2, 3)
    )


async def test_redrive_rechecks_cooldown_and_quiet_hours(admin: TestClient[Any, Any], store: Store) -> None:
    """A number texted within the list's cooldown is not re-driven; one in quiet hours is queued held until its
    window opens."""
    now = utcnow()
    night = _night_zone(now)
    ids = await seed(store, 3)
    await store.db[c.CONTACTS].update_one({"_id": 3}, {"$set": {"timezone": night}})
    await fail(store, ids, FailureReason.PROVIDER_ERROR)
    await store.db[c.SENDING_LISTS].update_one({"_id": 1}, {"$set": {"cooldown_minutes": 60}})
    other = {**(await store.db[c.FAILED].find_one({"_id": ids[0]})), "_id": "other", "execution_id": 2}
    await store.db[c.SENT].insert_one(
        sent_doc(other, provider="infobip", provider_message_id="x", segments=1, cost=0, now=now)
    )
    out = await post(admin, "/dead-letters/redrive", {"campaign_id": 1})
    assert out["skipped"] == {"cooldown": 1} and out["requeued"] == 2 and out["held_quiet_hours"] == 1
    held = await store.db[c.QUEUED].find_one({"_id": ids[2]})
    assert held["not_before"].replace(tzinfo=dt.UTC) > now + dt.timedelta(hours=3)
    await assert_one_record_each(store, ids)


async def test_redrive_keeps_a_test_sends_lifted_checks(admin: TestClient[Any, Any], store: Store) -> None:
    """A test send's overrides (``quiet_hours``, ``opt_out``), lifted on request, stay lifted when it is re-driven:
    queued due now, not held for the window, and not skipped as opted out."""
    now = utcnow()
    night = _night_zone(now)
    ids = await seed(store, 2)
    await store.db[c.CONTACTS].update_many({"_id": {"$in": [1, 2]}}, {"$set": {"timezone": night}})
    await store.db[c.CONTACTS].update_one({"_id": 2}, {"$set": {"subscribed": False}})
    await fail(store, ids, FailureReason.PROVIDER_ERROR)
    await store.db[c.FAILED].update_many({}, {"$set": {"overrides": ["opt_out", "quiet_hours"], "send_type": "test"}})
    out = await post(admin, "/dead-letters/redrive", {"message_ids": ids})
    assert out["requeued"] == 2 and out["held_quiet_hours"] == 0 and out["skipped"] == {}, out
    for d in await store.db[c.QUEUED].find({"_id": {"$in": ids}}).to_list(None):
        assert d["overrides"] == ["opt_out", "quiet_hours"]
        assert d["not_before"].replace(tzinfo=dt.UTC) <= utcnow()
    await assert_one_record_each(store, ids)


async def test_redrive_holds_a_number_to_its_own_stop(admin: TestClient[Any, Any], store: Store) -> None:
    """A dead letter whose number sent STOP on its list is not re-driven (``opted_out``) even when no contact says
    so: a test send's number, or a contact stored in another spelling of the number (a STOP cannot find it); such
    a contact's message, re-driven before any STOP, keeps ``number_stop`` for the send-time re-check."""
    ids = await seed(store, 4)
    phones = {d["_id"]: d["to_number"] for d in await store.db[c.QUEUED].find({}).to_list(None)}
    national = f"({phones[ids[1]][2:5]}) {phones[ids[1]][5:8]}-{phones[ids[1]][8:]}"
    await store.db[c.CONTACTS].update_one({"_id": 2}, {"$set": {"phone": national}})
    await store.db[c.CONTACTS].update_one({"_id": 4}, {"$set": {"phone": national.replace("(", "").replace(")", "")}})
    await fail(store, ids, FailureReason.PROVIDER_ERROR)
    await store.db[c.FAILED].update_one({"_id": ids[0]}, {"$set": {"contact_id": None, "send_type": "test"}})
    await store.db[c.OPT_OUTS].insert_many(
        [{"_id": opt_out_key(1, phones[m]), "at": utcnow()} for m in (ids[0], ids[1])]
    )
    out = await post(admin, "/dead-letters/redrive", {"message_ids": ids})
    assert out["requeued"] == 2 and out["skipped"] == {"opted_out": 2}, out
    queued = {d["_id"]: d for d in await store.db[c.QUEUED].find({}).to_list(None)}
    assert sorted(queued) == sorted(ids[2:])
    assert not queued[ids[2]].get("number_stop") and queued[ids[3]]["number_stop"] is True
    await assert_one_record_each(store, ids)


async def test_redrive_paused_campaign_stays_held(admin: TestClient[Any, Any], store: Store) -> None:
    """A re-driven message of a paused campaign waits for the resume like its other queued messages."""
    ids = await seed(store, 2)
    await fail(store, ids, FailureReason.RATE_LIMIT_TIMEOUT)
    await store.db[c.CAMPAIGNS].insert_one(
        {"_id": 1, "account_id": 1, "sending_list_id": 1, "audience_ids": [], "creative_id": 1, "status": "paused"}
    )
    out = await post(admin, "/dead-letters/redrive", {"message_ids": ids})
    assert out["requeued"] == 2 and out["held_paused"] == 2
    assert await store.db[c.QUEUED].count_documents({"paused": True}) == 2


@pytest.mark.parametrize("crash_after", ["mark", "insert", "delete"])
async def test_redrive_crash_leaves_one_record(trackly: Trackly, store: Store, crash_after: str) -> None:
    """A re-drive interrupted after any of its steps ends, once recovered, with exactly one record per message,
    and the held queue document is never claimable before that."""
    ids = await seed(store, 4)
    await fail(store, ids, FailureReason.PROVIDER_ERROR)
    db = store.db
    token = "crashed:redrive:1"
    then = utcnow() - dt.timedelta(minutes=10)
    docs = await db[c.FAILED].find({}).to_list(None)
    await db[c.REDRIVES].insert_one({"_id": token, "ids": ids, "at": then})
    await db[c.FAILED].update_many({}, {"$set": {"redrive_token": token, "redrive_at": then}})
    if crash_after in ("insert", "delete"):
        await db[c.QUEUED].insert_many([redrive._queue_doc(d, token, then) for d in docs])
        due = await db[c.QUEUED].count_documents({"not_before": {"$lte": utcnow()}})
        assert due == 0  # held: no executor can claim it
    if crash_after == "delete":
        await db[c.FAILED].delete_many({"redrive_token": token})
    out = await redrive.recover(trackly)
    split = await assert_one_record_each(store, ids)
    if crash_after == "mark":
        assert out["abandoned"] == 4 and split[c.FAILED] == 4
        assert await db[c.FAILED].count_documents({"redrive_token": token}) == 0
    else:
        assert out["released"] == 4 and split[c.QUEUED] == 4
        assert await db[c.QUEUED].count_documents({"redrive_token": {"$gt": ""}}) == 0
    assert await db[c.REDRIVES].count_documents({}) == 0
    # the recovered failures can be re-driven again
    if crash_after == "mark":
        res = await redrive.redrive(trackly, redrive.dead_letter_filter(reasons=["PROVIDER_ERROR"]))
        assert res.requeued == 4
        await assert_one_record_each(store, ids)


async def test_recovery_abandoned_mark_racing_live_redrive(trackly: Trackly, store: Store) -> None:
    """Recovery unmarking a failure while a slow re-drive inserts its queue document: the re-drive's release sees
    the failure back and drops its queue document (one record, never two)."""
    ids = await seed(store, 2)
    await fail(store, ids, FailureReason.PROVIDER_ERROR)
    db = store.db
    token = "slow:redrive:1"
    docs = await db[c.FAILED].find({}).to_list(None)
    await db[c.FAILED].update_many({}, {"$set": {"redrive_token": token}})
    await db[c.FAILED].update_many({}, {"$unset": {"redrive_token": ""}})  # recovery abandoned it
    await db[c.QUEUED].insert_many([redrive._queue_doc(d, token, utcnow()) for d in docs])  # the slow insert
    await db[c.FAILED].delete_many({"redrive_token": token})  # matches nothing now
    released = await redrive._release(db, token, {d["_id"]: (utcnow(), False) for d in docs}, utcnow())
    assert released == 0
    split = await assert_one_record_each(store, ids)
    assert split[c.FAILED] == 2


# --------------------------------------------------------------------------------------------- outbox


async def test_outbox_backlog_and_redrive(admin: TestClient[Any, Any], store: Store) -> None:
    """The outbox backlog is visible (entries, events, oldest age) and dead entries are made pending again."""
    now = utcnow()
    old = now - dt.timedelta(hours=2)
    col = store.db[c.OUTBOX]
    await col.insert_many(
        [
            {
                "_id": "m1:delivery",
                "account_id": 1,
                "status": "pending",
                "attempts": 1,
                "created_at": old,
                "next_attempt_at": now - dt.timedelta(seconds=5),
                "payload": {"id": "m1"},
            },
            {
                "_id": "batch:x",
                "account_id": 1,
                "status": "pending",
                "attempts": 0,
                "created_at": now,
                "next_attempt_at": now + dt.timedelta(hours=1),
                "events": [{"id": f"e{i}", "payload": {}} for i in range(3)],
            },
            {
                "_id": "m2:delivery",
                "account_id": 1,
                "status": "dead",
                "attempts": 9,
                "created_at": old,
                "last_error": "HTTP 500",
                "last_status": 500,
                "payload": {"id": "m2"},
            },
            {"_id": "m3:delivery", "account_id": 2, "status": "dead", "attempts": 9, "created_at": old, "payload": {}},
            {
                "_id": "m4:delivery",
                "account_id": 2,
                "status": "delivered",
                "attempts": 1,
                "created_at": old,
                "payload": {},
            },
        ]
    )
    s = await get(admin, "/outbox/summary")
    assert s["by_status"] == {"dead": 2, "delivered": 1, "pending": 2}
    assert s["pending_events"] == 4 and s["dead_events"] == 2 and s["due_now"] == 1
    assert s["oldest_pending_age_seconds"] >= 7000
    page = await get(admin, "/outbox?status=dead")
    assert [(e["id"], e["last_status"]) for e in page["items"]] == [("m2:delivery", 500), ("m3:delivery", None)]
    assert (await post(admin, "/outbox/redrive", {"account_id": 1}))["redriven"] == 1
    doc = await col.find_one({"_id": "m2:delivery"})
    assert doc["status"] == "pending" and doc["attempts"] == 0 and doc["redriven_at"] is not None
    assert (await post(admin, "/outbox/redrive", {}))["redriven"] == 1
    assert (await post(admin, "/outbox/redrive", {}))["redriven"] == 0


# --------------------------------------------------------------------------------------------- CLI


async def test_cli_messages_export_dead_letters_outbox(
    admin_url: str, store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """trackly messages / export / dead-letters / outbox work end to end through the API."""
    ids = await seed(store, 5)
    await send(store, ids[:1], delivered=False)
    await fail(store, ids[1:3], FailureReason.PROVIDER_ERROR)
    await fail(store, ids[3:4], FailureReason.NO_RESPONSE, ambiguous=True)
    await store.db[c.CAMPAIGNS].insert_one(
        {"_id": 1, "account_id": 1, "sending_list_id": 1, "audience_ids": [], "creative_id": 1, "status": "active"}
    )
    phone = (await store.db[c.CONTACTS].find_one({"_id": 2}))["phone"]
    assert await run(admin_url, "messages", phone[2:]) == 0
    out = capsys.readouterr().out
    assert f"messages to {phone}" in out and ids[1] in out and "PROVIDER_ERROR" in out
    # as the README writes it, unquoted: `trackly messages +1 555 123 4567`
    assert await run(admin_url, "messages", phone[:2], phone[2:5], phone[5:8], phone[8:]) == 0
    out = capsys.readouterr().out
    assert f"messages to {phone}" in out and ids[1] in out
    assert await run(admin_url, "messages", "--campaign", "1", "--state", "sent") == 0
    out = capsys.readouterr().out
    assert ids[0] in out and ids[1] not in out
    target = tmp_path / "c1.csv"
    assert await run(admin_url, "export", "--campaign", "1", "-o", str(target)) == 0
    rows = list(csv.reader(target.read_text().splitlines()))
    assert len(rows) == 6 and all(r[6].startswith("'+") for r in rows[1:])
    assert await run(admin_url, "dead-letters", "summary") == 0
    out = capsys.readouterr().out
    assert "dead letters: 3 messages (2 retryable by default)" in out and "NO_RESPONSE" in out
    assert await run(admin_url, "dead-letters", "list", "--reason", "NO_RESPONSE") == 0
    assert ids[3] in capsys.readouterr().out
    # page by page: one a page, each page naming the next (the list stopped at its first page)
    assert await run(admin_url, "dead-letters", "list", "--limit", "1") == 0
    first = capsys.readouterr()
    after = first.err.split("--after ")[1].split()[0]
    assert await run(admin_url, "dead-letters", "list", "--limit", "1", "--after", after) == 0
    second = capsys.readouterr().out
    shown = [i for i in ids if i in first.out] + [i for i in ids if i in second]
    assert len(shown) == 2 and len(set(shown)) == 2, (first.out, second)
    assert await run(admin_url, "dead-letters", "redrive", "--reason", "NO_RESPONSE") == 1
    assert "--allow-duplicates" in capsys.readouterr().err
    assert await run(admin_url, "dead-letters", "redrive", "--dry-run") == 0
    assert "2 of 2 dead letters would be queued again" in capsys.readouterr().out
    assert await run(admin_url, "dead-letters", "redrive", "--reason", "NO_RESPONSE", "--allow-duplicates") == 0
    captured = capsys.readouterr()
    assert "1 of 1 dead letters queued again" in captured.out and "twice" in captured.err
    await store.db[c.OUTBOX].insert_one(
        {
            "_id": "x:delivery",
            "account_id": 1,
            "status": "dead",
            "attempts": 3,
            "created_at": utcnow(),
            "payload": {},
            "last_error": "timeout",
        }
    )
    assert await run(admin_url, "outbox", "summary") == 0
    assert "1 events dead" in capsys.readouterr().out
    assert await run(admin_url, "outbox", "list", "--status", "dead") == 0
    assert "timeout" in capsys.readouterr().out
    assert await run(admin_url, "outbox", "redrive") == 0
    assert "1 customer-webhook entries pending again" in capsys.readouterr().out


def test_closed_pipe_ends_without_traceback(tmp_path: Path) -> None:
    """`trackly ... | head`: the reader leaving early ends the command quietly (no BrokenPipeError traceback)."""
    cfg = tmp_path / "t.toml"
    cfg.write_text("")
    for argv in (["check-config", "-c", str(cfg), "--describe"], ["check-config", "-c", str(cfg)], ["--help"]):
        proc = subprocess.Popen(
            [sys.executable, "-m", "trackly_exec.cli", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.close()  # the reader is gone before the first write
        err = proc.stderr.read().decode()
        proc.stderr.close()
        proc.wait(timeout=30)
        assert "Traceback" not in err and "BrokenPipe" not in err, err


def test_pause_described_the_same_everywhere(capsys: pytest.CaptureFixture[str]) -> None:
    """Pause and resume read the same in the CLI help, the OpenAPI document and the README."""
    from trackly_exec.api.openapi import document
    from trackly_exec.store.models import CANCEL_DESCRIPTION, PAUSE_DESCRIPTION, RESUME_DESCRIPTION

    doc = document()
    assert doc["paths"]["/api/v1/campaigns/{id}/cancel"]["post"]["summary"] == CANCEL_DESCRIPTION
    assert doc["paths"]["/api/v1/campaigns/{id}/pause"]["post"]["summary"] == PAUSE_DESCRIPTION
    assert doc["paths"]["/api/v1/campaigns/{id}/resume"]["post"]["summary"] == RESUME_DESCRIPTION
    assert PAUSE_DESCRIPTION in doc["info"]["description"] and RESUME_DESCRIPTION in doc["info"]["description"]
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    assert PAUSE_DESCRIPTION in readme and RESUME_DESCRIPTION in readme
    with pytest.raises(SystemExit):
        cli.main(["campaign", "--help"])
    helptext = " ".join(capsys.readouterr().out.split())
    assert PAUSE_DESCRIPTION in helptext and RESUME_DESCRIPTION in helptext and CANCEL_DESCRIPTION in helptext
    assert CANCEL_DESCRIPTION in readme and CANCEL_DESCRIPTION in doc["info"]["description"]


# --------------------------------------------------------------------------------------------- CSV import


async def test_import_semicolon_tab_aliases_duplicates_and_ignored(
    admin_url: str, store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Semicolon and tab files are detected (or --delimiter given); mobile/msisdn/phone_number name the phone;
    duplicate numbers in the file and unusable columns are reported; rejects are formula-safe."""
    await store.db[c.ACCOUNTS].insert_one({"_id": 1, "name": "A", "balance": 1.0})
    await store.db[c.SENDING_LISTS].insert_one(
        {
            "_id": 1,
            "account_id": 1,
            "name": "L",
            "driver": "infobip",
            "driver_settings": {},
            "from_number": "+15550001111",
        }
    )
    f = tmp_path / "semi.csv"
    f.write_text(
        "Mobile;First Name;Zip Code;;Surname;mobile\n"
        "+1 212 555 0100;Ava;01234;x;Lee;+1 212 555 0199\n"
        "(212) 555-0101;Bo;02000;;Ng;\n"
        "2125550100;Ava again;01234;;Lee;\n"
        "=cmd|' /C calc'!A0;Eve;;;;\n",
        encoding="utf-8",
    )
    rejects = tmp_path / "rejects.csv"
    assert await run(admin_url, "contacts", "import", str(f), "--list", "1", "--rejects", str(rejects)) == 0
    out = capsys.readouterr().out
    assert "read as semicolon-separated" in out and "'First Name' -> first_name" in out
    assert "'Zip Code' -> attribute zip_code" in out
    assert "ignored columns: column 4 (no name); 'mobile' (a second column for phone)" in out
    assert "duplicate phones in the file: 1 rows skipped" in out
    assert "inserted 2, updated 0, rejected 2" in out and "line 4: duplicate phone in the file (first on line 2)" in out
    doc = await store.db[c.CONTACTS].find_one({"phone": "+12125550100"})
    assert doc["first_name"] == "Ava" and doc["last_name"] == "Lee" and doc["attributes"] == {"zip_code": "01234"}
    rows = list(csv.reader(rejects.read_text().splitlines()))
    assert ["5", "'=cmd|' /C calc'!A0", "invalid phone number"] in rows or any(r[1].startswith("'=") for r in rows)
    t = tmp_path / "tab.tsv"
    t.write_text("msisdn\tfirst_name\n12125550102\tCy\n")
    assert await run(admin_url, "contacts", "import", str(t), "--list", "1") == 0
    assert "read as tab-separated" in capsys.readouterr().out
    p = tmp_path / "pn.csv"
    p.write_text("phone_number;tier\n+12125550103;gold\n")
    assert await run(admin_url, "contacts", "import", str(p), "--list", "1", "--delimiter", ";") == 0
    assert "inserted 1" in capsys.readouterr().out
    assert await store.db[c.CONTACTS].count_documents({"sending_list_id": 1}) == 4


async def test_message_log_says_what_holds_a_queued_message(
    admin: TestClient[Any, Any], admin_url: str, store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    """A queued message's ``held``: paused (no made-up due date: ``not_before`` null), provider or billing backoff,
    another hold with its time, or nothing; the CLI says "paused" rather than "held until 9999-12-31"."""
    ids = await seed(store, 5)
    later = utcnow() + dt.timedelta(hours=2)
    await claims_pause(store, ids[0])
    await store.db[c.QUEUED].update_one({"_id": ids[1]}, {"$set": {"not_before": later, "throttled_until": later}})
    await store.db[c.QUEUED].update_one(
        {"_id": ids[2]}, {"$set": {"not_before": later, "billing_blocked_since": later}}
    )
    await store.db[c.QUEUED].update_one({"_id": ids[3]}, {"$set": {"not_before": later}})
    items = {m["message_id"]: m for m in (await get(admin, "/messages?campaign_id=1&state=queued"))["items"]}
    assert [(items[m]["held"], items[m]["not_before"] is not None) for m in ids] == [
        ("paused", False),
        ("provider", True),
        ("billing", True),
        ("hold", True),
        (None, False),
    ]
    assert await run(admin_url, "messages", "--campaign", "1", "--state", "queued") == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[1:]}
    assert "paused: sent once its campaign is resumed" in lines[ids[0]] and "9999" not in lines[ids[0]]
    assert "(provider)" in lines[ids[1]] and "(billing)" in lines[ids[2]] and "held until" in lines[ids[3]]
    assert lines[ids[4]].endswith("waiting")


async def claims_pause(store: Store, mid: str) -> None:
    """Hold ``mid`` as a paused campaign does (claims.pause_campaign's fields)."""
    await store.db[c.QUEUED].update_one(
        {"_id": mid}, {"$set": {"not_before": PAUSED_UNTIL, "due_ms": epoch_ms(PAUSED_UNTIL), "paused": True}}
    )


# --------------------------------------------------------------------------------------------- cancel


async def test_cancel_ends_a_campaign_for_good(
    admin: TestClient[Any, Any], trackly: Trackly, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cancelling a campaign mid-send dead-letters its queued messages CANCELLED (nothing of it is sent after);
    messages an executor holds are given back at its re-check (the campaign is paused first) and a second cancel
    ends them; then the campaign is done and its execution completed, every message has one record, and a re-drive
    naming CANCELLED takes them back."""
    from trackly_exec.api import campaigns as api_campaigns
    from trackly_exec.executor import claims

    from .api_support import H, add_contacts, create_campaign, post
    from .api_support import seed as seed_api

    monkeypatch.setattr(api_campaigns, "CANCEL_WAIT_SECONDS", 0.3)
    ids = await seed_api(admin)
    await add_contacts(admin, ids["list"], 30)
    camp = await create_campaign(admin, ids)
    started = await post(admin, f"/campaigns/{camp['id']}/trigger?wait=true", None, 202)
    queued = [d["_id"] async for d in trackly.db[c.QUEUED].find({})]
    assert len(queued) == 30
    held = await claims.claim(trackly.db, ids["list"], "other-daemon:x", utcnow(), 5)  # an executor holds 5
    events: list[Any] = []

    async def record(batch: Any) -> None:
        events.extend(batch)

    trackly.bus.subscribe(record)
    r = await admin.post(f"/api/v1/campaigns/{camp['id']}/cancel", headers=H)
    out = await r.json()
    assert r.status == 200 and out["cancelled"] == 25 and out["still_claimed"] == 5 and out["status"] == "paused", out
    await claims.give_back(trackly.db, [d["_id"] for d in held], "other-daemon:x")  # its re-check: paused
    out = await post(admin, f"/campaigns/{camp['id']}/cancel", None, 200)
    assert out == {"id": camp["id"], "status": "done", "cancelled": 5, "still_claimed": 0, "evaluating": False}
    await Coordinator(trackly).run_until_idle()
    assert await trackly.db[c.SENT].count_documents({}) == 0
    split = await assert_one_record_each(trackly.store, queued)
    assert split[c.FAILED] == 30 and await trackly.db[c.FAILED].count_documents({"reason": "CANCELLED"}) == 30
    dead = [e.data["reason"] for e in events if e.kind == "failed_message"]  # each alerted, as every dead letter
    assert dead == ["CANCELLED"] * 30
    ex = await trackly.db[c.EXECUTIONS].find_one({"_id": started["execution_id"]})
    assert ex["status"] == "completed"
    summary = await (await admin.get("/api/v1/dead-letters/summary", headers=H)).json()
    assert summary["by_reason"] == {"CANCELLED": 30} and summary["retryable"] == 0  # not by default
    page = await admin.get("/api/v1/dead-letters", params={"reason": "CANCELLED"}, headers=H)
    assert page.status == 200 and len((await page.json())["items"]) == 30  # looked at before a re-drive
    # it says it was cancelled, has no next run, and cannot be resumed (it read as a plain done campaign)
    shown = await (await admin.get(f"/api/v1/campaigns/{camp['id']}", headers=H)).json()
    assert shown["cancelled_at"] is not None and shown["next_run_at"] is None and shown["status"] == "done"
    r = await admin.post(f"/api/v1/campaigns/{camp['id']}/resume", headers=H)
    assert r.status == 409 and "cancelled" in (await r.json())["message"]
    out = await post(admin, "/dead-letters/redrive", {"reasons": ["CANCELLED"]}, 200)
    assert out["requeued"] == 30


async def test_cancel_while_the_executor_sends(
    admin: TestClient[Any, Any], settings: Settings, store: Store, fake: InfobipFake
) -> None:
    """A campaign cancelled while an executor sends it (20 messages a second): once cancel answers done, nothing
    more of it is sent; every message is either sent once or dead-lettered CANCELLED."""
    import asyncio

    from .api_support import post

    ids = await seed(store, 200, rate=1200)
    await store.db[c.QUEUED].update_many({}, {"$set": {"campaign_id": 1}})
    await store.db[c.CAMPAIGNS].insert_one(
        {"_id": 1, "name": "c", "account_id": 1, "sending_list_id": 1, "audience_ids": [], "creative_id": 1}
        | {"status": "done", "schedule": {"at": None, "cron": None, "timezone": "UTC"}}
    )
    await store.db[c.EXECUTIONS].insert_one({"_id": 1, "campaign_id": 1, "status": "queued", "sending_list_id": 1})
    coord = await executor(settings, store, fake)
    await coord.start()
    try:
        while len(fake.ledger) < 20:
            await asyncio.sleep(0.02)

        for _ in range(5):
            out = await post(admin, "/campaigns/1/cancel", None, 200)
            if out["status"] == "done":
                break
        assert out["status"] == "done", out
        sent = len(fake.ledger)
        await asyncio.sleep(1.0)  # 20 more would have gone
        assert len(fake.ledger) == sent
    finally:
        await coord.stop(5.0)
        await coord.trackly.close(close_store=False)
    split = await assert_one_record_each(store, ids)
    assert split[c.SENT] == sent == len({e.message_id for e in fake.ledger}) and 20 <= sent < 200
    assert await store.db[c.FAILED].count_documents({"reason": "CANCELLED"}) == 200 - sent


def test_every_dead_letter_reason_can_be_listed() -> None:
    """The dead-letter list's reason filter takes every reason a record can have (CANCELLED was refused with 422)."""
    from typing import get_args

    from trackly_exec.api.models_ops import ReasonName
    from trackly_exec.store.models import FailureReason

    assert set(get_args(ReasonName)) == {str(r) for r in FailureReason}
