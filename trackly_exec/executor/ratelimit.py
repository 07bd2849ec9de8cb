"""Per-sending-list rate limiting: GCRA reservations, shared by every executor process through Redis.

A list limited to R messages/minute has an emission interval ``T = 60 / R`` seconds per message. The limiter
keeps one number per list, the *theoretical arrival time* (TAT) of the next free token. A request for ``n``
tokens reserves ``[max(TAT, now), max(TAT, now) + n*T)`` and answers how long the caller must wait before
sending them (``max(TAT, now) - now - burst``). Workers ask for small chunks (``rate_limit_chunk_seconds`` of
tokens) and sleep the returned wait, so a list sends smoothly rather than in a burst at the top of the minute,
and several processes interleave their reservations on the one Redis clock (``redis.call('TIME')``).

A grant is a slot in absolute time (:attr:`Grant.at`, on the caller's clock), not just a wait: the worker sleeps
until it. Sends do not always happen at their slots: an event loop that wakes a worker late (a burst of webhooks,
a slow store round trip, a starting process) sends its chunk later than its slot, on top of the chunks that are on
time, and two processes' late and on-time chunks bunch up (a provider counts them in one second).
So right before its send intent every chunk is also **admitted** (:meth:`RateLimiter.admit`) against the list's
*send window*: the list's sends of the last second, in every process (a sorted set in Redis, key
``constants.RATE_SENT_KEY``: one ``id:n`` entry per chunk, scored by its time; one script call counts and records
atomically). The window holds at most the tokens the pace itself can put in one second, plus one chunk
(:func:`window_cap`: ``(ceil(tokens per second / chunk) + 1) * chunk``, 105 at 100/s in chunks of 5). A chunk on
time always fits; a late one fits unless the second is already full, and otherwise waits until enough of the
window's sends are a second old (the answer is that wait). Once the chunk has gone out (after its intent, a store
round trip that can take a while on a busy store), :meth:`RateLimiter.mark_sent` moves its entry from the
admission's time to the moment its first request was handed to the driver (this host's clock read right then,
:meth:`RateLimiter.clock_at`: no event-loop delay between that reading and the request), so the window holds when the
sends went, not when they were admitted. Of the chunks a provider receives in any one second, the one admitted last
saw every other one in its window (sent, or admitted and on its way), so every second stays within the rate plus one
chunk (+5 % at the default ``rate_limit_chunk_seconds`` of 0.05), whatever the lateness of each process. Late chunks
catch up in the one-chunk headroom: no tokens are thrown away. (An entry stands from its admission to a second after
its send: a list whose admission-to-send time averaged more than one chunk's time, 50 ms, would fall behind its
pace.)

A request whose wait would exceed ``max_wait`` reserves nothing and is refused (the caller fails the
messages ``RATE_LIMIT_TIMEOUT``).

Provider errors (429, 5xx) slow a list down: :meth:`RateLimiter.penalize` doubles a per-list factor (key
``constants.PENALTY_KEY``, capped at ``rate_penalty_max``) that multiplies the interval; :meth:`relax` halves it
after a clean chunk, and the key expires ``rate_penalty_decay_seconds`` after the last error.

Fail closed: when Redis cannot be reached :class:`LimiterUnavailable` is raised (the list sends nothing), the
outage is logged once as ``rate_limiter_unavailable`` and published once as ``RATE_LIMITER_DOWN``; the first
successful call afterwards logs ``rate_limiter_recovered`` and publishes ``RECOVERED``. Scripts run with EVALSHA
and are re-loaded on NOSCRIPT (a Redis restart or ``SCRIPT FLUSH``).

Without ``redis.url`` (one process, embedded store) :class:`LocalRateLimiter` implements the same interface
in memory. A list with ``rate_limit_per_minute = 0`` is unlimited and never asks the limiter.
"""

from __future__ import annotations

import collections
import itertools
import math
import secrets
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, RedisError

from trackly_exec.errors import TracklyError
from trackly_exec.logs import get_logger
from trackly_exec.store import constants as c
from trackly_exec.store.events import Event, EventKind, recovered

