"""The stored documents, modelled with pydantic.

Entity ids (accounts, lists, contacts, audiences, creatives, campaigns, executions) are integers from the
``counters`` collection, as in the product document's webhook payload (``"account": 12``). Message ids are
strings; a message keeps its id from QueuedTextMessage to MessageSent or FailedMessage, where it is ``_id``,
so one message can never have two MessageSent records.

Field names are snake_case in MongoDB; the customer webhook uses the product document's camelCase.
"""

from __future__ import annotations

import datetime as dt
import enum
import hashlib
import secrets
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Literal, Self, cast

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from trackly_exec.store import constants as c
from trackly_exec.store.documents import (
    ClaimFields,
    ConfigTable,
    ExecutionDoc,
    FailedDoc,
    Filter,
    JsonObject,
    SentDoc,
)

#: A clock: what time it is (tz-aware UTC). The running application has one (``Trackly.clock``, default
#: :func:`utcnow`) and every component reads the time through it, so a test can set the time.
Clock = Callable[[], dt.datetime]


def utcnow() -> dt.datetime:
    """Now, in UTC, at millisecond precision (what BSON dates keep). The wall clock: the default of
    ``Trackly.clock``; components call ``trackly.now()`` instead (tests/test_clock.py keeps it so)."""
    now = dt.datetime.now(dt.UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def new_message_id() -> str:
    """A 16-hex-character random message id (unguessable, fits every provider's reference field)."""
    return secrets.token_hex(8)


class Document(BaseModel):
    """Base of stored documents: ``id`` is stored as ``_id``."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)
    collection: ClassVar[str] = ""

    def to_doc(self) -> Mapping[str, Any]:
        """The document to store (typed per collection by the subclasses that are written from a model)."""
        return self._doc()

    def _doc(self) -> JsonObject:
        doc = self.model_dump(mode="python", by_alias=False)
        doc["_id"] = doc.pop("id")
        return doc

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> Self:
        data = dict(doc)
        data["id"] = data.pop("_id")
        return cls.model_validate(data)


# --------------------------------------------------------------------------------------------- enums


class FailureReason(enum.StrEnum):
    STALE = "STALE"  # older than 30 minutes past its sendtime
    BLOCKED_CONTENT = "BLOCKED_CONTENT"  # contains a blocked word
    CONTACT_BLOCKED = "CONTACT_BLOCKED"  # unsubscribed or on the block list at send time
    RATE_LIMIT_TIMEOUT = "RATE_LIMIT_TIMEOUT"  # no rate-limit token within the configured wait
    PROVIDER_ERROR = "PROVIDER_ERROR"  # the provider refused, or transient errors outlasted the budget
    NO_RESPONSE = "NO_RESPONSE"  # outcome unknown: the provider may have accepted it
    BILLING_BLOCKED = "BILLING_BLOCKED"  # balance insufficient for 60 minutes
    CANCELLED = "CANCELLED"  # its campaign was cancelled by an operator before it was sent


#: Dead letters an operator chose (a cancel): not failures of a list, so no part of its error rate.
OPERATOR_REASONS = frozenset({FailureReason.CANCELLED})


class ExecutionStatus(enum.StrEnum):
    PENDING = "pending"
    EVALUATING = "evaluating"
    QUEUED = "queued"  # every message is queued; the executor takes it from here
    COMPLETED = "completed"  # nothing left in the queue for it
    FAILED = "failed"  # validation failed; see ``reason``
    SKIPPED = "skipped"  # occurrence too late (after downtime); see ``reason``


class CampaignStatus(enum.StrEnum):
    ACTIVE = "active"
    PAUSED = "paused"
    DONE = "done"


#: What cancel does, word for word the same in the CLI help, the OpenAPI document and the README.
CANCEL_DESCRIPTION = (
    "Cancel: stop the campaign for good. Paused first (claimed messages are held right before their send), then "
    "every message of it still in the queue is dead-lettered CANCELLED (re-drivable by naming that reason); a "
    "request already on the wire still goes. Done once nothing of it is left in the queue"
)

#: What pause and resume do, word for word the same in the CLI help, the OpenAPI document and the README.
PAUSE_DESCRIPTION = (
    "Pause: no new occurrences or triggers, and its queued messages wait (claimed ones too, held right before "
    "their send); nothing is re-sent or skipped"
)
RESUME_DESCRIPTION = (
    "Resume: the held messages are due again now, and the next cron occurrence is counted from now "
    "(no burst of missed ones); a message by then more than executor.stale_after_minutes (30) past its send time "
    "is dead-lettered STALE, not sent late (a re-drive naming STALE sends it anyway)"
)


# --------------------------------------------------------------------------------------------- entities


class Account(Document):
    collection: ClassVar[str] = c.ACCOUNTS
    id: int
    name: str
    balance: float = 0.0
    webhook_url: str | None = None
    webhook_secret: str | None = None
    filter_bots: bool = False  # the account's click stats exclude bot clicks; sent as `filterBots`
    created_at: dt.datetime = Field(default_factory=utcnow)


class QuietHours(BaseModel):
    model_config = ConfigDict(extra="forbid")
    start: str = Field("08:00", pattern=r"^([01]\d|2[0-3]):[0-5]\d$")
    end: str = Field("21:00", pattern=r"^([01]\d|2[0-3]):[0-5]\d$")
    default_timezone: str = "America/New_York"

    @field_validator("default_timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        from trackly_exec.store.quiethours import check_timezone

        return check_timezone(v) or v


class SendingList(Document):
    collection: ClassVar[str] = c.SENDING_LISTS
    id: int
    account_id: int
    name: str
    driver: str
    driver_settings: ConfigTable = Field(default_factory=dict)
    from_number: str
    rate_limit_per_minute: int = 17000
    cooldown_minutes: float = 0
    quiet_hours: QuietHours = Field(default_factory=QuietHours)
    blocked_words: list[str] = Field(default_factory=list)
    price_per_segment: float = 0.0
    active: bool = True
    opt_out_footer: str | None = None
    help_text: str | None = None
    description: str | None = None
    archived: bool = False  # retired: hidden from lists, cannot be used by a campaign
    created_at: dt.datetime = Field(default_factory=utcnow)


class Contact(Document):
    collection: ClassVar[str] = c.CONTACTS
    id: int
    sending_list_id: int
    phone: str  # E.164, normalised
    first_name: str | None = None
    last_name: str | None = None
    attributes: JsonObject = Field(default_factory=dict)
    timezone: str | None = None
    subscribed: bool = True
    blocked: bool = False
    in_workflow: bool = False
    last_sent_at: dt.datetime | None = None
    created_at: dt.datetime = Field(default_factory=utcnow)
    updated_at: dt.datetime = Field(default_factory=utcnow)


class Audience(Document):
    collection: ClassVar[str] = c.AUDIENCES
    id: int
    sending_list_id: int
    name: str
    filter: Filter | None = None  # whitelisted operators only (see audience.py)
    contact_ids: list[int] | None = None
    description: str | None = None
    archived: bool = False


class Variant(BaseModel):
    model_config = ConfigDict(extra="forbid")
    key: str = Field(min_length=1, max_length=64)
    body: str = Field(min_length=1)
    weight: float = Field(
        1.0,
        ge=0,
        description="The variant's share of the split, relative to the others' (percentages when they add up to 100; "
        "60 and 30 split 2:1, two-thirds and one-third); 0 switches it off.",
    )


class Creative(Document):
    collection: ClassVar[str] = c.CREATIVES
    id: int
    account_id: int
    name: str
    variants: list[Variant]
    selection: Literal["split", "learned"] = "split"
    description: str | None = None
    archived: bool = False


class Schedule(BaseModel):
    model_config = ConfigDict(extra="forbid")
    at: dt.datetime | None = None
    cron: str | None = None
    timezone: str = "UTC"


class Campaign(Document):
    collection: ClassVar[str] = c.CAMPAIGNS
    id: int
    name: str = ""  # "" on records made before names: shown as "campaign <id>"
    description: str | None = None
    account_id: int
    sending_list_id: int
    audience_ids: list[int]
    creative_id: int
    schedule: Schedule = Field(default_factory=Schedule)
    exclude_in_workflow: bool = False
    quiet_hours_policy: Literal["exclude", "hold"] = "exclude"
    track_links: bool = False
    status: CampaignStatus = CampaignStatus.ACTIVE
    next_run_at: dt.datetime | None = None
    end_at: dt.datetime | None = None  # a recurring campaign has no occurrence after this
    archived: bool = False  # retired: hidden from lists, cannot be triggered
    cancelled_at: dt.datetime | None = None  # an operator cancelled it for good (it cannot be resumed)
    created_at: dt.datetime = Field(default_factory=utcnow)


class Execution(Document):
    collection: ClassVar[str] = c.EXECUTIONS
    id: int
    campaign_id: int
    account_id: int
    sending_list_id: int
    occurrence_key: str  # unique: "<campaign>:<scheduled_for iso>" or "<campaign>:manual:<n>"
    scheduled_for: dt.datetime
    status: ExecutionStatus = ExecutionStatus.PENDING
    reason: str | None = None
    counts: JsonObject = Field(default_factory=dict)  # per_audience, overlap, unique, skipped{reason: n}, queued
    triggered_at: dt.datetime = Field(default_factory=utcnow)
    evaluated_at: dt.datetime | None = None
    queued_at: dt.datetime | None = None
    completed_at: dt.datetime | None = None
    lease_owner: str | None = None  # the evaluating process ("<instance>:<run id>")
    heartbeat_at: dt.datetime | None = None  # renewed every batch; stale -> another scheduler resumes it
    attempts: int = 0  # evaluation attempts (1 + resumes)
    message_key: str = Field(default_factory=lambda: secrets.token_hex(16))  # message ids = HMAC(key, contact id)

    def to_doc(self) -> ExecutionDoc:
        return cast("ExecutionDoc", self._doc())


# --------------------------------------------------------------------------------------------- messages


class MessageFields(BaseModel):
    """What every message record carries, from queue to MessageSent / FailedMessage."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    account_id: int
    sending_list_id: int
    campaign_id: int | None = None
    execution_id: int | None = None
    contact_id: int | None = None
    creative_id: int | None = None
    variant_key: str | None = None
    from_number: str
    to_number: str
    body: str
    length: int
    segments: int = 1
    encoding: Literal["GSM-7", "UCS-2"] = "GSM-7"
    send_type: str = "campaign"  # "campaign", or "test" (trackly_exec.campaigns.testsend)
    overrides: list[str] | None = None  # test sends only: checks lifted on request ("opt_out", "quiet_hours")
    sendtime: dt.datetime


def aware_time(value: object) -> dt.datetime | None:
    """``value`` as an aware datetime: a datetime (naive: UTC) or ISO 8601 text (``Z`` or an offset; none: UTC), as
    another tool may have stored one; None for anything else."""
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
    if not isinstance(value, dt.datetime):
        return None
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def storable_time(value: dt.datetime) -> bool:
    """Whether the store can hold ``value``: within years 1 to 9999 once in UTC (``9999-12-31T23:59:59-23:59`` is a
    valid ISO 8601 time that is not: the store's encoder overflows on it)."""
    try:
        value.astimezone(dt.UTC)
    except OverflowError:
        return False
    return True


def epoch_ms(t: dt.datetime) -> int:
    """``t`` in milliseconds since the epoch (a naive datetime is UTC, as PyMongo returns them)."""
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    return int(t.timestamp() * 1000)


def from_epoch_ms(ms: int | dt.datetime | None) -> dt.datetime | None:
    """The UTC datetime of epoch milliseconds ``ms`` (a datetime or None is returned as it is)."""
    if ms is None or isinstance(ms, dt.datetime):
        return ms
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC)


