"""The executor component: polls the queue, groups due messages by sending list, runs per-list workers.

One loop asks the store which lists have due, unclaimed messages (``distinct("sending_list_id", due)``) and
keeps, per list, up to ``workers_per_list`` worker tasks; each task claims its own batches
(:meth:`worker.Worker.run_batch`) until a claim comes back empty. Lists are visited round-robin, and every
provider request of every list shares one ``asyncio.Semaphore(pool_size)``, so no list starves another.
Every task is kept in a set until it is done.

``stop(grace)``: stop claiming, let in-flight batches finish for up to ``grace`` seconds (rate-limit waits
and retry back-offs end at once and give their messages back), cancel what is left, then release every
claim of this process that has no send intent (fenced). Messages with an intent stay claimed: recovery
records them NO_RESPONSE, since the provider may have them.

Several processes (scale-out): with Redis, each process keeps a heartbeat (:mod:`peers`) and polls and claims only
its share of the queue (a range of message ids), so N processes read each due message about once and make no empty
claims. When a peer stops or dies its share passes to the others at their next heartbeat (``member_ttl_seconds``);
when this process's own share has been empty for ``steal_after_seconds`` while others' have due messages (a peer
stuck), it claims from the whole queue until its own share has work again (``steals``). Alone, without Redis or with
Redis unreachable: the whole queue (claims are safe anyway: atomic, conditional and fenced). Counts ``queue_reads``
(queue documents read: candidates plus claim read-backs) and ``empty_claims`` (claims that found every candidate
taken) show collisions.

Burst mode (tests, benches, ``python -m trackly_exec.executor.coordinator --burst``): :meth:`run_until_idle` processes
every due message of this process's share (every due message when it is alone) and returns the counts.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import datetime as dt
import json
import sys
import time
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

from trackly_exec.app import Loop, TaskSet, Trackly, tune_gc
from trackly_exec.executor import checks, claims, recovery
from trackly_exec.executor.peers import Membership
from trackly_exec.executor.ratelimit import make_limiter
from trackly_exec.executor.worker import ListInfo, Worker
from trackly_exec.logs import get_logger
from trackly_exec.store import constants as c
from trackly_exec.store import quiethours
from trackly_exec.store.models import SendingList

log = get_logger(__name__)

#: Longest wait for the store when releasing claims at stop.
RELEASE_TIMEOUT_SECONDS = 2.0


class Coordinator:
    """The message executor (daemon component ``executor``)."""

    name = "executor"

    def __init__(self, trackly: Trackly, *, clock: Callable[[], dt.datetime] | None = None) -> None:
        self.trackly = trackly
        self.cfg = trackly.settings.executor
        self.counts: collections.Counter[str] = collections.Counter()
        trackly.executor_counts.append(self.counts)  # /metrics exports them
        self.stopping = asyncio.Event()
        self._backfilled = False
        self.pool = asyncio.Semaphore(self.cfg.pool_size)
        self.limiter = make_limiter(trackly)
        self.worker = Worker(trackly, self.limiter, self.pool, self.stopping, self.counts, clock)
        self.tasks = TaskSet()  # list workers
        self.per_list: dict[int, set[asyncio.Task[Any]]] = {}
        self._lists: dict[int, tuple[float, ListInfo | None]] = {}
        self._rr = 0
        self.membership: Membership | None = None
        if trackly.redis is not None:
            self.membership = Membership(
                trackly.redis,
                c.EXECUTORS_KEY + trackly.settings.mongo.database,
                trackly.instance,
                self.cfg.member_ttl_seconds,
            )
        self.stealing = False  # claiming from the whole queue: this share is empty, others' are not (a stuck peer)
        self._starved_since: dt.datetime | None = None
        self.worker.share = self.share
        self.worker.executors = self.executors
        self._poller = Loop("executor-poll", self.fill, self.cfg.poll_interval_seconds, on_error=self._poll_failed)
        self._heartbeat = Loop(
            "executor-heartbeat",
            self._beat,
            max(0.05, min(1.0, self.cfg.member_ttl_seconds / 5)),
            first_wait=True,
            on_error=self._poll_failed,
        )
        self._renewer = Loop(  # running batches keep their claims (a slow provider, a long wait for the pool)
            "executor-claims",
            self._renew,
            max(0.05, self.cfg.claim_ttl_minutes * 60.0 / 8),
            first_wait=True,
            on_error=self._renew_failed,
        )
        self._recoverer = Loop(
            "executor-recovery",
            self._recover,
            self.cfg.recovery_interval_seconds,
            first_wait=True,
            on_error=self._recovery_failed,
        )

    @property
    def clock(self) -> Callable[[], dt.datetime]:
        return self.worker.clock

    @clock.setter
    def clock(self, fn: Callable[[], dt.datetime]) -> None:
        self.worker.clock = fn

    # -- sending lists ----------------------------------------------------------------------------

    async def list_info(self, list_id: int) -> ListInfo | None:
        """The list and its started driver, cached for ``list_cache_seconds``; None when it must not send."""
        hit = self._lists.get(list_id)
        if hit is not None and time.monotonic() - hit[0] < self.cfg.list_cache_seconds:
            return hit[1]
        info: ListInfo | None = None
        doc = await self.trackly.db[c.SENDING_LISTS].find_one({"_id": list_id})
        if doc is None:
            log.error("sending_list_missing", sending_list_id=list_id)
        else:
            try:
                lst = SendingList.from_doc(doc)
            except ValueError as exc:  # pydantic's ValidationError: a list the executor cannot use
                # the fields and problems only: str(ValidationError) carries the input (driver_settings...)
                errors = exc.errors(include_input=False) if isinstance(exc, ValidationError) else []
                problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors[:5])
                log.error("sending_list_invalid", sending_list_id=list_id, error=problems or type(exc).__name__)
                self._lists[list_id] = (time.monotonic(), None)
                return None
            if lst.active:
                try:
                    driver = await self.trackly.drivers.get(lst.driver, lst.driver_settings)
                except Exception as exc:
                    log.error("driver_unavailable", sending_list_id=list_id, driver=lst.driver, error=str(exc))
                else:
                    info = ListInfo(
                        lst,
                        driver,
                        checks.blocked_words_pattern([*lst.blocked_words, *self.cfg.blocked_words]),
                        quiethours.Window.from_quiet_hours(lst.quiet_hours),
                    )
        self._lists[list_id] = (time.monotonic(), info)
        return info

    # -- scheduling -------------------------------------------------------------------------------

    # -- membership and shares ------------------------------------------------------------------

    def own_share(self) -> claims.Share | None:
        """This process's share of the queue by the membership (None: the whole queue)."""
        return self.membership.share() if self.membership is not None else None

    def executors(self) -> int:
        """How many executor processes share the queue, by the membership (1 alone, without Redis or a live view)."""
        m = self.membership
        return m.n if m is not None and m.live else 1

    def share(self) -> claims.Share | None:
        """What this process polls and claims now: its own share, or the whole queue while stealing."""
        return None if self.stealing else self.own_share()

    async def _beat(self) -> None:
        if self.membership is not None:
            await self.membership.beat()

    async def join(self) -> None:
        """Heartbeat once now (start, burst mode), then keep it fresh in the background."""
        await self._beat()
        if self.membership is not None:
            self._heartbeat.start()

    async def leave(self) -> None:
        """Stop the heartbeat and leave the membership: the others take this process's share."""
        await self._heartbeat.stop(RELEASE_TIMEOUT_SECONDS)
        if self.membership is not None:
            try:
                await asyncio.wait_for(self.membership.leave(), timeout=RELEASE_TIMEOUT_SECONDS)
            except TimeoutError:
                log.warning("executor_leave_failed", error="timeout")
        self.stealing = False  # (the starvation clock goes on: a burst run after another continues it)

    async def _due_lists(self) -> list[int]:
        """Lists with due messages in this process's share; the whole queue's after ``steal_after_seconds`` of an
        empty share while other shares have due messages."""
        db, now = self.trackly.db, self.worker.clock()
        own = self.own_share()
        ids = await claims.due_lists(db, now, own)
        if own is None or ids:
            self.stealing, self._starved_since = False, None
            return ids
        everyone = await claims.due_lists(db, now)
        if not everyone:
            self.stealing, self._starved_since = False, None
            return []
        if self._starved_since is None or self._starved_since > now:
            self._starved_since = now
        if (now - self._starved_since).total_seconds() < self.cfg.steal_after_seconds:
            return []
        if not self.stealing:
            log.warning(
                "executor_stealing",
                instance=self.trackly.instance,
                empty_for_seconds=round((now - self._starved_since).total_seconds(), 1),
                lists=everyone,
            )
            self.counts["steals"] += 1
        self.stealing = True
        return everyone

    async def _ready_lists(self) -> list[int]:
        ids = await self._due_lists()
        now = time.monotonic()
        ready = [i for i in sorted(ids) if self.worker.paused.get(i, 0.0) <= now]
        if ready:  # round-robin: start from a different list each time
            self._rr = (self._rr + 1) % len(ready)
            ready = ready[self._rr :] + ready[: self._rr]
        return ready

    async def fill(self) -> int:
        """Start workers for lists with due work, up to ``workers_per_list`` each. Returns how many started."""
        started = 0
        for list_id in await self._ready_lists():
            if self.stopping.is_set():
                break
            info = await self.list_info(list_id)
            if info is None:
                self.worker.paused[list_id] = time.monotonic() + self.cfg.list_cache_seconds
                continue
            running = self.per_list.setdefault(list_id, set())
            for _ in range(self.worker.batches_per_list(info.doc) - len(running)):
                task = self.tasks.spawn(
                    self._list_worker(list_id), name=f"executor-list-{list_id}", on_done=self._task_done(list_id)
                )
                running.add(task)
                started += 1
        return started

    def _task_done(self, list_id: int) -> Callable[[asyncio.Task[Any]], None]:
        def done(task: asyncio.Task[Any]) -> None:
            self.per_list.get(list_id, set()).discard(task)
            if not task.cancelled() and task.exception() is not None:
                log.error("list_worker_crashed", sending_list_id=list_id, error=repr(task.exception()))
            self._poller.wake()

        return done

    async def _list_worker(self, list_id: int) -> None:
        """Claim and process batches of one list until a claim comes back empty."""
        while not self.stopping.is_set() and self.worker.paused.get(list_id, 0.0) <= time.monotonic():
            info = await self.list_info(list_id)
            if info is None:
                return
            claimed = await self.worker.run_batch(info)
            if claimed == 0:
                return
            self.counts["batches"] += 1

    # -- burst mode -------------------------------------------------------------------------------

    async def _backfill(self) -> None:
        """Once per coordinator: queued messages written by an older version get their due time and slot."""
        if self._backfilled:
            return
        n = await claims.backfill(self.trackly.db)
        self._backfilled = True
        if n:
            log.info("queue_backfilled", messages=n)

    async def run_until_idle(self) -> dict[str, int]:
        """Process every due message (lists paused by an outage are skipped) and return the counts.

        The counts are cumulative for this coordinator: ``claimed``, ``sent``, ``failed.<REASON>``,
        ``held.quiet_hours``, ``held.billing``, ``held.not_due``, ``released``, ``requeued``, ``provider_transient``,
        ``slowdowns``, ``limiter_unavailable``, ``claim_lost_before_send``, ``claim_lost_after_send``, ``batches``,
        ``batch_errors``.
        """
        await self._backfill()
        await self.join()
        self._renewer.start()
        try:
            while not self.stopping.is_set():
                started = await self.fill()
                if not self.tasks:
                    break
                before = self.counts["claimed"]
                await asyncio.gather(*list(self.tasks), return_exceptions=True)
                if started == 0 and self.counts["claimed"] == before:
                    break
        finally:
            await self._renewer.stop(RELEASE_TIMEOUT_SECONDS)
            await self.leave()
        return dict(self.counts)

    # -- component --------------------------------------------------------------------------------

    async def start(self) -> None:
        """Recover stale claims, then poll and recover in the background."""
        await self._backfill()
        await recovery.sweep(self.trackly)
        await self.join()
        self._poller.start()
        self._recoverer.start()
        self._renewer.start()
        log.info(
            "executor_started",
            instance=self.trackly.instance,
            workers_per_list=self.cfg.workers_per_list,
            pool_size=self.cfg.pool_size,
            limiter=type(self.limiter).__name__,
        )

    @staticmethod
    def _poll_failed(exc: Exception) -> None:
        log.error("executor_poll_failed", error=str(exc))

    async def _recover(self) -> None:
        await recovery.sweep(self.trackly)

    @staticmethod
    def _recovery_failed(exc: Exception) -> None:
        log.error("recovery_failed", error=str(exc))

    async def _renew(self) -> None:
        await self.worker.renew_claims()

    @staticmethod
    def _renew_failed(exc: Exception) -> None:  # the next renewal tries again; past the TTL, nothing more is sent
        log.error("claim_renewal_failed", error=str(exc) or type(exc).__name__)

    async def stop(self, grace: float) -> None:
        """Stop claiming, finish or release in-flight batches within ``grace`` seconds, release the rest."""
        self.stopping.set()
        started = time.monotonic()
        await asyncio.gather(self._poller.stop(grace), self._recoverer.stop(grace))
        await self.leave()
        await self.tasks.stop(grace - (time.monotonic() - started))
        await self._renewer.stop(RELEASE_TIMEOUT_SECONDS)
        released = 0
        try:  # bounded: with the store down, recovery releases these after the claim TTL instead
            released = await asyncio.wait_for(
                claims.release_tokens(self.trackly.db, dict(self.worker.tokens)), timeout=RELEASE_TIMEOUT_SECONDS
            )
        except Exception as exc:
            log.error("executor_release_failed", error=str(exc) or type(exc).__name__)
        self.worker.tokens.clear()
        log.info("executor_stopped", released_at_stop=released, counts=dict(self.counts))


