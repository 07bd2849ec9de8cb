"""A campaign's stats (``GET /api/v1/campaigns/{id}/stats``, ``trackly stats``): one reading, the summary being
the sum of the per-variant rows, coherent while records arrive."""

from __future__ import annotations

import asyncio
from typing import Any

from trackly_exec.api.campaign_stats import campaign_stats
from trackly_exec.api.models_campaigns import CampaignStatsOut
from trackly_exec.store import constants as c
from trackly_exec.store.client import Store
from trackly_exec.store.models import utcnow
from trackly_exec.tracking import stats

CID = 3


def _doc(i: int, variant: str | None) -> dict[str, Any]:
    return {
        "_id": f"m{i}",
        "account_id": 1,
        "sending_list_id": 7,
        "campaign_id": CID,
        "execution_id": 1,
        "contact_id": i,
        "from_number": "+15550000000",
        "to_number": "+12025550100",
        "body": "x",
        "length": 1,
        "sendtime": utcnow(),
        "variant_key": variant,
        "claimed_by": None,
    }


def _check(s: CampaignStatsOut) -> None:
    rows = s.per_variant.values()
    assert s.sent == sum(v.sent for v in rows) and s.delivered == sum(v.delivered for v in rows)
    assert s.undelivered == sum(v.undelivered for v in rows)
    assert sum(s.failed.values()) == sum(v.failed for v in rows)
    assert s.clicks.all == sum(v.clicks.all for v in rows) and s.clicks.human == sum(v.clicks.human for v in rows)
    assert all(v.delivered + v.undelivered <= v.sent and v.clicks.human <= v.clicks.all for v in rows), rows
    assert s.delivery_pending == s.sent - s.delivered - s.undelivered


async def test_summary_is_the_sum_of_the_rows(store: Store) -> None:
    """Failures by reason, records without a variant ("-"), clicks: the totals are the rows' sums."""
    now = utcnow()
    await store[c.SENT].insert_many(
        [{**_doc(i, "ab"[i % 2]), "timestamp": now, "delivered": [True, False, None][i % 3]} for i in range(12)]
    )
    reasons = ["STALE", "PROVIDER_ERROR", "PROVIDER_ERROR", "NO_RESPONSE"]
    await store[c.FAILED].insert_many(
        [{**_doc(100 + i, [None, "a"][i % 2]), "reason": r, "failed_at": now} for i, r in enumerate(reasons)]
    )
    await store[c.QUEUED].insert_many([_doc(200 + i, "b") for i in range(5)])
    await store[c.CLICKS].insert_many(
        [{"_id": i, "campaign_id": CID, "variant_key": "a", "bot": i == 0, "clicked_at": now} for i in range(3)]
    )
    s = await campaign_stats(store, CID)
    _check(s)
    assert s.queued == 5 and s.sent == 12 and s.delivered == 4 and s.undelivered == 4 and s.delivery_pending == 4
    assert s.failed == {"NO_RESPONSE": 1, "PROVIDER_ERROR": 2, "STALE": 1}
    assert {k: v.failed for k, v in s.per_variant.items()} == {"-": 2, "a": 2, "b": 0}
    assert s.per_variant["a"].sent == 6 and s.per_variant["a"].clicks.human == 2 and s.clicks.all == 3


async def test_stats_coherent_while_sending(store: Store) -> None:
    """Read again and again while messages move from the queue to their records and reports arrive: every
    reading's totals are its rows' sums, no row has more reports than sends, and no message is missed."""
    n = 120
    await store[c.QUEUED].insert_many([_doc(i, "ab"[i % 2]) for i in range(n)])
    done = asyncio.Event()

    async def send() -> None:  # the executor's order: record, then remove from the queue; reports later
        try:
            for start in range(0, n, 8):
                batch = [_doc(i, "ab"[i % 2]) for i in range(start, start + 8)]
                sent = [d for d in batch if d["contact_id"] % 5]
                failed = [d for d in batch if not d["contact_id"] % 5]
                await store[c.SENT].insert_many([{**d, "timestamp": utcnow(), "delivered": None} for d in sent])
                if failed:
                    await store[c.FAILED].insert_many([{**d, "reason": "STALE", "failed_at": utcnow()} for d in failed])
                await asyncio.sleep(0)
                await store[c.QUEUED].delete_many({"_id": {"$in": [d["_id"] for d in batch]}})
                for d in sent:
                    await store[c.SENT].update_one({"_id": d["_id"]}, {"$set": {"delivered": d["contact_id"] % 3 > 0}})
        finally:
            done.set()

    writer = asyncio.create_task(send())
    readings = 0
    try:
        while not done.is_set() or readings == 0:
            s = await campaign_stats(store, CID)
            _check(s)
            assert s.queued + s.sent + sum(s.failed.values()) >= n  # at worst counted twice for a moment, not missed
            readings += 1
    finally:
        if not done.is_set():
            writer.cancel()
        await asyncio.gather(writer, return_exceptions=True)
    await writer
    s = await campaign_stats(store, CID)
    _check(s)
    assert s.queued == 0 and s.sent + s.failed["STALE"] == n and s.delivery_pending == 0 and readings > 1


async def test_the_dashboards_click_rate_counts_clicked_messages_not_clicks(store: Store) -> None:
    """The live stats' click rate is the share of sent messages with a human click ("% that clicked a link"): one
    message clicked ten times counts once (it showed 200 % for 5 sent)."""
    now = utcnow()
    await store.db[c.SENT].insert_many([{**_doc(i, "A"), "timestamp": now} for i in range(5)])
    clicks = [{"_id": f"k{i}", "campaign_id": CID, "message_id": "m0", "bot": False, "at": now} for i in range(10)]
    clicks += [{"_id": "b", "campaign_id": CID, "message_id": "m1", "bot": True, "at": now}]
    clicks += [{"_id": "h", "campaign_id": CID, "message_id": "m2", "bot": False, "at": now}]
    await store.db[c.CLICKS].insert_many(clicks)
    row = (await stats.campaign_stats(store, [CID]))[CID]
    assert row["sent"] == 5 and row["human_clicks"] == 11 and row["clicked_messages"] == 2
    assert row["click_rate"] == 40.0
