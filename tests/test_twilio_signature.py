"""X-Twilio-Signature: the vectors of providers.md §2.4, cross-checked with twilio's own RequestValidator."""

from __future__ import annotations

import hashlib
import json
from urllib.parse import urlencode

import pytest
from trackly_drivers.twilio import TwilioDriver, TwilioSettings, compute_signature, validate_signature
from twilio.request_validator import RequestValidator

from trackly_exec.drivers.contract import DriverContext, WebhookRequest
from trackly_exec.errors import WebhookAuthError

TOKEN = "12345"
URL = "https://mycompany.com/myapp.php?foo=1&bar=2"
PARAMS = {
    "CallSid": "CA1234567890ABCDE",
    "Caller": "+14158675309",
    "Digits": "1234",
    "From": "+14158675309",
    "To": "+18005551212",
}
EXPECTED = "RSOYDt4T1cUTdK1PDd93/VVr8B8="
BODY = '{"property": "value", "boolean": true}'
BODY_HASH = "0a1ff7634d9ab3b95db5c9a2dfe9416e41502b283a80c7cf19632632f96e6620"


def _lists(params: dict[str, str]) -> dict[str, list[str]]:
    return {k: [v] for k, v in params.items()}


def _driver(token: str = TOKEN) -> TwilioDriver:
    return TwilioDriver(TwilioSettings(account_sid="ACx", auth_token=token), DriverContext())


def test_worked_example() -> None:
    """The documented URL + sorted params signs to RSOYDt4T1cUTdK1PDd93/VVr8B8=."""
    assert compute_signature(TOKEN, URL, _lists(PARAMS)) == EXPECTED
    assert validate_signature(TOKEN, URL, _lists(PARAMS), EXPECTED)


def test_https_port_variant() -> None:
    """The URL with :443 signs to kvajT1Ptam85bY51eRf/AJRuM3w=, and either form validates either signature."""
    with_port = "https://mycompany.com:443/myapp.php?foo=1&bar=2"
    assert compute_signature(TOKEN, with_port, _lists(PARAMS)) == "kvajT1Ptam85bY51eRf/AJRuM3w="
    assert validate_signature(TOKEN, URL, _lists(PARAMS), "kvajT1Ptam85bY51eRf/AJRuM3w=")
    assert validate_signature(TOKEN, with_port, _lists(PARAMS), EXPECTED)


def test_http_port_variant() -> None:
    """The http URL with :80 signs to 0ZXoZLH/DfblKGATFgpif+LLRf4= and validates without the port too."""
    with_port = "http://mycompany.com:80/myapp.php?foo=1&bar=2"
    assert compute_signature(TOKEN, with_port, _lists(PARAMS)) == "0ZXoZLH/DfblKGATFgpif+LLRf4="
    assert validate_signature(
        TOKEN, "http://mycompany.com/myapp.php?foo=1&bar=2", _lists(PARAMS), "0ZXoZLH/DfblKGATFgpif+LLRf4="
    )


def test_multi_valued_params() -> None:
    """Repeated params (Digits=5678,1234,1234) sign to IK+Dwps556ElfBT0I3Rgjkr1wJU=."""
    params = {"Sid": ["CA123"], "SidAccount": ["AC123"], "Digits": ["5678", "1234", "1234"]}
    assert compute_signature(TOKEN, URL, params) == "IK+Dwps556ElfBT0I3Rgjkr1wJU="
    assert validate_signature(TOKEN, URL, params, "IK+Dwps556ElfBT0I3Rgjkr1wJU=")


def test_json_body_variant() -> None:
    """A JSON body is checked by its bodySHA256 and the URL alone is signed (a9nBmqA0ju/hNViExpshrM61xv4=)."""
    assert hashlib.sha256(BODY.encode()).hexdigest() == BODY_HASH
    url = f"{URL}&bodySHA256={BODY_HASH}"
    assert compute_signature(TOKEN, url, None) == "a9nBmqA0ju/hNViExpshrM61xv4="
    assert validate_signature(TOKEN, url, None, "a9nBmqA0ju/hNViExpshrM61xv4=", body=BODY.encode())
    assert not validate_signature(TOKEN, url, None, "a9nBmqA0ju/hNViExpshrM61xv4=", body=BODY.encode() + b" ")


@pytest.mark.parametrize(
    "signature", ["", "RSOYDt4T1cUTdK1PDd93/VVr8B8", "rsoydt4t1cutdk1pdd93/vvr8b8=", "kvajT1Ptam85bY51eRf/AJRuM3w=x"]
)
def test_wrong_signatures_refused(signature: str) -> None:
    """A missing, truncated, case-changed or padded signature does not validate."""
    assert not validate_signature(TOKEN, URL, _lists(PARAMS), signature)


def test_tampered_params_or_token_refused() -> None:
    """Changing one param, adding one, or using another token invalidates the signature."""
    assert not validate_signature(TOKEN, URL, _lists({**PARAMS, "Digits": "1235"}), EXPECTED)
    assert not validate_signature(TOKEN, URL, _lists({**PARAMS, "Extra": "1"}), EXPECTED)
    assert not validate_signature("54321", URL, _lists(PARAMS), EXPECTED)
    assert not validate_signature(TOKEN, URL.replace("https", "http"), _lists(PARAMS), EXPECTED)


