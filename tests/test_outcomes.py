"""executor/outcomes.py: the records a claimed message ends in."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from trackly_exec.campaigns import reservations
from trackly_exec.config import Settings
from trackly_exec.executor import claims, redrive
from trackly_exec.executor.outcomes import failed_doc
from trackly_exec.store import constants as c
from trackly_exec.store.client import Store
from trackly_exec.store.models import FailureReason

from .executor_support import executor, seed

NOW = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)


def _queued(**extra: object) -> dict[str, object]:
    return {
        "_id": "m1",
        "execution_id": 1,
        "campaign_id": 1,
        "sending_list_id": 1,
        "phone": "+12125550100",
        "text": "hi",
        "sendtime": NOW,
        "not_before": None,
        "sending_at": None,
        **extra,
    }


def test_a_redriven_message_that_fails_again_keeps_its_redrive_count() -> None:
    """The count travels queue -> FailedMessage -> queue: the second re-drive counts 2, the third 3."""
    assert "redrive_count" in claims.CLAIMED_FIELDS  # the executor reads it with the claim
    first = failed_doc(_queued(), FailureReason.PROVIDER_ERROR, "x", NOW)
    assert "redrive_count" not in first
    again = redrive._queue_doc(first, "t1", NOW)
    assert again["redrive_count"] == 1
    second = failed_doc(again, FailureReason.PROVIDER_ERROR, "x", NOW)
    assert second["redrive_count"] == 1
    assert redrive._queue_doc(second, "t2", NOW)["redrive_count"] == 2


async def test_a_list_without_a_cooldown_records_without_settling_reservations(
    settings: Settings, store: Store, fakes: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The executor skips the reservations' round trip for a list without a cooldown (it took none); a list with
    one settles them (tests/test_reservations.py checks what settling does)."""
    settled: list[int] = []
    original = reservations.settle

    async def counted(db: Any, collection: str, records: Any) -> None:
        settled.append(len(records))
        await original(db, collection, records)

    monkeypatch.setattr(reservations, "settle", counted)
    await seed(store, 20)
    coord = await executor(settings, store, fakes)
    counts = await coord.run_until_idle()
    assert counts["sent"] == 20 and settled == []
    await seed(store, 10, first_contact=100, execution_id=2)
    await store.db[c.SENDING_LISTS].update_one({"_id": 1}, {"$set": {"cooldown_minutes": 60}})
    coord2 = await executor(settings, store, fakes)
    counts = await coord2.run_until_idle()
    await coord.trackly.close(close_store=False)
    await coord2.trackly.close(close_store=False)
    assert counts["sent"] == 10 and sum(settled) == 10