def due_ms(sendtime: dt.datetime, not_before: dt.datetime | None = None) -> int:
    """When a queued message is due, in epoch milliseconds: ``max(sendtime, not_before)``.

    Stored on every queued message (``due_ms``) beside the two datetimes it is made of, so the executor's due query
    is one indexed numeric range: ``{sending_list_id: {$eq: l}, claimed_by: None, due_ms: {$lte: now}}`` sorted by
    ``due_ms``, served by the ``(sending_list_id, claimed_by, due_ms)`` index on MongoDB and on nx-27017 alike
    (where a comparison against a datetime reads every matching document). Kept equal to ``max(sendtime,
    not_before)`` by every writer of ``not_before`` (``trackly_exec.executor.claims``)."""
    ms = epoch_ms(sendtime)
    return ms if not_before is None else max(ms, epoch_ms(not_before))


#: Slots a message id falls into (:func:`slot_of`): the executor's shares of the queue are ranges of slots.
SLOTS = 16**4


def slot_of(mid: str) -> int:
    """The queue slot of message id ``mid`` (0 .. SLOTS-1), stored on every queued message (``slot``).

    A hexadecimal id's first four digits (message ids are random or HMAC hexadecimal, so slots are even and a
    range of slots is a range of ids); any other id is hashed to a slot. Several executor processes share the
    queue out as contiguous ranges of slots (``trackly_exec.executor.claims.share_bounds``)."""
    head = mid[:4]
    if len(head) == 4 and all(ch in "0123456789abcdef" for ch in head):
        return int(head, 16)
    return int.from_bytes(hashlib.blake2b(mid.encode("utf-8", "surrogatepass"), digest_size=2).digest(), "big")


