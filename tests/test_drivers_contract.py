"""The driver contract suite (trackly_exec.testing.contract) run against each built-in driver and its fake."""

from __future__ import annotations

import asyncio
import datetime as dt
import email.utils
import json
from typing import Any, ClassVar

import pytest
from trackly_drivers.cm import CMDriver
from trackly_drivers.cm import parse_time as cm_parse_time
from trackly_drivers.infobip import InfobipDriver, error_from_body
from trackly_drivers.infobip import parse_time as infobip_parse_time
from trackly_drivers.twilio import TwilioDriver
from trackly_drivers.twilio import _rfc2822 as twilio_rfc2822

from trackly_exec.drivers.contract import (
    DriverContext,
    OutboundMessage,
    Rejected,
    TransientFailure,
    UnknownOutcome,
    WebhookRequest,
)
from trackly_exec.drivers.http import HttpReply, parse_retry_after, raise_for_status
from trackly_exec.errors import PermanentSendError, TransientSendError, UnknownOutcomeError
from trackly_exec.store.documents import ConfigTable
from trackly_exec.testing.contract import DriverContractSuite, DriverHarness
from trackly_exec.testing.fakes.control import Behaviour


class TestInfobipContract(DriverContractSuite):
    """Infobip against InfobipFake, sending on aiohttp."""

    driver_class = InfobipDriver
    driver_settings: ClassVar[ConfigTable] = {"send_client": "aiohttp"}


class TestTwilioContract(DriverContractSuite):
    """Twilio against TwilioFake, sending on aiohttp."""

    driver_class = TwilioDriver
    driver_settings: ClassVar[ConfigTable] = {"send_client": "aiohttp"}


class TestCMContract(DriverContractSuite):
    """CM.com against CMFake, sending on aiohttp."""

    driver_class = CMDriver
    driver_settings: ClassVar[ConfigTable] = {"send_client": "aiohttp"}


# The same suites on the keep-alive send client (what the default, "auto", takes when no proxy applies).
class TestInfobipKeepaliveContract(TestInfobipContract):
    driver_settings: ClassVar[ConfigTable] = {"send_client": "keepalive"}


class TestTwilioKeepaliveContract(TestTwilioContract):
    driver_settings: ClassVar[ConfigTable] = {"send_client": "keepalive"}


class TestCMKeepaliveContract(TestCMContract):
    driver_settings: ClassVar[ConfigTable] = {"send_client": "keepalive"}


# --------------------------------------------------------------------------------------------- provider specifics


async def test_infobip_request_shape_and_spam() -> None:
    """Infobip groups equal texts, carries our id and status URL, and flags a flooding-filter rejection as spam."""
    async with DriverHarness(InfobipDriver) as h:
        msgs = h.messages(3, body="same")
        msgs = [m.model_copy(update={"body": "same text"}) for m in msgs]
        body = h.driver.request_body(msgs)  # type: ignore[attr-defined]
        assert len(body["messages"]) == 1 and body["options"]["includeSmsCountInResponse"] is True
        entry = body["messages"][0]
        assert [d["messageId"] for d in entry["destinations"]] == [m.id for m in msgs]
        assert entry["webhooks"]["delivery"]["url"] == h.status_url
        h.fake.reject_numbers[msgs[0].to] = "REJECTED_FLOODING_FILTER"
        h.fake.reject_numbers[msgs[1].to] = "REJECTED_DESTINATION_BLOCKLISTED"
        r0, r1, r2 = await h.submit(msgs)
        assert isinstance(r0, Rejected) and r0.spam and r0.code == "REJECTED_FLOODING_FILTER"
        assert isinstance(r1, Rejected) and r1.opted_out
        assert r2.kind == "accepted"
        assert {e.report_url for e in h.fake.ledger} == {h.status_url}


