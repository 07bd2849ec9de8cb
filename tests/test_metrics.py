"""/metrics over real HTTP, read back with prometheus-client's own parser (not string matching). The store's
figures come from the background refresh (``StoreFigures``): the helper refreshes them before scraping."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics_families
from prometheus_client.parser import text_string_to_metric_families

from trackly_exec.app import Trackly
from trackly_exec.config import Settings
from trackly_exec.operations.metrics import EXECUTOR_COUNTERS, FIGURES, StoreFigures
from trackly_exec.operations.web import HttpServer
from trackly_exec.store import constants as c
from trackly_exec.store.client import Store
from trackly_exec.store.events import Event, EventKind
from trackly_exec.store.models import epoch_ms, utcnow
from trackly_exec.testing.fakes.control import Behaviour

from .executor_support import executor, seed
from .tracking_support import figures_base

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def get_metrics(server: HttpServer, accept: str | None = None) -> tuple[str, str]:
    async with aiohttp.ClientSession() as http:
        headers = {"Authorization": "Bearer test-token", **({"Accept": accept} if accept else {})}
        async with http.get(server.url + "/metrics", headers=headers) as r:
            assert r.status == 200
            return r.headers["Content-Type"], await r.text()


def figures_of(server: HttpServer) -> StoreFigures:
    assert server.runner is not None
    return server.runner.app[FIGURES]


async def scrape(trackly: Trackly, accept: str | None = None, publish: tuple[Event, ...] = ()) -> tuple[str, str]:
    """Content type and body of one GET /metrics once the store's figures are refreshed (``publish``: alert events
    published once the server runs)."""
    server = HttpServer(trackly)
    await server.start()
    try:
        await trackly.bus.publish(*publish)
        await figures_of(server).refresh_now()
        return await get_metrics(server, accept)
    finally:
        await server.stop(1)


def parse(text: str) -> tuple[dict[str, str], Samples]:
    """{family: type}, {(sample name, labels): value} via the reference parser."""
    types: dict[str, str] = {}
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return types, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


@pytest.fixture
async def seeded(trackly: Trackly) -> AsyncIterator[Trackly]:
    now = utcnow()
    base = figures_base(now)
    await trackly.db[c.SENT].insert_many(
        [{**base, "_id": f"s{i}", "timestamp": now, "delivered": [True, True, True, False][i]} for i in range(4)]
    )
    await trackly.db[c.FAILED].insert_one({**base, "_id": "f1", "reason": "STALE", "failed_at": now})
    await trackly.db[c.QUEUED].insert_many(
        [
            {**base, "_id": "q1", "execution_id": 1, "contact_id": 1, "claimed_by": None, "claimed_at": None},
            # a claim sets its token and its time together (executor.claims.LEASE)
            {**base, "_id": "q2", "execution_id": 1, "contact_id": 2, "claimed_by": "t:x", "claimed_at": epoch_ms(now)},
        ]
    )
    await trackly.db[c.CLICKS].insert_many(
        [{"_id": i, "campaign_id": 3, "bot": i == 0, "clicked_at": now} for i in range(3)]
    )
    yield trackly


async def test_store_figures_parse_with_standard_names(seeded: Trackly) -> None:
    """The store's figures under conventional names: counters end in _total, gauges carry their unit."""
    ctype, text = await scrape(seeded)
    assert ctype.startswith("text/plain; version=0.0.4")
    types, samples = parse(text)
    assert value(samples, "trackly_store_up") == 1 and value(samples, "trackly_store_ping_seconds") >= 0
    assert value(samples, "trackly_store_figures_age_seconds") >= 0
    assert value(samples, "trackly_store_figures_refresh_seconds") > 0
    assert value(samples, "trackly_store_figures_refresh_failures_total") == 0
    assert types["trackly_messages_sent"] == "counter" and value(samples, "trackly_messages_sent_total") == 4
    assert value(samples, "trackly_messages_delivered_total") == 3
    assert value(samples, "trackly_messages_undelivered_total") == 1
    # dead letters now (a re-drive takes them away): a gauge, not a counter that would go down
    assert types["trackly_failed_messages"] == "gauge" and "trackly_messages_failed" not in types
    assert value(samples, "trackly_failed_messages", reason="STALE") == 1
    assert types["trackly_queued_messages"] == "gauge" and value(samples, "trackly_queued_messages") == 2
    assert value(samples, "trackly_claimed_messages") == 1
    assert value(samples, "trackly_send_rate_messages_per_second") == pytest.approx(0.07)
    assert value(samples, "trackly_recent_failure_ratio") == pytest.approx(0.2)
    assert value(samples, "trackly_link_clicks_total", bot="false") == 2
    assert value(samples, "trackly_link_clicks_total", bot="true") == 1
    for name, kind in types.items():  # every counter sample is name_total (or _created); no bare counters
        if kind == "counter":
            assert all(s[0] in (f"{name}_total", f"{name}_created") for s in samples if s[0].startswith(name))


async def test_process_metrics_and_no_instance_label(seeded: Trackly) -> None:
    """The standard process/python collectors are there; no sample has a label named ``instance``."""
    _, text = await scrape(seeded, publish=(Event(kind=EventKind.HIGH_ERROR_RATE, message="x"),))
    types, samples = parse(text)
    assert "python_info" in types and "python_gc_collections" in types
    assert value(samples, "process_resident_memory_bytes") > 0 and "process_cpu_seconds" in types
    assert value(samples, "trackly_events_total", kind=str(EventKind.HIGH_ERROR_RATE)) >= 1
    assert not [key for key in samples if any(label == "instance" for label, _ in key[1])]


