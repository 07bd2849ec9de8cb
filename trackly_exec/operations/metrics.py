"""Prometheus metrics at ``GET /metrics`` (``prometheus-client``; text format 0.0.4, or OpenMetrics on request).

A scrape is cheap: it counts nothing in the store. Three sources:

* the store's figures (queue depth, sent, delivered, failed by reason, clicks, send rate), so every daemon of a
  deployment reports the same figures. Counting them takes seconds on a large queue, so
  :class:`StoreFigures` counts them in the background (every ``http.metrics_refresh_seconds``, one refresh at a
  time, with :class:`trackly_exec.app.Loop`) and a scrape exports the last figures with their age
  (``trackly_store_figures_age_seconds``) and what the last refresh took; they are absent until a refresh has
  succeeded. The live dashboard reads the same figures (it makes them refresh every
  ``http.dashboard_refresh_seconds`` while it is open). ``trackly_store_up`` is a ping of the store at scrape
  time (1 when it answers within ``PING_TIMEOUT`` seconds), with its latency;
* this process's executor (the coordinator's ``counts``: claimed, held, released, requeued, retries, limiter
  waits, sent, failed by reason, ...), as ``trackly_executor_*_total`` counters; a count without a family of
  its own is exported as ``trackly_executor_other_total{count="..."}``;
* this process: alert events by kind, reconciliation outcomes, and the standard ``process_*`` / ``python_*``
  collectors.

Names follow the Prometheus conventions (``_total`` counters, units in names, ratios 0-1). No label is
called ``instance``: Prometheus sets that one itself. Scrape every 15-60 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from prometheus_client import GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector, CollectorRegistry

from trackly_exec.app import Loop
from trackly_exec.logs import get_logger
from trackly_exec.store.documents import JsonObject
from trackly_exec.store.events import Event
from trackly_exec.tracking.stats import overview

log = get_logger(__name__)

_events_by_kind: Counter[str] = Counter()
#: A scrape waits this long for the store's ping (``trackly_store_up``); nothing else it does touches the store.
PING_TIMEOUT = 3.0

#: executor count -> (counter family without ``_total``, help). Counts ``prefix.X`` go to the labelled families.
EXECUTOR_COUNTERS: dict[str, tuple[str, str]] = {
    "claimed": ("trackly_executor_messages_claimed", "Queued messages claimed by this process's executor."),
    "sent": ("trackly_executor_messages_sent", "Messages a provider accepted, sent by this process."),
    "released": ("trackly_executor_messages_released", "Claimed messages given back to the queue unsent."),
    "requeued": ("trackly_executor_messages_requeued", "Messages put back after retries ran out (transient)."),
    "retries": ("trackly_executor_send_retries", "Messages submitted to a provider again after a transient error."),
    "limiter_waits": ("trackly_executor_limiter_waits", "Chunks that waited for rate-limit tokens before sending."),
    "rate_window_waits": (
        "trackly_executor_rate_window_waits",
        "Chunks that waited, late, because their list's sends of the last second had reached its rate plus one chunk.",
    ),
    "retry_rechecked_out": (
        "trackly_executor_retry_rechecked_out",
        "Messages not retried after a transient error because the contact opted out or the campaign was paused.",
    ),
    "limiter_unavailable": ("trackly_executor_limiter_unavailable", "Batches released because Redis did not answer."),
    "provider_transient": ("trackly_executor_provider_transient_errors", "Transient provider errors, per message."),
    "slowdowns": ("trackly_executor_slowdowns", "Times a list's rate was lowered after provider errors."),
    "batches": ("trackly_executor_batches", "Batches run by this process's executor."),
    "batch_errors": ("trackly_executor_batch_errors", "Batches that ended in an unexpected error."),
    "queue_reads": (
        "trackly_executor_queue_reads",
        "Queue documents read by this executor: claim candidates plus claim read-backs (about one per message).",
    ),
    "empty_claims": (
        "trackly_executor_empty_claims",
        "Claims whose every candidate another executor took first (collisions between processes).",
    ),
    "claim_expiring_unsent": (
        "trackly_executor_claim_expiring_unsent",
        "Messages not sent because their batch's claim would not outlast the request (lost, or not renewed in time).",
    ),
    "late_rechecks": (
        "trackly_executor_late_rechecks",
        "Send-time re-checks done again for a chunk whose requests waited more than a second for the provider pool.",
    ),
    "steals": (
        "trackly_executor_steals",
        "Times this process claimed from the whole queue because its own share stayed empty while others' had work.",
    ),
}
EXECUTOR_LABELLED: dict[str, tuple[str, str, str]] = {
    "failed.": ("trackly_executor_messages_failed", "reason", "Messages recorded as failed, by reason."),
    "held.": ("trackly_executor_messages_held", "reason", "Claimed messages held back for later, by reason."),
    "claim_lost_": ("trackly_executor_claims_lost", "stage", "Messages whose claim another executor took over."),
}


async def count_events(events: Sequence[Event]) -> None:
    """EventBus subscriber: count alert events by kind for ``trackly_events_total``."""
    _events_by_kind.update(str(e.kind) for e in events)


def _store_metrics(ov: JsonObject) -> Iterator[Metric]:
    yield GaugeMetricFamily("trackly_queued_messages", "QueuedTextMessage documents not yet processed.", ov["queued"])
    yield GaugeMetricFamily(
        "trackly_claimed_messages", "Queued messages currently claimed by an executor.", ov["claimed"]
    )
    yield CounterMetricFamily("trackly_messages_sent", "MessageSent records (accepted by a provider).", ov["sent"])
    yield CounterMetricFamily("trackly_messages_delivered", "MessageSent records confirmed delivered.", ov["delivered"])
    yield CounterMetricFamily(
        "trackly_messages_undelivered", "MessageSent records reported undelivered.", ov["undelivered"]
    )
    # a gauge: dead letters are re-driven and NO_RESPONSE ones reconciled into MessageSent, so their number goes down
    # (the executor's trackly_executor_messages_failed_total{reason} counts dead-letterings, and only goes up)
    failed = GaugeMetricFamily(
        "trackly_failed_messages", "FailedMessage records (dead letters) now, by reason.", labels=["reason"]
    )
    for reason, n in sorted(ov["failed_by_reason"].items()):
        failed.add_metric([reason], n)
    yield failed
    yield GaugeMetricFamily(
        "trackly_send_rate_messages_per_second",
        "Messages accepted per second over the last minute.",
        ov["send_rate_per_second"],
    )
    yield GaugeMetricFamily(
        "trackly_recent_failure_ratio",
        "Share (0-1) of the messages processed over the last minute that failed.",
        ov["failure_rate_recent"] / 100.0,
    )
    clicks = CounterMetricFamily("trackly_link_clicks", "Short-link clicks.", labels=["bot"])
    clicks.add_metric(["false"], ov["human_clicks"])
    clicks.add_metric(["true"], ov["clicks"] - ov["human_clicks"])
    yield clicks


def executor_metrics(counts: Counter[str]) -> Iterator[Metric]:
    """The executor's counts as ``trackly_executor_*_total`` counter families (every family, zeros included)."""
    plain = {key: CounterMetricFamily(name, help) for key, (name, help) in EXECUTOR_COUNTERS.items()}
    labelled = {
        prefix: CounterMetricFamily(name, help, labels=[label])
        for prefix, (name, label, help) in EXECUTOR_LABELLED.items()
    }
    other = CounterMetricFamily("trackly_executor_other", "Other executor counts, by name.", labels=["count"])
    totals: dict[str, float] = dict.fromkeys(EXECUTOR_COUNTERS, 0)
    for key, n in sorted(counts.items()):
        prefix = next((p for p in EXECUTOR_LABELLED if key.startswith(p)), None)
        if key in totals:
            totals[key] += n
        elif prefix is not None:
            labelled[prefix].add_metric([key[len(prefix) :]], n)
        else:
            other.add_metric([key], n)
    for key, family in plain.items():
        family.add_metric([], totals[key])
    yield from plain.values()
    yield from labelled.values()
    yield other


