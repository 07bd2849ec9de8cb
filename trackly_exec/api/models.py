"""Request and response bodies of the admin API (pydantic v2).

Request models forbid unknown keys, so a typo answers 422 naming the field instead of being ignored.
Response models are what GET answers contain; secrets (``webhook_secret``, secret-looking driver
settings) are masked in them. The OpenAPI document (:mod:`trackly_exec.api.openapi`) is generated from these
models, so the documentation cannot drift from what the server validates.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Generic, Literal, Self, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

from trackly_exec.store.documents import (
    ConfigTable,
    Filter,
    JsonObject,
)
from trackly_exec.store.models import QuietHours, Variant, storable_time
from trackly_exec.store.quiethours import check_timezone

MASK = "**********"
_SECRETISH = ("key", "token", "secret", "password", "auth", "sid", "url", "uri", "user")
_SHORT_CODE = re.compile(r"^[0-9]{3,8}$")
_ALPHA_SENDER = re.compile(r"^(?=.*[A-Za-z])[A-Za-z0-9 ._&-]{1,11}$")
SENDER_RULE = (
    "must be an E.164 number (+ and 8 to 15 digits), a short code (3 to 8 digits) or an alphanumeric "
    "sender id of at most 11 characters with at least one letter"
)
_ATTR_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]{0,63}$")
MAX_PAGE = 1000
INT64_MAX = 2**63 - 1
MAX_BULK_CONTACTS = 10_000


def mask_secrets(values: ConfigTable) -> ConfigTable:
    """A copy of ``values`` with every secret-looking key's value masked (nested dicts too)."""
    out: ConfigTable = {}
    for k, v in values.items():
        if isinstance(v, dict):
            out[k] = mask_secrets(v)
        elif v not in (None, "") and any(s in str(k).lower() for s in _SECRETISH):
            out[k] = MASK
        else:
            out[k] = v
    return out


_ANY_DATETIME = TypeAdapter(dt.datetime)


def _when(value: Any) -> Any:
    """A body's date as text, read as loosely as before the strict body check: an ISO 8601 date and time, or a
    date alone (its midnight); a number or a boolean is still refused."""
    if isinstance(value, str):
        try:
            return _ANY_DATETIME.validate_python(value)
        except ValidationError as exc:
            raise ValueError(exc.errors()[0]["msg"]) from None
    return value


def in_utc_range(value: dt.datetime | None) -> dt.datetime | None:
    """A date and time the store can hold: within years 1 to 9999 once in UTC (``9999-12-31T23:59:59-23:59`` is a
    valid ISO 8601 time that is not; the store's encoder overflowed on it, a 500)."""
    if value is not None and value.tzinfo is not None and not storable_time(value):
        raise ValueError("date out of range (years 1 to 9999 in UTC)")
    return value


#: A date and time in a request body (the body is read strictly: see ``routes.read_body``).
When = Annotated[dt.datetime, BeforeValidator(_when), AfterValidator(in_utc_range)]


#: The highest price per segment a sending list takes (a real one is cents): a typo's 1e308 made every estimate's
#: cost infinite, which JSON cannot carry.
MAX_PRICE = 1000.0


