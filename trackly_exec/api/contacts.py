"""Contacts: bulk upsert by (sending list, normalised phone).

Each row is validated on its own (:class:`~trackly_exec.api.models.ContactIn`) and its phone normalised to
E.164 (:func:`trackly_exec.store.phones.normalize`). A bad row is reported with its index and reason and never
stops the good ones. Rows are written in batches of 1,000: one id reservation and one unordered
``insert_many``; the phones the unique (sending_list_id, phone) index refuses already exist and get one
``find`` and one ``bulk_write`` of updates (only the fields given). Several rows with the same phone in one
request are merged in order (the later row's fields win).

Every written contact gets its ``phone_check`` (:func:`~trackly_exec.store.phones.phone_check`: validity, E.164
and zones of the stored phone, with the phonenumbers release), so that an evaluation does not parse the number
again; an update refreshes it (a contact stored by other tools, or checked by another release).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError
from pymongo import UpdateOne
from pymongo.errors import BulkWriteError

from trackly_exec.api.models import INVALID_ROW, ContactIn, RejectedRow
from trackly_exec.errors import StoreError
from trackly_exec.logs import get_logger
from trackly_exec.store import constants as c
from trackly_exec.store import phones
from trackly_exec.store.client import Store, newest, opted_out
from trackly_exec.store.documents import ContactDoc, JsonObject, Update
from trackly_exec.store.models import Clock, utcnow

log = get_logger(__name__)

BATCH = 1000
_FIELDS = ("first_name", "last_name", "timezone", "subscribed", "blocked", "in_workflow", "last_sent_at")
_DEFAULTS: ContactDoc = {
    "first_name": None,
    "last_name": None,
    "timezone": None,
    "subscribed": True,
    "blocked": False,
    "in_workflow": False,
    "last_sent_at": None,
}


@dataclass
class UpsertResult:
    """Counts of one bulk upsert; ``rejected`` lists each bad row's index and reason."""

    inserted: int = 0
    updated: int = 0
    rejected: list[RejectedRow] = field(default_factory=list)

    def as_dict(self) -> JsonObject:
        return {"inserted": self.inserted, "updated": self.updated, "rejected": [r.model_dump() for r in self.rejected]}


def _reason(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:3]:
        loc = ".".join(str(p) for p in err.get("loc", ()))
        msg = "unknown field" if err.get("type") == "extra_forbidden" else err.get("msg", "invalid")
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts)


def parse_rows(
    rows: Sequence[Any],
    default_region: str = "US",
) -> tuple[dict[str, list[tuple[int, ContactIn]]], list[RejectedRow]]:
    """Validate and normalise ``rows``: ``({e164: [(index, row), ...]}, rejected)``."""
    good: dict[str, list[tuple[int, ContactIn]]] = {}
    rejected: list[RejectedRow] = []
    for i, raw in enumerate(rows):
        if not isinstance(raw, dict):
            rejected.append(RejectedRow(index=i, reason="row must be an object"))
            continue
        if INVALID_ROW in raw:  # a row the store could not keep (a lone surrogate...), found when the body was read
            rejected.append(RejectedRow(index=i, reason=str(raw[INVALID_ROW])))
            continue
        try:
            row = ContactIn.model_validate(raw)
        except ValidationError as exc:
            phone = raw.get("phone")
            rejected.append(RejectedRow(index=i, reason=_reason(exc), phone=str(phone) if phone is not None else None))
            continue
        e164 = phones.normalize(row.phone, default_region)
        if e164 is None:
            rejected.append(RejectedRow(index=i, reason="invalid phone number", phone=str(row.phone)))
            continue
        good.setdefault(e164, []).append((i, row))
    return good, rejected


def _changes(rows: list[tuple[int, ContactIn]]) -> Update:
    """The ``$set`` of the rows for one phone, merged in order."""
    out: Update = {}
    for _, row in rows:
        given = row.model_fields_set
        for name in _FIELDS:
            if name in given and getattr(row, name) is not None:
                out[name] = getattr(row, name)
        for k, v in (row.attributes or {}).items():
            out[f"attributes.{k}"] = v
    return out


async def upsert(
    store: Store, sending_list_id: int, rows: Sequence[Any], *, default_region: str = "US", clock: Clock = utcnow
) -> UpsertResult:
    """Insert or update ``rows`` on list ``sending_list_id``; see the module docstring."""
    good, rejected = parse_rows(rows, default_region)
    result = UpsertResult(rejected=rejected)
    items = list(good.items())
    for start in range(0, len(items), BATCH):
        await _upsert_batch(store, sending_list_id, items[start : start + BATCH], result, clock())
    result.rejected.sort(key=lambda r: r.index)
    return result


