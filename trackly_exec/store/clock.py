"""The store's clock: one time for every daemon, whatever their hosts' clocks say.

Several daemons on several VMs decide with the time: a claim's age (recovery takes over claims older than the TTL),
a message's staleness, the recipient's quiet hours, a schedule's next occurrence, a billing or throttle backoff. If
one VM's clock runs two hours ahead, it would take over the live claims of every other daemon, call fresh messages
stale, text people at 7 a.m. their time and start campaigns two hours early (fault matrix row 8). So the daemon
takes every such decision on the store's clock instead: :meth:`StoreClock.sync` asks the store for its time
(``hello``'s ``localTime``, which MongoDB and nx-27017 both answer), a few times, keeps the sample with the
shortest round trip, and from then on :meth:`StoreClock.now` is this host's clock corrected by the measured offset
(at most half that round trip off). Daemons sharing one store therefore share one clock.

``daemon.clock = "local"`` keeps this host's own clock (keep the VMs on NTP). The offset is re-measured every
``daemon.clock_sync_seconds`` (``operations.clocksync``, which also warns when it exceeds
``daemon.clock_skew_warn_seconds``). Intervals measured inside a process stay on the monotonic clock, and the rate
limiter keeps the Redis clock (``executor.ratelimit``).
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from typing import Any

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)

#: Round trips asked of the store per :meth:`StoreClock.sync`; the shortest one is kept.
SAMPLES = 3


class StoreClock:
    """This host's clock corrected to the store's. ``offset`` is this host's clock minus the store's, in seconds
    (0 until the first :meth:`sync`); :meth:`sync` is its only writer."""

    def __init__(self, wall: Callable[[], float] = time.time) -> None:
        #: This host's clock (seconds since the epoch); a test gives a skewed one.
        self.wall = wall
        self.offset = 0.0
        #: Half the round trip of the sample the offset came from: how far off the offset may be.
        self.error: float | None = None
        #: ``time.monotonic()`` of the last successful :meth:`sync` (``None``: never synced).
        self.synced_at: float | None = None

    def now(self) -> dt.datetime:
        """The store's time now (tz-aware UTC, millisecond precision, as ``models.utcnow``)."""
        return _EPOCH + dt.timedelta(milliseconds=int((self.wall() - self.offset) * 1000))

    async def sync(self, db: Any, samples: int = SAMPLES) -> float:
        """Measure the offset to the store's clock (``db`` an ``AsyncDatabase``); returns it. Raises what the store
        raises (the offset is then kept as it was)."""
        best: tuple[float, float] | None = None  # (round trip, offset)
        for _ in range(max(1, samples)):
            wall, started = self.wall(), time.monotonic()
            reply = await db.command("hello")
            trip = time.monotonic() - started
            server = reply.get("localTime")
            if not isinstance(server, dt.datetime):
                raise ValueError("the store's hello answer has no localTime")
            if server.tzinfo is None:
                server = server.replace(tzinfo=dt.UTC)
            # the server read its clock somewhere within the round trip: take the middle; its time is truncated to
            # the millisecond, so it stands for the middle of that millisecond
            offset = (wall + trip / 2) - (server.timestamp() + 0.0005)
            if best is None or trip < best[0]:
                best = (trip, offset)
        assert best is not None
        self.error, self.offset = best[0] / 2, best[1]
        self.synced_at = time.monotonic()
        return self.offset