if TYPE_CHECKING:
    from trackly_exec.app import Trackly

log = get_logger(__name__)

# KEYS[1] rate key, KEYS[2] penalty key; ARGV: n, interval_us, burst_us, max_wait_us.
# Returns {granted (1/0), wait_us, penalty factor * 1000, now_us (Redis clock)}: the slot is now_us + wait_us.
ACQUIRE_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local factor = tonumber(redis.call('GET', KEYS[2]) or '1') or 1
if factor < 1 then factor = 1 end
local n = tonumber(ARGV[1])
local interval = tonumber(ARGV[2]) * factor
local tat = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
if tat < now then tat = now end
local wait = tat - now - tonumber(ARGV[3])
if wait < 0 then wait = 0 end
if wait > tonumber(ARGV[4]) then
  return {0, math.floor(wait), math.floor(factor * 1000), now}
end
local new_tat = tat + n * interval
redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', math.floor((new_tat - now) / 1000) + 60000)
return {1, math.floor(wait), math.floor(factor * 1000), now}
"""


def _lua_now(arg: int) -> str:
    """Lua that sets ``now`` (microseconds) to ``ARGV[arg]``, or to Redis's clock when that is 0."""
    return (
        f"local now = tonumber(ARGV[{arg}])\n"
        "if now <= 0 then\n"
        "  local t = redis.call('TIME')\n"
        "  now = tonumber(t[1]) * 1000000 + tonumber(t[2])\n"
        "end\n"
    )


# KEYS[1] send window (a sorted set: score the send's time in us, member 'id:n'), KEYS[2] penalty key; ARGV: n,
# interval_us, chunk, burst_us, window_us, now_us (0: Redis's clock; tests pass their own), id.
# Returns {wait_us, now_us}: wait_us 0 means admitted, recorded as 'id:n' at now_us; otherwise nothing was recorded
# and the window has room for n tokens wait_us later (when enough of its entries are a window old).
ADMIT_LUA = (
    _lua_now(6)
    + """local factor = tonumber(redis.call('GET', KEYS[2]) or '1') or 1
if factor < 1 then factor = 1 end
local n = tonumber(ARGV[1])
local chunk = tonumber(ARGV[3])
local window = tonumber(ARGV[5])
local per_window = (window + tonumber(ARGV[4])) / (tonumber(ARGV[2]) * factor)
local cap = (math.ceil(per_window / chunk - 1e-9) + 1) * chunk
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%d', now - window))
local live = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
local used = 0
for i = 1, #live, 2 do
  used = used + tonumber(string.match(live[i], ':(%d+)$'))
end
if used > 0 and used + n > cap then
  local freed = 0
  local wait = window
  for i = 1, #live, 2 do
    freed = freed + tonumber(string.match(live[i], ':(%d+)$'))
    if used - freed + n <= cap or freed == used then
      wait = tonumber(live[i + 1]) + window - now + 1
      break
    end
  end
  if wait < 1 then wait = 1 end
  return {math.floor(wait), now}
end
redis.call('ZADD', KEYS[1], string.format('%d', now), ARGV[7] .. ':' .. ARGV[1])
redis.call('PEXPIRE', KEYS[1], math.floor(window / 1000) + 1000)
return {0, now}
"""
)

# KEYS[1] send window; ARGV: the admitted entry ('id:n'), sent, window_us, now_us (0: Redis's clock), id.
# The entry now stands for the `sent` tokens at now_us (none: it is removed, its room given back).
SENT_LUA = (
    _lua_now(4)
    + """redis.call('ZREM', KEYS[1], ARGV[1])
if tonumber(ARGV[2]) > 0 then
  redis.call('ZADD', KEYS[1], string.format('%d', now), ARGV[5] .. ':' .. ARGV[2])
  redis.call('PEXPIRE', KEYS[1], math.floor(tonumber(ARGV[3]) / 1000) + 1000)
end
return now
"""
)

#: The send window's length: a provider caps messages per second.
WINDOW_SECONDS = 1.0


