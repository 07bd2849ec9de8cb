"""Real services for the tests: an nx-27017 store and a redis-server of our own, on free ports."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from trackly_exec.store.embedded import EmbeddedMongo, free_port


def wait_port(host: str, port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing answers on {host}:{port}")


class RedisServer:
    """A redis-server child process; ``stop()``/``start()`` on the same port for outage tests."""

    def __init__(self, port: int | None = None) -> None:
        self.exe = shutil.which("redis-server")
        if self.exe is None:
            raise RuntimeError("redis-server is not installed (make test installs it)")
        self.port = port or free_port()
        self.dir = tempfile.mkdtemp(prefix="trackly-redis-")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                self.exe,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self.dir,
                "--daemonize",
                "no",
                "--loglevel",
                "warning",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_port("127.0.0.1", self.port)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class MongoServer:
    """An nx-27017 server in memory, or the URI from ``TRACKLY_TEST_MONGO_URI``."""

    def __init__(self) -> None:
        self.external = os.environ.get("TRACKLY_TEST_MONGO_URI")
        self.dir = Path(tempfile.mkdtemp(prefix="trackly-mongo-"))
        self.server: EmbeddedMongo | None = None

    @property
    def uri(self) -> str:
        if self.external:
            return self.external
        assert self.server is not None
        return self.server.uri

    def start(self) -> None:
        if not self.external:
            self.server = EmbeddedMongo(self.dir, in_memory=True)
            self.server.start()
            self.server.wait_ready()

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
