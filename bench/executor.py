"""Executor throughput against its storage floor.

Pre-queues N messages (default 100,000) on three lists (Infobip, CM, Twilio fakes, each served by its own
``trackly fake-provider`` process), rate limit off (``rate_limit_per_minute = 0``; ``--rate`` sets one),
Redis limiter configured. Prints:

- executor msg/s, from the first claim to the last record (one ``run_until_idle`` in this process);
- the storage floor, measured in the same run on the same store: the same store operations per message
  (find due ids, claim, read claimed, mark intent, insert records, delete) in the same batch sizes and
  with the same concurrency (lists x workers_per_list), with no other logic;
- the ratio executor / floor, and the peak RSS of this process;
- the bare floor (minimal documents, the same six operations) at its best batch size and concurrency, found by
  trials, then run on the same number of messages as the executor, alternating with it ``--rounds`` times (default
  2): the ratio executor / bare floor is each side's messages over its total time in those rounds.

``--send-client auto|aiohttp|keepalive`` picks the drivers' send client (default auto, as the drivers' default: the
keep-alive client unless a proxy in the environment applies); ``--breakdown`` then prints the executor's CPU
us/message for the three-provider mix and for each provider alone, on both send clients (the chosen one first), in
the same run, and the CPU of one HTTP request on a bare asyncio protocol (the floor of a one-message-per-request
provider such as Twilio on this machine).

    .venv/bin/python bench/executor.py [--n 100000] [--rounds 2] [--file] [--rate 0] [--send-client auto] [--breakdown]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
import uuid
from typing import Any, NamedTuple

from _common import fake_credentials, ledger, peak_rss_mb, proc_cpu, record, run, seed_lists, services

from trackly_exec.store import constants as c
from trackly_exec.app import Trackly, tune_gc
from trackly_exec.executor.claims import due_filter
from trackly_exec.config import load_config
from trackly_exec.executor.coordinator import Coordinator
from trackly_exec.store.models import epoch_ms, utcnow
from trackly_exec.executor.outcomes import sent_doc
from trackly_exec.store.client import Store
from trackly_exec.drivers.http import choose_send_client, env_proxy
from yarl import URL

PROVIDERS = ("infobip", "cm", "twilio")
SEND_CLIENTS = ("aiohttp", "keepalive")


def effective(send_client: str, url: str) -> str:
    """The client a driver with ``send_client`` uses for ``url`` (``auto`` resolved as the driver resolves it)."""
    base = URL(url)
    return choose_send_client(send_client, base, env_proxy(base)[0])


class _RawConn(asyncio.Protocol):
    """A keep-alive connection that only finds where each answer ends (``Content-Length``)."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.done: asyncio.Future[None] | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        head = self.buf.find(b"\r\n\r\n")
        if head < 0 or self.done is None:
            return
        at = self.buf.lower().find(b"content-length:", 0, head)
        length = int(self.buf[at + 15 : self.buf.find(b"\r\n", at)]) if at >= 0 else 0
        if len(self.buf) >= head + 4 + length:
            del self.buf[: head + 4 + length]
            self.done.set_result(None)


async def raw_request_cpu(url: str, concurrency: int, n: int = 10_000) -> float:
    """CPU us of this process per request: ``n`` pre-encoded Twilio send requests on ``concurrency`` keep-alive
    connections of a bare asyncio protocol (the least a one-message-per-request provider costs here)."""
    from drivers.twilio import TwilioDriver, TwilioSettings
    from trackly_exec.drivers.contract import outbound_message

    driver = TwilioDriver(TwilioSettings(base_url=url, **fake_credentials("twilio")))
    await driver.startup()
    try:
        assert driver._http is not None
        body = driver.form_body(outbound_message("m0", "+12025550100", "+15550000000", "Your code is 0", 1))
        head = driver._http._head(driver._send_path, {"Content-Type": "application/x-www-form-urlencoded"})
        request = head + str(len(body)).encode() + b"\r\n\r\n" + body
    finally:
        await driver.shutdown()
    loop = asyncio.get_running_loop()
    host, port = URL(url).host or "127.0.0.1", URL(url).port
    conns = [(await loop.create_connection(_RawConn, host, port))[1] for _ in range(concurrency)]
    left = [n]

    async def one(conn: _RawConn) -> None:
        while left[0] > 0:
            left[0] -= 1
            conn.done = loop.create_future()
            assert conn.transport is not None
            conn.transport.write(request)
            await conn.done

    c0 = time.process_time()
    await asyncio.gather(*(one(conn) for conn in conns))
    spent = time.process_time() - c0
    for conn in conns:
        if conn.transport is not None:
            conn.transport.close()
    return spent / n * 1e6


