"""Keyset pages in id order: every list of the admin API pages through its records in numeric id order, past 9,
99, ... (nx-27017 orders a translated query by its ``_id`` text), and the dashboard names each campaign's latest
execution by number."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient

from trackly_exec.app import Trackly
from trackly_exec.store import constants as c

from .api_support import H, add_contacts, post, seed


async def _all_pages(admin: TestClient[Any, Any], path: str, limit: int) -> list[int]:
    ids: list[int] = []
    after: Any = None
    while True:
        sep = "&" if "?" in path else "?"
        url = f"/api/v1{path}{sep}limit={limit}" + (f"&after={after}" if after is not None else "")
        r = await admin.get(url, headers=H)
        body = await r.json()
        assert r.status == 200, body
        ids += [x["id"] for x in body["items"]]
        after = body["next_after"]
        if after is None:
            return ids


async def test_pages_follow_numeric_ids(admin: TestClient[Any, Any], trackly: Trackly) -> None:
    """23 contacts, accounts and executions, in pages of 4 and 10: every record once, in numeric order."""
    ids = await seed(admin)
    await add_contacts(admin, ids["list"], 23)
    for n in range(22):
        await post(admin, "/accounts", {"name": f"acc {n}", "balance": 0})
    await trackly.db[c.EXECUTIONS].insert_many(
        [
            {"_id": n, "campaign_id": 1, "account_id": 1, "sending_list_id": 1, "status": "completed"}
            for n in range(1, 24)
        ]
    )
    contacts = sorted([d["_id"] async for d in trackly.db[c.CONTACTS].find({})])
    assert len(contacts) == 23
    for limit in (4, 10):
        assert await _all_pages(admin, f"/sending-lists/{ids['list']}/contacts", limit) == contacts
        assert await _all_pages(admin, "/accounts", limit) == list(range(1, 24))
        assert await _all_pages(admin, "/executions", limit) == list(range(1, 24))
        assert await _all_pages(admin, "/executions?campaign_id=1", limit) == list(range(1, 24))
