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

#: (is it enabled?, "module:Class"). Each class takes the Trackly object and is a :class:`Component`.
COMPONENTS: list[tuple[Callable[[Settings], bool], str]] = [
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


async def serve(
    settings: Settings,
    *,
    stop: asyncio.Event | None = None,
    on_ready: Callable[[Trackly, list[Component]], Any] | None = None,
) -> int:
    """Run until ``stop`` is set or SIGTERM/SIGINT arrives. Returns the exit status."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
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
        await stop.wait()
        notify("STOPPING=1", "STATUS=stopping")
        log.info("stopping", grace_seconds=settings.daemon.shutdown_grace_seconds)
    finally:
        if watchdog is not None:
            watchdog.cancel()
        for comp in reversed(components):
            try:
                await comp.stop(settings.daemon.shutdown_grace_seconds)
            except Exception as exc:
                log.error("component_stop_failed", component=comp.name, error=str(exc))
        await trackly.close()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    log.info("stopped", uptime_seconds=round(time.monotonic() - started, 1))
    return 0
