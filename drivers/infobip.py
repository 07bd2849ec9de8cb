"""Infobip SMS driver: ``POST /sms/3/messages`` with many destinations per request.

Wire format: Infobip's Send SMS message API (https://www.infobip.com/docs/api/channels/sms).
Our message id travels as the destination
``messageId`` (echoed in the send response and in every delivery report); messages with the same sender and
text are grouped into one ``messages[]`` entry. Delivery reports and inbound messages are JSON
(``{"results": [...]}``), authenticated by the secret path token (and optional Basic auth) of the base class.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from typing import Any, ClassVar

import orjson
from pydantic import Field, SecretStr

from trackly_exec.drivers.contract import (
    DeliveryReport,
    Driver,
    DriverSettings,
    Found,
    InboundMessage,
    LookupQuery,
    LookupResult,
    NotFound,
    OutboundMessage,
    Rejected,
    SendResult,
    TransientFailure,
    UnknownOutcome,
    WebhookRequest,
    accepted,
    provider_time,
)
from trackly_exec.drivers.http import HttpClient, HttpReply, JsonObject, raise_for_status
from trackly_exec.errors import TransientSendError, WebhookFormatError

#: Send-response / DLR status groups.
ACCEPTED_GROUPS = frozenset({"PENDING", "ACCEPTED", "OK", "DELIVERED"})
FAILED_GROUPS = frozenset({"UNDELIVERABLE", "EXPIRED", "REJECTED"})
#: Statuses of the DELIVERED group that are not final: "2 DELIVERED_TO_OPERATOR (intermediate)" (Infobip's status
#: codes); with ``intermediateReport`` on, the final report (DELIVERED_TO_HANDSET, UNDELIVERABLE_..., EXPIRED_...)
#: follows it and decides.
INTERMEDIATE_NAMES = frozenset({"DELIVERED_TO_OPERATOR"})
#: Status or error names that mean carrier/platform spam filtering, or that the recipient opted out.
SPAM_NAMES = frozenset({"REJECTED_FLOODING_FILTER", "REJECTED_SPAM", "EC_SPAM_FILTERED", "EC_MESSAGE_FILTERED"})
OPT_OUT_NAMES = frozenset({"REJECTED_DND", "REJECTED_DESTINATION_BLOCKLISTED", "REJECTED_DESTINATION_BLACKLISTED"})
#: Rejections for the account, not the message (status id 12): held until the operator tops up, never dead-lettered.
ACCOUNT_NAMES = frozenset({"REJECTED_NOT_ENOUGH_CREDITS"})


#: Infobip clamps a validity period to 48 hours.
MAX_VALIDITY_SECONDS = 48 * 3600


class InfobipSettings(DriverSettings):
    """``[drivers.infobip]``: your account's base URL and API key."""

    authorization_header: ClassVar[bool] = True

    base_url: str = Field("https://api.infobip.com", description="Your account's Infobip base URL.")
    api_key: SecretStr = Field(SecretStr(""), description="API key (sent as `Authorization: App <key>`).")
    batch_size: int = Field(1000, ge=1, le=10000, description="Destinations per request.")
    intermediate_reports: bool = Field(False, description="Ask for intermediate (PENDING) delivery reports.")

    list_overridable: ClassVar[frozenset[str]] = DriverSettings.list_overridable | {"intermediate_reports"}


def error_from_body(body: Any) -> tuple[str | None, str]:
    """``(code, detail)`` from either Infobip error envelope (new ``ApiError`` or legacy ``requestError``)."""
    if not isinstance(body, dict):
        return None, ""
    if "errorCode" in body:
        detail = str(body.get("description") or "")
        violations = body.get("violations") or []
        if violations:
            detail += " " + "; ".join(
                f"{v.get('property')}: {v.get('violation')}" for v in violations if isinstance(v, dict)
            )
        return str(body["errorCode"]), detail.strip()
    exc = (
        (body.get("requestError") or {}).get("serviceException") if isinstance(body.get("requestError"), dict) else None
    )
    if isinstance(exc, dict):
        detail = str(exc.get("text") or "")
        if exc.get("validationErrors"):
            detail += " " + json.dumps(exc["validationErrors"], separators=(",", ":"))
        return (str(exc["messageId"]) if exc.get("messageId") else None), detail.strip()
    return None, ""


def parse_time(value: Any) -> dt.datetime | None:
    """Infobip timestamps (``2019-11-09T16:00:00.000+0100``), leniently; None when absent or odd, out-of-range in
    UTC included (``9999-12-31T23:59:59.000-2359`` parses, then overflows wherever it is converted or stored)."""
    if not isinstance(value, str) or not value:
        return None
    try:
        when = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return provider_time(when)


def e164(number: Any) -> str:
    """Infobip writes numbers without the '+'."""
    text = str(number or "").strip()
    return text if not text or text.startswith("+") or not text.isdigit() else "+" + text


