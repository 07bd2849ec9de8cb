"""The provider driver contract: the one thing a plugin implements.

A driver turns a batch of :class:`OutboundMessage` into one :class:`SendResult` per message::

    from trackly_exec import Driver, DriverSettings, OutboundMessage, Accepted

    class EchoSettings(DriverSettings):
        prefix: str = "echo"

    class EchoDriver(Driver[EchoSettings]):
        settings_model = EchoSettings

        async def send(self, messages):
            return [Accepted(message_id=m.id, provider_message_id=f"{self.settings.prefix}-{m.id}",
                             segments=m.segments) for m in messages]

and is registered in its distribution's ``pyproject.toml``::

    [project.entry-points."trackly.drivers"]
    echo = "trackly_echo:EchoDriver"

Everything else (``startup``, ``shutdown``, webhook parsing and authentication) has a working default.
A driver whose provider can say what became of a message may implement :meth:`Driver.lookup` (optional):
the daemon's reconciliation asks it about messages whose send answer was lost (``NO_RESPONSE``).
A driver may also raise from ``send``: :class:`~trackly_exec.errors.PermanentSendError`,
:class:`~trackly_exec.errors.TransientSendError` and :class:`~trackly_exec.errors.UnknownOutcomeError` apply
to every message of the call (see :meth:`Driver.submit`).
"""

from __future__ import annotations

import base64
import datetime as dt
import hmac
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, Literal, TypeVar, cast
from urllib.parse import parse_qsl, urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationInfo, field_validator

from trackly_exec.errors import (
    DriverError,
    PermanentSendError,
    TransientSendError,
    UnknownOutcomeError,
    WebhookAuthError,
    WebhookFormatError,
)

# --------------------------------------------------------------------------------------------- messages


class OutboundMessage(BaseModel):
    """One SMS to submit. ``id`` is ours and must be sent as the provider-side reference."""

    model_config = ConfigDict(frozen=True)

    id: str = Field(description="Our message id; sent to the provider so delivery reports can be matched.")
    to: str = Field(description="Recipient in E.164, with the leading '+'.")
    sender: str = Field(description="From number (E.164) or alphanumeric sender id.")
    body: str
    segments: int = Field(1, description="Our own segment count for the body.")
    valid_for: int | None = Field(
        None,
        ge=1,
        description="Seconds the provider may keep it before delivering it (None: the provider's default): what is "
        "left of the recipient's quiet-hours window and of the time before it turns stale. A driver passes it as its "
        "provider's validity period, so a message the provider queues is dropped rather than delivered at night or "
        "outdated.",
    )


class Accepted(BaseModel):
    """The provider accepted the message."""

    kind: Literal["accepted"] = "accepted"
    message_id: str
    provider_message_id: str
    segments: int = 1


class Rejected(BaseModel):
    """The provider refused the message permanently."""

    kind: Literal["rejected"] = "rejected"
    message_id: str
    code: str | None = None
    detail: str = ""
    opted_out: bool = Field(False, description="The code means the recipient opted out (e.g. Twilio 21610).")
    spam: bool = Field(False, description="The code means carrier spam filtering.")


class TransientFailure(BaseModel):
    """Nothing was accepted; the message may be tried again (after ``retry_after`` seconds if given)."""

    kind: Literal["transient"] = "transient"
    message_id: str
    code: str | None = None
    detail: str = ""
    retry_after: float | None = None


class UnknownOutcome(BaseModel):
    """The request may have reached the provider. Never re-send automatically."""

    kind: Literal["unknown"] = "unknown"
    message_id: str
    detail: str = ""


SendResult = Accepted | Rejected | TransientFailure | UnknownOutcome

_new_object = object.__new__
_set_slot = object.__setattr__
_OUTBOUND_SET = frozenset(("id", "to", "sender", "body", "segments"))
_OUTBOUND_VALID_SET = _OUTBOUND_SET | {"valid_for"}
_ACCEPTED_SET = frozenset(("message_id", "provider_message_id", "segments"))


