"""The daemon's HTTP server: admin API, provider webhooks, short links, dashboard and metrics.

Each part adds its routes through its module's ``setup(app, trackly)``.
"""

from __future__ import annotations

import asyncio
import importlib
from http import HTTPStatus
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest
from aiohttp.web_server import Server

from trackly_exec.app import Trackly
from trackly_exec.errors import ConfigError
from trackly_exec.logs import get_logger
from trackly_exec.tracking.webhooks import utf8_text

log = get_logger(__name__)

TRACKLY_KEY: web.AppKey[Trackly] = web.AppKey("trackly", Trackly)

#: Modules whose ``setup(app, trackly)`` adds routes, in order: the public parts, then the operator's.
PUBLIC_MODULES = (
    "trackly_exec.tracking.webhooks",  # /webhooks/{driver}/... delivery reports and inbound messages
    "trackly_exec.tracking.links",  # /l/{code}              tracked short links
)
OPERATOR_MODULES = (
    "trackly_exec.api",  # /api/v1/...            admin API (bearer tokens)
    "trackly_exec.operations.dashboard",  # /, /dashboard          live dashboard (operator token)
    "trackly_exec.operations.metrics",  # /metrics               Prometheus (operator token)
    "trackly_exec.api.docs",  # /docs                  admin API reference (rendered from the OpenAPI document)
)
ROUTE_MODULES = (*OPERATOR_MODULES[:1], *PUBLIC_MODULES, *OPERATOR_MODULES[1:])


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
    # open to anyone (load balancers): states only, no instance name, no error text
    return web.json_response({"status": "ok" if healthy else "degraded", **checks}, status=200 if healthy else 503)


@web.middleware
async def _decodable_headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A request whose headers are not UTF-8 text (an ``Authorization``, a cookie or a signature of raw bytes) is a 400
    before any door compares them (each comparison encoded them and failed: a 500). A click keeps its redirect: its
    handler replaces what cannot be read (the user agent, which it records)."""
    if not request.path.startswith("/l/") and not all(utf8_text(v) for v in request.headers.values()):
        return web.Response(status=400, text="malformed request header")
    return await handler(request)


def make_app(trackly: Trackly, part: str = "all") -> web.Application:
    """The routes of ``part``: ``"all"`` (one listener), ``"public"`` (webhooks, links, /healthz) or ``"operator"``
    (admin API, dashboard, metrics, /healthz: ``http.operator_port``)."""
    from trackly_exec.api.routes import app_body_limit
    from trackly_exec.operations import operator_auth

    # the public listener has no operator path to guard: they are 404 there with or without a token (a 401 would tell
    # that they exist)
    guard = [] if part == "public" else [operator_auth.middleware(trackly.settings)]
    app = web.Application(client_max_size=app_body_limit(trackly.settings), middlewares=[_decodable_headers, *guard])
    app[TRACKLY_KEY] = trackly
    app.router.add_get("/healthz", _health)
    modules = {"all": ROUTE_MODULES, "public": PUBLIC_MODULES, "operator": OPERATOR_MODULES}[part]
    for name in modules:
        module = importlib.import_module(name)
        module.setup(app, trackly)
    if part != "public":
        operator_auth.setup(app, trackly.settings)
    return app


class _PlainErrors(RequestHandler):
    """aiohttp's answer to a request it cannot parse (a request line or header over its limit, a malformed one) quotes
    the offending bytes, a webhook's path token or an ``Authorization`` header among them: it answers the bare status
    instead (the log already drops the text, see :mod:`trackly_exec.logs`)."""

    def handle_error(
        self, request: BaseRequest, status: int = 500, exc: BaseException | None = None, message: str | None = None
    ) -> web.StreamResponse:
        if status != HTTPStatus.INTERNAL_SERVER_ERROR and message:
            try:
                message = f"{status} {HTTPStatus(status).phrase}"
            except ValueError:
                message = str(status)
        return super().handle_error(request, status, exc, message)


class _PlainErrorsServer(Server):
    def __call__(self) -> RequestHandler:
        return _PlainErrors(self, loop=self._loop, **self._kwargs)


class _Runner(web.AppRunner):
    async def _make_server(self) -> Server:
        server = await super()._make_server()
        server.__class__ = _PlainErrorsServer  # (aiohttp builds its Server itself; only the handler class differs)
        return server


class HttpServer:
    """The HTTP server as a daemon component: one listener, or the public one plus ``http.operator_port``."""

    name = "http"

    def __init__(self, trackly: Trackly) -> None:
        self.trackly = trackly
        self.runners: list[web.AppRunner] = []
        self.port: int | None = None
        self.operator_port: int | None = None

    @property
    def runner(self) -> web.AppRunner | None:
        return self.runners[0] if self.runners else None

    async def _listen(self, app: web.Application, host: str, port: int, keys: str = "http.host / http.port") -> int:
        runner = _Runner(app, access_log=None, handle_signals=False)
        await runner.setup()
        self.runners.append(runner)
        site = web.TCPSite(runner, host, port, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:  # a host that is no address of this machine, a port in use: name the setting
            raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}", key=keys) from exc
        server = getattr(site, "_server", None)
        sockets = getattr(server, "sockets", None) or []
        return int(sockets[0].getsockname()[1]) if sockets else port

    async def start(self) -> None:
        cfg = self.trackly.settings.http
        try:
            if cfg.operator_port is None:
                self.port = await self._listen(make_app(self.trackly), cfg.host, cfg.port)
                self.operator_port = self.port
            else:
                self.port = await self._listen(make_app(self.trackly, "public"), cfg.host, cfg.port)
                self.operator_port = await self._listen(
                    make_app(self.trackly, "operator"),
                    cfg.operator_host,
                    cfg.operator_port,
                    "http.operator_host / http.operator_port",
                )
        except BaseException:
            await self.stop(0)
            raise
        log.info(
            "http_listening",
            host=cfg.host,
            port=self.port,
            public_url=cfg.public_url,
            operator=f"{cfg.operator_host}:{self.operator_port}" if cfg.operator_port is not None else "same",
        )

    @property
    def url(self) -> str:
        return f"http://{self.trackly.settings.http.host}:{self.port}"

    @property
    def operator_url(self) -> str:
        cfg = self.trackly.settings.http
        host = cfg.operator_host if cfg.operator_port is not None else cfg.host
        return f"http://{host}:{self.operator_port}"

    async def stop(self, grace: float) -> None:
        runners, self.runners = self.runners, []
        for runner in runners:
            await runner.cleanup()
