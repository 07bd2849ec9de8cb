"""CM.com Business Messaging driver: ``POST /v1.0/message`` with up to 100 ``msg`` per request.

Wire format: CM.com's Business Messaging API (https://developers.cm.com/messaging/docs/sms).
Our id travels as each message's ``reference``
(1-32 alphanumerics: our 16-hex ids fit) and comes back in the status report. CM posts status reports to
the URL configured in its portal (point it at the daemon's ``/webhooks/<instance>/status/<token>``);
they and inbound messages are authenticated by the path token (and optional Basic auth) of the base class.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from typing import Any, ClassVar
from xml.etree import ElementTree

from pydantic import Field, SecretStr

from trackly_exec.drivers.contract import (
    DeliveryReport,
    Driver,
    DriverSettings,
    InboundMessage,
    OutboundMessage,
    Rejected,
    SendResult,
    UnknownOutcome,
    WebhookRequest,
    accepted,
    provider_time,
)
from trackly_exec.drivers.http import HttpClient, JsonObject, raise_for_status
from trackly_exec.errors import PermanentSendError, TransientSendError, UnknownOutcomeError, WebhookFormatError

#: ``messageErrorCode`` values (SDK ``TextClientStatusCode``) with a meaning of their own.
SPAM_CODES = frozenset({401})
OPT_OUT_CODES = frozenset({402})
#: Whole-request error codes after which CM may or may not have created the messages: 500 InternalServerError and
#: 999 Unknown (providers.md §3.3). CM documents no error as "not processed" (nor its HTTP 429 behaviour), so
#: these, like any HTTP 5xx, are unknown outcomes: never retried blindly. Only HTTP 429 is retried.
UNKNOWN_CODES = frozenset({500, 999})
#: Whole-request refusals for the account, before any message is created (providers.md §3.3): 101
#: AuthenticationFailed, 102 BalanceInsufficient, 103 ApiKeyIncorrect. Held until the operator fixes the token or
#: tops up (a provider-error burst alerts), never dead-lettered.
ACCOUNT_CODES = frozenset({101, 102, 103})
#: ``status.code`` of a status report: 0 accepted by the operator, 1 rejected, 2 delivered, 3 failed.
STATUS_NAMES = {"0": "accepted", "1": "rejected", "2": "delivered", "3": "failed", "4": "read"}


class CMSettings(DriverSettings):
    """``[drivers.cm]``: the product token of your CM account."""

    base_url: str = Field("https://gw.messaging.cm.com", description="CM gateway base URL.")
    product_token: SecretStr = Field(SecretStr(""), description="Product token (GUID), sent as X-CM-PRODUCTTOKEN.")
    batch_size: int = Field(100, ge=1, le=1000, description="Messages (`msg` entries) per request (CM SDKs: 100).")
    max_parts: int = Field(8, ge=1, le=8, description="maximumNumberOfMessageParts of each message.")

    list_overridable: ClassVar[frozenset[str]] = DriverSettings.list_overridable | {"max_parts"}


def cm_number(e164: str) -> str:
    """CM wants ``00`` + country code + number."""
    return "00" + e164.lstrip("+")


def from_cm_number(number: Any) -> str:
    text = str(number or "").strip()
    if text.startswith("00") and text[2:].isdigit():
        return "+" + text[2:]
    if text.isdigit():
        return "+" + text
    return text


def parse_time(value: Any) -> dt.datetime | None:
    """CM report times (``2024-01-15T10:30:00`` or with an offset); naive times taken as UTC. None when absent or
    odd, out-of-range in UTC included (``9999-12-31T23:59:59-23:59`` parses, then overflows wherever it is
    converted or stored)."""
    if not isinstance(value, str) or not value:
        return None
    try:
        when = dt.datetime.fromisoformat(value.replace("Z", "+00:00").replace(" ", "T", 1))
    except ValueError:
        return None
    return provider_time(when)


def _int(value: Any, default: int = 0) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


class CMDriver(Driver[CMSettings]):
    """CM.com text gateway (JSON)."""

    settings_model: ClassVar[type[DriverSettings]] = CMSettings
    fake: ClassVar[str | None] = "trackly_exec.testing.fakes.cm:CMFake"
    get_webhooks: ClassVar[frozenset[str]] = frozenset({"status", "inbound"})  # older gateways call by GET

    _http: HttpClient | None = None

    async def startup(self) -> None:
        token = self.settings.product_token.get_secret_value()
        self._http = HttpClient(self.settings, headers={"X-CM-PRODUCTTOKEN": token, "Accept": "application/json"})
        await self._http.open()

    async def shutdown(self) -> None:
        if self._http is not None:
            await self._http.close()

    def request_body(self, messages: Sequence[OutboundMessage]) -> JsonObject:
        now = dt.datetime.now(dt.UTC)
        msgs = []
        for m in messages:
            msg: JsonObject = {
                "allowedChannels": ["SMS"],
                "from": m.sender.lstrip("+") if m.sender.startswith("+") else m.sender,
                "to": [{"number": cm_number(m.to)}],
                "body": {"type": "auto", "content": m.body},
                "reference": m.id,
                "minimumNumberOfMessageParts": 1,
                "maximumNumberOfMessageParts": self.settings.max_parts,
            }
            if m.valid_for is not None:  # absolute, to the second (its relative form counts whole minutes)
                until = now + dt.timedelta(seconds=m.valid_for)
                msg["validity"] = until.strftime("%Y-%m-%d %H:%M:%S GMT")
            msgs.append(msg)
        token = self.settings.product_token.get_secret_value()
        return {"messages": {"authentication": {"producttoken": token}, "msg": msgs}}

    async def send(self, messages: Sequence[OutboundMessage]) -> list[SendResult]:
        assert self._http is not None, "startup() not called"
        reply = await self._http.post("/v1.0/message", json_body=self.request_body(messages))
        body = reply.json()
        per_message = body.get("messages") if isinstance(body, dict) else None
        if not 200 <= reply.status < 300 and not per_message:
            code = _int(body.get("errorCode"), -1) if isinstance(body, dict) else -1
            detail = str(body.get("details") or "") if isinstance(body, dict) else ""
            if reply.status == 400 and code in UNKNOWN_CODES:
                raise UnknownOutcomeError(
                    f"CM errorCode {code} (the messages may have been created): {detail}", code=str(code)
                )
            if reply.status == 400 and code in ACCOUNT_CODES:  # nothing created; the account's trouble: held
                raise TransientSendError(f"CM refused the account (errorCode {code}): {detail}", code=str(code))
            if reply.status == 400 and code > 0:  # 202 malformed, 203, ...
                raise PermanentSendError(detail, code=str(code))
            raise_for_status(reply, code=str(code) if code >= 0 else None, detail=detail)
        if not isinstance(per_message, list):
            return [
                UnknownOutcome(message_id=m.id, detail=f"CM answered HTTP {reply.status} without messages")
                for m in messages
            ]
        by_ref = {str(e.get("reference")): e for e in per_message if isinstance(e, dict)}
        results: list[SendResult] = []
        for m in messages:
            entry = by_ref.get(m.id)
            if entry is None:
                results.append(UnknownOutcome(message_id=m.id, detail="no status for this reference"))
                continue
            status = str(entry.get("status") or "").lower()
            error = _int(entry.get("messageErrorCode"))
            if status == "accepted" and error == 0:
                results.append(accepted(m.id, m.id, _int(entry.get("parts"), m.segments) or m.segments))
            else:
                results.append(
                    Rejected(
                        message_id=m.id,
                        code=str(error),
                        detail=str(entry.get("messageDetails") or ""),
                        spam=error in SPAM_CODES,
                        opted_out=error in OPT_OUT_CODES,
                    )
                )
        return results

    # -- webhooks ---------------------------------------------------------------------------

    def _json(self, request: WebhookRequest) -> Any:
        try:
            return json.loads(request.payload)
        except ValueError as exc:
            raise WebhookFormatError("CM webhook body is not JSON") from exc

    def parse_status(self, request: WebhookRequest) -> list[DeliveryReport]:
        """A status report in any form CM sends (its portal offers JSON or XML; older gateways called by GET):

        - JSON ``{"messages": {"msg": {"received", "to", "reference", "status": {"code", "errorCode",
          "errorDescription"}}}}`` (one object; a list is accepted too);
        - XML ``<MESSAGES><MSG RECEIVED=".."><TO/><REFERENCE/><STATUS><CODE/><ERRORCODE/><ERRORDESCRIPTION/>
          </STATUS></MSG></MESSAGES>`` (any number of ``MSG``);
        - parameters (the query of a GET, or a form): ``REFERENCE``, ``STATUS``, ``STATUSDESCRIPTION``,
          ``STANDARDERRORTEXT``, ``TO``, ``CREATED_S``/``RECEIVED``, in any case.
        """
        items: list[Any] | None
        if request.payload.lstrip().startswith(b"<"):
            items = _xml_reports(request.payload)
        elif request.form and not request.payload.lstrip().startswith(b"{"):
            items = [_param_report({k: v[0] for k, v in request.form.items()})]
        else:
            body = self._json(request)
            msg = (
                (body.get("messages") or {}).get("msg")
                if isinstance(body, dict) and isinstance(body.get("messages"), dict)
                else None
            )
            items = msg if isinstance(msg, list) else [msg] if isinstance(msg, dict) else None
        if not items:
            raise WebhookFormatError("CM status report without messages.msg")
        reports = []
        for item in items:
            if not isinstance(item, dict):
                raise WebhookFormatError("CM status report entry is not an object")
            status = item.get("status") or {}
            if not isinstance(status, dict):
                raise WebhookFormatError("CM status report entry without a status object")
            code = str(status.get("code", "")).strip()
            if code not in STATUS_NAMES:
                raise WebhookFormatError(f"CM status report with unknown status code {code!r}")
            error = str(status.get("errorCode") or "").strip() or None
            description = str(status.get("errorDescription") or "") or None
            reports.append(
                DeliveryReport(
                    message_id=str(item["reference"]) if item.get("reference") else None,
                    status=STATUS_NAMES[code],
                    delivered=True if code in ("2", "4") else False if code in ("1", "3") else None,
                    error_code=error if error not in (None, "0") else None,
                    error_detail=description,
                    done_at=parse_time(item.get("received")),
                    spam="spam" in (description or "").lower(),
                    rejected=code == "1",  # "rejected by CM or operator" (3: failed, will not be delivered)
                )
            )
        return reports

    def parse_inbound(self, request: WebhookRequest) -> list[InboundMessage]:
        """Inbound SMS as JSON or a form, in either shape CM posts:

        - Business Messaging: ``from.number``, ``to.number``, ``message.text`` (``reference``, ``timeUtc``);
        - the SMS gateway's flat shape: ``reference``, ``from``, ``to``, ``body`` (numbers as ``00...``; also
          ``sender``/``receiver``/``message``, any key case), bare or in a ``{"messages": {"msg": ...}}`` envelope.
        """
        if request.form:
            body: Any = {k: v[0] for k, v in request.form.items()}
        else:
            body = self._json(request)
        if isinstance(body, dict) and isinstance(body.get("messages"), (dict, list)):
            body = body["messages"]
            if isinstance(body, dict) and "msg" in body:
                body = body["msg"]
        items = body if isinstance(body, list) else [body]
        out = []
        for raw in items:
            if not isinstance(raw, dict):
                raise WebhookFormatError("CM inbound message is not an object")
            item = {str(k).lower(): v for k, v in raw.items()}
            sender, to = item.get("from", item.get("sender")), item.get("to", item.get("receiver"))
            sender = sender.get("number") if isinstance(sender, dict) else sender
            to = to.get("number") if isinstance(to, dict) else to
            text: Any = None
            for key in ("message", "body", "text", "content"):
                value = item.get(key)
                if isinstance(value, dict):
                    value = value.get("text", value.get("content"))
                if value is not None:
                    text = value
                    break
            if not sender or text is None or isinstance(text, (dict, list)):
                raise WebhookFormatError("CM inbound message without from/text")
            out.append(
                InboundMessage(
                    from_number=from_cm_number(sender),
                    to_number=from_cm_number(to),
                    text=str(text),
                    provider_message_id=str(item["reference"]) if item.get("reference") else None,
                    received_at=parse_time(item.get("timeutc") or item.get("time") or item.get("received")),
                )
            )
        return out


def _xml_reports(body: bytes) -> list[JsonObject]:
    """The ``MSG`` elements of an XML status report, in the JSON report's shape (tag and attribute names in any
    case). A document type declaration is refused (no entity of any kind is expanded)."""
    if b"<!DOCTYPE" in body.upper() or b"<!ENTITY" in body.upper():
        raise WebhookFormatError("CM XML status report with a document type declaration")
    try:
        root = ElementTree.fromstring(body)
    except (ElementTree.ParseError, ValueError) as exc:
        raise WebhookFormatError("CM status report is not well-formed XML") from exc

    def text(element: ElementTree.Element | None, name: str) -> str | None:
        if element is None:
            return None
        for child in element:
            if child.tag.upper() == name:
                return (child.text or "").strip()
        return None

    msgs = [root] if root.tag.upper() == "MSG" else [e for e in root.iter() if e.tag.upper() == "MSG"]
    out: list[JsonObject] = []
    for msg in msgs:
        attrs = {k.upper(): v for k, v in msg.attrib.items()}
        status = next((child for child in msg if child.tag.upper() == "STATUS"), None)
        out.append(
            {
                "received": attrs.get("RECEIVED") or text(msg, "RECEIVED"),
                "to": text(msg, "TO"),
                "reference": text(msg, "REFERENCE"),
                "status": {
                    "code": text(status, "CODE"),
                    "errorCode": text(status, "ERRORCODE"),
                    "errorDescription": text(status, "ERRORDESCRIPTION"),
                },
            }
        )
    return out


def _param_report(params: dict[str, str]) -> JsonObject:
    """A status report given as parameters (CM's HTTP GET reports: upper-case names), in the JSON report's shape."""
    p = {k.upper(): v for k, v in params.items()}
    if "STATUS" not in p:
        raise WebhookFormatError("CM status report parameters without STATUS")
    return {
        "received": p.get("RECEIVED") or p.get("CREATED_S"),
        "to": p.get("TO"),
        "reference": p.get("REFERENCE"),
        "status": {
            "code": p["STATUS"],
            "errorCode": p.get("STATUSDESCRIPTION") or p.get("ERRORCODE"),
            "errorDescription": p.get("STANDARDERRORTEXT") or p.get("ERRORDESCRIPTION"),
        },
    }
