"""The one background-loop helper (:class:`Loop`), the task set (:class:`TaskSet`) and the backoff rule."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

from trackly_exec.app import Loop, TaskSet, backoff

PKG = Path(__file__).resolve().parent.parent / "trackly_exec"
HOUR = 3600.0  # an interval no test waits for: ticks come from start, wake() or a busy tick


class Ticks:
    def __init__(self, results: list[object] | None = None) -> None:
        self.n = 0
        self.results = results or []
        self.seen = asyncio.Event()

    async def __call__(self) -> object:
        self.n += 1
        self.seen.set()
        return self.results.pop(0) if self.results else None

    async def next(self) -> None:
        await self.seen.wait()
        self.seen.clear()


async def test_loop_ticks_at_start_then_on_wake_and_stops_during_its_wait() -> None:
    ticks = Ticks()
    loop = Loop("t", ticks, HOUR)
    loop.start()
    await ticks.next()
    assert ticks.n == 1 and loop.running
    loop.wake()
    await ticks.next()
    assert ticks.n == 2
    await loop.stop(5.0)  # ends the hour-long wait at once (else the test times out)
    assert not loop.running and ticks.n == 2


async def test_a_busy_tick_runs_again_without_waiting() -> None:
    ticks = Ticks([True, True, None])
    loop = Loop("t", ticks, HOUR)
    loop.start()
    while ticks.n < 3:
        await ticks.next()
    await loop.stop(5.0)
    assert ticks.n == 3  # the third tick said "no more work": the loop waits for the hour


async def test_first_wait_delays_the_first_tick() -> None:
    ticks = Ticks()
    loop = Loop("t", ticks, HOUR, first_wait=True)
    loop.start()
    for _ in range(5):
        await asyncio.sleep(0)
    assert ticks.n == 0
    loop.wake()
    await ticks.next()
    await loop.stop(5.0)
    assert ticks.n == 1


async def test_a_failing_tick_is_reported_and_the_loop_goes_on() -> None:
    errors: list[Exception] = []
    calls = Ticks()

    async def tick() -> None:
        await calls()
        if calls.n == 1:
            raise ConnectionError("store down")

    loop = Loop("t", tick, HOUR, on_error=errors.append)
    loop.start()
    await calls.next()
    loop.wake()
    await calls.next()
    await loop.stop(5.0)
    assert [str(e) for e in errors] == ["store down"] and calls.n == 2


async def test_stop_lets_a_running_tick_finish_within_grace() -> None:
    started, release = asyncio.Event(), asyncio.Event()
    finished: list[bool] = []

    async def tick() -> None:
        started.set()
        await release.wait()
        finished.append(True)

    loop = Loop("t", tick, HOUR)
    loop.start()
    await started.wait()
    stopping = asyncio.create_task(loop.stop(30.0))
    await asyncio.sleep(0)
    assert not stopping.done()
    release.set()
    await stopping
    assert finished == [True] and not loop.running


async def test_stop_cancels_a_tick_that_outlives_grace() -> None:
    started = asyncio.Event()
    outcome: list[str] = []

    async def tick() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            outcome.append("cancelled")
            raise

    loop = Loop("t", tick, HOUR)
    loop.start()
    await started.wait()
    await loop.stop(0.0)
    assert outcome == ["cancelled"] and not loop.running


async def test_a_loop_can_start_again_after_stop() -> None:
    ticks = Ticks()
    loop = Loop("t", ticks, HOUR)
    loop.start()
    await ticks.next()
    await loop.stop(1.0)
    loop.start()
    await ticks.next()
    await loop.stop(1.0)
    assert ticks.n == 2


async def test_task_set_keeps_every_task_until_it_ends_and_stop_cancels_the_late_ones() -> None:
    tasks = TaskSet()
    release = asyncio.Event()
    done: list[str] = []

    async def quick() -> None:
        await release.wait()
        done.append("quick")

    async def stuck() -> None:
        await asyncio.Event().wait()

    seen: list[asyncio.Task[None]] = []
    tasks.spawn(quick(), name="quick", on_done=seen.append)
    tasks.spawn(stuck(), name="stuck")
    assert len(tasks) == 2 and {t.get_name() for t in tasks} == {"quick", "stuck"}
    release.set()
    while len(tasks) > 1:
        await asyncio.sleep(0)
    assert done == ["quick"] and len(seen) == 1 and seen[0].get_name() == "quick"
    assert await tasks.stop(0.0) == 1  # the stuck one is cancelled, and awaited
    assert not tasks
    assert await tasks.stop(0.0) == 0


async def test_task_set_wait_returns_when_all_ended_even_if_one_failed() -> None:
    tasks = TaskSet()

    async def boom() -> None:
        raise ValueError("boom")

    async def ok() -> None:
        await asyncio.sleep(0)

    tasks.spawn(boom())
    tasks.spawn(ok())
    await tasks.wait()
    assert not tasks


def _high(lo: float, hi: float) -> float:
    return hi


def _low(lo: float, hi: float) -> float:
    return lo


def test_backoff_doubles_per_attempt_up_to_the_cap() -> None:
    got = [backoff(n, initial=1.0, cap=10.0, rand=_high) for n in range(1, 7)]
    assert got == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert backoff(0, initial=1.0, cap=10.0, rand=_high) == 1.0  # attempt 0 counts as the first
    assert backoff(10_000, initial=1.0, cap=10.0, rand=_high) == 10.0  # no overflow


def test_backoff_jitter_spreads_below_the_cap_and_never_above_it() -> None:
    assert backoff(3, initial=1.0, cap=10.0, rand=_low) == 2.0  # (0.5, 1.0) by default
    assert backoff(9, initial=1.0, cap=10.0, rand=_low) == 5.0  # jittered at the cap too
    assert backoff(9, initial=1.0, cap=10.0, jitter=(1.0, 2.0), rand=_high) == 10.0  # an upward jitter is capped
    assert backoff(1, initial=1.0, cap=10.0, jitter=(1.0, 2.0), rand=_high) == 2.0
    for n in range(1, 40):
        assert 0.0 <= backoff(n, initial=0.5, cap=30.0) <= 30.0


def test_backoff_honours_a_retry_after_hint_even_above_the_cap() -> None:
    assert backoff(1, initial=1.0, cap=10.0, retry_after=3.0, rand=_high) == 3.0
    assert backoff(1, initial=1.0, cap=10.0, retry_after=60.0, rand=_high) == 60.0
    assert backoff(4, initial=1.0, cap=10.0, retry_after=3.0, rand=_high) == 8.0  # the longer of the two
    assert backoff(4, initial=1.0, cap=10.0, retry_after=None, rand=_high) == 8.0


#: Modules that may still create a task directly: each awaits or cancels it itself (not fire-and-forget);
#: embedded.py (the store supervisor) sits below app.py and cannot use its helpers.
_OWN_TASKS = {
    "app.py",
    "evaluation.py",
    "audience.py",
    "daemon.py",
    "dashboard.py",
    "demo.py",
    "base.py",
    "embedded.py",
}
_LOOP = re.compile(r"while not self\._stop(ping)?\.is_set\(\)")


def test_components_run_their_loops_and_tasks_through_the_helpers() -> None:
    offenders = []
    for f in sorted(PKG.rglob("*.py")):
        text = f.read_text()
        if f.name not in _OWN_TASKS and "create_task(" in text:
            offenders.append(f"{f.relative_to(PKG)}: create_task")
        if _LOOP.search(text):
            offenders.append(f"{f.relative_to(PKG)}: a hand-written loop")
    assert not offenders, offenders
