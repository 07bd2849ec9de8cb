"""Keeping the daemon on the store's clock (``daemon.clock = "store"``, see :mod:`trackly_exec.store.clock`).

The offset is first measured when the daemon opens (``Trackly.open``), then again every
``daemon.clock_sync_seconds``. When this host's clock is off the store's by more than
``daemon.clock_skew_warn_seconds``, the daemon still decides on the store's time, and says so once: a
``clock_skew`` warning in the log and a ``CLOCK_SKEW`` alert (``clock_skew_cleared`` when it is back within).
``/metrics`` exports the offset as ``trackly_clock_offset_seconds``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from trackly_exec.app import Loop
from trackly_exec.logs import get_logger
from trackly_exec.store.events import Event, EventKind

if TYPE_CHECKING:
    from trackly_exec.app import Trackly

log = get_logger(__name__)


class ClockSync:
    """The daemon component that re-measures the store clock's offset and warns about a skewed host."""

    name = "clock-sync"

    def __init__(self, trackly: Trackly) -> None:
        self.trackly = trackly
        self.cfg = trackly.settings.daemon
        self.skewed = False
        self._loop = Loop("clock-sync", self.tick, self.cfg.clock_sync_seconds, first_wait=True)

    async def start(self) -> None:
        await self.check()  # the offset Trackly.open measured
        self._loop.start()

    async def stop(self, grace: float) -> None:
        await self._loop.stop(grace)

    async def tick(self) -> None:
        await self.trackly.sync_clock()
        await self.check()

    async def check(self) -> None:
        """Warn once when the offset goes past ``clock_skew_warn_seconds``, and say when it is back within."""
        clock = self.trackly.store_clock
        if clock.synced_at is None:
            return
        offset, limit = clock.offset, self.cfg.clock_skew_warn_seconds
        if abs(offset) > limit and not self.skewed:
            self.skewed = True
            ahead = "ahead of" if offset > 0 else "behind"
            message = (
                f"{self.trackly.instance}: this host's clock is {abs(offset):.1f} s {ahead} the store's; the daemon "
                "times its decisions on the store's clock (fix the host's NTP)"
            )
            log.warning("clock_skew", offset_seconds=round(offset, 3), warn_seconds=limit, action=message)
            await self.trackly.bus.publish(
                Event(
                    kind=EventKind.CLOCK_SKEW,
                    message=message,
                    key=f"clock_skew:{self.trackly.instance}",
                    data={"instance": self.trackly.instance, "offset_seconds": round(offset, 3), "warn_seconds": limit},
                )
            )
        elif abs(offset) <= limit and self.skewed:
            self.skewed = False
            log.info("clock_skew_cleared", offset_seconds=round(offset, 3))
