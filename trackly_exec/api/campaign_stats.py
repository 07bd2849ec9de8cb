"""One campaign's numbers for ``GET /api/v1/campaigns/{id}/stats``: queued, sent, delivered, failed by reason,
clicks, plus the executions and the same figures per variant.

One reading: the per-variant rows are counted (one single-key ``$group`` per figure: nx-27017 groups on one field
only) and the campaign's totals are their sums, so the summary and the rows always agree, even while the campaign
sends. The reads run in an order that keeps each row coherent while records arrive: the queue before the records
(a message moving from the queue to its record is counted twice for a moment, never missed), and every subset before
its superset (delivered and undelivered before sent, human clicks before all clicks): a record is only ever added,
and its ``delivered`` tristate only ever set, so a row never shows more delivered than sent.
"""

from __future__ import annotations

from collections import defaultdict

from trackly_exec.api.models_campaigns import CampaignStatsOut, ClickStats, VariantStats
from trackly_exec.api.routes import count_by
from trackly_exec.store import constants as c
from trackly_exec.store.client import Store, count
from trackly_exec.store.documents import Filter
from trackly_exec.store.models import FailureReason
from trackly_exec.store.names import name_of

NO_VARIANT = "-"


async def _by_variant(store: Store, coll: str, match: Filter) -> dict[str, int]:
    return await count_by(store, coll, match, "variant_key", none=NO_VARIANT)


async def campaign_stats(store: Store, campaign_id: int) -> CampaignStatsOut:
    """Every number of campaign ``campaign_id`` (all of its executions together); the totals are the rows' sums."""
    q = {"campaign_id": campaign_id}
    queued = await count(store.db, c.QUEUED, q)
    failed: dict[str, dict[str, int]] = defaultdict(dict)  # variant -> reason -> n
    for reason in FailureReason:  # one group per reason: nx-27017 cannot group by a compound key
        for key, n in (await _by_variant(store, c.FAILED, {**q, "reason": reason.value})).items():
            failed[key][reason.value] = n
    delivered = await _by_variant(store, c.SENT, {**q, "delivered": True})
    undelivered = await _by_variant(store, c.SENT, {**q, "delivered": False})
    sent = await _by_variant(store, c.SENT, q)
    human = await _by_variant(store, c.CLICKS, {**q, "bot": False})
    clicks = await _by_variant(store, c.CLICKS, q)
    variants = {
        key: VariantStats(
            sent=sent.get(key, 0),
            delivered=delivered.get(key, 0),
            undelivered=undelivered.get(key, 0),
            failed=sum(failed.get(key, {}).values()),
            clicks=ClickStats(all=clicks.get(key, 0), human=human.get(key, 0)),
        )
        for key in sorted(set(sent) | set(failed) | set(clicks))
    }
    by_reason: dict[str, int] = defaultdict(int)
    for reasons in failed.values():
        for name, n in reasons.items():
            by_reason[name] += n
    rows = variants.values()
    n_sent, n_del, n_undel = (sum(getattr(v, f) for v in rows) for f in ("sent", "delivered", "undelivered"))
    camp = await store.db[c.CAMPAIGNS].find_one({"_id": campaign_id}, {"name": 1})
    return CampaignStatsOut(
        campaign_id=campaign_id,
        name=name_of(camp, "campaign", campaign_id),
        executions=await count(store.db, c.EXECUTIONS, q),
        queued=queued,
        sent=n_sent,
        delivered=n_del,
        undelivered=n_undel,
        delivery_pending=max(0, n_sent - n_del - n_undel),
        failed=dict(sorted(by_reason.items())),
        clicks=ClickStats(all=sum(v.clicks.all for v in rows), human=sum(v.clicks.human for v in rows)),
        per_variant=variants,
    )