def _status_result(message_id: str, entry: JsonObject, segments: int) -> SendResult:
    status = entry.get("status") or {}
    group = str(status.get("groupName") or "").upper()
    name = str(status.get("name") or group or "UNKNOWN")
    if group in ACCEPTED_GROUPS:
        count = (entry.get("details") or {}).get("messageCount") or entry.get("smsCount") or segments
        provider_id = str(entry.get("messageId") or message_id)
        return accepted(message_id, provider_id, int(count))
    if group in FAILED_GROUPS:
        code = f"{name}" + (f" ({status['id']})" if status.get("id") is not None else "")
        if name in ACCOUNT_NAMES:
            return TransientFailure(message_id=message_id, code=name, detail=f"{code}: {status.get('description', '')}")
        return Rejected(
            message_id=message_id,
            code=name,
            detail=f"{code}: {status.get('description', '')}".strip(),
            spam=name in SPAM_NAMES,
            opted_out=name in OPT_OUT_NAMES,
        )
    return UnknownOutcome(message_id=message_id, detail=f"unexpected Infobip status {name!r} in send response")


class InfobipDriver(Driver[InfobipSettings]):
    """Infobip SMS API v3."""

    settings_model: ClassVar[type[DriverSettings]] = InfobipSettings
    fake: ClassVar[str | None] = "trackly_exec.testing.fakes.infobip:InfobipFake"
    max_lookup_batch: ClassVar[int] = 100
    #: "Logs ... are available to query for 48hrs" (infobip.com/docs/api/channels/sms/logs-and-status-reports); an
    #: hour of margin for clock skew.
    lookup_horizon: ClassVar[dt.timedelta | None] = dt.timedelta(hours=47)

    _http: HttpClient | None = None

    async def startup(self) -> None:
        key = self.settings.api_key.get_secret_value()
        self._http = HttpClient(self.settings, headers={"Authorization": f"App {key}", "Accept": "application/json"})
        await self._http.open()

    async def shutdown(self) -> None:
        if self._http is not None:
            await self._http.close()

    def request_body(self, messages: Sequence[OutboundMessage]) -> JsonObject:
        """The ``/sms/3/messages`` body: one entry per (sender, text, validity), our id as each ``messageId``."""
        groups: dict[tuple[str, str, int | None], list[dict[str, str]]] = {}
        for m in messages:
            groups.setdefault((m.sender, m.body, m.valid_for), []).append({"to": m.to.lstrip("+"), "messageId": m.id})
        webhooks: JsonObject | None = None
        if self.context.status_url:
            webhooks = {
                "delivery": {"url": self.context.status_url, "intermediateReport": self.settings.intermediate_reports},
                "contentType": "application/json",
            }
        out = []
        for (sender, text, valid_for), destinations in groups.items():
            entry: JsonObject = {"sender": _sender(sender), "destinations": destinations, "content": {"text": text}}
            if valid_for is not None:  # Infobip clamps to 48 h (providers.md §1.3)
                seconds = min(valid_for, MAX_VALIDITY_SECONDS)
                entry["options"] = {"validityPeriod": {"amount": seconds, "timeUnit": "SECONDS"}}
            if webhooks:
                entry["webhooks"] = webhooks
            out.append(entry)
        return {"messages": out, "options": {"includeSmsCountInResponse": True}}

    async def send(self, messages: Sequence[OutboundMessage]) -> list[SendResult]:
        assert self._http is not None, "startup() not called"
        reply = await self._http.post("/sms/3/messages", json_body=self.request_body(messages))
        return self.results(messages, reply)

    def results(self, messages: Sequence[OutboundMessage], reply: HttpReply) -> list[SendResult]:
        """Map a send reply to one result per message (raising for whole-request errors)."""
        body = reply.json()
        if not 200 <= reply.status < 300:
            code, detail = error_from_body(body)
            # Infobip documents no answer as "not processed" except 429 (providers.md §1.6: "429 = TOO_MANY_REQUESTS,
            # back off and retry"); its E500 "Something went wrong" may follow an accepted send, so every 5xx is
            # an unknown outcome (raise_for_status).
            raise_for_status(reply, code=code, detail=detail)
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            # Accepted or not, we cannot tell: never re-send blindly.
            return _unknown(messages, f"Infobip answered HTTP {reply.status} without a messages list")
        by_id: dict[str, JsonObject] = {}
        for entry in body["messages"]:
            if isinstance(entry, dict) and entry.get("messageId") is not None:
                by_id[str(entry["messageId"])] = entry
        results: list[SendResult] = []
        for m in messages:
            entry = by_id.get(m.id)
            if entry is None:
                results.append(UnknownOutcome(message_id=m.id, detail="no status for this destination"))
            else:
                results.append(_status_result(m.id, entry, m.segments))
        return results

    # -- look-ups ---------------------------------------------------------------------------

    async def lookup(self, messages: Sequence[LookupQuery]) -> list[LookupResult]:
        """``GET /sms/3/logs?messageId=...``: our id is the ``messageId`` of every destination we send, so the log
        entry with that id is the message (Found, with its status as a report); an id absent from ``results`` was
        not taken by Infobip (NotFound). Logs are kept 48 hours (:attr:`lookup_horizon`); up to 100 ids (the
        parameter takes at most 2048 characters) and ``limit=1000`` per request."""
        assert self._http is not None, "startup() not called"
        groups: list[list[str]] = [[]]
        for m in messages:  # the messageId parameter takes at most 2048 characters
            if groups[-1] and len(",".join([*groups[-1], m.id])) > 2048:
                groups.append([])
            groups[-1].append(m.id)
        by_id: dict[str, JsonObject] = {}
        for ids in groups:
            reply = await self._http.get("/sms/3/logs", params=[("messageId", ",".join(ids)), ("limit", "1000")])
            body = reply.json()
            if reply.status != 200 or not isinstance(body, dict) or not isinstance(body.get("results"), list):
                code, detail = error_from_body(body)
                raise TransientSendError(f"Infobip logs answered HTTP {reply.status}: {detail}".strip(), code=code)
            by_id.update(
                (str(r["messageId"]), r) for r in body["results"] if isinstance(r, dict) and r.get("messageId")
            )
        out: list[LookupResult] = []
        for m in messages:
            entry = by_id.get(m.id)
            if entry is None:
                out.append(NotFound(message_id=m.id, detail="not in Infobip's message logs"))
                continue
            report = report_from(entry)
            out.append(
                Found(
                    message_id=m.id,
                    provider_message_id=str(entry["messageId"]),
                    segments=report.segments,
                    report=report.model_copy(update={"message_id": m.id}),
                )
            )
        return out

    # -- webhooks ---------------------------------------------------------------------------

    def _results(self, request: WebhookRequest) -> list[JsonObject]:
        try:
            body = orjson.loads(request.payload)
        except ValueError as exc:  # orjson.JSONDecodeError is one
            raise WebhookFormatError("Infobip webhook body is not JSON") from exc
        results = body.get("results") if isinstance(body, dict) else None
        if not isinstance(results, list):
            raise WebhookFormatError("Infobip webhook body has no results list")
        objects = [r for r in results if isinstance(r, dict)]
        if results and not objects:
            raise WebhookFormatError("Infobip webhook results hold no object")
        return objects

    def parse_status(self, request: WebhookRequest) -> list[DeliveryReport]:
        """v3 and v2 delivery reports (``sender``/``messageCount`` or ``from``/``smsCount``)."""
        return [report_from(r) for r in self._results(request)]

    def parse_inbound(self, request: WebhookRequest) -> list[InboundMessage]:
        """Inbound messages (``MO_JSON_2``): ``results[]`` with ``from``, ``to``, ``text``."""
        out = []
        results = self._results(request)
        for r in results:
            if not isinstance(r.get("from"), (str, int)) or not r.get("from") or not isinstance(r.get("text"), str):
                continue  # not a message (the others of the request still count; none: malformed)
            out.append(
                InboundMessage(
                    from_number=e164(r["from"]),
                    to_number=e164(r.get("to")),
                    text=str(r["text"]),
                    provider_message_id=str(r["messageId"]) if r.get("messageId") is not None else None,
                    received_at=parse_time(r.get("receivedAt")),
                )
            )
        if results and not out:
            raise WebhookFormatError("Infobip inbound result without a from number and a text")
        return out


