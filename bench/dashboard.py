"""The live dashboard under many open pages: store operations and time per burst of concurrent polls of
``GET /dashboard/summary.json`` with a large queue. File-backed nx-27017, as in production.

    .venv/bin/python bench/dashboard.py [--messages 20000] [--sent 20000] [--pages 10] [--bursts 3]

Store operations are counted in this process (every ``find``, ``find_one``, ``aggregate``, ``count_documents``,
``estimated_document_count`` and database command, the ``count`` command included), whoever makes them.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import functools
import json
import time
from typing import Any

import aiohttp
from _common import seed_lists, services
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase

from trackly_exec.app import Trackly
from trackly_exec.config import Settings
from trackly_exec.operations.web import HttpServer
from trackly_exec.store import constants as c
from trackly_exec.store.client import Store
from trackly_exec.store.models import utcnow

OPS: collections.Counter[str] = collections.Counter()


def _spy(cls: Any, name: str) -> None:
    real = getattr(cls, name)
    if asyncio.iscoroutinefunction(real):

        @functools.wraps(real)
        async def counted(*args: Any, **kwargs: Any) -> Any:
            OPS[name] += 1
            return await real(*args, **kwargs)

        setattr(cls, name, counted)
    else:

        @functools.wraps(real)
        def counted_sync(*args: Any, **kwargs: Any) -> Any:
            OPS[name] += 1
            return real(*args, **kwargs)

        setattr(cls, name, counted_sync)


async def run(n: int, sent: int, pages: int, bursts: int) -> dict[str, Any]:
    with services(fakes=(), in_memory=False) as svc:
        store = await Store.connect(svc["mongo_uri"], "bench")
        await seed_lists(store, n, {1: "infobip"}, contacts=False)
        now = utcnow()
        for start in range(0, sent, 1000):
            await store.db[c.SENT].insert_many(
                [
                    {"_id": f"s{i}", "campaign_id": 1, "sending_list_id": 1, "timestamp": now, "delivered": i % 2 == 0}
                    for i in range(start, min(start + 1000, sent))
                ]
            )
        await store.db[c.CAMPAIGNS].insert_one({"_id": 1, "name": "bench", "status": "active"})
        settings = Settings(
            mongo={"uri": svc["mongo_uri"], "database": "bench"},
            http={"host": "127.0.0.1", "port": 0, "api_tokens": ["bench"]},
            _env_prefix="TRACKLY_BENCH_",
        )
        trackly = Trackly(settings, store)
        for name in ("find", "find_one", "aggregate", "count_documents", "estimated_document_count"):
            _spy(AsyncCollection, name)
        _spy(AsyncDatabase, "command")
        server = HttpServer(trackly)
        await server.start()
        out: dict[str, Any] = {"queued": n, "sent": sent, "pages": pages, "bursts": []}
        try:
            await asyncio.sleep(2.0)  # the server's own start-up work
            async with aiohttp.ClientSession() as http:

                async def poll() -> int:
                    async with http.get(
                        server.url + "/dashboard/summary.json", headers={"Authorization": "Bearer bench"}
                    ) as r:
                        await r.read()
                        return r.status

                start_ops, start = sum(OPS.values()), time.monotonic()
                for _ in range(bursts):
                    before, t0 = sum(OPS.values()), time.monotonic()
                    statuses = await asyncio.gather(*(poll() for _ in range(pages)))
                    ops = sum(OPS.values()) - before
                    out["bursts"].append(
                        {
                            "statuses": sorted(set(statuses)),
                            "store_operations": ops,
                            "per_poll": round(ops / pages, 1),
                            "seconds": round(time.monotonic() - t0, 3),
                        }
                    )
                    await asyncio.sleep(2.0)  # the page polls every 2 s
                out["whole_run"] = {  # background refreshes included
                    "store_operations": sum(OPS.values()) - start_ops,
                    "polls": pages * bursts,
                    "seconds": round(time.monotonic() - start, 1),
                }
        finally:
            await server.stop(1)
            await trackly.close()
        return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=20_000)
    ap.add_argument("--sent", type=int, default=20_000)
    ap.add_argument("--pages", type=int, default=10, help="concurrent polls per burst (open pages)")
    ap.add_argument("--bursts", type=int, default=3)
    args = ap.parse_args()
    print(json.dumps(asyncio.run(run(args.messages, args.sent, args.pages, args.bursts)), indent=2))


if __name__ == "__main__":
    main()
