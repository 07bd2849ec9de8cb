"""Trigger returns at once: the evaluation runs in the background under its lease; the CLI follows it."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from trackly_exec.app import Trackly
from trackly_exec.campaigns import scheduler
from trackly_exec.executor.coordinator import Coordinator
from trackly_exec.store import constants as c
from trackly_exec.store.models import utcnow

from .api_support import cli_create_campaign, create_campaign, post, seed, seed_direct
from .api_support import run_cli as run
from .campaign_fixtures import INSIDE, phone_for


@pytest.fixture
async def gate(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[asyncio.Event]:
    """Holds every evaluation until set (a deterministic stand-in for a long evaluation)."""
    event = asyncio.Event()
    real = scheduler.evaluate

    async def held(*args: Any, **kw: Any) -> Any:
        await event.wait()
        return await real(*args, **kw)

    monkeypatch.setattr(scheduler, "evaluate", held)
    yield event
    event.set()


async def _campaign(cl: TestClient[Any, Any], n: int = 30) -> dict[str, Any]:
    ids = await seed(cl)
    await post(
        cl,
        f"/sending-lists/{ids['list']}/contacts",
        {"contacts": [{"phone": phone_for(i), "timezone": INSIDE} for i in range(n)]},
        200,
    )
    return dict(await create_campaign(cl, ids))


async def test_trigger_answers_before_the_evaluation(
    admin: TestClient[Any, Any], trackly: Trackly, gate: asyncio.Event
) -> None:
    """The trigger answers 202 with a pending execution while its evaluation has not run; the evaluation then
    queues everyone in the background; ?wait=true answers once it is queued."""
    camp = await _campaign(admin)
    out = await post(admin, f"/campaigns/{camp['id']}/trigger", None, 202)
    eid = out["execution_id"]
    assert out["execution"]["status"] == "pending"
    assert await trackly.db[c.QUEUED].count_documents({}) == 0
    gate.set()
    await scheduler.stop_background(trackly, 30)
    ex = await trackly.db[c.EXECUTIONS].find_one({"_id": eid})
    assert ex["status"] == "queued" and ex["counts"]["queued"] == 30 and ex["counts"]["expected"] == 30
    assert await trackly.db[c.QUEUED].count_documents({"execution_id": eid}) == 30
    await Coordinator(trackly).run_until_idle()  # sent: the one-off campaign has run (force runs it again)
    waited = await post(admin, f"/campaigns/{camp['id']}/trigger?wait=true&force=true", None, 202)
    assert waited["execution"]["status"] == "queued"


async def test_background_evaluation_resumes_after_the_daemon_died(
    admin: TestClient[Any, Any], trackly: Trackly, gate: asyncio.Event
) -> None:
    """An evaluation that dies with its process (cancelled while held) is resumed from its lease by a scheduler,
    and queues everyone exactly once."""
    camp = await _campaign(admin)
    out = await post(admin, f"/campaigns/{camp['id']}/trigger", None, 202)
    await scheduler.stop_background(trackly, 0)  # the process dies: nothing queued, the lease stays
    ex = await trackly.db[c.EXECUTIONS].find_one({"_id": out["execution_id"]})
    assert ex["status"] == "pending" and ex["lease_owner"]
    past = utcnow() - dt.timedelta(seconds=trackly.settings.scheduler.evaluation_lease_seconds + 5)
    await trackly.db[c.EXECUTIONS].update_one({"_id": out["execution_id"]}, {"$set": {"heartbeat_at": past}})
    gate.set()
    assert (await scheduler.Scheduler(trackly).run_until_idle())["resumed"] == 1
    ex = await trackly.db[c.EXECUTIONS].find_one({"_id": out["execution_id"]})
    assert ex["status"] == "queued" and ex["counts"]["queued"] == 30 and ex["attempts"] == 2
    assert await trackly.db[c.QUEUED].count_documents({"execution_id": out["execution_id"]}) == 30


async def test_cli_trigger_follows_the_execution(
    admin_url: str,
    trackly: Trackly,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`campaign trigger` returns the execution at once and follows it (plain lines when not a TTY) until it is
    queued; --detach only prints the execution id; a failed execution exits 1 with its reason."""
    spec = await seed_direct(trackly, n=50)
    await cli_create_campaign(admin_url, spec)
    capsys.readouterr()
    assert await run(admin_url, "campaign", "trigger", "1", "--poll", "0.05", "--every", "0") == 0
    out = capsys.readouterr()
    assert "campaign 1: execution 1 queued; unique 50, queued 49" in out.out
    lines = out.err.strip().splitlines()
    assert lines and lines[-1] == "queued: 50/50 contacts evaluated, 49 queued" and "\r" not in out.err
    await Coordinator(trackly).run_until_idle()
    # at the default interval (2 s) too, the last line is the final state, never an earlier "pending" one
    assert await run(admin_url, "campaign", "trigger", "1", "--again", "--poll", "0.05") == 0
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(("queued: ", "completed: ")) and "50/50 contacts evaluated" in last, last
    await Coordinator(trackly).run_until_idle()
    assert await run(admin_url, "campaign", "trigger", "1", "--detach", "--again") == 0
    assert "execution 3 started" in capsys.readouterr().out
    assert await run(admin_url, "campaign", "follow", "3", "--poll", "0.05") == 0
    assert "execution 3 queued" in capsys.readouterr().out
    await Coordinator(trackly).run_until_idle()
    await trackly.db[c.CREATIVES].update_one({"_id": 1}, {"$set": {"archived": True}})
    assert await run(admin_url, "campaign", "trigger", "1", "--poll", "0.05", "--again") == 1
    assert "failed: creative 1 is archived" in capsys.readouterr().err
