"""Rate limiting across processes: two executor processes, one list limited to 6,000/minute, for 20 s.

Starts an nx-27017 store and a redis-server, serves an Infobip fake in this process (its ledger timestamps
every accepted message), queues more messages than 20 s allow, runs two executor processes
(``python -m trackly_exec.executor.coordinator``) and stops them with SIGTERM. Prints the messages accepted in the
20 s after the first one (target 2,000 +/- 2%) and the busiest 1-second window (target <= 110% of 100/s).

The fake stamps a message when its event loop gets to the request: on a loaded machine this process waited for a
core for up to ~150 ms at a time, then stamped the requests that had queued up meanwhile within a millisecond (a
provider runs on its own machines). So this process runs at nice -10 once the store and Redis have started (when
allowed; the executors are started back at nice 0), and says so.

    .venv/bin/python bench/ratelimit.py [--rate 6000] [--seconds 20] [--processes 2]
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import json
import os
import signal
import sys
from pathlib import Path

from _common import record, run, seed_lists, services

from trackly_exec.store.client import Store
from trackly_exec.testing.fakes.infobip import InfobipFake
from trackly_exec.testing.seeding import config_toml


def _normal_priority() -> None:
    os.setpriority(os.PRIO_PROCESS, 0, 0)


async def main(args: argparse.Namespace) -> int:
    with services(fakes=()) as svc:
        fake = await InfobipFake().start()
        store = await Store.connect(svc["mongo_uri"], "ratebench")
        await store.ensure_indexes()
        per_second = args.rate / 60
        queued = int(per_second * args.seconds * 2.5) + 200
        # ids like real ones (HMAC hex), so both processes take a share of the queue
        await seed_lists(store, queued, {1: "infobip"}, rate=args.rate, hashed_ids=True)
        config = Path(svc["tmp"]) / "exec.toml"
        drivers = fake.driver_settings()
        config.write_text(
            config_toml(
                {
                    "daemon": {"data_dir": f"{svc['tmp']}/data", "shutdown_grace_seconds": 5},
                    "mongo": {"uri": svc["mongo_uri"], "database": "ratebench"},
                    "redis": {"url": svc["redis_url"]},
                    "http": {"enabled": False},
                    "drivers.infobip": drivers,
                }
            )
        )
        print(
            f"{queued:,} messages queued on one list limited to {args.rate:,}/min ({per_second:g}/s); "
            f"{args.processes} executor processes for {args.seconds:g}s ...",
            flush=True,
        )
        try:  # the provider fake (this process) gets a core ahead of the executors, the store and Redis
            os.setpriority(os.PRIO_PROCESS, 0, -10)
            reniced = True
        except OSError:
            reniced = False
        print(f"provider fake at nice {'-10' if reniced else '0 (could not raise its priority)'}", flush=True)
        procs = [
            await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "trackly_exec.executor.coordinator",
                "-c",
                str(config),
                stdout=asyncio.subprocess.PIPE,
                env={**os.environ, "TRACKLY_DAEMON__INSTANCE_NAME": f"bench-{k}"},
                preexec_fn=_normal_priority if reniced else None,
            )
            for k in range(args.processes)
        ]
        for p in procs:
            assert p.stdout is not None
            await asyncio.wait_for(p.stdout.readline(), 30)  # "ready"
        while not fake.ledger:
            await asyncio.sleep(0.01)
        await asyncio.sleep(args.seconds + 0.5)
        for p in procs:
            p.send_signal(signal.SIGTERM)
        outs = [await asyncio.wait_for(p.communicate(), 30) for p in procs]
        codes = [p.returncode for p in procs]
        times = sorted(e.accepted_at.timestamp() for e in fake.ledger)
        first = times[0]
        in_window = bisect.bisect_left(times, first + args.seconds)
        busiest = max(bisect.bisect_left(times, t + 1.0) - i for i, t in enumerate(times))
        if os.environ.get("RATE_DEBUG"):
            at = max(range(len(times)), key=lambda i: bisect.bisect_left(times, times[i] + 1.0) - i)
            print(
                "busiest starts",
                round(times[at] - first, 3),
                [round(t - times[at], 3) for t in times[at : at + busiest + 3]],
            )
        lines = [o[0].decode().strip().splitlines() for o in outs]
        per_process = [json.loads(ln[-1]).get("sent", 0) if ln else None for ln in lines]
        expected = per_second * args.seconds
        print(
            f"sent in the {args.seconds:g}s after the first send: {in_window:,} (target {expected:,.0f} +/- 2%: "
            f"{'ok' if abs(in_window - expected) <= 0.02 * expected else 'MISSED'}; "
            f"{in_window / expected * 100:.1f}% of the limit)"
        )
        print(
            f"busiest 1-second window: {busiest} messages (limit {per_second:g}/s, target <= {per_second * 1.1:.0f}: "
            f"{'ok' if busiest <= per_second * 1.1 else 'MISSED'})"
        )
        print(
            f"per process: {per_process} (both took part: {all(per_process)}); exit codes {codes}; "
            f"duplicates in the ledger: {fake.summary()['duplicates']}"
        )
        record(
            "rate limit, 2 processes: busiest 1 s",
            busiest,
            "msgs",
            floor=per_second,
            ratio=busiest / per_second,
            rss_mb=None,
            note="limit in the floor column, target ratio <= 1.1",
        )
        await fake.stop()
        await store.close()
        return 0


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rate", type=int, default=6000, help="the list's limit per minute (default 6,000)")
    p.add_argument("--seconds", type=float, default=20.0, help="how long to send (default 20)")
    p.add_argument("--processes", type=int, default=2, help="executor processes (default 2)")
    sys.exit(run(main(p.parse_args())))
