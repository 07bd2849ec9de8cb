"""The MongoDB store: connection (embedded or real), indexes, integer id sequences.

Only what both nx-27017 and MongoDB support is used: plain CRUD, ``find_one_and_update`` with ``$inc``,
``update_many`` with ``$in``, unordered ``insert_many``, unique indexes, simple ``aggregate``. Not used:
pipeline updates, ``$addToSet``, TTL expiry, multi-document transactions (a standalone mongod lacks them).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from pymongo import ASCENDING, DESCENDING, AsyncMongoClient, IndexModel, ReturnDocument, UpdateMany, UpdateOne
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import OperationFailure, PyMongoError

from trackly_exec.config import Settings
from trackly_exec.errors import StoreError
from trackly_exec.logs import get_logger
from trackly_exec.store import constants as c
from trackly_exec.store.documents import Filter, Update
from trackly_exec.store.embedded import EmbeddedMongo
from trackly_exec.store.phones import opt_out_key

log = get_logger(__name__)

#: Every index, per collection. Created idempotently at start-up and by ``trackly init-db``.
INDEXES: dict[str, list[IndexModel]] = {
    c.SENDING_LISTS: [IndexModel([("account_id", ASCENDING)])],
    c.CONTACTS: [
        IndexModel([("sending_list_id", ASCENDING), ("phone", ASCENDING)], unique=True, name="list_phone_unique"),
        # no "_id" inside compound indexes: nx-27017 then refuses every insert ("JSON path error near '_id'")
        IndexModel([("sending_list_id", ASCENDING)]),
    ],
    c.AUDIENCES: [IndexModel([("sending_list_id", ASCENDING)])],
    c.CREATIVES: [IndexModel([("account_id", ASCENDING)])],
    c.CAMPAIGNS: [IndexModel([("status", ASCENDING), ("next_run_at", ASCENDING)])],
    c.EXECUTIONS: [
        IndexModel([("occurrence_key", ASCENDING)], unique=True, name="occurrence_unique"),
        IndexModel([("campaign_id", ASCENDING), ("scheduled_for", DESCENDING)]),
        IndexModel([("status", ASCENDING)]),
    ],
    c.QUEUED: [
        IndexModel(
            [("execution_id", ASCENDING), ("contact_id", ASCENDING)], unique=True, name="execution_contact_unique"
        ),
        # the executor's due query (executor.claims.due_filter), sorted by due_ms
        IndexModel([("sending_list_id", ASCENDING), ("claimed_by", ASCENDING), ("due_ms", ASCENDING)]),
        # recovery's expired claims (claimed_at older than the TTL) and the count of claimed messages. Not an index
        # starting with claimed_by: SQLite's planner took it for the claim's ``claimed_by: None`` (as selective as
        # an id) over the claim's 1,000 ids, and read every unclaimed message at every claim. Token-fenced queries
        # name their ids or their list (the due index serves ``sending_list_id, claimed_by``).
        IndexModel([("claimed_at", ASCENDING)]),
        # (no index on sendtime: no query filters or sorts by it since the due query reads due_ms, and every index
        # on the queue is rewritten by each claim and send intent: on nx-27017 it was a quarter of their cost)
    ],
    c.SENT: [
        IndexModel([("provider", ASCENDING), ("provider_message_id", ASCENDING)]),
        IndexModel([("execution_id", ASCENDING), ("contact_id", ASCENDING)]),
        IndexModel([("campaign_id", ASCENDING)]),
        IndexModel([("sending_list_id", ASCENDING), ("timestamp", DESCENDING)]),
        IndexModel([("to_number", ASCENDING)]),  # message log by phone
    ],
    c.FAILED: [
        IndexModel([("reason", ASCENDING)]),
        IndexModel([("execution_id", ASCENDING), ("contact_id", ASCENDING)]),
        IndexModel([("sending_list_id", ASCENDING), ("failed_at", ASCENDING)]),  # error-rate watch
        IndexModel([("campaign_id", ASCENDING)]),
        IndexModel([("to_number", ASCENDING)]),  # message log by phone
        IndexModel([("failed_at", DESCENDING)]),  # dead letters by time
    ],
    c.SHORT_LINKS: [IndexModel([("message_id", ASCENDING)]), IndexModel([("campaign_id", ASCENDING)])],
    c.CLICKS: [IndexModel([("campaign_id", ASCENDING)]), IndexModel([("code", ASCENDING)])],
    c.DELIVERY_REPORTS: [IndexModel([("received_at", ASCENDING)])],
    c.OUTBOX: [IndexModel([("next_attempt_at", ASCENDING)]), IndexModel([("status", ASCENDING)])],
    c.EVENTS: [IndexModel([("created_at", DESCENDING)]), IndexModel([("kind", ASCENDING)])],
    c.INBOUND: [IndexModel([("received_at", DESCENDING)])],
    c.RESERVATIONS: [IndexModel([("message_id", ASCENDING)])],
}

#: Indexes earlier versions created that no query uses any more, per collection (their keys): dropped at start-up,
#: since every write of a document rewrites each of its indexes (a claim and a send intent rewrote the queue's).
OBSOLETE_INDEXES: dict[str, list[list[tuple[str, int]]]] = {
    c.QUEUED: [
        [("sendtime", ASCENDING)],
        [("sending_list_id", ASCENDING), ("claimed_by", ASCENDING), ("sendtime", ASCENDING)],
        [("sending_list_id", ASCENDING), ("claimed_by", ASCENDING), ("sendtime", ASCENDING), ("_id", ASCENDING)],
        [("claimed_by", ASCENDING), ("claimed_at", ASCENDING)],
    ],
    c.CONTACTS: [[("sending_list_id", ASCENDING), ("_id", ASCENDING)]],
    c.OUTBOX: [[("status", ASCENDING), ("next_attempt_at", ASCENDING)]],
}


async def count(db: AsyncDatabase[Any], collection: str, query: Filter) -> int:
    """The number of ``collection`` documents matching ``query``, with the ``count`` command.

    Not ``count_documents``: that is an aggregation (``$match`` + ``$group``), which nx-27017 runs in Python
    over a deep copy of every document (0.9 s for 20,000 MessageSent here, where ``count`` takes 2-90 ms). The
    store's figures (/metrics, the dashboard) are counted in the background in every daemon, and every evaluation
    counts its audiences."""
    reply = await db.command({"count": collection, "query": query})
    return int(reply["n"])


#: A condition on integer ``_id`` s that every record matches: a query with it is sorted by number on nx-27017 too,
#: which orders a query it translates to SQL by the ``_id`` *text* (1, 10, 11, ..., 2: measured), where MongoDB and
#: nx-27017's Python path (a range of ``_id`` takes it) order numbers as numbers. The admin API's pages always have
#: one (``after``, 0 for the first page).
INT_IDS: Filter = {"_id": {"$gte": 0}}


async def newest(db: AsyncDatabase[Any], collection: str, query: Filter) -> Any:
    """The document of ``collection`` (integer ids) matching ``query`` with the highest ``_id``, or None."""
    return await db[collection].find_one({**query, **INT_IDS}, sort=[("_id", -1)])


async def find_by_ids(
    db: AsyncDatabase[Any], collection: str, ids: Sequence[Any], *, batch_size: int | None = None
) -> list[Any]:
    """The whole documents of ``collection`` whose ``_id`` is in ``ids``, in the store's order.

    One ``find`` command (plus a ``getMore`` for each further batch the server cuts the answer into), not
    ``find().to_list()``: PyMongo's cursor machinery costs ~90 us more of the caller's CPU per call here, which
    the hot paths (clicks, delivery reports) pay per group. Whole documents: nx-27017 applies a projection in
    Python, which costs it more than the fields saved. ``batch_size``: documents per batch (default: all)."""
    if not ids:
        return []
    opts = db.codec_options
    reply = await db.command(
        {"find": collection, "filter": {"_id": {"$in": list(ids)}}, "batchSize": batch_size or len(ids)},
        codec_options=opts,
    )
    cursor = reply["cursor"]
    docs: list[Any] = list(cursor["firstBatch"])
    while cursor.get("id"):
        reply = await db.command(
            {"getMore": cursor["id"], "collection": collection, "batchSize": batch_size or len(ids)}, codec_options=opts
        )
        cursor = reply["cursor"]
        docs.extend(cursor["nextBatch"])
    return docs


async def opted_out(db: AsyncDatabase[Any], pairs: Iterable[tuple[int, str]]) -> set[tuple[int, str]]:
    """The (sending list, number) pairs among ``pairs`` whose number sent STOP on that list, contact or not
    (``opt_outs``, keyed by :func:`~trackly_exec.store.phones.opt_out_key`): one indexed read."""
    keys = {opt_out_key(list_id, phone): (list_id, phone) for list_id, phone in pairs}
    if not keys:
        return set()
    return {keys[d["_id"]] async for d in db[c.OPT_OUTS].find({"_id": {"$in": list(keys)}}, {"_id": 1})}


async def remember_opt_outs(
    db: AsyncDatabase[Any], opt_outs: Iterable[tuple[int, str, str, int]], at: dt.datetime
) -> None:
    """Keep each ``(sending list, number, keyword, received_ms)`` as opted out (``opt_outs``, the one writer of it):
    a contact created for the number later starts unsubscribed, a contact import that says ``subscribed: yes``
    leaves it unsubscribed, and only its own START received later (``received_ms``, the provider's receive time of
    the latest opt-out, kept however the opt-outs arrive) lifts it. An inbound STOP, and an opt-out the provider
    reported (Twilio 21610: setting the contact unsubscribed alone was undone by the next import)."""
    latest: dict[str, tuple[int, int, str]] = {}  # key -> (received_ms, list, keyword)
    for list_id, phone, keyword, ms in opt_outs:
        if isinstance(phone, str) and phone.startswith("+"):
            key = opt_out_key(int(list_id), phone)
            if key not in latest or ms > latest[key][0]:
                latest[key] = (ms, int(list_id), keyword)
    if not latest:
        return
    async for d in db[c.OPT_OUTS].find({"_id": {"$in": sorted(latest)}}, {"received_ms": 1}):
        ms, list_id, keyword = latest[d["_id"]]  # a retried older opt-out keeps the later time already stored
        latest[d["_id"]] = (max(ms, int(d.get("received_ms") or 0)), list_id, keyword)
    ops = [
        UpdateOne(
            {"_id": key},
            {"$set": {"sending_list_id": list_id, "keyword": keyword, "at": at, "received_ms": ms}},
            upsert=True,
        )
        for key, (ms, list_id, keyword) in latest.items()
    ]
    await db[c.OPT_OUTS].bulk_write(ops, ordered=False)


def update_ids(ids: Sequence[Any], update: Update, where: Filter | None = None) -> UpdateOne | UpdateMany:
    """One bulk statement applying ``update`` to the documents ``ids``, each only while it matches ``where``:
    ``UpdateOne`` for one id, else ``UpdateMany`` over ``$in`` (nx-27017 spends 20-25 % less CPU per document on one
    multi-document statement than on one statement per document)."""
    if len(ids) == 1:
        return UpdateOne({"_id": ids[0], **(where or {})}, update)
    return UpdateMany({"_id": {"$in": list(ids)}, **(where or {})}, update)


def _standalone(hello: Mapping[str, Any]) -> bool:
    """A ``hello`` answer from a standalone server: neither a replica-set member nor a mongos (no retryable
    writes there)."""
    return not hello.get("setName") and hello.get("msg") != "isdbgrid" and not hello.get("isreplicaset")


class Store:
    """A connected database, plus the embedded server when ``mongo.uri = "embedded"``."""

    def __init__(
        self,
        client: AsyncMongoClient[Any],
        db: AsyncDatabase[Any],
        embedded: EmbeddedMongo | None = None,
    ) -> None:
        self.client = client
        self.db = db
        self.embedded = embedded

    def __getitem__(self, name: str) -> Any:
        """``store[c.NAME]``: the tests' shorthand. The package reaches a collection one way, ``.db[c.NAME]``
        (``trackly.db``, ``store.db``), with its name from :mod:`trackly_exec.store.constants` (test_hygiene)."""
        return self.db[name]

    @classmethod
    async def open(cls, settings: Settings, *, create_indexes: bool = True) -> Store:
        """Start the embedded server if configured, connect, wait until it answers, create indexes."""
        embedded: EmbeddedMongo | None = None
        if settings.mongo.embedded:
            embedded = EmbeddedMongo(
                settings.daemon.data_dir, port=settings.mongo.embedded_port, in_memory=settings.mongo.embedded_in_memory
            )
            await embedded.astart(settings.mongo.connect_timeout_seconds)
            uri = embedded.uri
        else:
            uri = settings.mongo.uri.get_secret_value()
        store = await cls.connect(
            uri,
            settings.mongo.database,
            timeout=settings.mongo.connect_timeout_seconds,
            embedded=embedded,
            w=settings.mongo.write_concern_w,
            retry_writes=settings.mongo.retry_writes,
        )
        if create_indexes:
            await store.ensure_indexes()
        return store

    @classmethod
    async def connect(
        cls,
        uri: str,
        database: str,
        *,
        timeout: float = 15.0,
        embedded: EmbeddedMongo | None = None,
        w: int | str = "majority",
        retry_writes: bool = True,
    ) -> Store:
        """Connect and ping. Writes use write concern ``w`` (default majority) and are retried once after a
        network error or a primary step-down (see CONTRIBUTING, "Failover"). On a standalone server (nx-27017, a
        single mongod) there are no retryable writes: PyMongo never retries there, yet asking for them costs ~70 us
        of CPU per write, so the client is made without."""

        def client_for(retry: bool) -> AsyncMongoClient[Any]:
            return AsyncMongoClient(
                uri,
                tz_aware=True,
                serverSelectionTimeoutMS=int(timeout * 1000),
                appname="trackly-exec",
                w=w,
                retryWrites=retry,
                retryReads=True,
            )

        client = client_for(retry_writes)
        try:
            hello = await client.admin.command("hello")
            if retry_writes and _standalone(hello):
                await client.close()
                client = client_for(False)
                await client.admin.command("ping")
        except PyMongoError as exc:
            await client.close()
            if embedded:
                embedded.stop()
            raise StoreError(f"cannot reach MongoDB: {exc}") from exc
        return cls(client, client[database], embedded)

    async def ensure_indexes(self) -> None:
        for name, models in INDEXES.items():
            await self.db[name].create_indexes(models)
        for name, keys in OBSOLETE_INDEXES.items():
            async for index in await self.db[name].list_indexes():
                if [(k, int(v) if isinstance(v, (int, float)) else v) for k, v in index["key"].items()] in keys:
                    try:
                        await self.db[name].drop_index(index["name"])
                    except OperationFailure as exc:  # another daemon starting at the same time dropped it first
                        log.info("obsolete_index_gone", collection=name, index=index["name"], error=str(exc))
                        continue
                    log.info("obsolete_index_dropped", collection=name, index=index["name"])
        log.debug("indexes_ready", collections=len(INDEXES))

    async def next_ids(self, name: str, n: int = 1) -> list[int]:
        """Reserve ``n`` consecutive integer ids of sequence ``name``."""
        doc = await self.db[c.COUNTERS].find_one_and_update(
            {"_id": name}, {"$inc": {"seq": n}}, upsert=True, return_document=ReturnDocument.AFTER
        )
        assert doc is not None  # an upsert returning the document AFTER always has one
        end = int(doc["seq"])
        return list(range(end - n + 1, end + 1))

    async def next_id(self, name: str) -> int:
        return (await self.next_ids(name, 1))[0]

    async def drop_all(self, names: Sequence[str] = c.ALL_COLLECTIONS) -> None:
        for name in names:
            await self.db[name].delete_many({})

    async def close(self) -> None:
        try:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.client.close(), timeout=2.0)
        finally:
            if self.embedded:
                self.embedded.stop()
