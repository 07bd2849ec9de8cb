"""The driver setting ``send_client``: ``auto`` by default (the own keep-alive client, unless an HTTP proxy in the
environment applies to the provider or its URL carries credentials: then aiohttp, which honours the proxy), either
client on request, a bad value a configuration error naming the key."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from yarl import URL

from trackly_exec.cli.configcheck import driver_problems
from trackly_exec.config import load_config
from trackly_exec.drivers.contract import DriverSettings
from trackly_exec.drivers.http import HttpClient, choose_send_client
from trackly_exec.drivers.pool import DriverPool
from trackly_exec.errors import ConfigError, TransientSendError

ANSWER = b'HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{"sid":"x"}'
PROXY_ENV = ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "NO_PROXY", "no_proxy")


class Proxy:
    """A raw HTTP proxy stand-in: records each request's head and answers it itself."""

    def __init__(self) -> None:
        self.heads: list[bytes] = []
        self.port = 0
        self._server: asyncio.Server | None = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                (
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                ),
                0,
            )
            await reader.readexactly(length)
            self.heads.append(head)
            writer.write(ANSWER)
            await writer.drain()
        finally:
            writer.close()

    async def __aenter__(self) -> Proxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()


@pytest.fixture
async def proxy(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Proxy]:
    for name in PROXY_ENV:
        monkeypatch.delenv(name, raising=False)
    async with Proxy() as p:
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{p.port}")
        yield p


def test_default_is_auto() -> None:
    """A driver without ``send_client`` chooses its client when it starts (``auto``); either can be named."""
    assert DriverSettings().send_client == "auto"
    assert DriverSettings(send_client="keepalive").send_client == "keepalive"
    assert DriverSettings(send_client="aiohttp").send_client == "aiohttp"


@pytest.mark.parametrize(
    ("setting", "url", "proxied", "chosen"),
    [
        ("auto", "https://api.twilio.com", False, "keepalive"),
        ("auto", "http://127.0.0.1:9000/base", False, "keepalive"),
        ("auto", "https://api.twilio.com", True, "aiohttp"),  # a proxy applies: only aiohttp speaks to it
        ("auto", "https://user:pw@api.twilio.com", False, "aiohttp"),  # aiohttp sends them as Basic auth
        ("auto", "https://user@api.twilio.com", False, "aiohttp"),
        ("auto", "unix:///run/provider.sock", False, "aiohttp"),  # not http(s)://host
        ("aiohttp", "https://api.twilio.com", False, "aiohttp"),
        ("keepalive", "https://api.twilio.com", True, "keepalive"),  # named: the operator's choice stands
    ],
)
def test_choose_send_client(setting: str, url: str, proxied: bool, chosen: str) -> None:
    proxy = URL("http://proxy.example:3128") if proxied else None
    assert choose_send_client(setting, URL(url), proxy) == chosen


# An address nothing listens on (TEST-NET-1): only a proxy can answer for it.
TARGET = "http://192.0.2.1:81"


async def test_default_client_honours_the_proxy_environment(proxy: Proxy) -> None:
    """With HTTP_PROXY set, the default (``auto``) takes aiohttp and sends through the proxy (absolute-form request
    target)."""
    client = HttpClient(DriverSettings(base_url=TARGET + "/api", timeout_seconds=5.0), headers={"X-Key": "k"})
    await client.open()
    try:
        assert client.send_client == "aiohttp"
        reply = await client.post("/send", data=b"a=1", headers={"Content-Type": "application/x-www-form-urlencoded"})
    finally:
        await client.close()
    assert reply.status == 201 and reply.json() == {"sid": "x"}
    [head] = proxy.heads
    assert head.startswith(f"POST {TARGET}/api/send HTTP/1.1\r\n".encode()), head
    assert b"\r\nX-Key: k\r\n" in head and b"Content-Type: application/x-www-form-urlencoded" in head


async def test_no_proxy_is_honoured(proxy: Proxy, monkeypatch: pytest.MonkeyPatch) -> None:
    """NO_PROXY naming the provider's host bypasses the proxy (nothing listens there: a transient failure)."""
    monkeypatch.setenv("NO_PROXY", "192.0.2.1")
    client = HttpClient(DriverSettings(base_url=TARGET, timeout_seconds=0.5, connect_timeout_seconds=0.3))
    await client.open()
    try:
        assert client.send_client == "keepalive"  # no proxy applies to this host: the default takes keep-alive
        with pytest.raises(TransientSendError):
            await client.post("/send", data=b"a=1", headers={"Content-Type": "application/x-www-form-urlencoded"})
    finally:
        await client.close()
    assert proxy.heads == []


async def test_default_without_proxy_sends_on_keepalive(monkeypatch: pytest.MonkeyPatch) -> None:
    """No proxy in the environment: the default (``auto``) sends on the keep-alive client, straight to the provider
    (origin-form request target), and keeps the connection for the next request."""
    for name in PROXY_ENV:
        monkeypatch.delenv(name, raising=False)
    async with Proxy() as direct:  # here it stands for the provider itself
        base = f"http://127.0.0.1:{direct.port}/api"
        client = HttpClient(DriverSettings(base_url=base, timeout_seconds=5.0), headers={"X-Key": "k"})
        await client.open()
        try:
            assert client.send_client == "keepalive"
            reply = await client.post("/send", data={"a": "1"})
        finally:
            await client.close()
    assert reply.status == 201 and reply.json() == {"sid": "x"}
    [head] = direct.heads
    assert head.startswith(b"POST /api/send HTTP/1.1\r\n") and b"\r\nX-Key: k\r\n" in head, head