class Body(BaseModel):
    """Base of request bodies: unknown keys are errors, and so are non-finite numbers (inf, -inf, nan)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


_NULL = {"type": "null"}


class Patch(Body):
    """Base of PATCH bodies: a field left out is unchanged; ``null`` is taken only by the fields in ``NULLABLE``
    (it clears them: the PATCH route answers 422 "cannot be null" for any other), and the published schema says so."""

    NULLABLE: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        schema = handler.resolve_ref_schema(handler(core_schema))
        for name, prop in schema.get("properties", {}).items():
            variants = prop.get("anyOf")
            if name in cls.NULLABLE or not variants or _NULL not in variants:
                continue
            rest = [v for v in variants if v != _NULL]
            del prop["anyOf"]
            if len(rest) == 1:
                prop.update(rest[0])
            else:
                prop["anyOf"] = rest
            if "default" in prop and prop["default"] is None:
                del prop["default"]
        return schema


class Out(BaseModel):
    """Base of response bodies."""

    model_config = ConfigDict(extra="ignore")


# --------------------------------------------------------------------------------------------- errors


class ErrorDetail(Out):
    loc: str = Field(description='Where the problem is: "body.field.path" or "query.name".')
    msg: str
    type: str = ""


class ErrorOut(Out):
    error: str = Field(description="validation | bad_json | not_found | unauthorized | conflict | too_large | internal")
    message: str = ""
    details: list[ErrorDetail] = Field(default_factory=list)
    request_id: str | None = None
    execution_id: int | None = Field(
        None,
        description="A trigger's 409: the execution in the way (still evaluating or sending, or the completed "
        "run of a one-off campaign). Absent otherwise.",
    )


# --------------------------------------------------------------------------------------------- pages

T = TypeVar("T")


class Page(Out, Generic[T]):
    items: list[T]
    next_after: int | None = Field(None, description="Pass as `after` to get the next page; null on the last page.")


class PageQuery(Body):
    limit: int = Field(100, ge=1, le=MAX_PAGE, description="Items per page.")
    after: int = Field(
        0, ge=0, le=INT64_MAX, description="Only items with an id greater than this (the previous page's next_after)."
    )


class NamedQuery(PageQuery):
    """List filters of named resources (sending lists, audiences, creatives, campaigns)."""

    name: str | None = Field(
        None, min_length=1, max_length=200, description="Only items whose name contains this text (any case)."
    )
    archived: bool = Field(False, description="false: only active items (the default); true: only archived ones.")


def check_sender(v: str) -> str:
    """A valid sender: an E.164 number, a short code or an alphanumeric sender id (ValueError otherwise)."""
    import phonenumbers

    v = v.strip()
    if v.startswith("+"):
        digits = v[1:]
        ok = digits.isascii() and digits.isdigit() and 8 <= len(digits) <= 15
        if ok:
            try:
                ok = phonenumbers.is_possible_number(phonenumbers.parse(v, None))
            except phonenumbers.NumberParseException:
                ok = False
        if not ok:
            raise ValueError(f"{v!r} is not a possible E.164 number; {SENDER_RULE}")
        return v
    if v.isdigit():
        if not (v.isascii() and _SHORT_CODE.match(v)):
            raise ValueError(f"{v!r}: a long number needs its + and country code; {SENDER_RULE}")
        return v
    if not _ALPHA_SENDER.match(v):
        raise ValueError(SENDER_RULE)
    return v


def named(doc: Mapping[str, Any], noun: str) -> JsonObject:
    """``doc`` as an Out model's input: ``id`` from ``_id``, the default name for a record without one."""
    from trackly_exec.store.names import name_of

    return {**doc, "id": doc["_id"], "name": name_of(doc, noun)}


# --------------------------------------------------------------------------------------------- accounts


class AccountIn(Body):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "name": "Acme Shoes",
                    "balance": 500.0,
                    "webhook_url": "https://acme.example/sms-status",
                    "webhook_secret": "change-me-please",
                }
            ]
        },
    )

    name: str = Field(min_length=1, max_length=200)
    balance: float = Field(
        0.0, ge=0, le=1_000_000_000, allow_inf_nan=False, description="Prepaid balance debited per sent segment."
    )
    webhook_url: str | None = Field(
        None, pattern=r"^https?://", max_length=2000, description="Customer delivery-status webhook."
    )
    webhook_secret: str | None = Field(
        None, min_length=8, max_length=200, description="HMAC secret for the customer webhook (never returned)."
    )
    filter_bots: bool = Field(
        False, description="Click statistics exclude bot clicks; sent as `filterBots` in the customer webhook."
    )


