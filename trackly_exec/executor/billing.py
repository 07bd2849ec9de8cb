"""Billing: an atomic conditional debit of the account, refunds, and the billing-blocked backoff.

Cost of a message = its segments x the sending list's ``price_per_segment``. A chunk of messages is debited
with one ``find_one_and_update({_id: account, balance: {$gte: total}}, {$inc: {balance: -total}})``; when the
balance covers only part of it, the longest prefix (FIFO) that fits is debited instead, with the same
conditional update (retried a few times if another process changed the balance meanwhile). Messages that
are not covered are *blocked*: released with ``not_before = now + billing_backoff_minutes`` and
``billing_blocked_since`` set on the first block; once ``billing_ttl_minutes`` have passed since the first
block they become FailedMessage ``BILLING_BLOCKED``.

A send that is not accepted (rejected, transient failures outlasting the retry budget, claim lost before
the send) is refunded. An unknown outcome (NO_RESPONSE) stays charged: it may have been sent. When the
provider reports a different segment count, the difference is settled in the same refund update.

Known window: a process killed between the debit and the send intent leaves its messages to be released by
recovery and billed again when they are sent (an over-charge on crash, never an unpaid send).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from trackly_exec.logs import get_logger
from trackly_exec.store import constants as c
from trackly_exec.store.documents import ClaimedDoc

log = get_logger(__name__)

_RACE_RETRIES = 3


def message_cost(doc: Mapping[str, Any], price_per_segment: float) -> float:
    """What one queued message costs."""
    return round(int(doc.get("segments") or 1) * price_per_segment, 6)


@dataclass
class Debit:
    """The outcome of debiting a chunk."""

    charged: list[ClaimedDoc] = field(default_factory=list)  # paid for, in order
    blocked: list[ClaimedDoc] = field(default_factory=list)  # not covered by the balance
    costs: dict[str, float] = field(default_factory=dict)  # message id -> debited amount


async def debit(db: Any, account_id: int, docs: Sequence[ClaimedDoc], price_per_segment: float) -> Debit:
    """Debit the account for ``docs`` (all of them, or the longest affordable prefix)."""
    out = Debit()
    if price_per_segment <= 0 or not docs:
        out.charged = list(docs)
        out.costs = {d["_id"]: 0.0 for d in docs}
        return out
    costs = [message_cost(d, price_per_segment) for d in docs]
    accounts = db[c.ACCOUNTS]
    total = round(sum(costs), 6)
    if (
        await accounts.find_one_and_update(
            {"_id": account_id, "balance": {"$gte": total}}, {"$inc": {"balance": -total}}, projection={"_id": 1}
        )
        is not None
    ):
        out.charged = list(docs)
        out.costs = {d["_id"]: cost for d, cost in zip(docs, costs, strict=True)}
        return out
    for _ in range(_RACE_RETRIES):
        acc = await accounts.find_one({"_id": account_id}, {"balance": 1})
        balance = float(acc.get("balance") or 0.0) if acc else 0.0
        k, running = 0, 0.0
        while k < len(docs) and round(running + costs[k], 6) <= balance + 1e-9:
            running = round(running + costs[k], 6)
            k += 1
        if k == 0:
            break
        if (
            await accounts.find_one_and_update(
                {"_id": account_id, "balance": {"$gte": running}},
                {"$inc": {"balance": -running}},
                projection={"_id": 1},
            )
            is not None
        ):
            out.charged = list(docs[:k])
            out.costs = {d["_id"]: cost for d, cost in zip(docs[:k], costs[:k], strict=True)}
            out.blocked = list(docs[k:])
            return out
    out.blocked = list(docs)
    return out


async def adjust(db: Any, account_id: int, amount: float) -> None:
    """Credit (positive) or debit (negative) ``amount``: refunds and segment-count corrections."""
    amount = round(amount, 6)
    if amount:
        await db[c.ACCOUNTS].update_one({"_id": account_id}, {"$inc": {"balance": amount}})


def split_blocked(
    docs: Sequence[ClaimedDoc], now: dt.datetime, ttl: dt.timedelta
) -> tuple[list[ClaimedDoc], list[ClaimedDoc], list[ClaimedDoc]]:
    """Sort blocked messages into (expired: dead-letter now, first block, blocked again)."""
    expired: list[ClaimedDoc] = []
    first: list[ClaimedDoc] = []
    again: list[ClaimedDoc] = []
    for d in docs:
        since = d.get("billing_blocked_since")
        if since is None:
            first.append(d)
        elif now - since >= ttl:
            expired.append(d)
        else:
            again.append(d)
    return expired, first, again
