"""Delivery-report and click ingestion throughput against the daemon's real HTTP endpoints, each with its floor.

**Delivery reports**: Infobip-style posts of 100 reports each (``{"results": [...]}``) go to
``POST /webhooks/infobip/status/<token>`` of a running HttpServer on the embedded store (nx-27017, in memory),
several requests in flight from a separate load-generator process (as a provider would be; the daemon runs on
uvloop as ``trackly run`` does). Its floor, measured in the same run on as many other messages: the least store
work for the same outcome, per batch of reports: read the batch's MessageSent documents (``$in``), one unordered
``bulk_write`` of the conditional updates, and one insert of the batch's customer-webhook outbox document (the
events built from the documents read); no HTTP, no parsing. The floor runs at the concurrency that suits the
store best (the best of 1, 2, 4 and the benchmark's own, measured first).

**Clicks**: ``GET /l/<code>`` from the load generator with a browser user agent (so the bot rule reads the
message's send time), several requests in flight, on keep-alive connections. The load generator writes its
requests itself by default (``--click-client raw``, ~70 us of CPU per click): aiohttp's client cost it ~300 us
per click, taken from the two cores the daemon and the store run on, which the floor never pays, and it comes
back later to the daemon with the next requests (``--click-client aiohttp`` for the earlier figures). Its floor, per group of clicks as many as are in flight: read the links (``$in``), read
their MessageSent documents (``$in``; whole documents, which cost the store less than a projection of
``delivered_at``/``timestamp``), insert the click documents (``insert_many``), count them on the links (one
``bulk_write`` of ``$inc``), one group at a time (measured faster than two groups of half the size).

Store state is the same for both sides (everything is seeded first), and the runs are interleaved in rounds
(ours, floor, floor, ours, ...) so that a loaded machine's swings hit both alike; the ratio is the sum of the
floor's time over the sum of ours. Also printed: the store process's and the daemon's CPU time per item.

The reports of one request share one done time by default (the daemon then updates them with one statement);
``--done-times distinct`` gives each its own (one statement per report, the floor's shape). The daemon's
collector is tuned as ``trackly run`` tunes it (``tune_gc``).

    .venv/bin/python bench/tracking.py [--messages 20000] [--clicks 8000] [--concurrency 8] [--batch 100]
        [--done-times same|distinct]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import resource
import sys
import tempfile
import time
import urllib.parse
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
from pymongo import UpdateOne

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from trackly_exec.store import constants as c  # noqa: E402
from trackly_exec.app import Trackly, tune_gc  # noqa: E402
from trackly_exec.config import Settings  # noqa: E402
from trackly_exec.logs import configure_logging  # noqa: E402
from trackly_exec.store.models import Account, MessageSent, utcnow  # noqa: E402
from trackly_exec.operations.web import HttpServer  # noqa: E402

from _common import record  # noqa: E402

TOKEN = "bench-token-0123456789"
BROWSER = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 Version/17.0 Mobile Safari"


def report(mid: str, done_at: str = "2026-11-29T10:00:05.000+0000") -> dict[str, Any]:
    return {
        "bulkId": "B",
        "price": {"pricePerMessage": 0.01, "currency": "EUR"},
        "status": {
            "groupId": 3,
            "groupName": "DELIVERED",
            "id": 5,
            "name": "DELIVERED_TO_HANDSET",
            "description": "Message delivered to handset",
        },
        "error": {
            "groupId": 0,
            "groupName": "OK",
            "id": 0,
            "name": "NO_ERROR",
            "description": "No Error",
            "permanent": False,
        },
        "messageId": mid,
        "to": "14155550123",
        "sender": "14155550100",
        "sentAt": "2026-11-29T10:00:00.000+0000",
        "doneAt": done_at,
        "messageCount": 1,
    }


def ids_for(prefix: str, n: int) -> list[str]:
    return [f"{prefix}{i:014x}" for i in range(n)]


def codes_for(prefix: str, n: int) -> list[str]:
    return [f"{prefix}{i:010d}" for i in range(n)]


async def seed(trackly: Trackly, ids: list[str], account_id: int = 1, *, sent_at: dt.datetime | None = None) -> None:
    now = sent_at or utcnow()
    for start in range(0, len(ids), 5000):
        docs = [
            MessageSent(
                id=mid,
                account_id=account_id,
                sending_list_id=1,
                campaign_id=1,
                execution_id=1,
                contact_id=i,
                creative_id=1,
                variant_key="A",
                from_number="+14155550100",
                to_number="+14155550123",
                body="hello",
                length=5,
                sendtime=now,
                provider="infobip",
                provider_message_id=mid,
                timestamp=now,
            ).to_doc()
            for i, mid in enumerate(ids[start : start + 5000], start)
        ]
        await trackly.store[c.SENT].insert_many(docs)


async def seed_links(trackly: Trackly, codes: list[str], ids: list[str]) -> None:
    now = utcnow()
    for start in range(0, len(codes), 5000):
        await trackly.store[c.SHORT_LINKS].insert_many(
            [
                {
                    "_id": code,
                    "message_id": mid,
                    "destination": "https://shop.example.com/sale?c=1",
                    "account_id": 1,
                    "campaign_id": 1,
                    "execution_id": 1,
                    "creative_id": 1,
                    "variant_key": "A",
                    "contact_id": i,
                    "clicks": 0,
                    "human_clicks": 0,
                    "created_at": now,
                }
                for i, (code, mid) in enumerate(
                    zip(codes[start : start + 5000], ids[start : start + 5000], strict=True), start
                )
            ]
        )


# --------------------------------------------------------------------------------------------- load generator


#: CPU seconds the load generators spent while timed (summed over the runs).
LOADGEN_CPU = [0.0]


async def from_child(*args: str) -> float:
    """Run this script as the load generator (a separate process); returns the seconds its requests took."""
    proc = await asyncio.create_subprocess_exec(sys.executable, __file__, *args, stdout=asyncio.subprocess.PIPE)
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"load generator failed ({proc.returncode})")
    answer = json.loads(out.decode().strip().splitlines()[-1])
    LOADGEN_CPU[0] += float(answer["cpu"])
    return float(answer["seconds"])


async def drain(queue: asyncio.Queue[Any], concurrency: int, one: Callable[[Any], Awaitable[None]]) -> float:
    async def worker() -> None:
        while not queue.empty():
            await one(queue.get_nowait())

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - started


def done_time(k: int) -> str:
    """A distinct done time for the ``k``-th report of a request (milliseconds apart)."""
    return f"2026-11-29T10:00:{5 + k // 1000:02d}.{k % 1000:03d}+0000"


async def post_all(url: str, ids: list[str], batch: int, concurrency: int, distinct: bool = False) -> float:
    """POST every id's report in batches, ``concurrency`` requests in flight; returns the seconds taken.
    ``distinct``: each report of a request has its own done time (else they share one)."""
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for i in range(0, len(ids), batch):
        chunk = ids[i : i + batch]
        results = [report(m, done_time(k)) if distinct else report(m) for k, m in enumerate(chunk)]
        queue.put_nowait(json.dumps({"results": results}).encode())
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as http:

        async def one(body: bytes) -> None:
            async with http.post(url, data=body, headers={"Content-Type": "application/json"}) as resp:
                if resp.status != 200:
                    raise RuntimeError(f"HTTP {resp.status}: {await resp.text()}")
                await resp.read()

        return await drain(queue, concurrency, one)


async def click_all(base: str, codes: list[str], concurrency: int, client: str = "raw") -> float:
    """GET every code's short link, ``concurrency`` requests in flight; returns the seconds taken.

    ``client``: "raw" (default) writes the HTTP/1.1 requests itself on ``concurrency`` keep-alive connections
    (the headers aiohttp's client sends) and reads each answer's status line, headers and body; "aiohttp" uses
    aiohttp's ClientSession, which costs this process ~300 us of CPU per click here (raw: ~70), taken from the
    same two cores as the daemon and the store (the floor runs no load generator)."""
    if client == "raw":
        return await click_raw(base, codes, concurrency)
    queue: asyncio.Queue[str] = asyncio.Queue()
    for code in codes:
        queue.put_nowait(f"{base}/l/{code}")
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=concurrency), headers={"User-Agent": BROWSER}
    ) as http:

        async def one(url: str) -> None:
            async with http.get(url, allow_redirects=False) as resp:
                if resp.status != 302:
                    raise RuntimeError(f"HTTP {resp.status}: {await resp.text()}")
                await resp.read()

        return await drain(queue, concurrency, one)


async def click_raw(base: str, codes: list[str], concurrency: int) -> float:
    """:func:`click_all` on plain asyncio streams: each answer must be a 302 with a Location header."""
    url = urllib.parse.urlsplit(base)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    queue: asyncio.Queue[str] = asyncio.Queue()
    for code in codes:
        queue.put_nowait(code)
    head = (
        f"Host: {url.netloc}\r\nUser-Agent: {BROWSER}\r\nAccept: */*\r\nAccept-Encoding: gzip, deflate\r\n\r\n"
    ).encode()

    async def worker() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while not queue.empty():
                writer.write(b"GET /l/" + queue.get_nowait().encode() + b" HTTP/1.1\r\n" + head)
                lines = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
                fields = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:] if x)}
                body = await reader.readexactly(int(fields.get("content-length", "0")))
                if lines[0].split(" ")[1] != "302" or not fields.get("location"):
                    raise RuntimeError(f"{lines[0]}: {body.decode(errors='replace')}")
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - started


# --------------------------------------------------------------------------------------------- floors


async def report_floor(trackly: Trackly, ids: list[str], batch: int, concurrency: int) -> float:
    """The least store work per report batch: read the documents, one bulk_write of conditional updates, one
    outbox document with the batch's events. Returns the seconds taken."""
    col, outbox = trackly.store[c.SENT], trackly.store[c.OUTBOX]
    chunks = [ids[i : i + batch] for i in range(0, len(ids), batch)]

    async def worker(mine: list[list[str]]) -> None:
        for chunk in mine:
            now = utcnow()
            docs = await col.find({"_id": {"$in": chunk}}).to_list(None)  # no projection: faster on nx-27017
            await col.bulk_write(
                [
                    UpdateOne(
                        {"_id": m, "delivered": None},
                        {
                            "$set": {
                                "delivery_status": "DELIVERED_TO_HANDSET",
                                "delivered": True,
                                "delivery_error_code": None,
                                "delivered_at": now,
                            }
                        },
                    )
                    for m in chunk
                ],
                ordered=False,
            )
            events = [
                {
                    "id": f"{d['_id']}:delivery",
                    "payload": {
                        "id": d["_id"],
                        "account": d["account_id"],
                        "sendingList": d["sending_list_id"],
                        "messageCreative": d["creative_id"],
                        "fromNumber": d["from_number"],
                        "toNumber": d["to_number"],
                        "delivered": True,
                        "sendType": d["send_type"],
                        "filterBots": False,
                        "length": d["length"],
                        "timestamp": d["timestamp"].strftime("%Y-%m-%dT%H:%M:%SZ"),
                    },
                }
                for d in docs
            ]
            await outbox.insert_one(
                {
                    "_id": f"batch:{uuid.uuid4().hex}",
                    "events": events,
                    "account_id": 1,
                    "status": "pending",
                    "attempts": 0,
                    "created_at": now,
                    "next_attempt_at": now,
                    "claimed_by": None,
                    "last_error": None,
                    "last_status": None,
                    "delivered_at": None,
                }
            )

    started = time.perf_counter()
    await asyncio.gather(*(worker(chunks[k::concurrency]) for k in range(concurrency)))
    return time.perf_counter() - started


async def click_floor(trackly: Trackly, codes: list[str], group: int, concurrency: int) -> float:
    """The least store work per group of clicks: read the links, read their messages' times, insert the clicks,
    count them on the links. Returns the seconds taken."""
    from bson import ObjectId

    links, sent, clicks = trackly.store[c.SHORT_LINKS], trackly.store[c.SENT], trackly.store[c.CLICKS]
    chunks = [codes[i : i + group] for i in range(0, len(codes), group)]

    async def worker(mine: list[list[str]]) -> None:
        for chunk in mine:
            now = utcnow()
            docs = await links.find({"_id": {"$in": chunk}}).to_list(None)
            # whole documents: nx-27017 applies a projection in Python, which cost the store more than it saved
            times = {
                d["_id"]: d for d in await sent.find({"_id": {"$in": [d["message_id"] for d in docs]}}).to_list(None)
            }
            await clicks.insert_many(
                [
                    {
                        "_id": ObjectId(),
                        "code": d["_id"],
                        "message_id": d["message_id"],
                        "account_id": d["account_id"],
                        "campaign_id": d["campaign_id"],
                        "execution_id": d["execution_id"],
                        "creative_id": d["creative_id"],
                        "variant_key": d["variant_key"],
                        "contact_id": d["contact_id"],
                        "at": now,
                        "user_agent": BROWSER,
                        "ip_hash": "0" * 64,
                        "bot": times.get(d["message_id"], {}).get("delivered_at") is not None,
                        "bot_reason": None,
                    }
                    for d in docs
                ],
                ordered=False,
            )
            await links.bulk_write(
                [UpdateOne({"_id": d["_id"]}, {"$inc": {"clicks": 1, "human_clicks": 1}}) for d in docs],
                ordered=False,
            )

    started = time.perf_counter()
    await asyncio.gather(*(worker(chunks[k::concurrency]) for k in range(concurrency)))
    return time.perf_counter() - started


# --------------------------------------------------------------------------------------------- measuring


class Cpu:
    """CPU seconds of this process (the daemon) and of the store's process."""

    def __init__(self, store_pid: int | None) -> None:
        self.store_pid = store_pid
        self.tick = os.sysconf("SC_CLK_TCK")

    def read(self) -> tuple[float, float]:
        ru = resource.getrusage(resource.RUSAGE_SELF)
        store = 0.0
        if self.store_pid:
            with open(f"/proc/{self.store_pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            store = (int(fields[11]) + int(fields[12])) / self.tick
        return ru.ru_utime + ru.ru_stime, store


class Side:
    """Seconds, items and CPU of one side (ours or the floor) summed over the rounds."""

    def __init__(self) -> None:
        self.seconds = self.items = self.daemon_cpu = self.store_cpu = 0.0

    @property
    def rate(self) -> float:
        return self.items / self.seconds

    def us(self, cpu: float) -> float:
        return cpu / self.items * 1e6


async def measure(cpu: Cpu, side: Side, items: int, run: Awaitable[float]) -> None:
    d0, s0 = cpu.read()
    side.seconds += await run
    d1, s1 = cpu.read()
    side.items += items
    side.daemon_cpu += d1 - d0
    side.store_cpu += s1 - s0


async def interleaved(
    cpu: Cpu,
    chunks_ours: list[list[str]],
    chunks_floor: list[list[str]],
    ours: Callable[[list[str]], Awaitable[float]],
    floor: Callable[[list[str]], Awaitable[float]],
) -> tuple[Side, Side]:
    a, b = Side(), Side()
    for k, (mine, theirs) in enumerate(zip(chunks_ours, chunks_floor, strict=True)):
        if k % 2 == 0:
            await measure(cpu, a, len(mine), ours(mine))
            await measure(cpu, b, len(theirs), floor(theirs))
        else:
            await measure(cpu, b, len(theirs), floor(theirs))
            await measure(cpu, a, len(mine), ours(mine))
    return a, b


def split(items: list[str], rounds: int) -> list[list[str]]:
    size = -(-len(items) // rounds)
    return [items[i : i + size] for i in range(0, len(items), size)]


def line(name: str, side: Side, floor: Side | None = None) -> str:
    text = (
        f"  {name:<44} {side.rate:8.0f} /s   daemon CPU {side.us(side.daemon_cpu):5.0f} us, "
        f"store CPU {side.us(side.store_cpu):5.0f} us per item"
    )
    if floor is not None:
        text += f"   ratio {side.rate / floor.rate:.2f}"
    return text


async def main(args: argparse.Namespace) -> int:
    configure_logging("warning", "console")
    tmp = tempfile.mkdtemp(prefix="trackly-bench-")
    settings = Settings(
        daemon={"data_dir": tmp},
        mongo={"uri": "embedded", "embedded_in_memory": True, "database": "bench"},
        http={"port": 0, "public_url": "http://127.0.0.1:8080"},
        drivers={"infobip": {"api_key": "bench", "webhook_token": TOKEN}},
    )
    trackly = await Trackly.open(settings)
    server = HttpServer(trackly)
    await server.start()
    tune_gc()  # as `trackly run` does, once everything is imported and open
    embedded = trackly.store.embedded
    cpu = Cpu(embedded.proc.pid if embedded is not None and embedded.proc is not None else None)
    n, b, k, r = args.messages, args.batch, args.concurrency, args.rounds
    try:
        await trackly.store[c.ACCOUNTS].insert_one(
            Account(id=1, name="bench", webhook_url="http://127.0.0.1:9/hook", webhook_secret="s").to_doc()
        )
        await trackly.store[c.ACCOUNTS].insert_one(Account(id=2, name="no-webhook").to_doc())
        url = f"{server.url}/webhooks/infobip/status/{TOKEN}"
        ours_ids, floor_ids, warm = ids_for("bb", n), ids_for("cc", n), ids_for("aa", 4 * b * k)
        nohook_ids = ids_for("dd", n)
        for ids in (warm, ours_ids, floor_ids):
            await seed(trackly, ids)
        await seed(trackly, nohook_ids, account_id=2)
        post_args = ["--batch", str(b), "--concurrency", str(k), "--done-times", args.done_times]

        def post(ids: list[str]) -> Awaitable[float]:
            return from_child("--client", url, "--ids", f"{ids[0]}:{len(ids)}", *post_args)

        # warm-up (both paths), and the floor's best concurrency on this store
        await post(warm)
        best, best_rate = k, 0.0
        for conc in sorted({1, 2, 4, k}):
            fresh = ids_for(f"p{conc:02d}", 8 * b)
            await seed(trackly, fresh)
            rate = len(fresh) / await report_floor(trackly, fresh, b, conc)
            if rate > best_rate:
                best, best_rate = conc, rate
        ours, floor = await interleaved(
            cpu, split(ours_ids, r), split(floor_ids, r), post, lambda ids: report_floor(trackly, ids, b, best)
        )
        delivered = await trackly.store[c.SENT].count_documents({"_id": {"$in": ours_ids[:1000]}, "delivered": True})
        events = 0
        async for d in trackly.store[c.OUTBOX].find({"status": "pending", "account_id": 1}, {"events": 1}):
            events += len(d.get("events") or [1])
        dup, _ = await interleaved(cpu, split(ours_ids, r), split(floor_ids, r), post, _nothing)
        no_hook, _ = await interleaved(cpu, split(nohook_ids, r), split(floor_ids, r), post, _nothing)

        print(
            f"tracking bench: {n} reports, {b} per request ({args.done_times} done times), {k} requests in flight, "
            f"{r} interleaved rounds, "
            f"embedded nx-27017 in memory; load average {os.getloadavg()[0]:.1f}"
        )
        print(line("delivery reports, first (final + outbox)", ours, floor))
        print(f"    (check: {delivered}/1000 sampled delivered, {events} outbox events for {2 * n} reports)")
        print(line("delivery reports, account without webhook", no_hook, floor) + "  (floor writes an outbox doc)")
        print(line("delivery reports, duplicates (no-ops)", dup))
        print(line(f"  floor (find + bulk_write + outbox, x{best})", floor))
        record(
            "delivery reports (first)",
            ours.rate,
            "reports/s",
            floor=floor.rate,
            ratio=ours.rate / floor.rate,
            us_per_message=ours.us(ours.daemon_cpu),
        )
        record(
            "delivery reports, no webhook URL",
            no_hook.rate,
            "reports/s",
            floor=floor.rate,
            ratio=no_hook.rate / floor.rate,
            us_per_message=no_hook.us(no_hook.daemon_cpu),
        )

        if args.clicks:
            m = args.clicks
            click_msgs = ids_for("ee", 2 * m + 2 * k)
            await seed(trackly, click_msgs, sent_at=utcnow() - dt.timedelta(hours=1))
            codes = codes_for("C", 2 * m + 2 * k)
            await seed_links(trackly, codes, click_msgs)
            warm_codes, rest = codes[: 2 * k], codes[2 * k :]
            ours_codes, floor_codes = rest[:m], rest[m:]

            def click(codes: list[str]) -> Awaitable[float]:
                return from_child(
                    "--click",
                    server.url,
                    "--codes",
                    f"{codes[0]}:{len(codes)}",
                    "--concurrency",
                    str(k),
                    "--click-client",
                    args.click_client,
                )

            await click(warm_codes)
            LOADGEN_CPU[0] = 0.0
            c_ours, c_floor = await interleaved(
                cpu, split(ours_codes, r), split(floor_codes, r), click, lambda x: click_floor(trackly, x, k, 1)
            )
            human = await trackly.store[c.CLICKS].count_documents({"bot": False, "code": {"$in": ours_codes[:500]}})
            print(
                line(f"clicks (GET /l/<code>: 302 + click recorded; {args.click_client} client)", c_ours, c_floor)
                + f"   ({human}/500 sampled human)"
            )
            print(
                f"    (load generator, {args.click_client} client: CPU {LOADGEN_CPU[0] / len(ours_codes) * 1e6:.0f} us "
                "per click, on the same cores)"
            )
            print(line(f"  floor (links, sent, clicks, $inc; groups of {k})", c_floor))
            record(
                "clicks",
                c_ours.rate,
                "clicks/s",
                floor=c_floor.rate,
                ratio=c_ours.rate / c_floor.rate,
                us_per_message=c_ours.us(c_ours.daemon_cpu),
            )
    finally:
        await server.stop(1)
        await trackly.close()
    return 0


async def _nothing(ids: list[str]) -> float:
    return 0.0


def expand(spec: str, fmt: Callable[[str, int], list[str]], width: int) -> list[str]:
    first, count = spec.split(":")
    prefix, start = first[:-width], int(first[-width:], 16 if width == 14 else 10)
    return fmt(prefix, start + int(count))[start:]


async def client(args: argparse.Namespace) -> int:
    cpu = time.process_time()
    if args.click:
        secs = await click_all(args.click, expand(args.codes, codes_for, 10), args.concurrency, args.click_client)
    else:
        ids = expand(args.ids, ids_for, 14)
        secs = await post_all(args.client, ids, args.batch, args.concurrency, args.done_times == "distinct")
    print(json.dumps({"seconds": secs, "cpu": time.process_time() - cpu}))
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--clicks", type=int, default=8000, help="0: no click benchmark")
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument(
        "--done-times",
        choices=["same", "distinct"],
        default="same",
        help="the reports of a request share one done time (default, as before), or each has its own: then no "
        "two take the same update and the daemon writes one statement per report",
    )
    parser.add_argument(
        "--click-client", choices=["raw", "aiohttp"], default="raw", help="the click load generator's HTTP client"
    )
    parser.add_argument("--client", help=argparse.SUPPRESS)
    parser.add_argument("--click", help=argparse.SUPPRESS)
    parser.add_argument("--ids", help=argparse.SUPPRESS)
    parser.add_argument("--codes", help=argparse.SUPPRESS)
    ns = parser.parse_args()
    try:
        import uvloop

        run = uvloop.run
    except ImportError:  # pragma: no cover
        run = asyncio.run
    sys.exit(run(client(ns) if ns.client or ns.click else main(ns)))
