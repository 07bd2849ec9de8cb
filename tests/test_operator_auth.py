"""Operator surfaces: phone numbers masked in what is shown; dashboard and metrics behind a token or a separate
listener; /healthz tells nothing sensitive."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import aiohttp
import pytest
from pydantic import SecretStr

from trackly_exec.app import Trackly
from trackly_exec.config import Settings
from trackly_exec.operations.alerts import Alerts
from trackly_exec.operations.metrics import FIGURES
from trackly_exec.operations.web import HttpServer
from trackly_exec.store.client import Store
from trackly_exec.store.events import Event, EventKind
from trackly_exec.store.models import utcnow

from .doors_support import IB_INBOUND, mo
from .tracking_support import seed_account, seed_contact, seed_list, start_daemon

OP = {"Authorization": "Bearer test-token"}
PHONE = "+14155550123"
FULL = re.compile(r"\+?1?4155550123")


async def test_dashboard_events_and_alerts_mask_numbers(settings: Settings, store: Store) -> None:
    async for d in start_daemon(settings, store):
        await seed_account(d.store)
        await seed_list(d.store)
        await seed_contact(d.store, contact_id=1, phone=PHONE)
        assert (await d.post(IB_INBOUND, mo("STOP")))[0] == 200
        async with d.http.get(d.url + "/dashboard/summary.json", headers=OP) as r:
            assert r.status == 200
            text = str(await r.json())
        assert "sent STOP" in text and "+1415•••0123" in text and not FULL.search(text)
        # an event stored by an older version, with the number in clear, is masked when shown
        await d.store["events"].insert_one(
            {
                "kind": "opt_out",
                "key": "legacy",
                "severity": "info",
                "message": f"{PHONE} sent STOP",
                "created_at": utcnow(),
            }
        )
        # a poll serves the last background figures (at most http.dashboard_refresh_seconds old): refresh them now
        assert d.server.runner is not None
        assert await d.server.runner.app[FIGURES].refresh_now()
        async with d.http.get(d.url + "/dashboard/summary.json", headers=OP) as r:
            text = str(await r.json())
        assert text.count("+1415•••0123") == 2 and not FULL.search(text)
        alerts = Alerts(d.trackly)
        payload = alerts._format(
            [Event(kind=EventKind.OPT_OUT, message=f"{PHONE} sent STOP", data={"phone": PHONE})], 0
        )
        assert not FULL.search(str(payload))


@pytest.fixture
async def server(settings: Settings, store: Store) -> AsyncIterator[HttpServer]:
    settings.http.dashboard_tokens = [SecretStr("view-only-token")]
    app = await Trackly.open(settings, store=store)
    srv = HttpServer(app)
    await srv.start()
    yield srv
    await srv.stop(1)
    await app.close(close_store=False)


@pytest.mark.parametrize("path", ["/dashboard", "/dashboard/summary.json", "/metrics"])
async def test_operator_paths_need_a_token(server: HttpServer, path: str) -> None:
    async with aiohttp.ClientSession() as http:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic dGVzdC10b2tlbg=="}):
            async with http.get(server.url + path, headers=headers, allow_redirects=False) as r:
                assert r.status == 401, (path, headers)
                assert "campaigns" not in await r.text() and "trackly_messages" not in await r.text()
        for token in ("test-token", "view-only-token"):
            async with http.get(server.url + path, headers={"Authorization": f"Bearer {token}"}) as r:
                assert r.status == 200


async def test_dashboard_tokens_do_not_open_the_admin_api(server: HttpServer) -> None:
    headers = {"Authorization": "Bearer view-only-token"}
    async with aiohttp.ClientSession() as http, http.get(server.url + "/api/v1/accounts", headers=headers) as r:
        assert r.status == 401


async def test_dashboard_login_sets_a_cookie(server: HttpServer) -> None:
    jar = aiohttp.CookieJar(unsafe=True)
    async with aiohttp.ClientSession(cookie_jar=jar) as http:
        async with http.get(server.url + "/dashboard?token=nope", allow_redirects=False) as r:
            assert r.status == 401 and "Set-Cookie" not in r.headers
        async with http.get(server.url + "/dashboard?token=view-only-token", allow_redirects=False) as r:
            assert r.status == 303 and r.headers["Location"] == "/dashboard"
            cookie = r.headers["Set-Cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "view-only-token" not in cookie
        async with http.get(server.url + "/dashboard/summary.json") as r:
            assert r.status == 200
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        async with http.post(server.url + "/dashboard/login", data={"token": "wrong"}, allow_redirects=False) as r:
            assert r.status == 401
        async with http.post(server.url + "/dashboard/login", data={"token": "test-token"}) as r:
            assert r.status == 200 and "trackly-exec" in await r.text()
        async with http.get(server.url + "/metrics") as r:
            assert r.status == 200


@pytest.mark.parametrize(
    ("body", "ctype"),
    [
        (b"\xff" * 100, "multipart/form-data"),  # no boundary
        (b"--x\r\ngarbage", "multipart/form-data; boundary=x"),
        (b"token=%FF%FE", "application/x-www-form-urlencoded"),
        (b"token=test-token", "application/x-www-form-urlencoded; charset=no-such-charset"),
        (
            b'--x\r\nContent-Disposition: form-data; name="token"; filename="t.txt"\r\n\r\ntest-token\r\n--x--\r\n',
            "multipart/form-data; boundary=x",
        ),
        (b"", "text/plain"),
    ],
    ids=["no-boundary", "bad-part-header", "bad-percent", "bad-charset", "file-field", "empty"],
)
async def test_broken_login_forms_are_4xx(server: HttpServer, body: bytes, ctype: str) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            server.url + "/dashboard/login", data=body, headers={"Content-Type": ctype}, allow_redirects=False
        ) as r,
    ):
        assert 400 <= r.status < 500 and "Set-Cookie" not in r.headers


async def test_healthz_is_open_and_tells_nothing_sensitive(server: HttpServer) -> None:
    async with aiohttp.ClientSession() as http, http.get(server.url + "/healthz") as r:
        body = await r.json()
    assert r.status == 200 and set(body) <= {"status", "store", "redis"}
    assert server.trackly.instance not in str(body)


async def test_operator_surfaces_on_a_separate_listener(settings: Settings, store: Store) -> None:
    settings.http.operator_port = 0
    async for d in start_daemon(settings, store):
        public, operator = d.server.url, d.server.operator_url
        assert d.server.port != d.server.operator_port
        async with aiohttp.ClientSession() as http:
            for path in ("/api/v1/accounts", "/dashboard", "/dashboard/summary.json", "/metrics", "/"):
                for headers in (OP, {}):  # with a token or without: not there (a 401 told that they exist)
                    async with http.get(public + path, headers=headers, allow_redirects=False) as r:
                        assert r.status == 404, (path, headers)
            async with http.get(public + "/healthz") as r:
                assert r.status == 200
            async with http.post(
                public + IB_INBOUND, data=mo("hello"), headers={"Content-Type": "application/json"}
            ) as r:
                assert r.status == 200
            async with http.get(public + "/l/abcdefg", allow_redirects=False) as r:
                assert r.status in (404, 410)
            for path in ("/api/v1/accounts", "/dashboard", "/metrics"):
                async with http.get(operator + path, headers=OP) as r:
                    assert r.status == 200, path
            async with http.post(operator + IB_INBOUND, data=mo("hello")) as r:
                assert r.status == 404
