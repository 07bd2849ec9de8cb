"""The driver contract suite (trackly_exec.testing) run against each built-in driver and its fake."""

from __future__ import annotations

import json

from drivers.cm import CMDriver
from drivers.fake import Behaviour
from drivers.infobip import InfobipDriver, error_from_body
from drivers.twilio import TwilioDriver
from trackly_exec.driver import Rejected, TransientFailure, WebhookRequest
from trackly_exec.testing import DriverContractSuite, DriverHarness


class TestInfobipContract(DriverContractSuite):
    """Infobip against InfobipFake."""

    driver_class = InfobipDriver


class TestTwilioContract(DriverContractSuite):
    """Twilio against TwilioFake."""

    driver_class = TwilioDriver


class TestCMContract(DriverContractSuite):
    """CM.com against CMFake."""

    driver_class = CMDriver


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


def test_infobip_error_envelopes_and_v2_reports() -> None:
    """Both Infobip error envelopes parse, and a v2 delivery report (from/smsCount) maps like v3."""
    assert error_from_body({"errorCode": "E400", "description": "Bad", "violations": [
        {"property": "messages", "violation": "must not be empty"}]}) == ("E400", "Bad messages: must not be empty")
    code, detail = error_from_body({"requestError": {"serviceException": {
        "messageId": "UNAUTHORIZED", "text": "Unauthorized"}}})
    assert (code, detail) == ("UNAUTHORIZED", "Unauthorized")
    v2 = {"results": [{"bulkId": "b", "messageId": "0123456789abcdef", "to": "41793026727", "from": "InfoSMS",
                       "sentAt": "2019-11-09T16:00:00.000+0000", "doneAt": "2019-11-09T16:00:00.000+05:30",
                       "smsCount": 2, "price": {"pricePerMessage": 0.01, "currency": "EUR"},
                       "status": {"groupId": 2, "groupName": "UNDELIVERABLE", "id": 9,
                                  "name": "UNDELIVERABLE_NOT_DELIVERED"},
                       "error": {"groupId": 1, "groupName": "HANDSET_ERRORS", "id": 1,
                                 "name": "EC_UNKNOWN_SUBSCRIBER", "permanent": True}}]}
    driver = InfobipDriver(InfobipDriver.settings_model())
    [report] = driver.parse_status(WebhookRequest(url="http://x/s", headers={}, body=json.dumps(v2).encode(),
                                                  content_type="application/json"))
    assert report.message_id == "0123456789abcdef" and report.delivered is False
    assert report.error_code == "EC_UNKNOWN_SUBSCRIBER" and report.segments == 2
    assert report.done_at is not None and report.done_at.utcoffset() is not None


async def test_twilio_opt_out_code() -> None:
    """Twilio 21610 (recipient replied STOP) is a permanent rejection flagged opted_out."""
    async with DriverHarness(TwilioDriver) as h:
        [m] = h.messages(1)
        h.fake.reject_numbers[m.to] = "21610"
        [r] = await h.submit([m])
        assert isinstance(r, Rejected) and r.opted_out and r.code == "21610"
        assert h.driver.form(m)["StatusCallback"] == f"{h.status_url}?mid={m.id}"  # type: ignore[attr-defined]


async def test_cm_codes() -> None:
    """CM: 401 SpamFiltered is spam, 102 balance rejects the whole request, errorCode 500 is transient."""
    async with DriverHarness(CMDriver) as h:
        msgs = h.messages(2)
        h.fake.reject_numbers[msgs[0].to] = "401"
        r0, r1 = await h.submit(msgs)
        assert isinstance(r0, Rejected) and r0.spam and r1.kind == "accepted"
        h.fake.script(Behaviour("reject", code="102"), Behaviour("reject", code="500"))
        results = await h.submit(h.messages(2))
        assert all(isinstance(r, Rejected) and r.code == "102" for r in results), results
        results = await h.submit(h.messages(2))
        assert all(isinstance(r, TransientFailure) for r in results), results
        assert h.driver.request_body(msgs)["messages"]["msg"][0]["to"] == [  # type: ignore[attr-defined]
            {"number": "00" + msgs[0].to[1:]}]