async def cpu_per_message(coord: Coordinator, store: Store, lists: dict[int, str], each: int, rate: int) -> float:
    """Seed ``each`` messages on every list in ``lists``, run the coordinator until idle: process CPU us/message."""
    await seed_lists(store, each * len(lists), lists, rate=rate, price=0.001, contacts=False)
    before = coord.counts["sent"]
    c0 = time.process_time()
    await coord.run_until_idle()
    return (time.process_time() - c0) / max(coord.counts["sent"] - before, 1) * 1e6


async def list_spans(store: Store, lists: dict[int, str], since: Any) -> dict[int, tuple[int, float]]:
    """Per list: the records written since ``since`` and the seconds from ``since`` to the last of them (a list whose
    provider takes one message per request, Twilio's, ends last: the run's time is its time)."""
    from trackly_exec.store.client import count

    out: dict[int, tuple[int, float]] = {}
    for lid in lists:
        mine = {"sending_list_id": lid, "timestamp": {"$gte": since}}
        last = await store.db[c.SENT].find_one(mine, {"timestamp": 1}, sort=[("timestamp", -1)])
        if last is not None:
            at = last["timestamp"] if last["timestamp"].tzinfo else last["timestamp"].replace(tzinfo=since.tzinfo)
            out[lid] = (await count(store.db, c.SENT, mine), (at - since).total_seconds())
    return out


async def floor(store: Store, lists: list[int], batch: int, workers: int) -> tuple[int, float]:
    """The bare store work of the executor on what is queued; returns (messages, seconds).

    Same operations and sizes as the executor: one read of due ids serves ``workers`` batches of a list;
    per batch: conditional claim of the ids, read of the claimed documents, intent, insert of the records,
    delete of the queue entries.
    """
    q, sent = store.db[c.QUEUED], store.db[c.SENT]
    done = 0
    candidates: dict[int, list[str]] = {lid: [] for lid in lists}
    locks = {lid: asyncio.Lock() for lid in lists}

    async def take(lid: int, now: Any) -> list[str]:
        async with locks[lid]:
            if not candidates[lid]:
                candidates[lid] = [
                    d["_id"]
                    async for d in q.find(due_filter(now, lid), {"_id": 1}).sort([("due_ms", 1)]).limit(batch * workers)
                ]
            ids, candidates[lid] = candidates[lid][:batch], candidates[lid][batch:]
            return ids

    async def worker(lid: int) -> None:
        nonlocal done
        while True:
            now = utcnow()
            token = f"floor:{uuid.uuid4().hex}"
            ids = await take(lid, now)
            if not ids:
                return
            claim = {"$set": {"claimed_by": token, "claimed_at": epoch_ms(now)}}  # as the executor: epoch ms
            await q.update_many({"_id": {"$in": ids}, **due_filter(now)}, claim)
            docs = await q.find({"claimed_by": {"$eq": token}}).to_list(None)
            if not docs:
                continue
            mine = [d["_id"] for d in docs]
            await q.update_many({"_id": {"$in": mine}, "claimed_by": token}, {"$set": {"sending_at": epoch_ms(now)}})
            await sent.insert_many(
                [
                    sent_doc(d, provider="floor", provider_message_id=d["_id"], segments=1, cost=0.0, now=now)
                    for d in docs
                ],
                ordered=False,
            )
            await q.delete_many({"_id": {"$in": mine}, "claimed_by": token})
            done += len(mine)

    started = time.perf_counter()
    await asyncio.gather(*(worker(lid) for lid in lists for _ in range(workers)))
    return done, time.perf_counter() - started


BARE = "bare_floor"


