"""``trackly run``: start the store and every enabled component, serve until SIGTERM, stop in order."""

from __future__ import annotations

import asyncio
import importlib
import signal
import time
from collections.abc import Callable
from typing import Any

from trackly_exec.app import Component, Trackly
from trackly_exec.config import Settings
from trackly_exec.logs import get_logger
from trackly_exec.operations.systemd import notify, watchdog_interval, watchdog_loop

log = get_logger(__name__)

#: What shutdown may take beyond ``daemon.shutdown_grace_seconds`` (cancelling, closing connections). Every
#: component stop and the final close are bounded by grace + this, whatever is down (store, Redis, provider).
STOP_MARGIN_SECONDS = 2.0

#: (is it enabled?, "module:Class"). Each class takes the Trackly object and is a :class:`Component`.
COMPONENTS: list[tuple[Callable[[Settings], bool], str]] = [
    (lambda s: s.mongo.embedded, "trackly_exec.store.embedded:StoreSupervisor"),  # first started, last stopped
    (lambda s: s.daemon.clock == "store", "trackly_exec.operations.clocksync:ClockSync"),
    (lambda s: s.http.enabled, "trackly_exec.operations.web:HttpServer"),
    (lambda s: s.executor.enabled, "trackly_exec.executor.coordinator:Coordinator"),
    (lambda s: s.scheduler.enabled, "trackly_exec.campaigns.scheduler:Scheduler"),
    (lambda s: True, "trackly_exec.tracking.outbox:Outbox"),
    (lambda s: True, "trackly_exec.tracking.parked:ParkedReports"),
    (lambda s: s.reconcile.enabled, "trackly_exec.tracking.reconcile:Reconciler"),
    (lambda s: True, "trackly_exec.operations.alerts:Alerts"),
]


def build_components(trackly: Trackly) -> list[Component]:
    out: list[Component] = []
    for enabled, path in COMPONENTS:
        if not enabled(trackly.settings):
            continue
        module, _, cls = path.partition(":")
        out.append(getattr(importlib.import_module(module), cls)(trackly))
    return out


#: The exit status after a graceful stop on SIGHUP (128 + the signal's number, as a shell reports it).
HANGUP_EXIT = 128 + signal.SIGHUP


async def serve(
    settings: Settings,
    *,
    stop: asyncio.Event | None = None,
    on_ready: Callable[[Trackly, list[Component]], Any] | None = None,
) -> int:
    """Run until ``stop`` is set or SIGTERM/SIGINT/SIGHUP arrives. Returns the exit status.

    SIGHUP (a closed terminal, an operator's habitual ``kill -HUP``) stops as gracefully as SIGTERM, then exits with
    :data:`HANGUP_EXIT`: not a clean stop, so systemd's ``Restart=on-failure`` starts the daemon again (its default
    action, terminating at once, left claimed batches to the claim TTL and the service down)."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    hung_up: list[bool] = []

    def hangup() -> None:
        hung_up.append(True)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, hangup)
    started = time.monotonic()
    trackly = await Trackly.open(settings)
    components: list[Component] = []
    watchdog: asyncio.Task[None] | None = None
    try:
        for comp in build_components(trackly):
            await comp.start()
            components.append(comp)
        log.info(
            "ready",
            instance=trackly.instance,
            components=[c.name for c in components],
            store="embedded" if settings.mongo.embedded else "mongodb",
            port=trackly.store.embedded.port if trackly.store.embedded else None,
            rate_limiter="redis" if trackly.redis is not None else "in-process",
            drivers=trackly.drivers.names(),
            startup_seconds=round(time.monotonic() - started, 2),
        )
        notify("READY=1", f"STATUS=ready: {', '.join(c.name for c in components)}")
        interval = watchdog_interval()
        if interval:
            watchdog = asyncio.create_task(watchdog_loop(interval))
        if on_ready is not None:
            res = on_ready(trackly, components)
            if asyncio.iscoroutine(res):
                await res
        await _first(stop, trackly.exit_requested)
        notify("STOPPING=1", "STATUS=stopping")
        log.info(
            "stopping",
            grace_seconds=settings.daemon.shutdown_grace_seconds,
            exit_code=trackly.exit_code,
            reason=trackly.exit_reason or ("SIGHUP" if hung_up else "signal"),
        )
    finally:
        if watchdog is not None:
            watchdog.cancel()
        await shutdown(trackly, components, settings.daemon.shutdown_grace_seconds)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
    code = trackly.exit_code or (HANGUP_EXIT if hung_up else 0)
    log.info("stopped", uptime_seconds=round(time.monotonic() - started, 1), exit_code=code)
    return code


async def _first(*events: asyncio.Event) -> None:
    """Wait until any of ``events`` is set."""
    waiters = [asyncio.create_task(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)


async def _bounded(what: str, coro: Any, timeout: float) -> None:
    try:
        await asyncio.wait_for(coro, timeout=max(0.05, timeout))
    except TimeoutError:
        log.error("stop_timed_out", what=what, seconds=round(timeout, 2))
    except Exception as exc:
        log.error("component_stop_failed", component=what, error=str(exc))


async def shutdown(trackly: Trackly, components: list[Component], grace: float) -> None:
    """Stop ``components`` and close ``trackly`` within ``grace`` + :data:`STOP_MARGIN_SECONDS`.

    The working components stop together (each gets the whole grace to finish or release its in-flight work), then
    the HTTP server (it answers webhooks until then), then the store supervisor, then the connections. A store or
    Redis that does not answer cannot hold the process: every stop is cut at the deadline (what it could not
    release, recovery releases after the claim TTL).
    """
    loop = asyncio.get_running_loop()
    hard = loop.time() + grace + STOP_MARGIN_SECONDS
    last = {"http", "store-supervisor"}
    working = [c for c in components if c.name not in last]
    await asyncio.gather(*(_bounded(c.name, c.stop(grace), hard - loop.time() - 1.0) for c in working))
    for comp in reversed([c for c in components if c.name in last]):
        await _bounded(comp.name, comp.stop(max(0.0, min(1.0, hard - loop.time() - 1.0))), hard - loop.time() - 0.5)
    await _bounded("close", trackly.close(close_store=False), hard - loop.time() - 1.0)
    await _bounded("store_close", trackly.store.client.close(), hard - loop.time() - 1.0)
    if trackly.store.embedded is not None:  # SIGTERM, then SIGKILL (a hung store ignores SIGTERM)
        await asyncio.to_thread(trackly.store.embedded.stop, max(0.2, hard - loop.time() - 0.3))
