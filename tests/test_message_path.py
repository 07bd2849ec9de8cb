"""The path of one message: how many files of the package it crosses from the scheduler to the customer's webhook.

One campaign with one contact, due now, runs through the real stages: the scheduler triggers it (evaluation and
queuing), the executor sends it through the Twilio fake, the fake's signed status callback reaches the daemon's
webhook over HTTP, the delivery is recorded and the outbox POSTs the customer's webhook to a local receiver. A
profiler hook records the file of every function called in ``trackly_exec`` or ``trackly_drivers`` meanwhile
(setup excluded). The count is printed (``pytest -s``) and held under a ceiling, so that a change spreading one
message over many more files is noticed. The provider fake (``trackly_exec/testing``) plays the provider: its
files are listed apart and not counted.
"""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any

import trackly_drivers
from aiohttp import web

import trackly_exec
from trackly_exec.campaigns.scheduler import Scheduler
from trackly_exec.config import Settings
from trackly_exec.executor.coordinator import Coordinator
from trackly_exec.store import constants as c
from trackly_exec.store.client import Store
from trackly_exec.store.models import utcnow
from trackly_exec.testing.fakes.twilio import TwilioFake
from trackly_exec.tracking.outbox import Outbox

from .campaign_fixtures import contact, seed_campaign
from .tracking_support import TW_SID, TW_TOKEN, start_daemon

#: Files crossed when this test was written (38), plus a small margin.
CEILING = 41

PACKAGE = Path(trackly_exec.__file__).resolve().parent
DRIVERS = Path(trackly_drivers.__file__).resolve().parent
#: The stages, bottom up (CONTRIBUTING.md), to print the files grouped.
STAGES = ("(top level)", "store", "drivers", "trackly_drivers", "app", "campaigns", "executor", "tracking", "api")
STAGES += ("operations", "daemon", "cli")


class _Files:
    """A profiler hook: the files of the package (and the built-in drivers) whose functions are called, in order."""

    def __init__(self) -> None:
        self.seen: dict[str, None] = {}  # insertion-ordered set
        self._cache: dict[str, str | None] = {}

    def _name(self, filename: str) -> str | None:
        if filename not in self._cache:
            path = Path(filename).resolve()
            name = None
            if path.is_relative_to(PACKAGE):
                name = "trackly_exec/" + path.relative_to(PACKAGE).as_posix()
            elif path.is_relative_to(DRIVERS):
                name = "trackly_drivers/" + path.relative_to(DRIVERS).as_posix()
            self._cache[filename] = name
        return self._cache[filename]

    def hook(self, frame: FrameType, event: str, arg: Any) -> None:
        if event == "call":
            name = self._name(frame.f_code.co_filename)
            if name is not None and name not in self.seen:
                self.seen[name] = None

    def __enter__(self) -> _Files:
        threading.setprofile(self.hook)
        sys.setprofile(self.hook)
        return self

    def __exit__(self, *exc: object) -> None:
        sys.setprofile(None)
        threading.setprofile(None)  # type: ignore[arg-type]


async def _receiver() -> tuple[web.AppRunner, str, list[bytes]]:
    """The customer's endpoint on loopback: records each body, answers 200."""
    got: list[bytes] = []

    async def handle(request: web.Request) -> web.Response:
        got.append(await request.read())
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hook", handle)
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}/hook", got


def _stage(name: str) -> str:
    parts = name.split("/")
    if parts[0] == "trackly_drivers":
        return "trackly_drivers"
    if parts[1] == "app.py":
        return "app"
    return parts[1] if len(parts) > 2 else "(top level)"


async def test_one_message_scheduler_to_customer_webhook(settings: Settings, store: Store) -> None:
    """One message from the scheduler to the customer's webhook crosses at most CEILING files."""
    fake = await TwilioFake(account_sid=TW_SID, auth_token=TW_TOKEN).start()
    fake.dlr_outcome = lambda e: "delivered"
    runner, url, got = await _receiver()
    try:
        async for d in start_daemon(settings, store, drivers={"twilio": {"base_url": fake.url}}):
            d.trackly.settings.http.public_url = d.url  # Twilio's callbacks go to this server
            await seed_campaign(
                store,
                contacts=[contact(1)],
                list_kw={"driver": "twilio"},
                campaign_kw={"schedule": {"at": utcnow()}},
            )
            await store[c.ACCOUNTS].update_one({"_id": 1}, {"$set": {"webhook_url": url, "webhook_secret": "s"}})
            scheduler, coordinator, outbox = Scheduler(d.trackly), Coordinator(d.trackly), Outbox(d.trackly)
            try:
                with _Files() as files:
                    assert (await scheduler.run_until_idle())["started"] == 1
                    await coordinator.run_until_idle()
                    assert await fake.flush_reports() == 1 and not fake.report_failures
                    assert (await outbox.run_until_idle())["delivered"] == 1
            finally:
                await coordinator.stop(1)
                await outbox.stop(1)
                await scheduler.stop(1)
            [sent] = await store[c.SENT].find({}).to_list(None)
            assert sent["delivered"] is True
            [body] = got
            assert json.loads(body)["id"] == sent["_id"] and json.loads(body)["delivered"] is True
    finally:
        await runner.cleanup()
        await fake.stop()

    counted = [f for f in files.seen if not f.startswith("trackly_exec/testing/")]
    by_stage: dict[str, list[str]] = {}
    for f in counted:
        by_stage.setdefault(_stage(f), []).append(f)
    print(f"\nThe path of one message: {len(counted)} files; in order of first call:")
    print("  " + ", ".join(n.split("/", 1)[1] for n in counted))
    print("by stage:")
    for stage in sorted(by_stage, key=STAGES.index):
        print(f"  {stage} ({len(by_stage[stage])}): {', '.join(n.split('/', 1)[1] for n in by_stage[stage])}")
    print(f"  not counted, the provider fake: {', '.join(f for f in files.seen if f not in counted)}")
    assert len(counted) <= CEILING, f"one message now crosses {len(counted)} files (ceiling {CEILING})"
