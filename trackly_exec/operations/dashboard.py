"""The live dashboard: ``GET /dashboard`` (one HTML page) polling ``GET /dashboard/summary.json``.

Shows what an operator watching a send needs, every figure with its unit: the queue, the send rate (messages per
second), delivered and failed counts and rates (%), charts over time (send rate, delivered %, failures by reason
per interval) drawn as inline SVG by the page's own small script (no external library or CDN), each campaign's
state (sending -> completed) with its start, end, duration, failures by reason and an ETA while it sends (archived
campaigns are not listed, only counted), alerts grouped by kind and key (one row with a count, not one row per
message), and the customer-webhook outbox backlog.

The charts come from :class:`Sampler`: a snapshot of the totals every ``SAMPLE_SECONDS`` (taken by a background
task while the server runs, and by each summary request), kept in memory for ``HISTORY_MINUTES``; the page derives
each interval's rates from consecutive snapshots. It is read-only and shows aggregates only.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections import deque
from importlib.resources import files
from typing import Any

from aiohttp import web

from trackly_exec.logs import get_logger
from trackly_exec.store import constants as c
from trackly_exec.store.documents import CampaignDoc, ExecutionDoc, Filter, JsonObject
from trackly_exec.store.phones import mask_text
from trackly_exec.tracking.stats import campaign_stats, count, overview

log = get_logger(__name__)

SAMPLE_SECONDS = 10.0
HISTORY_MINUTES = 120
ALERT_WINDOW = 1000  # latest events grouped into alert rows


class Sampler:
    """Snapshots of the totals over time (in memory, per process)."""

    def __init__(self, maxlen: int = int(HISTORY_MINUTES * 60 / SAMPLE_SECONDS)) -> None:
        self.samples: deque[JsonObject] = deque(maxlen=maxlen)

    def add(self, ov: JsonObject, now: dt.datetime, *, min_gap: float = SAMPLE_SECONDS / 2) -> None:
        if self.samples and (now - self.samples[-1]["at"]).total_seconds() < min_gap:
            return
        self.samples.append(
            {
                "at": now,
                "sent": ov.get("sent", 0),
                "delivered": ov.get("delivered", 0),
                "undelivered": ov.get("undelivered", 0),
                "failed_by_reason": dict(ov.get("failed_by_reason", {})),
            }
        )

    async def sample(self, store: Any, now: dt.datetime) -> None:
        self.add(await overview(store, now), now, min_gap=0)


SAMPLER: web.AppKey[Sampler] = web.AppKey("dashboard_sampler", Sampler)


def _aware(value: Any) -> dt.datetime | None:
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.UTC)
    return None


def _state(campaign: CampaignDoc, last: ExecutionDoc | None, queued: int) -> str:
    if campaign.get("status") == "paused":
        return "paused"
    if last is None:
        return "scheduled" if campaign.get("next_run_at") else "idle"
    status = str(last.get("status"))
    if status == "queued":
        return "sending" if queued else "finishing"
    return status


#: Campaigns the dashboard lists: not archived (``$in: [False, None]``: records made before archiving existed have
#: no field). An archived campaign is retired (it had no running execution and is never scheduled again): its
#: figures stay in the totals, and the page says how many are hidden.
NOT_ARCHIVED: Filter = {"archived": {"$in": [False, None]}}


async def _campaign_rows(store: Any, limit: int, now: dt.datetime) -> list[JsonObject]:
    campaigns = [d async for d in store.db[c.CAMPAIGNS].find(NOT_ARCHIVED).sort("_id", -1).limit(limit)]
    per = await campaign_stats(store, [int(d["_id"]) for d in campaigns])
    since = now - dt.timedelta(seconds=60)
    rows = []
    for d in campaigns:
        cid = int(d["_id"])
        stats = per.get(cid, {})
        last = await store.db[c.EXECUTIONS].find_one({"campaign_id": cid}, sort=[("_id", -1)])
        queued = int(stats.get("queued", 0))
        state = _state(d, last, queued)
        started = _aware(last.get("triggered_at")) if last else None
        ended = _aware(last.get("completed_at")) if last else None
        rate = 0.0
        if queued:
            rate = await count(store, c.SENT, {"campaign_id": cid, "timestamp": {"$gte": since}}) / 60.0
        rows.append(
            {
                "id": cid,
                "name": d.get("name") or f"campaign {cid}",
                "status": d.get("status"),
                "state": state,
                "next_run_at": d.get("next_run_at"),
                "started_at": started,
                "ended_at": ended,
                "duration_seconds": round(((ended or now) - started).total_seconds(), 1) if started else None,
                "send_rate_per_second": round(rate, 2),
                "eta_seconds": round(queued / rate, 0) if queued and rate > 0 else None,
                "last_execution": None
                if last is None
                else {
                    "id": last["_id"],
                    "status": last.get("status"),
                    "reason": last.get("reason"),
                    "counts": last.get("counts", {}),
                    "triggered_at": last.get("triggered_at"),
                },
                **stats,
            }
        )
    return rows


async def grouped_alerts(store: Any, window: int = ALERT_WINDOW) -> list[JsonObject]:
    """The latest ``window`` events grouped by (kind, key): one row each with a count, first and last time and the
    latest message, newest group first."""
    groups: dict[tuple[str, str], JsonObject] = {}
    async for e in (
        store.db[c.EVENTS]
        .find({}, {"kind": 1, "key": 1, "severity": 1, "message": 1, "created_at": 1})
        .sort("created_at", -1)
        .limit(window)
    ):
        kind = str(e.get("kind") or "")
        key = (kind, str(e.get("key") or kind))
        at = _aware(e.get("created_at"))
        g = groups.get(key)
        if g is None:
            groups[key] = {
                "kind": kind,
                "key": key[1],
                "severity": e.get("severity"),
                "count": 1,
                "message": mask_text(e.get("message")),
                "first_at": at,
                "last_at": at,
            }
        else:
            g["count"] += 1
            g["first_at"] = at
    return list(groups.values())


async def summary(trackly: Any, *, limit: int = 20, sampler: Sampler | None = None) -> JsonObject:
    from trackly_exec.api.ops import outbox_summary

    store = trackly.store
    now = trackly.now()
    ov = await overview(store, now)
    if sampler is not None:
        sampler.add(ov, now)
    return {
        "instance": trackly.instance,
        "now": now,
        "overview": ov,
        "outbox": (await outbox_summary(store, now)).model_dump(mode="json"),
        "campaigns": await _campaign_rows(store, limit, now),
        "archived_campaigns": await store.db[c.CAMPAIGNS].count_documents({"archived": True}),
        "alerts": await grouped_alerts(store),
        "series": list(sampler.samples) if sampler is not None else [],
        "sample_seconds": SAMPLE_SECONDS,
    }


def setup(app: web.Application, trackly: Any) -> None:
    page = files("trackly_exec.operations").joinpath("static/dashboard.html").read_bytes()
    sampler = Sampler()
    app[SAMPLER] = sampler

    async def index(request: web.Request) -> web.Response:
        return web.Response(body=page, content_type="text/html", charset="utf-8")

    async def data(request: web.Request) -> web.Response:
        return web.json_response(await summary(trackly, sampler=sampler), dumps=_dumps)

    async def root(request: web.Request) -> web.Response:
        raise web.HTTPFound("/dashboard")

    async def sample_loop() -> None:
        while True:
            with contextlib.suppress(Exception):  # the store may be briefly unreachable: keep sampling
                await sampler.sample(trackly.store, trackly.now())
            await asyncio.sleep(SAMPLE_SECONDS)

    async def start_sampling(app: web.Application) -> Any:
        task = asyncio.create_task(sample_loop(), name="dashboard-sampler")
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    app.cleanup_ctx.append(start_sampling)
    app.router.add_get("/", root)
    app.router.add_get("/dashboard", index)
    app.router.add_get("/dashboard/summary.json", data)


def _dumps(obj: Any) -> str:
    import json

    return json.dumps(obj, default=lambda o: o.isoformat() if hasattr(o, "isoformat") else str(o))