@dataclass(frozen=True)
class Figures:
    """One refresh's figures: the overview, what the extra part computed from it (the dashboard's campaigns,
    outbox and alerts; ``None`` when that refresh did not compute it), and when it was taken."""

    overview: JsonObject
    extra: JsonObject | None
    taken_at: float  # time.monotonic() when the refresh started counting
    as_of: dt.datetime  # trackly.now() at the same moment
    number: int  # 1, 2, ...: the refreshes that succeeded so far

    def age(self) -> float:
        return max(time.monotonic() - self.taken_at, 0.0)


#: The largest share of the time the background counts may take: a refresh that took ``d`` seconds is followed by
#: the next one no sooner than ``d / STORE_SHARE`` seconds later (so at most 1/20 of the store's time, however many
#: records it holds; the figures' age says how old they are).
STORE_SHARE = 0.05

#: A reader (the dashboard) that asked for figures in the last ``WANT_SECONDS`` makes the refresh run every
#: ``fast_interval`` seconds and compute the extra part too.
WANT_SECONDS = 60.0


class StoreFigures:
    """The store's figures (:func:`~trackly_exec.tracking.stats.overview`), counted in the background: the one
    source of store figures for ``/metrics`` and the dashboard.

    :meth:`refresh` runs every ``interval`` seconds while the HTTP server runs (``start`` / ``stop``), never at
    scrape or poll time, one refresh at a time; a refresh that fails or outlasts ``timeout`` keeps the last figures
    (their age grows) and counts a failure. While a reader has called :meth:`want` in the last ``WANT_SECONDS``
    (the dashboard, on each poll), it runs every ``fast_interval`` seconds instead (never more often than
    :data:`STORE_SHARE` allows for the time a refresh takes) and also computes ``extra``
    (what the dashboard shows besides the totals); :meth:`wait_extra` waits for such a refresh. However many
    readers poll, the store does one refresh per interval. ``listeners`` get every refreshed overview (the
    dashboard's chart samples).
    """

    def __init__(
        self,
        trackly: Any,
        interval: float,
        *,
        timeout: float | None = None,
        fast_interval: float | None = None,
    ) -> None:
        self.trackly = trackly
        self.interval = interval
        self.fast_interval = min(fast_interval, interval) if fast_interval is not None else interval
        self.timeout = timeout if timeout is not None else max(60.0, 4 * interval)
        self.last: Figures | None = None  # the last successful refresh
        self.last_extra: Figures | None = None  # the last successful refresh that computed ``extra``
        self.duration = 0.0  # seconds the last successful refresh took
        self.failures = 0
        self.refreshes = 0  # refreshes started (each counts the store once)
        self.extra: Callable[[JsonObject, dt.datetime], Awaitable[JsonObject]] | None = None
        self.listeners: list[Callable[[JsonObject, dt.datetime], None]] = []
        self.wanted_until = 0.0  # time.monotonic() until which a reader wants fresh figures
        self._done = asyncio.Event()  # set (and replaced) at the end of every refresh, successful or not
        self.loop = Loop("metrics-store-figures", self._tick, interval, on_error=self._failed)

    @property
    def overview(self) -> JsonObject | None:
        return self.last.overview if self.last is not None else None

    @property
    def refreshed_at(self) -> float | None:
        return self.last.taken_at if self.last is not None else None

    @property
    def wanted(self) -> bool:
        return time.monotonic() < self.wanted_until

    async def refresh(self) -> None:
        self.refreshes += 1
        t0, now = time.monotonic(), self.trackly.now()
        try:
            ov = await asyncio.wait_for(overview(self.trackly.store, now), self.timeout)
            for listener in self.listeners:
                listener(ov, now)
            extra = None
            if self.extra is not None and self.wanted:  # decided after the counts: a want() meanwhile is served
                extra = await asyncio.wait_for(self.extra(ov, now), self.timeout)
            number = self.last.number + 1 if self.last is not None else 1
            self.last = Figures(ov, extra, t0, now, number)
            if extra is not None:
                self.last_extra = self.last
            self.duration = time.monotonic() - t0
        finally:
            done, self._done = self._done, asyncio.Event()
            done.set()

    async def _tick(self) -> None:
        try:
            await self.refresh()
        finally:
            self.loop.interval = self.next_interval()

    def next_interval(self) -> float:
        """Seconds until the next refresh: the configured pace (``fast_interval`` while a reader wants figures), but
        never more than :data:`STORE_SHARE` of the time counting: the counts read every record on the embedded store
        (~0.36 s per 100,000 MessageSent), which a dashboard kept open would otherwise ask every 5 s."""
        base = self.fast_interval if self.wanted else self.interval
        return max(base, self.duration / STORE_SHARE)

    async def refresh_now(self) -> bool:
        """One refresh now, outside the loop (tests, a first reading); False (and a failure counted) if it fails."""
        try:
            await self.refresh()
        except Exception as exc:
            self._failed(exc)
            return False
        return True

    def want(self) -> None:
        """A reader wants fresh figures with the extra part: refresh every ``fast_interval`` for the next
        ``WANT_SECONDS`` (at once when nobody wanted them before)."""
        was = self.wanted
        self.wanted_until = time.monotonic() + WANT_SECONDS
        if not was:
            self.loop.interval = self.fast_interval
            self.loop.wake()  # (lost if a refresh is running: its end schedules the next in fast_interval)

    async def wait_extra(self, *, max_age: float, timeout: float) -> Figures | None:
        """The last figures with the extra part; when there are none younger than ``max_age`` seconds, first wait
        (at most ``timeout`` seconds) for the background refresh to make some. Never counts anything itself."""
        deadline = time.monotonic() + timeout
        while self.last_extra is None or self.last_extra.age() > max_age:
            left = deadline - time.monotonic()
            if left <= 0 or not self.loop.running:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._done.wait(), left)
        return self.last_extra

    def _failed(self, exc: Exception) -> None:
        self.failures += 1
        log.warning("metrics_store_refresh_failed", error=type(exc).__name__)

    def start(self) -> None:
        self.loop.start()

    async def stop(self, grace: float = 1.0) -> None:
        await self.loop.stop(grace)

    def metrics(self) -> Iterator[Metric]:
        yield CounterMetricFamily(
            "trackly_store_figures_refresh_failures",
            "Background refreshes of the store's figures that failed or timed out.",
            self.failures,
        )
        if self.last is None:
            return
        yield GaugeMetricFamily(
            "trackly_store_figures_age_seconds",
            "Age of the store's figures (queue, sent, delivered, failed, clicks, rates) exported by this scrape.",
            self.last.age(),
        )
        yield GaugeMetricFamily(
            "trackly_store_figures_refresh_seconds", "Time the last refresh of the store's figures took.", self.duration
        )
        yield from _store_metrics(self.last.overview)


