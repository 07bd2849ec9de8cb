"""Recovery of claims whose process died (or stalled past the claim TTL).

A sweep looks at claims older than ``claim_ttl_minutes`` (always longer than the longest provider call, so a
live process is never overtaken while it still waits for the provider):

- **no send intent** (``sending_at`` unset): nothing can have been sent. Released for any executor
  (``claimed_by: None``); a late process holding the old token matches nothing any more (fencing).
- **send intent, no outcome**: the provider may have accepted it. The sweep takes the claim over (fenced on the
  old token, so of several sweepers only one wins each message), records FailedMessage ``NO_RESPONSE`` with
  ``ambiguous=True`` for every message that has no MessageSent, and removes them from the queue. It is never
  re-sent blindly: :mod:`reconcile` asks the provider about it (its ``attempted_at`` is the send intent). If the
  old process records a MessageSent after all, that record wins (see :mod:`outcomes`), and the sweep itself
  re-checks MessageSent after inserting, so the message ends with exactly one record.

The sweep also finishes dead-letter re-drives interrupted by a crash (:func:`trackly_exec.executor.redrive.recover`).

Safe to run in several processes at once. The coordinator sweeps at start-up and every
``recovery_interval_seconds``. Claim ages are measured on the store's clock (``daemon.clock``, see
:mod:`trackly_exec.store.clock`), so a VM whose clock runs ahead does not take live claims for expired ones.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from typing import TYPE_CHECKING

from trackly_exec.executor import claims
from trackly_exec.executor.outcomes import failed_doc, failure_event, insert_records
from trackly_exec.logs import get_logger
from trackly_exec.store import constants as c
from trackly_exec.store.documents import QueuedDoc
from trackly_exec.store.models import FailureReason

if TYPE_CHECKING:
    from trackly_exec.app import Trackly

log = get_logger(__name__)

BATCH = 1000


async def sweep(trackly: Trackly, *, now: dt.datetime | None = None, ttl: dt.timedelta | None = None) -> Counter[str]:
    """One recovery pass. Returns ``{"released": n, "no_response": n}``."""
    db = trackly.db
    now = now or trackly.now()
    ttl = ttl if ttl is not None else dt.timedelta(minutes=trackly.settings.executor.claim_ttl_minutes)
    out: Counter[str] = Counter()
    q = db[c.QUEUED]
    out["released"] += await claims.release_expired(db, now, ttl)
    while True:
        stuck = (
            await q.find(
                {**claims.LEASE.expired(now, ttl), "sending_at": {"$gt": 0}},  # a send intent (epoch ms)
                {"_id": 1, "claimed_by": 1},
            )
            .limit(BATCH)
            .to_list(None)
        )
        if not stuck:
            break
        n = await _dead_letter(trackly, stuck, now)
        out["no_response"] += n
        if n == 0 and len(stuck) < BATCH:
            break
    from trackly_exec.executor.redrive import (
        recover as recover_redrives,  # dead-letter re-drives interrupted by a crash
    )

    out.update({f"redrive_{k}": v for k, v in (await recover_redrives(trackly, now=now)).items()})
    if out["released"] or out["no_response"]:
        log.warning(
            "claims_recovered",
            released=out["released"],
            no_response=out["no_response"],
            ttl_minutes=ttl.total_seconds() / 60,
        )
    return out


async def _dead_letter(trackly: Trackly, stuck: list[QueuedDoc], now: dt.datetime) -> int:
    """Take over ``stuck`` claims (fenced on their old tokens) and record them NO_RESPONSE."""
    db = trackly.db
    token = claims.new_token(f"{trackly.instance}-recovery")
    by_token: dict[str, list[str]] = {}
    for d in stuck:
        held_by = d["claimed_by"]
        assert held_by is not None  # stuck: claimed
        by_token.setdefault(held_by, []).append(d["_id"])
    await claims.take_over(db, by_token, token, now)
    taken = [mid for ids in by_token.values() for mid in ids]
    docs = await db[c.QUEUED].find(claims.LEASE.fence(token, {"_id": {"$in": taken}})).to_list(None)
    if not docs:
        return 0
    ids = [d["_id"] for d in docs]
    sent = {d["_id"] async for d in db[c.SENT].find({"_id": {"$in": ids}}, {"_id": 1})}
    recs = [
        failed_doc(
            d,
            FailureReason.NO_RESPONSE,
            "claim expired after the send intent: the process died or "
            "stalled while sending; the provider may have accepted it",
            now,
            ambiguous=True,
        )
        for d in docs
        if d["_id"] not in sent
    ]
    inserted = await insert_records(db, c.FAILED, recs)
    if recs:  # a MessageSent recorded meanwhile by the old process wins
        late = [d["_id"] async for d in db[c.SENT].find({"_id": {"$in": [r["_id"] for r in recs]}}, {"_id": 1})]
        if late:
            await db[c.FAILED].delete_many({"_id": {"$in": late}, "reason": str(FailureReason.NO_RESPONSE)})
            recs = [r for r in recs if r["_id"] not in set(late)]
    await claims.complete(db, ids, token)
    if recs:
        await trackly.bus.publish(*(failure_event(r) for r in recs))
    return min(inserted, len(recs))
