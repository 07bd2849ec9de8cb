"""The running application: settings, store, event bus, drivers and Redis, shared by every component."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import gc
import random
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from typing import Any, Protocol, TypeVar

import redis.asyncio as aioredis
from pymongo.asynchronous.database import AsyncDatabase

from trackly_exec.config import Settings
from trackly_exec.drivers.pool import DriverPool
from trackly_exec.logs import get_logger
from trackly_exec.store.client import Store
from trackly_exec.store.clock import StoreClock
from trackly_exec.store.events import EventBus
from trackly_exec.store.models import Clock, utcnow

log = get_logger(__name__)

T = TypeVar("T")


class Component(Protocol):
    """A long-running part of the daemon (executor, scheduler, HTTP server, outbox, alerts)."""

    name: str

    async def start(self) -> None:
        """Start background work and return."""

    async def stop(self, grace: float) -> None:
        """Stop taking new work, finish or release what is in flight within ``grace`` seconds."""


class Trackly:
    """Everything a component needs. Build it with :meth:`open`, dispose with :meth:`close`."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        *,
        redis: aioredis.Redis | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.settings = settings
        #: The store's clock (:mod:`trackly_exec.store.clock`): this host's corrected by its measured offset.
        self.store_clock = StoreClock()
        #: The one clock every component reads the time from (:meth:`now`); a test sets it to drive the time.
        #: By default the store's clock (``daemon.clock = "store"``) or this host's (``"local"``). Intervals and
        #: timeouts measured in-process stay on ``time.monotonic`` / the event loop.
        self.clock: Clock = clock or (self.store_clock.now if settings.daemon.clock == "store" else utcnow)
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

    def now(self) -> dt.datetime:
        """The current time by :attr:`clock` (tz-aware UTC)."""
        return self.clock()

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
        await app.sync_clock()
        return app

    async def sync_clock(self) -> None:
        """Measure the offset to the store's clock (``daemon.clock = "store"``); a failure keeps the last offset
        (this host's clock until a first success) and is logged."""
        if self.settings.daemon.clock != "store":
            return
        try:
            offset = await self.store_clock.sync(self.db)
        except Exception as exc:
            log.warning("clock_sync_failed", error=f"{type(exc).__name__}: {exc}"[:300])
            return
        level = log.warning if abs(offset) > self.settings.daemon.clock_skew_warn_seconds else log.debug
        level("clock_synced", offset_seconds=round(offset, 4), error_seconds=round(self.store_clock.error or 0, 4))

    @property
    def db(self) -> AsyncDatabase[Any]:
        """The database: every collection is reached as ``trackly.db[c.NAME]`` (documents typed by the caller,
        see :mod:`trackly_exec.store.documents`)."""
        return self.store.db

    async def close(self, *, close_store: bool = True) -> None:
        await self.drivers.close()
        if self.redis is not None:
            with contextlib.suppress(Exception):
                await self.redis.aclose()
        if close_store:
            await self.store.close()


def tune_gc(young: int = 50_000) -> None:
    """Garbage-collector settings for a long-running process (``trackly run``), once everything is imported.

    What exists by then (modules, classes, schemas) lives as long as the process: ``gc.freeze()`` keeps the
    collector from scanning it again in every full collection. The young generation is collected every ``young``
    net allocations instead of 700: the hot path allocates a few objects per message (documents, requests,
    results) that reference counting frees, and each young collection traversed the claimed batches in flight for
    nothing (issue 12: about 15-20 % of the executor's CPU per message; 10,000 gave about two thirds of that).
    At most ``young`` container objects of cyclic garbage wait for a collection (a few MB).
    """
    gc.collect()
    gc.freeze()
    _, second, third = gc.get_threshold()
    gc.set_threshold(young, second, third)


# -- background work: one way to run a loop, keep tasks, stop with grace, and back off -----------------------