class AccountPatch(Patch):
    """An account's name, customer webhook and bot filter; the balance changes by ``POST .../balance`` only."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"webhook_url": "https://acme.example/sms-status", "filter_bots": True}]},
    )
    NULLABLE = frozenset({"webhook_url", "webhook_secret"})

    name: str | None = Field(None, min_length=1, max_length=200)
    webhook_url: str | None = Field(
        None, pattern=r"^https?://", max_length=2000, description="Customer delivery-status webhook (null: none)."
    )
    webhook_secret: str | None = Field(
        None, min_length=8, max_length=200, description="HMAC secret for the customer webhook (never returned)."
    )
    filter_bots: bool | None = None


class BalanceChange(Body):
    """Credit (a top-up) or debit (a correction) an account's prepaid balance, atomically beside the executor's
    debits; a debit larger than the balance is refused (409)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"amount": 250.0, "note": "invoice 42"}]})

    amount: float = Field(
        description="Added to the balance (negative: taken off).",
        ge=-1_000_000_000,
        le=1_000_000_000,
        allow_inf_nan=False,
    )
    note: str | None = Field(None, max_length=500, description="Why, for the log.")


class AccountOut(Out):
    id: int
    name: str = ""
    balance: float = 0.0
    webhook_url: str | None = None
    webhook_secret: str | None = Field(None, description=f'"{MASK}" when set.')
    filter_bots: bool = False
    created_at: dt.datetime | None = None

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> AccountOut:  # a stored AccountDoc, validated here
        data = {**doc, "id": doc["_id"]}
        if data.get("webhook_secret"):
            data["webhook_secret"] = MASK
        return cls.model_validate(data)


# --------------------------------------------------------------------------------------------- sending lists


class QuietHoursIn(QuietHours):
    """Sending window in the contact's local time (TCPA: 08:00-21:00): a daytime window, ``start`` before ``end``
    (an empty one would hold every message for ever; one across midnight would text people at night)."""

    @model_validator(mode="after")
    def _daytime(self) -> Self:
        if self.start == self.end:
            raise ValueError(f"the sending window {self.start}-{self.end} is empty: nothing could ever be sent")
        if self.start > self.end:
            raise ValueError(
                f"the sending window {self.start}-{self.end} runs across midnight: it is the window in which "
                "messages may be sent (TCPA: 08:00-21:00), so it must start before it ends"
            )
        return self


class SendingListIn(Body):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "account_id": 1,
                    "name": "US promos",
                    "driver": "infobip",
                    "driver_settings": {},
                    "from_number": "+15550100999",
                    "cooldown_minutes": 1440,
                    "quiet_hours": {"start": "08:00", "end": "21:00", "default_timezone": "America/New_York"},
                    "price_per_segment": 0.0075,
                }
            ]
        },
    )

    account_id: int = Field(ge=1)
    name: str = Field(min_length=1, max_length=200)
    driver: str = Field(
        min_length=1,
        max_length=100,
        description="A driver instance ([drivers.NAME] in the config) or an installed driver.",
    )
    driver_settings: ConfigTable = Field(
        default_factory=dict,
        max_length=20,
        description="Tuning overrides laid over the instance's settings: only the keys the driver allows "
        "(batch_size; Infobip intermediate_reports; CM max_parts). Endpoints and credentials come from the "
        "config file; any other key is a 422 naming it.",
    )
    from_number: str = Field(description="E.164 number or alphanumeric sender id (up to 11 characters).")
    rate_limit_per_minute: int = Field(
        17000,
        ge=0,
        le=10_000_000,
        description="Messages per minute across every executor process (0: unlimited, as fast as the provider "
        "answers; its 429s are honoured).",
    )
    cooldown_minutes: float = Field(
        0, ge=0, le=525_600, description="Frequency cap: skip contacts sent to within this."
    )
    quiet_hours: QuietHoursIn = Field(default_factory=lambda: QuietHoursIn())
    blocked_words: list[str] = Field(default_factory=list, max_length=10_000)
    price_per_segment: float = Field(
        0.0, ge=0, le=MAX_PRICE, allow_inf_nan=False, description="Debited per segment sent, in the account's currency."
    )
    active: bool = True
    opt_out_footer: str | None = Field(None, max_length=160)
    help_text: str | None = Field(None, max_length=320)
    description: str | None = Field(None, max_length=2000)

    @field_validator("from_number")
    @classmethod
    def _sender(cls, v: str) -> str:
        return check_sender(v)


