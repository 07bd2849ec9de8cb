"""A small asyncio TCP fault proxy for HTTP/1.1 between a driver and a provider fake (127.0.0.1 only).

Each request from the client is read whole (headers + ``Content-Length`` body) and then, by the proxy's current
fault plan, either forwarded to the upstream on a fresh connection (``Connection: close``) or not:

==================  ======================================================  =============================
mode                what the proxy does                                     the provider (ledger)
==================  ======================================================  =============================
``pass``            forwards, relays the answer                             accepted
``429``             answers 429 with ``Retry-After`` without forwarding     nothing
``5xx_before``      answers 500 without forwarding                          nothing
``5xx_after``       forwards, drops the answer, answers 500                 accepted (a retry duplicates)
``hang_after``      forwards, drops the answer, never answers               accepted
``reset_after``     forwards, drops the answer, resets the connection       accepted
``reset_before``    resets the connection once the request is read          nothing
==================  ======================================================  =============================

``proxy.set(mode)`` makes every request ``mode``; ``proxy.set({"5xx_after": 0.2})`` draws per request (the rest
pass), from the proxy's own seeded random generator. ``proxy.stats`` counts requests per mode.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
from collections import Counter

MODES = ("pass", "429", "5xx_before", "5xx_after", "hang_after", "reset_after", "reset_before")
HANG_LIMIT = 120.0


def _answer(status: int, reason: str, body: bytes, extra: str = "") -> bytes:
    return (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        f"{extra}Connection: close\r\n\r\n"
    ).encode() + body


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST (SO_LINGER 0) instead of FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class FaultProxy:
    """``await FaultProxy(upstream_port, seed=1).start()``; ``proxy.url``; ``proxy.set(...)``; ``await proxy.stop()``."""

    def __init__(
        self, upstream_port: int, *, upstream_host: str = "127.0.0.1", seed: int = 0, retry_after: float = 1.0
    ) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.rng = random.Random(seed)
        self.retry_after = retry_after
        self.plan: dict[str, float] = {}
        self.stats: Counter[str] = Counter()
        self.port = 0
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def set(self, plan: str | dict[str, float]) -> None:
        """Every request ``plan`` (a mode), or ``{mode: probability}`` drawn per request."""
        plan = {plan: 1.0} if isinstance(plan, str) else dict(plan)
        unknown = set(plan) - set(MODES)
        if unknown:
            raise ValueError(f"unknown fault modes {sorted(unknown)}")
        self.plan = plan

    def _draw(self) -> str:
        x = self.rng.random()
        for mode, p in self.plan.items():
            if x < p:
                return mode
            x -= p
        return "pass"

    async def start(self, port: int = 0) -> FaultProxy:
        self._server = await asyncio.start_server(self._client, "127.0.0.1", port)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for w in list(self._conns):
                w.transport.abort()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._conns.add(writer)
        try:
            while True:
                request = await self._read_request(reader)
                if request is None:
                    return
                mode = self._draw()
                self.stats[mode] += 1
                if mode == "429":
                    writer.write(
                        _answer(
                            429,
                            "Too Many Requests",
                            b'{"requestError":{"serviceException":'
                            b'{"messageId":"TOO_MANY_REQUESTS","text":"Too many requests"}}}',
                            f"Retry-After: {self.retry_after:g}\r\n",
                        )
                    )
                elif mode == "5xx_before":
                    writer.write(_answer(500, "Internal Server Error", b"{}"))
                elif mode == "reset_before":
                    _reset(writer)
                    return
                else:
                    answer = await self._forward(request)
                    if answer is None:  # the provider is down: it never saw the request
                        writer.write(_answer(503, "Service Unavailable", b"{}"))
                    elif mode == "pass":
                        writer.write(answer)
                    elif mode == "5xx_after":
                        writer.write(_answer(500, "Internal Server Error", b"{}"))
                    elif mode == "reset_after":
                        _reset(writer)
                        return
                    elif mode == "hang_after":  # until the client gives up (its timeout) or the limit
                        with contextlib.suppress(Exception):
                            await asyncio.wait_for(reader.read(), HANG_LIMIT)
                        _reset(writer)
                        return
                await writer.drain()
                return  # every answer says Connection: close
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            self._conns.discard(writer)
            writer.close()

    @staticmethod
    async def _read_request(reader: asyncio.StreamReader) -> bytes | None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            return None
        length = 0
        lines = head.decode("latin-1").split("\r\n")
        kept = [lines[0]]
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value.strip())
            if name.strip().lower() in ("connection", "keep-alive") or not line:
                continue
            kept.append(line)
        body = await reader.readexactly(length) if length else b""
        return ("\r\n".join([*kept, "Connection: close"]) + "\r\n\r\n").encode("latin-1") + body

    async def _forward(self, request: bytes) -> bytes | None:
        """Send ``request`` upstream and return its whole answer (None when the upstream is unreachable)."""
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            return None
        try:
            up_writer.write(request)
            await up_writer.drain()
            answer = await up_reader.read()
            return answer or None
        except OSError:
            return None
        finally:
            up_writer.close()