def _built(cls: type[BaseModel], values: dict[str, object], fields_set: frozenset[str]) -> Any:
    """An instance of ``cls`` holding ``values`` as they are, as pydantic's ``model_construct`` makes one (with less
    work): for values validation would return unchanged."""
    obj = _new_object(cls)
    _set_slot(obj, "__dict__", values)
    _set_slot(obj, "__pydantic_fields_set__", set(fields_set))
    _set_slot(obj, "__pydantic_extra__", None)
    _set_slot(obj, "__pydantic_private__", None)
    return obj


def outbound_message(
    id: str, to: str, sender: str, body: str, segments: int, valid_for: int | None = None
) -> OutboundMessage:
    """``OutboundMessage(id=id, to=to, sender=sender, body=body, segments=segments, valid_for=valid_for)`` for the
    executor's hot path: when every value already has exactly its field's type (what validation returns unchanged)
    the object is built without validating (half the cost); any other value is validated as usual."""
    if (
        type(id) is str
        and type(to) is str
        and type(sender) is str
        and type(body) is str
        and type(segments) is int
        and (valid_for is None or (type(valid_for) is int and valid_for >= 1))
    ):
        values = {"id": id, "to": to, "sender": sender, "body": body, "segments": segments, "valid_for": valid_for}
        fields_set = _OUTBOUND_SET if valid_for is None else _OUTBOUND_VALID_SET
        return cast(OutboundMessage, _built(OutboundMessage, values, fields_set))
    if valid_for is None:
        return OutboundMessage(id=id, to=to, sender=sender, body=body, segments=segments)
    return OutboundMessage(id=id, to=to, sender=sender, body=body, segments=segments, valid_for=valid_for)


def accepted(message_id: str, provider_message_id: str, segments: int) -> Accepted:
    """``Accepted(message_id=..., provider_message_id=..., segments=...)``, built without validating when the values
    already have exactly their fields' types (see :func:`outbound_message`); validated otherwise."""
    if type(message_id) is str and type(provider_message_id) is str and type(segments) is int:
        values = {
            "kind": "accepted",
            "message_id": message_id,
            "provider_message_id": provider_message_id,
            "segments": segments,
        }
        return cast(Accepted, _built(Accepted, values, _ACCEPTED_SET))
    return Accepted(message_id=message_id, provider_message_id=provider_message_id, segments=segments)


def provider_time(when: dt.datetime) -> dt.datetime | None:
    """A time parsed from a provider's answer, made aware (naive: taken as UTC); None when it cannot be expressed in
    UTC (``9999-12-31T23:59:59-23:59`` parses, then overflows wherever it is converted or stored): the drivers'
    parsers treat such a time as absent, like any other odd one."""
    when = when if when.tzinfo else when.replace(tzinfo=dt.UTC)
    try:
        when.astimezone(dt.UTC)
    except OverflowError:
        return None
    return when


class DeliveryReport(BaseModel):
    """A delivery report, normalised. ``delivered`` is None for an intermediate (non-final) state."""

    message_id: str | None = Field(None, description="Our id, as echoed by the provider.")
    provider_message_id: str | None = None
    status: str = Field(description="The provider's own status name.")
    delivered: bool | None = None
    error_code: str | None = None
    error_detail: str | None = None
    segments: int | None = None
    done_at: dt.datetime | None = None
    opted_out: bool = False
    spam: bool = False
    #: A final failure where the provider or the network refused the message outright (Infobip's REJECTED group,
    #: CM's "rejected", Twilio's "failed"), as opposed to one that was submitted and not delivered (undeliverable,
    #: expired): recorded ``submitted = False`` as well as ``delivered = False``.
    rejected: bool = False


class LookupQuery(BaseModel):
    """A message whose send answer was lost (``NO_RESPONSE``), to look up at the provider."""

    model_config = ConfigDict(frozen=True)

    id: str = Field(description="Our message id (sent as the provider-side reference where the provider has one).")
    to: str = Field(description="Recipient in E.164, with the leading '+'.")
    sender: str
    body: str
    attempted_at: dt.datetime = Field(
        description="When the send was attempted (the send intent, UTC); the "
        "provider's record of it, if any, is not older (give or take clock skew)."
    )


