"""The stored documents as they are in MongoDB (``TypedDict``: free at run time), and the names of the other
recurring shapes: a query :data:`Filter`, an :data:`Update`, a :data:`Projection` and a :data:`JsonObject`.

The pydantic models of :mod:`trackly_exec.store.models` validate what enters the store; these types say what a
function takes and returns once it holds the raw document (the executor's hot path never builds a model). A
field marked ``NotRequired`` is absent from some stored documents (written by only some writers, added later,
or left out by a projection); ``total=False`` documents are mostly read through projections. What is still
spelt ``dict[str, Any]`` in the package is neither a document nor a query (tests/test_hygiene.py counts them).
"""

from __future__ import annotations

import datetime as dt
from typing import Any, NotRequired, TypeAlias, TypedDict

from trackly_exec.config import ConfigTable as ConfigTable  # a raw configuration table (re-exported)

#: A MongoDB query filter (``{"_id": {"$in": ids}, "claimed_by": token}``).
Filter: TypeAlias = dict[str, Any]
#: A MongoDB update document (``{"$set": {...}, "$inc": {...}}``), or the fields of a ``$set``.
Update: TypeAlias = dict[str, Any]
#: A MongoDB aggregation pipeline (``[{"$match": ...}, {"$group": ...}]``).
Pipeline: TypeAlias = list[dict[str, Any]]
#: A MongoDB projection (``{"body": 0}``) or sort / index key specification.
Projection: TypeAlias = dict[str, Any]
#: A JSON object: a request or response body, an API payload, a provider's answer, an OpenAPI fragment.
JsonObject: TypeAlias = dict[str, Any]
#: A stored document of no particular collection (pymongo's document type; generic store helpers).
AnyDocument: TypeAlias = dict[str, Any]


# --------------------------------------------------------------------------------------------- entities


class AccountDoc(TypedDict, total=False):
    """``accounts`` (:class:`~trackly_exec.store.models.Account`)."""

    _id: int
    name: str
    balance: float
    webhook_url: str | None
    webhook_secret: str | None
    filter_bots: bool
    created_at: dt.datetime


class SendingListDoc(TypedDict, total=False):
    """``sending_lists`` (:class:`~trackly_exec.store.models.SendingList`)."""

    _id: int
    account_id: int
    name: str
    driver: str
    driver_settings: ConfigTable
    from_number: str
    rate_limit_per_minute: int
    cooldown_minutes: float
    quiet_hours: JsonObject  # QuietHours: start, end, default_timezone
    blocked_words: list[str]
    price_per_segment: float
    active: bool
    opt_out_footer: str | None
    help_text: str | None
    description: str | None
    archived: bool
    created_at: dt.datetime


class ContactDoc(TypedDict, total=False):
    """``contacts`` (:class:`~trackly_exec.store.models.Contact`)."""

    _id: int
    sending_list_id: int
    phone: str
    first_name: str | None
    last_name: str | None
    attributes: JsonObject
    timezone: str | None
    subscribed: bool
    blocked: bool
    in_workflow: bool
    last_sent_at: dt.datetime | None
    created_at: dt.datetime
    updated_at: dt.datetime
    phone_check: str | None  # written with ``phone`` by our code (store.phones.phone_check)


class AudienceDoc(TypedDict, total=False):
    """``audiences`` (:class:`~trackly_exec.store.models.Audience`)."""

    _id: int
    sending_list_id: int
    name: str
    filter: Filter | None
    contact_ids: list[int] | None
    description: str | None
    archived: bool


class VariantDoc(TypedDict):
    key: str
    body: str
    weight: float


class CreativeDoc(TypedDict, total=False):
    """``creatives`` (:class:`~trackly_exec.store.models.Creative`)."""

    _id: int
    account_id: int
    name: str
    variants: list[VariantDoc]
    selection: str  # "split" | "learned"
    description: str | None
    archived: bool


class ScheduleDoc(TypedDict, total=False):
    at: dt.datetime | None
    cron: str | None
    timezone: str


class CampaignDoc(TypedDict, total=False):
    """``campaigns`` (:class:`~trackly_exec.store.models.Campaign`)."""

    _id: int
    name: str
    description: str | None
    account_id: int
    sending_list_id: int
    audience_ids: list[int]
    creative_id: int
    schedule: ScheduleDoc
    exclude_in_workflow: bool
    quiet_hours_policy: str  # "exclude" | "hold"
    track_links: bool
    status: str  # CampaignStatus
    next_run_at: dt.datetime | None
    end_at: dt.datetime | None
    archived: bool
    cancelled_at: dt.datetime | None  # set by an operator's cancel (api/campaigns.py): done for good
    created_at: dt.datetime


