"""A local fake of Twilio's ``POST /2010-04-01/Accounts/{sid}/Messages.json``.

Checks Basic auth against the account SID and auth token (401 code 20003 otherwise) and the form fields
(400 with Twilio's legacy error JSON: 21211 bad ``To``, 21602 no ``Body``, 21603 no ``From``), answers 201
with a message resource, and posts status callbacks to ``StatusCallback`` signed with ``X-Twilio-Signature``.

``GET /2010-04-01/Accounts/{sid}/Messages.json`` lists the ledger's messages as Twilio's "Read multiple Message
resources" does: filters ``To``, ``From``, ``DateSent`` (``YYYY-MM-DD``, and ``DateSent<`` / ``DateSent>`` for on
or before / on or after), paging by ``PageSize`` (default 50, at most 1000) with ``next_page_uri``; newest first.
A message still queued has no ``date_sent`` (so a ``DateSent`` filter does not find it). No match is an empty
``messages`` list (HTTP 200).
"""

from __future__ import annotations

import base64
import datetime as dt
import email.utils
import functools
import hashlib
import hmac
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlencode

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

DEFAULT_ACCOUNT_SID = "ACfake00000000000000000000000000"
DEFAULT_AUTH_TOKEN = "fake-twilio-token"

MESSAGES = {
    "20001": "Invalid paging or filter parameter",
    "20003": "Authenticate",
    "20429": "Too Many Requests",
    "20500": "An internal server error has occurred",
    "20503": "Service unavailable",
    "21211": "The 'To' number is not a valid phone number.",
    "21602": "Message body is required.",
    "21603": "A 'From' phone number is required.",
    "21610": "Attempt to send to unsubscribed recipient",
    "21617": "The concatenated message body exceeds the 1600 character limit",
    "21611": "This 'From' number has exceeded the maximum number of queued messages",
    "21614": "'To' number is not a valid mobile number",
}


@functools.lru_cache(maxsize=16)
def _rfc2822(second: dt.datetime) -> str:
    return email.utils.format_datetime(second)


def rfc2822(at: dt.datetime) -> str:
    """``at`` to the second as Twilio writes its dates (``Wed, 02 Dec 2026 15:21:08 +0000``): the messages of a
    second share one (formatting one was a twentieth of the fake's CPU per request)."""
    return _rfc2822(at.replace(microsecond=0))


def twilio_error(status: int, code: str) -> web.Response:
    return json_answer(
        {
            "code": int(code),
            "message": MESSAGES.get(code, "Error"),
            "more_info": f"https://www.twilio.com/docs/errors/{code}",
            "status": status,
        },
        status=status,
    )