class Found(BaseModel):
    """The provider has the message: it was accepted (a send). ``report`` is its delivery state, when known."""

    kind: Literal["found"] = "found"
    message_id: str
    provider_message_id: str
    segments: int | None = None
    report: DeliveryReport | None = None


class NotFound(BaseModel):
    """The provider has no record of the message: it was not sent (it may be sent again)."""

    kind: Literal["not_found"] = "not_found"
    message_id: str
    detail: str = ""


#: What :meth:`Driver.lookup` says of one message: found (sent), rejected by the provider (not sent, do not send
#: again), not found (not sent), or unknown (ask again later).
LookupResult = Found | Rejected | NotFound | UnknownOutcome


class InboundMessage(BaseModel):
    """A message a contact sent to one of our numbers."""

    from_number: str
    to_number: str
    text: str
    provider_message_id: str | None = None
    received_at: dt.datetime | None = None
    #: The provider's own reading of the message as an opt keyword, when it makes one: ``"STOP"``, ``"START"`` or
    #: ``"HELP"`` (Twilio's ``OptOutType``, sent with Advanced Opt-Out, whose keyword lists may be custom or
    #: localized: ``ARRET`` is a STOP there). It wins over our own keyword list.
    opt_keyword: str | None = None


# --------------------------------------------------------------------------------------------- webhooks


