"""The executor as a running component: start, stop within the grace period, SIGTERM exits 0."""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from pathlib import Path
from typing import Any

from trackly_exec.config import Settings
from trackly_exec.store import constants as c
from trackly_exec.store.client import Store
from trackly_exec.testing.fakes.infobip import InfobipFake

from .executor_support import assert_one_record_each, executor, ids_in, runner_cmd, seed, write_config


async def wait_for(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.02)


async def test_stop_releases_what_was_not_sent(settings: Settings, store: Store, fakes: dict[str, Any]) -> None:
    """stop(grace) ends rate-limit waits at once, releases unsent claims and leaves one record per message."""
    ids = await seed(store, 200, rate=1200)  # 20/s: most of it is still queued when we stop
    coord = await executor(settings, store, fakes)
    await coord.start()
    await wait_for(lambda: fakes["infobip"].summary()["accepted"] >= 20)
    await coord.stop(5.0)
    await coord.trackly.close(close_store=False)
    assert not coord.tasks
    queued = await store.db[c.QUEUED].find({}).to_list(None)
    assert queued and all(d["claimed_by"] is None and d.get("sending_at") is None for d in queued)
    split = await assert_one_record_each(store, ids)
    assert split[c.SENT] == fakes["infobip"].summary()["accepted"] and split[c.QUEUED] == len(queued)


async def test_sigterm_exits_zero_and_releases(
    settings: Settings, store: Store, redis_client: Any, tmp_path: Path
) -> None:
    """An executor process stops on SIGTERM with exit status 0 and no claim left behind."""
    fake = await InfobipFake().start()
    try:
        ids = await seed(store, 300, rate=1200)
        config = write_config(tmp_path / "exec.toml", settings, {"infobip": fake.driver_settings()})
        proc = await asyncio.create_subprocess_exec(
            *runner_cmd(config), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        assert proc.stdout is not None
        assert (await asyncio.wait_for(proc.stdout.readline(), 30)).strip() == b"ready"
        await wait_for(lambda: fake.summary()["accepted"] >= 20)
        proc.send_signal(signal.SIGTERM)
        out, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 0, err.decode()[-2000:]
        assert b'"sent"' in out
        assert not await ids_in(store, c.QUEUED, {"claimed_by": {"$gt": ""}})
        split = await assert_one_record_each(store, ids)
        assert split[c.SENT] == fake.summary()["accepted"]
    finally:
        await fake.stop()


def test_runner_help() -> None:
    """The executor runner documents its options."""
    import subprocess

    r = subprocess.run(
        [sys.executable, "-m", "trackly_exec.executor.coordinator", "--help"], capture_output=True, text=True
    )
    assert r.returncode == 0 and "--burst" in r.stdout


async def test_stop_during_retry_backoff_requeues(settings: Settings, store: Store, fakes: dict[str, Any]) -> None:
    """Stopping while a transient failure waits for its retry gives the messages back to the queue, unsent."""
    from trackly_exec.testing.fakes.control import Behaviour

    ids = await seed(store, 4, price=1.0, balance=10.0)
    fakes["infobip"].set_default(Behaviour("429"))
    coord = await executor(settings, store, fakes, retry_initial_backoff_seconds=5.0)
    await coord.start()
    await wait_for(lambda: coord.counts["provider_transient"] >= 4)  # the 429 is in: the batch waits for its retry
    await coord.stop(5.0)
    await coord.trackly.close(close_store=False)
    assert coord.counts["requeued"] == 4 and fakes["infobip"].summary()["accepted"] == 0
    docs = await store.db[c.QUEUED].find({"_id": {"$in": ids}}).to_list(None)
    assert len(docs) == 4 and all(d["claimed_by"] is None and d["sending_at"] is None for d in docs)
    assert (await store.db[c.ACCOUNTS].find_one({"_id": 1}))["balance"] == 10.0


async def test_lists_do_not_starve_each_other(settings: Settings, store: Store, fakes: dict[str, Any]) -> None:
    """A small list queued behind a big one is sent alongside it, not after it."""
    big = await seed(store, 1000, list_id=1)
    small = await seed(store, 50, list_id=2, first_contact=5000, execution_id=2)
    coord = await executor(settings, store, fakes, claim_batch_size=50, workers_per_list=1, pool_size=2)
    await coord.run_until_idle()
    await coord.trackly.close(close_store=False)
    order = [e.message_id for e in fakes["infobip"].ledger]
    assert set(order) == set(big + small)
    assert max(order.index(m) for m in small) < len(order) // 2
