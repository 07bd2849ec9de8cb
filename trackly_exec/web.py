"""The daemon's HTTP server: admin API, provider webhooks, short links, dashboard and metrics.

Each part adds its routes through its module's ``setup(app, trackly)``.
"""

from __future__ import annotations

import asyncio
import importlib
from typing import Any

from aiohttp import web

from .app import Trackly
from .logs import get_logger

log = get_logger(__name__)

TRACKLY_KEY: web.AppKey[Trackly] = web.AppKey("trackly", Trackly)

#: Modules whose ``setup(app, trackly)`` adds routes, in order.
ROUTE_MODULES = (
    "trackly_exec.api",  # /api/v1/...            admin API (bearer tokens)
    "trackly_exec.webhooks",  # /webhooks/{driver}/... delivery reports and inbound messages
    "trackly_exec.links",  # /l/{code}              tracked short links
    "trackly_exec.dashboard",  # /, /dashboard          live dashboard
    "trackly_exec.metrics",  # /metrics, /healthz     Prometheus and health
    "trackly_exec.docs",  # /docs                  admin API reference (rendered from the OpenAPI document)
)


async def _health(request: web.Request) -> web.Response:
    """200 when the store (and Redis, when configured) answer within 2 s; 503 naming what does not."""
    trackly = request.app[TRACKLY_KEY]
    checks: dict[str, str] = {}

    async def probe(name: str, ping: Any) -> None:
        try:
            await asyncio.wait_for(ping, timeout=2.0)
            checks[name] = "ok"
        except Exception as exc:
            checks[name] = f"unreachable: {type(exc).__name__}"

    await probe("store", trackly.store.client.admin.command("ping"))
    if trackly.redis is not None:
        await probe("redis", trackly.redis.ping())
    healthy = all(v == "ok" for v in checks.values())
    return web.json_response(
        {"status": "ok" if healthy else "degraded", "instance": trackly.instance, **checks},
        status=200 if healthy else 503,
    )


def make_app(trackly: Trackly) -> web.Application:
    app = web.Application(client_max_size=trackly.settings.http.max_body_bytes)
    app[TRACKLY_KEY] = trackly
    app.router.add_get("/healthz", _health)
    for name in ROUTE_MODULES:
        module = importlib.import_module(name)
        module.setup(app, trackly)
    return app


class HttpServer:
    """The HTTP server as a daemon component."""

    name = "http"

    def __init__(self, trackly: Trackly) -> None:
        self.trackly = trackly
        self.runner: web.AppRunner | None = None
        self.port: int | None = None

    async def start(self) -> None:
        cfg = self.trackly.settings.http
        self.runner = web.AppRunner(make_app(self.trackly), access_log=None, handle_signals=False)
        await self.runner.setup()
        site = web.TCPSite(self.runner, cfg.host, cfg.port, reuse_address=True)
        await site.start()
        server = getattr(site, "_server", None)
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else cfg.port
        log.info("http_listening", host=cfg.host, port=self.port, public_url=cfg.public_url)

    @property
    def url(self) -> str:
        return f"http://{self.trackly.settings.http.host}:{self.port}"

    async def stop(self, grace: float) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None
