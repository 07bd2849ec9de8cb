"""A local fake of Infobip's ``POST /sms/3/messages`` (and the legacy ``/sms/2/text/advanced``).

Checks ``Authorization: App <key>`` (or ``Basic``, the key as the password; 401 ``E401`` otherwise) and the body
shape (400 ``E400`` with violations), answers one status per destination, and posts delivery reports (up to 100 per
POST) to each message's ``webhooks.delivery.url``. The legacy endpoint is answered in its own shapes (providers.md
§1.5-1.8): ``to``/``smsCount`` per message and the request's ``bulkId`` echoed, errors in the ``requestError``
envelope, reports to ``notifyUrl`` with ``from``/``smsCount``.

``GET /sms/3/logs`` answers from the ledger as Infobip's "Get outbound SMS message logs" does (Infobip OpenAPI
``get-outbound-sms-message-logs-v3``, SDK model ``SmsLogsResponse``): filters ``messageId`` (repeated or
comma-separated), ``destination``, ``sender``, ``sentSince``/``sentUntil``, ``limit`` (default 50, at most 1000);
only the last 48 hours; ``{"results": [...]}``, each with ``messageId``, ``sender``, ``destination``, ``bulkId``,
``sentAt``, ``doneAt``, ``messageCount``, ``price``, ``status``, ``error``, ``content.text``. An unknown id is
simply absent from ``results`` (HTTP 200).
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from typing import Any, ClassVar

from aiohttp import web

from trackly_exec.store.documents import ConfigTable, JsonObject
from trackly_exec.store.segments import segment_count
from trackly_exec.testing.fakes.base import (
    FakeBadRequest,
    FakeProvider,
    LedgerEntry,
    Rejection,
    ReportRequest,
    Submitted,
    gateway_error,
    json_answer,
)

DEFAULT_API_KEY = "fake-infobip-key"

#: Canonical fake outcome -> Infobip (group id, group name, status id, status name, description).
STATUSES: dict[str, tuple[int, str, int, str, str]] = {
    "delivered": (3, "DELIVERED", 5, "DELIVERED_TO_HANDSET", "Message delivered to handset"),
    "undelivered": (2, "UNDELIVERABLE", 9, "UNDELIVERABLE_NOT_DELIVERED", "Message sent not delivered"),
    "failed": (2, "UNDELIVERABLE", 4, "UNDELIVERABLE_REJECTED_OPERATOR", "Message rejected by operator"),
    "expired": (4, "EXPIRED", 15, "EXPIRED_EXPIRED", "Message expired"),
    "rejected": (5, "REJECTED", 6, "REJECTED_NETWORK", "Network is forbidden"),
    "spam": (5, "REJECTED", 20, "REJECTED_FLOODING_FILTER", "Message rejected due to flooding filter"),
    "sent": (1, "PENDING", 7, "PENDING_ENROUTE", "Message sent to next instance"),
    "pending": (1, "PENDING", 3, "PENDING_WAITING_DELIVERY", "Message sent, waiting for delivery report"),
    "accepted": (1, "PENDING", 26, "PENDING_ACCEPTED", "Message sent to next instance"),
}
#: Send-time REJECTED statuses by name (``Behaviour("reject", code=...)`` / ``reject_numbers``).
REJECTED_IDS = {
    "REJECTED_NETWORK": 6,
    "REJECTED_PREFIX_MISSING": 8,
    "REJECTED_DND": 10,
    "REJECTED_NOT_ENOUGH_CREDITS": 12,
    "REJECTED_DESTINATION_BLOCKLISTED": 14,
    "REJECTED_FLOODING_FILTER": 20,
    "REJECTED_MESSAGE_TOO_LONG": 25,
    "MISSING_TO": 51,
    "REJECTED_DESTINATION": 52,
}


def api_error(
    status: int, code: str, description: str, action: str = "", violations: list[dict[str, str]] | None = None
) -> web.Response:
    return json_answer(
        {
            "errorCode": code,
            "description": description,
            "action": action,
            "violations": violations or [],
            "resources": [],
        },
        status=status,
    )


def _parse(value: str) -> dt.datetime:
    when = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


def _fmt(when: dt.datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}+0000"


_UNIT_SECONDS = {"SECONDS": 1, "MINUTES": 60, "HOURS": 3600}


def _validity_v3(period: Any) -> int | None:
    """``options.validityPeriod`` (``{amount, timeUnit}``, unit MINUTES by default, clamped to 48 h) in seconds."""
    if not isinstance(period, dict) or type(period.get("amount")) is not int or period["amount"] < 1:
        return None
    unit = _UNIT_SECONDS.get(str(period.get("timeUnit") or "MINUTES").upper())
    return min(period["amount"] * unit, 48 * 3600) if unit else None


class InfobipFake(FakeProvider):
    """Infobip SMS API fake."""

    name: ClassVar[str] = "infobip"
    #: "Retry if URL unavailable: 1min + (1min * retryNumber * retryNumber)" (providers.md §1)
    report_retry_minutes: ClassVar[tuple[float, ...]] = tuple(1 + n * n for n in range(1, 11))
    default_reject_code: ClassVar[str] = "REJECTED_DESTINATION"
    report_batch: ClassVar[int] = 100

    def __init__(self, api_key: str = DEFAULT_API_KEY, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.api_key = api_key
        self._auth = f"App {api_key}"
        self._bulk = 0

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/sms/3/messages", self.handle_send)
        app.router.add_post("/sms/2/text/advanced", self.handle_send)
        app.router.add_get("/sms/3/logs", self.handle_logs)

    async def handle_logs(self, request: web.Request) -> web.Response:
        denied = self.check_auth(request)
        if denied is not None:
            return denied
        failure = self.lookup_failure()
        if failure is not None:
            return failure
        q = request.query
        ids = {i for v in q.getall("messageId", []) for i in v.split(",") if i} or None
        try:
            limit = int(q.get("limit", "50"))
            since = _parse(q["sentSince"]) if q.get("sentSince") else None
            until = _parse(q["sentUntil"]) if q.get("sentUntil") else None
        except ValueError:
            return api_error(
                400,
                "E400",
                "Request cannot be processed.",
                "Check the syntax.",
                [{"property": "query", "violation": "invalid value"}],
            )
        if not 1 <= limit <= 1000 or len(",".join(q.getall("messageId", []))) > 2048:
            return api_error(
                400,
                "E400",
                "Request cannot be processed.",
                "Check the syntax.",
                [{"property": "limit", "violation": "must be between 1 and 1000"}],
            )
        horizon = dt.datetime.now(dt.UTC) - dt.timedelta(hours=48)
        results = []
        for e in self.entries_for(ids):
            if e.accepted_at < horizon or (since and e.accepted_at < since) or (until and e.accepted_at > until):
                continue
            if q.get("destination") and q["destination"] != e.to.lstrip("+"):
                continue
            if q.get("sender") and q["sender"] != e.sender:
                continue
            entry = self._result(e, e.status, e.error)
            entry.pop("to"), entry.pop("sender")
            results.append({**entry, "sender": e.sender, "destination": e.to.lstrip("+"), "content": {"text": e.body}})
            if len(results) >= limit:
                break
        return json_answer({"results": results})

    def check_auth(self, request: web.Request) -> web.Response | None:
        header = request.headers.get("Authorization", "")
        if header == self._auth:
            return None
        if header.startswith("Basic "):  # "Also accepted: Basic <b64(user:pass)>" (providers.md §1.1)
            try:
                _, _, password = base64.b64decode(header[6:], validate=True).decode().partition(":")
            except ValueError:
                password = ""
            if password == self.api_key:
                return None
        return api_error(
            401,
            "E401",
            "The request lacks valid authentication credentials for the requested resource.",
            "Check the resources and adjust authentication credentials.",
        )

    def parse_submission(self, request: web.Request, body: bytes) -> list[Submitted]:
        v3 = request.path.startswith("/sms/3/")
        try:
            data = json.loads(body)
        except ValueError:
            raise FakeBadRequest(
                api_error(
                    400,
                    "E400",
                    "Request cannot be processed.",
                    "Check the syntax.",
                    [{"property": "body", "violation": "Invalid JSON."}],
                )
            ) from None
        violations: list[dict[str, str]] = []
        messages = data.get("messages") if isinstance(data, dict) else None
        if not isinstance(messages, list) or not messages:
            violations.append({"property": "messages", "violation": "must not be empty"})
            messages = []
        items: list[Submitted] = []
        for i, msg in enumerate(messages):
            if not isinstance(msg, dict):
                violations.append({"property": f"messages[{i}]", "violation": "must be an object"})
                continue
            if v3:
                content = msg.get("content")
                text = content.get("text") if isinstance(content, dict) else None
                sender = msg.get("sender") or "InfoSMS"
                hook = (msg.get("webhooks") or {}).get("delivery") or {}
                url = hook.get("url") if isinstance(hook, dict) else None
                options = msg.get("options")
                validity = _validity_v3(options.get("validityPeriod") if isinstance(options, dict) else None)
            else:
                text, sender, url = msg.get("text"), msg.get("from") or "InfoSMS", msg.get("notifyUrl")
                minutes = msg.get("validityPeriod")  # v2: whole minutes, at most 2880
                validity = min(minutes, 2880) * 60 if type(minutes) is int and minutes >= 1 else None
            too_long = isinstance(text, str) and (segment_count(text) > 25 or len(text.encode()) > 4000)
            if not isinstance(text, str):
                violations.append({"property": f"messages[{i}].content.text", "violation": "must not be null"})
            destinations = msg.get("destinations")
            if not isinstance(destinations, list) or not destinations:
                violations.append({"property": f"messages[{i}].destinations", "violation": "must not be empty"})
                continue
            for j, d in enumerate(destinations):
                to = d.get("to") if isinstance(d, dict) else None
                if not isinstance(to, str) or not to.isdigit() or len(to) > 64:
                    violations.append(
                        {
                            "property": f"messages[{i}].destinations[{j}].to",
                            "violation": "must be a phone number in international format",
                        }
                    )
                    continue
                mid = d.get("messageId")
                mid = str(mid) if mid is not None else None
                item = Submitted(mid, "+" + to, text or "", str(sender), url, len(items))
                item.valid_for = validity
                if too_long:  # more than 25 parts, or 4000 bytes (providers.md §1.7)
                    item.invalid = "REJECTED_MESSAGE_TOO_LONG"
                items.append(item)
        if violations:
            if not v3:  # the legacy endpoints' ApiException envelope (providers.md §1.6)
                text = "; ".join(f"{v['property']}: {v['violation']}" for v in violations)
                raise FakeBadRequest(
                    json_answer({"requestError": {"serviceException": {"messageId": "BAD_REQUEST", "text": text}}}, 400)
                )
            raise FakeBadRequest(
                api_error(
                    400,
                    "E400",
                    "Request cannot be processed.",
                    "Check the syntax, violations and adjust the request.",
                    violations,
                )
            )
        if not v3:
            bulk = data.get("bulkId") if isinstance(data, dict) else None
            for item in items:
                item.api = "v2" if not isinstance(bulk, str) else f"v2:{bulk}"
        return items

    def next_provider_id(self, item: Submitted) -> str:
        return item.message_id or super().next_provider_id(item)

    def _status(self, name: str) -> JsonObject:
        for gid, gname, sid, sname, desc in STATUSES.values():
            if sname == name:
                return {"groupId": gid, "groupName": gname, "id": sid, "name": sname, "description": desc}
        return {
            "groupId": 5,
            "groupName": "REJECTED",
            "id": REJECTED_IDS.get(name, 52),
            "name": name,
            "description": "Message rejected",
        }

    def accepted_response(self, entries: list[LedgerEntry], rejections: list[Rejection]) -> web.Response:
        self._bulk += 1
        accepted = self._status("PENDING_ACCEPTED")
        flavour = next((e.api for e in entries), None) or next((r.item.api for r in rejections), None)
        if flavour is not None and flavour.startswith("v2"):  # /sms/2/text/advanced: to, smsCount, bulkId echoed
            legacy = [
                {"to": e.to[1:], "status": accepted, "messageId": e.provider_message_id, "smsCount": e.segments}
                for e in entries
            ] + [
                {
                    "to": r.item.to[1:],
                    "status": self._status(r.code),
                    "messageId": r.item.message_id or "",
                    "smsCount": 0,
                }
                for r in rejections
            ]
            bulk = flavour.partition(":")[2] or f"{self._id_prefix}-{self._bulk}"
            return json_answer({"bulkId": bulk, "messages": legacy})
        out: list[JsonObject] = [
            {
                "messageId": e.provider_message_id,
                "status": accepted,
                "destination": e.to[1:],
                "details": {"messageCount": e.segments},
            }
            for e in entries
        ]
        out.extend(
            {
                "messageId": r.item.message_id or f"rejected-{r.item.index}",
                "status": self._status(r.code),
                "destination": r.item.to[1:],
                "details": {"messageCount": 0},
            }
            for r in rejections
        )
        return json_answer({"bulkId": f"{self._id_prefix}-{self._bulk}", "messages": out})

    def reject_response(self, items: list[Submitted], code: str | None) -> web.Response:
        return self.accepted_response([], [Rejection(i, code or "REJECTED_DESTINATION") for i in items])

    def throttled_response(self, retry_after: float | None) -> web.Response:
        resp = api_error(
            429,
            "E429",
            "Too many requests sent.",
            "Check request rate limit specified in the API endpoint documentation resource.",
        )
        if retry_after is not None:
            resp.headers["Retry-After"] = str(int(retry_after) if float(retry_after).is_integer() else retry_after)
        return resp

    def server_error_response(self, status: int = 500) -> web.Response:
        if status != 500:
            return gateway_error(status)
        return api_error(500, "E500", "Something went wrong.", "Contact the support.")

    def _result(self, entry: LedgerEntry, status: str, error: str | None) -> JsonObject:
        """One v3 delivery-report result (also the body of a log entry)."""
        gid, gname, sid, sname, desc = STATUSES.get(status, STATUSES["undelivered"])
        err = (
            {
                "groupId": 1,
                "groupName": "HANDSET_ERRORS",
                "id": int(error) if str(error).isdigit() else 1,
                "name": str(error) if not str(error).isdigit() else "EC_UNKNOWN_SUBSCRIBER",
                "description": "Unknown subscriber",
                "permanent": True,
            }
            if error
            else {
                "groupId": 0,
                "groupName": "OK",
                "id": 0,
                "name": "NO_ERROR",
                "description": "No Error",
                "permanent": False,
            }
        )
        final = status not in ("accepted", "pending", "sent")
        out: JsonObject = {
            "bulkId": f"{self._id_prefix}-bulk",
            "price": {"pricePerMessage": 0.01, "currency": "EUR"},
            "status": {"groupId": gid, "groupName": gname, "id": sid, "name": sname, "description": desc},
            "error": err,
            "messageId": entry.provider_message_id,
            "to": entry.to.lstrip("+"),
            "sender": entry.sender,
            "sentAt": _fmt(entry.accepted_at),
            "doneAt": _fmt(dt.datetime.now(dt.UTC)) if final else None,
            "messageCount": entry.segments,
        }
        if entry.api is not None and entry.api.startswith("v2"):  # the legacy report: from, smsCount (§1.8)
            out["from"], out["smsCount"] = out.pop("sender"), out.pop("messageCount")
            out["bulkId"] = entry.api.partition(":")[2] or out["bulkId"]
        return out

    def report_requests(self, url: str, reports: list[tuple[LedgerEntry, str, str | None]]) -> list[ReportRequest]:
        results = [self._result(entry, status, error) for entry, status, error in reports]
        body = json.dumps({"results": results}).encode()
        return [ReportRequest(url, body, {"Content-Type": "application/json"})]

    def inbound_request(self, url: str, from_number: str, to_number: str, text: str) -> ReportRequest:
        keyword = text.split()[0].upper() if text.split() else ""
        result = {
            "messageId": self.next_provider_id(Submitted(None, to_number, text, from_number)),
            "from": from_number.lstrip("+"),
            "to": to_number.lstrip("+"),
            "text": text,
            "cleanText": text[len(keyword) :].strip(),
            "keyword": keyword,
            "receivedAt": _fmt(dt.datetime.now(dt.UTC)),
            "smsCount": 1,
            "price": {"pricePerMessage": 0, "currency": "EUR"},
        }
        body = json.dumps({"results": [result], "messageCount": 1, "pendingMessageCount": 0}).encode()
        return ReportRequest(url, body, {"Content-Type": "application/json"})

    def driver_settings(self) -> ConfigTable:
        return {"base_url": self.url, "api_key": self.api_key}

    def wrong_credentials(self) -> ConfigTable:
        return {"api_key": self.api_key + "-wrong"}
