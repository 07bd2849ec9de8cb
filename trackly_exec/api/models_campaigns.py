"""Admin API bodies for campaigns, executions and campaign stats (re-exported by :mod:`trackly_exec.api.models`)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from trackly_exec.api.models import INT64_MAX, Body, NamedQuery, Out, PageQuery, Patch, When, check_timezone, named
from trackly_exec.store.documents import JsonObject
from trackly_exec.store.models import CampaignStatus, ExecutionStatus

# --------------------------------------------------------------------------------------------- campaigns


class ScheduleIn(Body):
    """Either ``{at}`` (once, now or later) or ``{cron, timezone}`` (recurring, DST-correct)."""

    at: When | None = Field(None, description="ISO 8601 with an offset; now or in the future.")
    cron: str | None = Field(None, max_length=200, description='Five fields, e.g. "0 10 * * MON-FRI".')
    timezone: str = Field("UTC", description="IANA zone the cron expression is read in.")

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        return check_timezone(v) or "UTC"

    @field_validator("at")
    @classmethod
    def _aware(cls, v: dt.datetime | None) -> dt.datetime | None:
        if v is not None and v.tzinfo is None:
            raise ValueError("must include a timezone offset (e.g. 2026-01-15T10:30:00Z)")
        return v

    @model_validator(mode="after")
    def _one_of(self) -> ScheduleIn:
        if (self.at is None) == (self.cron is None):
            raise ValueError("give exactly one of at or cron")
        return self


class ScheduleOut(Out):
    at: dt.datetime | None = None
    cron: str | None = None
    timezone: str = "UTC"


class CampaignIn(Body):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "account_id": 1,
                    "sending_list_id": 1,
                    "audience_ids": [1, 2],
                    "creative_id": 1,
                    "schedule": {"cron": "0 10 * * MON-FRI", "timezone": "America/New_York"},
                    "exclude_in_workflow": True,
                    "quiet_hours_policy": "exclude",
                    "track_links": True,
                }
            ]
        },
    )

    name: str | None = Field(
        None,
        min_length=1,
        max_length=200,
        description='Shown in the CLI, stats, dashboard and alerts (default "campaign <id>").',
    )
    description: str | None = Field(None, max_length=2000)
    account_id: int = Field(ge=1)
    sending_list_id: int = Field(ge=1)
    audience_ids: list[int] = Field(min_length=1, max_length=100)
    creative_id: int = Field(ge=1)
    schedule: ScheduleIn | None = Field(None, description="Omit for a campaign that only runs when triggered.")
    end_at: When | None = Field(
        None,
        description="A recurring campaign has no occurrence after this (ISO 8601 with an offset); it is then done.",
    )
    exclude_in_workflow: bool = False
    quiet_hours_policy: Literal["exclude", "hold"] = Field(
        "exclude", description="exclude: skip contacts outside their window; hold: queue them for the window's opening."
    )
    track_links: bool = False

    @field_validator("end_at")
    @classmethod
    def _end_aware(cls, v: dt.datetime | None) -> dt.datetime | None:
        if v is not None and v.tzinfo is None:
            raise ValueError("must include a timezone offset (e.g. 2026-12-31T23:59:00Z)")
        return v


class CampaignOut(Out):
    id: int
    name: str = ""
    description: str | None = None
    account_id: int
    sending_list_id: int
    audience_ids: list[int]
    creative_id: int
    schedule: ScheduleOut | None = Field(None, description="null: runs only when triggered.")
    exclude_in_workflow: bool = False
    quiet_hours_policy: str = "exclude"
    track_links: bool = False
    status: CampaignStatus = CampaignStatus.ACTIVE
    next_run_at: dt.datetime | None = None
    end_at: dt.datetime | None = None
    archived: bool = False
    cancelled_at: dt.datetime | None = Field(None, description="When it was cancelled for good (POST .../cancel).")
    created_at: dt.datetime | None = None

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> CampaignOut:  # a stored CampaignDoc, validated here
        data = named(doc, "campaign")
        sched = data.get("schedule") or {}
        data["schedule"] = sched if (sched.get("at") or sched.get("cron")) else None
        return cls.model_validate(data)


class TriggerIn(Body):
    """Optional body of a trigger (an empty body is the same as ``{}``)."""

    force: bool = Field(
        False,
        description=(
            "Run a one-off campaign (no cron) that has already run once more. The list's cooldown still applies. "
            "Never overrides an execution that is still evaluating or sending (that answers 409)."
        ),
    )


class TriggerQuery(Body):
    force: bool = Field(False, description="Same as the body's `force` (either one is enough).")
    wait: bool = Field(
        False,
        description="Answer only once the execution is queued (or failed): minutes for "
        "millions of contacts. Default: answer at once.",
    )


class TriggerOut(Out):
    execution_id: int
    execution: ExecutionOut | None = None


class EstimateOut(Out):
    """What a run of the campaign started now would do, computed by the same code as a real run."""

    campaign_id: int
    name: str = ""
    sending_list_id: int
    counts: JsonObject = Field(
        description="As an execution's counts: per_audience {id: n}, audience_total, "
        "overlap, duplicate_handsets, unique, skipped {reason: n}, queued, held_quiet_hours, "
        "segments, encodings {GSM-7|UCS-2: n}, variants {key: n}, links."
    )
    queued: int = Field(description="Messages a run would queue.")
    segments: int = Field(description="SMS segments of those messages (each is billed).")
    price_per_segment: float = Field(description="The sending list's price per segment.")
    cost: float = Field(description="segments x price_per_segment, in the account's currency.")
    balance: float = Field(description="The account's balance now.")
    estimated_at: dt.datetime


class PreviewIn(Body):
    """Whom to render a creative for: given contacts, or the first ``sample`` of an audience (or of a list)."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"audience_id": 1, "sample": 3, "track_links": True}]}
    )

    sending_list_id: int | None = Field(
        None,
        ge=1,
        le=INT64_MAX,
        description="The list (its price, footer, blocked words, contacts); "
        "default: the audience's or the contacts' list.",
    )
    audience_id: int | None = Field(None, ge=1, le=INT64_MAX, description="Sample contacts of this audience.")
    contact_ids: list[int] | None = Field(None, min_length=1, max_length=50, description="Render for these contacts.")
    sample: int = Field(3, ge=1, le=20, description="How many contacts of the audience (or list) to render for.")
    track_links: bool = Field(False, description="Show URLs as tracked short links.")
    scan_limit: int = Field(
        100_000, ge=1, le=10_000_000, description="Contacts scanned for missing placeholder values."
    )