def entering_queue(
    mid: str,
    sendtime: dt.datetime,
    *,
    not_before: dt.datetime | None = None,
    claimed_by: str | None = None,
    claimed_at: dt.datetime | None = None,
) -> ClaimFields:
    """The claim fields of message ``mid`` entering the queue due at ``sendtime``: no send intent, held until
    ``not_before``, unclaimed (or already claimed by its writer until it is safe to send, e.g. a reconciliation's
    re-queue), with its due time (:func:`due_ms`) and queue slot (:func:`slot_of`).

    Every later change of ``claimed_by``, ``claimed_at``, ``sending_at``, ``not_before`` and ``due_ms`` is a
    transition written by ``trackly_exec.executor.claims`` only (fenced on the claim token;
    tests/test_claims_owner.py).
    """
    return {
        "not_before": not_before,
        "claimed_by": claimed_by,
        "claimed_at": None if claimed_at is None else epoch_ms(claimed_at),
        "sending_at": None,
        "due_ms": due_ms(sendtime, not_before),
        "slot": slot_of(mid),
    }


class QueuedTextMessage(MessageFields, Document):
    collection: ClassVar[str] = c.QUEUED
    id: str = Field(default_factory=new_message_id)
    created_at: dt.datetime = Field(default_factory=utcnow)
    not_before: dt.datetime | None = None  # backoff (billing, transient provider errors, quiet-hours hold)
    claimed_by: str | None = None  # claim token: "<instance>:<uuid>"; every later write is fenced on it
    claimed_at: int | None = None  # epoch ms (claims.LEASE: a number, cheaper for nx-27017 to set than a date)
    sending_at: int | None = None  # send intent, epoch ms: set (fenced) just before the provider call
    billing_blocked_since: dt.datetime | None = None
    paused: bool = False  # held because its campaign is paused (claims.pause_campaign)
    throttled_until: dt.datetime | None = None  # the not_before of a hold that keeps the due time (429s, a resume)
    throttled_due: dt.datetime | None = None  # ... and the due time it kept: staleness is counted from it
    attempts: int = 0
    #: the contact's stored phone is another spelling of ``to_number`` (written by another tool): a STOP from the
    #: number cannot find that contact, so the send-time re-check reads the number's own STOPs (``opt_outs``)
    number_stop: bool = False
    due_ms: int = -1  # max(sendtime, not_before) in epoch ms (:func:`due_ms`); computed when not given
    slot: int = -1  # :func:`slot_of` the id; computed when not given

    @model_validator(mode="after")
    def _queue_keys(self) -> Self:
        if self.due_ms < 0:
            self.due_ms = due_ms(self.sendtime, self.not_before)
        if self.slot < 0:
            self.slot = slot_of(self.id)
        return self