async def test_openmetrics_on_request(seeded: Trackly) -> None:
    """A scraper asking for OpenMetrics gets it (and it parses with the OpenMetrics parser)."""
    ctype, text = await scrape(seeded, "application/openmetrics-text; version=1.0.0")
    assert ctype.startswith("application/openmetrics-text") and text.endswith("# EOF\n")
    families = {f.name: f for f in openmetrics_families(text)}
    assert families["trackly_messages_sent"].samples[0].value == 4


async def test_executor_counts_are_exported(settings: Settings, store: Store, fakes: dict[str, Any]) -> None:
    """The executor's counts (claimed, sent, failed by reason, retries, ...) appear as counters after a run."""
    ids = await seed(store, 6, body="Hello {i}")
    await seed(store, 2, body="casino {i}", blocked_words=["casino"], first_contact=100, execution_id=2)
    fakes["infobip"].script(Behaviour("429", retry_after=0.0))  # the first request: retried once
    coord = await executor(settings, store, fakes, claim_batch_size=50)
    try:
        counts = await coord.run_until_idle()
        _, text = await scrape(coord.trackly)
    finally:
        await coord.trackly.close(close_store=False)
    types, samples = parse(text)
    assert len(ids) == 6 and counts["sent"] == 6
    assert value(samples, "trackly_executor_messages_claimed_total") == counts["claimed"] == 8
    assert value(samples, "trackly_executor_messages_sent_total") == 6
    assert value(samples, "trackly_executor_messages_failed_total", reason="BLOCKED_CONTENT") == 2
    assert value(samples, "trackly_executor_send_retries_total") == counts["retries"] > 0
    assert value(samples, "trackly_executor_provider_transient_errors_total") == counts["provider_transient"] > 0
    for family, _ in EXECUTOR_COUNTERS.values():  # every family is there, zero or not
        assert types[family] == "counter" and (f"{family}_total", ()) in samples
    assert value(samples, "trackly_executor_limiter_waits_total") == 0


async def test_store_down_still_answers(settings: Settings) -> None:
    """A store that does not answer: 200 with trackly_store_up 0 and the process figures, never a 500."""
    closed = await Store.connect(settings.mongo.uri.get_secret_value(), settings.mongo.database)
    await closed.client.close()
    app = Trackly(settings, closed)
    try:
        _, text = await scrape(app)
    finally:
        await app.close(close_store=False)
    types, samples = parse(text)
    assert value(samples, "trackly_store_up") == 0 and "trackly_messages_sent" not in types
    assert value(samples, "trackly_store_figures_refresh_failures_total") >= 1
    assert "trackly_store_figures_age_seconds" not in types and "trackly_store_ping_seconds" not in types
    assert "trackly_executor_messages_claimed" in types and "process_cpu_seconds" in types


async def test_scrape_counts_nothing(seeded: Trackly) -> None:
    """A scrape exports the figures of the last background refresh (and their age), never counting itself: records
    added since appear only after the next refresh. The refresh runs by itself while the server runs."""
    server = HttpServer(seeded)
    await server.start()
    try:
        figures = figures_of(server)
        while figures.overview is None:  # the background loop's first refresh, at start
            await asyncio.sleep(0.01)
        first = parse((await get_metrics(server))[1])[1]
        assert value(first, "trackly_messages_sent_total") == 4 and value(first, "trackly_queued_messages") == 2
        await seeded.db[c.SENT].insert_one({"_id": "s-late", "campaign_id": 3, "timestamp": utcnow()})
        await seeded.db[c.QUEUED].delete_one({"_id": "q1"})
        stale = parse((await get_metrics(server))[1])[1]
        assert value(stale, "trackly_messages_sent_total") == 4 and value(stale, "trackly_queued_messages") == 2
        assert value(stale, "trackly_store_figures_age_seconds") >= value(first, "trackly_store_figures_age_seconds")
        assert await figures.refresh_now()
        fresh = parse((await get_metrics(server))[1])[1]
        assert value(fresh, "trackly_messages_sent_total") == 5 and value(fresh, "trackly_queued_messages") == 1
    finally:
        await server.stop(1)


async def test_slow_counts_take_at_most_a_share_of_the_time(seeded: Trackly) -> None:
    """A refresh that takes ``d`` seconds (a store with millions of records) is followed by the next one no sooner
    than ``d / STORE_SHARE`` later, even while a dashboard wants them every few seconds; quick ones keep their
    configured pace."""
    from trackly_exec.operations.metrics import STORE_SHARE

    figures = StoreFigures(seeded, 30.0, fast_interval=5.0)
    await figures._tick()  # a real refresh: quick, the configured pace
    assert figures.duration < 30.0 * STORE_SHARE and figures.loop.interval == 30.0
    figures.want()
    await figures._tick()
    assert figures.loop.interval == 5.0
    figures.duration = 0.4  # as a refresh over ~100,000 records takes on the embedded store
    assert figures.next_interval() == pytest.approx(0.4 / STORE_SHARE) and figures.next_interval() >= 8
    figures.duration = 3.6  # ~1,000,000 records, no dashboard
    figures.wanted_until = 0.0
    assert figures.next_interval() == pytest.approx(3.6 / STORE_SHARE)
