"""Where the executor's store work goes: the store process's CPU per message, operation by operation.

Runs, one batch at a time on one list (so each operation's cost is its own), the store operations of one
message's way through the executor, and prints the nx-27017 process's CPU time per message for each:

- ``executor``: the executor's own operations on real queued documents (``testing.seeding.queued_message``):
  find due (``claims.find_due``: whole documents), claim (``claims.claim_docs``), the send-time checks' reads
  (``checks.contact_states`` at the claim, ``checks.blocked_contacts`` and ``checks.paused_campaigns`` at the
  re-check; every message has its contact, as in bench/executor.py), send intent
  (``claims.mark_intent``), insert the MessageSent records (``outcomes.sent_doc``), delete the queue entries
  (``claims.complete``);
- ``executor, dates in $set``: the same with the claim time and the intent written as datetimes, as before they
  were epoch milliseconds (nx-27017 applies an update that sets a datetime in Python, on a deep copy of the
  document; one that sets a number in SQL);
- ``bare``: the bare floor's operations (``bench/executor.py``): five-field documents, a three-field record.

The store's CPU per message is what bounds the executor on the embedded store (one Python process: a second
executor process adds no store CPU), and a loaded machine disturbs it far less than throughput.

    .venv/bin/python bench/storeops.py [--n 10000] [--batch 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import uuid
from collections.abc import Awaitable, Callable
from typing import TypeVar

from _common import proc_cpu, record, run, seed_lists, services

from trackly_exec.executor import checks, claims
from trackly_exec.executor.outcomes import sent_doc
from trackly_exec.store import constants as c
from trackly_exec.store.client import Store
from trackly_exec.store.models import utcnow

T = TypeVar("T")
OPS = ("find due", "claim", "read back", "checks", "intent", "insert records", "delete")


class Meter:
    """The store process's CPU seconds spent in each operation."""

    def __init__(self, pid: int | None) -> None:
        self.pid = pid
        self.spent: collections.Counter[str] = collections.Counter()

    async def __call__(self, op: str, work: Awaitable[T]) -> T:
        before = proc_cpu(self.pid)
        out = await work
        self.spent[op] += proc_cpu(self.pid) - before
        return out


async def executor_ops(store: Store, meter: Meter, batch: int, *, datetimes: bool) -> int:
    """The executor's operations on one list until its queue is empty; returns messages."""
    db, done = store.db, 0
    while True:
        now = utcnow()
        token = claims.new_token("ops")
        docs = await meter("find due", claims.find_due(db, 1, now, batch))
        if not docs:
            return done
        ids = [d["_id"] for d in docs]
        contact_ids = [d["contact_id"] for d in docs]
        campaign_ids = sorted({d["campaign_id"] for d in docs if d.get("campaign_id") is not None})
        await meter("checks", checks.contact_states(db, contact_ids))
        await meter(
            "checks",
            asyncio.gather(checks.blocked_contacts(db, contact_ids), checks.paused_campaigns(db, campaign_ids)),
        )
        if datetimes:
            await meter(
                "claim",
                db[c.QUEUED].update_many(
                    {"_id": {"$in": ids}, "claimed_by": None, "due_ms": {"$eq": docs[0]["due_ms"]}},
                    {"$set": {"claimed_by": token, "claimed_at": now}},
                ),
            )
            intent = {"$set": {"sending_at": now}}
            await meter("intent", db[c.QUEUED].update_many(claims.LEASE.fence(token, {"_id": {"$in": ids}}), intent))
        else:
            await meter("claim", claims.claim_docs(db, docs, token, now))
            await meter("intent", claims.mark_intent(db, ids, token, now))
        records = [
            sent_doc(d, provider="ops", provider_message_id=d["_id"], segments=1, cost=0.0, now=now) for d in docs
        ]
        await meter("insert records", db[c.SENT].insert_many(records, ordered=False))
        await meter("delete", claims.complete(db, ids, token))
        done += len(ids)


