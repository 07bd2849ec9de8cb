"""The operator surfaces (dashboard, its JSON, ``/metrics``) behind a token.

With ``http.operator_auth`` (the default) they need one of ``http.api_tokens`` or ``http.dashboard_tokens``:

- ``Authorization: Bearer <token>`` (Prometheus: ``authorization: {credentials: <token>}``);
- or, for a browser, the login cookie: ``GET /dashboard`` without it answers 401 with a small login form that
  posts the token to ``/dashboard/login``; ``/dashboard?token=<token>`` works too and redirects to the bare URL.
  The cookie holds an HMAC of the token, never the token; it is ``HttpOnly`` and ``SameSite=Strict`` (``Secure``
  when ``http.public_url`` is https).

The admin API keeps its own bearer check (``api_tokens`` only). Public parts (webhooks, ``/l/``, ``/healthz``)
need no token. ``http.operator_port`` moves the admin API, dashboard and metrics to a listener of their own.
"""

from __future__ import annotations

import hashlib
import hmac
import html
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.typedefs import Middleware

from trackly_exec.config import Settings

COOKIE = "trackly_operator"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_LOGIN = """<!doctype html><html><head><meta charset="utf-8"><title>trackly-exec: sign in</title>
<style>body{font-family:system-ui,sans-serif;max-width:26rem;margin:4rem auto;padding:0 1rem}
input{width:100%;padding:.5rem;margin:.5rem 0;box-sizing:border-box}</style></head>
<body><h1>trackly-exec</h1><p>{message}</p>
<form method="post" action="/dashboard/login"><label>Token (http.api_tokens or http.dashboard_tokens)
<input type="password" name="token" autocomplete="current-password" autofocus required></label>
<input type="submit" value="Open the dashboard"></form></body></html>"""


def is_operator_path(path: str) -> bool:
    return path == "/metrics" or path == "/dashboard" or path.startswith("/dashboard/")


def _tokens(settings: Settings) -> list[bytes]:
    return [
        t.get_secret_value().encode()
        for t in (*settings.http.api_tokens, *settings.http.dashboard_tokens)
        if t.get_secret_value()
    ]


def _cookie_value(token: bytes) -> str:
    return hmac.new(token, b"trackly-exec dashboard session v1", hashlib.sha256).hexdigest()


def valid_token(settings: Settings, supplied: str) -> bool:
    ok = False
    raw = supplied.encode()
    for token in _tokens(settings):  # every token compared: constant time whatever matches
        ok |= hmac.compare_digest(raw, token)
    return bool(supplied) and ok


def _valid_cookie(settings: Settings, supplied: str) -> bool:
    ok = False
    for token in _tokens(settings):
        ok |= hmac.compare_digest(supplied.encode(), _cookie_value(token).encode())
    return bool(supplied) and ok


def _bearer(request: web.Request) -> str:
    header = request.headers.get("Authorization", "")
    return header[7:].strip() if header[:7].lower() == "bearer " else ""


def _login_page(status: int, message: str) -> web.Response:
    return web.Response(
        status=status,
        text=_LOGIN.replace("{message}", html.escape(message)),
        content_type="text/html",
        headers={"Cache-Control": "no-store"},
    )


def _see_dashboard() -> web.Response:
    return web.Response(status=303, headers={"Location": "/dashboard", "Cache-Control": "no-store"})


def _with_cookie(settings: Settings, resp: web.StreamResponse, token: str) -> web.StreamResponse:
    resp.set_cookie(
        COOKIE,
        _cookie_value(token.encode()),
        httponly=True,
        samesite="Strict",
        path="/",
        secure=settings.http.public_url.lower().startswith("https://"),
        max_age=12 * 3600,
    )
    return resp


def middleware(settings: Settings) -> Middleware:
    """The aiohttp middleware guarding the operator paths."""

    @web.middleware
    async def operator_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not settings.http.operator_auth or not is_operator_path(request.path):
            return await handler(request)
        if request.path == "/dashboard/login":
            return await handler(request)
        if valid_token(settings, _bearer(request)) or _valid_cookie(settings, request.cookies.get(COOKIE, "")):
            return await handler(request)
        query_token = request.query.get("token", "")
        if request.path == "/dashboard" and query_token:
            if valid_token(settings, query_token):
                return _with_cookie(settings, _see_dashboard(), query_token)
            return _login_page(401, "That token is not valid.")
        if request.path == "/dashboard":
            return _login_page(401, "Sign in with an operator token.")
        return web.json_response(
            {
                "error": "unauthorized",
                "message": "missing or wrong token (Authorization: Bearer <http.api_tokens or http.dashboard_tokens>)",
            },
            status=401,
            headers={"WWW-Authenticate": 'Bearer realm="trackly"'},
        )

    return operator_auth


def setup(app: web.Application, settings: Settings) -> None:
    """``POST /dashboard/login`` (form field ``token``): sets the cookie and redirects to the dashboard."""

    async def login(request: web.Request) -> web.StreamResponse:
        try:
            form = await request.post()
        except (ValueError, LookupError, AssertionError, HttpProcessingError):  # broken form: boundary, charset
            return _login_page(400, "Send the token as a form field named token.")
        token = form.get("token", "")
        if not isinstance(token, str):  # a file upload named token
            token = ""
        if not valid_token(settings, token):
            return _login_page(401, "That token is not valid.")
        return _with_cookie(settings, _see_dashboard(), token)

    app.router.add_post("/dashboard/login", login)
