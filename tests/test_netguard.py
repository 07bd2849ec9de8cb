"""SSRF: a customer webhook URL never reaches an internal address, at set time or at delivery time."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from trackly_exec import api
from trackly_exec.app import Trackly
from trackly_exec.config import Settings
from trackly_exec.store import constants as c
from trackly_exec.store.client import Store
from trackly_exec.tracking.outbox import Outbox

from .doors_support import Receiver
from .tracking_support import IB_STATUS, infobip_body, infobip_report, seed_account, seed_sent, start_daemon

H = {"Authorization": "Bearer test-token"}
SECRET = "whsec_test_0123456789"

INTERNAL = [
    "http://127.0.0.1/hook",
    "http://localhost:6379/",
    "http://[::1]/",
    "http://169.254.169.254/latest/meta-data/",
    "http://10.0.0.1/",
    "http://0.0.0.0/",
    "http://2130706433/",
    "http://127.1/",
    "http://user:pw@example.com/",
    "http://example.com@127.0.0.1/",
    "http://example.com#@127.0.0.1/",
    "http://[::ffff:127.0.0.1]/",
    "http://0x7f.0.0.1/",
    "http://0177.0.0.1/",
    "http://192.168.1.1/",
    "http://172.16.0.1/",
    "http://224.0.0.1/",
    "http://100.64.0.1/",
    "http://[fd00:ec2::254]/",
    "http://LOCALHOST./",
    "http://app.localhost/",
    "http://[fe80::1%25eth0]/",
    "http://255.255.255.255/",
    "http://240.0.0.1/",
    "http://example.com\\@127.0.0.1/",
    "http://[::]/",
    "http://[2002:7f00:1::]/",
    "http://[fec0::1]/",  # deprecated IPv6 site-local, which Python's is_global calls global
    "http://192.0.0.8/",  # IETF protocol assignments
    "http://192.88.99.1/",  # the old 6to4 relay anycast
    "http://%31%32%37.0.0.1/",  # a percent-encoded host
    # what the HTTP client connects to after IDNA mapping: compatibility digits (U+1FBF0.., SEGMENTED DIGIT ZERO)
    # and full-width characters spell an internal address that the typed text does not
    "http://127.0.0.1\U0001fbf0:19999/hook",
    "http://169.254.169.25\U0001fbf4/latest/meta-data/",
    "http://10.0.0.1\U0001fbf0/",
    "http://192.168.1.1\U0001fbf0/",
    "http://\uff11\uff12\uff17.0.0.1/",
    "http://\uff4c\uff4f\uff43\uff41\uff4c\uff48\uff4f\uff53\uff54/",
    "http://exa\u00adample.com/",
]


def _no_allowlist(settings: Settings) -> Settings:
    settings.tracking.webhook_url_allowlist = []
    return settings


@pytest.fixture
async def client(settings: Settings, store: Store) -> AsyncIterator[TestClient[Any, Any]]:
    app = await Trackly.open(_no_allowlist(settings), store=store)
    web_app = aiohttp.web.Application()
    api.setup(web_app, app)
    async with TestClient(TestServer(web_app)) as cl:
        yield cl
    await app.close(close_store=False)


@pytest.mark.parametrize("url", INTERNAL)
async def test_internal_webhook_url_is_refused_when_set(client: TestClient[Any, Any], store: Store, url: str) -> None:
    r = await client.post("/api/v1/accounts", headers=H, json={"name": "a", "webhook_url": url})
    data = await r.json()
    assert r.status == 422, (url, data)
    assert data["details"][0]["loc"] == "body.webhook_url"
    assert await store.db[c.ACCOUNTS].count_documents({}) == 0


@pytest.mark.parametrize(
    "url", ["https://hooks.example.com/sms", "http://93.184.216.34:8443/x?y=1", "https://b\u00fccher.example/hook"]
)
async def test_public_webhook_url_is_accepted(client: TestClient[Any, Any], url: str) -> None:
    r = await client.post("/api/v1/accounts", headers=H, json={"name": "a", "webhook_url": url})
    assert r.status == 201, await r.text()


@pytest.mark.parametrize("url", [u for u in INTERNAL if not u.isascii()])
def test_a_stored_url_spelling_an_internal_address_is_refused_at_delivery(url: str) -> None:
    """The delivery-time check (a URL stored before, or written directly) judges the host the client would reach."""
    from trackly_exec.tracking.netguard import Allowlist, refusal

    assert refusal(url, Allowlist.parse([])) is not None


async def test_allowlist_admits_an_internal_receiver(settings: Settings, store: Store) -> None:
    settings.tracking.webhook_url_allowlist = ["10.1.2.0/24", "hooks.internal", "127.0.0.1/32"]
    app = await Trackly.open(settings, store=store)
    web_app = aiohttp.web.Application()
    api.setup(web_app, app)
    try:
        async with TestClient(TestServer(web_app)) as cl:
            for url, status in [
                ("http://10.1.2.3/h", 201),
                ("http://hooks.internal:8080/h", 201),
                ("http://127.0.0.1:9/h", 201),
                ("http://10.1.3.1/h", 422),
                ("http://127.0.0.2/", 422),
            ]:
                r = await cl.post("/api/v1/accounts", headers=H, json={"name": "a", "webhook_url": url})
                assert r.status == status, (url, await r.text())
    finally:
        await app.close(close_store=False)


async def test_stored_internal_url_is_never_posted_to(settings: Settings, store: Store) -> None:
    """An account whose URL became internal (stored before, or written directly) gets no POST at delivery."""
    rcv = await Receiver().start()
    try:
        async for d in start_daemon(_no_allowlist(settings), store, outbox_timeout_seconds=1.0):
            port = rcv.port
            await seed_account(d.store, webhook_url=rcv.url, secret=SECRET)
            await seed_account(d.store, account_id=2, webhook_url=f"http://localhost:{port}/hook", secret=SECRET)
            [m1] = await seed_sent(d.store, 1)
            [m2] = await seed_sent(d.store, 1, start=1, account_id=2)
            body = infobip_body(infobip_report(m1.id), infobip_report(m2.id))
            assert (await d.post(IB_STATUS, body))[0] == 200
            outbox = Outbox(d.trackly)
            try:
                counts = await outbox.run_until_idle()
            finally:
                await outbox.stop(1)
            assert counts["failed"] == 2 and counts.get("delivered", 0) == 0
            assert rcv.requests == []
            errors = [e.get("last_error") or "" async for e in d.store[c.OUTBOX].find({})]
            assert all("refused" in e or "internal" in e for e in errors), errors
    finally:
        await rcv.stop()


class _Rebinding(aiohttp.abc.AbstractResolver):
    """A DNS answer that changed after the URL was accepted: the name now points at loopback."""

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> list[Any]:
        return [
            {
                "hostname": host,
                "host": "127.0.0.1",
                "port": port,
                "family": socket.AF_INET,
                "proto": 0,
                "flags": socket.AI_NUMERICHOST,
            }
        ]

    async def close(self) -> None:
        pass


@pytest.mark.parametrize("allow,reached", [([], False), (["127.0.0.0/8"], True), (["hooks.example.com"], True)])
async def test_name_resolving_to_internal_address_is_refused_at_connect(allow: list[str], reached: bool) -> None:
    from trackly_exec.tracking.netguard import Allowlist, GuardedResolver

    rcv = await Receiver().start()
    port = rcv.port
    connector = aiohttp.TCPConnector(resolver=GuardedResolver(Allowlist.parse(allow), inner=_Rebinding()))
    try:
        async with aiohttp.ClientSession(connector=connector) as session:
            try:
                async with session.post(f"http://hooks.example.com:{port}/hook", data=b"{}") as resp:
                    status = resp.status
            except aiohttp.ClientError:
                status = None
        assert (status == 200) is reached and (len(rcv.requests) == 1) is reached
    finally:
        await rcv.stop()