def window_cap(per_minute: int, chunk: int, factor: float = 1.0, burst_seconds: float = 0.0) -> int:
    """The tokens a list may send in any window of :data:`WINDOW_SECONDS`: what its pace (slowed down by ``factor``,
    plus its burst tolerance) puts in one window, rounded up to whole chunks, plus one chunk (the chunk on time at
    the window's edge). The Lua script computes the same."""
    interval = 60.0 / per_minute * max(1.0, factor)
    per_window = (WINDOW_SECONDS + burst_seconds) / interval
    return (math.ceil(per_window / chunk - 1e-9) + 1) * chunk


# KEYS[1] penalty key; ARGV: multiplier, cap, ttl_ms. Returns the new factor * 1000.
PENALTY_LUA = """
local f = (tonumber(redis.call('GET', KEYS[1]) or '1') or 1) * tonumber(ARGV[1])
if f > tonumber(ARGV[2]) then f = tonumber(ARGV[2]) end
if f <= 1.0001 then
  redis.call('DEL', KEYS[1])
  return 1000
end
redis.call('SET', KEYS[1], string.format('%.4f', f), 'PX', tonumber(ARGV[3]))
return math.floor(f * 1000)
"""


class LimiterUnavailable(TracklyError):
    """The shared limiter cannot be reached: do not send (fail closed)."""


@dataclass(frozen=True)
class Grant:
    """The answer to a token request."""

    granted: bool  # False: the wait would exceed max_wait; nothing was reserved
    wait: float  # seconds to wait before sending the tokens
    factor: float  # the list's current provider-error slow-down factor (1.0 = none)
    at: float | None = None  # the slot: when the tokens may be sent, as a local ``time.time()`` (absolute)


@dataclass(frozen=True)
class Admission:
    """The answer to :meth:`RateLimiter.admit`."""

    wait: float  # 0: admitted (recorded in the send window); else seconds until the window has room (nothing recorded)
    id: str = ""  # the admitted entry, for :meth:`RateLimiter.mark_sent`
    n: int = 0  # the admitted tokens


class RateLimiter:
    """The interface both limiters implement."""

    def __init__(
        self, *, burst_seconds: float = 0.0, penalty_max: float = 4.0, penalty_decay_seconds: float = 30.0
    ) -> None:
        self.burst_seconds = burst_seconds
        self.penalty_max = penalty_max
        self.penalty_decay_seconds = penalty_decay_seconds

    async def acquire(self, list_id: int, n: int, per_minute: int, max_wait: float) -> Grant:
        """Reserve ``n`` tokens of list ``list_id`` (limited to ``per_minute``) unless the wait exceeds ``max_wait``."""
        raise NotImplementedError

    async def admit(self, list_id: int, n: int, per_minute: int, chunk: int, *, now: float | None = None) -> Admission:
        """Record ``n`` tokens of list ``list_id`` as sent now if its send window has room (see the module's doc),
        else answer how long until it has (nothing recorded). ``chunk`` is the list's chunk size; ``now``
        (``time.time()``) only for tests."""
        raise NotImplementedError

    async def mark_sent(self, list_id: int, admitted: Admission, sent: int, *, now: float | None = None) -> None:
        """``sent`` of the tokens of ``admitted`` went out at ``now`` (the limiter's clock, see :meth:`clock_at`;
        None: now): move its entry in the send window there (none sent: the room is given back)."""
        raise NotImplementedError

    def clock_at(self, local: float) -> float:
        """A moment of this host's ``time.time()`` on the limiter's clock."""
        return local

    async def penalize(self, list_id: int) -> float:
        """Provider errors on this list: double its slow-down factor (capped). Returns the new factor."""
        return await self._scale(list_id, 2.0)

    async def relax(self, list_id: int) -> float:
        """A clean chunk after errors: halve the factor (back to 1 eventually). Returns the new factor."""
        return await self._scale(list_id, 0.5)

    async def _scale(self, list_id: int, multiplier: float) -> float:
        raise NotImplementedError

    async def reset(self, list_id: int) -> None:
        """Forget a list's reservations and slow-down (tests, benches)."""
        raise NotImplementedError