async def ping(store: Any, timeout: float = PING_TIMEOUT) -> float | None:
    """Seconds the store took to answer a ping, or None when it did not within ``timeout``."""
    t0 = time.monotonic()
    try:
        await asyncio.wait_for(store.client.admin.command("ping"), timeout)
    except Exception as exc:
        log.warning("metrics_store_unavailable", error=type(exc).__name__)
        return None
    return time.monotonic() - t0


class TracklyCollector(Collector):
    """Trackly's own metrics for one scrape: the store's ping the handler made, the background figures, and live
    process counts."""

    def __init__(self, trackly: Any, figures: StoreFigures) -> None:
        self.trackly = trackly
        self.figures = figures
        self.ping_seconds: float | None = None

    def collect(self) -> Iterable[Metric]:
        yield GaugeMetricFamily(
            "trackly_store_up",
            "1 when the store answered this scrape's ping.",
            1 if self.ping_seconds is not None else 0,
        )
        if self.ping_seconds is not None:
            yield GaugeMetricFamily(
                "trackly_store_ping_seconds", "Time the store took to answer this scrape's ping.", self.ping_seconds
            )
        clock = getattr(self.trackly, "store_clock", None)
        if clock is not None and clock.synced_at is not None:
            yield GaugeMetricFamily(
                "trackly_clock_offset_seconds",
                "This host's clock minus the store's, as last measured (the daemon times its decisions on the "
                "store's clock).",
                clock.offset,
            )
        yield from self.figures.metrics()
        counts: Counter[str] = Counter()
        for c in getattr(self.trackly, "executor_counts", []):
            counts.update(c)
        yield from executor_metrics(counts)
        events = CounterMetricFamily(
            "trackly_events", "Alert events published by this process, by kind.", labels=["kind"]
        )
        for kind, n in sorted(_events_by_kind.items()):
            events.add_metric([kind], n)
        yield events
        from trackly_exec.tracking.reconcile import COUNTS

        reconciled = CounterMetricFamily(
            "trackly_reconcile",
            "Reconciliation of NO_RESPONSE messages by this process: look-ups asked, and messages found (sent), "
            "rejected, released (sent again), still unknown, unsupported, expired; look-up errors.",
            labels=["outcome"],
        )
        for outcome, n in sorted(COUNTS.items()):
            reconciled.add_metric([outcome], n)
        yield reconciled


