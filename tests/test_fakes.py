"""The provider fakes: authentication and request shape as the real APIs, scripting, remote control,
background reports, the standalone `trackly fake-provider` process, and accept-path throughput."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import aiohttp
import pytest
from trackly_drivers.infobip import InfobipDriver
from twilio.request_validator import RequestValidator

from trackly_exec.app import Trackly
from trackly_exec.config import Settings, load_config
from trackly_exec.drivers.contract import DriverContext, OutboundMessage
from trackly_exec.operations.web import HttpServer
from trackly_exec.store import constants as c
from trackly_exec.store.client import Store
from trackly_exec.testing.contract import DriverHarness, WebhookSink, free_port
from trackly_exec.testing.fakes.cm import DEFAULT_PRODUCT_TOKEN, CMFake
from trackly_exec.testing.fakes.control import Behaviour
from trackly_exec.testing.fakes.infobip import DEFAULT_API_KEY, InfobipFake
from trackly_exec.testing.fakes.twilio import DEFAULT_ACCOUNT_SID, DEFAULT_AUTH_TOKEN, TwilioFake

from .tracking_support import seed_account, seed_sent, tri

ROOT = Path(__file__).resolve().parent.parent
TWILIO_PATH = f"/2010-04-01/Accounts/{DEFAULT_ACCOUNT_SID}/Messages.json"


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def _post(http: aiohttp.ClientSession, url: str, **kwargs: Any) -> tuple[int, Any, Any]:
    async with http.post(url, **kwargs) as resp:
        text = await resp.text()
        return resp.status, json.loads(text) if text else None, resp.headers


def _basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def _infobip_body(*numbers: str, text: str = "hi") -> dict[str, Any]:
    return {
        "messages": [
            {
                "sender": "InfoSMS",
                "destinations": [{"to": n, "messageId": f"id{n}"} for n in numbers],
                "content": {"text": text},
            }
        ]
    }


async def test_infobip_fake_auth_and_shape(http: aiohttp.ClientSession) -> None:
    """The Infobip fake answers 401 E401 for a wrong key and 400 E400 with violations for a malformed body."""
    async with InfobipFake() as fake:
        url = fake.url + "/sms/3/messages"
        status, body, _ = await _post(
            http, url, json=_infobip_body("41793026727"), headers={"Authorization": "App wrong"}
        )
        assert status == 401 and body["errorCode"] == "E401"
        auth = {"Authorization": f"App {DEFAULT_API_KEY}"}
        status, body, _ = await _post(http, url, data=b"{not json", headers=auth)
        assert status == 400 and body["errorCode"] == "E400"
        status, body, _ = await _post(http, url, json={"messages": [{"destinations": [], "content": {}}]}, headers=auth)
        assert status == 400 and {v["property"] for v in body["violations"]} >= {"messages[0].destinations"}
        status, body, _ = await _post(http, url, json=_infobip_body("+41793026727"), headers=auth)
        assert status == 400, "numbers go without the '+'"
        status, body, _ = await _post(http, url, json=_infobip_body("41793026727", "41793026728"), headers=auth)
        assert status == 200 and [m["status"]["groupName"] for m in body["messages"]] == ["PENDING", "PENDING"]
        assert body["messages"][0]["messageId"] == "id41793026727"
        legacy = {"messages": [{"from": "InfoSMS", "destinations": [{"to": "41793026729"}], "text": "hi"}]}
        status, body, _ = await _post(http, fake.url + "/sms/2/text/advanced", json=legacy, headers=auth)
        assert status == 200 and fake.summary() == {"accepted": 3, "unique": 3, "duplicates": 0, "requests": 6}
        # the legacy endpoint in its own shapes (providers.md §1.5-1.8): to/smsCount, the bulkId echoed, requestError
        [answer] = body["messages"]
        assert answer["to"] == "41793026729" and answer["smsCount"] == 1 and "destination" not in answer
        basic = {"Authorization": "Basic " + base64.b64encode(f"user:{DEFAULT_API_KEY}".encode()).decode()}
        status, body, _ = await _post(
            http, fake.url + "/sms/2/text/advanced", json={**legacy, "bulkId": "B-1"}, headers=basic
        )
        assert status == 200 and body["bulkId"] == "B-1"
        status, body, _ = await _post(http, fake.url + "/sms/2/text/advanced", json={"messages": []}, headers=auth)
        assert status == 400 and body["requestError"]["serviceException"]["messageId"] == "BAD_REQUEST"
        v2_entry = fake.ledger[-1]
        [report] = fake.report_requests("http://x/", [(v2_entry, "delivered", None)])
        [result] = json.loads(report.body)["results"]
        assert result["from"] == "InfoSMS" and result["smsCount"] == 1 and result["bulkId"] == "B-1"
        assert "sender" not in result and "messageCount" not in result


async def test_twilio_fake_auth_shape_and_signed_callback(http: aiohttp.ClientSession) -> None:
    """The Twilio fake checks Basic auth (20003) and fields (21211/21602/21603), and signs its callbacks."""
    sink = await WebhookSink().start()
    try:
        async with TwilioFake() as fake:
            url = fake.url + TWILIO_PATH
            form = {"To": "+14155550000", "From": "+14155550001", "Body": "hi"}
            status, body, _ = await _post(http, url, data=form, headers=_basic(DEFAULT_ACCOUNT_SID, "no"))
            assert status == 401 and body["code"] == 20003
            auth = _basic(DEFAULT_ACCOUNT_SID, DEFAULT_AUTH_TOKEN)
            for missing, code in (({"To": "12"}, 21211), ({"Body": ""}, 21602), ({"From": ""}, 21603)):
                status, body, _ = await _post(http, url, data={**form, **missing}, headers=auth)
                assert (status, body["code"]) == (400, code)
            callback = f"{sink.url}/webhooks/twilio/status/tok?mid=0123456789abcdef"
            status, body, _ = await _post(http, url, data={**form, "StatusCallback": callback}, headers=auth)
            assert status == 201 and body["sid"].startswith("SM") and len(body["sid"]) == 34
            fake.dlr_outcome = lambda entry: ("undelivered", "30007")
            assert await fake.flush_reports() == 1
            [req] = sink.status
            params = dict(parse_qsl(req.body.decode()))
            assert params["MessageStatus"] == "undelivered" and params["ErrorCode"] == "30007"
            assert RequestValidator(DEFAULT_AUTH_TOKEN).validate(req.url, params, req.headers["x-twilio-signature"])
            assert fake.ledger[0].message_id == "0123456789abcdef"
    finally:
        await sink.stop()


async def test_cm_fake_auth_and_partial_rejection(http: aiohttp.ClientSession) -> None:
    """The CM fake refuses a wrong token with errorCode 101 and rejects invalid msgs one by one (errorCode 201)."""
    async with CMFake() as fake:
        url = fake.url + "/v1.0/message"

        def body(token: str, *msgs: dict[str, Any]) -> dict[str, Any]:
            return {"messages": {"authentication": {"producttoken": token}, "msg": list(msgs)}}

        good = {
            "from": "Sender",
            "to": [{"number": "0031612345678"}],
            "body": {"type": "auto", "content": "x"},
            "reference": "r1",
        }
        bad = {**good, "to": [{"number": "+31612345678"}], "reference": "r2"}
        status, data, _ = await _post(http, url, json=body("wrong", good))
        assert (status, data["errorCode"]) == (400, 101)
        status, data, _ = await _post(
            http, url, json=body(DEFAULT_PRODUCT_TOKEN, good), headers={"X-CM-PRODUCTTOKEN": "wrong"}
        )
        assert (status, data["errorCode"]) == (400, 101)
        status, data, _ = await _post(http, url, data=b"[]")
        assert (status, data["errorCode"]) == (400, 202)
        status, data, _ = await _post(http, url, json=body(DEFAULT_PRODUCT_TOKEN, good, bad))
        assert (status, data["errorCode"]) == (200, 201)
        assert [(m["reference"], m["status"], m["messageErrorCode"]) for m in data["messages"]] == [
            ("r1", "Accepted", 0),
            ("r2", "Rejected", 303),
        ]
        status, data, _ = await _post(http, url, json=body(DEFAULT_PRODUCT_TOKEN, bad))
        assert (status, data["errorCode"]) == (400, 201)
        assert fake.accepted_counts() == {"r1": 1}


async def test_script_then_default() -> None:
    """Scripted behaviours are consumed in order, then the default applies to every later request."""
    async with InfobipFake() as fake:
        driver = InfobipDriver(InfobipDriver.settings_model.model_validate(fake.driver_settings()), DriverContext())
        await driver.startup()
        try:
            fake.script(Behaviour("429", retry_after=1), Behaviour("5xx_before"))
            fake.set_default(Behaviour("reject", code="REJECTED_NETWORK"))
            kinds = []
            for i in range(4):
                [r] = await driver.submit([OutboundMessage(id=f"{i:016x}", to="+41793026727", sender="S", body="b")])
                kinds.append(r.kind)
            assert kinds == ["transient", "unknown", "rejected", "rejected"]  # a 5xx: the client cannot tell
            assert fake.requests == 4 and not fake.ledger
            with pytest.raises(ValueError):
                Behaviour("explode")
        finally:
            await driver.shutdown()


async def test_remote_control(http: aiohttp.ClientSession) -> None:
    """GET /_fake/ledger counts duplicates, POST /_fake/script queues behaviours, POST /_fake/reset clears."""
    async with CMFake() as fake:
        driver_settings = fake.driver_settings()
        from trackly_drivers.cm import CMDriver

        driver = CMDriver(CMDriver.settings_model.model_validate(driver_settings), DriverContext())
        await driver.startup()
        try:
            status, data, _ = await _post(
                http,
                fake.url + "/_fake/script",
                json={"behaviours": [{"mode": "5xx_after"}, {"mode": "429", "retry_after": 2}]},
            )
            assert status == 200 and data == {"queued": 2}
            m = OutboundMessage(id="00000000000000aa", to="+31612345678", sender="S", body="b")
            kinds = [(await driver.submit([m]))[0].kind for _ in range(3)]
            assert kinds == ["unknown", "transient", "accepted"]
            async with http.get(fake.url + "/_fake/ledger") as resp:
                assert await resp.json() == {
                    "accepted": 2,
                    "unique": 1,
                    "duplicates": 1,
                    "requests": 3,
                    "reports_posted": 0,
                }
            async with http.get(fake.url + "/_fake/ledger?entries=1") as resp:
                assert [e["message_id"] for e in (await resp.json())["entries"]] == [m.id, m.id]
            status, data, _ = await _post(http, fake.url + "/_fake/script", json={"behaviours": [{"mode": "nope"}]})
            assert status == 400
            status, _, _ = await _post(http, fake.url + "/_fake/reset")
            assert status == 200 and fake.summary() == {"accepted": 0, "unique": 0, "duplicates": 0, "requests": 0}
        finally:
            await driver.shutdown()


async def test_auto_reports() -> None:
    """With auto_reports the fake posts delivery reports by itself after report_delay."""
    sink = await WebhookSink().start()
    try:
        async with CMFake(report_url=f"{sink.url}/webhooks/cm/status", auto_reports=True, report_delay=0.05) as fake:
            from trackly_drivers.cm import CMDriver

            driver = CMDriver(CMDriver.settings_model.model_validate(fake.driver_settings()), DriverContext())
            await driver.startup()
            try:
                msgs = [OutboundMessage(id=f"{i:016x}", to=f"+3161234567{i}", sender="S", body="b") for i in range(3)]
                assert all(r.kind == "accepted" for r in await driver.submit(msgs))
                deadline = time.monotonic() + 30  # a liveness bound
                # (the fake counts a report once its POST has returned: after the sink has it)
                while (len(sink.status) < 3 or fake.reports_posted < 3) and time.monotonic() < deadline:
                    await asyncio.sleep(0.02)
                reports = [r for req in sink.status for r in driver.parse_status(req)]
                assert sorted(r.message_id or "" for r in reports) == [m.id for m in msgs]
                assert all(r.delivered for r in reports) and fake.reports_posted == 3
            finally:
                await driver.shutdown()
    finally:
        await sink.stop()


def test_default_credentials_match_default_config() -> None:
    """The fakes' default credentials are the ones in the shipped trackly.toml (where it configures them)."""
    expected = {
        "infobip": {"api_key": "fake-infobip-key"},
        "twilio": {"account_sid": "ACfake00000000000000000000000000", "auth_token": "fake-twilio-token"},
        "cm": {"product_token": "00000000-0000-0000-0000-000000000000"},
    }
    config = load_config(ROOT / "trackly.toml").drivers
    for name, values in expected.items():
        fake = {"infobip": InfobipFake, "twilio": TwilioFake, "cm": CMFake}[name]()
        fake.port = 1
        settings = fake.driver_settings()
        assert {k: settings[k] for k in values} == values
        for key, value in config.get(name, {}).items():
            if key in values:
                assert value == values[key], (name, key)


