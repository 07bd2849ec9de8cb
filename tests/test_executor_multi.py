"""Two executor processes (two VMs) on one queue: each message is sent and recorded exactly once."""

from __future__ import annotations

import asyncio
import collections
import json
from pathlib import Path
from typing import Any

from trackly_exec.config import Settings
from trackly_exec.store import constants as c
from trackly_exec.store.client import Store
from trackly_exec.testing.fakes.cm import CMFake
from trackly_exec.testing.fakes.infobip import InfobipFake

from .executor_support import assert_one_record_each, run_process, seed, write_config


async def test_two_processes_send_each_message_once(
    settings: Settings, store: Store, redis_client: Any, tmp_path: Path
) -> None:
    """Two processes drain 5,000 messages on two lists: each is accepted once by its fake and recorded once."""
    infobip, cm = await InfobipFake().start(), await CMFake().start()
    try:
        # ids like real ones (HMAC hex): each process takes its share, a range of ids
        ids = await seed(store, 2500, list_id=1, driver="infobip", rate=0, hashed_ids=True)
        # list 2 at 30,000/min (both processes together, one Redis limiter): it takes at least 5 s to drain, so the
        # process started second joins while there is still work, however fast the first one is
        ids += await seed(
            store, 2500, list_id=2, driver="cm", rate=30_000, first_contact=5000, execution_id=2, hashed_ids=True
        )
        drivers = {"infobip": infobip.driver_settings(), "cm": cm.driver_settings()}
        config = write_config(tmp_path / "exec.toml", settings, drivers, claim_batch_size=100)
        (a, out_a), (b, out_b) = await asyncio.gather(run_process(config), run_process(config))
        assert a == 0 and b == 0, out_a + out_b
        per_process = [json.loads(out.strip().splitlines()[0]) for out in (out_a, out_b)]
        assert sum(p.get("sent", 0) for p in per_process) == 5000
        assert all(p.get("sent", 0) > 0 for p in per_process), per_process  # both took part
        counts = infobip.accepted_counts() + cm.accepted_counts()
        assert all(counts[m] == 1 for m in ids) and sum(counts.values()) == 5000
        phones = collections.Counter(e.to for e in [*infobip.ledger, *cm.ledger])
        assert len(phones) == 5000 and set(phones.values()) == {1}  # per phone, not only per message id
        split = await assert_one_record_each(store, ids)
        assert split[c.SENT] == 5000
    finally:
        await infobip.stop()
        await cm.stop()