async def bare_floor(store: Store, n: int, lists: list[int], batch: int, workers: int) -> tuple[int, float]:
    """The least store work that can deliver ``n`` messages, on minimal documents; returns (messages, seconds).

    The six operations every claim-based sender needs, with nothing of the executor's design: documents of
    five short fields in a collection of their own, due = unclaimed (no sendtime or backoff conditions), ids
    read per batch, claim, read back what was claimed, mark intent, insert a three-field record, delete.
    ``workers`` batches run at once per list.
    """
    q, rec = store.db[BARE], store.db[BARE + "_sent"]
    await q.drop()
    await rec.drop()
    await q.create_index([("l", 1), ("c", 1), ("t", 1)])
    now = utcnow()
    for start in range(0, n, 5000):
        await q.insert_many(
            [
                {"_id": f"{k:016x}", "l": lists[k % len(lists)], "t": now, "c": None, "i": None}
                for k in range(start, min(n, start + 5000))
            ],
            ordered=False,
        )
    done = 0

    async def worker(lid: int) -> None:
        nonlocal done
        while True:
            token = uuid.uuid4().hex
            # ``$eq``: the one equality shape nx-27017 serves from the (l, c, t) index (a bare equality scans)
            ids = [d["_id"] async for d in q.find({"l": {"$eq": lid}, "c": None}, {"_id": 1}).sort("t", 1).limit(batch)]
            if not ids:
                return
            await q.update_many({"_id": {"$in": ids}, "c": None}, {"$set": {"c": token}})
            # by its ids and token: no index on ``c`` (SQLite's planner takes one for the claim's ``c: None`` and
            # reads every unclaimed document; trackly_exec.store.client.INDEXES)
            docs = await q.find({"_id": {"$in": ids}, "c": {"$eq": token}}, {"_id": 1}).to_list(None)
            mine = [d["_id"] for d in docs]
            if not mine:
                continue
            await q.update_many({"_id": {"$in": mine}, "c": token}, {"$set": {"i": 1}})
            await rec.insert_many([{"_id": m, "l": lid, "s": True} for m in mine], ordered=False)
            await q.delete_many({"_id": {"$in": mine}, "c": token})
            done += len(mine)

    started = time.perf_counter()
    await asyncio.gather(*(worker(lid) for lid in lists for _ in range(workers)))
    return done, time.perf_counter() - started