def _fake_provider(cwd: Path, *args: str) -> subprocess.Popen[str]:
    """``trackly fake-provider ARGS`` as a process, its output unbuffered."""
    return subprocess.Popen(
        [sys.executable, "-m", "trackly_exec.cli", "fake-provider", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=cwd,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def _stop(proc: subprocess.Popen[str]) -> None:
    """SIGTERM a ``_fake_provider`` process, wait for it and close its streams."""
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=10)
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


def test_fake_provider_command(tmp_path: Path) -> None:
    """`trackly fake-provider cm --port N` prints its credentials, serves the remote control and exits 0 on SIGTERM."""
    port = free_port()
    proc = _fake_provider(tmp_path, "cm", "--port", str(port), "--dlr-delay", "0.1")
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert f"http://127.0.0.1:{port}" in first, first
        second = proc.stdout.readline()
        assert 'product_token = "00000000-0000-0000-0000-000000000000"' in second
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{port}/_fake/ledger", timeout=5) as resp:
            assert json.load(resp)["accepted"] == 0
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def test_fake_provider_says_how_to_text_in_and_script_trouble(tmp_path: Path) -> None:
    """The banner shows how to make a contact text in (a STOP) and how to script provider trouble, with every mode;
    a driver the config does not set up posts its reports under the config's own public URL, not a fixed port."""
    from trackly_exec.testing.fakes.control import MODES

    port = free_port()
    config = tmp_path / "t.toml"
    config.write_text('[http]\npublic_url = "http://127.0.0.1:18123"\n')
    proc = _fake_provider(tmp_path, "cm", "--port", str(port), "-c", str(config))
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(6)]
    finally:
        _stop(proc)
    text = "".join(lines)
    assert "http://127.0.0.1:18123/webhooks/cm/status" in text, text
    assert f"http://127.0.0.1:{port}/_fake/inbound" in text and '"text": "STOP"' in text, text
    assert "/_fake/script" in text and all(mode in text for mode in MODES), text


