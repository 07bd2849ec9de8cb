"""Operations: Discord alerts and the live dashboard, over real HTTP (Prometheus metrics: test_metrics.py)."""

from __future__ import annotations

from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer
from pydantic import SecretStr

from trackly_exec.app import Trackly
from trackly_exec.operations.alerts import Alerts
from trackly_exec.operations.web import HttpServer
from trackly_exec.store import constants as c
from trackly_exec.store.events import Event, EventKind
from trackly_exec.store.models import utcnow


class DiscordStub:
    """A local stand-in for a Discord webhook: records posts; can answer 429 first."""

    def __init__(self) -> None:
        self.posts: list[dict[str, Any]] = []
        self.rate_limited = 0
        app = web.Application()
        app.router.add_post("/hook", self.hook)
        self.server = TestServer(app, host="127.0.0.1")

    async def hook(self, request: web.Request) -> web.Response:
        if self.rate_limited:
            self.rate_limited -= 1
            return web.json_response({"message": "You are being rate limited.", "retry_after": 0.05}, status=429)
        self.posts.append(await request.json())
        return web.Response(status=204)


async def _alerts(trackly: Trackly, stub: DiscordStub, interval: float = 60.0) -> Alerts:
    await stub.server.start_server()
    trackly.settings.alerts.discord_webhook_url = SecretStr(str(stub.server.make_url("/hook")))
    trackly.settings.alerts.min_interval_seconds = interval
    return Alerts(trackly)


async def test_failed_messages_grouped_into_one_alert(trackly: Trackly) -> None:
    """A burst of dead-lettered messages becomes one Discord message counting them by reason."""
    stub = DiscordStub()
    alerts = await _alerts(trackly, stub)
    try:
        await trackly.bus.publish(
            *[
                Event(kind=EventKind.FAILED_MESSAGE, message="failed", data={"reason": r})
                for r in ["STALE"] * 3 + ["PROVIDER_ERROR"] * 2
            ]
        )
        assert await alerts.run_until_idle() == 1
        embed = stub.posts[0]["embeds"][0]
        assert embed["title"] == "5 messages dead-lettered"
        assert "STALE: 3" in embed["description"] and "PROVIDER_ERROR: 2" in embed["description"]
    finally:
        await alerts.stop(1)
        await stub.server.close()


async def test_throttled_per_key_and_429_honoured(trackly: Trackly) -> None:
    """The same alert key is sent once per interval; Discord's 429 is waited out, not lost."""
    stub = DiscordStub()
    stub.rate_limited = 1
    alerts = await _alerts(trackly, stub, interval=3600)
    try:
        ev = Event(kind=EventKind.SPAM_COMPLAINT, message="carrier filtered", key="spam:1", severity="critical")
        await trackly.bus.publish(ev)
        await alerts.run_until_idle()
        await trackly.bus.publish(ev)
        assert await alerts.run_until_idle() == 0
        assert len(stub.posts) == 1
        assert stub.posts[0]["embeds"][0]["color"] == 0xC62828
    finally:
        await alerts.stop(1)
        await stub.server.close()


async def test_high_error_rate_detected(trackly: Trackly) -> None:
    """A list whose failures pass the threshold over the last minute raises high_error_rate."""
    now = utcnow()
    base = {
        "account_id": 1,
        "sending_list_id": 7,
        "from_number": "+1",
        "to_number": "+2",
        "body": "x",
        "length": 1,
        "sendtime": now,
    }
    await trackly.db[c.FAILED].insert_many(
        [{**base, "_id": f"f{i}", "reason": "PROVIDER_ERROR", "failed_at": now} for i in range(12)]
    )
    await trackly.db[c.SENT].insert_many([{**base, "_id": f"s{i}", "timestamp": now} for i in range(8)])
    alerts = Alerts(trackly)
    events = await alerts.check_error_rates()
    assert [e.data["sending_list_id"] for e in events] == [7]
    assert await trackly.db[c.EVENTS].count_documents({"kind": "high_error_rate"}) == 1