class RedisRateLimiter(RateLimiter):
    """GCRA in a Lua script on the Redis shared by every executor process."""

    def __init__(self, client: aioredis.Redis, *, bus: Any = None, **kw: Any) -> None:
        super().__init__(**kw)
        self.client = client
        self.bus = bus
        self._sha: dict[str, str] = {}
        self._down = False
        self._offsets: collections.deque[float] = collections.deque(maxlen=64)
        self._tag = secrets.token_hex(4)  # this process's send-window entries: tag + a counter
        self._entries = itertools.count()

    def _local_slot(self, redis_now_us: int, wait_us: int, received: float) -> float:
        """The slot ``redis_now + wait`` on this host's clock.

        ``received - redis_now`` is the clock offset plus however long the answer took to be read (a late event
        loop included); the smallest of the recent samples is the offset with the least delay, so a stalled loop
        does not move the slot later (it is found late instead, see ``worker._chunk``).
        """
        self._offsets.append(received - redis_now_us / 1e6)
        return (redis_now_us + wait_us) / 1e6 + min(self._offsets)

    async def _eval(self, script: str, keys: list[str], args: list[Any]) -> Any:
        try:
            sha = self._sha.get(script)
            try:
                if sha is None:
                    raise NoScriptError("not loaded yet")
                result = await self.client.evalsha(sha, len(keys), *keys, *args)
            except NoScriptError:
                self._sha[script] = sha = await self.client.script_load(script)
                result = await self.client.evalsha(sha, len(keys), *keys, *args)
        except (RedisError, OSError) as exc:
            await self._outage(exc)
            raise LimiterUnavailable(str(exc)) from exc
        if self._down:
            self._down = False
            log.info("rate_limiter_recovered")
            if self.bus is not None:
                await self.bus.publish(
                    recovered(
                        "rate_limiter_down", "Rate limiter (Redis) reachable again: rate-limited lists send again"
                    )
                )
        return result

    async def _outage(self, exc: BaseException) -> None:
        if self._down:
            return
        self._down = True
        log.error(
            "rate_limiter_unavailable", error=str(exc), action="lists with a rate limit do not send until Redis is back"
        )
        if self.bus is not None:
            await self.bus.publish(
                Event(
                    kind=EventKind.RATE_LIMITER_DOWN,
                    severity="critical",
                    key="rate_limiter_down",
                    message=f"Rate limiter (Redis) unreachable: rate-limited lists are paused ({exc})",
                    data={"sending_list_id": None, "error": str(exc)},
                )
            )

    async def acquire(self, list_id: int, n: int, per_minute: int, max_wait: float) -> Grant:
        interval_us = 60_000_000 / per_minute
        granted, wait_us, factor, now_us = await self._eval(
            ACQUIRE_LUA,
            [f"{c.RATE_KEY}{list_id}", f"{c.PENALTY_KEY}{list_id}"],
            [n, f"{interval_us:.3f}", int(self.burst_seconds * 1e6), int(max_wait * 1e6)],
        )
        at = self._local_slot(int(now_us), int(wait_us), time.time())
        return Grant(bool(granted), int(wait_us) / 1e6, int(factor) / 1000, at)

    async def admit(self, list_id: int, n: int, per_minute: int, chunk: int, *, now: float | None = None) -> Admission:
        entry = f"{self._tag}{next(self._entries)}"
        wait_us, _ = await self._eval(
            ADMIT_LUA,
            [f"{c.RATE_SENT_KEY}{list_id}", f"{c.PENALTY_KEY}{list_id}"],
            [
                n,
                f"{60_000_000 / per_minute:.3f}",
                max(1, chunk),
                int(self.burst_seconds * 1e6),
                int(WINDOW_SECONDS * 1e6),
                0 if now is None else int(now * 1e6),
                entry,
            ],
        )
        return Admission(int(wait_us) / 1e6, entry, n)

    async def mark_sent(self, list_id: int, admitted: Admission, sent: int, *, now: float | None = None) -> None:
        await self._eval(
            SENT_LUA,
            [f"{c.RATE_SENT_KEY}{list_id}"],
            [
                f"{admitted.id}:{admitted.n}",
                sent,
                int(WINDOW_SECONDS * 1e6),
                0 if now is None else int(now * 1e6),
                admitted.id,
            ],
        )

    def clock_at(self, local: float) -> float:
        """``local`` less the clock offset seen with the least delay (see :meth:`_local_slot`)."""
        return local - min(self._offsets) if self._offsets else local

    async def _scale(self, list_id: int, multiplier: float) -> float:
        factor = await self._eval(
            PENALTY_LUA,
            [f"{c.PENALTY_KEY}{list_id}"],
            [multiplier, self.penalty_max, int(self.penalty_decay_seconds * 1000)],
        )
        return int(factor) / 1000

    async def reset(self, list_id: int) -> None:
        await self.client.delete(f"{c.RATE_KEY}{list_id}", f"{c.PENALTY_KEY}{list_id}", f"{c.RATE_SENT_KEY}{list_id}")


