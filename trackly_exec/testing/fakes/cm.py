"""A local fake of CM.com's ``POST /v1.0/message``.

Checks the product token (``X-CM-PRODUCTTOKEN`` header or ``messages.authentication.producttoken``; a wrong
one is HTTP 400 with ``errorCode`` 101, as CM answers) and each ``msg`` (``00``-prefixed numbers, a body);
answers per message ``Accepted`` / ``Rejected`` with ``messageErrorCode`` (HTTP 200 ``errorCode`` 201 when
some are rejected, HTTP 400 when all are), and posts one JSON status report per message to ``report_url``
(CM's portal setting: the request does not carry it).
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any, ClassVar

from aiohttp import web

from trackly_exec.store.documents import ConfigTable, JsonObject
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

DEFAULT_PRODUCT_TOKEN = "00000000-0000-0000-0000-000000000000"

#: Canonical fake outcome -> CM ``status.code``.
STATUS_CODES = {
    "accepted": "0",
    "sent": "0",
    "pending": "0",
    "rejected": "1",
    "spam": "1",
    "delivered": "2",
    "undelivered": "3",
    "failed": "3",
    "expired": "3",
}
DETAILS = {
    "301": "From field is invalid",
    "302": "To field is invalid",
    "303": "Msisdn is invalid",
    "304": "A body without content was found",
    "401": "Message is marked as spam",
    "402": "The number is blacklisted",
    "403": "Message rejected",
}

#: ``Behaviour("reject", code=...)`` with one of these refuses the whole request (``errorCode``, ``details``).
WHOLE_REQUEST_ERRORS = {
    "101": "No account found for the given authentication",
    "102": "Insufficient balance.",
    "103": "The API key is incorrect",
    "202": "Request is malformed",
    "203": "Message array is incorrect",
    "500": "Internal server error",
}


def cm_error(status: int, code: int, details: str, messages: list[JsonObject] | None = None) -> web.Response:
    return json_answer({"details": details, "errorCode": code, "messages": messages or []}, status=status)


def _validity(value: Any) -> int | None:
    """CM's ``validity``, relative (``2h``, ``30m``) or absolute (``2017-04-20 11:50:05 GMT``), in seconds from now."""
    if not isinstance(value, str) or not value.strip():
        return None
    text = value.strip()
    if text[:-1].isdigit() and text[-1:] in ("h", "m"):
        return int(text[:-1]) * (3600 if text[-1] == "h" else 60) or None
    if text.endswith(" GMT"):
        try:
            until = dt.datetime.strptime(text[:-4], "%Y-%m-%d %H:%M:%S").replace(tzinfo=dt.UTC)
        except ValueError:
            return None
        return max(1, round((until - dt.datetime.now(dt.UTC)).total_seconds()))
    return None


