"""The message log: what happened to each message, by phone, contact, campaign or execution.

A message is in exactly one of three collections (its id is ``_id`` in each): still queued
(QueuedTextMessage), sent (MessageSent: the ``submitted`` / ``delivered`` tristates, provider and provider id)
or failed (FailedMessage: reason and detail). Clicks come from its tracked links (MessageShortLink counters).

:func:`page` reads one page across the three collections in that order (queued, sent, failed; each by ``_id``)
with a cursor ``"<state>:<message id>"``; :func:`export_rows` streams every message of a campaign or an execution
as CSV rows, a batch at a time (memory bounded by the batch, whatever the campaign's size).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from typing import Any

import phonenumbers

from trackly_exec.store import constants as c
from trackly_exec.store.client import Store
from trackly_exec.store.documents import Filter, JsonObject, MessageDoc
from trackly_exec.store.phones import normalize

STATES = ("queued", "sent", "failed")
COLLECTION = {"queued": c.QUEUED, "sent": c.SENT, "failed": c.FAILED}
EXPORT_BATCH = 1000

#: Columns of the CSV export, in order.
COLUMNS = (
    "message_id",
    "state",
    "campaign_id",
    "execution_id",
    "sending_list_id",
    "contact_id",
    "to_number",
    "from_number",
    "variant_key",
    "send_type",
    "segments",
    "encoding",
    "sendtime",
    "sent_at",
    "submitted",
    "delivered",
    "delivery_status",
    "delivery_error_code",
    "delivered_at",
    "provider",
    "provider_message_id",
    "cost",
    "reason",
    "detail",
    "failed_at",
    "not_before",
    "held",
    "clicks",
    "human_clicks",
)


def lookup_phone(raw: str, region: str = "US") -> str | None:
    """``raw`` in E.164 for a lookup: a valid number normalised as on import; else any number that parses (records
    keep what was sent, so a number that is no longer valid can still be found). None when it does not parse."""
    found = normalize(raw, region)
    if found is not None:
        return found
    text = raw.strip()
    if text.startswith("00") and text[2:3].isdigit():
        text = "+" + text[2:]
    try:
        num = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_possible_number(num):
        return None
    return phonenumbers.format_number(num, phonenumbers.PhoneNumberFormat.E164)


def _iso(value: Any) -> str | None:
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        return str(value.isoformat())
    return None if value is None else str(value)


def held(doc: MessageDoc) -> str | None:
    """What holds a queued message back, as the log names it: ``paused`` (its campaign is paused: no due time until
    it is resumed), ``redrive`` (a re-drive is putting it back), ``provider`` (transient provider errors: backoff),
    ``billing`` (the account's balance: backoff), ``hold`` (another hold: quiet hours, a sendtime still to come);
    None when it is not held."""
    if doc.get("paused"):
        return "paused"
    if doc.get("redrive_token"):
        return "redrive"
    if doc.get("not_before") is None:
        return None
    if doc.get("throttled_until") is not None:
        return "provider"
    if doc.get("billing_blocked_since") is not None:
        return "billing"
    return "hold"


def entry(state: str, doc: MessageDoc, clicks: tuple[int, int] = (0, 0)) -> JsonObject:
    """One message as the log shows it (the same keys whatever its state). A paused message has no ``not_before``
    (it has no due time until its campaign is resumed): ``held`` says ``paused``."""
    sent, failed = state == "sent", state == "failed"
    why = held(doc) if state == "queued" else None
    return {
        "message_id": doc["_id"],
        "state": state,
        "campaign_id": doc.get("campaign_id"),
        "execution_id": doc.get("execution_id"),
        "sending_list_id": doc.get("sending_list_id"),
        "contact_id": doc.get("contact_id"),
        "to_number": doc.get("to_number"),
        "from_number": doc.get("from_number"),
        "variant_key": doc.get("variant_key"),
        "send_type": doc.get("send_type", "campaign"),
        "body": doc.get("body"),
        "segments": doc.get("segments"),
        "encoding": doc.get("encoding"),
        "sendtime": _iso(doc.get("sendtime")),
        "sent_at": _iso(doc.get("timestamp")) if sent else None,
        "submitted": doc.get("submitted") if sent else None,
        "delivered": doc.get("delivered") if sent else None,
        "delivery_status": doc.get("delivery_status") if sent else None,
        "delivery_error_code": doc.get("delivery_error_code") if sent else None,
        "delivered_at": _iso(doc.get("delivered_at")) if sent else None,
        "provider": doc.get("provider"),
        "provider_message_id": doc.get("provider_message_id") if sent else None,
        "cost": doc.get("cost") if sent else None,
        "reason": doc.get("reason") if failed else None,
        "detail": doc.get("detail") if failed else None,
        "failed_at": _iso(doc.get("failed_at")) if failed else None,
        "not_before": _iso(doc.get("not_before")) if state == "queued" and why not in ("paused", "redrive") else None,
        "held": why,
        "clicks": clicks[0],
        "human_clicks": clicks[1],
    }


async def clicks_of(store: Store, ids: list[str]) -> dict[str, tuple[int, int]]:
    """``{message id: (clicks, human clicks)}`` over each message's tracked links."""
    out: dict[str, tuple[int, int]] = {}
    if not ids:
        return out
    async for link in store.db[c.SHORT_LINKS].find(
        {"message_id": {"$in": ids}}, {"message_id": 1, "clicks": 1, "human_clicks": 1}
    ):
        a, h = out.get(link["message_id"], (0, 0))
        out[link["message_id"]] = (a + int(link.get("clicks") or 0), h + int(link.get("human_clicks") or 0))
    return out


def parse_cursor(after: str | None) -> tuple[int, str]:
    """``"<state>:<id>"`` -> (index of the state, id); an empty cursor starts at the beginning."""
    if not after:
        return 0, ""
    state, sep, mid = after.partition(":")
    if not sep or state not in STATES:
        raise ValueError('after must be a next_after value of a previous page ("<state>:<message id>")')
    return STATES.index(state), mid


async def page(
    store: Store, match: Filter, *, states: tuple[str, ...] = STATES, limit: int = 100, after: str | None = None
) -> tuple[list[JsonObject], str | None]:
    """One page of the log: ``(entries, next_after)``."""
    start, last_id = parse_cursor(after)
    found: list[tuple[str, MessageDoc]] = []
    more = False
    for i, state in enumerate(STATES):
        if i < start or state not in states:
            continue
        cond: Filter = dict(match)
        if i == start and last_id:
            cond["_id"] = {"$gt": last_id}
        want = limit + 1 - len(found)
        docs = await store.db[COLLECTION[state]].find(cond).sort("_id", 1).limit(want).to_list(None)
        found += [(state, d) for d in docs]
        if len(found) > limit:
            more = True
            found = found[:limit]
            break
    clicks = await clicks_of(store, [d["_id"] for _, d in found])
    items = [entry(s, d, clicks.get(d["_id"], (0, 0))) for s, d in found]
    nxt = f"{found[-1][0]}:{found[-1][1]['_id']}" if more and found else None
    return items, nxt


async def export_rows(store: Store, match: Filter, *, batch: int = EXPORT_BATCH) -> AsyncIterator[list[list[Any]]]:
    """Every message matching ``match`` as CSV rows (:data:`COLUMNS`), ``batch`` messages at a time.

    One cursor per collection, read ``batch`` documents per round trip (no sort, no re-scan per page: paging with
    ``_id > last`` made nx-27017 scan the collection once per batch)."""

    async def rows(state: str, docs: list[MessageDoc]) -> list[list[Any]]:
        clicks = await clicks_of(store, [d["_id"] for d in docs])
        out = []
        for d in docs:
            e = entry(state, d, clicks.get(d["_id"], (0, 0)))
            out.append([e[k] for k in COLUMNS])
        return out

    for state in STATES:
        pending: list[MessageDoc] = []
        async for doc in store.db[COLLECTION[state]].find(dict(match), {"body": 0}).batch_size(batch):
            pending.append(doc)
            if len(pending) >= batch:
                yield await rows(state, pending)
                pending = []
        if pending:
            yield await rows(state, pending)
