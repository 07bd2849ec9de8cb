"""A MongoDB wire-protocol fault proxy (127.0.0.1 only): "write applied, ack lost" (fault matrix row 7).

It relays OP_MSG frames between a client (the daemon's PyMongo) and the store (nx-27017, or any MongoDB). A rule
(:meth:`MongoFaultProxy.ack_lost`) names commands by a predicate over the command document and its document
sequences (``documents``, ``updates``, ``deletes``); the next ``times`` matching commands are forwarded to the
store, which applies them, and then the store's answer is thrown away and the client's connection reset: the
client sees a network error for a write that happened. ``proxy.lost`` lists what was dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import bson

from .faultproxy import _reset

OP_MSG = 2013

#: (command document, document sequences by identifier) -> does the rule apply?
Match = Callable[[dict[str, Any], dict[str, list[dict[str, Any]]]], bool]


@dataclass
class Rule:
    name: str
    match: Match
    times: int


@dataclass
class _Link:
    """One client connection and its upstream: the request ids whose answers are to be dropped."""

    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter
    drop: dict[int, str] = field(default_factory=dict)


def parse(frame: bytes) -> tuple[int, int, dict[str, Any], dict[str, list[dict[str, Any]]]] | None:
    """``(request id, op code, command, sequences)`` of an OP_MSG frame; ``None`` for any other op."""
    _, request_id, _, op = struct.unpack_from("<iiii", frame)
    if op != OP_MSG:
        return None
    pos, end = 20, len(frame)
    flags = struct.unpack_from("<I", frame, 16)[0]
    if flags & 1:  # checksum present
        end -= 4
    body: dict[str, Any] = {}
    seqs: dict[str, list[dict[str, Any]]] = {}
    while pos < end:
        kind = frame[pos]
        pos += 1
        size = struct.unpack_from("<i", frame, pos)[0]
        if kind == 0:
            body = bson.decode(frame[pos : pos + size])
        else:
            name_end = frame.index(b"\0", pos + 4)
            ident = frame[pos + 4 : name_end].decode()
            seqs[ident] = bson.decode_all(frame[name_end + 1 : pos + size])
        pos += size
    return request_id, op, body, seqs


async def _frame(reader: asyncio.StreamReader) -> bytes | None:
    try:
        head = await reader.readexactly(4)
        (size,) = struct.unpack("<i", head)
        return head + await reader.readexactly(size - 4)
    except (asyncio.IncompleteReadError, ConnectionError):
        return None


class MongoFaultProxy:
    """``await MongoFaultProxy(port).start()``; ``proxy.uri``; ``proxy.ack_lost(name, match)``; ``await stop()``."""

    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1") -> None:
        self.upstream = (upstream_host, upstream_port)
        self.rules: list[Rule] = []
        self.lost: list[str] = []
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    @property
    def uri(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/?directConnection=true"

    def ack_lost(self, name: str, match: Match, times: int = 1) -> None:
        self.rules.append(Rule(name, match, times))

    async def start(self) -> MongoFaultProxy:
        self._server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    def _rule_for(self, frame: bytes) -> str | None:
        parsed = parse(frame)
        if parsed is None:
            return None
        _, _, body, seqs = parsed
        for rule in self.rules:
            if rule.times > 0 and rule.match(body, seqs):
                rule.times -= 1
                return rule.name
        return None

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            _reset(writer)
            return
        link = _Link(writer, up_writer)
        back = asyncio.create_task(self._answers(up_reader, link))
        self._tasks.add(back)
        back.add_done_callback(self._tasks.discard)
        try:
            while (frame := await _frame(reader)) is not None:
                name = self._rule_for(frame)
                if name is not None:
                    link.drop[struct.unpack_from("<i", frame, 4)[0]] = name
                up_writer.write(frame)
                await up_writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            up_writer.close()
            writer.close()

    async def _answers(self, up_reader: asyncio.StreamReader, link: _Link) -> None:
        while (frame := await _frame(up_reader)) is not None:
            responds_to = struct.unpack_from("<i", frame, 8)[0]
            name = link.drop.pop(responds_to, None)
            if name is not None:  # applied by the store; the client never hears it
                self.lost.append(name)
                _reset(link.client)
                link.upstream.close()
                return
            link.client.write(frame)
            with contextlib.suppress(ConnectionError):
                await link.client.drain()
        link.client.close()
