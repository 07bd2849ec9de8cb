"""Variant choice: a deterministic percentage split, or learned (Thompson sampling on human click rates).

* **split**: a contact's variant is a pure function of (execution id, contact id): a 64-bit BLAKE2b hash mapped
  onto the cumulative weights. The same contact gets the same variant when an evaluation is retried, and over
  100k contacts the shares are within a fraction of a point of the weights.
* **learned**: each variant's posterior click rate is ``Beta(1 + human clicks, 1 + sent - human clicks)``,
  from earlier executions of the creative: sends from MessageSent by (creative_id, variant_key), clicks from
  ``link_clicks`` with ``bot = false``, counted once per message. Thompson sampling gives each contact the
  variant whose posterior draw is highest; since the posteriors do not change during one evaluation, that is
  the same as allocating by the probability that each variant is best, which is estimated once per execution
  with :data:`POSTERIOR_DRAWS` draws (seeded by the execution id) and then applied with the deterministic hash
  above. Until every variant has ``scheduler.learned_min_sends`` sends, the split is used. A variant of weight 0
  is switched off in both modes: never chosen, and not waited for.
"""

from __future__ import annotations

import bisect
import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from trackly_exec.store import constants as c
from trackly_exec.store.documents import CreativeDoc, Filter
from trackly_exec.store.models import Variant

POSTERIOR_DRAWS = 20_000
_SCALE = float(1 << 64)


def unit_hash(execution_id: int, contact_id: int) -> float:
    """A uniform number in [0, 1) fixed by (execution, contact)."""
    digest = hashlib.blake2b(f"{execution_id}:{contact_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / _SCALE


@dataclass(frozen=True)
class Chooser:
    """Picks a variant key per contact by cumulative shares."""

    keys: tuple[str, ...]
    shares: tuple[float, ...]  # normalised, sums to 1
    mode: str  # "split" or "learned"

    def __post_init__(self) -> None:
        cum, total = [], 0.0
        for s in self.shares:
            total += s
            cum.append(total)
        object.__setattr__(self, "_cum", tuple(cum))

    def choose(self, execution_id: int, contact_id: int) -> str:
        u = unit_hash(execution_id, contact_id)
        cum: tuple[float, ...] = self._cum  # type: ignore[attr-defined]
        i = bisect.bisect_right(cum, u * cum[-1])
        return self.keys[min(i, len(self.keys) - 1)]


def split_chooser(variants: Sequence[Variant]) -> Chooser:
    """By weight (variants of weight 0 are never chosen); every variant equally when all weigh 0."""
    total = sum(v.weight for v in variants)
    if total <= 0:
        return Chooser(tuple(v.key for v in variants), tuple(1 / len(variants) for _ in variants), "split")
    kept = [v for v in variants if v.weight > 0]
    return Chooser(tuple(v.key for v in kept), tuple(v.weight / total for v in kept), "split")


def thompson_shares(stats: Sequence[tuple[int, int]], seed: int, draws: int = POSTERIOR_DRAWS) -> list[float]:
    """P(variant is best) under Beta(1 + clicks, 1 + sent - clicks) posteriors, by Monte Carlo."""
    rng = random.Random(seed)
    wins = [0] * len(stats)
    params = [(1 + clk, 1 + max(sent - clk, 0)) for sent, clk in stats]
    for _ in range(draws):
        best, best_v = 0, -1.0
        for i, (a, b) in enumerate(params):
            x = rng.betavariate(a, b)
            if x > best_v:
                best, best_v = i, x
        wins[best] += 1
    return [w / draws for w in wins]


#: The sends a learned choice learns from: a campaign's (not a test send's) that the provider accepted.
_LEARNED_FROM: Filter = {"submitted": {"$ne": False}, "send_type": {"$ne": "test"}}


async def variant_stats(db: Any, creative_id: int, keys: Sequence[str]) -> dict[str, tuple[int, int]]:
    """``{variant key: (sent, human clicks counted once per message)}`` from earlier executions' campaign sends the
    provider accepted (test sends and rejected sends are no trial of a variant, as in the click statistics)."""
    out: dict[str, tuple[int, int]] = {}
    for key in keys:
        sent = await db[c.SENT].count_documents({"creative_id": creative_id, "variant_key": key, **_LEARNED_FROM})
        q = {"creative_id": creative_id, "variant_key": key, "bot": False}
        clicked = {d.get("message_id") async for d in db[c.CLICKS].find(q, {"_id": 0, "message_id": 1})}
        clicked.discard(None)
        if clicked:  # (few: the clicked ones) those of test or rejected sends do not count
            other = {"_id": {"$in": list(clicked)}, "$or": [{"send_type": "test"}, {"submitted": False}]}
            clicked -= {d["_id"] async for d in db[c.SENT].find(other, {"_id": 1})}
        out[key] = (sent, min(len(clicked), sent))
    return out


async def chooser_for(db: Any, creative: CreativeDoc, execution_id: int, min_sends: int) -> Chooser:
    """The chooser for one execution of ``creative`` (a stored Creative document)."""
    variants = [Variant.model_validate(v) for v in creative["variants"]]
    # a variant of weight 0 is switched off, in a learned choice too: never sent, and not waited for (it gets no
    # sends, so it never reaches min_sends); all at 0 means all on, as for the split
    active = [v for v in variants if v.weight > 0] or variants
    if creative.get("selection", "split") != "learned" or len(active) < 2:
        return split_chooser(variants)
    keys = [v.key for v in active]
    stats = await variant_stats(db, int(creative["_id"]), keys)
    if any(stats[k][0] < min_sends for k in keys):
        return split_chooser(variants)
    shares = thompson_shares([stats[k] for k in keys], seed=execution_id)
    return Chooser(tuple(keys), tuple(shares), "learned")