def test_fake_provider_takes_the_configs_credentials_for_a_local_instance(tmp_path: Path) -> None:
    """`trackly fake-provider infobip -c CONFIG`: the config's instance pointing at this machine names its own key,
    and the fake takes it (the config works as written instead of answering 401 until the fake's default is
    copied in); a real provider's key is never taken."""
    port = free_port()
    config = tmp_path / "t.toml"
    config.write_text(f'[drivers.infobip]\nbase_url = "http://127.0.0.1:{port}"\napi_key = "my-own-local-key"\n')
    proc = _fake_provider(tmp_path, "infobip", "--port", str(port), "-c", str(config))
    try:
        assert proc.stdout is not None
        proc.stdout.readline()
        assert 'api_key = "my-own-local-key"' in proc.stdout.readline()
    finally:
        _stop(proc)


@pytest.mark.slow
async def test_accept_path_throughput() -> None:
    """The Infobip fake and driver move batches of 1,000 fast (~40,000 msg/s idle; the guard is loose for busy CI)."""
    async with InfobipFake() as fake:
        driver = InfobipDriver(InfobipDriver.settings_model.model_validate(fake.driver_settings()), DriverContext())
        await driver.startup()
        try:
            batches = [
                [
                    OutboundMessage(id=f"{b:08x}{i:08x}", to=f"+4179{i:07d}", sender="S", body=f"Hi {i}")
                    for i in range(1000)
                ]
                for b in range(30)
            ]
            sem = asyncio.Semaphore(6)

            async def one(batch: list[OutboundMessage]) -> int:
                async with sem:
                    return sum(r.kind == "accepted" for r in await driver.submit(batch))

            start = time.perf_counter()
            accepted = sum(await asyncio.gather(*(one(b) for b in batches)))
            rate = accepted / (time.perf_counter() - start)
            print(f"\ninfobip fake + driver: {accepted} msgs at {rate:,.0f} msg/s")
            assert accepted == 30_000 and fake.summary()["duplicates"] == 0
            assert rate > 4_000
        finally:
            await driver.shutdown()


