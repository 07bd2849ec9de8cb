"""Campaign-engine benchmark: audience evaluation + queuing throughput, its floor, memory, and end to end.

    .venv/bin/python bench/campaign.py                 # 100k evaluation vs floor, RSS at 100k, 10k end to end
    .venv/bin/python bench/campaign.py --n 1000000     # also RSS (and throughput) at 1M contacts (takes minutes)
    .venv/bin/python bench/campaign.py --skip-e2e
    .venv/bin/python bench/campaign.py --n 20000 --only-n --skip-e2e --repeat 3   # iterate: 3 rounds at 20k

What is measured (embedded nx-27017, in memory, started by this script):

1. **Evaluation and queuing** of N contacts in two audiences that overlap by 10% of N, with every filter on
   (unsubscribed/blocked, invalid phone, in-workflow exclusion, frequency cap with recent MessageSent records,
   quiet hours, a placeholder without default, opt-out footer, two variants): contacts/s of
   ``scheduler.trigger`` (unique contacts / wall time); then again with tracked links on (one more insert,
   a MessageShortLink, per message).
2. **The floor**, in the same run and store, right after each evaluation: the same documents read and written
   with the least store work: each contact read once with one plain cursor, and per batch (same size) one
   unordered ``insert_many`` each of the queue documents, their cooldown reservations and (with tracked links)
   their MessageShortLink documents. Ratio = floor time / our time (1.0 would mean the engine costs nothing
   beyond the store's own work). Every size up to 200k gets its floors and the tracked-links run.
3. **Peak RSS** of a fresh process that evaluates N contacts (``ru_maxrss``; the store is another process):
   bounded if it does not grow with N.
4. **10,000-contact campaign**: trigger -> all queued, and trigger -> all accepted by the Infobip fake (the
   executor's ``Coordinator.run_until_idle``; the list's rate limit is raised so the provider is not paced).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _common import record  # noqa: E402

from trackly_exec.config import Settings  # noqa: E402
from trackly_exec.logs import configure_logging  # noqa: E402
from trackly_exec.store import constants as c  # noqa: E402
from trackly_exec.store import phones  # noqa: E402
from trackly_exec.store.models import new_message_id, utcnow  # noqa: E402
from trackly_exec.testing.seeding import queued_message  # noqa: E402

BATCH = int(os.environ.get("BENCH_BATCH", "2000"))  # scheduler.evaluation_batch_size, and the floor's batch


def settings_for(
    uri: str, db: str, data_dir: str, fake_url: str = "http://127.0.0.1:9", key: str = "bench"
) -> Settings:
    return Settings.model_validate(
        {
            "daemon": {"data_dir": data_dir, "log_level": "warning"},
            "mongo": {"uri": uri, "database": db},
            "http": {"port": 0, "public_url": "http://127.0.0.1:8080"},
            "scheduler": {"evaluation_batch_size": BATCH},
            "executor": {"poll_interval_seconds": 0.05},
            "drivers": {"infobip": {"base_url": fake_url, "api_key": key}},
        }
    )


def zone(inside: bool) -> str:
    import datetime as dt
    from zoneinfo import ZoneInfo

    now = dt.datetime.now(dt.UTC)
    for off in range(-12, 13):
        name = f"Etc/GMT{'+' if off >= 0 else '-'}{abs(off)}"
        h = now.astimezone(ZoneInfo(name)).hour
        if (inside and 9 <= h < 19) or (not inside and (0 <= h < 6 or h >= 22)):
            return name
    raise RuntimeError("no zone")


async def seed(store: Any, n: int, *, every_filter: bool = True, phone_checks: bool = True) -> dict[str, int]:
    """Seed one account/list/creative/campaign and n contacts, streamed in chunks (bounded memory here).

    ``phone_checks``: each contact with the ``phone_check`` our writers store (the API, CSV import, demo); without
    it, contacts as other tools would insert them (the evaluation parses every number)."""
    import datetime as dt

    db = store.db
    inside, outside = zone(True), zone(False)
    await db[c.ACCOUNTS].insert_one({"_id": 1, "name": "bench", "balance": 1e9})
    await db[c.SENDING_LISTS].insert_one(
        {
            "_id": 1,
            "account_id": 1,
            "name": "bench",
            "driver": "infobip",
            "driver_settings": {},
            "from_number": "+15550001111",
            "rate_limit_per_minute": 10_000_000,
            "cooldown_minutes": 60 if every_filter else 0,
            "quiet_hours": {"start": "08:00", "end": "21:00", "default_timezone": "America/New_York"},
            "blocked_words": [],
            "price_per_segment": 0.0,
            "active": True,
            "opt_out_footer": "Reply STOP to opt out" if every_filter else None,
            "created_at": utcnow(),
        }
    )
    lo, hi = int(n * 0.45), int(n * 0.55)  # A = 1..0.55n, B = 0.45n+1..n: overlap 0.1n
    now = utcnow()
    recent: list[dict[str, Any]] = []
    for start in range(1, n + 1, 10_000):
        docs = []
        for i in range(start, min(start + 10_000, n + 1)):
            seg = "a" if i <= lo else ("ab" if i <= hi else "b")
            d: dict[str, Any] = {
                "_id": i,
                "sending_list_id": 1,
                "phone": f"+1212{2000000 + i:07d}",
                "first_name": f"Ann{i}",
                "last_name": None,
                "attributes": {"seg": seg, "city": "Paris", "tier": "gold" if i % 3 else "silver"},
                "timezone": inside,
                "subscribed": True,
                "blocked": False,
                "in_workflow": False,
                "last_sent_at": None,
                "created_at": now,
                "updated_at": now,
            }
            if every_filter:
                r = i % 100
                if r == 1 or r == 2:
                    d["subscribed"] = False
                elif r == 3:
                    d["blocked"] = True
                elif r == 4:
                    d["phone"] = f"+1555{i:07d}"  # not a valid number
                elif r in (5, 6, 7):
                    d["in_workflow"] = True
                elif r in (8, 9):
                    recent.append(
                        {
                            "_id": new_message_id(),
                            "sending_list_id": 1,
                            "account_id": 1,
                            "to_number": d["phone"],
                            "timestamp": now - dt.timedelta(minutes=5),
                        }
                    )
                elif r in (10, 11, 12, 13, 14):
                    d["timezone"] = outside
                elif r == 15:
                    d["first_name"] = None  # {first_name} has no default
            if phone_checks:
                d["phone_check"] = phones.phone_check(d["phone"])
            docs.append(d)
        await db[c.CONTACTS].insert_many(docs, ordered=False)
        if len(recent) >= 10_000:
            await db[c.SENT].insert_many(recent, ordered=False)
            recent = []
    if recent:
        await db[c.SENT].insert_many(recent, ordered=False)
    await db[c.AUDIENCES].insert_many(
        [
            {
                "_id": 1,
                "sending_list_id": 1,
                "name": "A",
                "filter": {"attributes.seg": {"in": ["a", "ab"]}},
                "contact_ids": None,
            },
            {
                "_id": 2,
                "sending_list_id": 1,
                "name": "B",
                "filter": {"attributes.seg": {"in": ["b", "ab"]}},
                "contact_ids": None,
            },
        ]
    )
    body = (
        "Hi {first_name}, {city|friend} deals: https://shop.example.com/sale?c=1"
        if every_filter
        else "Hi {first_name|there}!"
    )
    await db[c.CREATIVES].insert_one(
        {
            "_id": 1,
            "account_id": 1,
            "name": "bench",
            "selection": "split",
            "variants": [
                {"key": "A", "body": body, "weight": 50},
                {"key": "B", "body": body.replace("Hi", "Hello"), "weight": 50},
            ],
        }
    )
    await db[c.CAMPAIGNS].insert_one(
        {
            "_id": 1,
            "account_id": 1,
            "sending_list_id": 1,
            "audience_ids": [1, 2],
            "creative_id": 1,
            "schedule": {"at": None, "cron": None, "timezone": "UTC"},
            "exclude_in_workflow": every_filter,
            "quiet_hours_policy": "exclude",
            "track_links": False,
            "status": "active",
            "next_run_at": None,
            "created_at": now,
        }
    )
    return {"contacts": n}


async def evaluate_phase(uri: str, db: str, data_dir: str) -> dict[str, Any]:
    """Run one trigger (in this fresh process) and report its throughput and this process's peak RSS."""
    from trackly_exec.app import Trackly
    from trackly_exec.campaigns.scheduler import trigger
    from trackly_exec.store.client import Store

    settings = settings_for(uri, db, data_dir)
    store = await Store.connect(uri, db)
    trackly = Trackly(settings, store)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    cpu0 = _cpu_self()
    t0 = time.perf_counter()
    eid = await trigger(trackly, 1, force=True)  # the tracked-links run is this one-off campaign's second
    secs = time.perf_counter() - t0
    cpu = _cpu_self() - cpu0
    ex = await store.db[c.EXECUTIONS].find_one({"_id": eid})
    assert ex is not None
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    await trackly.close()
    k = ex["counts"]
    return {
        "seconds": secs,
        "unique": k["unique"],
        "queued": k["queued"],
        "counts": k,
        "contacts_per_s": k["unique"] / secs,
        "cpu_seconds": cpu,
        "rss_before_mb": rss0 / 1024,
        "peak_rss_mb": rss / 1024,
    }


