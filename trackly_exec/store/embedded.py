"""The embedded store: nx-27017 (MongoDB wire protocol on SQLite) as a child process.

Each instance gets its own port, pid file and log file, so a daemon, a test run and a second daemon can
run side by side. The child is told to die with its parent (``PR_SET_PDEATHSIG``), so even a SIGKILLed
daemon leaves no orphan server behind.

The daemon component :class:`StoreSupervisor` watches the child: when it dies (crash, OOM kill, SIGKILL) it is
restarted on the same port and data directory with a growing backoff (0.5 s, 1 s, 2 s ... 8 s); the client
reconnects by itself. After ``mongo.embedded_restart_attempts`` failed or short-lived (< 60 s) runs in a row the
daemon exits with status 1 instead, and systemd (``Restart=on-failure``) restarts the whole unit.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from trackly_exec.errors import StoreError
from trackly_exec.logs import get_logger

log = get_logger(__name__)

PR_SET_PDEATHSIG = 1


def _in_use(host: str, port: int) -> bool:
    """Whether something already listens on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _die_with(parent: int) -> Callable[[], None]:
    def die_with_parent() -> None:  # runs in the child between fork and exec
        with contextlib.suppress(Exception):
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the parent died before the line above: no signal will come
            os._exit(1)
        os.setpgrp()  # a Ctrl-C in the terminal goes to the daemon, which stops the store in order

    return die_with_parent


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
        self.lock_file = run_dir / "store.lock"
        self._lock: int | None = None  # the open lock file while this process holds the data directory

    def _take_data_dir(self) -> None:
        """Hold the data directory for this process (an exclusive ``flock`` on ``run/store.lock``, released when it
        stops or dies): two servers on one SQLite store would each take the other's writes for their own (claims
        decided in Python by both), so a second daemon or ``trackly init-db`` on a store in use is refused."""
        if self._lock is not None:
            return
        fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise StoreError(
                f"the embedded store in {self.data_dir} is in use by process {holder} (another trackly daemon or "
                "command on the same daemon.data_dir): stop it first, give this one its own data_dir, or point "
                "mongo.uri of every daemon at one real MongoDB to run several"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._lock = fd

    def _release_data_dir(self) -> None:
        fd, self._lock = self._lock, None
        if fd is not None:
            os.close(fd)  # releases the flock

    @property
    def uri(self) -> str:
        return f"mongodb://{self.host}:{self.port}/?directConnection=true"

    def start(self) -> None:
        self.pid_file.parent.mkdir(parents=True, exist_ok=True)
        store_dir = "memory" if self.in_memory else str(self.data_dir / "store")
        if not self.in_memory:
            self._take_data_dir()
            Path(store_dir).mkdir(parents=True, exist_ok=True)
        self.pid_file.unlink(missing_ok=True)  # left by a killed run on this port; the port is free now
        if _in_use(self.host, self.port):  # another server there would answer for the store (a protocol error later)
            self._release_data_dir()
            raise StoreError(
                f"mongo.embedded_port: port {self.port} on {self.host} is in use by another server; choose a free "
                "port, or 0 for any"
            )
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
            preexec_fn=_die_with(os.getpid()),
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
            self._release_data_dir()
            return
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)
        self._release_data_dir()
        self.pid_file.unlink(missing_ok=True)
        log.info("embedded_store_stopped", port=self.port)

    def kill(self) -> None:
        """SIGKILL the server (store-outage tests)."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    @property
    def alive(self) -> bool:
        """Whether the server process is running (False once it died, was killed or stopped)."""
        return self.proc is not None and self.proc.poll() is None


class StoreSupervisor:
    """Daemon component (embedded store only): restart the nx-27017 child when it dies, or exit non-zero.

    A run that lasted :attr:`STABLE_SECONDS` resets the count of restarts in a row.
    """

    name = "store-supervisor"
    CHECK_SECONDS = 0.25
    STABLE_SECONDS = 60.0
    MAX_BACKOFF = 8.0

    def __init__(self, trackly: Any) -> None:
        self.trackly = trackly
        self.attempts = trackly.settings.mongo.embedded_restart_attempts
        self.timeout = trackly.settings.mongo.connect_timeout_seconds
        self.restarts = 0
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def server(self) -> EmbeddedMongo | None:
        return self.trackly.store.embedded  # type: ignore[no-any-return]

    async def start(self) -> None:
        if self.server is not None:
            self._task = asyncio.create_task(self._watch(), name="store-supervisor")

    async def stop(self, grace: float) -> None:
        self._stopping.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _pause(self, seconds: float) -> bool:
        """Sleep unless the daemon stops first; True when it is stopping."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)
        return self._stopping.is_set()

    async def _watch(self) -> None:
        server = self.server
        assert server is not None
        in_a_row = 0
        started = time.monotonic()
        while not await self._pause(self.CHECK_SECONDS):
            if server.alive:
                if in_a_row and time.monotonic() - started > self.STABLE_SECONDS:
                    in_a_row = 0
                continue
            status = server.proc.returncode if server.proc is not None else None
            in_a_row += 1
            if in_a_row > self.attempts:
                log.critical(
                    "embedded_store_gave_up",
                    status=status,
                    restarts_in_a_row=in_a_row - 1,
                    log_file=str(server.log_file),
                )
                self.trackly.request_exit(1, f"the embedded store died {in_a_row} times in a row")
                return
            backoff = min(self.MAX_BACKOFF, 0.5 * 2 ** (in_a_row - 1))
            log.error(
                "embedded_store_died",
                status=status,
                restart_in_seconds=backoff,
                attempt=in_a_row,
                log_file=str(server.log_file),
            )
            if await self._pause(backoff):
                return
            try:
                await server.astart(self.timeout)
            except StoreError as exc:
                log.error("embedded_store_restart_failed", error=str(exc), attempt=in_a_row)
                continue
            started = time.monotonic()
            self.restarts += 1
            log.warning(
                "embedded_store_restarted",
                port=server.port,
                pid=server.proc.pid if server.proc else None,
                attempt=in_a_row,
            )
