"""Delivery-report ingestion throughput against the daemon's real HTTP endpoint.

Infobip-style posts of 100 reports each (``{"results": [...]}``) go to ``POST /webhooks/infobip/status/<token>``
of a running HttpServer on the embedded store (nx-27017, in memory), several requests in flight from a separate
load-generator process (as a provider would be; the daemon runs on uvloop as ``trackly run`` does). Printed:
reports/s for first reports (final states, customer-webhook outbox entries written), for duplicates (no-ops),
and the plain store floor measured in the same run (the least store work per report: read the batch's
MessageSent documents, one bulk_write of conditional updates; no HTTP, no parsing, no outbox), with the ratio.

    .venv/bin/python bench/tracking.py [--messages 20000] [--concurrency 8] [--batch 100]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from pymongo import UpdateOne

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from trackly_exec.store import constants as c  # noqa: E402
from trackly_exec.app import Trackly  # noqa: E402
from trackly_exec.config import Settings  # noqa: E402
from trackly_exec.logs import configure_logging  # noqa: E402
from trackly_exec.store.models import Account, MessageSent, utcnow  # noqa: E402
from trackly_exec.operations.web import HttpServer  # noqa: E402

from _common import record  # noqa: E402

TOKEN = "bench-token-0123456789"


def report(mid: str) -> dict[str, Any]:
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
        "doneAt": "2026-11-29T10:00:05.000+0000",
        "messageCount": 1,
    }


async def seed(trackly: Trackly, prefix: str, n: int, account_id: int = 1) -> list[str]:
    now = utcnow()
    ids = ids_for(prefix, n)
    for start in range(0, n, 5000):
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
    return ids


async def post_from_child(url: str, prefix: str, n: int, batch: int, concurrency: int) -> float:
    """Run :func:`post_all` in a separate process (the load generator); returns its reports/s."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        "--client",
        url,
        "--prefix",
        prefix,
        "--messages",
        str(n),
        "--batch",
        str(batch),
        "--concurrency",
        str(concurrency),
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"load generator failed ({proc.returncode})")
    return float(json.loads(out.decode().strip().splitlines()[-1])["rate"])


def ids_for(prefix: str, n: int) -> list[str]:
    return [f"{prefix}{i:014x}" for i in range(n)]


async def post_all(url: str, ids: list[str], batch: int, concurrency: int) -> float:
    """POST every id's report in batches, ``concurrency`` requests in flight; returns reports/s."""
    bodies = [
        json.dumps({"results": [report(m) for m in ids[i : i + batch]]}).encode() for i in range(0, len(ids), batch)
    ]
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for b in bodies:
        queue.put_nowait(b)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as http:

        async def worker() -> None:
            while not queue.empty():
                body = queue.get_nowait()
                async with http.post(url, data=body, headers={"Content-Type": "application/json"}) as resp:
                    if resp.status != 200:
                        raise RuntimeError(f"HTTP {resp.status}: {await resp.text()}")
                    await resp.read()

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return len(ids) / (time.perf_counter() - started)


async def floor(trackly: Trackly, ids: list[str], batch: int, concurrency: int) -> float:
    """The plain store work per report batch: read the documents, one bulk_write of conditional updates."""
    col = trackly.store[c.SENT]
    now = utcnow()
    chunks = [ids[i : i + batch] for i in range(0, len(ids), batch)]

    async def worker(mine: list[list[str]]) -> None:
        for chunk in mine:
            await col.find({"_id": {"$in": chunk}}).to_list(None)  # no projection: faster on nx-27017
            await col.bulk_write(
                [
                    UpdateOne(
                        {"_id": m, "delivered": None},
                        {
                            "$set": {
                                "delivered": True,
                                "delivery_status": "DELIVERED_TO_HANDSET",
                                "delivery_error_code": None,
                                "delivered_at": now,
                            }
                        },
                    )
                    for m in chunk
                ],
                ordered=False,
            )

    started = time.perf_counter()
    await asyncio.gather(*(worker(chunks[k::concurrency]) for k in range(concurrency)))
    return len(ids) / (time.perf_counter() - started)


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
    try:
        await trackly.store[c.ACCOUNTS].insert_one(
            Account(id=1, name="bench", webhook_url="http://127.0.0.1:9/hook", webhook_secret="s").to_doc()
        )
        url = f"{server.url}/webhooks/infobip/status/{TOKEN}"
        n, b, k = args.messages, args.batch, args.concurrency
        await seed(trackly, "aa", 2000)
        await post_from_child(url, "aa", 2000, b, k)  # warm-up
        ids = await seed(trackly, "bb", n)
        first = await post_from_child(url, "bb", n, b, k)
        delivered = await trackly.store[c.SENT].count_documents({"_id": {"$in": ids[:1000]}, "delivered": True})
        outbox = await trackly.store[c.OUTBOX].count_documents({"status": "pending"})
        dup = await post_from_child(url, "bb", n, b, k)
        await trackly.store[c.ACCOUNTS].insert_one(Account(id=2, name="no-webhook").to_doc())
        await seed(trackly, "dd", n, account_id=2)
        no_hook = await post_from_child(url, "dd", n, b, k)
        floor_ids = await seed(trackly, "cc", n)
        plain = await floor(trackly, floor_ids, b, k)
        print(f"tracking bench: {n} reports, {b} per request, {k} requests in flight, embedded nx-27017 in memory")
        print(
            f"  first reports (final state + outbox entry): {first:8.0f} reports/s  "
            f"(check: {delivered}/1000 sampled delivered, {outbox} outbox documents of <= {b} events)"
        )
        print(f"  first reports, account without webhook_url: {no_hook:8.0f} reports/s")
        print(f"  duplicate reports (no-ops):                 {dup:8.0f} reports/s")
        print(f"  plain store floor (find + bulk_write):      {plain:8.0f} reports/s")
        record("delivery reports (first)", first, "reports/s", floor=plain, ratio=first / plain)
        record("delivery reports, no webhook URL", no_hook, "reports/s", floor=plain, ratio=no_hook / plain)
        print(
            f"  ratio first / floor: {first / plain:.2f}   target >= 5,000 reports/s: "
            f"{'met' if first >= 5000 else 'NOT met'}"
        )
    finally:
        await server.stop(1)
        await trackly.close()
    return 0


async def client(args: argparse.Namespace) -> int:
    rate = await post_all(args.client, ids_for(args.prefix, args.messages), args.batch, args.concurrency)
    print(json.dumps({"rate": rate}))
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--client", help=argparse.SUPPRESS)
    parser.add_argument("--prefix", default="bb", help=argparse.SUPPRESS)
    ns = parser.parse_args()
    try:
        import uvloop

        run = uvloop.run
    except ImportError:  # pragma: no cover
        run = asyncio.run
    sys.exit(run(client(ns) if ns.client else main(ns)))