class SendingListOut(Out):
    id: int
    account_id: int
    name: str = ""
    driver: str
    driver_settings: ConfigTable = Field(default_factory=dict, description="Secret-looking values masked.")
    from_number: str = ""
    rate_limit_per_minute: int = 17000
    cooldown_minutes: float = 0
    quiet_hours: QuietHours = Field(default_factory=lambda: QuietHours())
    blocked_words: list[str] = Field(default_factory=list)
    price_per_segment: float = 0.0
    active: bool = True
    opt_out_footer: str | None = None
    help_text: str | None = None
    description: str | None = None
    archived: bool = False
    created_at: dt.datetime | None = None

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> SendingListOut:  # a stored SendingListDoc, validated here
        return cls.model_validate(
            {**named(doc, "sending list"), "driver_settings": mask_secrets(doc.get("driver_settings") or {})}
        )


# --------------------------------------------------------------------------------------------- contacts


class ContactIn(Body):
    """One contact row of a bulk upsert; only the fields given are changed on an existing contact."""

    phone: str | int = Field(description="Any format phonenumbers parses; stored as E.164.")
    first_name: str | None = Field(None, max_length=200)
    last_name: str | None = Field(None, max_length=200)
    attributes: JsonObject | None = Field(None, description="Merged key by key into the stored attributes.")
    timezone: str | None = Field(None, description="IANA zone; wins over the zone inferred from the number.")
    subscribed: bool | None = None
    blocked: bool | None = None
    in_workflow: bool | None = None
    last_sent_at: dt.datetime | None = Field(
        None,
        description="When this number was last texted, by another system you move from (a date and time; without an "
        "offset, UTC). On a list with a cooldown, a contact texted within it is skipped as frequency_cap; trackly's "
        "own sends count by their records (the message log), not by this field.",
    )

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str | None) -> str | None:
        return check_timezone(v)

    @field_validator("last_sent_at")
    @classmethod
    def _utc(cls, v: dt.datetime | None) -> dt.datetime | None:
        return in_utc_range(v.replace(tzinfo=dt.UTC) if v is not None and v.tzinfo is None else v)

    @field_validator("attributes")
    @classmethod
    def _attrs(cls, v: JsonObject | None) -> JsonObject | None:
        if v is not None:
            bad = [k for k in v if not _ATTR_KEY.match(k)]
            if bad:
                raise ValueError(f"attribute names must be letters, digits, _ or - (got {bad[0]!r})")
            if len(v) > 200:
                raise ValueError("at most 200 attributes")
        return v


#: What a row of a bulk body (``routes.read_body(rows=...)``) that the store could not keep is replaced with: its
#: reason, reported by the row's index (``contacts.parse_rows``).
INVALID_ROW = "__invalid_row__"


