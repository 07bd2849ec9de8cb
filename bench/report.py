"""Print the figures the benchmarks recorded (``TRACKLY_BENCH_JSON``, one JSON object a line) as one table.

.venv/bin/python bench/report.py PATH
"""

from __future__ import annotations

import json
import sys


def fmt(v: object, digits: int = 0) -> str:
    if v is None:
        return "-"
    if isinstance(v, (int, float)):
        return f"{v:,.{digits}f}"
    return str(v)


def main(path: str) -> int:
    try:
        with open(path, encoding="utf-8") as f:
            rows = [json.loads(line) for line in f if line.strip()]
    except FileNotFoundError:
        print(f"no figures recorded ({path} is missing)")
        return 1
    header = ("bench", "figure", "value", "floor", "ratio", "us/message", "peak RSS MB")
    table = [
        (
            r["bench"],
            r["figure"] + (f" ({r['note']})" if r.get("note") else ""),
            f"{fmt(r['value'], 2 if r['value'] < 100 else 0)} {r['unit']}",
            fmt(r.get("floor")),
            fmt(r.get("ratio"), 2),
            fmt(r.get("us_per_message")),
            fmt(r.get("rss_mb")),
        )
        for r in rows
    ]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *table, strict=False)]
    line = "  ".join("{:<%d}" % w for w in widths)
    print("\n== benchmark summary (2 cores shared: compare ratios measured in one run and CPU us/message)")
    print(line.format(*header))
    print(line.format(*("-" * w for w in widths)))
    for row in table:
        print(line.format(*row))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else ".bench.jsonl"))
