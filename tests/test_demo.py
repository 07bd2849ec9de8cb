"""`trackly demo` end to end, with 1,000 contacts: the arithmetic adds up and every queued message has one record."""

from __future__ import annotations

import io
import re

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
