"""Leases: a stored document held by one claim token until the lease expires. The one way queued messages
(:mod:`trackly_exec.executor.claims`), customer-webhook outbox entries and executions being evaluated are claimed.

A lease is two fields of the document: the holder's token (``owner``, e.g. ``claimed_by``) and a time, either
when the lease was taken or last renewed (``stamp``: it expires ``ttl`` later) or until when it holds (``until``:
a deadline, e.g. the outbox's ``next_attempt_at`` pushed past the POST timeout, so an expired entry is simply due
again).

- **claim**: ``update_many(query and claimable, $set owner = token, time)``. Each document is updated atomically,
  so two processes racing for the same documents each get a disjoint part; the claim reads back what it got by
  its token. A token is unique to a process *and* a claim (:func:`new_token`).
- **fencing**: every later write (update, renew, release, delete) is conditional on ``owner == token``. A process
  that lost its lease (stalled past it while another took it over) matches nothing.
- **expiry takeover**: an expired lease is claimable again: by a new token, conditionally on the expiry, so of
  several takers exactly one gets each document.

The store has no server-side clock a query may use (``$$NOW``, ``$currentDate`` are out): times come from the
caller's clock (``now``).
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from typing import Any

from pymongo import ReturnDocument

from trackly_exec.store.documents import Filter, Update
from trackly_exec.store.models import epoch_ms


def new_token(instance: str) -> str:
    """A claim token: the instance name plus a random part, so every claim is distinct."""
    return f"{instance}:{uuid.uuid4().hex}"


@dataclass(frozen=True)
class Lease:
    """Where a collection keeps its leases. Exactly one of ``stamp`` (with ``ttl`` for expiry) or ``until``."""

    owner: str
    stamp: str | None = None
    until: str | None = None
    ttl: dt.timedelta | None = None
    #: the stamp stored as epoch milliseconds (a number) rather than a datetime: nx-27017 applies an update that
    #: sets a datetime in Python on a copy of the document, one that sets a number in SQL (the queue's claims:
    #: ~40 us less of the store's CPU per message)
    stamp_ms: bool = False

    def __post_init__(self) -> None:
        if (self.stamp is None) == (self.until is None):
            raise ValueError("a lease has either a stamp field or an until field")
        if self.until is not None and self.ttl is None:
            raise ValueError("a deadline lease needs its ttl")

    # -- query and update pieces (no I/O) ----------------------------------------------------------------

    def fence(self, token: str, query: Filter | None = None) -> Filter:
        """``query`` restricted to documents ``token`` holds. (``$eq``: the shape nx-27017 serves from an index on
        the owner field; a bare equality may match arrays there, and scans the collection.)"""
        return {**(query or {}), self.owner: {"$eq": token}}

    def free(self) -> Filter:
        """Documents nobody holds. (``$eq``: nx-27017 matches nothing with a bare ``None`` inside an ``$and``
        beside ``$in`` conditions, nor in ``count_documents``.)"""
        return {self.owner: {"$eq": None}}

    def expired(self, now: dt.datetime, ttl: dt.timedelta | None = None) -> Filter:
        """Documents whose lease has expired at ``now`` (``ttl`` overrides the lease's own, for a stamp)."""
        if self.until is not None:
            return {self.until: {"$lte": now}}
        ttl = ttl if ttl is not None else self.ttl
        if ttl is None:
            raise ValueError("this lease never expires: give a ttl")
        assert self.stamp is not None
        return {self.stamp: {"$lt": self._stamp(now - ttl)}}

    def claimable(self, now: dt.datetime) -> Filter:
        """Documents a new claim may take at ``now``: free (or, for a deadline lease, past it); expired too
        when the lease has a ttl. One ``$and`` around an ``$or`` (nx-27017 mis-parenthesises a bare one)."""
        if self.until is not None:
            return self.expired(now)
        if self.ttl is None:
            return self.free()
        return {"$and": [{"$or": [self.free(), self.expired(now)]}]}

    def taken(self, token: str, now: dt.datetime) -> Update:
        """The ``$set`` fields of a claim by ``token`` at ``now``."""
        return {self.owner: token, **self.renewed(now)}

    def renewed(self, now: dt.datetime) -> Update:
        """The ``$set`` fields of a renewal at ``now``."""
        if self.until is not None:
            assert self.ttl is not None
            return {self.until: now + self.ttl}
        assert self.stamp is not None
        return {self.stamp: self._stamp(now)}

    def _stamp(self, t: dt.datetime) -> dt.datetime | int:
        return epoch_ms(t) if self.stamp_ms else t

    def released(self) -> Update:
        """The ``$set`` fields of a release (a deadline lease's ``until`` is the caller's: e.g. the next attempt)."""
        if self.stamp is not None:
            return {self.owner: None, self.stamp: None}
        return {self.owner: None}

    # -- operations ---------------------------------------------------------------------------------------

    async def claim(
        self,
        col: Any,
        query: Filter,
        token: str,
        now: dt.datetime,
        *,
        expired_only: bool = False,
        read: bool = True,
        flat: bool = False,
    ) -> list[Any]:
        """Claim every claimable document matching ``query`` for ``token``; returns what this claim holds
        (every document ``token`` holds, so use a fresh token per claim), or ``[]`` without reading back when
        ``read`` is False. ``expired_only``: take over expired leases only (never a free document). The documents
        are ``col``'s (a QueuedDoc, OutboxDoc...): the caller names their type.

        ``flat``: ``query`` and the lease's condition in one flat filter (an ``$and`` around them takes nx-27017's
        Python path), and the claim read back by ``query`` and the token, so that an index on ``query``'s fields
        serves both; ``query`` must then name no lease field and the condition must be flat (a lease without ttl)."""
        cond = self.expired(now) if expired_only else self.claimable(now)
        if flat and (query.keys() & cond.keys() or "$and" in cond or self.owner in query):
            raise ValueError("a flat claim needs a query naming no lease field and a flat lease condition")
        filter_ = {**query, **cond} if flat else {"$and": [query, cond]}
        res = await col.update_many(filter_, {"$set": self.taken(token, now)})
        if not read or res.matched_count == 0:
            return []
        docs: list[Any] = await col.find(self.fence(token, query if flat else None)).to_list(None)
        return docs

    async def claim_one(
        self,
        col: Any,
        query: Filter,
        token: str,
        now: dt.datetime,
        *,
        expired_only: bool = False,
        inc: dict[str, int] | None = None,
    ) -> Any:
        """Claim one claimable document matching ``query`` (atomically); returns it as claimed (a document of
        ``col``: the caller names its type), or None."""
        cond = self.expired(now) if expired_only else self.claimable(now)
        update: Update = {"$set": self.taken(token, now)}
        if inc:
            update["$inc"] = inc
        doc: Any = await col.find_one_and_update({"$and": [query, cond]}, update, return_document=ReturnDocument.AFTER)
        return doc

    async def update(
        self,
        col: Any,
        token: str,
        query: Filter,
        update: Update,
        *,
        renew_at: dt.datetime | None = None,
        one: bool = False,
    ) -> int:
        """A fenced update of the documents of ``query`` that ``token`` holds (renewing the lease when
        ``renew_at`` is given); returns how many matched: 0 when the lease is lost."""
        if renew_at is not None:
            update = {**update, "$set": {**update.get("$set", {}), **self.renewed(renew_at)}}
        fenced = self.fence(token, query)
        res = await (col.update_one(fenced, update) if one else col.update_many(fenced, update))
        return int(res.matched_count)

    async def renew(self, col: Any, token: str, query: Filter, now: dt.datetime) -> int:
        """Renew the lease of the documents of ``query`` that ``token`` holds; returns how many it still holds."""
        return await self.update(col, token, query, {"$set": self.renewed(now)})

    async def release(self, col: Any, token: str | list[str], query: Filter | None = None, **extra: Any) -> int:
        """Give back the documents of ``query`` that ``token`` (or any of a list of tokens) holds, with ``extra``
        ``$set`` fields; returns how many were released."""
        owner: Any = {"$in": token} if isinstance(token, list) else token
        res = await col.update_many({**(query or {}), self.owner: owner}, {"$set": {**extra, **self.released()}})
        return int(res.modified_count)

    async def release_expired(
        self, col: Any, now: dt.datetime, query: Filter | None = None, *, ttl: dt.timedelta | None = None
    ) -> int:
        """Give back every document of ``query`` whose lease expired (its holder died or stalled)."""
        res = await col.update_many({**(query or {}), **self.expired(now, ttl)}, {"$set": self.released()})
        return int(res.modified_count)

    async def delete(self, col: Any, token: str, query: Filter | None = None) -> int:
        """Delete the documents of ``query`` that ``token`` holds; returns how many."""
        res = await col.delete_many(self.fence(token, query))
        return int(res.deleted_count)
