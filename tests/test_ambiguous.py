"""Answers that may follow an accepted send are never retried blindly (issue 8, part 4).

Measured before: Infobip accept-then-500 / accept-then-504 on the default settings gave 2 sends each, and Twilio
accept-then-503 with ``server_errors = "unknown"`` gave 2 sends. Now every 5xx and every broken answer after the
request was written ends NO_RESPONSE (ambiguous) with exactly one send at the provider; 429 and a refused
connection (nothing written) are retried and sent once. Every test runs against both send clients (the default
aiohttp session and the opt-in keep-alive client).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from trackly_exec.config import Settings
from trackly_exec.executor.coordinator import Coordinator
from trackly_exec.store import constants as c
from trackly_exec.store.client import Store
from trackly_exec.store.models import FailedMessage
from trackly_exec.testing.contract import free_port
from trackly_exec.testing.fakes.control import Behaviour

from .executor_support import FAKES, assert_one_record_each, ids_in, open_trackly, seed, with_executor

PROVIDERS = sorted(FAKES)
SEND_CLIENTS = ["aiohttp", "keepalive"]
#: Every answer after the request was written that is not a documented "not processed".
AMBIGUOUS = [
    ("5xx_after", "500"),
    ("5xx_after", "502"),
    ("5xx_after", "503"),
    ("5xx_after", "504"),
    ("accept_then_reset", None),
    ("accept_then_garbage", None),
    ("accept_then_hang", None),
]


@pytest.fixture(params=SEND_CLIENTS)
def send_client(request: pytest.FixtureRequest) -> str:
    """The driver setting ``send_client``: every test here runs on both clients."""
    return str(request.param)


async def executor(settings: Settings, store: Store, fakes: dict[str, Any], **driver: Any) -> Coordinator:
    drivers = {name: {**fake.driver_settings(), "timeout_seconds": 1.0, **driver} for name, fake in fakes.items()}
    cfg = {"retry_initial_backoff_seconds": 0.01, "retry_max_attempts": 4}
    return Coordinator(await open_trackly(with_executor(settings, drivers, **cfg), store))


async def run(coord: Coordinator) -> dict[str, int]:
    try:
        return dict(await coord.run_until_idle())
    finally:
        await coord.trackly.close(close_store=False)


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize(("mode", "code"), AMBIGUOUS, ids=[f"{m}-{c}" if c else m for m, c in AMBIGUOUS])
async def test_answer_after_accept_is_no_response_and_sent_once(
    settings: Settings,
    store: Store,
    fakes: dict[str, Any],
    provider: str,
    mode: str,
    code: str | None,
    send_client: str,
) -> None:
    """The provider accepts and then fails (5xx, reset, unreadable 2xx, no answer): exactly one send at the
    provider's ledger, and one NO_RESPONSE (ambiguous) record; never retried."""
    [mid] = await seed(store, 1, driver=provider, price=1.0, balance=10.0)
    fakes[provider].script(Behaviour(mode, code=code))
    counts = await run(await executor(settings, store, fakes, send_client=send_client))
    assert fakes[provider].accepted_counts()[mid] == 1, fakes[provider].summary()
    assert fakes[provider].requests == 1 and counts.get("provider_transient", 0) == 0
    rec = FailedMessage.from_doc(await store.db[c.FAILED].find_one({"_id": mid}))
    assert rec.reason == "NO_RESPONSE" and rec.ambiguous is True and rec.provider == provider
    await assert_one_record_each(store, [mid])
    assert (await store.db[c.ACCOUNTS].find_one({"_id": 1}))["balance"] == 9.0  # charged: it may have been sent


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_429_is_retried_and_sent_once(
    settings: Settings, store: Store, fakes: dict[str, Any], provider: str, send_client: str
) -> None:
    """A 429 (throttled: not processed) is retried; the message is sent once and recorded MessageSent."""
    [mid] = await seed(store, 1, driver=provider)
    fakes[provider].script(Behaviour("429"), Behaviour("429"))
    counts = await run(await executor(settings, store, fakes, send_client=send_client))
    assert counts["sent"] == 1 and counts["provider_transient"] == 2 and fakes[provider].requests == 3
    assert fakes[provider].accepted_counts()[mid] == 1
    assert await ids_in(store, c.SENT) == [mid]


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_refused_connection_is_retried_and_sent_once(
    settings: Settings, store: Store, redis_client: Any, provider: str, send_client: str
) -> None:
    """Connection refused (the request was never written) is retried; once the provider listens, it is sent once."""
    [mid] = await seed(store, 1, driver=provider)
    port = free_port()
    fake = FAKES[provider]()
    url = f"http://127.0.0.1:{port}"
    drivers = {provider: {**_settings_for(fake, url), "timeout_seconds": 1.0, "send_client": send_client}}
    cfg = {"retry_initial_backoff_seconds": 0.3, "retry_max_attempts": 30, "retry_budget_seconds": 50.0}
    coord = Coordinator(await open_trackly(with_executor(settings, drivers, **cfg), store))
    run_task = asyncio.create_task(run(coord))
    try:
        while coord.counts["provider_transient"] < 1:  # the first attempt was refused
            await asyncio.sleep(0.02)
        await fake.start(port=port)
        counts = await run_task
    finally:
        await fake.stop()
    assert counts["sent"] == 1 and fake.accepted_counts()[mid] == 1 and fake.requests == 1
    assert await ids_in(store, c.SENT) == [mid]


def _settings_for(fake: Any, url: str) -> dict[str, Any]:
    """The fake's driver settings before it has a port."""
    fake.port = 0
    values = {**fake.driver_settings(), "base_url": url}
    fake.port = None
    return values