async def test_high_error_rate_ignores_old_failures(trackly: Trackly) -> None:
    """Failures three days old are not "in the last minute" on the embedded store (an aggregate $match on a date is
    not honoured by nx-27017): no alert for old failures, and only the minute's records are counted."""
    import datetime as dt

    now = utcnow()
    old = now - dt.timedelta(days=3)
    base = {"account_id": 1, "from_number": "+1", "to_number": "+2", "body": "x", "length": 1, "sendtime": old}
    await trackly.db[c.FAILED].insert_many(
        [
            {**base, "_id": f"old{i}", "sending_list_id": 8, "reason": "PROVIDER_ERROR", "failed_at": old}
            for i in range(50)
        ]
        + [
            {**base, "_id": f"o9{i}", "sending_list_id": 9, "reason": "PROVIDER_ERROR", "failed_at": old}
            for i in range(50)
        ]
        + [
            {**base, "_id": f"n9{i}", "sending_list_id": 9, "reason": "PROVIDER_ERROR", "failed_at": now}
            for i in range(12)
        ]
    )
    await trackly.db[c.SENT].insert_many(
        [{**base, "_id": f"s9{i}", "sending_list_id": 9, "timestamp": now} for i in range(28)]
        + [{**base, "_id": f"os9{i}", "sending_list_id": 9, "timestamp": old} for i in range(100)]
    )
    alerts = Alerts(trackly)
    events = await alerts.check_error_rates()
    assert [(e.data["sending_list_id"], e.data["failed"], e.data["total"]) for e in events] == [(9, 12, 40)]
    assert "12 of 40" in events[0].message


OP = {"Authorization": "Bearer test-token"}


async def test_dashboard(trackly: Trackly) -> None:
    """/dashboard serves the page and live JSON (/metrics: test_metrics.py)."""
    now = utcnow()
    base = {
        "account_id": 1,
        "sending_list_id": 7,
        "campaign_id": 3,
        "from_number": "+1",
        "to_number": "+2",
        "body": "x",
        "length": 1,
        "sendtime": now,
    }
    await trackly.db[c.CAMPAIGNS].insert_one({"_id": 3, "status": "active"})
    await trackly.db[c.SENT].insert_many(
        [{**base, "_id": f"s{i}", "timestamp": now, "delivered": i < 3} for i in range(4)]
    )
    await trackly.db[c.FAILED].insert_one({**base, "_id": "f1", "reason": "STALE", "failed_at": now})
    await trackly.db[c.QUEUED].insert_many(
        [
            {**base, "_id": "q1", "execution_id": 1, "contact_id": 1, "claimed_by": None},
            {**base, "_id": "q2", "execution_id": 1, "contact_id": 2, "claimed_by": "t:x"},
        ]
    )
    server = HttpServer(trackly)
    await server.start()
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(server.url + "/dashboard", headers=OP) as r:
                assert r.status == 200 and "trackly-exec" in await r.text()
            async with http.get(server.url + "/dashboard/summary.json", headers=OP) as r:
                data = await r.json()
            camp = data["campaigns"][0]
            assert (camp["id"], camp["queued"], camp["sent"], camp["delivered"], camp["failed"]) == (3, 2, 4, 3, 1)
            assert camp["delivery_rate"] == 75.0
    finally:
        await server.stop(1)


async def test_healthz_reports_store_and_redis(trackly: Trackly, redis_server: Any) -> None:
    """/healthz answers 200 while the store and Redis answer, and 503 naming Redis while it is down."""
    server = HttpServer(trackly)
    await server.start()
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(server.url + "/healthz") as r:
                assert r.status == 200 and (await r.json())["redis"] == "ok"
            redis_server.stop()
            try:
                async with http.get(server.url + "/healthz") as r:
                    body = await r.json()
                    assert r.status == 503 and body["store"] == "ok" and body["redis"].startswith("unreachable")
            finally:
                redis_server.start()
    finally:
        await server.stop(1)
