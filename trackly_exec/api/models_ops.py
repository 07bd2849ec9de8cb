"""Request and response bodies of the operations routes (message log, dead letters, customer-webhook outbox).

Nothing is masked here: the admin API is authenticated and an operator looking a number up needs the number.
"""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import ConfigDict, Field, model_validator

from trackly_exec.api.models import INT64_MAX, MAX_PAGE, Body, Out, When
from trackly_exec.store.documents import OutboxDoc
from trackly_exec.store.models import FailureReason

# --------------------------------------------------------------------------------------------- message log


class MessageQuery(Body):
    phone: str | None = Field(None, max_length=40, description="Phone number in any format (normalised to E.164).")
    region: str = Field(
        "US", min_length=2, max_length=2, description="Region of a phone number without a country code."
    )
    contact_id: int | None = Field(None, ge=1, le=INT64_MAX, description="Only this contact's messages.")
    campaign_id: int | None = Field(None, ge=1, le=INT64_MAX, description="Only this campaign's messages.")
    execution_id: int | None = Field(None, ge=1, le=INT64_MAX, description="Only this execution's messages.")
    state: Literal["queued", "sent", "failed"] | None = Field(None, description="Only messages in this state.")
    limit: int = Field(100, ge=1, le=MAX_PAGE, description="Messages per page.")
    after: str | None = Field(None, max_length=80, description="The previous page's next_after.")

    @model_validator(mode="after")
    def _one_filter(self) -> MessageQuery:
        if not (self.phone or self.contact_id or self.campaign_id or self.execution_id):
            raise ValueError("give at least one of phone, contact_id, campaign_id, execution_id")
        return self


class MessageOut(Out):
    message_id: str
    state: Literal["queued", "sent", "failed"]
    campaign_id: int | None = None
    execution_id: int | None = None
    sending_list_id: int | None = None
    contact_id: int | None = None
    to_number: str | None = None
    from_number: str | None = None
    variant_key: str | None = None
    send_type: str = "campaign"
    body: str | None = None
    segments: int | None = None
    encoding: str | None = None
    sendtime: dt.datetime | None = Field(None, description="When it was (or is) due.")
    sent_at: dt.datetime | None = Field(None, description="sent: when the provider accepted it.")
    submitted: bool | None = Field(None, description="sent: true accepted / false rejected / null not processed.")
    delivered: bool | None = Field(None, description="sent: true delivered / false not delivered / null no report yet.")
    delivery_status: str | None = None
    delivery_error_code: str | None = None
    delivered_at: dt.datetime | None = None
    provider: str | None = None
    provider_message_id: str | None = None
    cost: float | None = Field(None, description="sent: the amount debited (account currency).")
    reason: FailureReason | None = Field(None, description="failed: why.")
    detail: str | None = None
    failed_at: dt.datetime | None = None
    not_before: dt.datetime | None = Field(
        None, description="queued: held until (backoff, quiet hours); null while paused (no due time until resumed)."
    )
    held: Literal["paused", "redrive", "provider", "billing", "hold"] | None = Field(
        None,
        description="queued: what holds it: its campaign is paused, a re-drive is putting it back, provider errors' "
        "backoff, billing backoff, or another hold (quiet hours, a sendtime to come); null: due when its turn comes.",
    )
    clicks: int = 0
    human_clicks: int = 0


class MessagePage(Out):
    phone: str | None = Field(None, description="The normalised number searched for.")
    items: list[MessageOut]
    next_after: str | None = Field(None, description="Pass as `after` to get the next page; null on the last page.")


# --------------------------------------------------------------------------------------------- dead letters


ReasonName = Literal[
    "STALE",
    "BLOCKED_CONTENT",
    "CONTACT_BLOCKED",
    "RATE_LIMIT_TIMEOUT",
    "PROVIDER_ERROR",
    "NO_RESPONSE",
    "BILLING_BLOCKED",
    "CANCELLED",
]


class DeadLetterQuery(Body):
    reason: ReasonName | None = Field(None, description="Only this reason.")
    campaign_id: int | None = Field(None, ge=1, le=INT64_MAX, description="Only this campaign.")
    execution_id: int | None = Field(None, ge=1, le=INT64_MAX, description="Only this execution.")
    sending_list_id: int | None = Field(None, ge=1, le=INT64_MAX, description="Only this sending list.")
    since: When | None = Field(None, description="Failed at or after (ISO 8601 with a timezone).")
    until: When | None = Field(None, description="Failed before (ISO 8601 with a timezone).")
    limit: int = Field(100, ge=1, le=MAX_PAGE, description="Items per page.")
    after: str | None = Field(None, max_length=80, description="The previous page's next_after (a message id).")


class DeadLetterOut(Out):
    message_id: str
    reason: FailureReason
    detail: str = ""
    failed_at: dt.datetime | None = None
    campaign_id: int | None = None
    execution_id: int | None = None
    sending_list_id: int | None = None
    contact_id: int | None = None
    to_number: str | None = None
    provider: str | None = None
    provider_code: str | None = None
    ambiguous: bool = Field(False, description="NO_RESPONSE: the provider may have accepted it.")
    retryable: bool = Field(description="Can be re-driven (NO_RESPONSE only with allow_duplicates).")
    redrive: str = Field(
        "default",
        description="What a re-drive would do with it now: default (a plain re-drive takes it), by_reason (only "
        "when its reason is named: STALE), allow_duplicates (NO_RESPONSE), opted_out, contact_blocked or spam "
        "(skipped), no (never re-driven).",
    )


