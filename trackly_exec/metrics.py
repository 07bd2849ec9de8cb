"""Prometheus metrics at ``GET /metrics`` (text exposition format 0.0.4).

Figures are read from the store at scrape time (queue depth, sent, delivered, failed by reason, clicks,
send rate), so every daemon of a deployment reports the same truth, plus this process's own counters of
alert events by kind. Scrape every 15-60 s; each scrape is a handful of indexed counts.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from aiohttp import web

from .events import Event
from .stats import overview

_events_by_kind: Counter[str] = Counter()


async def count_events(events: Sequence[Event]) -> None:
    """EventBus subscriber: count alert events by kind for ``trackly_events_total``."""
    _events_by_kind.update(str(e.kind) for e in events)


def _esc(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render(ov: dict[str, Any], events: Counter[str], instance: str) -> str:
    lines: list[str] = []

    def metric(name: str, kind: str, help: str, samples: list[tuple[dict[str, str], float]]) -> None:
        lines.append(f"# HELP {name} {help}")
        lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            lab = ",".join(f'{k}="{_esc(v)}"' for k, v in labels.items())
            lines.append(f"{name}{{{lab}}} {value}" if lab else f"{name} {value}")

    metric("trackly_queue_depth", "gauge", "QueuedTextMessage documents not yet processed.", [({}, ov["queued"])])
    metric("trackly_queue_claimed", "gauge", "Queued messages currently claimed by an executor.", [({}, ov["claimed"])])
    metric("trackly_messages_sent", "gauge", "MessageSent records (accepted by a provider).", [({}, ov["sent"])])
    metric(
        "trackly_messages_delivered",
        "gauge",
        "MessageSent records by delivery state.",
        [({"delivered": "true"}, ov["delivered"]), ({"delivered": "false"}, ov["undelivered"])],
    )
    metric(
        "trackly_messages_failed",
        "gauge",
        "FailedMessage records by reason.",
        [({"reason": r}, n) for r, n in sorted(ov["failed_by_reason"].items())],
    )
    metric(
        "trackly_send_rate_per_second",
        "gauge",
        "Messages accepted per second over the last minute.",
        [({}, ov["send_rate_per_second"])],
    )
    metric(
        "trackly_failure_rate_percent",
        "gauge",
        "Share of processed messages that failed over the last minute.",
        [({}, ov["failure_rate_recent"])],
    )
    metric(
        "trackly_link_clicks",
        "gauge",
        "Short-link clicks.",
        [({"bot": "false"}, ov["human_clicks"]), ({"bot": "true"}, ov["clicks"] - ov["human_clicks"])],
    )
    metric(
        "trackly_events_total",
        "counter",
        "Alert events published by this process, by kind.",
        [({"kind": k, "instance": instance}, n) for k, n in sorted(events.items())],
    )
    return "\n".join(lines) + "\n"


def setup(app: web.Application, trackly: Any) -> None:
    trackly.bus.subscribe(count_events)

    async def metrics(request: web.Request) -> web.Response:
        ov = await overview(trackly.store)
        body = render(ov, _events_by_kind, trackly.instance).encode()
        return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})

    app.router.add_get("/metrics", metrics)
