"""`trackly run` as a real process: embedded store, readiness, SIGTERM, no orphans, persistence."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import bson
import pytest

from trackly_exec.errors import StoreError
from trackly_exec.store.embedded import EmbeddedMongo
from trackly_exec.testing.seeding import config_toml

ROOT = Path(__file__).resolve().parent.parent


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(x) for x in out.split()]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split()[2] != "Z"


def _start(tmp_path: Path, extra_env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "TRACKLY_HTTP__PORT": "0",
        "TRACKLY_DAEMON__DATA_DIR": str(tmp_path / "data"),
        "TRACKLY_DAEMON__LOG_FORMAT": "json",
        **(extra_env or {}),
    }
    return subprocess.Popen(
        [sys.executable, "-m", "trackly_exec.cli", "run", "-c", str(ROOT / "trackly.toml")],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _wait_ready(proc: subprocess.Popen[str], timeout: float = 60.0) -> dict[str, object]:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise AssertionError(f"daemon exited with {proc.wait()}")
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("event") == "ready":
            return event
    raise AssertionError("daemon never logged ready")


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 0), (signal.SIGHUP, 129)], ids=["SIGTERM", "SIGHUP"])
def test_run_ready_and_graceful_stop(tmp_path: Path, sig: signal.Signals, code: int) -> None:
    """The daemon starts the embedded store, tells systemd READY=1, and on SIGTERM exits 0 leaving no child. SIGHUP
    (a closed terminal, a habitual ``kill -HUP``) stops as gracefully (STOPPING=1, the store child reaped) instead of
    killing the process at once, and exits 129, not 0: systemd's Restart=on-failure starts it again."""
    notify_path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(notify_path)
    sock.settimeout(5)
    proc = _start(tmp_path, {"NOTIFY_SOCKET": notify_path})
    try:
        ready = _wait_ready(proc)
        assert ready["store"] == "embedded"
        assert b"READY=1" in sock.recv(4096)
        children = _children(proc.pid)
        assert children, "the embedded store runs as a child process"
        proc.send_signal(sig)
        assert proc.wait(timeout=30) == code  # a liveness bound, not a timing assertion
        assert b"STOPPING=1" in sock.recv(4096)
        deadline = time.monotonic() + 10  # a liveness bound: the store child is reaped once its parent exited
        while any(_alive(c) for c in children) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(_alive(c) for c in children)
        assert list((tmp_path / "data" / "store").glob("*.db")), "data persisted under data_dir"
    finally:
        sock.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()


