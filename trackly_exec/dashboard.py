"""The live dashboard: ``GET /dashboard`` (one HTML page) polling ``GET /dashboard/summary.json``.

Shows what the product document's "Monitoring Execution" promises: each campaign's live sent / delivered /
failed counts and rates, the queue, the send rate, failures by reason and the latest alert events. It is
read-only and shows aggregates only (no phone numbers or bodies); it is served on ``http.host``, loopback
by default.
"""

from __future__ import annotations

from importlib.resources import files
from typing import Any

from aiohttp import web

from . import constants as c
from .stats import campaign_stats, overview


async def summary(trackly: Any, *, limit: int = 20) -> dict[str, Any]:
    store = trackly.store
    campaigns = [d async for d in store[c.CAMPAIGNS].find({}).sort("_id", -1).limit(limit)]
    per = await campaign_stats(store, [int(d["_id"]) for d in campaigns])
    rows = []
    for d in campaigns:
        cid = int(d["_id"])
        last = await store[c.EXECUTIONS].find_one({"campaign_id": cid}, sort=[("_id", -1)])
        rows.append(
            {
                "id": cid,
                "name": d.get("name") or f"campaign {cid}",
                "status": d.get("status"),
                "next_run_at": d.get("next_run_at"),
                "last_execution": None
                if last is None
                else {
                    "id": last["_id"],
                    "status": last.get("status"),
                    "reason": last.get("reason"),
                    "counts": last.get("counts", {}),
                    "triggered_at": last.get("triggered_at"),
                },
                **per.get(cid, {}),
            }
        )
    events = [
        {"kind": e.get("kind"), "severity": e.get("severity"), "message": e.get("message"), "at": e.get("created_at")}
        async for e in store[c.EVENTS].find({}).sort("created_at", -1).limit(15)
    ]
    return {"instance": trackly.instance, "overview": await overview(store), "campaigns": rows, "events": events}


def setup(app: web.Application, trackly: Any) -> None:
    page = files("trackly_exec").joinpath("static/dashboard.html").read_bytes()

    async def index(request: web.Request) -> web.Response:
        return web.Response(body=page, content_type="text/html", charset="utf-8")

    async def data(request: web.Request) -> web.Response:
        return web.json_response(await summary(trackly), dumps=_dumps)

    async def root(request: web.Request) -> web.Response:
        raise web.HTTPFound("/dashboard")

    app.router.add_get("/", root)
    app.router.add_get("/dashboard", index)
    app.router.add_get("/dashboard/summary.json", data)


def _dumps(obj: Any) -> str:
    import json

    return json.dumps(obj, default=lambda o: o.isoformat() if hasattr(o, "isoformat") else str(o))