@dataclass
class WebhookRequest:
    """A webhook request, independent of the web framework.

    ``url`` is the public URL the provider called (``http.public_url`` + path + query), which is what
    signatures are computed over. ``path_token`` is the secret segment of the callback path, if any.
    ``form`` holds the parameters of a form-encoded body, or of the query string of a ``GET`` (providers that
    call webhooks by GET, such as Twilio's inbound messages when so configured, put them there).
    """

    url: str
    headers: Mapping[str, str]
    body: bytes
    content_type: str = ""
    path_token: str | None = None
    form: dict[str, list[str]] = field(default_factory=dict)
    method: str = "POST"

    @property
    def payload(self) -> bytes:
        """The body without a leading UTF-8 byte-order mark (which some senders write and JSON parsers refuse):
        what a driver parses. Signatures are checked over :attr:`body` as it came."""
        return self.body.removeprefix(b"\xef\xbb\xbf")

    def __post_init__(self) -> None:
        self.headers = {k.lower(): v for k, v in self.headers.items()}
        if not self.form and self.method == "GET":
            for key, value in parse_qsl(urlsplit(self.url).query, keep_blank_values=True):
                self.form.setdefault(key, []).append(value)
        elif not self.form and self.content_type.startswith("application/x-www-form-urlencoded"):
            try:
                pairs = parse_qsl(self.body.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
            except UnicodeDecodeError as exc:
                raise WebhookFormatError("form body is not UTF-8") from exc
            for key, value in pairs:
                self.form.setdefault(key, []).append(value)

    @property
    def query(self) -> dict[str, str]:
        return dict(parse_qsl(urlsplit(self.url).query, keep_blank_values=True))

    def form_value(self, name: str, default: str | None = None) -> str | None:
        values = self.form.get(name)
        return values[0] if values else default


@dataclass
class WebhookResponse:
    """What to answer a provider's webhook with."""

    status: int = 200
    body: bytes = b""
    content_type: str = "text/plain"


# --------------------------------------------------------------------------------------------- settings


class DriverSettings(BaseModel):
    """Settings every driver has. Subclass it for provider credentials; secrets are ``SecretStr``."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    #: The settings a sending list may override in its ``driver_settings`` (tuning only). Endpoints,
    #: credentials, webhook secrets, timeouts and the 5xx policy come from the operator's config file alone.
    #: A driver adds its own harmless keys: ``list_overridable = DriverSettings.list_overridable | {"x"}``.
    list_overridable: ClassVar[frozenset[str]] = frozenset({"batch_size"})
    #: The driver authenticates with an ``Authorization`` header of its own (an API key, Basic auth): credentials
    #: written into ``base_url`` cannot go with it (HTTP has one such header; aiohttp refuses both), so a
    #: ``base_url`` carrying ``user:password@`` is a configuration error for such a driver.
    authorization_header: ClassVar[bool] = False

    base_url: str = Field("http://127.0.0.1:9000", description="Provider API base URL.")
    timeout_seconds: float = Field(30.0, gt=0, le=3600, description="Total time for one provider request.")
    connect_timeout_seconds: float = Field(5.0, gt=0, le=3600, description="Time to establish a connection.")
    max_connections: int = Field(100, ge=1, description="Connection pool size of the driver's HTTP session.")
    batch_size: int = Field(1, ge=1, description="Messages per provider request.")
    send_client: Literal["auto", "aiohttp", "keepalive"] = Field(
        "auto",
        description="HTTP client for sends: 'auto' (default: 'keepalive' unless an HTTP proxy in the environment "
        "applies to base_url, or base_url carries credentials, then 'aiohttp'), 'aiohttp' (honours "
        "HTTP(S)_PROXY/NO_PROXY) or 'keepalive' (our own HTTP/1.1 keep-alive client: less CPU per request, no proxy "
        "support, HTTP/1.1 only). Look-ups always use aiohttp; both map failures identically (nothing re-sent once "
        "the request may have arrived).",
    )
    server_errors: Literal["unknown"] = Field(
        "unknown",
        description="Deprecated, kept so existing configs load: an HTTP 5xx (or no usable answer) after the request "
        "was written is always an unknown outcome (NO_RESPONSE, never re-sent blindly; reconciliation asks the "
        "provider). 'transient' (retrying such answers, which sends twice when the provider had accepted) is refused.",
    )
    lookup_settle_seconds: float = Field(
        120.0,
        ge=0,
        description="A provider's 'no such message' answer to a look-up is trusted only this long after "
        "the send attempt (its records may lag behind its answers); earlier, the message stays ambiguous.",
    )
    webhook_token: SecretStr | None = Field(
        None, description="Secret path segment expected on delivery-report and inbound webhooks."
    )
    webhook_username: str | None = Field(None, description="Optional Basic-auth user for webhooks.")
    webhook_password: SecretStr | None = Field(None, description="Optional Basic-auth password for webhooks.")
    allow_unauthenticated_webhooks: bool = Field(
        False,
        description="Accept delivery reports and inbound messages that carry no credential at all (no path "
        "token, Basic auth or signature configured). Off by default: anyone could forge a STOP or a failed report.",
    )

    @field_validator("send_client")
    @classmethod
    def _keepalive_sends_no_url_credentials(cls, value: str, info: ValidationInfo) -> str:
        base = urlsplit(str(info.data.get("base_url", "")))
        if value == "keepalive" and (base.username is not None or base.password is not None):
            # the URL itself is not quoted: it carries a credential
            raise ValueError(
                "the keepalive send client does not send credentials written into base_url (aiohttp sends "
                "them as Basic auth): put them in the driver's own credential settings, or use 'aiohttp'"
            )
        return value

    @field_validator("base_url")
    @classmethod
    def _one_authorization(cls, value: str) -> str:
        if cls.authorization_header:
            try:
                base = urlsplit(value)
                userinfo = base.username is not None or base.password is not None
            except ValueError:
                userinfo = False
            if userinfo:
                raise ValueError(
                    "base_url carries user:password@, but this driver authenticates with its own Authorization "
                    "header (its credential settings): remove the credentials from base_url"
                )
        return value

    @field_validator("server_errors", mode="before")
    @classmethod
    def _no_blind_retries(cls, value: Any) -> Any:
        if value == "transient":
            raise ValueError(
                "'transient' is no longer supported: a 5xx after the request was written may follow an "
                "accepted send, so it is recorded NO_RESPONSE and reconciled with the provider; remove "
                'the key (or set "unknown")'
            )
        return value


S = TypeVar("S", bound=DriverSettings)


@dataclass(frozen=True)
class DriverContext:
    """Where the daemon listens for this driver's webhooks (public URLs, path token included)."""

    status_url: str = ""
    inbound_url: str = ""


# --------------------------------------------------------------------------------------------- the contract


class Driver(ABC, Generic[S]):
    """Abstract provider driver. Only :meth:`send` is required."""

    settings_model: ClassVar[type[DriverSettings]] = DriverSettings
    #: ``"module:Class"`` of a local fake of the provider's API (``trackly fake-provider NAME``).
    fake: ClassVar[str | None] = None
    #: The provider delivers webhooks signed (Twilio) rather than via a path token.
    signed_webhooks: ClassVar[bool] = False
    #: The driver sends :attr:`OutboundMessage.valid_for` as its provider's validity period (the contract suite
    #: checks it); False only for a provider that has none (then what it queues may be delivered late).
    validity_period: ClassVar[bool] = True
    #: The webhooks (``"status"``, ``"inbound"``) the provider may call by GET, its parameters in the query string
    #: (Twilio's inbound URL may be configured so; CM's older status reports); the others answer GET with 405.
    get_webhooks: ClassVar[frozenset[str]] = frozenset()
    #: Most messages one :meth:`lookup` call is given.
    max_lookup_batch: ClassVar[int] = 100
    #: How long the provider keeps what :meth:`lookup` reads (None: no known limit). Older messages are not looked
    #: up (a "not found" would mean nothing).
    lookup_horizon: ClassVar[dt.timedelta | None] = None

    def __init__(self, settings: S, context: DriverContext | None = None, *, name: str = "") -> None:
        self.settings: S = settings
        self.context = context or DriverContext()
        self.name = name or type(self).__name__

    # -- lifecycle ---------------------------------------------------------------------------

    async def startup(self) -> None:
        """Open connections. Called once before the first :meth:`send`."""

    async def shutdown(self) -> None:
        """Close connections. Called once at exit."""

    @property
    def max_batch_size(self) -> int:
        return self.settings.batch_size

    # -- sending -----------------------------------------------------------------------------

    @abstractmethod
    async def send(self, messages: Sequence[OutboundMessage]) -> list[SendResult]:
        """Submit at most :attr:`max_batch_size` messages in one provider request.

        Return one result per message (any order). Raising a :class:`DriverError` applies it to all.
        """

    async def submit(self, messages: Sequence[OutboundMessage]) -> list[SendResult]:
        """Call :meth:`send` and make its answer total: exactly one result per message, in order.

        A raised error becomes that error's result for every message; an unexpected exception, or a
        message the driver forgot to answer for, becomes :class:`UnknownOutcome` (it may have been sent).
        """
        try:
            results = await self.send(messages)
        except PermanentSendError as exc:
            return [Rejected(message_id=m.id, code=exc.code, detail=exc.detail) for m in messages]
        except TransientSendError as exc:
            return [
                TransientFailure(message_id=m.id, code=exc.code, detail=exc.detail, retry_after=exc.retry_after)
                for m in messages
            ]
        except UnknownOutcomeError as exc:
            return [UnknownOutcome(message_id=m.id, detail=str(exc)) for m in messages]
        except DriverError as exc:
            return [UnknownOutcome(message_id=m.id, detail=str(exc)) for m in messages]
        except Exception as exc:  # a bug in a plugin must not lose messages: treat as maybe-sent
            return [
                UnknownOutcome(message_id=m.id, detail=f"driver raised {type(exc).__name__}: {exc}") for m in messages
            ]
        if len(results) == len(messages) == 1 and results[0].message_id == messages[0].id:
            return list(results)  # one message, answered (Twilio's every request): nothing to match
        by_id = {r.message_id: r for r in results}
        return [
            by_id.get(m.id) or UnknownOutcome(message_id=m.id, detail="driver returned no result for this message")
            for m in messages
        ]

    # -- look-ups (optional) -------------------------------------------------------------------

    @property
    def supports_lookup(self) -> bool:
        """Whether this driver implements :meth:`lookup`."""
        return type(self).lookup is not Driver.lookup

    async def lookup(self, messages: Sequence[LookupQuery]) -> list[LookupResult]:
        """Ask the provider what became of messages whose send answer was lost (optional; default: unsupported).

        At most :attr:`max_lookup_batch` messages. Return one result per message (any order): :class:`Found` when
        the provider has it (with its provider id, and its delivery state as a :class:`DeliveryReport` when the
        provider says), :class:`Rejected` when the provider has it but refused it, :class:`NotFound` only when the
        provider positively answers that it has no such message, :class:`UnknownOutcome` otherwise. Raise (any
        exception) when the provider could not be asked: every message stays ambiguous and is asked again later.
        """
        raise NotImplementedError(f"driver {self.name} cannot look messages up")

    async def resolve(self, messages: Sequence[LookupQuery], *, now: dt.datetime | None = None) -> list[LookupResult]:
        """Call :meth:`lookup` and make its answer total and safe: one result per message, in order; an error or a
        missing answer is :class:`UnknownOutcome`; a :class:`NotFound` earlier than ``lookup_settle_seconds`` after
        the attempt, or beyond :attr:`lookup_horizon`, is :class:`UnknownOutcome` (it proves nothing yet)."""
        now = now or dt.datetime.now(dt.UTC)
        try:
            results = await self.lookup(messages)
        except Exception as exc:  # the provider could not be asked: ask again later
            return [
                UnknownOutcome(message_id=m.id, detail=f"look-up failed: {type(exc).__name__}: {exc}") for m in messages
            ]
        by_id: dict[str, LookupResult] = {r.message_id: r for r in results}
        settle = dt.timedelta(seconds=self.settings.lookup_settle_seconds)
        out: list[LookupResult] = []
        for m in messages:
            r = by_id.get(m.id) or UnknownOutcome(message_id=m.id, detail="look-up gave no answer for this message")
            if isinstance(r, NotFound):
                if now - m.attempted_at < settle:
                    r = UnknownOutcome(message_id=m.id, detail="not found yet (too soon after the attempt to tell)")
                elif self.lookup_horizon is not None and now - m.attempted_at > self.lookup_horizon:
                    r = UnknownOutcome(message_id=m.id, detail="older than the provider keeps its records")
            out.append(r)
        return out

    # -- webhooks ----------------------------------------------------------------------------

    def authenticate(self, request: WebhookRequest) -> None:
        """Raise :class:`WebhookAuthError` unless the request carries the configured path token and,
        when set, the Basic-auth credentials. Signed providers override this.

        Fails closed: a driver with no path token, no Basic auth and no signature refuses every webhook unless
        its settings say ``allow_unauthenticated_webhooks = true``."""
        token = self.settings.webhook_token
        if (
            token is None
            and not self.settings.webhook_username
            and not self.signed_webhooks
            and not self.settings.allow_unauthenticated_webhooks
        ):
            raise WebhookAuthError("no webhook authentication configured (webhook_token, Basic auth or signature)")
        if token is not None and (
            not request.path_token
            or not hmac.compare_digest(request.path_token.encode(), token.get_secret_value().encode())
        ):
            raise WebhookAuthError("webhook path token missing or wrong")
        if self.settings.webhook_username:
            expected = f"{self.settings.webhook_username}:" + (
                self.settings.webhook_password.get_secret_value() if self.settings.webhook_password else ""
            )
            header = request.headers.get("authorization", "")
            supplied = b""
            if header.lower().startswith("basic "):
                try:
                    supplied = base64.b64decode(header[6:].strip(), validate=True)
                except ValueError:
                    supplied = b""
            if not hmac.compare_digest(supplied, expected.encode()):
                raise WebhookAuthError("webhook Basic auth missing or wrong")

    def parse_status(self, request: WebhookRequest) -> list[DeliveryReport]:
        """Turn a delivery-report request into normalised reports (raise WebhookFormatError if malformed)."""
        raise WebhookFormatError(f"driver {self.name} does not accept delivery reports")

    def parse_inbound(self, request: WebhookRequest) -> list[InboundMessage]:
        """Turn an inbound-message request into normalised messages."""
        raise WebhookFormatError(f"driver {self.name} does not accept inbound messages")

    def inbound_response(self, reply: str | None) -> WebhookResponse:
        """The answer to an inbound webhook; ``reply`` is text to send back where the provider allows it."""
        return WebhookResponse(status=200, body=b"", content_type="text/plain")


def settings_from(driver_cls: type[Driver[Any]], values: Mapping[str, Any]) -> DriverSettings:
    """Validate ``values`` with the driver's settings model (raises pydantic.ValidationError)."""
    return driver_cls.settings_model.model_validate(dict(values))