class CMFake(FakeProvider):
    """CM.com text gateway fake."""

    name: ClassVar[str] = "cm"
    #: "non-2xx -> retried periodically for up to 7 days" (providers.md §3.4): sooner first, then every 2 hours
    report_retry_minutes: ClassVar[tuple[float, ...]] = (1, 5, 15, 30, 60, *([120.0] * 83))
    default_reject_code: ClassVar[str] = "303"

    def __init__(
        self, product_token: str = DEFAULT_PRODUCT_TOKEN, report_url: str | None = None, **kwargs: Any
    ) -> None:
        super().__init__(report_url=report_url, **kwargs)
        self.product_token = product_token

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/v1.0/message", self.handle_send)

    def check_auth(self, request: web.Request) -> web.Response | None:
        # The token may also come in the body: checked in parse_submission.
        header = request.headers.get("X-CM-PRODUCTTOKEN")
        if header is None or header.lower() == self.product_token.lower():
            return None
        return cm_error(400, 101, "No account found for the given authentication")

    def parse_submission(self, request: web.Request, body: bytes) -> list[Submitted]:
        try:
            data = json.loads(body)
            messages = data["messages"]
            msgs = messages["msg"]
        except (ValueError, KeyError, TypeError):
            raise FakeBadRequest(cm_error(400, 202, "Request is malformed")) from None
        if request.headers.get("X-CM-PRODUCTTOKEN") is None:
            auth = messages.get("authentication") if isinstance(messages, dict) else None
            token = (
                (auth or {}).get("producttoken") or (auth or {}).get("productToken") if isinstance(auth, dict) else None
            )
            if not isinstance(token, str) or token.lower() != self.product_token.lower():
                raise FakeBadRequest(cm_error(400, 101, "No account found for the given authentication"))
        if not isinstance(msgs, list) or not msgs or len(msgs) > 1000:
            raise FakeBadRequest(cm_error(400, 203, "Message array is incorrect"))
        items: list[Submitted] = []
        for msg in msgs:
            if not isinstance(msg, dict):
                raise FakeBadRequest(cm_error(400, 203, "Message array is incorrect"))
            reference = msg.get("reference")
            sender = msg.get("from")
            body_obj = msg.get("body")
            content = body_obj.get("content") if isinstance(body_obj, dict) else None
            recipients = msg.get("to") if isinstance(msg.get("to"), list) else []
            for r in recipients or [{}]:
                number = r.get("number") if isinstance(r, dict) else None
                item = Submitted(
                    str(reference) if reference is not None else None,
                    "+" + number[2:] if isinstance(number, str) and number.startswith("00") else str(number),
                    content or "",
                    str(sender or ""),
                    None,
                    len(items),
                )
                if not isinstance(sender, str) or not sender or len(sender) > 16:
                    item.invalid = "301"
                elif not isinstance(number, str) or not number.startswith("00") or not number[2:].isdigit():
                    item.invalid = "303"
                elif not isinstance(content, str) or not content:
                    item.invalid = "304"
                item.valid_for = _validity(msg.get("validity"))
                items.append(item)
        return items

    def next_provider_id(self, item: Submitted) -> str:
        return item.message_id or super().next_provider_id(item)

    def _entry(self, to: str, reference: str | None, accepted: bool, parts: int, code: str = "0") -> JsonObject:
        return {
            "to": "00" + to.lstrip("+"),
            "status": "Accepted" if accepted else "Rejected",
            "reference": reference,
            "parts": parts if accepted else 0,
            "messageDetails": None if accepted else DETAILS.get(code, "Message rejected"),
            "messageErrorCode": int(code) if code.isdigit() else 403,
        }

    def accepted_response(self, entries: list[LedgerEntry], rejections: list[Rejection]) -> web.Response:
        out = [self._entry(e.to, e.message_id, True, e.segments) for e in entries]
        out.extend(self._entry(r.item.to, r.item.message_id, False, 0, r.code) for r in rejections)
        if not rejections:
            return cm_error(200, 0, f"Created {len(entries)} message(s)", out)
        if not entries:
            return cm_error(400, 201, "Created 0 message(s)", out)
        return cm_error(200, 201, f"Created {len(entries)} message(s)", out)

    def reject_response(self, items: list[Submitted], code: str | None) -> web.Response:
        if code in WHOLE_REQUEST_ERRORS:  # the whole request refused: HTTP 400, no per-message entries
            return cm_error(400, int(code), WHOLE_REQUEST_ERRORS[code])
        return self.accepted_response([], [Rejection(i, code or "403") for i in items])

    def throttled_response(self, retry_after: float | None) -> web.Response:
        resp = json_answer({"details": "Too many requests", "errorCode": 429, "messages": []}, status=429)
        if retry_after is not None:
            resp.headers["Retry-After"] = str(int(retry_after) if float(retry_after).is_integer() else retry_after)
        return resp

    def server_error_response(self, status: int = 500) -> web.Response:
        if status != 500:
            return gateway_error(status)
        return cm_error(500, 500, "Internal server error")

    def report_requests(self, url: str, reports: list[tuple[LedgerEntry, str, str | None]]) -> list[ReportRequest]:
        out = []
        for entry, status, error in reports:
            code = STATUS_CODES.get(status, status if status.isdigit() else "3")
            if status == "spam":
                error = error or "401"
            msg = {
                "received": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S"),
                "to": "00" + entry.to.lstrip("+"),
                "reference": entry.message_id,
                "status": {
                    "code": code,
                    "errorCode": str(error or ("0" if code in "02" else "12")),
                    "errorDescription": "" if code in "02" else (DETAILS.get(str(error), "Not delivered")),
                },
                "operator": "20416",
            }
            out.append(
                ReportRequest(
                    url, json.dumps({"messages": {"msg": msg}}).encode(), {"Content-Type": "application/json"}
                )
            )
        return out

    def inbound_request(self, url: str, from_number: str, to_number: str, text: str) -> ReportRequest:
        now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
        body = {
            "reference": self.next_provider_id(Submitted(None, to_number, text, from_number)),
            "from": {"number": "00" + from_number.lstrip("+")},
            "to": {"number": "00" + to_number.lstrip("+")},
            "message": {"text": text},
            "channel": "SMS",
            "time": now,
            "timeUtc": now,
        }
        return ReportRequest(url, json.dumps(body).encode(), {"Content-Type": "application/json"})

    def driver_settings(self) -> ConfigTable:
        return {"base_url": self.url, "product_token": self.product_token}

    def wrong_credentials(self) -> ConfigTable:
        return {"product_token": "11111111-1111-1111-1111-111111111111"}
