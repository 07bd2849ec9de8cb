"""The peer: a job-per-message SMS sender built on arq (a mainstream asyncio task queue on Redis).

What a team writes when it does not use trackly-exec: one arq job per queued message. Each job claims its
queue document (``find_one_and_update`` on ``claimed_by``), posts it to the provider (Infobip's
``/sms/3/messages`` with one destination), inserts the MessageSent-like record and deletes the queue entry.
arq runs up to ``--max-jobs`` jobs at once (30, the same pool as trackly-exec's executor).

It runs in its own virtualenv (arq pins redis-py < 6; ``make bench`` builds ``.venv-peer``) and is started by
``bench/peer.py``, which seeds the same store, Redis and provider fake for both senders. Prints one JSON line.

    .venv-peer/bin/python bench/peer_arq.py --mongo URI --db NAME --redis URL --provider URL --api-key KEY
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import time
import uuid
from typing import Any

import aiohttp
from arq import create_pool
from arq.connections import RedisSettings
from arq.worker import Worker
from pymongo import AsyncMongoClient, ReturnDocument

QUEUED, SENT = "queued_text_messages", "message_sent"


async def send_one(ctx: dict[str, Any], message_id: str) -> str:
    db = ctx["db"]
    token = f"peer:{uuid.uuid4().hex}"
    now = dt.datetime.now(dt.UTC)
    doc = await db[QUEUED].find_one_and_update(
        {"_id": message_id, "claimed_by": None},
        {"$set": {"claimed_by": token, "claimed_at": now}},
        return_document=ReturnDocument.AFTER,
    )
    if doc is None:
        return "taken"
    body = {
        "messages": [
            {
                "sender": doc["from_number"],
                "destinations": [{"to": doc["to_number"].lstrip("+"), "messageId": doc["_id"]}],
                "content": {"text": doc["body"]},
            }
        ]
    }
    async with ctx["http"].post(f"{ctx['provider']}/sms/3/messages", json=body) as resp:
        reply = await resp.json()
        if resp.status != 200:
            raise RuntimeError(f"provider answered {resp.status}")
    provider_id = reply["messages"][0].get("messageId")
    await db[SENT].insert_one(
        {
            "_id": doc["_id"],
            "sending_list_id": doc["sending_list_id"],
            "to_number": doc["to_number"],
            "provider_message_id": provider_id,
            "submitted": True,
            "delivered": None,
            "sent_at": now,
        }
    )
    await db[QUEUED].delete_one({"_id": doc["_id"], "claimed_by": token})
    return "sent"


async def main(args: argparse.Namespace) -> None:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(args.mongo, tz_aware=True)
    db = client[args.db]
    ids = [d["_id"] async for d in db[QUEUED].find({}, {"_id": 1})]
    redis_settings = RedisSettings.from_dsn(args.redis)
    pool = await create_pool(redis_settings)
    cpu0, t0 = time.process_time(), time.perf_counter()
    for mid in ids:
        await pool.enqueue_job("send_one", mid, _job_id=mid)
    enqueued = time.perf_counter() - t0
    http = aiohttp.ClientSession(
        headers={"Authorization": f"App {args.api_key}"}, connector=aiohttp.TCPConnector(limit=args.max_jobs)
    )

    async def startup(ctx: dict[str, Any]) -> None:
        ctx.update(db=db, http=http, provider=args.provider)

    worker = Worker(
        functions=[send_one],
        redis_pool=pool,
        burst=True,
        max_jobs=args.max_jobs,  # type: ignore[list-item]
        on_startup=startup,
        handle_signals=False,
        keep_result=0,
        poll_delay=0.05,
        max_tries=1,
    )
    t1 = time.perf_counter()
    await worker.main()
    processed = time.perf_counter() - t1
    total = time.perf_counter() - t0
    sent = await db[SENT].count_documents({})
    cpu = time.process_time() - cpu0
    await worker.close()
    await http.close()
    await client.close()
    print(
        json.dumps(
            {
                "messages": len(ids),
                "sent": sent,
                "enqueue_seconds": round(enqueued, 3),
                "process_seconds": round(processed, 3),
                "total_seconds": round(total, 3),
                "cpu_seconds": round(cpu, 3),
                "failed": worker.jobs_failed,
            }
        )
    )


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mongo", required=True)
    p.add_argument("--db", required=True)
    p.add_argument("--redis", required=True)
    p.add_argument("--provider", required=True)
    p.add_argument("--api-key", required=True)
    p.add_argument("--max-jobs", type=int, default=30)
    asyncio.run(main(p.parse_args()))