#: Twilio's default opt-out and opt-in keywords (Advanced Opt-Out off).
OPT_OUT_WORDS = frozenset({"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "OPTOUT", "REVOKE"})
OPT_IN_WORDS = frozenset({"START", "YES", "UNSTOP"})
#: The longest ``Body`` Twilio takes (characters).
MAX_BODY_CHARS = 1600


class TwilioFake(FakeProvider):
    """Twilio Messages API fake."""

    name: ClassVar[str] = "twilio"
    default_reject_code: ClassVar[str] = "21211"
    report_url_fallback: ClassVar[bool] = False  # Twilio calls back only to the request's StatusCallback

    def __init__(
        self, account_sid: str = DEFAULT_ACCOUNT_SID, auth_token: str = DEFAULT_AUTH_TOKEN, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.account_sid = account_sid
        self.auth_token = auth_token
        self._basic = "Basic " + base64.b64encode(f"{account_sid}:{auth_token}".encode()).decode()
        #: (number, our number) pairs blocked by the number's STOP (Twilio's own opt-out handling; START lifts it)
        self.opted_out: set[tuple[str, str]] = set()

    def inbound_sent(self, from_number: str, to_number: str, text: str) -> None:
        """Twilio blocks the pair on a STOP keyword (later sends: error 21610) and lifts it on START (providers.md
        §2.6)."""
        word = text.strip().upper()
        if word in OPT_OUT_WORDS:
            self.opted_out.add((from_number, to_number))
        elif word in OPT_IN_WORDS:
            self.opted_out.discard((from_number, to_number))

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/2010-04-01/Accounts/{sid}/Messages.json", self.handle_send)
        app.router.add_get("/2010-04-01/Accounts/{sid}/Messages.json", self.handle_list)

    def resource(self, e: LedgerEntry) -> JsonObject:
        """The Message resource of a ledger entry, in its current state."""
        status = {
            "accepted": "queued",
            "pending": "sending",
            "spam": "undelivered",
            "rejected": "failed",
            "expired": "undelivered",
        }.get(e.status, e.status)
        error = e.error or ("30007" if e.status == "spam" else None)
        created = rfc2822(e.accepted_at)
        return {
            "account_sid": self.account_sid,
            "api_version": "2010-04-01",
            "body": e.body,
            "date_created": created,
            "date_sent": None if status == "queued" else created,
            "date_updated": created,
            "direction": "outbound-api",
            "error_code": int(error) if error and error.isdigit() else None,
            "error_message": None,
            "from": e.sender,
            "messaging_service_sid": None,
            "num_media": "0",
            "num_segments": str(e.segments),
            "price": None,
            "price_unit": "USD",
            "sid": e.provider_message_id,
            "status": status,
            "subresource_uris": {},
            "tags": {},
            "to": e.to,
            "uri": f"/2010-04-01/Accounts/{self.account_sid}/Messages/{e.provider_message_id}.json",
        }

    async def handle_list(self, request: web.Request) -> web.Response:
        denied = self.check_auth(request)
        if denied is not None:
            return denied
        failure = self.lookup_failure()
        if failure is not None:
            return failure
        q = request.query
        try:
            size = int(q.get("PageSize", "50"))
            page = int(q.get("Page", "0"))
        except ValueError:
            return twilio_error(400, "20001")
        if not 1 <= size <= 1000 or page < 0:
            return twilio_error(400, "20001")
        dates = [
            (op, q[name]) for name, op in (("DateSent", "="), ("DateSent<", "<"), ("DateSent>", ">")) if q.get(name)
        ]
        items = []
        for e in self.entries_for():
            r = self.resource(e)
            if (q.get("To") and q["To"] != e.to) or (q.get("From") and q["From"] != e.sender):
                continue
            sent = e.accepted_at.date().isoformat() if r["date_sent"] else None
            if dates and (
                sent is None
                or not all(sent == d if op == "=" else sent <= d if op == "<" else sent >= d for op, d in dates)
            ):
                continue
            items.append(r)
        chunk = items[page * size : (page + 1) * size]
        base = request.path
        query = {k: v for k, v in q.items() if k not in ("Page", "PageSize", "PageToken")}

        def uri(n: int) -> str:
            return f"{base}?{urlencode({**query, 'PageSize': size, 'Page': n, 'PageToken': f'PA{n}'})}"

        more = (page + 1) * size < len(items)
        return json_answer(
            {
                "messages": chunk,
                "page": page,
                "page_size": size,
                "start": page * size,
                "end": page * size + max(0, len(chunk) - 1),
                "uri": uri(page),
                "first_page_uri": uri(0),
                "next_page_uri": uri(page + 1) if more else None,
                "previous_page_uri": uri(page - 1) if page else None,
            }
        )

    def check_auth(self, request: web.Request) -> web.Response | None:
        if request.headers.get("Authorization", "") == self._basic and request.match_info["sid"] == self.account_sid:
            return None
        return twilio_error(401, "20003")

    def parse_submission(self, request: web.Request, body: bytes) -> list[Submitted]:
        if not request.content_type.startswith("application/x-www-form-urlencoded"):
            raise FakeBadRequest(twilio_error(400, "21602"))
        form = {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True).items()}
        to, sender, text = form.get("To", ""), form.get("From") or form.get("MessagingServiceSid"), form.get("Body")
        if not to.startswith("+") or not to[1:].isdigit() or not 8 <= len(to) <= 16:
            raise FakeBadRequest(twilio_error(400, "21211"))
        if not sender:
            raise FakeBadRequest(twilio_error(400, "21603"))
        if not text:
            raise FakeBadRequest(twilio_error(400, "21602"))
        if len(text) > MAX_BODY_CHARS:
            raise FakeBadRequest(twilio_error(400, "21617"))
        callback = form.get("StatusCallback") or None
        mid = parse_qs(callback.partition("?")[2]).get("mid", [None])[0] if callback else None
        item = Submitted(mid, to, text, sender, callback)
        validity = form.get("ValidityPeriod", "")
        if validity.isdigit() and int(validity) >= 1:
            item.valid_for = min(int(validity), 36_000)
        if (to, sender) in self.opted_out:
            item.invalid = "21610"
        return [item]

    def next_provider_id(self, item: Submitted) -> str:
        return "SM" + super().next_provider_id(item)

    def accepted_response(self, entries: list[LedgerEntry], rejections: list[Rejection]) -> web.Response:
        if rejections:
            return twilio_error(400, rejections[0].code)
        e = entries[0]
        now = rfc2822(e.accepted_at)
        return json_answer(
            {
                "account_sid": self.account_sid,
                "api_version": "2010-04-01",
                "body": e.body,
                "date_created": now,
                "date_sent": None,
                "date_updated": now,
                "direction": "outbound-api",
                "error_code": None,
                "error_message": None,
                "from": e.sender,
                "messaging_service_sid": None,
                "num_media": "0",
                "num_segments": str(e.segments),
                "price": None,
                "price_unit": "USD",
                "sid": e.provider_message_id,
                "status": "queued",
                "subresource_uris": {},
                "tags": {},
                "to": e.to,
                "uri": f"/2010-04-01/Accounts/{self.account_sid}/Messages/{e.provider_message_id}.json",
            },
            status=201,
        )

    def reject_response(self, items: list[Submitted], code: str | None) -> web.Response:
        return twilio_error(400, code or "21211")

    def throttled_response(self, retry_after: float | None) -> web.Response:
        resp = twilio_error(429, "20429")
        if retry_after is not None:
            resp.headers["Retry-After"] = str(int(retry_after) if float(retry_after).is_integer() else retry_after)
        return resp

    def server_error_response(self, status: int = 500) -> web.Response:
        if status in (500, 503):  # Twilio's own 20500 / 20503 bodies; other statuses come from its edge
            return twilio_error(status, f"20{status}")
        return gateway_error(status)

    def sign(self, url: str, params: dict[str, str]) -> str:
        return compute_signature(self.auth_token, url, {k: [v] for k, v in params.items()})

    def report_requests(self, url: str, reports: list[tuple[LedgerEntry, str, str | None]]) -> list[ReportRequest]:
        out = []
        for entry, status, error in reports:
            if status == "spam":  # carrier filtering: undelivered with 30007
                status, error = "undelivered", error or "30007"
            twilio_status = {"rejected": "failed", "expired": "undelivered", "pending": "sending"}.get(status, status)
            params = {
                "AccountSid": self.account_sid,
                "ApiVersion": "2010-04-01",
                "From": entry.sender,
                "MessageSid": entry.provider_message_id,
                "MessageStatus": twilio_status,
                "SmsSid": entry.provider_message_id,
                "SmsStatus": twilio_status,
                "To": entry.to,
            }
            if error:
                params["ErrorCode"] = str(error)
            if twilio_status in ("delivered", "undelivered"):
                params["RawDlrDoneDate"] = dt.datetime.now(dt.UTC).strftime("%y%m%d%H%M")
            out.append(
                ReportRequest(
                    url,
                    urlencode(params).encode(),
                    {
                        "Content-Type": "application/x-www-form-urlencoded",
                        "X-Twilio-Signature": self.sign(url, params),
                        "User-Agent": "TwilioProxy/1.1",
                    },
                )
            )
        return out

    def inbound_request(self, url: str, from_number: str, to_number: str, text: str) -> ReportRequest:
        sid = self.next_provider_id(Submitted(None, to_number, text, from_number))
        params = {
            "AccountSid": self.account_sid,
            "ApiVersion": "2010-04-01",
            "Body": text,
            "From": from_number,
            "MessageSid": sid,
            "NumMedia": "0",
            "NumSegments": "1",
            "SmsMessageSid": sid,
            "SmsSid": sid,
            "SmsStatus": "received",
            "To": to_number,
        }
        return ReportRequest(
            url,
            urlencode(params).encode(),
            {"Content-Type": "application/x-www-form-urlencoded", "X-Twilio-Signature": self.sign(url, params)},
        )

    def driver_settings(self) -> ConfigTable:
        return {"base_url": self.url, "account_sid": self.account_sid, "auth_token": self.auth_token}

    def wrong_credentials(self) -> ConfigTable:
        return {"auth_token": self.auth_token + "-wrong"}


def compute_signature(token: str, url: str, params: dict[str, list[str]]) -> str:
    """Twilio's side of ``X-Twilio-Signature``: base64 HMAC-SHA1 of the URL followed by every ``name + value``,
    names sorted (written here independently of the driver's validator, as Twilio's own code would be)."""
    data = url + "".join(name + value for name in sorted(params) for value in sorted(set(params[name])))
    return base64.b64encode(hmac.new(token.encode(), data.encode(), hashlib.sha1).digest()).decode("ascii")
