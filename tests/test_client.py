"""The store client (store/client.py): integer id sequences (the store itself is exercised by every test that
takes the ``store`` fixture; the embedded server: test_nxserver.py, test_daemon.py)."""

from __future__ import annotations

from trackly_exec.store.client import Store


async def test_next_ids(store: Store) -> None:
    """Id sequences hand out consecutive, never-repeated ranges."""
    assert await store.next_ids("x", 3) == [1, 2, 3]
    assert await store.next_id("x") == 4
