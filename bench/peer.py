"""trackly-exec against a job-per-message sender on arq, side by side: same store, same Redis, same fake.

Both send the same N messages (default 20,000) on one list to one Infobip fake (its own process), from the
same nx-27017 store and the same redis-server:

- **peer**: ``bench/peer_arq.py`` (one arq job per message: claim, one provider request, record, delete), run in
  ``.venv-peer`` because arq pins redis-py < 6;
- **trackly-exec**: the executor (``Coordinator.run_until_idle``), rate limit off, Redis limiter configured.

Prints msg/s, CPU µs/message of each and the ratio (target: trackly-exec >= 5x the peer).

    .venv/bin/python bench/peer.py [--n 20000] [--peer-python .venv-peer/bin/python]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _common import ROOT, fake_credentials, ledger, peak_rss_mb, record, run, seed_lists, services

from trackly_exec.store import constants as c
from trackly_exec.app import Trackly
from trackly_exec.config import load_config
from trackly_exec.executor.coordinator import Coordinator
from trackly_exec.store.client import Store


def peer_python(given: str | None) -> str | None:
    path = Path(given) if given else ROOT / ".venv-peer" / "bin" / "python"
    return str(path) if path.exists() else None


async def main(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"n": args.n}
    py = peer_python(args.peer_python)
    with services(fakes=("infobip",)) as svc:
        url = svc["fakes"]["infobip"]
        creds = fake_credentials("infobip")
        store = await Store.connect(svc["mongo_uri"], "peer")
        await store.ensure_indexes()

        # 1. the peer
        if py is None:
            print("peer: .venv-peer is missing (make bench builds it); skipped", flush=True)
        else:
            await seed_lists(store, args.n, {1: "infobip"}, contacts=False)
            before = ledger(url)["accepted"]
            proc = subprocess.run(
                [
                    py,
                    str(ROOT / "bench" / "peer_arq.py"),
                    "--mongo",
                    svc["mongo_uri"],
                    "--db",
                    "peer",
                    "--redis",
                    svc["redis_url"],
                    "--provider",
                    url,
                    "--api-key",
                    creds["api_key"],
                ],
                capture_output=True,
                text=True,
                timeout=3600,
            )
            if proc.returncode != 0:
                print(proc.stderr[-3000:], file=sys.stderr)
                raise SystemExit("peer failed")
            peer = json.loads(proc.stdout.strip().splitlines()[-1])
            peer["accepted"] = ledger(url)["accepted"] - before
            out["peer"] = peer
            rate = peer["sent"] / peer["total_seconds"]
            print(
                f"peer (arq, one job per message, 30 at once): {peer['sent']:,} sent in {peer['total_seconds']:.2f}s "
                f"= {rate:,.0f} msg/s (enqueue {peer['enqueue_seconds']:.1f}s + process {peer['process_seconds']:.1f}s); "
                f"CPU {peer['cpu_seconds'] / max(peer['sent'], 1) * 1e6:.0f} us/message",
                flush=True,
            )
            await store.db[c.SENT].delete_many({})
            await store.db[c.QUEUED].delete_many({})

        # 2. trackly-exec
        settings = load_config(
            "/dev/null",
            daemon={"data_dir": str(svc["tmp"] / "data"), "instance_name": "bench-peer"},
            mongo={"uri": svc["mongo_uri"], "database": "peer"},
            redis={"url": svc["redis_url"]},
            http={"enabled": False},
            drivers={"infobip": {"base_url": url, **creds, "timeout_seconds": 30.0}},
        )
        trackly = await Trackly.open(settings, store=store)
        await seed_lists(store, args.n, {1: "infobip"}, contacts=True)
        before = ledger(url)["accepted"]
        cpu0, t0 = time.process_time(), time.perf_counter()
        counts = await Coordinator(trackly).run_until_idle()
        seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        await trackly.close(close_store=False)
        sent = counts.get("sent", 0)
        out["trackly"] = {
            "sent": sent,
            "seconds": round(seconds, 3),
            "cpu_seconds": round(cpu, 3),
            "accepted": ledger(url)["accepted"] - before,
        }
        rate = sent / seconds
        print(
            f"trackly-exec executor: {sent:,} sent in {seconds:.2f}s = {rate:,.0f} msg/s; "
            f"CPU {cpu / max(sent, 1) * 1e6:.0f} us/message",
            flush=True,
        )
        if "peer" in out:
            peer_rate = out["peer"]["sent"] / out["peer"]["total_seconds"]
            out["ratio"] = rate / peer_rate
            print(f"ratio trackly-exec / peer: {out['ratio']:.1f}x   target >= 5x", flush=True)
            record(
                "arq peer, one job per message",
                peer_rate,
                "msg/s",
                us_per_message=out["peer"]["cpu_seconds"] / max(out["peer"]["sent"], 1) * 1e6,
                rss_mb=None,
            )
        record(
            "trackly-exec vs peer (infobip)",
            rate,
            "msg/s",
            floor=out.get("peer") and out["peer"]["sent"] / out["peer"]["total_seconds"],
            ratio=out.get("ratio"),
            us_per_message=cpu / max(sent, 1) * 1e6,
            note="floor column: the peer; target ratio >= 5",
        )
        print(f"peak RSS (this process): {peak_rss_mb():.0f} MB")
        await store.close()
    return out


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=20_000, help="messages (default 20,000)")
    p.add_argument("--peer-python", default=None, help="python of the peer's virtualenv (default .venv-peer)")
    p.add_argument("--json", default=None, help="also write the figures to this file")
    a = p.parse_args()
    result = run(main(a))
    if a.json:
        Path(a.json).write_text(json.dumps(result))