def test_sigkill_leaves_no_orphan_and_two_daemons_side_by_side(tmp_path: Path) -> None:
    """Two daemons run side by side; a SIGKILLed daemon's embedded store dies with it."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = _start(tmp_path / "a")
    b = _start(tmp_path / "b")
    try:
        _wait_ready(a)
        _wait_ready(b)
        child = _children(a.pid)
        a.kill()
        a.wait()
        deadline = time.monotonic() + 15  # a liveness bound: the store ends within its 3 s grace, even on a slow CI
        while any(_alive(c) for c in child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(_alive(c) for c in child)
        b.send_signal(signal.SIGTERM)
        assert b.wait(timeout=30) == 0  # liveness bound
    finally:
        for p in (a, b):
            if p.poll() is None:
                p.kill()
                p.wait()
            assert p.stdout is not None
            p.stdout.close()


def _hello(sock: socket.socket, request_id: int) -> None:
    body = bson.encode({"hello": 1, "$db": "admin"})
    sock.sendall(struct.pack("<iiiiIB", 21 + len(body), request_id, 0, 2013, 0, 0) + body)
    assert sock.recv(65536)


def test_store_stops_on_sigterm_as_its_connections_close(tmp_path: Path) -> None:
    """The race of a SIGKILLed daemon: its 40 connections close as the store is sent SIGTERM. The store ends
    every time (it once hung about one stop in 30, left alive as an orphan)."""
    for attempt in range(10):
        store = EmbeddedMongo(tmp_path / str(attempt), in_memory=True)
        store.start()
        store.wait_ready()
        assert store.proc is not None
        socks = [socket.create_connection((store.host, store.port)) for _ in range(40)]
        for n, sock in enumerate(socks):
            _hello(sock, n)
        for sock in socks:
            sock.close()
        store.proc.send_signal(signal.SIGTERM)
        assert store.proc.wait(timeout=30) == 0  # a liveness bound: a hang fails, a slow stop does not


def test_a_second_server_on_the_same_data_dir_is_refused(tmp_path: Path) -> None:
    """Two servers on one SQLite store would each decide claims in Python on what the other writes: a second
    daemon (or ``trackly init-db``) on a data directory in use is refused, naming the process that holds it; once
    that one stops (or dies: the lock goes with it), the directory is free again. An in-memory store holds none."""
    first = EmbeddedMongo(tmp_path)
    first.start()
    try:
        first.wait_ready()
        second = EmbeddedMongo(tmp_path)
        with pytest.raises(StoreError, match=rf"in use by process {os.getpid()}.*own data_dir"):
            second.start()
        assert second.proc is None  # nothing was started
        memory = EmbeddedMongo(tmp_path, in_memory=True)
        memory.start()
        memory.stop()
    finally:
        first.stop()
    again = EmbeddedMongo(tmp_path)
    again.start()
    try:
        again.wait_ready()
    finally:
        again.stop()
    script = f"from trackly_exec.store.embedded import EmbeddedMongo; EmbeddedMongo({str(tmp_path)!r}).start()"
    holder = subprocess.run([sys.executable, "-c", script + "; import os; os._exit(0)"], timeout=60)  # dies holding it
    assert holder.returncode == 0
    after = EmbeddedMongo(tmp_path)
    after.start()
    after.stop()


# -- the embedded store dying under a running daemon ---------------------------------------------------------------


def _config(tmp_path: Path, fake_url: str = "http://127.0.0.1:9", **sections: dict[str, object]) -> Path:
    """A daemon config on a file-backed embedded store with the Infobip driver pointed at ``fake_url``."""
    body = {
        "daemon": {"data_dir": str(tmp_path / "data"), "log_format": "json", "shutdown_grace_seconds": 1.0},
        "mongo": {"uri": "embedded"},
        "http": {"port": 0},
        "executor": {"poll_interval_seconds": 0.05, "claim_ttl_minutes": 0.2, "recovery_interval_seconds": 1.0},
        "drivers.infobip": {"base_url": fake_url, "api_key": "k", "timeout_seconds": 2.0},
    }
    for name, values in sections.items():
        body[name] = {**body.get(name, {}), **values}
    path = tmp_path / "daemon.toml"
    path.write_text(config_toml(body))
    return path


def _run_daemon(tmp_path: Path, config: Path) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACKLY_")}
    return subprocess.Popen(
        [sys.executable, "-m", "trackly_exec.cli", "run", "-c", str(config)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _wait_event(proc: subprocess.Popen[str], name: str, timeout: float = 60.0) -> dict[str, object]:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise AssertionError(f"daemon exited with {proc.wait()} before logging {name}")
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("event") == name:
            return event  # type: ignore[no-any-return]
    raise AssertionError(f"daemon never logged {name}")


def _drain(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    assert proc.stdout is not None
    proc.stdout.close()


def _store_child(daemon: subprocess.Popen[str]) -> int:
    (child,) = _children(daemon.pid)
    return child


async def test_killed_embedded_store_is_restarted_and_the_daemon_sends_again(tmp_path: Path) -> None:
    """SIGKILL of the embedded store of a running daemon: the daemon restarts it (same port, same data) and sends."""
    from tests.executor_support import seed
    from trackly_exec.store import constants as c
    from trackly_exec.store.client import Store
    from trackly_exec.testing.fakes.infobip import InfobipFake

    fake = await InfobipFake(api_key="k").start()
    proc = _run_daemon(tmp_path, _config(tmp_path, fake.url))
    try:
        ready = _wait_event(proc, "ready")
        port = int(ready["port"])  # type: ignore[call-overload]
        store = await Store.connect(f"mongodb://127.0.0.1:{port}/?directConnection=true", "trackly", timeout=20)
        try:
            first = await seed(store, 20)
            await _wait_for(lambda: store.db[c.SENT].count_documents({}), 20)
            child = _store_child(proc)
            os.kill(child, signal.SIGKILL)
            restarted = _wait_event(proc, "embedded_store_restarted")
            assert restarted["port"] == port and _store_child(proc) != child
            await _wait_for(lambda: store.db[c.SENT].count_documents({}), 20)  # our client reconnects too
            second = await seed(store, 30, first_contact=100, execution_id=2)
            await _wait_for(lambda: store.db[c.SENT].count_documents({}), 50)
            await _wait_for(lambda: _zero(store.db[c.QUEUED]), 1)  # the records are in; the queue entries go next
            assert {e.message_id for e in fake.ledger} == set(first) | set(second)
        finally:
            await store.client.close()
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 10) == 0
    finally:
        _drain(proc)
        await fake.stop()


@pytest.mark.slow  # ~1 min (claim TTL recovery); the CI's chaos campaign kills the store mid-run too
async def test_store_killed_mid_send_neither_loses_nor_doubles(tmp_path: Path) -> None:
    """The file-backed embedded store SIGKILLed while batches are claimed, marked and at the provider: after its
    restart every message has exactly one record, none was accepted twice, and each accepted one is a MessageSent
    or an (ambiguous) NO_RESPONSE (see CONTRIBUTING, "Failover")."""
    from tests.executor_support import assert_one_record_each, seed
    from trackly_exec.store import constants as c
    from trackly_exec.store.client import Store
    from trackly_exec.testing.fakes.control import Behaviour
    from trackly_exec.testing.fakes.infobip import InfobipFake

    fake = await InfobipFake(api_key="k").start()
    fake.set_default(Behaviour("slow", delay=0.3))
    config = _config(
        tmp_path,
        fake.url,
        executor={"claim_batch_size": 20, "workers_per_list": 2},
        **{"drivers.infobip": {"batch_size": 10}},
    )
    proc = _run_daemon(tmp_path, config)
    try:
        port = int(_wait_event(proc, "ready")["port"])  # type: ignore[call-overload]
        store = await Store.connect(f"mongodb://127.0.0.1:{port}/?directConnection=true", "trackly", timeout=20)
        try:
            ids = await seed(store, 300)
            await _wait_for(lambda: store.db[c.SENT].count_documents({}), 40)
            os.kill(_store_child(proc), signal.SIGKILL)
            _wait_event(proc, "embedded_store_restarted")
            await _wait_for(lambda: _recorded(store), 300, timeout=120)
            await _wait_for(lambda: _zero(store.db[c.QUEUED]), 1, timeout=60)
            split = await assert_one_record_each(store, ids)
            counts = fake.accepted_counts()
            assert all(counts[m] <= 1 for m in ids), "a message was accepted twice"
            sent = {d["_id"] async for d in store.db[c.SENT].find({}, {"_id": 1})}
            no_response = {d["_id"] async for d in store.db[c.FAILED].find({"reason": "NO_RESPONSE"}, {"_id": 1})}
            assert all(counts[m] == 1 for m in sent), "a MessageSent the provider never accepted"
            assert {m for m in ids if counts[m]} <= sent | no_response, "accepted but recorded as a plain failure"
            assert split[c.SENT] + len(no_response) == 300
        finally:
            await store.client.close()
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 30) == 0
    finally:
        _drain(proc)
        await fake.stop()


async def _recorded(store: Any) -> int:
    from trackly_exec.store import constants as c

    return int(await store.db[c.SENT].count_documents({}) + await store.db[c.FAILED].count_documents({}))


async def _zero(collection: Any) -> int:
    """1 when ``collection`` is empty (for :func:`_wait_for`)."""
    return int(await collection.count_documents({}) == 0)


def test_embedded_store_dying_for_good_exits_non_zero(tmp_path: Path) -> None:
    """With no restart left the daemon exits 1 (systemd's Restart=on-failure restarts the whole unit), promptly."""
    proc = _run_daemon(tmp_path, _config(tmp_path, mongo={"embedded_restart_attempts": 0}))
    try:
        _wait_event(proc, "ready")
        child = _store_child(proc)
        os.kill(child, signal.SIGKILL)
        assert proc.wait(timeout=30) == 1  # liveness bound
        assert not _alive(child)
    finally:
        _drain(proc)


def _stop_with_store_and_redis_hung(tmp_path: Path) -> float:
    """SIGTERM a daemon whose embedded store and Redis are SIGSTOPped; it must exit 0 within a 30 s liveness wait.
    Returns how long its stop took by its own log."""
    from tests.services import RedisServer

    redis = RedisServer()
    redis.start()
    proc = _run_daemon(tmp_path, _config(tmp_path, redis={"url": redis.url}))
    child = None
    try:
        _wait_event(proc, "ready")
        child = _store_child(proc)
        time.sleep(0.5)  # let the components reach their steady loops
        assert redis.proc is not None
        os.kill(child, signal.SIGSTOP)
        os.kill(redis.proc.pid, signal.SIGSTOP)
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        took = _stop_seconds(proc)
        assert proc.wait(timeout=30) == 0  # a liveness bound: it took 44.8 s (grace 5 s) before stops were bounded
        return took
    finally:
        if child is not None and _alive(child):
            os.kill(child, signal.SIGKILL)
        if redis.proc is not None:
            os.kill(redis.proc.pid, signal.SIGCONT)
        redis.close()
        _drain(proc)


def test_sigterm_with_the_store_and_redis_hung_exits(tmp_path: Path) -> None:
    """SIGTERM while the embedded store and Redis are SIGSTOPped (connections open, no answer): a clean exit, not one
    after the store's server-selection timeouts."""
    _stop_with_store_and_redis_hung(tmp_path)


@pytest.mark.slow
def test_sigterm_with_the_store_and_redis_hung_stops_within_grace(tmp_path: Path) -> None:
    """The same stop takes at most the grace plus the stop margin (by the daemon's own clock)."""
    from trackly_exec.daemon import STOP_MARGIN_SECONDS

    took = _stop_with_store_and_redis_hung(tmp_path)
    assert took <= 1.0 + STOP_MARGIN_SECONDS + 0.5, f"stop took {took:.1f}s"


def test_sigterm_with_the_store_killed_exits(tmp_path: Path) -> None:
    """SIGTERM right after the embedded store was killed (during the restart backoff): a clean exit, store gone."""
    proc = _run_daemon(tmp_path, _config(tmp_path))
    try:
        _wait_event(proc, "ready")
        child = _store_child(proc)
        os.kill(child, signal.SIGKILL)
        _wait_event(proc, "embedded_store_died")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0  # liveness bound
        assert not _alive(child)
    finally:
        _drain(proc)


def _stop_seconds(proc: subprocess.Popen[str]) -> float:
    """Seconds from the daemon's "stopping" log line to its "stopped" line (its own clock: the interpreter's start-up
    and teardown on a loaded machine are not what is measured)."""
    import datetime as dt

    stamps = {}
    for name in ("stopping", "stopped"):
        stamps[name] = dt.datetime.fromisoformat(str(_wait_event(proc, name)["timestamp"]))
    return (stamps["stopped"] - stamps["stopping"]).total_seconds()


async def _wait_for(count: Any, expected: int, timeout: float = 40.0) -> None:
    """Poll the awaitable-returning ``count()`` until it reaches ``expected`` (observable state, no fixed sleep)."""
    deadline = time.monotonic() + timeout
    last = -1
    while time.monotonic() < deadline:
        try:
            last = await count()
        except Exception:  # the store is restarting
            last = -1
        if last >= expected:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"count stayed at {last}, expected {expected}")
