"""Session services (a real nx-27017 store and a real redis-server) and a clean database per test."""

from __future__ import annotations

import itertools
import os
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from trackly_exec.app import Trackly
from trackly_exec.config import Settings, load_config
from trackly_exec.drivers import registry
from trackly_exec.logs import configure_logging
from trackly_exec.store.client import Store
from trackly_exec.testing.fakes.infobip import InfobipFake

from .executor_support import FAKES
from .services import MongoServer, RedisServer
from .tracking_support import Daemon, start_daemon

ROOT = Path(__file__).resolve().parent.parent
_db_counter = itertools.count()


def pytest_configure(config: pytest.Config) -> None:
    sys._called_from_test = True  # type: ignore[attr-defined]
    configure_logging("warning", "console", stream=sys.stderr)


@pytest.fixture(scope="session")
def mongo_server() -> Iterator[MongoServer]:
    server = MongoServer()
    server.start()
    yield server
    server.close()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[Any]:
    external = os.environ.get("TRACKLY_TEST_REDIS_URL")
    if external:

        class _External:
            url = external

            def stop(self) -> None:
                pytest.skip("cannot stop an external Redis")

            start = stop

        yield _External()
        return
    server = RedisServer()
    server.start()
    yield server
    server.close()


@pytest.fixture
def db_name() -> str:
    return f"t{os.getpid()}_{next(_db_counter)}"


@pytest.fixture
def settings(tmp_path: Path, mongo_server: MongoServer, redis_server: Any, db_name: str) -> Settings:
    """Settings for one test: its own database, our Redis, an HTTP server on a free port."""
    return load_config(
        ROOT / "tests" / "test.toml",
        daemon={"data_dir": str(tmp_path / "data"), "instance_name": f"test-{db_name}"},
        mongo={"uri": mongo_server.uri, "database": db_name},
        redis={"url": redis_server.url},
    )


@pytest.fixture
async def store(settings: Settings) -> AsyncIterator[Store]:
    store = await Store.connect(settings.mongo.uri.get_secret_value(), settings.mongo.database)
    await store.ensure_indexes()
    yield store
    await store.client.drop_database(settings.mongo.database)
    await store.client.close()


@pytest.fixture
async def redis_client(redis_server: Any) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_server.url)
    await client.flushdb()
    yield client
    await client.aclose()


@pytest.fixture
async def trackly(settings: Settings, store: Store, redis_client: aioredis.Redis) -> AsyncIterator[Trackly]:
    app = await Trackly.open(settings, store=store)
    yield app
    await app.close(close_store=False)


@pytest.fixture
async def fakes(redis_client: aioredis.Redis) -> AsyncIterator[dict[str, Any]]:
    """The three provider fakes (Infobip, CM, Twilio) on loopback, and a flushed Redis."""
    started = {name: await cls().start() for name, cls in FAKES.items()}
    yield started
    for fake in started.values():
        await fake.stop()


@pytest.fixture
async def fake() -> AsyncIterator[InfobipFake]:
    """One Infobip fake on loopback, with the API key of the ``daemon`` fixture's infobip driver (``k``)."""
    f = await InfobipFake(api_key="k").start()
    yield f
    await f.stop()


@pytest.fixture
async def daemon(settings: Settings, store: Store) -> AsyncIterator[Daemon]:
    """The daemon's HTTP server with the infobip, twilio and cm instances of tracking_support (a test module
    may override it with other tracking settings)."""
    async for d in start_daemon(settings, store):
        yield d


@pytest.fixture
async def admin(trackly: Trackly) -> AsyncIterator[Any]:
    """An aiohttp TestClient of the admin API (the ``echo`` driver registered)."""
    from aiohttp import web
    from aiohttp.test_utils import TestClient, TestServer

    from trackly_exec import api
    from trackly_exec.campaigns.scheduler import stop_background

    from .api_support import EchoDriver

    registry.register("echo", EchoDriver)
    app = web.Application(client_max_size=trackly.settings.http.max_body_bytes)
    api.setup(app, trackly)
    async with TestClient(TestServer(app)) as cl:
        yield cl
    await stop_background(trackly, 30)  # evaluations its triggers started


@pytest.fixture
async def admin_url(trackly: Trackly) -> AsyncIterator[str]:
    """The base URL of an admin API server on loopback (for the blocking CLI; the ``echo`` driver registered)."""
    from aiohttp import web
    from aiohttp.test_utils import TestServer

    from trackly_exec import api
    from trackly_exec.campaigns.scheduler import stop_background

    from .api_support import EchoDriver

    registry.register("echo", EchoDriver)
    app = web.Application(client_max_size=trackly.settings.http.max_body_bytes)
    api.setup(app, trackly)
    srv = TestServer(app, host="127.0.0.1")
    await srv.start_server()
    yield str(srv.make_url("")).rstrip("/")
    await srv.close()
    await stop_background(trackly, 30)


@pytest.fixture(autouse=True)
def _reset_registry() -> Iterator[None]:
    saved = dict(registry._registered)
    yield
    registry._registered.clear()
    registry._registered.update(saved)