async def bare_ops(store: Store, meter: Meter, n: int, batch: int) -> int:
    """The bare floor's operations (bench/executor.py) on ``n`` five-field documents; returns messages."""
    q, rec = store.db["ops_bare"], store.db["ops_bare_sent"]
    await q.drop()
    await rec.drop()
    await q.create_index([("l", 1), ("c", 1), ("t", 1)])
    now = utcnow()
    for start in range(0, n, 5000):
        await q.insert_many(
            [{"_id": f"{k:016x}", "l": 1, "t": now, "c": None, "i": None} for k in range(start, min(n, start + 5000))]
        )
    done = 0
    while True:
        token = uuid.uuid4().hex
        found = await meter(
            "find due", q.find({"l": {"$eq": 1}, "c": None}, {"_id": 1}).sort("t", 1).limit(batch).to_list(None)
        )
        if not found:
            return done
        ids = [d["_id"] for d in found]
        await meter("claim", q.update_many({"_id": {"$in": ids}, "c": None}, {"$set": {"c": token}}))
        # by ids and token: no index on ``c`` (see bench/executor.py's bare floor)
        back = q.find({"_id": {"$in": ids}, "c": {"$eq": token}}, {"_id": 1})
        mine = [d["_id"] for d in await meter("read back", back.to_list(None))]
        await meter("intent", q.update_many({"_id": {"$in": mine}, "c": token}, {"$set": {"i": 1}}))
        await meter("insert records", rec.insert_many([{"_id": m, "l": 1, "s": True} for m in mine], ordered=False))
        await meter("delete", q.delete_many({"_id": {"$in": mine}, "c": token}))
        done += len(mine)


async def main(args: argparse.Namespace) -> None:
    with services(fakes=()) as svc:
        store = await Store.connect(svc["mongo_uri"], "bench")
        await store.ensure_indexes()
        rows: list[tuple[str, int, Meter]] = []
        runs: list[tuple[str, Callable[[Meter], Awaitable[int]]]] = [
            ("executor", lambda m: executor_ops(store, m, args.batch, datetimes=False)),
            ("executor, dates in $set", lambda m: executor_ops(store, m, args.batch, datetimes=True)),
            ("bare floor", lambda m: bare_ops(store, m, args.n, args.batch)),
        ]
        if args.repeat > 1:  # alternate the variants (the first run of a process pays some warm-up)
            runs = [r for _ in range(args.repeat) for r in runs]
        for name, work in runs:
            if name.startswith("executor"):
                await store.db[c.SENT].delete_many({})
                await store.db[c.CONTACTS].delete_many({})
                await seed_lists(store, args.n, {1: "infobip"})
            meter = Meter(svc["mongo_pid"])
            rows.append((name, await work(meter), meter))
        print(f"store process CPU per message (us), {args.n:,} messages in batches of {args.batch:,}, one list:")
        print(f"  {'':32s}" + "".join(f"{op:>15s}" for op in OPS) + f"{'total':>10s}")
        totals: dict[str, float] = {}
        for name in dict.fromkeys(n for n, _, _ in rows):  # each variant, its runs summed
            done = sum(d for n, d, _ in rows if n == name)
            per = {op: sum(m.spent[op] for n, _, m in rows if n == name) / max(done, 1) * 1e6 for op in OPS}
            totals[name] = sum(per.values())
            print(f"  {name:32s}" + "".join(f"{per[op]:15.0f}" for op in OPS) + f"{totals[name]:10.0f}")
            record(f"store CPU per message: {name}", totals[name], "us/msg", us_per_message=totals[name])
        ratio = totals["bare floor"] / totals["executor"]
        print(f"bare floor / executor, store CPU per message: {ratio:.2f} (runs: {args.repeat} of each, alternating)")
        await store.close()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=10_000, help="messages (default 10,000)")
    p.add_argument("--batch", type=int, default=1000, help="batch size (default 1000)")
    p.add_argument("--repeat", type=int, default=1, help="run the variants this many times, alternating (default 1)")
    run(main(p.parse_args()))
