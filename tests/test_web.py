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


async def test_a_listener_that_cannot_start_names_its_settings(trackly: Trackly) -> None:
    """A host that is no address of this machine, or a port in use, is a config error naming http.host / http.port
    (it was the bare OS error, "Name or service not known")."""
    import pytest

    from trackly_exec.errors import ConfigError

    trackly.settings.http.host = "256.1.1.1"
    server = HttpServer(trackly)
    with pytest.raises(ConfigError) as e:
        await server.start()
    assert "http.host / http.port" in str(e.value) and "256.1.1.1" in str(e.value)


def test_an_embedded_port_in_use_is_named(tmp_path: Any) -> None:
    """A mongo.embedded_port another server holds is refused at once, naming the setting (the client talked to that
    server and failed 15 s later with a MongoDB protocol error)."""
    import socket

    import pytest

    from trackly_exec.errors import StoreError
    from trackly_exec.store.embedded import EmbeddedMongo

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        store = EmbeddedMongo(tmp_path, port=port)
        with pytest.raises(StoreError, match=f"mongo.embedded_port: port {port}"):
            store.start()
        assert store.proc is None
