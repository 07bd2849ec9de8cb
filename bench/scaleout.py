"""Scale-out: the executor in 1 and in N processes on one store and one Redis.

Pre-queues N messages (default 30,000; ids spread like real HMAC ids) on three lists (Infobip, CM, Twilio fakes,
each its own ``trackly fake-provider`` process), rate limit off, then runs the executor in one process, re-queues
the same number of messages and runs it in ``--procs`` processes (each a burst run of its own Coordinator with
its own instance name; all join the membership before any starts, so they split the queue from the first poll),
and with ``--compare`` once more in ``--procs`` processes that do not share the queue out (each polls all of it,
as before issue 12: claims stay safe but collide).
Prints, for each: msg/s (first claim of any process to the last record of any), queue documents read per message,
empty claims (claims that found every candidate taken: collisions), store round trips per 1,000 messages, and the
executor CPU per message; then the ratio N processes / 1 process.

    .venv/bin/python bench/scaleout.py [--n 30000] [--procs 2] [--file] [--compare]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _common import fake_credentials, ledger, proc_cpu, record, run, seed_lists, services

from trackly_exec.store import constants as c
from trackly_exec.store.client import Store

PROVIDERS = ("infobip", "cm", "twilio")


def settings_for(spec: dict[str, Any], name: str) -> Any:
    from trackly_exec.config import load_config

    return load_config(
        "/dev/null",
        daemon={"data_dir": spec["data_dir"], "instance_name": name},
        mongo={"uri": spec["mongo_uri"], "database": "bench"},
        redis={"url": spec["redis_url"]},
        http={"enabled": False},
        executor={"claim_batch_size": spec["batch"], "workers_per_list": spec["workers"], "pool_size": spec["pool"]},
        drivers=spec["drivers"],
    )


async def child(spec: dict[str, Any], name: str, shared: bool) -> None:
    """One executor process: join, say ready, wait for "go" on stdin, burst-run, print its figures."""
    from pymongo import monitoring

    from trackly_exec.app import Trackly
    from trackly_exec.executor.coordinator import Coordinator

    commands: collections.Counter[str] = collections.Counter()

    class Count(monitoring.CommandListener):
        def started(self, event: monitoring.CommandStartedEvent) -> None:
            what = event.command.get(event.command_name)
            commands[f"{event.command_name} {what}" if isinstance(what, str) else event.command_name] += 1

        def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
            pass

        def failed(self, event: monitoring.CommandFailedEvent) -> None:
            pass

    monitoring.register(Count())
    trackly = await Trackly.open(settings_for(spec, name))
    coord = Coordinator(trackly)
    if not shared:
        coord.membership = None  # every process polls the whole queue
    await coord.join()
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    commands.clear()
    cpu0, t0 = time.process_time(), time.time()
    counts = await coord.run_until_idle()
    t1, cpu = time.time(), time.process_time() - cpu0
    rounds = {
        k: v
        for k, v in commands.items()
        if k.split()[0] not in ("endSessions", "hello", "isMaster", "ismaster", "ping")
    }
    await trackly.close()
    out = {
        "counts": counts,
        "t0": t0,
        "t1": t1,
        "cpu": cpu,
        "commands": rounds,
        "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    print(json.dumps(out), flush=True)


def run_procs(spec: dict[str, Any], procs: int, shared: bool = True) -> dict[str, Any]:
    """``procs`` executor processes over what is queued; their combined figures (the store's CPU too)."""
    store0 = proc_cpu(spec["mongo_pid"])
    children = [
        subprocess.Popen(
            [sys.executable, __file__, "--child", json.dumps(spec), "--name", f"bench-{k}"]
            + ([] if shared else ["--unshared"]),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for k in range(procs)
    ]
    for ch in children:
        assert ch.stdout is not None
        line = ch.stdout.readline()
        assert line.strip() == "ready", line
    for ch in children:  # every process is a member before any polls: they split the queue from the start
        assert ch.stdin is not None
        ch.stdin.write("go\n")
        ch.stdin.flush()
    outs = []
    for ch in children:
        out, _ = ch.communicate(timeout=3600)
        assert ch.returncode == 0, out
        outs.append(json.loads(out.strip().splitlines()[-1]))
    store_cpu = proc_cpu(spec["mongo_pid"]) - store0  # the processes' start and stop included
    sent = sum(o["counts"].get("sent", 0) for o in outs)
    wall = max(o["t1"] for o in outs) - min(o["t0"] for o in outs)
    commands: collections.Counter[str] = collections.Counter()
    for o in outs:
        commands.update(o["commands"])
    return {
        "procs": procs,
        "shared": shared,
        "sent": sent,
        "per_process": [o["counts"].get("sent", 0) for o in outs],
        "rate": sent / wall if wall else 0.0,
        "wall": wall,
        "reads": sum(o["counts"].get("queue_reads", 0) for o in outs) / max(sent, 1),
        "empty": sum(o["counts"].get("empty_claims", 0) for o in outs),
        "steals": sum(o["counts"].get("steals", 0) for o in outs),
        "us": sum(o["cpu"] for o in outs) / max(sent, 1) * 1e6,
        "store_us": store_cpu / max(sent, 1) * 1e6,
        "round_trips": sum(commands.values()) / max(sent, 1) * 1000,
        "commands": dict(commands),
        "rss_mb": max(o["rss_mb"] for o in outs),
        "failed": sum(v for o in outs for k, v in o["counts"].items() if k.startswith("failed")),
    }


async def seed(spec: dict[str, Any], n: int, lists: dict[int, str]) -> None:
    store = await Store.connect(spec["mongo_uri"], "bench")
    await store.ensure_indexes()
    # the same store state for every run: an empty record collection, contacts only of what is queued
    await store.db[c.SENT].delete_many({})
    await store.db[c.CONTACTS].delete_many({})
    await seed_lists(store, n, lists, price=0.001, hashed_ids=True)
    await store.close()


def show(r: dict[str, Any]) -> None:
    print(
        f"  {r['procs']} process{'es' if r['procs'] > 1 else ''}{'' if r['shared'] else ' (whole queue each)'}: "
        f"{r['sent']:,} sent in {r['wall']:.2f}s = "
        f"{r['rate']:,.0f} msg/s (per process {r['per_process']}); queue reads/msg {r['reads']:.3f}; "
        f"empty claims {r['empty']}; steals {r['steals']}; store round trips per 1,000 msg {r['round_trips']:.1f}; "
        f"executor CPU {r['us']:.0f} us/msg; store CPU {r['store_us']:.0f} us/msg",
        flush=True,
    )
    print(f"    store commands: {dict(sorted(r['commands'].items()))}", flush=True)


def main(args: argparse.Namespace) -> None:
    lists = {k + 1: name for k, name in enumerate(args.lists.split(","))}
    with services(fakes=tuple(lists.values()), in_memory=not args.file) as svc:
        spec = {
            "mongo_uri": svc["mongo_uri"],
            "mongo_pid": svc["mongo_pid"],
            "redis_url": svc["redis_url"],
            "data_dir": str(Path(svc["tmp"]) / "data"),
            "batch": args.batch,
            "workers": args.workers,
            "pool": args.pool,
            "drivers": {
                name: {"base_url": svc["fakes"][name], **fake_credentials(name), "timeout_seconds": 30.0}
                for name in lists.values()
            },
        }
        load = os.getloadavg()
        print(
            f"{args.n:,} messages per run on {len(lists)} lists ({', '.join(lists.values())}), "
            f"{'file' if args.file else 'in-memory'} nx-27017 store; load average {load[0]:.1f} / {load[1]:.1f} "
            f"on {os.cpu_count()} cores",
            flush=True,
        )
        results = []
        for procs, shared in [(1, True), (args.procs, True)] + ([(args.procs, False)] if args.compare else []):
            run(seed(spec, args.n, lists))
            r = run_procs(spec, procs, shared)
            show(r)
            results.append(r)
        one, many = results[:2]
        accepted = sum(ledger(u)["accepted"] for u in svc["fakes"].values())
        dupes = sum(ledger(u)["duplicates"] for u in svc["fakes"].values())
        ratio = many["rate"] / one["rate"] if one["rate"] else 0.0
        print(
            f"ratio {args.procs} processes / 1 process: {ratio:.2f}   target >= 1.0 "
            f"(provider ledgers: {accepted:,} accepted, {dupes} duplicates; failed {one['failed'] + many['failed']})",
            flush=True,
        )
        if args.compare:
            old = results[2]
            print(
                f"  without shares (each process polls the whole queue): ratio {old['rate'] / one['rate']:.2f}, "
                f"queue reads/msg {old['reads']:.3f}, empty claims {old['empty']}",
                flush=True,
            )
            record(
                f"executor, {args.procs} processes, whole queue each",
                old["rate"],
                "msg/s",
                floor=one["rate"],
                ratio=old["rate"] / one["rate"] if one["rate"] else None,
                us_per_message=old["us"],
                rss_mb=old["rss_mb"],
                note=f"reads/msg {old['reads']:.2f}, empty claims {old['empty']}",
            )
        print(f"load average at the end {os.getloadavg()[0]:.1f}", flush=True)
        assert dupes == 0, "a message was sent twice"
        record("executor, 1 process", one["rate"], "msg/s", us_per_message=one["us"], rss_mb=one["rss_mb"])
        record(
            f"executor, {args.procs} processes",
            many["rate"],
            "msg/s",
            floor=one["rate"],
            ratio=ratio,
            us_per_message=many["us"],
            rss_mb=many["rss_mb"],
            note=f"vs 1 process; load {load[0]:.1f}",
        )
        record(f"queue reads per message, {args.procs} processes", many["reads"], "reads/msg", rss_mb=None)
        record(f"empty claims, {args.procs} processes", many["empty"], "claims", rss_mb=None)
        record("store round trips per 1,000 messages", many["round_trips"], "round trips", rss_mb=None, note="executor")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=30_000, help="messages per run (default 30,000)")
    p.add_argument("--procs", type=int, default=2, help="executor processes of the second run (default 2)")
    p.add_argument("--batch", type=int, default=1000, help="claim batch size (default 1000)")
    p.add_argument("--workers", type=int, default=6, help="workers per list (default 6)")
    p.add_argument("--pool", type=int, default=30, help="concurrent provider requests per process (default 30)")
    p.add_argument("--file", action="store_true", help="file-backed store instead of in-memory")
    p.add_argument("--lists", default=",".join(PROVIDERS), help="providers, one list each (default infobip,cm,twilio)")
    p.add_argument("--compare", action="store_true", help="also run N processes without shares (the old way)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--unshared", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--name", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        from trackly_exec.logs import configure_logging

        configure_logging("warning", "auto")
        run(child(json.loads(a.child), a.name, not a.unshared))
    else:
        main(a)
