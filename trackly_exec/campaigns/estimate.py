"""Estimate (dry run): evaluate a campaign without queuing anything.

The same code as a real run (:func:`trackly_exec.campaigns.evaluation.load_plan` and
:func:`~trackly_exec.campaigns.evaluation.evaluate`), with the queue insert replaced by
:func:`~trackly_exec.campaigns.evaluation.dry_run_sink`: per audience, overlap, unique, skipped by reason, queued,
held for quiet hours, segments and encodings are exactly what a run started now would count (contacts,
opt-outs and the clock permitting). Cost is ``segments x`` the list's ``price_per_segment``.

A split creative's variant choice depends on the execution id, so ``variants`` (and, when the variants'
segment counts differ, ``segments``) is a sample of the split, not the split the run will draw.
"""

from __future__ import annotations

import secrets
from typing import Any

from trackly_exec.campaigns.evaluation import dry_run_sink, evaluate, load_plan
from trackly_exec.errors import TracklyError
from trackly_exec.store import constants as c
from trackly_exec.store.documents import CampaignDoc, ExecutionDoc, JsonObject
from trackly_exec.store.names import name_of

DRY_RUN_EXECUTION_ID = 0  # never a real execution id (the counters start at 1)


class CannotRun(TracklyError):
    """The campaign would fail validation; the message says why (what the execution's reason would be)."""


async def estimate(trackly: Any, campaign: CampaignDoc) -> JsonObject:
    """The counts a run of ``campaign`` now would record, plus segments and cost; :class:`CannotRun` if it
    would fail validation."""
    now = trackly.now()
    execution: ExecutionDoc = {
        "_id": DRY_RUN_EXECUTION_ID,
        "campaign_id": campaign["_id"],
        "account_id": campaign["account_id"],
        "sending_list_id": campaign["sending_list_id"],
        "scheduled_for": now,
        "dry_run": True,
        "message_key": secrets.token_hex(16),  # (a real execution gets its own; nothing is stored here)
    }
    plan, reason = await load_plan(trackly, campaign, execution)
    if plan is None:
        raise CannotRun(reason)
    tally = await evaluate(trackly, plan, sink=dry_run_sink)
    counts = tally.as_counts()
    for k in ("inserted", "already_queued", "already_processed", "seconds"):
        counts.pop(k, None)
    price = float(plan.sending_list.get("price_per_segment") or 0.0)
    balance = await trackly.db[c.ACCOUNTS].find_one({"_id": campaign["account_id"]}, {"balance": 1})
    return {
        "campaign_id": campaign["_id"],
        "name": name_of(campaign, "campaign"),
        "sending_list_id": plan.sending_list["_id"],
        "counts": counts,
        "queued": tally.queued,
        "segments": tally.segments,
        "price_per_segment": price,
        "cost": round(tally.segments * price, 6),
        "balance": float((balance or {}).get("balance") or 0.0),
        "estimated_at": now,
    }