@pytest.mark.parametrize(
    "url",
    [
        URL,
        "https://mycompany.com:443/myapp.php?foo=1&bar=2",
        "http://127.0.0.1:8080/webhooks/twilio/status/tok?mid=0123456789abcdef",
        "https://example.org/a%20b?x=%2B1&y=",
    ],
)
@pytest.mark.parametrize("params", [PARAMS, {"Body": "héllo wörld ✓", "From": "+1", "ErrorCode": "30007"}, {}])
def test_cross_check_with_twilio_library(url: str, params: dict[str, str]) -> None:
    """Our signatures agree with twilio.RequestValidator both ways, port variants included."""
    validator = RequestValidator(TOKEN)
    ours = compute_signature(TOKEN, url, _lists(params))
    assert ours == validator.compute_signature(url, params)
    assert validator.validate(url, params, ours)
    assert validate_signature(TOKEN, url, _lists(params), validator.compute_signature(url, params))


def test_driver_authenticate_form_request() -> None:
    """TwilioDriver.authenticate accepts a signed form webhook and refuses a tampered one."""
    url = "https://hooks.example.com/webhooks/twilio/status?mid=0123456789abcdef"
    params = {"MessageSid": "SM1", "MessageStatus": "delivered", "To": "+14155550000"}
    signature = RequestValidator(TOKEN).compute_signature(url, params)
    ok = WebhookRequest(
        url=url,
        headers={"X-Twilio-Signature": signature},
        body=urlencode(params).encode(),
        content_type="application/x-www-form-urlencoded",
    )
    _driver().authenticate(ok)
    [report] = _driver().parse_status(ok)
    assert report.message_id == "0123456789abcdef" and report.delivered is True
    bad = WebhookRequest(
        url=url,
        headers={"X-Twilio-Signature": signature},
        body=urlencode({**params, "MessageStatus": "undelivered"}).encode(),
        content_type="application/x-www-form-urlencoded",
    )
    with pytest.raises(WebhookAuthError):
        _driver().authenticate(bad)
    with pytest.raises(WebhookAuthError):
        _driver("other-token").authenticate(ok)


def test_driver_authenticate_json_request() -> None:
    """TwilioDriver.authenticate accepts the JSON-body variant (bodySHA256) and refuses a changed body."""
    body = json.dumps({"a": 1}).encode()
    url = f"https://hooks.example.com/x?bodySHA256={hashlib.sha256(body).hexdigest()}"
    signature = RequestValidator(TOKEN).compute_signature(url, {})
    req = WebhookRequest(url=url, headers={"X-Twilio-Signature": signature}, body=body, content_type="application/json")
    _driver().authenticate(req)
    with pytest.raises(WebhookAuthError):
        _driver().authenticate(
            WebhookRequest(
                url=url, headers={"X-Twilio-Signature": signature}, body=body + b" ", content_type="application/json"
            )
        )


def test_driver_authenticate_sha256_settings_header() -> None:
    """A webhook announcing HMAC_SHA256 in X-Twilio-Webhooks-Signature-Settings is checked with SHA-256."""
    url = "https://hooks.example.com/webhooks/twilio/inbound"
    params = {"From": "+14155550000", "Body": "STOP"}
    signature = RequestValidator(TOKEN).compute_signature(url, params, "HMAC_SHA256")
    headers = {
        "X-Twilio-Signature": signature,
        "X-Twilio-Webhooks-Signature-Settings": "key=webhooks_sharedkey_1,algorithm=HMAC_SHA256",
    }
    _driver().authenticate(
        WebhookRequest(
            url=url, headers=headers, body=urlencode(params).encode(), content_type="application/x-www-form-urlencoded"
        )
    )
    with pytest.raises(WebhookAuthError):
        _driver().authenticate(
            WebhookRequest(
                url=url,
                headers={"X-Twilio-Signature": signature},
                body=urlencode(params).encode(),
                content_type="application/x-www-form-urlencoded",
            )
        )


def test_inbound_twiml() -> None:
    """The inbound answer is TwiML with the reply XML-escaped, or an empty <Response/>."""
    resp = _driver().inbound_response("You're <out> & done")
    assert resp.content_type == "text/xml"
    assert b"<Response><Message>You're &lt;out&gt; &amp; done</Message></Response>" in resp.body
    assert _driver().inbound_response(None).body.endswith(b"<Response/>")


def test_status_callback_mapping() -> None:
    """Status callbacks map to the tristate; 30007 is spam, 21610 opted out, intermediate states are None."""

    def report(**params: str):  # type: ignore[no-untyped-def]
        req = WebhookRequest(
            url="https://h/x?mid=abc",
            headers={},
            body=urlencode(params).encode(),
            content_type="application/x-www-form-urlencoded",
        )
        return _driver().parse_status(req)[0]

    assert report(MessageStatus="sent", MessageSid="SM1").delivered is None
    assert report(MessageStatus="queued").delivered is None
    failed = report(MessageStatus="undelivered", ErrorCode="30007")
    assert failed.delivered is False and failed.spam and failed.error_code == "30007"
    assert report(MessageStatus="failed", ErrorCode="21610").opted_out
    delivered = report(MessageStatus="delivered", RawDlrDoneDate="2401151030")
    assert delivered.delivered is True and delivered.done_at is not None and delivered.done_at.hour == 10