async def test_infobip_numeric_sender_without_plus() -> None:
    """Infobip numbers are "international format without +" (``"sender": "41793026700"``): a numeric sender
    loses its ``+`` like the destinations do; an alphanumeric one is sent as it is."""
    async with DriverHarness(InfobipDriver) as h:
        numeric, alpha = h.messages(2)
        numeric = numeric.model_copy(update={"sender": "+41793026700", "body": "a"})
        alpha = alpha.model_copy(update={"sender": "InfoSMS", "body": "b"})
        body = h.driver.request_body([numeric, alpha])  # type: ignore[attr-defined]
        assert [e["sender"] for e in body["messages"]] == ["41793026700", "InfoSMS"]
        assert body["messages"][0]["destinations"][0]["to"] == numeric.to.lstrip("+")


def test_infobip_error_envelopes_and_v2_reports() -> None:
    """Both Infobip error envelopes parse, and a v2 delivery report (from/smsCount) maps like v3."""
    assert error_from_body(
        {
            "errorCode": "E400",
            "description": "Bad",
            "violations": [{"property": "messages", "violation": "must not be empty"}],
        }
    ) == ("E400", "Bad messages: must not be empty")
    code, detail = error_from_body(
        {"requestError": {"serviceException": {"messageId": "UNAUTHORIZED", "text": "Unauthorized"}}}
    )
    assert (code, detail) == ("UNAUTHORIZED", "Unauthorized")
    v2 = {
        "results": [
            {
                "bulkId": "b",
                "messageId": "0123456789abcdef",
                "to": "41793026727",
                "from": "InfoSMS",
                "sentAt": "2019-11-09T16:00:00.000+0000",
                "doneAt": "2019-11-09T16:00:00.000+05:30",
                "smsCount": 2,
                "price": {"pricePerMessage": 0.01, "currency": "EUR"},
                "status": {"groupId": 2, "groupName": "UNDELIVERABLE", "id": 9, "name": "UNDELIVERABLE_NOT_DELIVERED"},
                "error": {
                    "groupId": 1,
                    "groupName": "HANDSET_ERRORS",
                    "id": 1,
                    "name": "EC_UNKNOWN_SUBSCRIBER",
                    "permanent": True,
                },
            }
        ]
    }
    driver = InfobipDriver(InfobipDriver.settings_model())
    [report] = driver.parse_status(
        WebhookRequest(url="http://x/s", headers={}, body=json.dumps(v2).encode(), content_type="application/json")
    )
    assert report.message_id == "0123456789abcdef" and report.delivered is False
    assert report.error_code == "EC_UNKNOWN_SUBSCRIBER" and report.segments == 2
    assert report.done_at is not None and report.done_at.utcoffset() is not None


def test_times_out_of_range_in_utc_are_absent() -> None:
    """A provider time that parses but overflows once converted to UTC (year 9999 with a negative offset, year 1
    with a positive one) reads as absent, like any odd time: it would fail the whole webhook request wherever it
    is converted or stored (a delivered_at, a parked report, an inbound message's received_at)."""
    for parse in (infobip_parse_time, cm_parse_time):
        assert parse("9999-12-31T23:59:59.000-2359") is None
        assert parse("9999-12-31T23:59:59-23:59") is None
        assert parse("0001-01-01T00:00:00+23:59") is None
        assert parse("9999-12-31T23:59:59+00:00") == dt.datetime(9999, 12, 31, 23, 59, 59, tzinfo=dt.UTC)
        assert parse("2019-11-09T16:00:00.000+0100") == dt.datetime(2019, 11, 9, 15, 0, tzinfo=dt.UTC)
    assert twilio_rfc2822("Fri, 31 Dec 9999 23:59:59 -2359") is None
    assert twilio_rfc2822("Thu, 30 Jul 2015 20:12:31 +0000") == dt.datetime(2015, 7, 30, 20, 12, 31, tzinfo=dt.UTC)


async def test_twilio_opt_out_code() -> None:
    """Twilio 21610 (recipient replied STOP) is a permanent rejection flagged opted_out."""
    async with DriverHarness(TwilioDriver) as h:
        [m] = h.messages(1)
        h.fake.reject_numbers[m.to] = "21610"
        [r] = await h.submit([m])
        assert isinstance(r, Rejected) and r.opted_out and r.code == "21610"
        assert h.driver.form(m)["StatusCallback"] == f"{h.status_url}?mid={m.id}"  # type: ignore[attr-defined]