class CampaignPreviewIn(Body):
    """A campaign's creative rendered for its list: for given contacts, or a sample of one of its audiences."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"sample": 3}]})

    audience_id: int | None = Field(
        None, ge=1, le=INT64_MAX, description="One of the campaign's audiences (default: its first)."
    )
    contact_ids: list[int] | None = Field(None, min_length=1, max_length=50)
    sample: int = Field(3, ge=1, le=20)
    scan_limit: int = Field(100_000, ge=1, le=10_000_000)


class PreviewLink(Out):
    destination: str
    short_url: str = Field(description="An example: every queued message gets its own code.")


class BlockedWord(Out):
    word: str
    source: str = Field(description="list (the sending list's blocked_words) or global (executor.blocked_words).")


class CancelOut(Out):
    id: int
    status: str = Field(description="done when nothing of it is left in the queue; paused while some is claimed.")
    cancelled: int = Field(description="Queued messages dead-lettered CANCELLED by this call.")
    still_claimed: int = Field(
        description="Messages an executor still held after the wait: given back at their re-check; cancel again."
    )
    evaluating: bool = Field(
        description="An execution of it is still evaluating (it queues paused messages): cancel again once it is done."
    )


class PreviewSample(Out):
    contact_id: int
    phone: str
    body: str | None = Field(None, description="Exactly what would be queued (placeholders, links, footer).")
    length: int | None = Field(None, description="In the encoding's unit: GSM-7 septets or UTF-16 code units.")
    encoding: str | None = Field(None, description="GSM-7 or UCS-2.")
    segments: int | None = None
    cost: float | None = Field(None, description="segments x the list's price_per_segment.")
    links: list[PreviewLink] = Field(default_factory=list)
    blocked_words: list[BlockedWord] = Field(
        default_factory=list, description="Blocked words in this body: it would be dead-lettered."
    )
    skipped: str | None = Field(
        None,
        description="Why this contact would not be texted now (the evaluation's skip reasons: missing_placeholder, "
        "invalid_phone, unsubscribed, in_workflow, frequency_cap, quiet_hours); the body is shown all the same.",
    )
    held_until: dt.datetime | None = Field(
        None, description="Outside its quiet-hours window, held until it opens (the campaign holds rather than skips)."
    )
    missing: list[str] = Field(default_factory=list, description="Placeholders without a value and without a default.")


class PreviewPlaceholder(Out):
    name: str
    default: str | None = None
    known: bool = Field(description="A contact field, or an attribute seen on the list's contacts (false: a typo?).")
    suggestion: str | None = Field(None, description="The closest known field name.")
    missing: int = Field(description="Scanned contacts without a value for it.")
    would_skip: int = Field(description="Of those, skipped because it has no default.")


class PreviewVariant(Out):
    key: str
    weight: float
    template: str
    placeholders: list[PreviewPlaceholder]
    blocked_words: list[BlockedWord] = Field(description="Blocked words in the variant's own text.")
    would_skip: int = Field(description="Scanned contacts this variant would skip (missing_placeholder).")
    samples: list[PreviewSample]


class PreviewOut(Out):
    creative_id: int
    name: str
    sending_list_id: int
    audience_id: int | None = None
    price_per_segment: float
    track_links: bool
    known_fields: list[str] = Field(description="Contact fields and the attribute keys sampled on the list.")
    scanned: int = Field(description="Contacts scanned for missing placeholder values.")
    scan_complete: bool = Field(description="False when the audience is larger than scan_limit.")
    variants: list[PreviewVariant]
    warnings: list[str] = Field(description="Everything above that would skip or dead-letter messages, in words.")


class CampaignPatch(Patch):
    """What may change on a campaign. ``name`` and ``description`` always; the rest only while no execution of
    it is running (pending, evaluating or queued): 409 naming the execution otherwise."""

    NULLABLE = frozenset({"description", "schedule", "end_at"})
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"name": "Spring sale (week 2)", "creative_id": 2, "end_at": "2026-06-30T23:59:00Z"}]
        },
    )

    name: str | None = Field(None, min_length=1, max_length=200)
    description: str | None = Field(None, max_length=2000)
    audience_ids: list[int] | None = Field(None, min_length=1, max_length=100)
    creative_id: int | None = Field(None, ge=1, le=INT64_MAX)
    schedule: ScheduleIn | None = Field(None, description="null: runs only when triggered.")
    end_at: When | None = Field(None, description="null: no end.")
    exclude_in_workflow: bool | None = None
    quiet_hours_policy: Literal["exclude", "hold"] | None = None
    track_links: bool | None = None

    @field_validator("end_at")
    @classmethod
    def _end_aware(cls, v: dt.datetime | None) -> dt.datetime | None:
        if v is not None and v.tzinfo is None:
            raise ValueError("must include a timezone offset (e.g. 2026-12-31T23:59:00Z)")
        return v


class ContactEraseOut(Out):
    contact_id: int
    queued_dead_lettered: int = Field(description="Unclaimed queued messages recorded CONTACT_BLOCKED (redacted).")
    in_flight: int = Field(description="Messages being sent right now: erase again once they are done.")
    sent_redacted: int
    failed_redacted: int
    inbound_redacted: int
    outbox_redacted: int
    events_redacted: int
    links_redacted: int = Field(0, description="Tracked links cut to their destination's origin.")


class CampaignTestSendIn(Body):
    """Text the campaign's creative to a few numbers now, through the executor (``sendType`` "test")."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"numbers": ["+12125550100"], "variant": "a"}]}
    )

    numbers: list[str] = Field(min_length=1, max_length=10, description="Any format phonenumbers parses.")
    variant: str | None = Field(None, max_length=64, description="Variant key (default: the first with a weight).")
    contact_id: int | None = Field(
        None,
        ge=1,
        le=INT64_MAX,
        description="Fill placeholders from this contact for numbers that are not contacts of the list.",
    )
    default_region: str = Field("US", pattern=r"^[A-Z]{2}$")
    override_opt_out: bool = Field(False, description="Send even to a number that unsubscribed (recorded).")
    override_quiet_hours: bool = Field(False, description="Send now even outside the quiet-hours window (recorded).")