class MessageSent(MessageFields, Document):
    """Tristates: ``submitted`` None (not yet processed) / True (accepted) / False (rejected);
    ``delivered`` None (unknown) / True (delivered to handset) / False (delivery failed)."""

    collection: ClassVar[str] = c.SENT
    id: str
    submitted: bool | None = True
    delivered: bool | None = None
    provider: str
    provider_message_id: str | None = None
    cost: float = 0.0
    timestamp: dt.datetime = Field(default_factory=utcnow)  # when the provider accepted it
    delivery_status: str | None = None
    delivery_error_code: str | None = None
    delivered_at: dt.datetime | None = None
    spam: bool = False
    resolved_from_no_response: bool = False
    delivery_batch: str | None = None  # the report-ingestion call that last changed the delivery fields

    def to_doc(self) -> SentDoc:
        return cast("SentDoc", self._doc())


class FailedMessage(MessageFields, Document):
    collection: ClassVar[str] = c.FAILED
    id: str
    reason: FailureReason
    detail: str = ""
    provider: str | None = None
    provider_code: str | None = None
    ambiguous: bool = False  # NO_RESPONSE: the provider may have accepted it
    spam: bool = False  # PROVIDER_ERROR: the provider flagged it as carrier spam
    opted_out: bool = False  # PROVIDER_ERROR: the recipient had opted out at the provider
    failed_at: dt.datetime = Field(default_factory=utcnow)
    # NO_RESPONSE reconciliation (reconcile.py): when the send was attempted, when to ask the provider next
    # (None: not planned), the pass holding it, look-ups so far, and "pending" / "unsupported" / "expired" /
    # "releasing" (being handed back to the queue).
    attempted_at: dt.datetime | None = None
    reconcile_at: dt.datetime | None = None
    reconcile_by: str | None = None
    lookups: int = 0
    reconcile_state: str | None = None

    def to_doc(self) -> FailedDoc:
        return cast("FailedDoc", self._doc())


class MessageShortLink(Document):
    collection: ClassVar[str] = c.SHORT_LINKS
    id: str  # the short code
    message_id: str
    destination: str
    account_id: int
    campaign_id: int | None = None
    execution_id: int | None = None
    creative_id: int | None = None
    variant_key: str | None = None
    contact_id: int | None = None
    clicks: int = 0
    human_clicks: int = 0
    created_at: dt.datetime = Field(default_factory=utcnow)