class LocalRateLimiter(RateLimiter):
    """The same GCRA, in this process only (no ``redis.url``: a single executor process)."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self._tat: dict[int, float] = {}
        self._penalty: dict[int, tuple[float, float]] = {}  # list -> (factor, expires at)
        self._sent: dict[int, dict[str, tuple[float, int]]] = {}  # list -> send window: entry -> (time, n)
        self._entries = itertools.count()

    def _factor(self, list_id: int, now: float) -> float:
        factor, expires = self._penalty.get(list_id, (1.0, 0.0))
        return factor if now < expires else 1.0

    async def acquire(self, list_id: int, n: int, per_minute: int, max_wait: float) -> Grant:
        now = time.time()
        factor = self._factor(list_id, now)
        tat = max(self._tat.get(list_id, 0.0), now)
        wait = max(0.0, tat - now - self.burst_seconds)
        if wait > max_wait:
            return Grant(False, wait, factor, now + wait)
        self._tat[list_id] = tat + n * 60.0 / per_minute * factor
        return Grant(True, wait, factor, now + wait)

    async def admit(self, list_id: int, n: int, per_minute: int, chunk: int, *, now: float | None = None) -> Admission:
        now = time.time() if now is None else now
        cap = window_cap(per_minute, max(1, chunk), self._factor(list_id, now), self.burst_seconds)
        window = self._sent.setdefault(list_id, {})
        for old in [e for e, (at, _) in window.items() if at <= now - WINDOW_SECONDS]:
            del window[old]
        used = sum(m for _, m in window.values())
        if used > 0 and used + n > cap:
            freed = 0
            for at, m in sorted(window.values()):
                freed += m
                if used - freed + n <= cap or freed == used:
                    return Admission(max(1e-6, at + WINDOW_SECONDS - now + 1e-6))
        entry = str(next(self._entries))
        window[entry] = (now, n)
        return Admission(0.0, entry, n)

    async def mark_sent(self, list_id: int, admitted: Admission, sent: int, *, now: float | None = None) -> None:
        window = self._sent.setdefault(list_id, {})
        window.pop(admitted.id, None)
        if sent > 0:
            window[admitted.id] = (time.time() if now is None else now, sent)

    async def _scale(self, list_id: int, multiplier: float) -> float:
        now = time.time()
        factor = min(self.penalty_max, self._factor(list_id, now) * multiplier)
        if factor <= 1.0001:
            self._penalty.pop(list_id, None)
            return 1.0
        self._penalty[list_id] = (factor, now + self.penalty_decay_seconds)
        return factor

    async def reset(self, list_id: int) -> None:
        self._tat.pop(list_id, None)
        self._penalty.pop(list_id, None)
        self._sent.pop(list_id, None)


def make_limiter(trackly: Trackly) -> RateLimiter:
    """The Redis limiter when ``redis.url`` is set, else the in-process one."""
    cfg = trackly.settings.executor
    kw: dict[str, float] = {
        "burst_seconds": cfg.rate_limit_burst_seconds,
        "penalty_max": cfg.rate_penalty_max,
        "penalty_decay_seconds": cfg.rate_penalty_decay_seconds,
    }
    if trackly.redis is not None:
        return RedisRateLimiter(trackly.redis, bus=trackly.bus, **kw)
    return LocalRateLimiter(**kw)
