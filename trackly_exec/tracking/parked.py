"""Parked delivery reports: reports that arrived before the executor recorded their message.

A provider can report faster than we record the send (the executor records right after the provider's
answer; a delivery report can overtake it). Such a report is not dropped, and the provider is not asked to
retry (Twilio never retries a status callback): it is parked in ``delivery_reports`` and applied by this
component as soon as the message is recorded — as MessageSent, or as a NO_RESPONSE dead letter that the
report then resolves. A parked report whose message ended any other way, or that is older than
``MAX_AGE`` (CM retries for 7 days, so nothing legitimate waits longer), is dropped.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from typing import TYPE_CHECKING

from trackly_exec.app import Loop
from trackly_exec.drivers.contract import DeliveryReport
from trackly_exec.logs import get_logger
from trackly_exec.store import constants as c
from trackly_exec.store.documents import ParkedReportDoc
from trackly_exec.tracking.delivery import ingest
from trackly_exec.tracking.delivery import park_reports as park  # noqa: F401  (re-exported)

if TYPE_CHECKING:
    from trackly_exec.app import Trackly

log = get_logger(__name__)

MAX_AGE = dt.timedelta(days=7)
BATCH = 1000
INTERVAL_SECONDS = 2.0


async def replay(trackly: Trackly, *, now: dt.datetime | None = None) -> int:
    """Apply the parked reports whose message is recorded now; returns how many changed a message."""
    col = trackly.db[c.DELIVERY_REPORTS]
    docs = await col.find({}).sort("received_at", 1).limit(BATCH).to_list(None)
    if not docs:
        return 0
    now = now or trackly.now()
    by_provider: dict[str, list[ParkedReportDoc]] = defaultdict(list)
    for d in docs:
        by_provider[d["provider"]].append(d)
    done: list[str] = []
    changed = 0
    for provider, items in by_provider.items():
        res = await ingest(trackly, provider, [DeliveryReport.model_validate(d["report"]) for d in items], park=False)
        changed += res.updated
        still = set(res.pending_ids)
        done += [d["_id"] for d in items if d["message_id"] not in still or d["received_at"] < now - MAX_AGE]
    if done:
        await col.delete_many({"_id": {"$in": done}})
    return changed


class ParkedReports:
    """Daemon component: replays parked delivery reports every couple of seconds."""

    name = "parked-reports"

    def __init__(self, trackly: Trackly) -> None:
        self.trackly = trackly
        self._loop = Loop("parked-reports", self._tick, INTERVAL_SECONDS, on_error=self._tick_failed)

    async def start(self) -> None:
        self._loop.start()

    async def stop(self, grace: float) -> None:
        await self._loop.stop(grace)

    async def run_until_idle(self) -> int:
        return await replay(self.trackly)

    async def _tick(self) -> None:
        await replay(self.trackly)

    @staticmethod
    def _tick_failed(exc: Exception) -> None:  # the store may be briefly unreachable: try again next round
        log.warning("parked_reports_replay_failed", error=str(exc))
