"""The customer's delivery-status webhook: payload, outbox documents, signature and its verification.

The body is the product document's payload (camelCase, exactly these fields)::

    {"id": "a1b2c3d4e5f60718", "account": 12, "sendingList": 45, "messageCreative": 789,
     "fromNumber": "+15551234567", "toNumber": "+15559876543", "delivered": true, "sendType": "campaign",
     "filterBots": false, "length": 142, "timestamp": "2024-01-15T10:30:00Z"}

``timestamp`` is the MessageSent ``timestamp`` (when the provider accepted the message); ``filterBots`` is the
account's ``filter_bots`` setting (whether its click statistics exclude bot clicks; False by default).
Headers: ``X-Trackly-Event-Id`` (``"<message id>:delivery"``, stable: de-duplicate on it),
``X-Trackly-Timestamp`` (unix seconds of this attempt) and, when the account has a ``webhook_secret``,
``X-Trackly-Signature: v1=<hex HMAC-SHA256(secret, f"{timestamp}.{body}")>``. Receivers check it with
:func:`verify_signature` (or the snippet in the README) and reject timestamps more than 5 minutes old.

Outbox documents come in two forms: one event (``_id`` = the event id, so a duplicate can never be inserted),
or, for the events of one ingestion batch and one account, a batch (``_id`` = ``"batch:<uuid>"``, ``events``:
``[{"id", "payload"}]``): one insert per batch instead of one per message. A batch is attempted once as a whole;
its failed and unattempted events continue as single-event documents.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from trackly_exec.store.documents import JsonObject, OutboxDoc

PENDING, DELIVERED, DEAD, DROPPED = "pending", "delivered", "dead", "dropped"


def iso_z(value: dt.datetime | None) -> str | None:
    """ISO 8601 in UTC with a ``Z`` suffix, second precision (``2024-01-15T10:30:00Z``)."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def event_id(message_id: str) -> str:
    """The stable id of a message's final-delivery-state event."""
    return f"{message_id}:delivery"


def webhook_payload(message: Mapping[str, Any], account: Mapping[str, Any]) -> JsonObject:
    """The product document's payload for one MessageSent document with a final ``delivered`` state."""
    return {
        "id": message["_id"],
        "account": message["account_id"],
        "sendingList": message["sending_list_id"],
        "messageCreative": message.get("creative_id"),
        "fromNumber": message.get("from_number"),
        "toNumber": message.get("to_number"),
        "delivered": message.get("delivered"),
        "sendType": message.get("send_type", "campaign"),
        "filterBots": bool(account.get("filter_bots", False)),
        "length": message.get("length"),
        "timestamp": iso_z(message.get("timestamp")),
    }


def _common(account_id: int, now: dt.datetime, next_at: dt.datetime | None = None, attempts: int = 0) -> OutboxDoc:
    return {
        "account_id": account_id,
        "status": PENDING,
        "attempts": attempts,
        "created_at": now,
        "next_attempt_at": next_at or now,
        "claimed_by": None,
        "last_error": None,
        "last_status": None,
        "delivered_at": None,
    }


def single_entry(
    eid: str,
    account_id: int,
    payload: JsonObject,
    now: dt.datetime,
    *,
    next_at: dt.datetime | None = None,
    attempts: int = 0,
    created_at: dt.datetime | None = None,
) -> OutboxDoc:
    """An outbox document for one event (``_id`` = the event id)."""
    doc: OutboxDoc = {
        "_id": eid,
        "message_id": payload["id"],
        "payload": payload,
        **_common(account_id, now, next_at, attempts),
    }
    if created_at is not None:
        doc["created_at"] = created_at
    return doc


def outbox_documents(account_id: int, events: Sequence[tuple[str, JsonObject]], now: dt.datetime) -> OutboxDoc:
    """One document for ``events`` (``(event id, payload)``) of one account: a single entry or a batch."""
    if len(events) == 1:
        eid, payload = events[0]
        return single_entry(eid, account_id, payload, now)
    return {
        "_id": f"batch:{uuid.uuid4().hex}",
        "events": [{"id": e, "payload": p} for e, p in events],
        **_common(account_id, now),
    }


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """``v1=<hex HMAC-SHA256(secret, f"{timestamp}.{body}")>``."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"v1={mac}"


def verify_signature(
    secret: str, timestamp: str, body: bytes | str, header: str, tolerance: float = 300, *, now: float | None = None
) -> bool:
    """Receiver side: True when ``header`` holds a valid ``v1=`` signature of ``timestamp.body`` and the
    timestamp is within ``tolerance`` seconds of now (older or future timestamps are rejected: replays)."""
    if isinstance(body, str):
        body = body.encode()
    ts = (timestamp or "").strip()
    if not (ts.isascii() and ts.isdigit()):
        return False
    if abs((time.time() if now is None else now) - int(ts)) > tolerance:
        return False
    expected = sign(secret, ts, body)[3:]
    candidates = [p.strip()[3:] for p in (header or "").split(",") if p.strip().startswith("v1=")]
    return any(hmac.compare_digest(expected.encode(), cand.encode()) for cand in candidates)
