"""Executor membership: which executor processes are live, and this process's share of the queue.

Every executor process with Redis keeps a heartbeat in one sorted set per database
(``constants.EXECUTORS_KEY + database``: member = instance name, score = when the heartbeat expires, in ms on
the Redis clock). One script call both refreshes this process's heartbeat, drops the expired ones and returns
the live names; sorted, they give this process its rank and the number of live executors ``n``, hence its share
of the queue (:func:`trackly_exec.executor.claims.share_bounds`). So N processes read and claim disjoint
candidates and never collide on a claim.

- A clean stop removes the member at once; a process that died (or whose event loop stalled) drops out when
  its heartbeat expires (``executor.member_ttl_seconds``). The others take its share at their next refresh.
- Views of the membership may briefly disagree (a process joining or leaving): shares then overlap (claims stay
  safe: every claim is an atomic, fenced conditional update) or leave a gap for one refresh (only a delay).
- Without Redis, when Redis does not answer for ``member_ttl_seconds``, or alone: no share (the whole queue).
"""

from __future__ import annotations

import time
from typing import Any

from redis.exceptions import RedisError

from trackly_exec.executor import claims
from trackly_exec.logs import get_logger

log = get_logger(__name__)

# KEYS[1] the members' sorted set; ARGV: instance, ttl_ms (0: leave). Returns the live instance names.
MEMBERS_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local ttl = tonumber(ARGV[2])
if ttl > 0 then
  redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
  redis.call('PEXPIRE', KEYS[1], ttl * 3)
else
  redis.call('ZREM', KEYS[1], ARGV[1])
end
return redis.call('ZRANGE', KEYS[1], 0, -1)
"""


class Membership:
    """This process's heartbeat among the executors sharing a database, and its view of the others."""

    def __init__(self, redis: Any, key: str, instance: str, ttl_seconds: float) -> None:
        self.redis = redis
        self.key = key
        self.instance = instance
        self.ttl = ttl_seconds
        self.rank, self.n = 0, 1
        self.fresh_at: float | None = None  # monotonic time of the last successful heartbeat
        self._failing = False

    async def _call(self, ttl_ms: int) -> list[str]:
        raw = await self.redis.eval(MEMBERS_LUA, 1, self.key, self.instance, ttl_ms)
        return sorted(m.decode() if isinstance(m, bytes) else str(m) for m in raw)

    async def beat(self) -> None:
        """Refresh this process's heartbeat and read the live executors (one Redis round trip)."""
        try:
            names = await self._call(max(1, int(self.ttl * 1000)))
        except (RedisError, OSError, TimeoutError) as exc:
            if not self._failing:
                log.warning("executor_membership_unavailable", error=str(exc) or type(exc).__name__)
                self._failing = True
            return
        if self._failing:
            log.info("executor_membership_recovered")
            self._failing = False
        if self.instance not in names:  # expired between the add and the read (cannot happen) or renamed
            names = sorted([*names, self.instance])
        rank, n = names.index(self.instance), len(names)
        if (rank, n) != (self.rank, self.n):
            log.info("executor_share", instance=self.instance, rank=rank, executors=n)
        self.rank, self.n = rank, n
        self.fresh_at = time.monotonic()

    async def leave(self) -> None:
        """Remove this process's heartbeat (a clean stop): the others take its share at their next refresh."""
        try:
            await self._call(0)
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning("executor_leave_failed", error=str(exc) or type(exc).__name__)
        self.rank, self.n, self.fresh_at = 0, 1, None

    @property
    def live(self) -> bool:
        """The view is recent enough to act on (the last heartbeat succeeded within the TTL)."""
        return self.fresh_at is not None and time.monotonic() - self.fresh_at < self.ttl

    def share(self) -> claims.Share | None:
        """This process's share of the queue, or None (the whole queue: alone, no Redis, or a stale view)."""
        if not self.live or self.n <= 1:
            return None
        return claims.share_bounds(self.rank, self.n)
