"""Prometheus metrics at ``GET /metrics`` (``prometheus-client``; text format 0.0.4, or OpenMetrics on request).

Three sources, all read at scrape time:

* the store (queue depth, sent, delivered, failed by reason, clicks, send rate), so every daemon of a
  deployment reports the same figures; ``trackly_store_up`` is 0 (and these are absent) when the store does
  not answer within 5 s;
* this process's executor (the coordinator's ``counts``: claimed, held, released, requeued, retries, limiter
  waits, sent, failed by reason, ...), as ``trackly_executor_*_total`` counters; a count without a family of
  its own is exported as ``trackly_executor_other_total{count="..."}``;
* this process: alert events by kind, and the standard ``process_*`` / ``python_*`` collectors.

Names follow the Prometheus conventions (``_total`` counters, units in names, ratios 0-1). No label is
called ``instance``: Prometheus sets that one itself. Scrape every 15-60 s; each scrape is a handful of
indexed counts.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from aiohttp import web
from prometheus_client import GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector, CollectorRegistry

from trackly_exec.logs import get_logger
from trackly_exec.store.documents import JsonObject
from trackly_exec.store.events import Event
from trackly_exec.tracking.stats import overview

log = get_logger(__name__)

_events_by_kind: Counter[str] = Counter()
_STORE_TIMEOUT = 5.0

#: executor count -> (counter family without ``_total``, help). Counts ``prefix.X`` go to the labelled families.
EXECUTOR_COUNTERS: dict[str, tuple[str, str]] = {
    "claimed": ("trackly_executor_messages_claimed", "Queued messages claimed by this process's executor."),
    "sent": ("trackly_executor_messages_sent", "Messages a provider accepted, sent by this process."),
    "released": ("trackly_executor_messages_released", "Claimed messages given back to the queue unsent."),
    "requeued": ("trackly_executor_messages_requeued", "Messages put back after retries ran out (transient)."),
    "retries": ("trackly_executor_send_retries", "Messages submitted to a provider again after a transient error."),
    "limiter_waits": ("trackly_executor_limiter_waits", "Chunks that waited for rate-limit tokens before sending."),
    "rate_late_regrants": (
        "trackly_executor_rate_late_regrants",
        "Chunks that woke past their rate-limit slot and took a new one instead of sending late.",
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
    failed = CounterMetricFamily("trackly_messages_failed", "FailedMessage records by reason.", labels=["reason"])
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


class TracklyCollector(Collector):
    """Trackly's own metrics for one scrape: the store snapshot the handler read, plus live process counts."""

    def __init__(self, trackly: Any) -> None:
        self.trackly = trackly
        self.overview: JsonObject | None = None

    def collect(self) -> Iterable[Metric]:
        yield GaugeMetricFamily(
            "trackly_store_up", "1 when the store answered this scrape's counts.", 1 if self.overview is not None else 0
        )
        if self.overview is not None:
            yield from _store_metrics(self.overview)
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


def make_registry(trackly: Any) -> tuple[CollectorRegistry, TracklyCollector]:
    """A registry of its own (not the global one): Trackly's collector and the standard process collectors."""
    registry = CollectorRegistry(auto_describe=False)
    ours = TracklyCollector(trackly)
    registry.register(ours)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry, ours


def setup(app: web.Application, trackly: Any) -> None:
    trackly.bus.subscribe(count_events)
    registry, ours = make_registry(trackly)

    async def metrics(request: web.Request) -> web.Response:
        try:
            ov: JsonObject | None = await asyncio.wait_for(overview(trackly.store), _STORE_TIMEOUT)
        except Exception as exc:  # the process and executor figures still answer
            log.warning("metrics_store_unavailable", error=type(exc).__name__)
            ov = None
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        ours.overview = ov  # read synchronously by the encoder below: no await in between
        try:
            body = encoder(registry)
        finally:
            ours.overview = None
        return web.Response(body=body, headers={"Content-Type": content_type})

    app.router.add_get("/metrics", metrics)