async def best_bare_floor(
    store: Store, n: int, lists: list[int], store_pid: int | None
) -> tuple[float, str, float, int, int]:
    """The bare floor at its best batch size and concurrency for this store (each tried on a fifth of ``n``):
    (msg/s, how, the store's CPU us per message in that run, batch, workers per list)."""
    trial = max(5000, n // 5)
    best = (0.0, "", 0.0, 1000, 1)
    for batch in (1000, 2000):
        for workers in (1, 2, 6):
            s0 = proc_cpu(store_pid)
            done, seconds = await bare_floor(store, trial, list(range(1, 4)), batch, workers)
            store_us = (proc_cpu(store_pid) - s0) / max(done, 1) * 1e6
            rate = done / seconds if seconds else 0.0
            if rate > best[0]:
                best = (rate, f"batch {batch}, {workers} per list x 3 lists", store_us, batch, workers)
    await store.db[BARE].drop()
    await store.db[BARE + "_sent"].drop()
    return best


async def bare_run(store: Store, n: int, lists: list[int], batch: int, workers: int, store_pid: int | None) -> Run:
    """The bare floor on ``n`` messages at one batch size and concurrency."""
    s0 = proc_cpu(store_pid)
    done, seconds = await bare_floor(store, n, lists, batch, workers)
    spent = proc_cpu(store_pid) - s0
    await store.db[BARE].drop()
    await store.db[BARE + "_sent"].drop()
    return Run(done, seconds, spent)


class Run(NamedTuple):
    """One measured run: messages, seconds, the store's CPU seconds."""

    messages: int
    seconds: float
    store_cpu: float


def rate_of(runs: list[Run]) -> float:
    """Messages per second over ``runs`` (total messages / total time)."""
    seconds = sum(r.seconds for r in runs)
    return sum(r.messages for r in runs) / seconds if seconds else 0.0


def store_us_of(runs: list[Run]) -> float:
    return sum(r.store_cpu for r in runs) / max(sum(r.messages for r in runs), 1) * 1e6


async def main(args: argparse.Namespace) -> None:
    LISTS = {k + 1: name for k, name in enumerate(args.lists.split(","))}  # noqa: N806
    with services(fakes=tuple(LISTS.values()), in_memory=not args.file) as svc:

        def config(send_client: str) -> Any:
            drivers: dict[str, Any] = {
                name: {
                    "base_url": svc["fakes"][name],
                    **fake_credentials(name),
                    "timeout_seconds": 30.0,
                    "send_client": send_client,
                }
                for name in LISTS.values()
            }
            return load_config(
                "/dev/null",
                daemon={"data_dir": str(svc["tmp"] / "data"), "instance_name": "bench"},
                mongo={"uri": svc["mongo_uri"], "database": "bench"},
                redis={"url": svc["redis_url"]},
                http={"enabled": False},
                executor={"claim_batch_size": args.batch, "workers_per_list": args.workers, "pool_size": args.pool},
                drivers=drivers,
            )

        settings = config(args.send_client)
        store = await Store.connect(svc["mongo_uri"], "bench")
        await store.ensure_indexes()
        trackly = await Trackly.open(settings, store=store)
        print(
            f"seeding {args.n:,} messages on {len(LISTS)} lists ({', '.join(LISTS.values())}), "
            f"{'file' if args.file else 'in-memory'} nx-27017 store, send client {args.send_client} "
            f"({effective(args.send_client, next(iter(svc['fakes'].values())))}) ...",
            flush=True,
        )
        t = time.perf_counter()
        ids = await seed_lists(store, args.n, LISTS, rate=args.rate, price=0.001)
        print(f"  seeded in {time.perf_counter() - t:.1f}s", flush=True)

        coord = Coordinator(trackly)
        tune_gc()  # as `trackly run` does
        load = os.getloadavg()[0]
        cpu0 = time.process_time()
        store0 = proc_cpu(svc["mongo_pid"])
        fakes0 = {k: proc_cpu(pid) for k, pid in svc["fake_pids"].items()}
        started, started_at = time.perf_counter(), utcnow()
        counts = await coord.run_until_idle()
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu0
        store_cpu = proc_cpu(svc["mongo_pid"]) - store0
        fakes_cpu = {k: proc_cpu(pid) - fakes0[k] for k, pid in svc["fake_pids"].items()}
        sent = counts.get("sent", 0)
        accepted = sum(ledger(u)["accepted"] for u in svc["fakes"].values())
        dupes = sum(ledger(u)["duplicates"] for u in svc["fakes"].values())
        exec_rate = sent / elapsed if elapsed else 0.0
        print(
            f"executor: {sent:,} sent in {elapsed:.2f}s = {exec_rate:,.0f} msg/s "
            f"(provider ledgers: {accepted:,} accepted, {dupes} duplicates; "
            f"other outcomes: { {k: v for k, v in counts.items() if k.startswith(('failed', 'held'))} }; "
            f"queue reads per message {counts.get('queue_reads', 0) / max(sent, 1):.2f}, "
            f"empty claims {counts.get('empty_claims', 0)})",
            flush=True,
        )

        spans = await list_spans(store, LISTS, started_at)
        print(
            "  per list, seconds from the start of the run to its last record: "
            + ", ".join(f"{LISTS[lid]} {end:.1f}s ({n:,} sent)" for lid, (n, end) in sorted(spans.items())),
            flush=True,
        )
        print(
            f"  executor process CPU: {cpu:.2f}s = {cpu / max(sent, 1) * 1e6:.0f} us/message "
            f"(one core would carry ~{max(sent, 1) / cpu if cpu else 0:,.0f} msg/s of executor work); "
            f"load average at start {load:.1f} on {os.cpu_count()} cores",
            flush=True,
        )
        store_us = store_cpu / max(sent, 1) * 1e6
        print(f"  store process CPU: {store_cpu:.2f}s = {store_us:.0f} us/message", flush=True)
        print(
            "  provider fakes' CPU (sharing the machine with the store and the executor): "
            + ", ".join(f"{k} {v:.2f}s" for k, v in fakes_cpu.items())
            + f" = {sum(fakes_cpu.values()) / max(sent, 1) * 1e6:.0f} us/message",
            flush=True,
        )
        us = cpu / max(sent, 1) * 1e6
        mix = "+".join(LISTS.values())
        if args.breakdown:
            # on the same store, for each send client (the chosen one first, on the coordinator just measured):
            # the mix, then each provider alone; process CPU per message
            each = max(1000, args.n // len(LISTS))
            chosen = effective(args.send_client, next(iter(svc["fakes"].values())))
            clients = [chosen, *(x for x in SEND_CLIENTS if x != chosen)]
            table: dict[str, dict[str, float]] = {}
            for client in clients:
                if client != chosen:
                    await trackly.close(close_store=False)
                    trackly = await Trackly.open(config(client), store=store)
                    coord = Coordinator(trackly)
                row = table[client] = {mix: await cpu_per_message(coord, store, LISTS, each // len(LISTS), args.rate)}
                for lid, name in LISTS.items():
                    row[name] = await cpu_per_message(coord, store, {lid: name}, each, args.rate)
                print(
                    f"  executor CPU per message, send client {client} (mix {each // len(LISTS) * len(LISTS):,}, "
                    f"each alone {each:,} messages): " + ", ".join(f"{k} {v:.0f} us" for k, v in row.items()),
                    flush=True,
                )
            for client, row in table.items():
                for name, v in row.items():
                    record(f"executor CPU, {name}, {client}", v, "us/msg", us_per_message=v)
            if len(table) == 2:
                a, k = table["aiohttp"], table["keepalive"]
                print(
                    "  aiohttp - keepalive per message: " + ", ".join(f"{n} {a[n] - k[n]:+.0f} us" for n in a),
                    flush=True,
                )
            if "twilio" in svc["fakes"]:
                raw = await raw_request_cpu(svc["fakes"]["twilio"], args.pool)
                record("one HTTP request, bare asyncio protocol", raw, "us/request", us_per_message=raw)
                print(
                    f"  one HTTP request on a bare asyncio protocol (pre-encoded Twilio request, {args.pool} keep-alive "
                    f"connections, no parsing beyond Content-Length): {raw:.0f} us of CPU, the floor of a provider "
                    "that takes one message per request on this machine",
                    flush=True,
                )
        await trackly.close(close_store=False)
        if args.no_floor:
            record(f"executor ({mix})", exec_rate, "msg/s", us_per_message=us)
            print(f"executor CPU per message: {us:.0f} us   target <= 60 us")
            await store.close()
            return
        await store.db[c.SENT].delete_many({})
        await seed_lists(store, args.n, LISTS, contacts=False)
        s0 = proc_cpu(svc["mongo_pid"])
        done, floor_s = await floor(store, list(LISTS), args.batch, args.workers)
        floor_store_us = (proc_cpu(svc["mongo_pid"]) - s0) / max(done, 1) * 1e6
        floor_rate = done / floor_s if floor_s else 0.0
        print(
            f"storage floor: {done:,} messages in {floor_s:.2f}s = {floor_rate:,.0f} msg/s "
            f"(find due once per {args.workers} batches; claim, read, intent, insert, delete per batch of {args.batch}; "
            f"{len(LISTS)} lists x {args.workers} workers)"
        )
        best_rate, bare_how, _, bare_batch, bare_workers = await best_bare_floor(
            store, args.n, list(LISTS), svc["mongo_pid"]
        )
        print(
            f"bare floor, best of batch x concurrency on {max(5000, args.n // 5):,} messages each: {bare_how} "
            f"({best_rate:,.0f} msg/s in that trial)",
            flush=True,
        )
        # The ratio: the executor and the bare floor (at its best batch and concurrency) on the same number of
        # messages, run alternately ``--rounds`` times in this sitting, each side's messages over its total time
        # (a best-of-six trial against one executor run would compare a maximum of noisy samples with a sample).
        exec_runs = [Run(sent, elapsed, store_cpu)]
        bare_runs = [await bare_run(store, args.n, list(LISTS), bare_batch, bare_workers, svc["mongo_pid"])]
        for _ in range(args.rounds - 1):
            # fresh queue and record collections, as the bare floor's are for each of its runs (after the runs
            # above, hundreds of thousands of inserted and deleted documents leave nx-27017's in-memory tables
            # slower: the same executor run measured 2,315 msg/s first and 1,433 msg/s there)
            await store.db[c.QUEUED].drop()
            await store.db[c.SENT].drop()
            await store.ensure_indexes()
            await seed_lists(store, args.n, LISTS, rate=args.rate, price=0.001, contacts=False)
            trackly = await Trackly.open(config(args.send_client), store=store)
            coord = Coordinator(trackly)
            s0, t0 = proc_cpu(svc["mongo_pid"]), time.perf_counter()
            again = (await coord.run_until_idle()).get("sent", 0)
            exec_runs.append(Run(again, time.perf_counter() - t0, proc_cpu(svc["mongo_pid"]) - s0))
            await trackly.close(close_store=False)
            bare_runs.append(await bare_run(store, args.n, list(LISTS), bare_batch, bare_workers, svc["mongo_pid"]))
        exec_rate, bare_rate = rate_of(exec_runs), rate_of(bare_runs)
        store_us, bare_store_us = store_us_of(exec_runs), store_us_of(bare_runs)
        print(
            f"alternating, {args.n:,} messages each run: executor "
            + " / ".join(f"{r.messages / r.seconds:,.0f}" for r in exec_runs)
            + " msg/s, bare floor "
            + " / ".join(f"{r.messages / r.seconds:,.0f}" for r in bare_runs)
            + f" msg/s: executor {exec_rate:,.0f} msg/s, bare floor {bare_rate:,.0f} msg/s over {args.rounds} rounds",
            flush=True,
        )
        print(f"ratio executor/floor (same operations as the executor): {exec_rate / floor_rate:.2f}")
        print(f"ratio executor/bare floor: {exec_rate / bare_rate:.2f}   target >= 0.8")
        print(
            f"store CPU per message (robust to machine load): executor {store_us:.0f} us, floor with the executor's "
            f"queries {floor_store_us:.0f} us, bare floor {bare_store_us:.0f} us: bare/executor "
            f"{bare_store_us / store_us if store_us else 0:.2f}"
        )
        print(f"executor CPU per message: {cpu / max(sent, 1) * 1e6:.0f} us   target <= 60 us (three-provider mix)")
        print(
            f"target 8,333 msg/s: {'met' if exec_rate >= 8333 else 'not met'} "
            f"(floor {'allows' if floor_rate >= 8333 else 'does not allow'} it on this machine)"
        )
        print(f"peak RSS (this process: executor + bench): {peak_rss_mb():.0f} MB")
        record(
            f"executor ({mix})",
            exec_rate,
            "msg/s",
            floor=bare_rate,
            ratio=exec_rate / bare_rate if bare_rate else None,
            us_per_message=us,
            note=f"floor: bare floor; store CPU {store_us:.0f} us/msg (bare floor {bare_store_us:.0f})",
        )
        record("storage floor (executor's queries)", floor_rate, "msg/s", ratio=exec_rate / floor_rate)
        assert len(ids) == args.n
        await store.close()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=100_000, help="messages to queue (default 100,000)")
    p.add_argument("--batch", type=int, default=1000, help="claim batch size (default 1000)")
    p.add_argument("--workers", type=int, default=6, help="workers per list (default 6)")
    p.add_argument("--pool", type=int, default=30, help="concurrent provider requests (default 30)")
    p.add_argument("--rate", type=int, default=0, help="rate limit per list per minute (default 0: off)")
    p.add_argument("--file", action="store_true", help="file-backed store instead of in-memory")
    p.add_argument("--no-floor", action="store_true", help="skip the floors (executor figures only)")
    p.add_argument(
        "--rounds", type=int, default=2, help="executor and bare floor runs, alternating, for the ratio (default 2)"
    )
    p.add_argument("--breakdown", action="store_true", help="then run each provider alone and print its CPU us/message")
    p.add_argument("--lists", default=",".join(PROVIDERS), help="providers, one list each (default infobip,cm,twilio)")
    p.add_argument(
        "--send-client", choices=("auto", *SEND_CLIENTS), default="auto", help="the drivers' send client (default auto)"
    )
    run(main(p.parse_args()))
