"""One campaign's numbers for ``GET /api/v1/campaigns/{id}/stats``: the totals of :mod:`trackly_exec.tracking.stats`
(queued, sent, delivered, failed by reason, clicks) plus the executions and the same figures per variant.
Each per-variant figure is one single-key ``$group`` (nx-27017 groups on one field only)."""

from __future__ import annotations

from typing import Any

from trackly_exec.api.models_campaigns import CampaignStatsOut, ClickStats, VariantStats
from trackly_exec.store import constants as c
from trackly_exec.store.client import Store
from trackly_exec.store.names import name_of
from trackly_exec.tracking.stats import campaign_stats as totals

NO_VARIANT = "-"


async def _by_variant(store: Store, coll: str, match: dict[str, Any]) -> dict[str, int]:
    out: dict[str, int] = {}
    cursor = await store[coll].aggregate([{"$match": match}, {"$group": {"_id": "$variant_key", "n": {"$sum": 1}}}])
    async for doc in cursor:
        name = NO_VARIANT if doc["_id"] is None else str(doc["_id"])
        out[name] = out.get(name, 0) + int(doc["n"])
    return out


async def campaign_stats(store: Store, campaign_id: int) -> CampaignStatsOut:
    """Every number of campaign ``campaign_id`` (all of its executions together)."""
    q = {"campaign_id": campaign_id}
    t = (await totals(store, [campaign_id])).get(campaign_id, {})
    sent = await _by_variant(store, c.SENT, q)
    delivered = await _by_variant(store, c.SENT, {**q, "delivered": True})
    undelivered = await _by_variant(store, c.SENT, {**q, "delivered": False})
    failed = await _by_variant(store, c.FAILED, q)
    clicks = await _by_variant(store, c.CLICKS, q)
    human = await _by_variant(store, c.CLICKS, {**q, "bot": False})
    variants = {
        key: VariantStats(
            sent=sent.get(key, 0),
            delivered=delivered.get(key, 0),
            undelivered=undelivered.get(key, 0),
            failed=failed.get(key, 0),
            clicks=ClickStats(all=clicks.get(key, 0), human=human.get(key, 0)),
        )
        for key in sorted(set(sent) | set(failed) | set(clicks))
    }
    n_sent, n_del, n_undel = t.get("sent", 0), t.get("delivered", 0), t.get("undelivered", 0)
    camp = await store[c.CAMPAIGNS].find_one({"_id": campaign_id}, {"name": 1})
    return CampaignStatsOut(
        campaign_id=campaign_id,
        name=name_of(camp, "campaign", campaign_id),
        executions=await store[c.EXECUTIONS].count_documents(q),
        queued=t.get("queued", 0),
        sent=n_sent,
        delivered=n_del,
        undelivered=n_undel,
        delivery_pending=max(0, n_sent - n_del - n_undel),
        failed=dict(sorted(t.get("failed_by_reason", {}).items())),
        clicks=ClickStats(all=t.get("clicks", 0), human=t.get("human_clicks", 0)),
        per_variant=variants,
    )