class ExecutionDoc(TypedDict, total=False):
    """``executions`` (:class:`~trackly_exec.store.models.Execution`)."""

    _id: int
    campaign_id: int
    account_id: int
    sending_list_id: int
    occurrence_key: str
    scheduled_for: dt.datetime
    status: str  # ExecutionStatus
    reason: str | None
    counts: JsonObject
    triggered_at: dt.datetime
    evaluated_at: dt.datetime | None
    queued_at: dt.datetime | None
    completed_at: dt.datetime | None
    lease_owner: str | None
    heartbeat_at: dt.datetime | None
    attempts: int
    message_key: str
    # a test send's execution (trackly_exec.campaigns.testsend) only:
    kind: str  # "test"
    test_of_campaign: int | None
    creative_id: int
    variant_key: str | None
    overrides: list[str] | None
    dry_run: bool  # an estimate's execution (trackly_exec.campaigns.estimate): never stored


# --------------------------------------------------------------------------------------------- messages


class ClaimFields(TypedDict):
    """The claim fields of a queued message (:func:`~trackly_exec.store.models.entering_queue`); written later
    by ``trackly_exec.executor.claims`` only.

    A queue document literal that unpacks them (``**entering_queue(...)``) needs ``# type: ignore[typeddict-item]``:
    mypy's strict extra checks want every ``NotRequired`` key of :class:`QueuedDoc` in some ``**`` item, but a new
    message has no ``overrides``, ``paused`` or ``throttled_*`` field until a transition writes one."""

    not_before: dt.datetime | None
    claimed_by: str | None
    claimed_at: int | None  # epoch ms
    sending_at: int | None  # epoch ms
    due_ms: int
    slot: int


class MessageFieldsDoc(TypedDict):
    """Every field of :class:`~trackly_exec.store.models.MessageFields`, as a record copies them from its queued
    message (``trackly_exec.executor.outcomes``): each one present, ``None`` or its default when unset."""

    account_id: int
    sending_list_id: int
    campaign_id: int | None
    execution_id: int | None
    contact_id: int | None
    creative_id: int | None
    variant_key: str | None
    from_number: str
    to_number: str
    body: str
    length: int
    segments: int
    encoding: str
    send_type: str
    overrides: list[str] | None
    sendtime: dt.datetime


class MessageDoc(TypedDict):
    """What every message record carries, from the queue to MessageSent / FailedMessage
    (:class:`~trackly_exec.store.models.MessageFields`)."""

    _id: str
    account_id: int
    sending_list_id: int
    campaign_id: NotRequired[int | None]
    execution_id: NotRequired[int | None]
    contact_id: NotRequired[int | None]
    creative_id: NotRequired[int | None]
    variant_key: NotRequired[str | None]
    from_number: str
    to_number: str
    body: str
    length: int
    segments: int
    encoding: str  # "GSM-7" | "UCS-2"
    send_type: NotRequired[str]  # "campaign" | "test"
    overrides: NotRequired[list[str] | None]
    sendtime: dt.datetime


class MessageBase(TypedDict):
    """The fields an execution's queued messages share (:class:`trackly_exec.campaigns.compose.Composer`)."""

    account_id: int
    sending_list_id: int
    campaign_id: int | None
    execution_id: int | None
    creative_id: int | None
    from_number: str
    send_type: str


class QueuedDoc(MessageDoc):
    """``queued_text_messages`` (:class:`~trackly_exec.store.models.QueuedTextMessage`)."""

    created_at: NotRequired[dt.datetime]
    not_before: dt.datetime | None
    claimed_by: str | None
    claimed_at: int | None  # epoch ms (the claim's lease stamp)
    sending_at: int | None  # epoch ms (the send intent)
    due_ms: int  # max(sendtime, not_before) in epoch ms (models.due_ms): the executor's due query
    slot: int  # models.slot_of(_id): the executor processes' shares of the queue
    billing_blocked_since: NotRequired[dt.datetime | None]
    paused: NotRequired[bool]
    throttled_until: NotRequired[dt.datetime | None]
    throttled_due: NotRequired[dt.datetime | None]
    attempts: NotRequired[int]
    number_stop: NotRequired[bool]  # the contact's stored phone is another spelling of to_number (models)
    # re-driven from the dead letters (trackly_exec.executor.redrive)
    redrive_token: NotRequired[str]
    redriven_at: NotRequired[dt.datetime]
    redriven_from: NotRequired[str]
    redrive_count: NotRequired[int]


class ClaimedDoc(MessageDoc):
    """A queued message as the executor reads it when it claims it (``executor.claims.CLAIMED_FIELDS``): every
    field a record copies, and what the checks and the outcome need; not the claim bookkeeping (token, claim
    time, created_at, paused, attempts). A whole :class:`QueuedDoc` is one too."""

    not_before: dt.datetime | None
    due_ms: int
    sending_at: int | None
    billing_blocked_since: NotRequired[dt.datetime | None]
    throttled_until: NotRequired[dt.datetime | None]
    throttled_due: NotRequired[dt.datetime | None]
    redrive_count: NotRequired[int]
    number_stop: NotRequired[bool]


class SentDoc(MessageDoc):
    """``message_sent`` (:class:`~trackly_exec.store.models.MessageSent`): ``_id`` is the message id."""

    submitted: bool | None
    delivered: bool | None
    provider: str
    provider_message_id: str | None
    cost: float
    timestamp: dt.datetime
    delivery_status: str | None
    delivery_error_code: str | None
    delivered_at: dt.datetime | None
    spam: bool
    resolved_from_no_response: bool
    delivery_batch: NotRequired[str | None]