@pytest.mark.parametrize("name", ["infobip", "twilio", "cm"])
async def test_reports_reach_the_daemon(settings: Settings, store: Store, name: str) -> None:
    """A fake's real delivery reports (Twilio's signed) pass the daemon's webhooks and set the tristate."""
    fake = {"infobip": InfobipFake, "twilio": TwilioFake, "cm": CMFake}[name]()
    await fake.start()
    settings.drivers[name] = {**fake.driver_settings(), "webhook_token": "e2e-token-0123456789"}
    trackly = await Trackly.open(settings, store=store)
    server = HttpServer(trackly)
    await server.start()
    try:
        settings.http.public_url = server.url  # what Twilio signs: the URL the fake really calls
        fake.report_url = f"{server.url}/webhooks/{name}/status/e2e-token-0123456789"  # CM: its portal setting
        await seed_account(store)
        sent = await seed_sent(store, 2, provider=name)
        driver = await trackly.drivers.get(name)
        msgs = [OutboundMessage(id=m.id, to=m.to_number, sender=m.from_number, body=m.body) for m in sent]
        results = [r for m in msgs for r in await driver.submit([m])]
        assert [r.kind for r in results] == ["accepted", "accepted"]
        fake.dlr_outcome = lambda e: "delivered" if e.message_id == sent[0].id else "undelivered"
        assert await fake.flush_reports() == 2, fake.report_failures
        docs = {d["_id"]: d for d in await store[c.SENT].find({"_id": {"$in": [m.id for m in sent]}}).to_list(None)}
        assert tri(docs[sent[0].id]["delivered"]) is True and tri(docs[sent[1].id]["delivered"]) is False
    finally:
        await server.stop(1)
        await trackly.close(close_store=False)
        await fake.stop()


