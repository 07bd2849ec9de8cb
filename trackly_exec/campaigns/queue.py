"""Queuing: QueuedTextMessage documents bulk-inserted, with their MessageShortLink documents.

One unordered ``insert_many`` per batch. The unique (execution_id, contact_id) index makes a retried
evaluation harmless: a contact already queued for the execution is refused as a duplicate, every other
document goes in, and a BulkWriteError made only of duplicate-key errors is expected and ignored. Short links
are inserted after their messages, only for the messages that went in, so a retry leaves no orphan links.

The executor orders the queue by ``sendtime`` (FIFO): every message of one execution has the same sendtime,
except those held for quiet hours, whose sendtime (and ``not_before``) is the opening of the contact's window.

Pausing a campaign holds its unclaimed queued messages (``not_before`` far in the future, ``paused``); resuming
makes them due again now (a held message is then checked like any other: quiet hours, block list, staleness
counted from the resume). Messages already claimed when the pause arrives are held the same way by the executor's
send-time re-check. No extra condition is added to the executor's queue query: a pause is just a backoff.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pymongo.errors import BulkWriteError

from trackly_exec.logs import get_logger
from trackly_exec.store import constants as c
from trackly_exec.store.documents import QueuedDoc, ShortLinkDoc

log = get_logger(__name__)

DUPLICATE_KEY = 11000
PAUSED_UNTIL = dt.datetime(9999, 12, 31, tzinfo=dt.UTC)


@dataclass
class QueueResult:
    inserted: int = 0
    duplicates: int = 0
    links: int = 0


def _duplicate_indexes(exc: BulkWriteError) -> set[int]:
    """Indexes of the refused documents, when every error is a duplicate key; else re-raise."""
    errors = exc.details.get("writeErrors", [])
    if any(e.get("code") != DUPLICATE_KEY for e in errors):
        raise exc
    return {int(e["index"]) for e in errors}


async def insert_batch(db: Any, messages: Sequence[QueuedDoc], links: Sequence[ShortLinkDoc] = ()) -> QueueResult:
    """Insert one batch of queue documents (unordered), then the short links of those that went in."""
    res = QueueResult()
    if not messages:
        return res
    dup_ids: set[str] = set()
    try:
        await db[c.QUEUED].insert_many(list(messages), ordered=False)
    except BulkWriteError as exc:
        dups = _duplicate_indexes(exc)
        dup_ids = {messages[i]["_id"] for i in dups}
    res.duplicates = len(dup_ids)
    res.inserted = len(messages) - res.duplicates
    keep = [link for link in links if link["message_id"] not in dup_ids] if dup_ids else list(links)
    if keep:
        try:
            await db[c.SHORT_LINKS].insert_many(keep, ordered=False)
            res.links = len(keep)
        except BulkWriteError as exc:
            res.links = len(keep) - len(_duplicate_indexes(exc))
    if res.duplicates:
        log.info("queue_duplicates_ignored", duplicates=res.duplicates, inserted=res.inserted)
    return res


async def pending_count(db: Any, execution_id: int) -> int:
    """How many messages of the execution are still in the queue."""
    return int(await db[c.QUEUED].count_documents({"execution_id": execution_id}))


async def has_pending(db: Any, execution_id: int) -> bool:
    """True while anything of the execution is left in the queue (cheap: one indexed find)."""
    return await db[c.QUEUED].find_one({"execution_id": execution_id}, {"_id": 1}) is not None