# -- runner: ``python -m trackly_exec.executor.coordinator [--burst] -c trackly.toml`` ----------------------------


async def _main(args: argparse.Namespace) -> int:
    import signal

    from trackly_exec.config import load_config

    settings = load_config(args.config)
    trackly = await Trackly.open(settings)
    coord = Coordinator(trackly)
    tune_gc()  # as `trackly run` does, once everything is imported and open
    try:
        if args.burst:
            await recovery.sweep(trackly)
            counts = await coord.run_until_idle()
            print(json.dumps(counts, sort_keys=True), flush=True)
            return 0
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await coord.start()
        print("ready", flush=True)
        await stop.wait()
        await coord.stop(settings.daemon.shutdown_grace_seconds)
        print(json.dumps(dict(coord.counts), sort_keys=True), flush=True)
        return 0
    finally:
        await trackly.close()


def main(argv: list[str] | None = None) -> int:
    """Run one executor process: until SIGTERM, or (``--burst``) until nothing is due."""
    from trackly_exec.logs import configure_logging

    parser = argparse.ArgumentParser(prog="python -m trackly_exec.executor.coordinator", description=main.__doc__)
    parser.add_argument("-c", "--config", help="config file (default: $TRACKLY_CONFIG or ./trackly.toml)")
    parser.add_argument("--burst", action="store_true", help="process everything due, print the counts, exit")
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args(argv)
    configure_logging(args.log_level, "auto")
    try:
        import uvloop

        return uvloop.run(_main(args))
    except ImportError:  # pragma: no cover
        return asyncio.run(_main(args))


if __name__ == "__main__":
    sys.exit(main())