class DeadLetterPage(Out):
    items: list[DeadLetterOut]
    next_after: str | None = None


class DeadLetterSummary(Out):
    total: int = Field(description="FailedMessage records matching the filter (messages).")
    by_reason: dict[str, int] = Field(description="Messages per failure reason.")
    by_campaign: dict[str, int] = Field(description='Messages per campaign id ("-": no campaign).')
    retryable: int = Field(description="Messages a default re-drive would consider (messages).")


class RedriveIn(Body):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"reasons": ["PROVIDER_ERROR", "RATE_LIMIT_TIMEOUT"], "campaign_id": 3, "dry_run": True}]
        },
    )

    reasons: list[FailureReason] | None = Field(
        None,
        max_length=10,
        description="Reasons to re-drive (default RATE_LIMIT_TIMEOUT, BILLING_BLOCKED, PROVIDER_ERROR). STALE only "
        "when named; NO_RESPONSE only with allow_duplicates; BLOCKED_CONTENT and CONTACT_BLOCKED never.",
    )
    message_ids: list[str] | None = Field(None, max_length=10_000, description="Only these messages.")
    campaign_id: int | None = Field(None, ge=1, le=INT64_MAX)
    execution_id: int | None = Field(None, ge=1, le=INT64_MAX)
    sending_list_id: int | None = Field(None, ge=1, le=INT64_MAX)
    since: When | None = None
    until: When | None = None
    allow_duplicates: bool = Field(
        False,
        description="Required to re-drive NO_RESPONSE: the provider may have sent them already; a re-drive can "
        "text the person twice.",
    )
    dry_run: bool = Field(False, description="Count what would be re-driven; change nothing.")
    limit: int = Field(10_000, ge=1, le=1_000_000, description="At most this many FailedMessage records are looked at.")

    @model_validator(mode="after")
    def _checks(self) -> RedriveIn:
        reasons = set(self.reasons or [])
        never = reasons & {FailureReason.BLOCKED_CONTENT, FailureReason.CONTACT_BLOCKED}
        if never:
            raise ValueError(
                f"{', '.join(sorted(never))} is never re-driven (the message itself or the contact refuses it)"
            )
        if FailureReason.NO_RESPONSE in reasons and not self.allow_duplicates:
            raise ValueError(
                "NO_RESPONSE messages may already have been sent: re-driving them can text people twice; "
                "set allow_duplicates to true to do it anyway"
            )
        return self


class RedriveOut(Out):
    matched: int = Field(description="FailedMessage records looked at (messages).")
    requeued: int = Field(description="Messages queued again (their FailedMessage removed).")
    would_requeue: int = Field(0, description="dry_run: messages that would be queued again.")
    held_quiet_hours: int = Field(description="Of those, held until the recipient's quiet hours end (messages).")
    held_paused: int = Field(0, description="Of those, held because their campaign is paused (messages).")
    skipped: dict[str, int] = Field(description="Messages not re-driven, by why (opted_out, cooldown, ...).")
    message_ids: list[str] = Field(description="Ids re-driven (or, dry_run, that would be; first 1,000).")
    warnings: list[str] = Field(default_factory=list)
    dry_run: bool = False


# --------------------------------------------------------------------------------------------- outbox


class OutboxQuery(Body):
    status: Literal["pending", "dead", "delivered", "dropped", "split"] | None = Field(
        None, description="Only this status."
    )
    account_id: int | None = Field(None, ge=1, le=INT64_MAX, description="Only this account.")
    limit: int = Field(100, ge=1, le=MAX_PAGE, description="Items per page.")
    after: str | None = Field(None, max_length=200, description="The previous page's next_after (an entry id).")


class OutboxEntryOut(Out):
    id: str
    account_id: int | None = None
    status: str
    events: int = Field(description="Events in this entry (a batch holds several).")
    attempts: int = 0
    last_status: int | None = Field(None, description="HTTP status of the last attempt.")
    last_error: str | None = None
    created_at: dt.datetime | None = None
    last_attempt_at: dt.datetime | None = None
    next_attempt_at: dt.datetime | None = None


class OutboxPage(Out):
    items: list[OutboxEntryOut]
    next_after: str | None = None


class OutboxSummary(Out):
    by_status: dict[str, int] = Field(description="Entries per status.")
    pending_events: int = Field(description="Events waiting to be delivered (events).")
    dead_events: int = Field(description="Events given up on (events).")
    oldest_pending_at: dt.datetime | None = Field(None, description="Creation time of the oldest pending entry.")
    oldest_pending_age_seconds: float | None = Field(None, description="Age of the oldest pending entry (seconds).")
    due_now: int = Field(description="Pending entries due for an attempt now (entries).")


class OutboxRedriveIn(Body):
    ids: list[str] | None = Field(None, max_length=10_000, description="Only these entries (default: every dead one).")
    account_id: int | None = Field(None, ge=1, le=INT64_MAX, description="Only this account's dead entries.")
    limit: int = Field(10_000, ge=1, le=1_000_000)


class OutboxRedriveOut(Out):
    redriven: int = Field(description="Dead entries made pending again, due now (entries).")


def entry_out(doc: OutboxDoc) -> OutboxEntryOut:
    return OutboxEntryOut.model_validate(
        {
            **doc,
            "id": str(doc["_id"]),
            "events": len(doc["events"]) if "events" in doc else 1,
            "status": str(doc.get("status", "")),
        }
    )
