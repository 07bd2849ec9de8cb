"""Twilio Programmable Messaging driver: one form-encoded request per message, signed webhooks.

Wire format: Twilio's Message resource (https://www.twilio.com/docs/messaging/api/message-resource).
Our id travels in the status callback URL
(``StatusCallback = <status_url>?mid=<id>``), and comes back as the ``mid`` query parameter of the
callback, which Twilio signs together with the form parameters (``X-Twilio-Signature``).
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import email.utils
import hashlib
import hmac
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar
from urllib.parse import parse_qs, quote_plus, urlsplit, urlunsplit
from xml.sax.saxutils import escape

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
    WebhookResponse,
    accepted,
    provider_time,
)
from trackly_exec.drivers.http import HttpClient, JsonObject, raise_for_status
from trackly_exec.errors import (
    DriverError,
    PermanentSendError,
    TransientSendError,
    UnknownOutcomeError,
    WebhookAuthError,
    WebhookFormatError,
)

#: Permanent per-recipient error codes; 21610 means the recipient replied STOP. 20429 is the only code Twilio
#: documents as "never processed and always safe to retry"; 21611 ("This 'From' number has exceeded the maximum
#: number of queued messages", HTTP 400: the message is not created; twilio.com/docs/api/errors/21611) says to
#: slow down: the list is held like on 429 instead of dead-lettering every later message. An HTTP 401 (20003, bad
#: credentials) is held too (``raise_for_status``).
OPT_OUT_CODES = frozenset({"21610"})
SPAM_CODES = frozenset({"30007"})
TRANSIENT_CODES = frozenset({"20429", "21611"})
DELIVERED = frozenset({"delivered"})
FAILED = frozenset({"undelivered", "failed", "canceled"})
#: Final states in which Twilio never handed the message to a carrier ("failed": could not be sent; "canceled"),
#: unlike "undelivered" (sent, not delivered): ``submitted`` False.
NOT_SENT = frozenset({"failed", "canceled"})

#: Look-ups: a message created this long before the recorded attempt still matches (clock skew between hosts).
LOOKUP_SKEW = dt.timedelta(minutes=5)
LOOKUP_PAGE_SIZE = 100
LOOKUP_MAX_PAGES = 5

#: Form quoting: characters ``quote_plus`` escapes in ASCII text (all but letters, digits and ``_.-~``), escaped.
_ESCAPES = {chr(i): "+" if i == 32 else f"%{i:02X}" for i in range(128) if not (chr(i).isalnum() or chr(i) in "_.-~")}
_UNSAFE = frozenset(_ESCAPES)

SIGNATURE_HEADER = "x-twilio-signature"
_FORM = {"Content-Type": "application/x-www-form-urlencoded"}
SIGNATURE_SETTINGS_HEADER = "x-twilio-webhooks-signature-settings"
_HASHES = {"HMAC_SHA1": hashlib.sha1, "HMAC_SHA256": hashlib.sha256}


#: Twilio's ``ValidityPeriod`` range is 1 to 36,000 seconds (its default, the longest a message waits in its queue).
MAX_VALIDITY_SECONDS = 36_000


class TwilioSettings(DriverSettings):
    """``[drivers.twilio]``: account SID and auth token (also the webhook signing key)."""

    authorization_header: ClassVar[bool] = True

    base_url: str = Field("https://api.twilio.com", description="Twilio REST API base URL.")
    account_sid: str = Field("", description="Account SID (AC...), used in the path and as Basic-auth user.")
    auth_token: SecretStr = Field(SecretStr(""), description="Auth token: Basic-auth password and webhook signing key.")
    batch_size: int = Field(1, ge=1, le=1, description="Twilio takes one message per request (fixed at 1).")


def quote_form(value: str) -> str:
    """``urllib.parse.quote_plus(value)``, byte for byte, with one ``str.replace`` per kind of character to escape
    in ASCII text (quote_plus looks every byte up in Python); other text goes to quote_plus itself."""
    if not value.isascii():
        return quote_plus(value)
    present = _UNSAFE.intersection(value)
    if not present:
        return value
    if "%" in present:  # first: the escapes below bring their own
        value = value.replace("%", "%25")
    for ch in present:
        if ch != "%" and ch != " ":
            value = value.replace(ch, _ESCAPES[ch])
    return value.replace(" ", "+") if " " in present else value  # last: "+" itself is escaped above


# --------------------------------------------------------------------------------------------- signatures


def compute_signature(
    token: str, url: str, params: Mapping[str, Sequence[str]] | None, algorithm: str = "HMAC_SHA1"
) -> str:
    """Twilio's signature: base64 HMAC of the URL followed by every ``name + value``, names sorted, values
    sorted and de-duplicated (as ``twilio.request_validator.RequestValidator.compute_signature``)."""
    parts = [url]
    for name in sorted(set(params or {})):
        parts.extend(name + value for value in sorted(set((params or {})[name])))
    mac = hmac.new(token.encode("utf-8"), "".join(parts).encode("utf-8"), _HASHES[algorithm])
    return base64.b64encode(mac.digest()).decode("ascii")


def _url_variants(url: str) -> set[str]:
    """The URL as given, and without and with its default port (Twilio signs either form)."""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        return {url}
    if port:
        without, with_port = urlunsplit(parts._replace(netloc=parts.netloc.rsplit(":", 1)[0])), urlunsplit(parts)
    else:
        default = 443 if parts.scheme == "https" else 80
        without, with_port = urlunsplit(parts), urlunsplit(parts._replace(netloc=f"{parts.netloc}:{default}"))
    return {url, without, with_port}


def validate_signature(
    token: str,
    url: str,
    params: Mapping[str, Sequence[str]] | None,
    signature: str,
    body: bytes | None = None,
    algorithm: str = "HMAC_SHA1",
) -> bool:
    """True when ``signature`` is Twilio's for this request (URL tried with and without its port).

    JSON-body webhooks carry ``bodySHA256`` in the URL: the body hash must match and the URL alone is signed.
    """
    if not signature or algorithm not in _HASHES:
        return False
    query = parse_qs(urlsplit(url).query)
    body_ok = True
    if "bodySHA256" in query and body is not None and not params:
        expected = hashlib.sha256(body).hexdigest()
        body_ok = hmac.compare_digest(expected.encode(), query["bodySHA256"][0].encode())
        params = {}
    supplied = signature.strip().encode()
    matches = [
        hmac.compare_digest(compute_signature(token, u, params, algorithm).encode(), supplied)
        for u in _url_variants(url)
    ]
    return body_ok and any(matches)


# --------------------------------------------------------------------------------------------- the driver


class TwilioDriver(Driver[TwilioSettings]):
    """Twilio Messages API (2010-04-01)."""

    settings_model: ClassVar[type[DriverSettings]] = TwilioSettings
    fake: ClassVar[str | None] = "trackly_exec.testing.fakes.twilio:TwilioFake"
    signed_webhooks: ClassVar[bool] = True
    get_webhooks: ClassVar[frozenset[str]] = frozenset({"inbound"})  # "Form-encoded POST (or GET)"
    max_lookup_batch: ClassVar[int] = 20  # one list request per message, made concurrently

    _http: HttpClient | None = None
    _callback_prefix: str | None = None  # the quoted "<status_url>?mid=" of every request
    _quoted: dict[str, str] | None = None  # sender -> quoted sender
    _send_path = ""  # set by startup()

    async def startup(self) -> None:
        self._send_path = f"/2010-04-01/Accounts/{self.settings.account_sid}/Messages.json"
        pair = f"{self.settings.account_sid}:{self.settings.auth_token.get_secret_value()}"
        basic = "Basic " + base64.b64encode(pair.encode("utf-8")).decode("ascii")
        self._http = HttpClient(self.settings, headers={"Accept": "application/json", "Authorization": basic})
        await self._http.open()

    async def shutdown(self) -> None:
        if self._http is not None:
            await self._http.close()

    @property
    def max_batch_size(self) -> int:
        return 1

    def form(self, m: OutboundMessage) -> dict[str, str]:
        data = {"To": m.to, "From": m.sender, "Body": m.body}
        if m.valid_for is not None:  # the longest Twilio keeps a message in its queue (providers.md §2.1)
            data["ValidityPeriod"] = str(min(m.valid_for, MAX_VALIDITY_SECONDS))
        if self.context.status_url:
            sep = "&" if "?" in self.context.status_url else "?"
            data["StatusCallback"] = f"{self.context.status_url}{sep}mid={m.id}"
        return data

    def form_body(self, m: OutboundMessage) -> bytes:
        """:meth:`form`, URL-encoded: byte for byte ``urlencode(self.form(m))``, with the parts that are the same for
        every request (sender, callback URL) quoted once (aiohttp's FormData costs several times more per request)."""
        prefix = self._callback_prefix
        if prefix is None:
            url = self.context.status_url
            prefix = quote_plus(f"{url}{'&' if '?' in url else '?'}mid=") if url else ""
            self._callback_prefix = prefix
        if self._quoted is None:
            self._quoted = {}
        sender = self._quoted.get(m.sender)
        if sender is None:
            sender = quote_plus(m.sender)
            if len(self._quoted) < 256:
                self._quoted[m.sender] = sender
        body = f"To={quote_form(m.to)}&From={sender}&Body={quote_form(m.body)}"
        if m.valid_for is not None:
            body += f"&ValidityPeriod={min(m.valid_for, MAX_VALIDITY_SECONDS)}"
        if prefix:
            body += f"&StatusCallback={prefix}{quote_form(m.id)}"
        return body.encode("ascii")

    async def send(self, messages: Sequence[OutboundMessage]) -> list[SendResult]:
        if len(messages) == 1:
            return [await self._send_one(messages[0])]
        return list(await asyncio.gather(*(self._send_one(m) for m in messages)))

    async def _send_one(self, m: OutboundMessage) -> SendResult:
        assert self._http is not None, "startup() not called"
        try:
            reply = await self._http.post(self._send_path, data=self.form_body(m), headers=_FORM)
            body = reply.json()
            if reply.status in (200, 201) and isinstance(body, dict) and body.get("sid"):
                segments = body.get("num_segments")
                count = int(str(segments)) if str(segments or "").isdigit() and int(str(segments)) > 0 else m.segments
                return accepted(m.id, str(body["sid"]), count)
            if 200 <= reply.status < 300:
                return UnknownOutcome(message_id=m.id, detail=f"Twilio answered HTTP {reply.status} without a sid")
            code = str(body["code"]) if isinstance(body, dict) and body.get("code") is not None else None
            detail = str(body.get("message") or "") if isinstance(body, dict) else ""
            if code in TRANSIENT_CODES:  # 20429: "never processed and always safe to retry" (providers.md §2.2)
                raise TransientSendError(detail, code=code, retry_after=reply.retry_after)
            if code in OPT_OUT_CODES:
                return Rejected(message_id=m.id, code=code, detail=detail, opted_out=True)
            # Any other 5xx (503 included: twilio.com/docs/api/errors/20503 says "temporarily unavailable ... try
            # again", not that the request was not processed) may follow an accepted send: "If you get a 500 ...
            # and you retry the request, it is possible for a customer to receive multiple messages"
            # (twilio.com/docs/api/errors/20500). Unknown outcome, never retried blindly.
            raise_for_status(reply, code=code, detail=detail)
            return UnknownOutcome(message_id=m.id, detail=f"unexpected HTTP {reply.status}")
        except PermanentSendError as exc:
            return Rejected(
                message_id=m.id,
                code=exc.code,
                detail=exc.detail,
                opted_out=exc.code in OPT_OUT_CODES,
                spam=exc.code in SPAM_CODES,
            )
        except TransientSendError as exc:
            return TransientFailure(message_id=m.id, code=exc.code, detail=exc.detail, retry_after=exc.retry_after)
        except (UnknownOutcomeError, DriverError) as exc:
            return UnknownOutcome(message_id=m.id, detail=str(exc))

    # -- look-ups ---------------------------------------------------------------------------

    async def lookup(self, messages: Sequence[LookupQuery]) -> list[LookupResult]:
        """Twilio's message list (``GET /2010-04-01/Accounts/{sid}/Messages.json?To=..&From=..``), one request (and
        its next pages) per message, matched on recipient, sender, body and a creation time not before the attempt
        (less :data:`LOOKUP_SKEW`). Twilio echoes none of our ids (the ``mid`` of our StatusCallback is not part of
        the resource), so two candidates are ambiguous (unknown), and a recorded sid is never matched twice (the
        reconciler checks). No ``DateSent`` filter: a message still queued at Twilio has no ``date_sent`` yet and
        would be missed, which would read as "not sent"."""
        return list(await asyncio.gather(*(self._lookup_one(m) for m in messages)))

    async def _lookup_one(self, m: LookupQuery) -> LookupResult:
        assert self._http is not None, "startup() not called"
        path = f"/2010-04-01/Accounts/{self.settings.account_sid}/Messages.json"
        params: dict[str, str] | None = {"To": m.to, "From": m.sender, "PageSize": str(LOOKUP_PAGE_SIZE)}
        since = m.attempted_at - LOOKUP_SKEW
        matches: list[JsonObject] = []
        for _ in range(LOOKUP_MAX_PAGES):
            reply = await self._http.get(path, params=params)
            body = reply.json()
            if reply.status != 200 or not isinstance(body, dict) or not isinstance(body.get("messages"), list):
                raise TransientSendError(f"Twilio message list answered HTTP {reply.status}", code=str(reply.status))
            for item in body["messages"]:
                if not isinstance(item, dict) or not item.get("sid"):
                    continue
                created = _rfc2822(item.get("date_created"))
                if (
                    (created is None or created >= since)
                    and item.get("body") == m.body
                    and item.get("to") == m.to
                    and str(item.get("direction") or "").startswith("outbound")
                ):
                    matches.append(item)
            next_page = body.get("next_page_uri")
            if not next_page:
                break
            path, params = str(next_page), None
        else:
            return UnknownOutcome(message_id=m.id, detail=f"more than {LOOKUP_MAX_PAGES} pages of messages to {m.to}")
        if not matches:
            return NotFound(message_id=m.id, detail="not in Twilio's message list")
        if len(matches) > 1:
            return UnknownOutcome(message_id=m.id, detail=f"{len(matches)} Twilio messages match")
        item = matches[0]
        status = str(item.get("status") or "").lower()
        error = str(item["error_code"]) if item.get("error_code") not in (None, "", 0, "0") else None
        segments = str(item.get("num_segments") or "")
        report = DeliveryReport(
            message_id=m.id,
            provider_message_id=str(item["sid"]),
            status=status,
            delivered=True if status in DELIVERED else False if status in FAILED else None,
            rejected=status in NOT_SENT,
            error_code=error,
            error_detail=item.get("error_message"),
            opted_out=error in OPT_OUT_CODES,
            spam=error in SPAM_CODES,
            done_at=_rfc2822(item.get("date_updated")) if status in DELIVERED | FAILED else None,
        )
        return Found(
            message_id=m.id,
            provider_message_id=str(item["sid"]),
            segments=int(segments) if segments.isdigit() and int(segments) > 0 else None,
            report=report,
        )

    # -- webhooks ---------------------------------------------------------------------------

    def authenticate(self, request: WebhookRequest) -> None:
        """Path token / Basic auth when configured (base class), then ``X-Twilio-Signature``."""
        super().authenticate(request)
        if not self.settings.auth_token.get_secret_value():
            raise WebhookAuthError("auth_token is not set: X-Twilio-Signature cannot be checked")
        signature = request.headers.get(SIGNATURE_HEADER, "")
        algorithm = "HMAC_SHA1"
        for part in request.headers.get(SIGNATURE_SETTINGS_HEADER, "").split(","):
            name, sep, value = part.partition("=")
            if sep and name.strip() == "algorithm" and value.strip():
                algorithm = value.strip().upper()
        is_form = request.content_type.startswith("application/x-www-form-urlencoded")
        ok = validate_signature(
            self.settings.auth_token.get_secret_value(),
            request.url,
            request.form if is_form else None,
            signature,
            body=None if is_form else request.body,
            algorithm=algorithm,
        )
        if not ok:
            raise WebhookAuthError("X-Twilio-Signature missing or wrong")

    def parse_status(self, request: WebhookRequest) -> list[DeliveryReport]:
        """A status callback: ``MessageStatus`` (+ ``ErrorCode``); our id from the ``mid`` query parameter."""
        status = request.form_value("MessageStatus") or request.form_value("SmsStatus")
        if not status:
            raise WebhookFormatError("Twilio status callback without MessageStatus")
        status = status.lower()
        error = request.form_value("ErrorCode") or None
        if error in ("0", ""):
            error = None
        return [
            DeliveryReport(
                message_id=request.query.get("mid") or None,
                provider_message_id=request.form_value("MessageSid") or request.form_value("SmsSid"),
                status=status,
                delivered=True if status in DELIVERED else False if status in FAILED else None,
                rejected=status in NOT_SENT,
                error_code=error,
                error_detail=request.form_value("ErrorMessage"),
                done_at=_raw_done_date(request.form_value("RawDlrDoneDate")),
                opted_out=error in OPT_OUT_CODES,
                spam=error in SPAM_CODES,
            )
        ]

    def parse_inbound(self, request: WebhookRequest) -> list[InboundMessage]:
        """An inbound message: params ``From``, ``To``, ``Body``, ``MessageSid`` (a form POST, or the query of a
        GET), and ``OptOutType`` (``STOP``/``START``/``HELP``, sent with Advanced Opt-Out) as the opt keyword."""
        sender = request.form_value("From")
        if not sender:
            raise WebhookFormatError("Twilio inbound message without From")
        return [
            InboundMessage(
                from_number=sender,
                to_number=request.form_value("To") or "",
                text=request.form_value("Body") or "",
                provider_message_id=request.form_value("MessageSid") or request.form_value("SmsSid"),
                received_at=dt.datetime.now(dt.UTC),
                opt_keyword=request.form_value("OptOutType") or None,
            )
        ]

    def inbound_response(self, reply: str | None) -> WebhookResponse:
        """TwiML: ``<Response><Message>reply</Message></Response>``, or an empty ``<Response/>``."""
        xml = '<?xml version="1.0" encoding="UTF-8"?>'
        xml += f"<Response><Message>{escape(reply)}</Message></Response>" if reply else "<Response/>"
        return WebhookResponse(status=200, body=xml.encode("utf-8"), content_type="text/xml")


def _rfc2822(value: Any) -> dt.datetime | None:
    """Twilio's resource dates (``Thu, 30 Jul 2015 20:12:31 +0000``); None when absent or odd, out-of-range in UTC
    included (``Fri, 31 Dec 9999 23:59:59 -2359`` parses, then overflows wherever it is converted or stored)."""
    if not isinstance(value, str) or not value:
        return None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return provider_time(when)


def _raw_done_date(value: str | None) -> dt.datetime | None:
    """``RawDlrDoneDate`` is ``YYMMDDhhmm`` (carrier time, taken as UTC)."""
    if not value or len(value) != 10 or not value.isdigit():
        return None
    try:
        return dt.datetime.strptime(value, "%y%m%d%H%M").replace(tzinfo=dt.UTC)
    except ValueError:
        return None