async def floor_phase(uri: str, db: str, queued: int, links: int) -> dict[str, Any]:
    """The least store work for the same outcome: read the list's contacts with one plain cursor (each once:
    the union of the two audiences is the whole list here) and insert, per batch, the same documents the
    evaluation writes: ``queued`` queue documents, as many cooldown reservations (the list has a cooldown), and
    ``links`` MessageShortLink documents (0 or one per message), each one unordered ``insert_many`` per batch,
    into collections with the product's indexes."""
    from trackly_exec.campaigns.audience import CONTACT_PROJECTION
    from trackly_exec.store.client import INDEXES, Store

    store = await Store.connect(uri, db)
    names = {"queue": c.QUEUED, "reservations": c.RESERVATIONS, "links": c.SHORT_LINKS}
    colls = {k: store.db[f"bench_floor_{k}"] for k in names}
    for k, coll in colls.items():
        await coll.create_indexes(INDEXES[names[k]])
    now = utcnow()
    template = queued_message(
        "",
        sending_list_id=1,
        execution_id=999,
        contact_id=0,
        variant_key="A",
        from_number="+15550001111",
        to_number="+12122000001",
        body="Hi Ann, Paris deals: http://127.0.0.1:8080/l/abcdefghijkl\nReply STOP to opt out",
        sendtime=now,
        created_at=now,
    )
    cpu0 = _cpu_self()
    t0 = time.perf_counter()
    cursor = store.db[c.CONTACTS].find({"sending_list_id": {"$eq": 1}}, CONTACT_PROJECTION).batch_size(BATCH)
    read = inserted = linked = 0
    while True:
        batch = await cursor.to_list(BATCH)
        if not batch:
            break
        read += len(batch)
        take = min(len(batch), queued - inserted)
        if take > 0:
            msgs = [{**template, "_id": new_message_id(), "contact_id": d["_id"]} for d in batch[:take]]
            await colls["reservations"].insert_many(
                [
                    {
                        "_id": f"1:{d['phone']}",
                        "sending_list_id": 1,
                        "to_number": d["phone"],
                        "contact_id": d["_id"],
                        "execution_id": 999,
                        "campaign_id": 1,
                        "message_id": m["_id"],
                        "reserved_at": now,
                        "state": "held",
                        "sent_at": None,
                    }
                    for d, m in zip(batch, msgs, strict=False)
                ],
                ordered=False,
            )
            await colls["queue"].insert_many(msgs, ordered=False)
            inserted += take
            n_links = min(take, links - linked)
            if n_links > 0:
                await colls["links"].insert_many(
                    [
                        {
                            "_id": new_message_id(),
                            "message_id": m["_id"],
                            "destination": "https://shop.example.com/sale?c=1",
                            "account_id": 1,
                            "campaign_id": 1,
                            "execution_id": 999,
                            "creative_id": 1,
                            "variant_key": "A",
                            "contact_id": m["contact_id"],
                            "clicks": 0,
                            "human_clicks": 0,
                            "created_at": now,
                        }
                        for m in msgs[:n_links]
                    ],
                    ordered=False,
                )
                linked += n_links
    secs = time.perf_counter() - t0
    cpu = _cpu_self() - cpu0
    for coll in colls.values():
        await coll.drop()
    await store.client.close()
    return {"seconds": secs, "cpu_seconds": cpu, "read": read, "inserted": inserted, "links": linked}