async def test_default_with_credentials_in_url_sends_on_aiohttp(monkeypatch: pytest.MonkeyPatch) -> None:
    """``user:password@`` in ``base_url``: the default takes aiohttp, which sends them as Basic auth (the keep-alive
    client would drop them)."""
    for name in PROXY_ENV:
        monkeypatch.delenv(name, raising=False)
    async with Proxy() as direct:
        client = HttpClient(DriverSettings(base_url=f"http://user:pw@127.0.0.1:{direct.port}", timeout_seconds=5.0))
        await client.open()
        try:
            assert client.send_client == "aiohttp"
            reply = await client.post("/send", data=b"a=1")
        finally:
            await client.close()
    assert reply.status == 201
    [head] = direct.heads
    assert b"\r\nAuthorization: Basic dXNlcjpwdw==\r\n" in head, head


async def test_keepalive_client_ignores_the_proxy(proxy: Proxy) -> None:
    """The opt-in keep-alive client connects directly (its documented trade-off): the proxy sees nothing."""
    settings = DriverSettings(
        base_url=TARGET, timeout_seconds=0.5, connect_timeout_seconds=0.3, send_client="keepalive"
    )
    client = HttpClient(settings)
    await client.open()
    try:
        with pytest.raises(TransientSendError):
            await client.post("/send", data=b"a=1", headers={"Content-Type": "application/x-www-form-urlencoded"})
    finally:
        await client.close()
    assert proxy.heads == []


def test_bad_send_client_is_a_config_error(tmp_path: Path) -> None:
    """An unknown ``send_client`` in ``[drivers.twilio]`` is a configuration problem naming the key and the
    choices (``trackly check-config``; the executor refuses to start on it)."""
    f = tmp_path / "bad.toml"
    f.write_text(
        '[drivers.twilio]\nbase_url = "https://api.twilio.com"\naccount_sid = "AC1"\nauth_token = "t"\n'
        'send_client = "curl"\n'
    )
    problems, _ = driver_problems(load_config(f))
    [(key, msg)] = problems
    assert key == "drivers.twilio.send_client" and "'aiohttp'" in msg and "'keepalive'" in msg, problems
    with pytest.raises(ConfigError) as e:
        DriverPool(load_config(f)).validate()
    assert e.value.key == "drivers.twilio.send_client"


def test_send_client_set_per_driver(tmp_path: Path) -> None:
    """``send_client = "keepalive"`` in ``[drivers.twilio]`` loads."""
    f = tmp_path / "ok.toml"
    f.write_text(
        '[drivers.twilio]\nbase_url = "https://api.twilio.com"\naccount_sid = "AC1"\nauth_token = "t"\n'
        'send_client = "keepalive"\n'
    )
    assert load_config(f).drivers["twilio"]["send_client"] == "keepalive"


def test_keepalive_refuses_credentials_in_base_url(tmp_path: Path) -> None:
    """The keep-alive client would silently drop ``user:password@`` of ``base_url`` (aiohttp sends it as Basic
    auth): that combination is a configuration problem on ``send_client``, and the problem does not quote the
    secret."""
    f = tmp_path / "creds.toml"
    f.write_text(
        '[drivers.cm]\nbase_url = "https://user:hunter2@gw.cmtelecom.com"\n'
        'product_token = "00000000-0000-0000-0000-000000000001"\nsend_client = "keepalive"\n'
    )
    problems, _ = driver_problems(load_config(f))
    [(key, msg)] = problems
    assert key == "drivers.cm.send_client" and "credentials" in msg and "hunter2" not in msg, problems
    assert DriverSettings(base_url="https://user:hunter2@api.twilio.com").send_client == "auto"  # aiohttp, when open


@pytest.mark.parametrize(
    ("driver", "creds"),
    [("infobip", 'api_key = "k"'), ("twilio", 'account_sid = "AC1"\nauth_token = "t"')],
)
def test_credentials_in_base_url_beside_the_drivers_own_authorization(tmp_path: Path, driver: str, creds: str) -> None:
    """Infobip and Twilio authenticate with an Authorization header of their own: ``user:password@`` in their
    ``base_url`` could never go with it (aiohttp refused every send, recorded NO_RESPONSE): a configuration error
    naming ``base_url``, without the password. CM (a header of its own name) may carry them, and the printed config
    masks the password."""
    f = tmp_path / "creds.toml"
    f.write_text(f'[drivers.{driver}]\nbase_url = "https://user:hunter2@api.example.net"\n{creds}\n')
    problems, _ = driver_problems(load_config(f))
    [(key, msg)] = problems
    assert key == f"drivers.{driver}.base_url" and "Authorization" in msg and "hunter2" not in msg, problems
    f.write_text(
        '[drivers.cm]\nbase_url = "https://user:hunter2@gw.example.net"\n'
        'product_token = "00000000-0000-0000-0000-000000000001"\n'
    )
    settings = load_config(f)
    assert driver_problems(settings)[0] == []
    assert settings.redacted()["drivers"]["cm"]["base_url"] == "https://user:**********@gw.example.net"


async def test_a_request_aiohttp_refuses_to_build_is_not_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    """An error aiohttp raises before it writes the request (here: an Authorization header beside credentials in
    the URL) is a failure before the send (retried, held), never an unknown outcome (NO_RESPONSE)."""
    for name in PROXY_ENV:
        monkeypatch.delenv(name, raising=False)
    async with Proxy() as direct:
        client = HttpClient(
            DriverSettings(base_url=f"http://user:pw@127.0.0.1:{direct.port}", timeout_seconds=5.0),
            headers={"Authorization": "App k"},
        )
        await client.open()
        try:
            with pytest.raises(TransientSendError, match="not sent"):
                await client.post("/send", data=b"a=1")
        finally:
            await client.close()
    assert direct.heads == []
