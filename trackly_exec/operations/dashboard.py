"""The live dashboard: ``GET /dashboard`` (one HTML page) polling ``GET /dashboard/summary.json``.

Shows what an operator watching a send needs, every figure with its unit: the queue, the send rate (messages per
second), delivered and failed counts and rates (%), charts over time (send rate, delivered %, failures by reason
per interval) drawn as inline SVG by the page's own small script (no external library or CDN), each campaign's
state (sending -> completed) with its start, end, duration, failures by reason and an ETA while it sends (archived
campaigns are not listed, only counted), alerts grouped by kind and key (one row with a count, not one row per
message), and the customer-webhook outbox backlog.

A poll counts nothing in the store, whatever the number of open pages: the store's figures come from the HTTP
app's one background refresh, :class:`trackly_exec.operations.metrics.StoreFigures` (the figures of ``/metrics``).
A poll asks it for fresh figures (:meth:`~trackly_exec.operations.metrics.StoreFigures.want`): while a dashboard
was polled in the last minute it refreshes every ``http.dashboard_refresh_seconds`` (else every
``http.metrics_refresh_seconds``) and computes this page's part too (:func:`store_part`); a poll answers with the
last such figures and their age (``age_seconds``, shown as "as of N s ago"), and only the first poll after a
quiet spell waits for a refresh. ``live`` is counted in this process, not in the store: its executor's messages
sent and failed (``trackly.executor_counts``) and the send rate they give over the last few polls.

The charts come from :class:`Sampler`: a snapshot of the totals at each background refresh (at most one every
``SAMPLE_SECONDS / 2``), kept in memory for ``HISTORY_MINUTES`` at most; the page derives each interval's rates
from consecutive snapshots. It is read-only and shows aggregates only: counts, campaign names and states, and alert
messages with phone numbers masked.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections import Counter, deque
from importlib.resources import files
from typing import Any

from aiohttp import web

from trackly_exec.logs import get_logger
from trackly_exec.operations.metrics import Figures, StoreFigures, shared_figures
from trackly_exec.store import constants as c
from trackly_exec.store.client import INT_IDS, newest
from trackly_exec.store.documents import CampaignDoc, ExecutionDoc, Filter, JsonObject
from trackly_exec.store.models import ExecutionStatus
from trackly_exec.store.phones import mask_text
from trackly_exec.tracking.stats import campaign_stats, count, overview

log = get_logger(__name__)

SAMPLE_SECONDS = 10.0
HISTORY_MINUTES = 120
ALERT_WINDOW = 1000  # latest events grouped into alert rows
#: The first poll after a quiet spell waits this long at most for the background refresh (then answers 503).
FIRST_WAIT_SECONDS = 20.0
#: A poll holding figures older than MAX_AGE_SECONDS waits this long at most for fresher ones, then shows them.
STALE_WAIT_SECONDS = 3.0
#: Figures older than this (from before a quiet spell) make a poll wait for the next refresh.
MAX_AGE_SECONDS = 60.0
#: The live send rate: this process's executor counts over the last polls within this window.
LIVE_WINDOW_SECONDS = 15.0


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
    """The campaigns with an execution under way (evaluating or sending, however old), then the newest others, up to
    ``limit`` rows in all (the busy ones always: twenty newer drafts hid the one sending)."""
    open_states = [ExecutionStatus.PENDING.value, ExecutionStatus.EVALUATING.value, ExecutionStatus.QUEUED.value]
    busy_ids = sorted(
        {
            int(cid)
            async for d in store.db[c.EXECUTIONS].find({"status": {"$in": open_states}}, {"campaign_id": 1})
            if isinstance(cid := d.get("campaign_id"), int)
        },
        reverse=True,
    )
    busy = [d async for d in store.db[c.CAMPAIGNS].find({"_id": {"$in": busy_ids}, **NOT_ARCHIVED})] if busy_ids else []
    newest_first = store.db[c.CAMPAIGNS].find({**NOT_ARCHIVED, **INT_IDS}).sort("_id", -1).limit(limit)
    seen = {d["_id"] for d in busy}
    campaigns = sorted(busy, key=lambda d: -int(d["_id"])) + [d async for d in newest_first if d["_id"] not in seen]
    campaigns = campaigns[: max(limit, len(busy))]
    per = await campaign_stats(store, [int(d["_id"]) for d in campaigns])
    since = now - dt.timedelta(seconds=60)
    rows = []
    for d in campaigns:
        cid = int(d["_id"])
        stats = per.get(cid, {})
        last = await newest(store.db, c.EXECUTIONS, {"campaign_id": cid})
        queued = int(stats.get("queued", 0))
        state = _state(d, last, queued)
        started = _aware(last.get("triggered_at")) if last else None
        ended = _aware(last.get("completed_at")) if last else None
        rate, eta = 0.0, None
        if queued:
            rate = await count(store, c.SENT, {"campaign_id": cid, "timestamp": {"$gte": since}}) / 60.0
            # no ETA while nothing of it can go: paused, or every message held (billing, quiet hours, the provider)
            if rate > 0 and state == "sending":
                held = await count(store, c.QUEUED, {"campaign_id": cid, "not_before": {"$gt": now}})
                eta = round(queued / rate, 0) if held < queued else None
        rows.append(
            {
                "id": cid,
                "name": mask_text(d.get("name")) or f"campaign {cid}",
                "status": d.get("status"),
                "state": state,
                "next_run_at": d.get("next_run_at"),
                "started_at": started,
                "ended_at": ended,
                "duration_seconds": round(((ended or now) - started).total_seconds(), 1) if started else None,
                "send_rate_per_second": round(rate, 2),
                "eta_seconds": eta,
                "last_execution": None
                if last is None
                else {
                    "id": last["_id"],
                    "status": last.get("status"),
                    "reason": mask_text(last.get("reason")) or None,
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


async def store_part(trackly: Any, now: dt.datetime, *, limit: int = 20) -> JsonObject:
    """What the page shows besides the totals: the outbox backlog, the campaigns, the archived count, the alerts."""
    from trackly_exec.api.ops import outbox_summary

    store = trackly.store
    return {
        "outbox": (await outbox_summary(store, now)).model_dump(mode="json"),
        "campaigns": await _campaign_rows(store, limit, now),
        "archived_campaigns": await count(store, c.CAMPAIGNS, {"archived": True}),
        "alerts": await grouped_alerts(store),
    }


async def summary(trackly: Any, *, limit: int = 20, sampler: Sampler | None = None) -> JsonObject:
    """The page's figures counted now, in one go (tests, ``trackly`` tools): the served page reads
    :class:`DashboardFeed` instead, which never counts at poll time."""
    now = trackly.now()
    ov = await overview(trackly.store, now)
    if sampler is not None:
        sampler.add(ov, now)
    return {
        "instance": trackly.instance,
        "now": now,
        "as_of": now,
        "overview": ov,
        **await store_part(trackly, now, limit=limit),
        "series": list(sampler.samples) if sampler is not None else [],
        "sample_seconds": SAMPLE_SECONDS,
    }


class LiveRate:
    """This process's executor counts (``trackly.executor_counts``), and the send rate they give over the polls of
    the last ``LIVE_WINDOW_SECONDS``: live throughput without counting the store."""

    def __init__(self, trackly: Any) -> None:
        self.trackly = trackly
        self.points: deque[tuple[float, int]] = deque()

    def read(self, at: float | None = None) -> JsonObject:
        at = time.monotonic() if at is None else at
        counts: Counter[str] = Counter()
        executors = list(getattr(self.trackly, "executor_counts", []))
        for one in executors:
            counts.update(one)
        sent = int(counts.get("sent", 0))
        failed = sum(n for k, n in counts.items() if k.startswith("failed."))
        if not self.points or at - self.points[-1][0] >= 1.0:
            self.points.append((at, sent))
        while len(self.points) > 2 and at - self.points[0][0] > LIVE_WINDOW_SECONDS:
            self.points.popleft()
        (t0, s0), (t1, s1) = self.points[0], self.points[-1]
        return {
            "executors": len(executors),
            "sent": sent,
            "failed": failed,
            "claimed": int(counts.get("claimed", 0)),
            "send_rate_per_second": round(max(s1 - s0, 0) / (t1 - t0), 2) if executors and t1 - t0 >= 1.0 else None,
        }


class DashboardFeed:
    """``summary.json`` for any number of polls: the last background figures (``figures.last_extra``) with their
    age, plus this process's live counts. The figures' part is serialised once per refresh."""

    def __init__(self, trackly: Any, figures: StoreFigures, sampler: Sampler, *, limit: int = 20) -> None:
        self.trackly = trackly
        self.figures = figures
        self.sampler = sampler
        self.live = LiveRate(trackly)
        self._static: tuple[int, str] | None = None  # (refresh number, JSON object without its closing brace)
        self._series: tuple[tuple[int, Any], str] | None = None

        async def extra(ov: JsonObject, now: dt.datetime) -> JsonObject:
            return await store_part(trackly, now, limit=limit)

        figures.extra = extra
        figures.listeners.append(lambda ov, now: sampler.add(ov, now))

    def _static_json(self, snap: Figures) -> str:
        if self._static is None or self._static[0] != snap.number:
            part = {
                "instance": self.trackly.instance,
                "as_of": snap.as_of,
                "overview": snap.overview,
                **(snap.extra or {}),
                "sample_seconds": SAMPLE_SECONDS,
            }
            self._static = (snap.number, _dumps(part)[:-1])
        return self._static[1]

    def _series_json(self) -> str:
        samples = self.sampler.samples
        key = (len(samples), id(samples[-1]) if samples else None)
        if self._series is None or self._series[0] != key:
            self._series = (key, _dumps(list(samples)))
        return self._series[1]

    async def body(self) -> str | None:
        """The JSON of one poll; None when no figures could be counted yet (the first refresh is late)."""
        self.figures.want()
        # with figures in hand, however old, a poll waits briefly: a stalled store would hold every poll 20 s,
        # while the last figures, shown with their age, say what was known
        wait = FIRST_WAIT_SECONDS if self.figures.last_extra is None else STALE_WAIT_SECONDS
        snap = await self.figures.wait_extra(max_age=MAX_AGE_SECONDS, timeout=wait)
        if snap is None:
            return None
        live = {"now": self.trackly.now(), "age_seconds": round(snap.age(), 1), "live": self.live.read()}
        return f'{self._static_json(snap)}, "series": {self._series_json()}, {_dumps(live)[1:]}'


SAMPLER: web.AppKey[Sampler] = web.AppKey("dashboard_sampler", Sampler)
FEED: web.AppKey[DashboardFeed] = web.AppKey("dashboard_feed", DashboardFeed)


def setup(app: web.Application, trackly: Any) -> None:
    page = files("trackly_exec.operations").joinpath("static/dashboard.html").read_bytes()
    sampler = Sampler()
    app[SAMPLER] = sampler
    feed = DashboardFeed(trackly, shared_figures(app, trackly), sampler)
    app[FEED] = feed

    async def index(request: web.Request) -> web.Response:
        return web.Response(body=page, content_type="text/html", charset="utf-8")

    async def data(request: web.Request) -> web.Response:
        body = await feed.body()
        if body is None:
            return web.json_response(
                {"status": "counting", "message": "the store's figures are being counted: try again shortly"},
                status=503,
                headers={"Retry-After": "2"},
            )
        return web.Response(text=body, content_type="application/json", headers={"Cache-Control": "no-store"})

    async def root(request: web.Request) -> web.Response:
        raise web.HTTPFound("/dashboard")

    app.router.add_get("/", root)
    app.router.add_get("/dashboard", index)
    app.router.add_get("/dashboard/summary.json", data)


def _dumps(obj: Any) -> str:
    return json.dumps(obj, default=lambda o: o.isoformat() if hasattr(o, "isoformat") else str(o))
