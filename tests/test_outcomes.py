"""executor/outcomes.py: the records a claimed message ends in."""

from __future__ import annotations

import datetime as dt

from trackly_exec.executor import claims, redrive
from trackly_exec.executor.outcomes import failed_doc
from trackly_exec.store.models import FailureReason

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