def make_registry(trackly: Any, figures: StoreFigures) -> tuple[CollectorRegistry, TracklyCollector]:
    """A registry of its own (not the global one): Trackly's collector and the standard process collectors."""
    registry = CollectorRegistry(auto_describe=False)
    ours = TracklyCollector(trackly, figures)
    registry.register(ours)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry, ours


#: The HTTP app's :class:`StoreFigures` (tests refresh it before scraping), shared by /metrics and the dashboard.
FIGURES: web.AppKey[StoreFigures] = web.AppKey("metrics_store_figures", StoreFigures)


def shared_figures(app: web.Application, trackly: Any) -> StoreFigures:
    """The app's one :class:`StoreFigures` (made, and run while the app runs, by whichever part asks first)."""
    figures = app.get(FIGURES)
    if figures is None:
        http = trackly.settings.http
        figures = StoreFigures(trackly, http.metrics_refresh_seconds, fast_interval=http.dashboard_refresh_seconds)
        app[FIGURES] = figures

        async def refreshing(app: web.Application) -> Any:
            figures.start()
            yield
            await figures.stop()

        app.cleanup_ctx.append(refreshing)
    return figures


def setup(app: web.Application, trackly: Any) -> None:
    trackly.bus.subscribe(count_events)
    figures = shared_figures(app, trackly)
    registry, ours = make_registry(trackly, figures)

    async def metrics(request: web.Request) -> web.Response:
        latency = await ping(trackly.store)
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        ours.ping_seconds = latency  # read synchronously by the encoder below: no await in between
        body = encoder(registry)
        return web.Response(body=body, headers={"Content-Type": content_type})

    app.router.add_get("/metrics", metrics)
