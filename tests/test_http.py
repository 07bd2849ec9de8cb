"""The send path's own HTTP/1.1 client (drivers/http.py): answers parsed right, connections kept alive, and every
failure mapped like the rest of the plumbing (nothing written -> transient, written -> unknown outcome)."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
from collections.abc import AsyncIterator, Callable

import pytest

from trackly_exec.drivers.contract import DriverSettings
from trackly_exec.drivers.http import HttpClient, MalformedAnswer, parse_answer
from trackly_exec.errors import TransientSendError, UnknownOutcomeError
from trackly_exec.testing.contract import free_port

Answer = Callable[[bytes], bytes | None]  # request bytes -> raw answer (None: close without answering)


class Server:
    """A raw TCP server answering each complete request with scripted bytes; counts connections and requests."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.connections = 0
        self.requests: list[bytes] = []
        self.port = 0
        self.close_after = False
        self._server: asyncio.Server | None = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                request = head + await reader.readexactly(length)
                self.requests.append(request)
                raw = self.answer(request)
                if raw is None:
                    break
                writer.write(raw)
                await writer.drain()
                if self.close_after:
                    break
                low = raw.lower()
                if b"connection: close" in low or (b"content-length" not in low and b"chunked" not in low):
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def __aenter__(self) -> Server:
        self.port = free_port()
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()


@pytest.fixture
async def client_for() -> AsyncIterator[Callable[[int], HttpClient]]:
    opened: list[HttpClient] = []

    def make(port: int) -> HttpClient:
        client = HttpClient(
            DriverSettings(base_url=f"http://127.0.0.1:{port}/base", timeout_seconds=2.0, send_client="keepalive"),
            headers={"X-Key": "k"},
        )
        opened.append(client)
        return client

    yield make
    for client in opened:
        await client.close()


def ok(body: bytes = b'{"a":1}', extra: str = "") -> bytes:
    return f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n{extra}\r\n".encode() + body


async def test_request_bytes_and_keep_alive(client_for: Callable[[int], HttpClient]) -> None:
    async with Server(lambda _: ok()) as srv:
        client = client_for(srv.port)
        await client.open()
        for _ in range(3):
            reply = await client.post("/send?x=1", json_body={"to": "+1 ü"})
            assert reply.status == 200 and reply.json() == {"a": 1}
        assert srv.connections == 1 and len(srv.requests) == 3
        head, _, body = srv.requests[0].partition(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        assert lines[0] == "POST /base/send?x=1 HTTP/1.1"
        assert {"X-Key: k", "Content-Type: application/json", f"Host: 127.0.0.1:{srv.port}"} <= set(lines)
        assert body == '{"to":"+1 ü"}'.encode()


async def test_chunked_interim_gzip_and_headers(client_for: Callable[[int], HttpClient]) -> None:
    packed = gzip.compress(b'{"sid":"SM1"}')
    chunked = (
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 429 Too Many Requests\r\nTransfer-Encoding: chunked\r\nretry-after: 3\r\nContent-Encoding: gzip\r\n\r\n"
        + f"{len(packed[:5]):x}\r\n".encode()
        + packed[:5]
        + b"\r\n"
        + f"{len(packed[5:]):x};ext=1\r\n".encode()
        + packed[5:]
        + b"\r\n0\r\nX-Trailer: t\r\n\r\n"
    )
    async with Server(lambda _: chunked) as srv:
        client = client_for(srv.port)
        await client.open()
        reply = await client.post("/x", data=b"a=1", headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert reply.status == 429 and reply.retry_after == 3.0 and reply.json() == {"sid": "SM1"}
        await client.post("/x", data={"b": "2 3"})
        assert srv.connections == 1
        assert srv.requests[1].endswith(b"\r\n\r\nb=2+3")


async def test_body_to_the_end_of_the_connection(client_for: Callable[[int], HttpClient]) -> None:
    async with Server(lambda _: b"HTTP/1.0 200 OK\r\n\r\nplain") as srv:
        client = client_for(srv.port)
        await client.open()
        assert (await client.post("/x", data=b"")).body == b"plain"
        assert (await client.post("/x", data=b"")).body == b"plain"
        assert srv.connections == 2


@pytest.mark.parametrize(
    "raw",
    [
        b"garbage\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
        None,
        b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
    ],
    ids=["bad-status", "truncated", "closed", "bad-header"],
)
async def test_broken_answer_after_writing_is_unknown(
    client_for: Callable[[int], HttpClient], raw: bytes | None
) -> None:
    def answer(_: bytes) -> bytes | None:
        return raw

    async with Server(answer) as srv:
        client = client_for(srv.port)
        await client.open()
        with pytest.raises(UnknownOutcomeError):
            await client.post("/x", data=b"")
        assert len(srv.requests) == 1


@contextlib.asynccontextmanager
async def hanging_keepalive_client() -> AsyncIterator[HttpClient]:
    """A keep-alive client (0.3 s timeout), opened, on a server that reads each request and never answers."""

    async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1000)
        await asyncio.sleep(5)
        writer.close()

    port = free_port()
    server = await asyncio.start_server(hang, "127.0.0.1", port)
    try:
        client = HttpClient(
            DriverSettings(base_url=f"http://127.0.0.1:{port}", timeout_seconds=0.3, send_client="keepalive")
        )
        await client.open()
        yield client
        await client.close()
    finally:
        server.close()


async def test_hang_after_writing_is_unknown(client_for: Callable[[int], HttpClient]) -> None:
    async with hanging_keepalive_client() as client:
        with pytest.raises(UnknownOutcomeError):
            await client.post("/x", data=b"")


async def test_deadlines_swept_while_requests_are_in_flight(client_for: Callable[[int], HttpClient]) -> None:
    """Requests that get no answer each fail as unknown outcomes (the pool's sweep enforces their deadline); one
    answered leaves nothing watched, and the sweep stops once nothing is in flight."""
    async with hanging_keepalive_client() as client:
        outcomes = await asyncio.gather(*(client.post("/x", data=b"") for _ in range(3)), return_exceptions=True)
        assert all(isinstance(o, UnknownOutcomeError) for o in outcomes), outcomes
        pool = client._pool
        assert pool is not None and not pool.busy
        await asyncio.sleep(pool.tick * 3)
        assert pool.sweeping is None
    async with Server(lambda _: ok()) as srv:
        client = client_for(srv.port)
        await client.open()
        await client.post("/x", data=b"")
        assert client._pool is not None and not client._pool.busy


async def test_refused_is_transient_and_stale_idle_connections_are_not_used(
    client_for: Callable[[int], HttpClient],
) -> None:
    client = client_for(free_port())
    await client.open()
    with pytest.raises(TransientSendError) as info:
        await client.post("/x", data=b"")
    assert info.value.code == "connect"

    # the server closes each connection after answering, though the answer says keep-alive
    async with Server(lambda _: ok()) as srv:
        srv.close_after = True
        client = client_for(srv.port)
        await client.open()
        await client.post("/x", data=b"")
        await asyncio.sleep(0.2)  # the close reaches the idle connection
        await client.post("/x", data=b"")
        assert srv.connections == 2 and len(srv.requests) == 2


def test_parse_answer_rejects_and_waits() -> None:
    assert parse_answer(bytearray(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{"), eof=False) is None
    with pytest.raises(MalformedAnswer):
        parse_answer(bytearray(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}"), eof=False)
    answer = parse_answer(bytearray(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n"), eof=False)
    assert answer is not None and answer.status == 204 and answer.body == b"" and not answer.keep_alive
