"""The running application: settings, store, event bus, drivers and Redis, shared by every component."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import uuid
from typing import Any, Protocol

import redis.asyncio as aioredis

from trackly_exec.config import Settings
from trackly_exec.drivers.pool import DriverPool
from trackly_exec.logs import get_logger
from trackly_exec.store.client import Store
from trackly_exec.store.events import EventBus

log = get_logger(__name__)


class Component(Protocol):
    """A long-running part of the daemon (executor, scheduler, HTTP server, outbox, alerts)."""

    name: str

    async def start(self) -> None:
        """Start background work and return."""

    async def stop(self, grace: float) -> None:
        """Stop taking new work, finish or release what is in flight within ``grace`` seconds."""


class Trackly:
    """Everything a component needs. Build it with :meth:`open`, dispose with :meth:`close`."""

    def __init__(self, settings: Settings, store: Store, *, redis: aioredis.Redis | None = None) -> None:
        self.settings = settings
        self.store = store
        self.redis = redis
        self.bus = EventBus(store)
        self.drivers = DriverPool(settings)
        self.instance = settings.daemon.resolved_instance_name()
        self.run_id = uuid.uuid4().hex[:8]
        #: the ``counts`` of every executor coordinator of this process (exported by ``metrics``)
        self.executor_counts: list[collections.Counter[str]] = []
        #: Set by a component that cannot go on (``request_exit``): ``serve()`` stops and exits with ``exit_code``.
        self.exit_requested = asyncio.Event()
        self.exit_code = 0
        self.exit_reason = ""

    def request_exit(self, code: int, reason: str) -> None:
        """Ask the daemon to stop and exit with ``code`` (non-zero: systemd restarts the unit)."""
        if not self.exit_requested.is_set():
            self.exit_code, self.exit_reason = code, reason
            log.critical("exit_requested", code=code, reason=reason)
            self.exit_requested.set()

    @classmethod
    async def open(cls, settings: Settings, *, store: Store | None = None) -> Trackly:
        drivers = DriverPool(settings, generate_tokens=True)
        drivers.validate()
        store = store or await Store.open(settings)
        client: aioredis.Redis | None = None
        if settings.redis.url is not None:
            client = aioredis.Redis.from_url(
                settings.redis.url.get_secret_value(),
                socket_timeout=settings.redis.socket_timeout_seconds,
                socket_connect_timeout=settings.redis.socket_timeout_seconds,
            )
        app = cls(settings, store, redis=client)
        app.drivers = drivers
        return app

    @property
    def db(self) -> Any:
        return self.store.db

    async def close(self, *, close_store: bool = True) -> None:
        await self.drivers.close()
        if self.redis is not None:
            with contextlib.suppress(Exception):
                await self.redis.aclose()
        if close_store:
            await self.store.close()