async def test_twilio_queue_overflow_is_held() -> None:
    """Twilio 21611 (the sender's queue is more than 10 hours deep; the message is not created, HTTP 400) asks to
    slow down: a transient failure, held like a 429, not a rejection that would dead-letter every later message."""
    async with DriverHarness(TwilioDriver) as h:
        [m] = h.messages(1)
        h.fake.reject_numbers[m.to] = "21611"
        [r] = await h.submit([m])
        assert isinstance(r, TransientFailure) and r.code == "21611", r
        assert not h.fake.ledger


async def test_infobip_account_without_credit_is_held() -> None:
    """Infobip REJECTED_NOT_ENOUGH_CREDITS is the account's trouble, not the message's: held until a top-up."""
    async with DriverHarness(InfobipDriver) as h:
        a, b = h.messages(2)
        h.fake.reject_numbers[a.to] = "REJECTED_NOT_ENOUGH_CREDITS"
        ra, rb = await h.submit([a, b])
        assert isinstance(ra, TransientFailure) and ra.code == "REJECTED_NOT_ENOUGH_CREDITS", ra
        assert rb.kind == "accepted"


@pytest.mark.parametrize(
    ("driver", "body"),
    [
        ("infobip", b'{"results": [{"messageId": "m1", "status": {"groupName": "DELIVERED", "name": "DELIVERED"}}]}'),
        ("cm", b'{"messages": {"msg": {"reference": "m1", "to": "0031612345678", "status": {"code": "2"}}}}'),
        (
            "cm",
            b"<?xml version='1.0'?><MESSAGES><MSG RECEIVED='2026-01-01T10:00:00'><TO>0031612345678</TO>"
            b"<REFERENCE>m1</REFERENCE><STATUS><CODE>2</CODE></STATUS></MSG></MESSAGES>",
        ),
    ],
)
async def test_a_report_starting_with_a_byte_order_mark_is_read(driver: str, body: bytes) -> None:
    """A UTF-8 byte-order mark before a JSON or XML report does not make a valid report a 400."""
    cls = {"infobip": InfobipDriver, "cm": CMDriver}[driver]
    async with DriverHarness(cls) as h:
        kind = "application/xml" if body.startswith(b"<") else "application/json"
        plain = h.driver.parse_status(WebhookRequest("https://x/webhooks", {}, body, kind))
        marked = h.driver.parse_status(WebhookRequest("https://x/webhooks", {}, b"\xef\xbb\xbf" + body, kind))
        assert [r.message_id for r in marked] == [r.message_id for r in plain] == ["m1"]
        assert marked[0].delivered is True


async def test_cm_codes() -> None:
    """CM: 401 SpamFiltered is spam, 102 balance holds the whole request (the account's trouble), errorCode 500 (the messages may have
    been created) is an unknown outcome."""
    async with DriverHarness(CMDriver) as h:
        msgs = h.messages(2)
        h.fake.reject_numbers[msgs[0].to] = "401"
        r0, r1 = await h.submit(msgs)
        assert isinstance(r0, Rejected) and r0.spam and r1.kind == "accepted"
        h.fake.script(Behaviour("reject", code="102"), Behaviour("reject", code="500"))
        results = await h.submit(h.messages(2))
        assert all(isinstance(r, TransientFailure) and r.code == "102" for r in results), results  # held
        results = await h.submit(h.messages(2))
        assert all(isinstance(r, UnknownOutcome) for r in results), results
        assert (
            h.driver.request_body(msgs)["messages"]["msg"][0]["to"]
            == [  # type: ignore[attr-defined]
                {"number": "00" + msgs[0].to[1:]}
            ]
        )


# --------------------------------------------------------------------------------------------- HTTP outcome mapping


