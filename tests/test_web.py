"""The daemon's HTTP server (operations/web.py): /healthz (the routes it serves are tested with their modules:
test_webhooks, test_links, test_dashboard, test_metrics, test_operator_auth, test_docs)."""

from __future__ import annotations

from typing import Any

import aiohttp

from trackly_exec.app import Trackly
from trackly_exec.operations.web import HttpServer


async def test_healthz_reports_store_and_redis(trackly: Trackly, redis_server: Any) -> None:
    """/healthz answers 200 while the store and Redis answer, and 503 naming Redis while it is down."""
    server = HttpServer(trackly)
    await server.start()
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(server.url + "/healthz") as r:
                assert r.status == 200 and (await r.json())["redis"] == "ok"
            redis_server.stop()
            try:
                async with http.get(server.url + "/healthz") as r:
                    body = await r.json()
                    assert r.status == 503 and body["store"] == "ok" and body["redis"].startswith("unreachable")
            finally:
                redis_server.start()
    finally:
        await server.stop(1)
