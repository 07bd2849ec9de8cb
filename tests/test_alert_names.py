"""Alerts name the campaign and the sending list, not only their ids."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer
from pydantic import SecretStr

from trackly_exec.app import Trackly
from trackly_exec.campaigns.scheduler import trigger
from trackly_exec.operations.alerts import Alerts
from trackly_exec.store import constants as c
from trackly_exec.store.events import Event, EventKind

from .campaign_fixtures import register_echo, seed_campaign


class DiscordStub:
    """A local stand-in for a Discord webhook: records what is posted."""

    def __init__(self) -> None:
        self.posts: list[dict[str, Any]] = []
        app = web.Application()
        app.router.add_post("/hook", self.hook)
        self.server = TestServer(app, host="127.0.0.1")

    async def hook(self, request: web.Request) -> web.Response:
        self.posts.append(await request.json())
        return web.Response(status=204)


async def _alerts(trackly: Trackly, stub: DiscordStub, interval: float) -> Alerts:
    await stub.server.start_server()
    trackly.settings.alerts.discord_webhook_url = SecretStr(str(stub.server.make_url("/hook")))
    trackly.settings.alerts.min_interval_seconds = interval
    return Alerts(trackly)


async def test_alerts_carry_names(trackly: Trackly) -> None:
    """A failed campaign's alert says "'Spring sale' (campaign 1) failed: ..."; a dead-letter alert's fields name
    the campaign and the list first; a record without a name shows "campaign <id>"."""
    register_echo()
    await seed_campaign(trackly.store, campaign_kw={"name": "Spring sale"})
    await trackly.db[c.CREATIVES].update_one({"_id": 1}, {"$set": {"archived": True}})
    stub = DiscordStub()
    alerts = await _alerts(trackly, stub, interval=0)
    try:
        await trigger(trackly, 1)
        await trackly.bus.publish(
            Event(
                kind=EventKind.FAILED_MESSAGE,
                message="STALE: message m1",
                key="f",
                data={"reason": "STALE", "campaign_id": 1, "sending_list_id": 1},
            )
        )
        await trackly.db[c.CAMPAIGNS].insert_one({"_id": 2, "account_id": 1})
        await trackly.bus.publish(
            Event(
                kind=EventKind.FAILED_MESSAGE,
                message="STALE: message m2",
                key="g",
                data={"reason": "STALE", "campaign_id": 2},
            )
        )
        assert await alerts.run_until_idle() == 3
        failed, dead, unnamed = (p["embeds"][0] for p in stub.posts)
        assert failed["description"] == "'Spring sale' (campaign 1) failed: creative 1 is archived"
        assert [f["name"] for f in dead["fields"][:2]] == ["campaign", "sending list"]
        assert dead["fields"][0]["value"] == "Spring sale (1)" and dead["fields"][1]["value"] == "main (1)"
        assert unnamed["fields"][0]["value"] == "campaign 2"
    finally:
        await alerts.stop(1)
        await stub.server.close()
