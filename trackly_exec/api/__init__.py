"""The admin API (routes per resource, request/response models, the OpenAPI document, contact import, campaign
statistics).

Imports tracking and below.
"""

from __future__ import annotations

from aiohttp import web

from trackly_exec.api import (
    campaigns,  # noqa: F401  (registers its routes)
    edit,  # noqa: F401  (registers its routes)
    ops,  # noqa: F401  (registers its routes)
    resources,  # noqa: F401  (registers its routes)
)
from trackly_exec.api.openapi import document
from trackly_exec.api.routes import (
    PREFIX,
    ROUTES,
    TRACKLY,
    _json,
    _tr,
    app_body_limit,
    auth_middleware,
    error_middleware,
    route,
)
from trackly_exec.app import Trackly
from trackly_exec.store.documents import JsonObject


@route("GET", "/openapi.json", "This API's OpenAPI 3.1 document (no token needed)", auth=False, response=JsonObject)
async def openapi_json(request: web.Request) -> web.Response:
    return _json(document(_tr(request).settings.http.public_url))


def build_subapp(trackly: Trackly) -> web.Application:
    sub = web.Application(
        middlewares=[error_middleware, auth_middleware], client_max_size=app_body_limit(trackly.settings)
    )
    sub[TRACKLY] = trackly
    for r in ROUTES:
        sub.router.add_route(r.method, r.path, r.handler)
    return sub


def setup(app: web.Application, trackly: Trackly) -> None:
    """Mount the admin API at ``/api/v1``."""
    app.add_subapp(PREFIX, build_subapp(trackly))
