"""Provider webhooks over real HTTP against the daemon's server: authentication, size, format, unknown ids."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from urllib.parse import urlencode

import pytest

from trackly_exec.config import Settings
from trackly_exec.store import constants as c
from trackly_exec.store.client import Store

from .tracking_support import (
    CM_STATUS,
    CM_TOKEN,
    IB_STATUS,
    IB_TOKEN,
    Daemon,
    cm_report,
    infobip_body,
    infobip_report,
    seed_account,
    seed_sent,
    snapshot,
    start_daemon,
    twilio_status,
)

CM_INBOUND = f"/webhooks/cm/inbound/{CM_TOKEN}"


@pytest.fixture
async def daemon(settings: Settings, store: Store) -> AsyncIterator[Daemon]:
    async for d in start_daemon(settings, store, webhook_max_body_bytes=64 * 1024):
        yield d


async def test_infobip_batch_is_applied(daemon: Daemon) -> None:
    """An Infobip `{"results": [...]}` post of 100 reports marks all 100 messages in one request."""
    await seed_account(daemon.store)
    sent = await seed_sent(daemon.store, 100)
    status, body = await daemon.post(IB_STATUS, infobip_body(*(infobip_report(m.id) for m in sent)))
    assert status == 200 and json.loads(body)["updated"] == 100
    assert await daemon.store[c.SENT].count_documents({"delivered": True}) == 100


async def test_wrong_or_missing_path_token_is_403_and_changes_nothing(daemon: Daemon) -> None:
    """Infobip and CM reports without the secret path segment, or with a wrong one, answer 403; nothing changes."""
    await seed_account(daemon.store)
    sent = await seed_sent(daemon.store, 2)
    await seed_sent(daemon.store, 1, provider="cm", start=50)
    before = await snapshot(daemon.store)
    body = infobip_body(infobip_report(sent[0].id))
    for path in (
        "/webhooks/infobip/status",
        "/webhooks/infobip/status/wrong-token",
        f"/webhooks/infobip/status/{IB_TOKEN[:-1]}",
    ):
        assert (await daemon.post(path, body))[0] == 403
    assert (await daemon.post("/webhooks/cm/status/nope", cm_report(f"{50:016x}")))[0] == 403
    assert (await daemon.post("/webhooks/cm/status", cm_report(f"{50:016x}")))[0] == 403
    assert await snapshot(daemon.store) == before


async def test_twilio_signature_forgeries_are_403(daemon: Daemon) -> None:
    """Twilio callbacks with no signature, a wrong auth token, tampered params or another URL are refused."""
    await seed_account(daemon.store)
    sent = await seed_sent(daemon.store, 1, provider="twilio")
    path = f"/webhooks/twilio/status?mid={sent[0].id}"
    params = twilio_status("SM1", "delivered")
    before = await snapshot(daemon.store)
    assert (await daemon.post(path, urlencode(params), "application/x-www-form-urlencoded"))[0] == 403
    assert (await daemon.twilio(path, params, token="not-the-token"))[0] == 403
    tampered = {**params, "MessageStatus": "undelivered"}
    assert (await daemon.twilio(path, tampered, signed_params=params))[0] == 403
    other = twilio_status("SM1", "delivered")
    assert (await daemon.twilio(f"/webhooks/twilio/status?mid={'f' * 16}", other, signed_params=other))[0] == 200
    # a signature computed for one message id's URL does not validate for another's
    from twilio.request_validator import RequestValidator

    from .tracking_support import PUBLIC, TW_TOKEN

    sig = RequestValidator(TW_TOKEN).compute_signature(PUBLIC + f"/webhooks/twilio/status?mid={'f' * 16}", params)
    status, _ = await daemon.post(
        path, urlencode(params), "application/x-www-form-urlencoded", {"X-Twilio-Signature": sig}
    )
    assert status == 403
    assert await snapshot(daemon.store) == before


async def test_twilio_signed_callback_is_applied(daemon: Daemon) -> None:
    """A correctly signed Twilio status callback (signature by the twilio package) records the final state."""
    await seed_account(daemon.store)
    sent = await seed_sent(daemon.store, 1, provider="twilio")
    status, _ = await daemon.twilio(
        f"/webhooks/twilio/status?mid={sent[0].id}", twilio_status("P0", "undelivered", "30003")
    )
    assert status == 200
    doc = await daemon.store[c.SENT].find_one({"_id": sent[0].id})
    assert doc["delivered"] == 0 and doc["delivery_status"] == "undelivered" and doc["delivery_error_code"] == "30003"


async def test_oversized_body_is_413(daemon: Daemon) -> None:
    """A body over tracking.webhook_max_body_bytes answers 413 and changes nothing."""
    await seed_account(daemon.store)
    sent = await seed_sent(daemon.store, 1)
    before = await snapshot(daemon.store)
    big = infobip_body(infobip_report(sent[0].id), *(infobip_report("x" * 16) for _ in range(300)))
    assert len(big) > 64 * 1024
    assert (await daemon.post(IB_STATUS, big))[0] == 413
    assert await snapshot(daemon.store) == before


async def test_oversized_chunked_body_is_413(daemon: Daemon) -> None:
    """A chunked body (no Content-Length) over the limit is cut off with 413 too."""

    async def gen() -> AsyncIterator[bytes]:
        for _ in range(100):
            yield b"x" * 1024

    async with daemon.http.post(daemon.url + IB_STATUS, data=gen(), headers={"Content-Type": "application/json"}) as r:
        assert r.status == 413


@pytest.mark.parametrize("body", ["not json", "{}", '{"results": 5}', "[1, 2]", '{"results": [{"status": 1}]'])
async def test_malformed_infobip_body_is_400(daemon: Daemon, body: str) -> None:
    """A malformed Infobip report body answers 400 and changes nothing."""
    await seed_sent(daemon.store, 1)
    before = await snapshot(daemon.store)
    assert (await daemon.post(IB_STATUS, body))[0] == 400
    assert await snapshot(daemon.store) == before


@pytest.mark.parametrize(
    "path,body",
    [
        ("inbound", '{"results": [{"from": ["a"], "to": "15550100", "text": "STOP"}]}'),
        ("inbound", '{"results": [{"from": "x", "to": "y", "text": "STOP"}]}'),
        ("inbound", '{"results": [{"from": "12025550101", "text": "STOP"}]}'),
        ("inbound", '{"results": [{"from": "12025550101", "to": "14155550100", "text": {"a": 1}}]}'),
        ("inbound", '{"results": [null, 1]}'),
        ("status", '{"results": [{}]}'),
        ("status", '{"results": [null, 1, "x"]}'),
    ],
)
async def test_infobip_results_that_name_nothing_are_400(daemon: Daemon, path: str, body: str) -> None:
    """An authenticated Infobip request whose results hold no usable message (a sender or recipient that is not a
    number, a text that is not text, an entry that is no object, a report naming no message) is a 400 that stores
    nothing (it was a 200, the inbound ones stored with ``from_number: "['a']"``, and a STOP without its recipient
    unsubscribed nobody in silence)."""
    await seed_sent(daemon.store, 1)
    before = await snapshot(daemon.store)
    url = IB_STATUS if path == "status" else IB_STATUS.replace("/status/", "/inbound/")
    assert (await daemon.post(url, body))[0] == 400
    assert await snapshot(daemon.store) == before


async def test_an_unusable_entry_does_not_lose_the_others(daemon: Daemon) -> None:
    """In a request with usable and unusable entries, the usable ones are applied (200), the others dropped."""
    await seed_sent(daemon.store, 1)
    url = IB_STATUS.replace("/status/", "/inbound/")
    good = {"messageId": "ok1", "from": "12025550101", "to": "14155550100", "text": "hello"}
    body = json.dumps({"results": [{"from": "x", "to": "y", "text": "STOP"}, None, good]})
    assert (await daemon.post(url, body))[0] == 200
    stored = await daemon.store[c.INBOUND].find({}).to_list(None)
    assert [(d["_id"], d["from_number"]) for d in stored] == [("infobip:ok1", "+12025550101")]


async def test_malformed_cm_and_twilio_are_400(daemon: Daemon) -> None:
    """A CM report with an unknown status code and a Twilio callback without MessageStatus answer 400."""
    await seed_sent(daemon.store, 1, provider="cm")
    before = await snapshot(daemon.store)
    assert (await daemon.post(CM_STATUS, cm_report(f"{0:016x}", code="9")))[0] == 400
    assert (await daemon.post(CM_STATUS, '{"messages": {}}'))[0] == 400
    assert (await daemon.twilio("/webhooks/twilio/status?mid=0000000000000000", {"MessageSid": "SM1"}))[0] == 400
    assert await snapshot(daemon.store) == before


async def test_lone_surrogates_are_400_not_500(daemon: Daemon) -> None:
    """A JSON escape for a lone surrogate (``\\ud800``: valid JSON, not storable as UTF-8) in a CM report or inbound
    message is a malformed request (400, nothing changes), never a store failure (500, which CM retries for days);
    in a batch, the other reports still apply."""
    await seed_account(daemon.store)
    [m] = await seed_sent(daemon.store, 1, provider="cm")
    before = await snapshot(daemon.store)
    bad_status = '{"messages": {"msg": {"reference": "\\ud800", "to": "0012125550107", "status": {"code": "2"}}}}'
    bad_inbound = '{"reference": "r1", "from": "0012125550100", "to": "0015550100997", "body": "\\ud800"}'
    assert (await daemon.post(CM_STATUS, bad_status))[0] == 400
    assert (await daemon.post(CM_INBOUND, bad_inbound))[0] == 400
    assert await snapshot(daemon.store) == before
    batch = {
        "messages": {
            "msg": [
                {"reference": "\ud800", "status": {"code": "2"}},
                {"reference": m.id, "status": {"code": "2"}},
            ]
        }
    }
    status, text = await daemon.post(CM_STATUS, json.dumps(batch))
    assert status == 200 and json.loads(text)["final"] == 1


async def test_unknown_ids_are_200_and_create_nothing(daemon: Daemon) -> None:
    """Reports for message ids we never sent answer 200 and create no record anywhere."""
    await seed_account(daemon.store, webhook_url="http://127.0.0.1:9/hook")
    before = await snapshot(daemon.store)
    status, body = await daemon.post(
        IB_STATUS, infobip_body(infobip_report("feedfacefeedface"), infobip_report("deadbeefdeadbeef"))
    )
    assert status == 200 and json.loads(body)["unknown"] == 2
    assert (await daemon.post(CM_STATUS, cm_report("0123456789abcdef")))[0] == 200
    assert (await daemon.twilio("/webhooks/twilio/status?mid=abababababababab", twilio_status("SMx", "delivered")))[
        0
    ] == 200
    assert await snapshot(daemon.store) == before


async def test_unknown_driver_instance_is_404(daemon: Daemon) -> None:
    """A webhook for a driver instance that is not configured answers 404."""
    assert (await daemon.post("/webhooks/nosuch/status", "{}"))[0] == 404
    assert (await daemon.post("/webhooks/nosuch/inbound/x", "{}"))[0] == 404


async def test_report_for_another_provider_message_is_ignored(daemon: Daemon) -> None:
    """A CM report naming a message sent through Infobip changes nothing (cross-provider forgery)."""
    sent = await seed_sent(daemon.store, 1, provider="infobip")
    status, body = await daemon.post(CM_STATUS, cm_report(sent[0].id, code="3"))
    assert status == 200 and json.loads(body)["unknown"] == 1
    assert (await daemon.store[c.SENT].find_one({"_id": sent[0].id}))["delivered"] is None


async def test_get_is_served_only_where_the_provider_calls_so(daemon: Daemon) -> None:
    """GET on a webhook URL is served only where the driver says its provider may call that way (Twilio's inbound
    URL, CM's older reports): elsewhere 405 with ``Allow: POST``; HEAD never."""
    for path in (IB_STATUS, "/webhooks/infobip/inbound/" + IB_TOKEN, "/webhooks/twilio/status?mid=0000000000000000"):
        async with daemon.http.get(daemon.url + path) as resp:
            assert resp.status == 405 and resp.headers["Allow"] == "POST", path
    async with daemon.http.get(daemon.url + "/webhooks/twilio/inbound?From=%2B1&Body=STOP") as resp:
        assert resp.status == 403  # served, and refused: unsigned
    async with daemon.http.get(daemon.url + CM_STATUS) as resp:
        assert resp.status == 400  # served, and nothing in it
    async with daemon.http.head(daemon.url + CM_STATUS) as resp:
        assert resp.status == 405


async def test_unauthenticated_instances_are_warned_about(settings: Settings, store: Store) -> None:
    """An instance whose webhooks are refused for want of a credential is reported at start-up: an unsigned one
    without a token when none could be generated (Trackly.open generates one), a signed one without its key."""
    import structlog

    from trackly_exec.app import Trackly
    from trackly_exec.operations.web import make_app

    settings.drivers.update(
        {
            "infobip": {"api_key": "k"},
            "twilio": {"account_sid": "AC1", "auth_token": "t"},
            "cm": {"product_token": "p", "webhook_token": None},
        }
    )
    trackly = Trackly(settings, store)  # no generated token
    try:
        with structlog.testing.capture_logs() as logs:
            make_app(trackly)
    finally:
        await trackly.close(close_store=False)
    warned = [e["driver"] for e in logs if e["event"] == "webhook_unauthenticated"]
    assert warned == ["infobip", "cm"]
    settings.drivers["twilio"]["auth_token"] = ""
    trackly = await Trackly.open(settings, store=store)  # generates tokens for infobip and cm
    try:
        with structlog.testing.capture_logs() as logs:
            make_app(trackly)
    finally:
        await trackly.close(close_store=False)
    assert [e["driver"] for e in logs if e["event"] == "webhook_unauthenticated"] == ["twilio"]