def test_json_answer_is_written_as_aiohttps_json_response() -> None:
    """The fakes' JSON answers (orjson): the same content type and status as ``web.json_response``, and a body
    that reads back as the same values (unicode included)."""
    from aiohttp import web

    from trackly_exec.testing.fakes.base import json_answer

    data = {"code": 21211, "message": "The 'To' number +33 6 is not valid — ok", "more_info": None, "n": [1, 2.5]}
    ours, theirs = json_answer(data, status=400), web.json_response(data, status=400)
    assert (ours.status, ours.content_type, ours.charset) == (theirs.status, theirs.content_type, theirs.charset)
    assert isinstance(ours.body, bytes) and json.loads(ours.body) == data


def test_the_fakes_count_segments_as_the_providers_and_the_product_do() -> None:
    """An escape pair is never split across two parts: 152 septets, '€' (2) and 152 more is 3 parts, not
    ceil(306 / 153) = 2; the fakes bill what the product estimates."""
    from trackly_exec.store.segments import segment_count
    from trackly_exec.testing.fakes.base import segments

    for body in ("a" * 152 + "€" + "a" * 152, "a" * 160, "a" * 161, "€" * 80, "😀" * 35, "ü" * 70):
        assert segments(body) == segment_count(body), body
    assert segments("a" * 152 + "€" + "a" * 152) == 3


async def test_reports_that_could_not_be_posted_are_retried_as_the_provider_does() -> None:
    """Infobip and CM retry a report whose POST failed (Infobip: 1 min + n^2 min; CM: for 7 days); a fake's minute
    is ``retry_minute`` seconds. A daemon down for a while still gets its reports (a CM message recorded
    NO_RESPONSE has no look-up: only its report settles it). Twilio documents no retry."""
    from aiohttp import web

    from trackly_exec.testing.fakes.cm import CMFake
    from trackly_exec.testing.fakes.infobip import InfobipFake
    from trackly_exec.testing.fakes.twilio import TwilioFake

    assert InfobipFake.report_retry_minutes[:3] == (2, 5, 10) and len(CMFake.report_retry_minutes) > 50
    assert TwilioFake.report_retry_minutes == ()
    answers = iter([503])  # the first POST fails, the rest succeed

    async with DriverHarness(InfobipDriver, fake_kwargs={"retry_minute": 0.01}) as h:
        h.sink._response = lambda kind: web.Response(status=next(answers, 200))
        await h.submit(h.messages(1))
        assert await h.fake.flush_reports() == 0 and len(h.sink.status) == 1  # 503: failed, kept for a retry
        await asyncio.sleep(0.05)
        assert await h.fake.flush_reports(due_only=True) == 1 and len(h.sink.status) == 2
        assert await h.fake.flush_reports() == 0 and len(h.sink.status) == 2  # delivered: not again