class TestSendIn(CampaignTestSendIn):
    """Text a creative's variant through a sending list to a few numbers (``sendType`` "test")."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"creative_id": 1, "numbers": ["+12125550100"], "track_links": True}]},
    )
    __test__ = False  # (not a pytest test class)

    creative_id: int = Field(ge=1, le=INT64_MAX)
    track_links: bool = False


class TestSendMessage(Out):
    __test__ = False

    to_number: str
    contact_id: int | None = None
    message_id: str | None = Field(None, description="The queued message (null when skipped).")
    skipped: str | None = Field(None, description="unsubscribed: the number is an opted-out contact of the list.")
    held_until: dt.datetime | None = Field(None, description="Outside the quiet-hours window: queued for its opening.")
    body: str | None = None
    segments: int | None = None
    encoding: str | None = None


class TestSendOut(Out):
    __test__ = False

    execution_id: int = Field(description="The test execution (GET /executions/{id}); completed once sent.")
    variant: str
    overrides: list[str] = Field(description="The checks lifted on request, recorded on every message.")
    messages: list[TestSendMessage]


# --------------------------------------------------------------------------------------------- executions


class ExecutionOut(Out):
    id: int
    campaign_id: int = Field(description="0 for a test send.")
    kind: str = Field("campaign", description='"campaign", or "test" for a test send.')
    test_of_campaign: int | None = Field(None, description="The campaign a test send was made from.")
    account_id: int
    sending_list_id: int
    occurrence_key: str = ""
    scheduled_for: dt.datetime | None = None
    status: ExecutionStatus = ExecutionStatus.PENDING
    reason: str | None = None
    counts: JsonObject = Field(
        default_factory=dict,
        description="per_audience {id: n}, audience_total, overlap, duplicate_handsets, unique, skipped {reason: n}, "
        "queued, "
        "held_quiet_hours, segments, encodings {GSM-7|UCS-2: n}, variants {key: n}; while evaluating: "
        "evaluated (contacts so far) of expected (the audiences' size).",
    )
    triggered_at: dt.datetime | None = None
    evaluated_at: dt.datetime | None = None
    queued_at: dt.datetime | None = None
    completed_at: dt.datetime | None = None

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> ExecutionOut:  # a stored ExecutionDoc, validated here
        return cls.model_validate({**doc, "id": doc["_id"]})


class CampaignQuery(NamedQuery):
    # (a Literal, not the enum: query parameters are inlined in the OpenAPI document, without $defs)
    status: Literal["active", "paused", "done"] | None = Field(None, description="Only campaigns in this state.")


class ExecutionQuery(PageQuery):
    campaign_id: int | None = Field(None, ge=1, le=INT64_MAX, description="Only this campaign's executions.")


# --------------------------------------------------------------------------------------------- stats


class ClickStats(Out):
    all: int = 0
    human: int = 0


class VariantStats(Out):
    sent: int = 0
    delivered: int = 0
    undelivered: int = 0
    failed: int = 0
    clicks: ClickStats = Field(default_factory=ClickStats)


class CampaignStatsOut(Out):
    campaign_id: int
    name: str = Field("", description='The campaign\'s name ("campaign <id>" when it has none).')
    executions: int
    queued: int = Field(description="Messages waiting in the queue now.")
    sent: int = Field(description="Accepted by the provider (MessageSent).")
    delivered: int
    undelivered: int = Field(description="Delivery report said not delivered.")
    delivery_pending: int
    failed: dict[str, int] = Field(description="FailedMessage count by reason.")
    clicks: ClickStats
    per_variant: dict[str, VariantStats]


TriggerOut.model_rebuild()
