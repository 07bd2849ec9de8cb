"""Admin API bodies for campaigns, executions and campaign stats (re-exported by :mod:`trackly_exec.apimodels`)."""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from .apimodels import INT64_MAX, Body, Out, PageQuery, check_timezone
from .models import CampaignStatus, ExecutionStatus

# --------------------------------------------------------------------------------------------- campaigns


class ScheduleIn(Body):
    """Either ``{at}`` (once, now or later) or ``{cron, timezone}`` (recurring, DST-correct)."""

    at: dt.datetime | None = Field(None, description="ISO 8601 with an offset; now or in the future.")
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

    account_id: int = Field(ge=1)
    sending_list_id: int = Field(ge=1)
    audience_ids: list[int] = Field(min_length=1, max_length=100)
    creative_id: int = Field(ge=1)
    schedule: ScheduleIn | None = Field(None, description="Omit for a campaign that only runs when triggered.")
    exclude_in_workflow: bool = False
    quiet_hours_policy: Literal["exclude", "hold"] = Field(
        "exclude", description="exclude: skip contacts outside their window; hold: queue them for the window's opening."
    )
    track_links: bool = False


class CampaignOut(Out):
    id: int
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
    created_at: dt.datetime | None = None

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> CampaignOut:
        data = {**doc, "id": doc["_id"]}
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


class TriggerOut(Out):
    execution_id: int
    execution: ExecutionOut | None = None


# --------------------------------------------------------------------------------------------- executions


class ExecutionOut(Out):
    id: int
    campaign_id: int
    account_id: int
    sending_list_id: int
    occurrence_key: str = ""
    scheduled_for: dt.datetime | None = None
    status: ExecutionStatus = ExecutionStatus.PENDING
    reason: str | None = None
    counts: dict[str, Any] = Field(
        default_factory=dict,
        description="per_audience {id: n}, audience_total, overlap, unique, skipped {reason: n}, queued.",
    )
    triggered_at: dt.datetime | None = None
    evaluated_at: dt.datetime | None = None
    queued_at: dt.datetime | None = None
    completed_at: dt.datetime | None = None

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> ExecutionOut:
        return cls.model_validate({**doc, "id": doc["_id"]})


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
