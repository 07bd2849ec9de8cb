"""`trackly run` as a real process: embedded store, readiness, SIGTERM, no orphans, persistence."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

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


def _wait_ready(proc: subprocess.Popen[str], timeout: float = 20.0) -> dict[str, object]:
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


def test_run_ready_and_sigterm(tmp_path: Path) -> None:
    """The daemon starts the embedded store, tells systemd READY=1, and on SIGTERM exits 0 leaving no child."""
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
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0  # a liveness bound, not a timing assertion
        assert b"STOPPING=1" in sock.recv(4096)
        time.sleep(0.2)
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
        deadline = time.monotonic() + 5
        while any(_alive(c) for c in child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(_alive(c) for c in child)
        b.send_signal(signal.SIGTERM)
        assert b.wait(timeout=5) == 0
    finally:
        for p in (a, b):
            if p.poll() is None:
                p.kill()
                p.wait()
            assert p.stdout is not None
            p.stdout.close()