def backoff(
    attempt: int,
    *,
    initial: float,
    cap: float,
    jitter: tuple[float, float] = (0.5, 1.0),
    retry_after: float | None = None,
    rand: Callable[[float, float], float] = random.uniform,
) -> float:
    """Seconds to wait before retry number ``attempt`` (1 = the first retry).

    Exponential (``initial`` doubling per attempt, at most ``cap``), multiplied by a random factor drawn from
    ``jitter`` (``(0.5, 1.0)``: up to half less, so the retries of many clients spread out), at most ``cap``, and
    never less than a ``retry_after`` hint from the other side (a hint is honoured even above ``cap``; the caller
    decides whether to wait that long). The one backoff rule of provider retries, the outbox, Discord alerts and
    reconciliation look-ups.
    """
    exponent = min(max(attempt - 1, 0), 60)
    delay = min(cap, min(cap, initial * 2.0**exponent) * rand(*jitter))
    return float(max(delay, retry_after or 0.0))


class TaskSet:
    """The background tasks of a component: every task is kept until it ends (no fire-and-forget), and
    :meth:`stop` waits for them with grace, then cancels the rest."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(
        self,
        coro: Coroutine[Any, Any, T],
        *,
        name: str | None = None,
        on_done: Callable[[asyncio.Task[T]], None] | None = None,
    ) -> asyncio.Task[T]:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        if on_done is not None:
            task.add_done_callback(on_done)
        return task

    def __len__(self) -> int:
        return len(self._tasks)

    def __bool__(self) -> bool:
        return bool(self._tasks)

    def __iter__(self) -> Iterator[asyncio.Task[Any]]:
        return iter(list(self._tasks))

    async def wait(self) -> None:
        """Until every task has ended (burst mode); their errors are theirs to log."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def stop(self, grace: float) -> int:
        """Wait up to ``grace`` seconds for the tasks, then cancel the rest; returns how many were cancelled."""
        pending = list(self._tasks)
        if not pending:
            return 0
        _, late = await asyncio.wait(pending, timeout=max(grace, 0.0))
        for task in late:
            task.cancel()
        if late:
            await asyncio.gather(*late, return_exceptions=True)
        return len(late)


class Loop:
    """One background loop of a component: ``tick()`` every ``interval`` seconds until :meth:`stop`.

    - :meth:`wake` ends the current wait early; a ``tick`` returning ``True`` (more work is waiting) runs again
      at once; ``first_wait`` waits one interval before the first tick.
    - An exception of ``tick`` goes to ``on_error`` (default: a warning) and the loop goes on: the store or a
      provider may be briefly unreachable.
    - :meth:`stop` ends the wait at once, lets a running tick finish within ``grace`` seconds, then cancels it.
    """

    def __init__(
        self,
        name: str,
        tick: Callable[[], Awaitable[object]],
        interval: float,
        *,
        first_wait: bool = False,
        on_error: Callable[[Exception], None] | None = None,
    ) -> None:
        self.name = name
        self.interval = interval
        self.first_wait = first_wait
        self.stopping = asyncio.Event()
        self._tick = tick
        self._on_error = on_error or self._log_error
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def _log_error(self, exc: Exception) -> None:
        log.warning("loop_tick_failed", loop=self.name, error=str(exc))

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        if self.running:
            return
        self.stopping.clear()
        self._wake.clear()
        self._task = asyncio.create_task(self._run(), name=self.name)

    def wake(self) -> None:
        self._wake.set()

    async def _wait(self) -> None:
        if self.stopping.is_set():
            return
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=self.interval)

    async def _run(self) -> None:
        if self.first_wait:
            await self._wait()
        while not self.stopping.is_set():
            more = False
            try:
                more = (await self._tick()) is True
            except Exception as exc:
                self._on_error(exc)
            if more:
                await asyncio.sleep(0)  # let the rest of the process run between busy ticks
                continue
            await self._wait()

    async def stop(self, grace: float) -> None:
        self.stopping.set()
        self._wake.set()
        task, self._task = self._task, None
        if task is None:
            return
        done, _ = await asyncio.wait({task}, timeout=max(grace, 0.0))
        if not done:
            task.cancel()
        await asyncio.gather(task, return_exceptions=True)
