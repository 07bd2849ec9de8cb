"""Helpers of the fail-closed tests (test_doors_*, test_netguard, test_operator_auth): an Infobip inbound body, a
loopback webhook receiver, API seeding."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient

from .api_support import post
from .tracking_support import IB_TOKEN

IB_INBOUND = f"/webhooks/infobip/inbound/{IB_TOKEN}"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def mo(
    text: str,
    sender: str = "+14155550123",
    to: str = "+14155550100",
    message_id: str = "MO1",
    received_at: str = "2026-11-29T10:00:00.000+0000",
) -> str:
    """An Infobip inbound (MO_JSON_2) body; numbers without '+', as Infobip sends them."""
    return json.dumps(
        {
            "results": [
                {
                    "messageId": message_id,
                    "from": sender.lstrip("+"),
                    "to": to.lstrip("+"),
                    "text": text,
                    "cleanText": "",
                    "keyword": text.split()[0] if text.split() else "",
                    "receivedAt": received_at,
                    "smsCount": 1,
                    "price": {"pricePerMessage": 0, "currency": "EUR"},
                }
            ],
            "messageCount": 1,
            "pendingMessageCount": 0,
        }
    )


async def serve_hook(handle: Handler) -> tuple[web.AppRunner, int]:
    """Serve ``handle`` at POST /hook on a free loopback port: the started runner and the port."""
    app = web.Application()
    app.router.add_post("/hook", handle)
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]


class Receiver:
    """A customer webhook endpoint on loopback that records what reaches it."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.runner: web.AppRunner | None = None
        self.url = ""
        self.port = 0

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append((dict(request.headers), await request.read()))
        return web.Response(text="ok")

    async def start(self) -> Receiver:
        self.runner, self.port = await serve_hook(self.handle)
        self.url = f"http://127.0.0.1:{self.port}/hook"
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


async def seed_api(cl: TestClient[Any, Any]) -> dict[str, int]:
    """An account, an echo-driver sending list and a creative through the API."""
    acc = await post(cl, "/accounts", {"name": "Acme", "balance": 100})
    lst = await post(
        cl, "/sending-lists", {"account_id": acc["id"], "name": "L", "driver": "echo", "from_number": "+15550001111"}
    )
    cre = await post(
        cl, "/creatives", {"account_id": acc["id"], "name": "c", "variants": [{"key": "a", "body": "Hi", "weight": 1}]}
    )
    return {"account": acc["id"], "list": lst["id"], "creative": cre["id"]}
