"""``GET /metrics`` with a large queue: how long a scrape takes, idle and while the store's figures are being
counted (the background refresh), and how long that refresh takes. File-backed nx-27017, as in production.

    .venv/bin/python bench/metrics.py [--messages 20000] [--sent 5000] [--scrapes 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from typing import Any

import aiohttp
from _common import seed_lists, services

from trackly_exec.app import Trackly
from trackly_exec.config import Settings
from trackly_exec.operations.web import HttpServer
from trackly_exec.store import constants as c
from trackly_exec.store.client import Store
from trackly_exec.store.models import utcnow


async def _scrape(http: aiohttp.ClientSession, url: str) -> tuple[float, str]:
    t0 = time.monotonic()
    async with http.get(url, headers={"Authorization": "Bearer bench"}) as r:
        text = await r.text()
        assert r.status == 200, text
    return time.monotonic() - t0, text


def _up(text: str) -> int:
    return next(int(float(line.split()[-1])) for line in text.splitlines() if line.startswith("trackly_store_up "))


async def run(n: int, sent: int, scrapes: int) -> dict[str, Any]:
    with services(fakes=(), in_memory=False) as svc:
        store = await Store.connect(svc["mongo_uri"], "bench")
        await seed_lists(store, n, {1: "infobip"}, contacts=False)
        now = utcnow()
        for start in range(0, sent, 1000):
            await store[c.SENT].insert_many(
                [
                    {"_id": f"s{i}", "campaign_id": 1, "sending_list_id": 1, "timestamp": now, "delivered": i % 2 == 0}
                    for i in range(start, min(start + 1000, sent))
                ]
            )
        settings = Settings(
            mongo={"uri": svc["mongo_uri"], "database": "bench"},
            http={"host": "127.0.0.1", "port": 0, "api_tokens": ["bench"]},
            _env_prefix="TRACKLY_BENCH_",
        )
        trackly = Trackly(settings, store)
        server = HttpServer(trackly)
        await server.start()
        out: dict[str, Any] = {"queued": n, "sent": sent}
        try:
            assert server.runner is not None
            try:
                from trackly_exec.operations.metrics import FIGURES
            except ImportError:  # a version that counts at scrape time (for a before/after comparison)
                figures = None
            else:
                figures = server.runner.app[FIGURES]
            url = server.url + "/metrics"
            async with aiohttp.ClientSession() as http:
                if figures is not None:  # a refresh of the store's figures, on its own
                    while figures.overview is None:  # the server's own first refresh
                        await asyncio.sleep(0.05)
                    t0 = time.monotonic()
                    await figures.refresh()
                    out["refresh_seconds"] = round(time.monotonic() - t0, 3)
                idle = []
                for _ in range(scrapes):
                    seconds, text = await _scrape(http, url)
                    idle.append(seconds)
                out["scrape_idle_seconds"] = {"median": round(statistics.median(idle), 3), "max": round(max(idle), 3)}
                out["store_up"] = _up(text)
                if figures is not None:  # scrapes while a refresh counts (the worst case for the ping)
                    busy, ups = [], []
                    for _ in range(scrapes):
                        refresh = asyncio.create_task(figures.refresh())
                        await asyncio.sleep(0.05)
                        seconds, text = await _scrape(http, url)
                        busy.append(seconds)
                        ups.append(_up(text))
                        await refresh
                    out["scrape_during_refresh_seconds"] = {
                        "median": round(statistics.median(busy), 3),
                        "max": round(max(busy), 3),
                    }
                    out["store_up_during_refresh"] = min(ups)
        finally:
            await server.stop(1)
            await trackly.close()
        return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=20_000)
    ap.add_argument("--sent", type=int, default=5_000)
    ap.add_argument("--scrapes", type=int, default=5)
    args = ap.parse_args()
    print(json.dumps(asyncio.run(run(args.messages, args.sent, args.scrapes)), indent=2))


if __name__ == "__main__":
    main()
