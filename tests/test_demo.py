"""`trackly demo` end to end, with 1,000 contacts: the arithmetic adds up and every queued message has one record."""

from __future__ import annotations

import asyncio
import io
import re
from typing import Any

import pytest

from trackly_exec.cli.demo import progress_values, run_demo
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
    # the progress lines (one a second off a TTY, and the last): evaluated and queued out of the audience size
    frames = [_frame(line) for line in text.splitlines() if line.startswith("  evaluated ")]
    assert frames and all(f["evaluated"][1] == f["queued"][1] == 1000 for f in frames), frames
    assert frames[-1]["evaluated"] == (1000, 1000) and frames[-1]["sent"] == (k["queued"], k["queued"])


def _frame(line: str) -> dict[str, tuple[int, int]]:
    return {
        name: (int(done.replace(",", "")), int(total.replace(",", "")))
        for name, done, total in re.findall(r"(\w+) ([\d,]+)/([\d,]+)", line)
    }


def test_progress_total_is_the_audience_size() -> None:
    """Mid-evaluation the totals are the audience size, not the unique contacts streamed so far; once the
    evaluation ends, "sent" counts against the messages queued."""
    mid = {"unique": 300, "evaluated": 300, "queued": 250}
    v = progress_values(mid, audience=10_000, evaluated=False, processed=100, reported=40, sent=90)
    assert v == {"evaluated": (300, 10_000), "queued": (250, 10_000), "sent": (100, 10_000), "delivered": (40, 90)}
    done = {"unique": 10_000, "evaluated": 10_000, "queued": 9_400}
    v = progress_values(done, audience=10_000, evaluated=True, processed=9_000, reported=8_000, sent=8_900)
    assert v["evaluated"] == (10_000, 10_000) and v["queued"] == (9_400, 10_000) and v["sent"] == (9_000, 9_400)


async def test_demo_waits_for_reports_that_overtook_the_record(monkeypatch: pytest.MonkeyPatch) -> None:
    """A delivery report that arrives before the executor recorded its message is acknowledged and parked, then
    applied by the parked-reports loop: the demo reads its statistics only once none waits parked (here every
    report overtakes its record, and the loop runs late, as on a loaded machine)."""
    from trackly_exec.executor import outcomes
    from trackly_exec.tracking import delivery, parked

    real_record, real_park = outcomes.Outcomes.record_sends, delivery.park_reports
    reports_parked = 0

    async def late_record(self: Any, *args: Any, **kwargs: Any) -> Any:
        await asyncio.sleep(1.0)  # the fake reports 0.5 s after accepting: before this record
        return await real_record(self, *args, **kwargs)

    async def park(*args: Any, **kwargs: Any) -> None:
        nonlocal reports_parked
        reports_parked += len(args[2])
        await real_park(*args, **kwargs)

    monkeypatch.setattr(outcomes.Outcomes, "record_sends", late_record)
    monkeypatch.setattr(delivery, "park_reports", park)
    monkeypatch.setattr(parked, "INTERVAL_SECONDS", 4.0)
    r = await run_demo(200, out=io.StringIO())
    s = r.stats
    assert reports_parked > 0 and s["sent"] == r.sent_records > 0
    assert s["delivery_pending"] == 0 and s["delivered"] + s["undelivered"] == s["sent"]