#: Times a batch's new contacts are inserted again with fresh ids when an id was taken (see :func:`_insert_new`).
ID_RETRIES = 3


async def _insert_new(store: Store, list_id: int, docs: list[ContactDoc]) -> set[int]:
    """Insert ``docs`` (unordered); returns the indexes of those whose phone the list already has.

    A duplicate-key refusal is either the list's (sending_list_id, phone) index (the phone exists: updated by the
    caller) or the id (a contact written by another tool with an id the sequence had not reached): those are
    inserted again with fresh ids, taken past the highest id in use, so no new contact is reported as updated and
    lost."""
    coll = store.db[c.CONTACTS]
    existing: set[int] = set()
    pending = list(range(len(docs)))
    for attempt in range(ID_RETRIES + 1):
        refused: list[int] = []
        try:
            await coll.insert_many([docs[i] for i in pending], ordered=False)
        except BulkWriteError as exc:
            for err in exc.details.get("writeErrors", []):
                if err.get("code") != 11000:
                    raise
                refused.append(pending[int(err["index"])])
        if not refused:
            break
        phones_in = {docs[i]["phone"] for i in refused}
        found = {
            d["phone"]
            async for d in coll.find({"sending_list_id": list_id, "phone": {"$in": sorted(phones_in)}}, {"phone": 1})
        }
        existing |= {i for i in refused if docs[i]["phone"] in found}
        pending = [i for i in refused if docs[i]["phone"] not in found]  # refused for their id
        if not pending:
            break
        if attempt == ID_RETRIES:
            raise StoreError(f"no free contact id for {len(pending)} new contact(s) after {ID_RETRIES} tries")
        highest = await newest(store.db, c.CONTACTS, {})
        if highest is not None:
            await store.db[c.COUNTERS].update_one(
                {"_id": c.CONTACTS, "seq": {"$lt": int(highest["_id"])}}, {"$set": {"seq": int(highest["_id"])}}
            )
        for i, fresh in zip(pending, await store.next_ids(c.CONTACTS, len(pending)), strict=True):
            docs[i]["_id"] = fresh
    return existing


async def _upsert_batch(
    store: Store,
    list_id: int,
    items: list[tuple[str, list[tuple[int, ContactIn]]]],
    result: UpsertResult,
    now: dt.datetime,
) -> None:
    """Insert every phone of the batch (unordered); the ones the unique (list, phone) index refuses exist
    already (or were inserted concurrently) and get one update each, by id.

    Inserting first costs one round trip for new contacts (the usual import) instead of a lookup plus an
    insert; an id reserved for a phone that turns out to exist is simply not used.
    """
    coll = store.db[c.CONTACTS]
    ids = await store.next_ids(c.CONTACTS, len(items))
    docs = []
    for cid, (phone, rows) in zip(ids, items, strict=True):
        doc: ContactDoc = {
            "_id": cid,
            "sending_list_id": list_id,
            "phone": phone,
            **_DEFAULTS,
            "attributes": {},
            "created_at": now,
            "updated_at": now,
            "phone_check": phones.phone_check(phone),
        }
        for key, value in _changes(rows).items():
            if key.startswith("attributes."):
                doc["attributes"][key.split(".", 1)[1]] = value
            else:
                doc[key] = value  # type: ignore[literal-required]  # key: one of _FIELDS
        docs.append(doc)
    existing = await _insert_new(store, list_id, docs)
    for idx, (_, rows) in enumerate(items):
        if idx in existing:
            result.updated += len(rows)
        else:
            result.inserted += 1
            result.updated += len(rows) - 1
    if existing:
        dup = {items[i][0]: items[i][1] for i in existing}
        updates = [
            UpdateOne(
                {"_id": d["_id"]},
                {
                    "$set": {
                        **_changes(dup[d["phone"]]),
                        "updated_at": now,
                        "phone_check": phones.phone_check(d["phone"]),
                    }
                },
            )
            async for d in coll.find({"sending_list_id": list_id, "phone": {"$in": list(dup)}}, {"phone": 1})
        ]
        if updates:
            await coll.bulk_write(updates, ordered=False)
    # Numbers that sent STOP on this list before (or without) being contacts stay unsubscribed, whatever the import
    # says; only their own START resubscribes them. Read after the writes: a STOP racing this import either finds
    # the contact (tracking.optout unsubscribes it) or is found here (it is remembered before it looks).
    stopped = await opted_out(store.db, [(list_id, phone) for phone, _ in items])
    if stopped:
        await coll.update_many(
            {"sending_list_id": list_id, "phone": {"$in": sorted(phone for _, phone in stopped)}},
            {"$set": {"subscribed": False, "updated_at": now}},
        )
