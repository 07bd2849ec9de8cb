"""Live counts read from the store: per campaign and overall (dashboard, metrics, ``trackly stats``).

Each figure is one grouped query per collection, so the cost does not grow with the number of campaigns
shown. Rates follow the product document's "Metrics" table: send rate (messages per second over the last
minute), delivery rate (% of sent confirmed delivered), failure rate (% of processed that failed), click
rate (% of sent with a human click).
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict

from trackly_exec.store import constants as c
from trackly_exec.store.client import Store
from trackly_exec.store.client import count as store_count
from trackly_exec.store.documents import Filter, JsonObject, Pipeline
from trackly_exec.store.models import OPERATOR_REASONS, FailureReason


async def _group(store: Store, coll: str, match: Filter, key: str, cond: Filter | None = None) -> dict[int, int]:
    pipeline: Pipeline = [{"$match": match}, {"$group": {"_id": f"${key}", "n": {"$sum": 1}}}]
    out: dict[int, int] = {}
    async for row in await store.db[coll].aggregate(pipeline):
        k = row["_id"]
        if k is None:
            continue
        try:
            out[int(k)] = out.get(int(k), 0) + int(row["n"])
        except (TypeError, ValueError):
            continue
    return out


async def _clicked_messages(store: Store, scope: Filter) -> dict[int, int]:
    """Messages with at least one human click, per campaign (a message clicked ten times counts once)."""
    pipeline: Pipeline = [
        {"$match": {**scope, "bot": False}},
        {"$group": {"_id": "$message_id", "campaign_id": {"$first": "$campaign_id"}}},
        {"$group": {"_id": "$campaign_id", "n": {"$sum": 1}}},
    ]
    out: dict[int, int] = {}
    async for row in await store.db[c.CLICKS].aggregate(pipeline):
        if isinstance(row["_id"], int):
            out[row["_id"]] = int(row["n"])
    return out


async def campaign_stats(store: Store, campaign_ids: list[int] | None = None) -> dict[int, JsonObject]:
    """``{campaign_id: {queued, sent, delivered, undelivered, failed, failed_by_reason, clicks, human_clicks,
    clicked_messages, delivery_rate, failure_rate, click_rate}}``; the click rate is the share of sent messages with a
    human click (``clicked_messages``), not of clicks."""
    scope: Filter = {"campaign_id": {"$in": campaign_ids}} if campaign_ids is not None else {"campaign_id": {"$gte": 0}}
    queued = await _group(store, c.QUEUED, scope, "campaign_id")
    sent = await _group(store, c.SENT, scope, "campaign_id")
    delivered = await _group(store, c.SENT, {**scope, "delivered": True}, "campaign_id")
    undelivered = await _group(store, c.SENT, {**scope, "delivered": False}, "campaign_id")
    clicks = await _group(store, c.CLICKS, scope, "campaign_id")
    human = await _group(store, c.CLICKS, {**scope, "bot": False}, "campaign_id")
    clicked = await _clicked_messages(store, scope)
    failed_by: dict[int, dict[str, int]] = defaultdict(dict)
    for reason in FailureReason:  # one group per reason: nx-27017 cannot group by a compound key
        for cid, n in (await _group(store, c.FAILED, {**scope, "reason": reason.value}, "campaign_id")).items():
            failed_by[cid][reason.value] = n
    ids = set(queued) | set(sent) | set(failed_by) | set(campaign_ids or [])
    out: dict[int, JsonObject] = {}
    for cid in sorted(ids):
        s, f = sent.get(cid, 0), sum(failed_by.get(cid, {}).values())
        out[cid] = {
            "queued": queued.get(cid, 0),
            "sent": s,
            "delivered": delivered.get(cid, 0),
            "undelivered": undelivered.get(cid, 0),
            "failed": f,
            "failed_by_reason": dict(failed_by.get(cid, {})),
            "clicks": clicks.get(cid, 0),
            "human_clicks": human.get(cid, 0),
            "clicked_messages": clicked.get(cid, 0),
            "delivery_rate": round(100.0 * delivered.get(cid, 0) / s, 2) if s else 0.0,
            "failure_rate": round(100.0 * f / (s + f), 2) if s + f else 0.0,
            "click_rate": round(100.0 * min(clicked.get(cid, 0), s) / s, 2) if s else 0.0,
        }
    return out


async def count(store: Store, coll: str, query: Filter) -> int:
    """The number of ``coll`` documents matching ``query`` (the ``count`` command: see :func:`store.client.count`)."""
    return await store_count(store.db, coll, query)


async def overview(store: Store, now: dt.datetime, window_seconds: int = 60) -> JsonObject:
    """Totals across every campaign, plus the send rate over the last ``window_seconds``."""
    since = now - dt.timedelta(seconds=window_seconds)
    sent_total = await count(store, c.SENT, {})
    recent = await count(store, c.SENT, {"timestamp": {"$gte": since}})
    # an operator's cancel is not a failure rate (counted by reason below like any dead letter)
    failed_recent = await count(
        store, c.FAILED, {"failed_at": {"$gte": since}, "reason": {"$nin": [str(r) for r in OPERATOR_REASONS]}}
    )
    failed_by: dict[str, int] = {}
    async for row in await store.db[c.FAILED].aggregate([{"$group": {"_id": "$reason", "n": {"$sum": 1}}}]):
        failed_by[str(row["_id"])] = int(row["n"])
    return {
        "queued": await count(store, c.QUEUED, {}),
        # claimed_by and claimed_at are set and cleared together (executor.claims.LEASE); claimed_at is indexed (not
        # $ne None: nx-27017 mis-evaluates it)
        "claimed": await count(store, c.QUEUED, {"claimed_at": {"$gt": 0}}),
        "sent": sent_total,
        "delivered": await count(store, c.SENT, {"delivered": True}),
        "undelivered": await count(store, c.SENT, {"delivered": False}),
        "failed_by_reason": failed_by,
        "send_rate_per_second": round(recent / window_seconds, 2),
        "failure_rate_recent": round(100.0 * failed_recent / (recent + failed_recent), 2)
        if recent + failed_recent
        else 0.0,
        "clicks": await count(store, c.CLICKS, {}),
        "human_clicks": await count(store, c.CLICKS, {"bot": False}),
    }
