"""The embedded store: nx-27017 (MongoDB wire protocol on SQLite) as a child process.

Each instance gets its own port, pid file and log file, so a daemon, a test run and a second daemon can
run side by side. The child is told to die with its parent (``PR_SET_PDEATHSIG``), so even a SIGKILLed
daemon leaves no orphan server behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from trackly_exec.errors import StoreError
from trackly_exec.logs import get_logger

log = get_logger(__name__)

PR_SET_PDEATHSIG = 1


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    os.setpgrp()  # a Ctrl-C in the terminal goes to the daemon, which stops the store in order


def _server_command() -> list[str]:
    # nx-27017 through trackly_exec.store.nxserver: a plain `nx-27017` stores a top-level $set datetime as a string
    # and a $set boolean as 1/0 (see that module).
    return [sys.executable, "-m", "trackly_exec.store.nxserver"]


class EmbeddedMongo:
    """Start, wait for, and stop one nx-27017 server."""

    def __init__(self, data_dir: Path, *, port: int = 0, in_memory: bool = False, host: str = "127.0.0.1") -> None:
        self.data_dir = Path(data_dir).resolve()
        self.host = host
        self.port = port or free_port(host)
        self.in_memory = in_memory
        self.proc: subprocess.Popen[bytes] | None = None
        run_dir = self.data_dir / "run"
        self.pid_file = run_dir / f"nx-27017-{self.port}.pid"
        self.log_file = run_dir / f"nx-27017-{self.port}.log"

    @property
    def uri(self) -> str:
        return f"mongodb://{self.host}:{self.port}/?directConnection=true"

    def start(self) -> None:
        self.pid_file.parent.mkdir(parents=True, exist_ok=True)
        store_dir = "memory" if self.in_memory else str(self.data_dir / "store")
        if not self.in_memory:
            Path(store_dir).mkdir(parents=True, exist_ok=True)
        self.pid_file.unlink(missing_ok=True)  # left by a killed run on this port; the port is free now
        cmd = [
            *_server_command(),
            "--data-dir",
            store_dir,
            "--host",
            self.host,
            "-p",
            str(self.port),
            "--pid-file",
            str(self.pid_file),
            "--log-file",
            str(self.log_file),
        ]
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,
            close_fds=True,
        )
        log.info(
            "embedded_store_starting", port=self.port, data=store_dir, pid=self.proc.pid, log_file=str(self.log_file)
        )

    def wait_ready(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise StoreError(f"embedded store exited with status {self.proc.returncode}; see {self.log_file}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise StoreError(
            f"embedded store did not answer on port {self.port} within {timeout:.0f}s; see {self.log_file}"
        )

    async def astart(self, timeout: float = 15.0) -> None:
        self.start()
        await asyncio.to_thread(self.wait_ready, timeout)

    def stop(self, timeout: float = 5.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)
        self.pid_file.unlink(missing_ok=True)
        log.info("embedded_store_stopped", port=self.port)

    def kill(self) -> None:
        """SIGKILL the server (store-outage tests)."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None