def _cpu_self() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _cpu_of(pid: int) -> float:
    """CPU seconds used so far by process ``pid`` (the store)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


STORE_PID = 0  # the embedded store of the running evaluation_bench


def run_child(phase: str, *args: str) -> dict[str, Any]:
    before = _cpu_of(STORE_PID) if STORE_PID else 0.0
    out = subprocess.run(
        [sys.executable, __file__, "--phase", phase, *args], capture_output=True, text=True, check=False, cwd=ROOT
    )
    if out.returncode != 0:
        raise RuntimeError(f"{phase} failed:\n{out.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    result["store_cpu_seconds"] = (_cpu_of(STORE_PID) - before) if STORE_PID else None
    return result


async def evaluation_bench(
    n: int, data_dir: str, *, links: bool = True, with_floor: bool = True, repeat: int = 1, phone_checks: bool = True
) -> dict[str, Any]:
    from trackly_exec.store.client import Store

    settings = Settings.model_validate(
        {
            "daemon": {"data_dir": data_dir},
            "mongo": {"uri": "embedded", "embedded_in_memory": True, "database": f"bench{n}"},
        }
    )
    global STORE_PID
    store = await Store.open(settings)
    assert store.embedded is not None and store.embedded.proc is not None
    STORE_PID = store.embedded.proc.pid
    try:
        t0 = time.perf_counter()
        await seed(store, n, phone_checks=phone_checks)
        seeded = time.perf_counter() - t0
        uri, db = store.embedded.uri, settings.mongo.database
        if not with_floor:
            ours = run_child("evaluate", uri, db, data_dir)
            return {"n": n, "seed_seconds": seeded, "ours": ours, "floor": None, "ratio": None}
        # Each floor right after its run (same store state, the machine's load alike for both); `repeat` rounds,
        # the ratio taken over their summed times (a loaded machine's swings average out).

        async def fresh(track_links: bool) -> None:  # the previous run's messages, reservations and links gone
            for name in (c.QUEUED, c.RESERVATIONS, c.SHORT_LINKS):
                await store.db[name].delete_many({})
            await store.db[c.CAMPAIGNS].update_one({"_id": 1}, {"$set": {"track_links": track_links}})

        def summed(runs: list[dict[str, Any]]) -> dict[str, Any]:
            out = dict(runs[-1])
            for k in ("seconds", "cpu_seconds", "store_cpu_seconds", "unique"):
                out[k] = sum(r[k] for r in runs)
            if "contacts_per_s" in out:
                out["contacts_per_s"] = out["unique"] / out["seconds"]
            out["peak_rss_mb"] = max(r.get("peak_rss_mb", 0) for r in runs)
            return out

        ours_runs, floor_runs, linked_runs, floor_link_runs = [], [], [], []
        for k in range(repeat):
            if k:
                await fresh(False)
            ours_runs.append(run_child("evaluate", uri, db, data_dir))
            floor_runs.append(run_child("floor", uri, db, str(ours_runs[-1]["queued"]), "0"))
            for r in floor_runs[-1:]:
                r["unique"] = ours_runs[-1]["unique"]
            if links:
                # Same campaign with tracked links: one MessageShortLink insert per message on top.
                await fresh(True)
                linked_runs.append(run_child("evaluate", uri, db, data_dir))
                lk = linked_runs[-1]
                floor_link_runs.append(run_child("floor", uri, db, str(lk["queued"]), str(lk["counts"]["links"])))
                floor_link_runs[-1]["unique"] = lk["unique"]
        ours, floor = summed(ours_runs), summed(floor_runs)
        out = {
            "n": n,
            "seed_seconds": seeded,
            "ours": ours,
            "floor": floor,
            "ratio": floor["seconds"] / ours["seconds"],
            "ratios": [f["seconds"] / o["seconds"] for o, f in zip(ours_runs, floor_runs, strict=True)],
        }
        if links:
            linked, floor_links = summed(linked_runs), summed(floor_link_runs)
            out.update(
                linked=linked,
                floor_links=floor_links,
                linked_ratio=floor_links["seconds"] / linked["seconds"],
                linked_ratios=[f["seconds"] / o["seconds"] for o, f in zip(linked_runs, floor_link_runs, strict=True)],
            )
        return out
    finally:
        await store.client.drop_database(settings.mongo.database)
        await store.close()


async def e2e_bench(n: int, data_dir: str) -> dict[str, Any]:
    """Trigger -> all queued, trigger -> all accepted by the Infobip fake, for an n-contact campaign."""
    from trackly_exec.app import Trackly
    from trackly_exec.campaigns.scheduler import trigger
    from trackly_exec.testing.fakes.infobip import InfobipFake

    try:
        from trackly_exec.executor.coordinator import Coordinator
    except ImportError:
        Coordinator = None  # type: ignore[assignment,misc]
    fake = InfobipFake(api_key="bench-key")
    await fake.start()
    settings = settings_for("embedded", "e2e", data_dir, fake.url, "bench-key")
    settings.mongo.embedded_in_memory = True
    trackly = await Trackly.open(settings)
    try:
        await seed(trackly.store, n, every_filter=False)
        t0 = time.perf_counter()
        eid = await trigger(trackly, 1)
        queued_s = time.perf_counter() - t0
        ex = await trackly.db[c.EXECUTIONS].find_one({"_id": eid})
        out: dict[str, Any] = {"n": n, "queued": ex["counts"]["queued"], "trigger_to_queued_s": queued_s}
        if Coordinator is None:
            out["trigger_to_accepted_s"] = None
            out["note"] = "executor (trackly_exec.executor.coordinator) not available"
            return out
        coord = Coordinator(trackly)
        counts = await coord.run_until_idle()
        out["trigger_to_accepted_s"] = time.perf_counter() - t0
        out["accepted_by_fake"] = len(fake.ledger)
        out["unique_accepted"] = len({e.message_id for e in fake.ledger})
        out["coordinator_counts"] = counts
        return out
    finally:
        await trackly.close()
        await fake.stop()


def cpu_line(ours: dict[str, Any], floor: dict[str, Any]) -> str:
    """CPU per unique contact: the evaluating process's and the store's, ours vs the floor's."""
    n = ours["unique"]

    def us(x: float | None) -> str:
        return f"{x / n * 1e6:.0f}" if x is not None else "?"

    return (
        f"CPU us/contact: evaluator {us(ours['cpu_seconds'])} (floor {us(floor['cpu_seconds'])}), "
        f"store {us(ours['store_cpu_seconds'])} (floor {us(floor['store_cpu_seconds'])})"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--n", type=int, default=0, help="also measure throughput and peak RSS at this many contacts (e.g. 1000000)"
    )
    ap.add_argument("--only-n", action="store_true", help="with --n: skip the 100k run")
    ap.add_argument("--skip-e2e", action="store_true", help="skip the 10k end-to-end run")
    ap.add_argument("--e2e-n", type=int, default=10_000)
    ap.add_argument(
        "--repeat", type=int, default=1, help="rounds of (ours, floor) per size, times summed (3 on a loaded machine)"
    )
    ap.add_argument(
        "--raw-contacts",
        action="store_true",
        help="seed contacts without the phone_check our writers store (as other tools would insert them)",
    )
    ap.add_argument("--phase", help=argparse.SUPPRESS)
    ap.add_argument("args", nargs="*", help=argparse.SUPPRESS)
    a = ap.parse_args()
    configure_logging("warning", "console", stream=sys.stderr)
    if a.phase == "evaluate":
        print(json.dumps(asyncio.run(evaluate_phase(*a.args)), default=str))
        return 0
    if a.phase == "floor":
        print(json.dumps(asyncio.run(floor_phase(a.args[0], a.args[1], int(a.args[2]), int(a.args[3])))))
        return 0
    tmp = tempfile.mkdtemp(prefix="trackly-bench-")
    try:
        sizes = ([] if a.only_n and a.n else [100_000]) + ([a.n] if a.n and a.n != 100_000 else [])
        for n in sizes:
            base = n <= 200_000  # floors and the tracked-links run: not at 1M (minutes more, same ratios)
            r = asyncio.run(
                evaluation_bench(
                    n,
                    os.path.join(tmp, f"n{n}"),
                    links=base,
                    with_floor=base,
                    repeat=a.repeat,
                    phone_checks=not a.raw_contacts,
                )
            )
            o, f = r["ours"], r["floor"]
            k = o["counts"]
            how = "without phone checks: every number parsed" if a.raw_contacts else "phone checks stored"
            print(f"\n== evaluation + queuing, {n:,} contacts (2 audiences, 10% overlap, every filter on; {how})")
            print(
                f"   per audience {k['per_audience']}, total {k['audience_total']:,}, overlap {k['overlap']:,}, "
                f"unique {k['unique']:,}"
            )
            print(f"   skipped {k['skipped']}; queued {k['queued']:,} (links {k['links']:,}, variants {k['variants']})")
            print(
                f"   ours : {o['seconds']:.2f} s  -> {o['contacts_per_s']:,.0f} contacts/s   (split {k.get('seconds')})"
            )
            if f is not None:
                print(
                    f"   floor: {f['seconds']:.2f} s  (plain cursor over {f['read']:,} + insert {f['inserted']:,} queue docs "
                    "and as many reservations)"
                )
                each = ", ".join(f"{x:.2f}" for x in r["ratios"])
                print(f"   ratio floor/ours: {r['ratio']:.2f} (rounds: {each})   {cpu_line(o, f)}")
            print(
                f"   peak RSS of the evaluating process: {o['peak_rss_mb']:.0f} MB (at start {o['rss_before_mb']:.0f} MB)"
                f"   [seeding took {r['seed_seconds']:.1f} s]"
            )
            record(
                f"evaluation + queuing, {n:,} contacts",
                o["contacts_per_s"],
                "contacts/s",
                ratio=r["ratio"] if f is not None else None,
                rss_mb=o["peak_rss_mb"],
            )
            if "linked" in r:
                lk = r["linked"]
                print(
                    f"   with tracked links (+{lk['counts']['links']:,} MessageShortLink inserts): {lk['seconds']:.2f} s "
                    f"-> {lk['contacts_per_s']:,.0f} contacts/s (queued {lk['queued']:,}), floor "
                    f"{r['floor_links']['seconds']:.2f} s, ratio floor/ours {r['linked_ratio']:.2f} "
                    f"(rounds: {', '.join(f'{x:.2f}' for x in r['linked_ratios'])}), "
                    f"peak RSS {lk['peak_rss_mb']:.0f} MB\n      {cpu_line(lk, r['floor_links'])}; "
                    f"split {lk['counts'].get('seconds')}"
                )
                record(
                    f"evaluation + queuing with links, {n:,} contacts",
                    lk["contacts_per_s"],
                    "contacts/s",
                    ratio=r["linked_ratio"],
                    rss_mb=lk["peak_rss_mb"],
                )
        if not a.skip_e2e:
            e = asyncio.run(e2e_bench(a.e2e_n, os.path.join(tmp, "e2e")))
            print(f"\n== {e['n']:,}-contact campaign end to end (Infobip fake)")
            print(f"   trigger -> all queued   : {e['trigger_to_queued_s']:.2f} s ({e['queued']:,} queued)")
            if e.get("trigger_to_accepted_s") is None:
                print(f"   trigger -> all accepted : not available ({e.get('note')})")
            else:
                print(
                    f"   trigger -> all accepted : {e['trigger_to_accepted_s']:.2f} s "
                    f"({e['accepted_by_fake']:,} accepted, {e['unique_accepted']:,} unique; "
                    f"coordinator {e['coordinator_counts']})"
                )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
