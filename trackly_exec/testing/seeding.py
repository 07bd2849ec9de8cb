"""For tests and benchmarks: a queued message's document as the evaluation writes it (:func:`queued_message`), and
a ``trackly.toml`` written from sections (:func:`config_toml`), so that seeding and child-process configs are
spelled out once."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from typing import Any

from trackly_exec.store.documents import QueuedDoc
from trackly_exec.store.models import entering_queue, utcnow


def queued_message(
    message_id: str,
    *,
    sending_list_id: int,
    contact_id: int,
    to_number: str,
    body: str,
    sendtime: dt.datetime,
    created_at: dt.datetime | None = None,
    account_id: int = 1,
    campaign_id: int = 1,
    execution_id: int = 1,
    creative_id: int = 1,
    variant_key: str = "a",
    from_number: str = "+15550000000",
) -> QueuedDoc:
    """A one-segment GSM-7 campaign message, unclaimed and due at ``sendtime`` (``QueuedTextMessage`` fields)."""
    return {
        "_id": message_id,
        "sending_list_id": sending_list_id,
        "account_id": account_id,
        "campaign_id": campaign_id,
        "execution_id": execution_id,
        "contact_id": contact_id,
        "creative_id": creative_id,
        "variant_key": variant_key,
        "from_number": from_number,
        "to_number": to_number,
        "body": body,
        "length": len(body),
        "segments": 1,
        "encoding": "GSM-7",
        "send_type": "campaign",
        "sendtime": sendtime,
        "created_at": created_at or utcnow(),
        "billing_blocked_since": None,
        "attempts": 0,
        **entering_queue(message_id, sendtime),  # type: ignore[typeddict-item]  # a new message: see store.documents.ClaimFields
    }


def config_toml(sections: Mapping[str, Mapping[str, Any]]) -> str:
    """A ``trackly.toml`` from ``{section: {key: value}}`` (``"drivers.infobip"`` for a sub-table); values are
    JSON literals, which TOML reads as the same strings, numbers, booleans and lists."""
    lines: list[str] = []
    for name, values in sections.items():
        lines += [f"[{name}]", *(f"{k} = {json.dumps(v)}" for k, v in values.items()), ""]
    return "\n".join(lines)
