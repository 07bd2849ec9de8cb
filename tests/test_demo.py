"""`trackly demo` end to end, with 1,000 contacts: the arithmetic adds up and every queued message has one record."""

from __future__ import annotations

import io

from trackly_exec.cli.demo import run_demo
from trackly_exec.cli.demo_contacts import MIX


async def test_demo_arithmetic_adds_up() -> None:
    """The demo's counts reconcile: audiences, overlap, skips, queued, one record per message, clicks."""
    out = io.StringIO()
    r = await run_demo(1000, out=out)
    k = r.counts
    per = {int(a): n for a, n in k["per_audience"].items()}
    a, b = (per[i] for i in r.audiences.values())
    assert (a, b) == (600, 500) and k["overlap"] == 100 and k["unique"] == 1000 == a + b - k["overlap"]
    skipped = k["skipped"]
    assert all(skipped.get(name, 0) > 0 for name, _ in MIX), skipped
    assert k["unique"] == sum(skipped.values()) + k["queued"]
    # every queued message ended in exactly one record, and the provider saw each accepted one once
    assert r.left_in_queue == 0 and r.in_both == 0
    assert r.sent_records + r.failed_records == k["queued"]
    assert r.provider["accepted"] == r.sent_records and r.provider["duplicates"] == 0
    s = r.stats
    assert s["sent"] == r.sent_records and sum(s["failed"].values()) == r.failed_records
    assert s["delivered"] + s["undelivered"] + s["delivery_pending"] == s["sent"]
    assert s["undelivered"] > 0 and s["delivery_pending"] == 0
    assert sum(v["sent"] for v in s["per_variant"].values()) == s["sent"] and len(s["per_variant"]) == 2
    assert 0 < s["clicks"]["human"] < s["clicks"]["all"]
    text = out.getvalue()
    assert "Execution Timeline" in text and "Delivery confirmations arrive" in text
    assert f"{r.public_url}/dashboard" in text and "/api/v1/openapi.json" in text
    assert len(r.timeline) == 5