class FailedDoc(MessageDoc):
    """``failed_messages`` (:class:`~trackly_exec.store.models.FailedMessage`): ``_id`` is the message id."""

    reason: str  # FailureReason
    detail: str
    provider: str | None
    provider_code: str | None
    ambiguous: bool
    spam: bool
    opted_out: bool
    failed_at: dt.datetime
    attempted_at: NotRequired[dt.datetime | None]
    reconcile_at: NotRequired[dt.datetime | None]
    reconcile_by: NotRequired[str | None]
    lookups: NotRequired[int]
    reconcile_state: NotRequired[str | None]
    redrive_token: NotRequired[str]  # being re-driven (trackly_exec.executor.redrive)
    redrive_count: NotRequired[int]  # copied from the re-driven message that failed again (outcomes.failed_doc)


class DeliveryFields(TypedDict, total=False):
    """What a delivery report sets on a MessageSent (:mod:`trackly_exec.tracking.delivery`)."""

    delivery_status: str | None
    delivered: bool | None
    submitted: bool | None
    delivery_error_code: str | None
    delivered_at: dt.datetime | None
    spam: bool
    delivery_batch: str | None


#: A message record of either outcome (``message_sent`` or ``failed_messages``).
RecordDoc: TypeAlias = SentDoc | FailedDoc


class ShortLinkDoc(TypedDict):
    """``message_short_links`` (:class:`~trackly_exec.store.models.MessageShortLink`): ``_id`` is the code."""

    _id: str
    message_id: str
    destination: str
    account_id: int
    campaign_id: NotRequired[int | None]
    execution_id: NotRequired[int | None]
    creative_id: NotRequired[int | None]
    variant_key: NotRequired[str | None]
    contact_id: NotRequired[int | None]
    clicks: int
    human_clicks: int
    created_at: dt.datetime


# --------------------------------------------------------------------------------------------- after the send


class ClickDoc(TypedDict, total=False):
    """``link_clicks``: one click on a tracked link (:mod:`trackly_exec.tracking.clicks`)."""

    _id: str  # an ObjectId's hexadecimal text
    code: str
    message_id: str
    account_id: int | None
    campaign_id: int | None
    execution_id: int | None
    creative_id: int | None
    variant_key: str | None
    contact_id: int | None
    at: dt.datetime
    user_agent: str
    ip_hash: str | None
    bot: bool
    bot_reason: str | None


class ParkedReportDoc(TypedDict):
    """``delivery_reports``: a delivery report parked until its message is recorded (:mod:`tracking.parked`)."""

    _id: str
    provider: str
    message_id: str
    report: JsonObject  # DeliveryReport.model_dump()
    received_at: dt.datetime


class OutboxEventDoc(TypedDict):
    id: str
    payload: JsonObject


class OutboxDoc(TypedDict, total=False):
    """``webhook_outbox``: a customer-webhook delivery, a single event (``_id`` = event id, ``payload``) or a
    batch (``_id`` = ``batch:...``, ``events``) (:mod:`trackly_exec.tracking.customer_webhook`)."""

    _id: str
    message_id: str
    payload: JsonObject
    events: list[OutboxEventDoc]
    account_id: int
    status: str
    attempts: int
    created_at: dt.datetime
    next_attempt_at: dt.datetime
    claimed_by: str | None
    last_error: str | None
    last_status: int | None
    delivered_at: dt.datetime | None
    redriven_at: dt.datetime  # re-driven from dead (the admin API's outbox re-drive): its age restarts
    _account: AccountDoc  # joined in memory by the outbox when claimed: never stored
    _held_until: float  # the claim's lease deadline on the outbox's event-loop clock: never stored


class EventDoc(TypedDict, total=False):
    """``events``: an alert event (:class:`~trackly_exec.store.events.Event`)."""

    _id: Any  # ObjectId
    kind: str
    message: str
    severity: str
    data: JsonObject
    key: str
    created_at: dt.datetime


class InboundDoc(TypedDict, total=False):
    """``inbound_messages``: an inbound text (:mod:`trackly_exec.tracking.optout`)."""

    _id: str
    provider: str
    from_number: str
    to_number: str
    text: str
    keyword: str | None
    sending_list_ids: list[int]
    provider_message_id: str | None
    received_at: dt.datetime
    stored_at: dt.datetime


class ReservationDoc(TypedDict, total=False):
    """``send_reservations``: the cooldown reservation of a (sending list, phone) (:mod:`campaigns.reservations`)."""

    _id: str
    sending_list_id: int
    to_number: str
    contact_id: int | None
    execution_id: int | None
    campaign_id: int | None
    message_id: str
    reserved_at: dt.datetime
    state: str
    sent_at: dt.datetime | None


class RedriveDoc(TypedDict):
    """``redrives``: a dead-letter re-drive in progress (:mod:`trackly_exec.executor.redrive`)."""

    _id: str
    ids: list[str]
    at: dt.datetime
