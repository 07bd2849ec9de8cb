"""The chaos suite (``tests/chaos``): the fault proxy's promises (default suite), and a small chaos campaign (marked
``chaos``; the full and CI versions run as ``make test-chaos`` / ``make test-chaos-short``)."""

from __future__ import annotations

import os
from typing import Any

import pytest
from trackly_drivers.infobip import InfobipDriver

from trackly_exec.drivers.contract import DriverContext, OutboundMessage
from trackly_exec.testing.fakes.infobip import InfobipFake

from .chaos.faultproxy import FaultProxy
from .chaos.run import Plan, run_campaign

#: mode -> (the provider accepted it, result kinds the driver may report)
PROMISES: dict[str, tuple[bool, set[str]]] = {
    "pass": (True, {"accepted"}),
    "429": (False, {"transient"}),
    "5xx_before": (False, {"transient", "unknown"}),
    "5xx_after": (True, {"transient", "unknown"}),
    "hang_after": (True, {"unknown"}),
    "reset_after": (True, {"unknown"}),
    "reset_before": (False, {"unknown"}),
}


@pytest.mark.parametrize("mode", list(PROMISES))
async def test_fault_proxy_modes(mode: str) -> None:
    """Each proxy mode does what it says to the provider (its ledger) and the driver sees a matching outcome."""
    fake = await InfobipFake().start()
    assert fake.port is not None
    proxy = await FaultProxy(fake.port, retry_after=0.1).start()
    settings: dict[str, Any] = {**fake.driver_settings(), "base_url": proxy.url, "timeout_seconds": 1.0}
    driver = InfobipDriver(InfobipDriver.settings_model.model_validate(settings), DriverContext())
    await driver.startup()
    try:
        proxy.set(mode)
        msgs = [
            OutboundMessage(id=f"m-{mode}-{i}", to=f"+1212200000{i}", sender="+15550001111", body="hi")
            for i in range(3)
        ]
        results = await driver.submit(msgs)
        accepted, kinds = PROMISES[mode]
        assert {r.kind for r in results} <= kinds, results
        assert len(fake.ledger) == (3 if accepted else 0)
        assert proxy.stats[mode] == 1
        proxy.set("pass")
        assert {r.kind for r in await driver.submit(msgs[:1])} == {"accepted"}  # the proxy recovers
    finally:
        await driver.shutdown()
        await proxy.stop()
        await fake.stop()


async def test_fault_proxy_draws_per_request() -> None:
    """A probability plan draws each request from the proxy's seeded generator (the rest pass)."""
    fake = await InfobipFake().start()
    assert fake.port is not None
    proxy = await FaultProxy(fake.port, seed=3).start()
    driver = InfobipDriver(
        InfobipDriver.settings_model.model_validate({**fake.driver_settings(), "base_url": proxy.url}), DriverContext()
    )
    await driver.startup()
    try:
        proxy.set({"5xx_before": 0.5})
        for i in range(20):
            await driver.submit([OutboundMessage(id=f"m{i}", to="+12122000001", sender="+15550001111", body="hi")])
        assert proxy.stats["5xx_before"] + proxy.stats["pass"] == 20
        assert 0 < proxy.stats["5xx_before"] < 20
        assert len(fake.ledger) == proxy.stats["pass"]
    finally:
        await driver.shutdown()
        await proxy.stop()
        await fake.stop()


@pytest.mark.chaos
@pytest.mark.timeout(900)
async def test_chaos_campaign_small() -> None:
    """A 3,000-message chaos campaign (the CI's fault set, a daemon, the store and Redis killed): every invariant."""
    seed = int(os.environ.get("SEED") or 1)
    result = await run_campaign(Plan(**{**Plan.short(seed).__dict__, "messages": 3000}))
    print(result.table())
    assert not result.violations, result.table()
