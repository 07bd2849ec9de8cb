"""Doors that must fail closed: secrets never echoed, list overrides limited, bad input is a 4xx."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from trackly_exec import api
from trackly_exec.app import Trackly
from trackly_exec.config import Settings, load_config
from trackly_exec.errors import ConfigError
from trackly_exec.store import constants as c
from trackly_exec.store.client import Store

H = {"Authorization": "Bearer test-token"}

# --------------------------------------------------------------------------------------------- config errors


@pytest.mark.parametrize(
    "toml",
    [
        '[http]\napi_tokens = "s3cr3t"\n',
        '[http]\napi_tokens = ["ok-token", 5]\n[redis]\nurl = "s3cr3t"\n',
        '[redis]\nurl = ["s3cr3t"]\n',
        '[tracking]\nip_hash_salt = ["s3cr3t"]\n',
        '[mongo]\nuri = ["mongodb://u:s3cr3t@db"]\n',
        '[alerts]\ndiscord_webhook_url = ["https://discord.com/api/webhooks/1/s3cr3t"]\n',
    ],
)
def test_config_error_never_prints_a_secret(tmp_path: Path, toml: str) -> None:
    """A config error names the key but never the value of a secret field."""
    f = tmp_path / "bad.toml"
    f.write_text(toml)
    with pytest.raises(ConfigError) as e:
        load_config(f)
    assert "s3cr3t" not in str(e.value)


def test_driver_config_error_never_prints_a_secret(tmp_path: Path) -> None:
    from trackly_exec.drivers.pool import DriverPool

    f = tmp_path / "bad.toml"
    f.write_text('[drivers.infobip]\napi_key = ["s3cr3t"]\n')
    with pytest.raises(ConfigError) as e:
        DriverPool(load_config(f)).validate()
    assert "drivers.infobip.api_key" in str(e.value) and "s3cr3t" not in str(e.value)


def test_config_error_still_shows_plain_values(tmp_path: Path) -> None:
    f = tmp_path / "bad.toml"
    f.write_text("[executor]\npool_size = 'many'\n")
    with pytest.raises(ConfigError) as e:
        load_config(f)
    assert "'many'" in str(e.value)


# --------------------------------------------------------------------------------------------- list overrides


class _Spy:
    """A loopback listener that records every request it gets (the attacker's server)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, str], bytes]] = []
        self.runner: Any = None
        self.port = 0

    async def start(self) -> _Spy:
        from aiohttp import web

        async def any_request(request: web.Request) -> web.Response:
            self.seen.append((request.path, dict(request.headers), await request.read()))
            return web.json_response({"messages": []})

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", any_request)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def stop(self) -> None:
        await self.runner.cleanup()


def _with_infobip(settings: Settings, **extra: Any) -> Settings:
    drivers = {
        "infobip": {
            "base_url": "http://127.0.0.1:9",
            "api_key": "infobip-s3cr3t-key",
            "webhook_token": "hook-s3cr3t-token-0123",
            **extra,
        }
    }
    return settings.model_copy(update={"drivers": drivers})


@pytest.mark.parametrize(
    "override",
    [
        {"base_url": "http://127.0.0.1:1/x"},
        {"api_key": "mine"},
        {"webhook_token": "t"},
        {"server_errors": "transient"},
        {"timeout_seconds": 9999},
        {"max_connections": 100000},
    ],
)
async def test_list_may_not_override_endpoints_or_credentials(
    settings: Settings, store: Store, override: dict[str, Any]
) -> None:
    """A sending list's driver_settings outside the driver's short allow-list is a 422 naming the key."""
    app = await Trackly.open(_with_infobip(settings), store=store)
    try:
        app_client = await _client(app)
        async with app_client as cl:
            acc = await (await cl.post("/api/v1/accounts", json={"name": "a"}, headers=H)).json()
            r = await cl.post(
                "/api/v1/sending-lists",
                headers=H,
                json={
                    "account_id": acc["id"],
                    "name": "l",
                    "driver": "infobip",
                    "from_number": "+15550001111",
                    "driver_settings": override,
                },
            )
            data = await r.json()
            key = next(iter(override))
            assert r.status == 422, data
            assert data["details"][0]["loc"] == f"body.driver_settings.{key}" and key in data["message"]
            assert await store.db[c.SENDING_LISTS].count_documents({}) == 0
    finally:
        await app.close(close_store=False)


async def test_list_allowed_overrides_are_validated(settings: Settings, store: Store) -> None:
    app = await Trackly.open(_with_infobip(settings), store=store)
    try:
        async with await _client(app) as cl:
            acc = await (await cl.post("/api/v1/accounts", json={"name": "a"}, headers=H)).json()
            base = {"account_id": acc["id"], "name": "l", "driver": "infobip", "from_number": "+15550001111"}
            r = await cl.post("/api/v1/sending-lists", headers=H, json={**base, "driver_settings": {"batch_size": 0}})
            assert r.status == 422 and (await r.json())["details"][0]["loc"] == "body.driver_settings.batch_size"
            r = await cl.post(
                "/api/v1/sending-lists",
                headers=H,
                json={**base, "driver_settings": {"batch_size": 50, "intermediate_reports": True}},
            )
            assert r.status == 201, await r.text()
            assert "s3cr3t" not in await r.text()
            lid = (await r.json())["id"]
            r = await cl.get(f"/api/v1/sending-lists/{lid}", headers=H)
            assert (await r.json())["driver_settings"] == {"batch_size": 50, "intermediate_reports": True}
    finally:
        await app.close(close_store=False)


async def test_stored_list_with_base_url_never_reaches_it(settings: Settings, store: Store) -> None:
    """A list stored (by an older version) with a base_url override sends nothing anywhere: the API key and the
    webhook token never reach the list's URL, and the list's GET does not echo the URL."""
    from trackly_exec.executor.coordinator import Coordinator

    from .executor_support import seed, with_executor

    spy = await _Spy().start()
    try:
        ids = await seed(store, 3)
        url = f"http://127.0.0.1:{spy.port}/x"
        await store.db[c.SENDING_LISTS].update_one({"_id": 1}, {"$set": {"driver_settings": {"base_url": url}}})
        app = await Trackly.open(
            with_executor(_with_infobip(settings), None, retry_initial_backoff_seconds=0.01), store=store
        )
        try:
            coord = Coordinator(app)
            await coord.run_until_idle()
            async with await _client(app) as cl:
                text = await (await cl.get("/api/v1/sending-lists/1", headers=H)).text()
                assert str(spy.port) not in text
        finally:
            await app.close(close_store=False)
        assert spy.seen == []
        assert await store.db[c.SENT].count_documents({}) == 0
        assert (
            await store.db[c.QUEUED].count_documents({"_id": {"$in": ids}})
            + await store.db[c.FAILED].count_documents({"_id": {"$in": ids}})
            == 3
        )
    finally:
        await spy.stop()


async def _client(app: Trackly) -> TestClient[Any, Any]:
    from aiohttp import web

    web_app = web.Application(client_max_size=app.settings.http.max_body_bytes)
    api.setup(web_app, app)
    return TestClient(TestServer(web_app))


async def test_invalid_stored_list_is_logged_without_its_values(settings: Settings, store: Store) -> None:
    """A stored list the executor cannot read is logged by field and problem, never with its values."""
    import structlog

    from trackly_exec.executor.coordinator import Coordinator

    from .executor_support import seed

    await seed(store, 1)
    await store.db[c.SENDING_LISTS].update_one(
        {"_id": 1}, {"$set": {"rate_limit_per_minute": "s3cr3t-rate", "driver_settings": {"api_key": "s3cr3t-key"}}}
    )
    app = await Trackly.open(_with_infobip(settings), store=store)
    try:
        with structlog.testing.capture_logs() as logs:
            await Coordinator(app).list_info(1)
    finally:
        await app.close(close_store=False)
    invalid = [e for e in logs if e["event"] == "sending_list_invalid"]
    assert invalid and "rate_limit_per_minute" in invalid[0]["error"]
    assert "s3cr3t" not in str(logs)