def _sender(sender: str) -> str:
    """A numeric sender in international format without ``+`` (``"41793026700"``, as destinations are); an
    alphanumeric sender (``"InfoSMS"``) as it is."""
    digits = sender[1:] if sender.startswith("+") else sender
    return digits if digits.isdigit() else sender


def report_from(r: JsonObject) -> DeliveryReport:
    """A delivery-report result (webhook, or a message log entry: same fields) as a :class:`DeliveryReport`."""
    status = r.get("status") or {}
    error = r.get("error") or {}
    group = str(status.get("groupName") or "").upper()
    name = str(status.get("name") or group or "UNKNOWN")
    if name in INTERMEDIATE_NAMES or (group == "DELIVERED" and status.get("id") == 2):
        delivered: bool | None = None  # on its way (the final report follows): not an outcome yet
    else:
        delivered = True if group == "DELIVERED" else False if group in FAILED_GROUPS else None
    error_name = str(error.get("name") or "")
    has_error = bool(error.get("id")) or (error_name not in ("", "NO_ERROR"))
    segments = r.get("messageCount", r.get("smsCount"))
    return DeliveryReport(
        message_id=str(r["messageId"]) if r.get("messageId") is not None else None,
        provider_message_id=str(r["messageId"]) if r.get("messageId") is not None else None,
        status=name,
        delivered=delivered,
        error_code=(error_name or str(error.get("id"))) if has_error else None,
        error_detail=str(error.get("description")) if has_error and error.get("description") else None,
        segments=int(segments) if isinstance(segments, (int, float, str)) and str(segments).isdigit() else None,
        done_at=parse_time(r.get("doneAt")),
        spam=name in SPAM_NAMES or error_name in SPAM_NAMES,
        opted_out=name in OPT_OUT_NAMES,
        rejected=delivered is False and group == "REJECTED",
    )


def _unknown(messages: Sequence[OutboundMessage], detail: str) -> list[SendResult]:
    return [UnknownOutcome(message_id=m.id, detail=detail) for m in messages]