class ContactsBulkIn(Body):
    """Bulk upsert by (sending list, normalised phone). Bad rows are reported, good rows are kept."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "contacts": [
                        {
                            "phone": "(212) 555-0100",
                            "first_name": "Ava",
                            "timezone": "America/New_York",
                            "attributes": {"tier": "gold"},
                        },
                        {"phone": "+44 20 7946 0958", "subscribed": False},
                    ]
                }
            ]
        },
    )

    contacts: list[ContactIn] = Field(max_length=MAX_BULK_CONTACTS)
    default_region: str = Field("US", pattern=r"^[A-Z]{2}$", description="Region for numbers without a country code.")


class ContactsBulkRaw(Body):
    """What the server actually parses: rows are validated one by one so a bad row rejects only itself."""

    contacts: list[Any] = Field(max_length=MAX_BULK_CONTACTS)
    default_region: str = Field("US", pattern=r"^[A-Z]{2}$")


class RejectedRow(Out):
    index: int = Field(description="0-based position of the row in `contacts`.")
    reason: str
    phone: str | None = None


class ContactsBulkOut(Out):
    inserted: int
    updated: int
    rejected: list[RejectedRow]


class ContactOut(Out):
    id: int
    sending_list_id: int
    phone: str
    first_name: str | None = None
    last_name: str | None = None
    attributes: JsonObject = Field(default_factory=dict)
    timezone: str | None = None
    subscribed: bool = True
    blocked: bool = False
    in_workflow: bool = False
    last_sent_at: dt.datetime | None = Field(
        None, description="Set by an import (see the contacts upsert); trackly's own sends are in the message log."
    )
    created_at: dt.datetime | None = None
    updated_at: dt.datetime | None = None

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> ContactOut:  # a stored ContactDoc, validated here
        clean = {**doc, "id": doc["_id"]}
        # another tool's document: a number for a text is shown as its text, anything else of the wrong type not at all
        for key in ("phone", "first_name", "last_name", "timezone"):
            value = clean.get(key)
            if value is not None and not isinstance(value, str):
                scalar = isinstance(value, int | float) and not isinstance(value, bool) and key != "timezone"
                clean[key] = str(value) if scalar else ("" if key == "phone" else None)
        if not isinstance(clean.get("attributes", {}), dict):
            clean["attributes"] = {}
        return cls.model_validate(clean)


# --------------------------------------------------------------------------------------------- audiences


class AudienceIn(Body):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "sending_list_id": 1,
                    "name": "Gold tier",
                    "filter": {"and": [{"attributes.tier": {"eq": "gold"}}, {"in_workflow": {"eq": False}}]},
                }
            ]
        },
    )

    sending_list_id: int = Field(ge=1)
    name: str = Field(min_length=1, max_length=200)
    filter: Filter | None = Field(
        None,
        description='Over contact fields and attributes, e.g. {"and": [{"attributes.tier": {"eq": "gold"}}, '
        '{"subscribed": {"eq": true}}]}; operators eq, ne, in, nin, gt, gte, lt, lte, exists, and, or.',
    )
    contact_ids: list[int] | None = Field(
        None, max_length=1_000_000, description="Explicit contact ids instead of a filter."
    )
    description: str | None = Field(None, max_length=2000)

    @model_validator(mode="after")
    def _one_of(self) -> AudienceIn:
        if (self.filter is None) == (self.contact_ids is None):
            raise ValueError("give exactly one of filter or contact_ids")
        return self


class AudienceOut(Out):
    id: int
    sending_list_id: int
    name: str = ""
    filter: Filter | None = None
    contact_ids: list[int] | None = None
    description: str | None = None
    archived: bool = False

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> AudienceOut:  # a stored AudienceDoc, validated here
        return cls.model_validate(named(doc, "audience"))


# --------------------------------------------------------------------------------------------- creatives


class CreativeIn(Body):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "account_id": 1,
                    "name": "Spring sale",
                    "selection": "split",
                    "variants": [
                        {
                            "key": "a",
                            "body": "Hi {first_name|there}! 20% off today: https://shop.example.com/spring",
                            "weight": 50,
                        },
                        {
                            "key": "b",
                            "body": "{first_name|Hello}, your discount is waiting: https://shop.example.com/spring",
                            "weight": 50,
                        },
                    ],
                }
            ]
        },
    )

    account_id: int = Field(ge=1)
    name: str = Field(min_length=1, max_length=200)
    variants: list[Variant] = Field(
        min_length=1, max_length=26, description="Bodies may use {first_name}, {first_name|there}, {attributes.x}."
    )
    selection: Literal["split", "learned"] = Field(
        "split", description="split: by weight; learned: Thompson sampling on clicks."
    )
    description: str | None = Field(None, max_length=2000)

    @field_validator("variants")
    @classmethod
    def _variants(cls, v: list[Variant]) -> list[Variant]:
        keys = [x.key for x in v]
        if len(set(keys)) != len(keys):
            raise ValueError("variant keys must be unique")
        if sum(x.weight for x in v) <= 0:
            raise ValueError("at least one variant needs a weight above 0")
        return v


class CreativeOut(Out):
    id: int
    account_id: int
    name: str = ""
    variants: list[Variant] = Field(default_factory=list)
    selection: str = "split"
    description: str | None = None
    archived: bool = False

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> CreativeOut:  # a stored CreativeDoc, validated here
        return cls.model_validate(named(doc, "creative"))


class SendingListPatch(Patch):
    """What may change on a sending list (any time: queued messages keep what they were composed with). A new
    ``driver`` or ``driver_settings`` is checked like at creation (the driver configured or installed, the settings
    only the keys it lets a list override, built together); the executor sends through it from its next read of
    the list (within ``executor.list_cache_seconds``), messages already sent stay with their provider."""

    NULLABLE = frozenset({"description", "opt_out_footer", "help_text"})
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"name": "US promos (new number)", "from_number": "+15550100998", "blocked_words": ["casino"]}]
        },
    )

    name: str | None = Field(None, min_length=1, max_length=200)
    description: str | None = Field(None, max_length=2000)
    driver: str | None = Field(
        None,
        min_length=1,
        max_length=100,
        description="Another driver instance ([drivers.NAME] in the config) or installed driver; the list's "
        "driver_settings (or the ones given with it) are checked against it.",
    )
    driver_settings: ConfigTable | None = Field(
        None, max_length=20, description="New tuning overrides (replacing the old ones), checked like at creation."
    )
    from_number: str | None = None
    rate_limit_per_minute: int | None = Field(None, ge=0, le=10_000_000, description="0: unlimited.")
    cooldown_minutes: float | None = Field(None, ge=0, le=525_600)
    quiet_hours: QuietHoursIn | None = None
    blocked_words: list[str] | None = Field(None, max_length=10_000)
    price_per_segment: float | None = Field(None, ge=0, le=MAX_PRICE, allow_inf_nan=False)
    active: bool | None = None
    opt_out_footer: str | None = Field(None, max_length=160)
    help_text: str | None = Field(None, max_length=320)

    @field_validator("from_number")
    @classmethod
    def _sender(cls, v: str | None) -> str | None:
        return None if v is None else check_sender(v)


class AudiencePatch(Patch):
    """What may change on an audience: name and description always; its contacts only while no execution that
    uses it is running."""

    NULLABLE = frozenset({"description", "filter", "contact_ids"})
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"name": "Gold tier (NY)", "filter": {"attributes.tier": {"eq": "gold"}}}]},
    )

    name: str | None = Field(None, min_length=1, max_length=200)
    description: str | None = Field(None, max_length=2000)
    filter: Filter | None = None
    contact_ids: list[int] | None = Field(None, max_length=1_000_000)

    @model_validator(mode="after")
    def _not_both(self) -> AudiencePatch:
        if self.filter is not None and self.contact_ids is not None:
            raise ValueError("give at most one of filter or contact_ids")
        return self


class CreativePatch(Patch):
    """What may change on a creative: name and description always; variants and selection only while no
    running execution uses it (409 naming the execution otherwise)."""

    NULLABLE = frozenset({"description"})
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "variants": [
                        {
                            "key": "a",
                            "body": "Hi {first_name|there}! 25% off today: https://shop.example.com/spring",
                            "weight": 1,
                        }
                    ]
                }
            ]
        },
    )

    name: str | None = Field(None, min_length=1, max_length=200)
    description: str | None = Field(None, max_length=2000)
    variants: list[Variant] | None = Field(None, min_length=1, max_length=26)
    selection: Literal["split", "learned"] | None = None

    @field_validator("variants")
    @classmethod
    def _variants(cls, v: list[Variant] | None) -> list[Variant] | None:
        return None if v is None else CreativeIn._variants(v)


# Campaigns, executions and stats live in apimodels_campaigns.py; re-exported here so callers use one name.

__all__ = [
    "MASK",
    "AccountIn",
    "AccountOut",
    "AudienceIn",
    "AudienceOut",
    "AudiencePatch",
    "Body",
    "ContactIn",
    "ContactOut",
    "ContactsBulkIn",
    "ContactsBulkOut",
    "ContactsBulkRaw",
    "CreativeIn",
    "CreativeOut",
    "CreativePatch",
    "ErrorDetail",
    "ErrorOut",
    "NamedQuery",
    "Out",
    "Page",
    "PageQuery",
    "QuietHoursIn",
    "RejectedRow",
    "SendingListIn",
    "SendingListOut",
    "SendingListPatch",
    "check_sender",
    "check_timezone",
    "mask_secrets",
    "named",
]