@pytest.mark.parametrize(
    ("status", "family"),
    [
        (400, PermanentSendError),
        (401, TransientSendError),  # credentials refused: nothing processed, held until the key is fixed
        (403, PermanentSendError),
        (404, PermanentSendError),
        (408, UnknownOutcomeError),  # documented by no provider: an edge's 408 may follow a forwarded request
        (429, TransientSendError),
        (500, UnknownOutcomeError),
        (502, UnknownOutcomeError),
        (503, UnknownOutcomeError),
        (504, UnknownOutcomeError),
        (302, UnknownOutcomeError),
    ],
)
def test_status_mapping(status: int, family: type[Exception]) -> None:
    """Non-2xx answers map to the permanent / transient / unknown families as the issue specifies."""
    with pytest.raises(family):
        raise_for_status(HttpReply(status, {}, b""))
    raise_for_status(HttpReply(201, {}, b""))


def test_retry_after_parsing() -> None:
    """Retry-After is read as delta-seconds or as an HTTP date; garbage is ignored."""
    assert parse_retry_after("3") == 3.0 and parse_retry_after(" 1.5 ") == 1.5
    when = email.utils.format_datetime(dt.datetime.now(dt.UTC) + dt.timedelta(seconds=30), usegmt=True)
    assert 25 <= (parse_retry_after(when) or 0) <= 31
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None
    assert parse_retry_after("Mon, 01 Jan 2001 00:00:00 GMT") == 0.0


async def _raw_server(handler: Any) -> tuple[asyncio.AbstractServer, str]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"


async def test_disconnect_after_write_is_unknown() -> None:
    """A server that reads the whole request and then drops the connection gives an unknown outcome."""

    async def read_then_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(
            next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
        )
        await reader.readexactly(length)
        writer.close()

    server, url = await _raw_server(read_then_close)
    driver = InfobipDriver(InfobipDriver.settings_model(base_url=url, api_key="k"), DriverContext())
    await driver.startup()
    try:
        [result] = await driver.submit(
            [OutboundMessage(id="0123456789abcdef", to="+41793026727", sender="S", body="b")]
        )
        assert isinstance(result, UnknownOutcome), result
    finally:
        await driver.shutdown()
        server.close()
        await server.wait_closed()


async def test_garbage_2xx_is_unknown() -> None:
    """A 2xx answer without per-message statuses is an unknown outcome (maybe sent), never a retry."""

    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"
        )
        await writer.drain()
        writer.close()

    server, url = await _raw_server(garbage)
    for cls, settings in (
        (InfobipDriver, {"api_key": "k"}),
        (CMDriver, {"product_token": "t"}),
        (TwilioDriver, {"account_sid": "AC1", "auth_token": "t"}),
    ):
        driver = cls(cls.settings_model(base_url=url, **settings), DriverContext())
        await driver.startup()
        try:
            [result] = await driver.submit(
                [OutboundMessage(id="0123456789abcdef", to="+41793026727", sender="S", body="b")]
            )
            assert isinstance(result, UnknownOutcome), (cls.__name__, result)
        finally:
            await driver.shutdown()
    server.close()
    await server.wait_closed()


def test_server_errors_setting_is_safe() -> None:
    """The old per-driver ``server_errors`` key still loads as "unknown"; "transient" (blind retries of a 5xx) is
    refused with a reason; a 5xx is unknown unless the driver passes a documented "not processed"."""
    from pydantic import ValidationError

    for cls in (InfobipDriver, TwilioDriver, CMDriver):
        assert cls.settings_model().server_errors == "unknown"
        assert cls.settings_model.model_validate({"server_errors": "unknown"}).server_errors == "unknown"
        with pytest.raises(ValidationError, match="no longer supported"):
            cls.settings_model.model_validate({"server_errors": "transient"})
    assert isinstance(_mapped(503), UnknownOutcomeError)
    assert isinstance(_mapped(503, not_processed=True), TransientSendError)


def _mapped(status: int, **kwargs: Any) -> Exception:
    try:
        raise_for_status(HttpReply(status, {}, b""), **kwargs)
    except Exception as exc:
        return exc
    raise AssertionError("no error raised")
