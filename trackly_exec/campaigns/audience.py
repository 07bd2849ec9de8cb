"""Audiences: the filter compiler and the streamed, de-duplicated union of a campaign's audiences.

Filter language (what ``POST /api/v1/audiences`` accepts)::

    {"and": [{"attributes.tier": {"eq": "gold"}}, {"or": [{"first_name": {"exists": true}},
                                                          {"attributes.age": {"gte": 21}}]}]}

* a condition is ``{field: {op: value, ...}}`` or the shorthand ``{field: value}`` (= ``eq``); several fields
  in one object are and-ed;
* operators: ``eq ne in nin gt gte lt lte exists`` on fields, ``and or`` (non-empty lists) to combine; a
  leading ``$`` is accepted (``$eq``) and means the same;
* fields: the contact fields in :data:`CONTACT_FIELDS` and ``attributes.<name>`` (letters, digits, ``_``, ``-``);
* values are JSON scalars (``in``/``nin`` take lists of them, ``exists`` a boolean); an ISO date string
  compared with a date field (``created_at``...) is read as a date.

Anything else is rejected with :class:`FilterError` naming the path of the problem. The compiled query never
contains a ``sending_list_id``: the evaluation always adds the campaign's list.

The union is read as one cursor per audience, each in ``_id`` order, merged: memory does not grow with the
audience size, and a contact in several audiences is yielded once (de-duplication by contact id; a list
cannot hold one phone twice, by its unique (sending_list_id, phone) index). Every merged cursor must come in
numeric ``_id`` order, on nx-27017 too (see :func:`audience_query`).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from trackly_exec.errors import TracklyError
from trackly_exec.store import constants as c
from trackly_exec.store.documents import AudienceDoc, ContactDoc, Filter
from trackly_exec.store.models import aware_time, storable_time

FIELD_OPS = ("eq", "ne", "in", "nin", "gt", "gte", "lt", "lte", "exists")
LOGIC_OPS = ("and", "or")
CONTACT_FIELDS = frozenset(
    {
        "_id",
        "id",
        "phone",
        "first_name",
        "last_name",
        "timezone",
        "subscribed",
        "blocked",
        "in_workflow",
        "last_sent_at",
        "created_at",
        "updated_at",
    }
)
DATE_FIELDS = frozenset({"last_sent_at", "created_at", "updated_at"})
#: What the value of a condition on each contact field must be (null always may: "missing or null"); an attribute's
#: may be any scalar.
FIELD_KINDS = {
    "_id": "integer",
    "phone": "string",
    "first_name": "string",
    "last_name": "string",
    "timezone": "string",
    "subscribed": "boolean",
    "blocked": "boolean",
    "in_workflow": "boolean",
    **dict.fromkeys(DATE_FIELDS, "date"),
}
_ATTR_RE = re.compile(r"^attributes\.[A-Za-z0-9_-]{1,64}$")
MAX_DEPTH = 8
MAX_IN_VALUES = 10_000

#: What the evaluation reads of a contact: the whole document. It uses nearly every field, and nx-27017
#: applies projections in Python, which costs more than the few fields saved.
CONTACT_PROJECTION: dict[str, int] | None = None


class FilterError(TracklyError):
    """An audience filter that is not in the whitelisted language; ``path`` locates the problem."""

    def __init__(self, message: str, path: str = "filter") -> None:
        self.path = path
        self.reason = message
        super().__init__(f"{path}: {message}")


def _scalar(value: Any, path: str, kind: str | None) -> Any:
    """A condition's value, checked against its field's kind (:data:`FIELD_KINDS`; None: an attribute, any scalar):
    a value of another type matched no contact in silence (a date field compared with a number, a boolean with a
    string), so it is refused, naming the field."""
    if value is None:
        return value
    if not isinstance(value, (bool, int, float, str, dt.datetime)):
        raise FilterError(f"expected a string, number, boolean or null, got {type(value).__name__}", path)
    if kind == "date":
        when = aware_time(value)
        if when is None:
            raise FilterError("expected a date and time (ISO 8601, e.g. 2026-01-15T10:30:00Z)", path)
        if not storable_time(when):
            raise FilterError("date out of range (years 1 to 9999 in UTC)", path)
        return when
    if kind == "boolean" and not isinstance(value, bool):
        raise FilterError("expected true or false", path)
    if kind == "string" and not isinstance(value, str):
        raise FilterError("expected a string", path)
    if kind == "integer" and (isinstance(value, bool) or not isinstance(value, int)):
        raise FilterError("expected an integer", path)
    return value


def _field_name(name: Any, path: str) -> str:
    if not isinstance(name, str):
        raise FilterError("field names are strings", path)
    if name == "id":
        return "_id"
    if name in CONTACT_FIELDS or _ATTR_RE.match(name):
        return name
    if name.lstrip("$") in FIELD_OPS:
        raise FilterError(f'operator {name!r} needs a field: {{"<field>": {{"{name.lstrip("$")}": ...}}}}', path)
    raise FilterError(
        f"unknown field {name!r}; use one of {', '.join(sorted(CONTACT_FIELDS - {'_id'}))} or attributes.<name>", path
    )


def _condition(fname: str, spec: Any, path: str) -> Filter:
    kind = FIELD_KINDS.get(fname)
    ops: Filter = {}
    if not isinstance(spec, dict):  # a bare value: its equality
        ops["$eq"] = _scalar(spec, path, kind)
        spec = {}
    elif not spec:
        raise FilterError('empty condition; give an operator such as {"eq": ...}', path)
    for raw_op, value in spec.items():
        op = raw_op[1:] if isinstance(raw_op, str) and raw_op.startswith("$") else raw_op
        p = f"{path}.{raw_op}"
        if op not in FIELD_OPS:
            raise FilterError(f"operator {raw_op!r} is not allowed; allowed: {', '.join(FIELD_OPS)}", p)
        if op in ("in", "nin"):
            if not isinstance(value, list):
                raise FilterError(f"{op} takes a list", p)
            if len(value) > MAX_IN_VALUES:
                raise FilterError(f"{op} takes at most {MAX_IN_VALUES} values", p)
            ops[f"${op}"] = [_scalar(v, f"{p}[{i}]", kind) for i, v in enumerate(value)]
        elif op == "exists":
            if not isinstance(value, bool):
                raise FilterError("exists takes true or false", p)
            ops["$exists"] = value
        else:
            ops[f"${op}"] = _scalar(value, p, kind)
    eq = ops.get("$eq")
    if fname.startswith("attributes.") and "$type" not in ops and eq is not None and not isinstance(eq, str):
        # JSON keeps true and 1 apart, and so does MongoDB; nx-27017 compares them equal: say which is meant
        if isinstance(eq, bool):
            ops["$type"] = "bool"
        elif isinstance(eq, int | float):
            ops["$type"] = "number"
    if ("$ne" in ops and ops["$ne"] is None) or None in ops.get("$nin", ()):
        # "not null" means "set" (MongoDB: a missing field equals null, so ne/nin null skip it); said outright,
        # since nx-27017 matches a missing field to {"$ne": None}
        ops.setdefault("$exists", True)
    return {fname: ops}


def _compile(node: Any, path: str, depth: int) -> Filter:
    if depth > MAX_DEPTH:
        raise FilterError(f"nested deeper than {MAX_DEPTH} levels", path)
    if not isinstance(node, dict):
        raise FilterError(f"expected an object, got {type(node).__name__}", path)
    parts: list[Filter] = []
    for key, value in node.items():
        op = key[1:] if isinstance(key, str) and key.startswith("$") else key
        p = f"{path}.{key}"
        if op in LOGIC_OPS:
            if not isinstance(value, list) or not value:
                raise FilterError(f"{op} takes a non-empty list of filters", p)
            parts.append({f"${op}": [_compile(v, f"{p}[{i}]", depth + 1) for i, v in enumerate(value)]})
        else:
            parts.append(_condition(_field_name(key, p), value, p))
    if not parts:
        return {}
    return parts[0] if len(parts) == 1 else {"$and": parts}


def compile_filter(flt: Filter | None) -> Filter:
    """The MongoDB query for an audience filter (``{}`` or None matches the whole list).

    Raises :class:`FilterError` (with ``path``) for anything outside the whitelisted language.
    """
    if flt is None:
        return {}
    return _compile(flt, "filter", 0)


def audience_query(sending_list_id: int, audience: AudienceDoc) -> Filter | None:
    """The query that reads a filter audience, scoped to the list (None for an explicit-ids audience).

    The list condition and the filter stay in a top-level ``$and`` on purpose: the union merges its cursors in
    ``_id`` order, and nx-27017 answers a query it translates to SQL in the order of its ``_id`` *text* column
    (1, 10, 100, 11, 2...: measured, 0.8.1), while a top-level ``$and`` runs on its Python path, which sorts the
    integer ids as numbers (as MongoDB does). And nx-27017's SQL translation selects other contacts than MongoDB
    more often than its Python path does (null vs ``exists``, ``true`` vs 1, comparisons across types: 106 of
    400 random filters of this language against 56, checked against mongomock; every filter the Python path gets
    wrong the SQL one gets wrong too). So a filter audience is read in this shape, and the flat one (the index on
    ``sending_list_id``) only reads a whole list merged with nothing (no filter, any order). MongoDB runs both
    shapes alike. (The embedded store's Python path reads only the rows that the list and the filter's ``$eq`` and
    ``$in`` conditions may match: ``store.nxserver.patch_python_fallback``.)"""
    if audience.get("contact_ids") is not None:
        return None
    compiled = compile_filter(audience.get("filter"))
    return {"$and": [{"sending_list_id": {"$eq": sending_list_id}}, *([compiled] if compiled else [])]}


async def selected_ids(
    db: Any, sending_list_id: int, audiences: Sequence[AudienceDoc], contact_ids: Sequence[int]
) -> set[int]:
    """Which of ``contact_ids`` (contacts of the list) the union of ``audiences`` selects: one read per filter
    audience, restricted to those ids."""
    wanted = set(contact_ids)
    out: set[int] = set()
    for a in audiences:
        if not wanted - out:
            break
        query = audience_query(sending_list_id, a)
        if query is None:
            out |= wanted & {int(i) for i in a.get("contact_ids") or ()}
            continue
        rest = sorted(wanted - out)
        ids = {int(d["_id"]) async for d in db[c.CONTACTS].find({"$and": [query, {"_id": {"$in": rest}}]}, {"_id": 1})}
        out |= ids
    return out


#: An ``in``/``nin`` list up to this long is counted as an ``$or``/``$nor`` of ``$eq`` (see :func:`count_query`).
COUNT_REWRITE_MAX = 100


def _countable(node: Filter) -> Filter:
    """``node`` (a compiled filter) with each ``$in``/``$nin`` of at most :data:`COUNT_REWRITE_MAX` values spelled
    as an ``$or``/``$nor`` of ``$eq``: the same documents on MongoDB (``$in`` is an ``$or`` of equalities, null
    matching a missing field in both)."""
    parts: list[Filter] = []
    for k, v in node.items():
        if k in ("$and", "$or"):
            parts.append({k: [_countable(p) for p in v]})
            continue
        if not isinstance(v, dict):  # (the compiler always writes operator documents)
            parts.append({k: v})
            continue
        ops = dict(v)
        for op, logic in (("$in", "$or"), ("$nin", "$nor")):
            values = ops.get(op)
            if isinstance(values, list) and 0 < len(values) <= COUNT_REWRITE_MAX:
                del ops[op]
                parts.append({logic: [{k: {"$eq": x}} for x in values]})
        if ops:
            parts.append({k: ops})
    return parts[0] if len(parts) == 1 else {"$and": parts}


def count_query(sending_list_id: int, audience: AudienceDoc) -> Filter | None:
    """The query that counts a filter audience (None for an explicit-ids audience): the documents of
    :func:`audience_query`, with ``in``/``nin`` spelled as :func:`_countable` does. nx-27017 counts that in SQL
    (``COUNT`` on the list's index, no document read) where it cannot count an ``$in``: it then reads and matches
    every contact of the collection in Python, as long as reading the audience. A count is only the progress
    bar's ``expected``: on nx-27017 it may differ from the union's counts where its SQL matches differently from
    its Python path (it did before for every operator it counted in SQL; see :func:`audience_query`)."""
    if audience.get("contact_ids") is not None:
        return None
    compiled = compile_filter(audience.get("filter"))
    listed: Filter = {"sending_list_id": {"$eq": sending_list_id}}
    return {"$and": [listed, _countable(compiled)]} if compiled else listed


# --------------------------------------------------------------------------------------------- the union


class _Source:
    """One audience's contacts, in ``_id`` order, fetched a batch at a time."""

    def __init__(self, db: Any, sending_list_id: int, audience: AudienceDoc, batch: int, alone: bool = False) -> None:
        self.db = db
        self.alone = alone  # merged with no other audience: any order will do
        self.list_id = sending_list_id
        self.audience = audience
        self.batch = batch
        self.buf: list[ContactDoc] = []
        self.pos = 0
        self.done = False
        self.cursor: Any = None
        ids = audience.get("contact_ids")
        self.ids: list[int] | None = sorted({int(i) for i in ids}) if ids is not None else None
        self.ids_pos = 0
        self.ahead: asyncio.Task[list[ContactDoc]] | None = None  # the next batch, read while this one is used

    async def _fetch(self) -> list[ContactDoc]:
        coll = self.db[c.CONTACTS]
        if self.ids is not None:
            while True:
                chunk = self.ids[self.ids_pos : self.ids_pos + self.batch]
                self.ids_pos += len(chunk)
                if not chunk:
                    return []
                q = {"sending_list_id": {"$eq": self.list_id}, "_id": {"$in": chunk}}
                docs: list[ContactDoc] = await coll.find(q, CONTACT_PROJECTION).sort("_id", 1).to_list(None)
                if docs:
                    # The merge needs _id order; nx-27017 does not always sort an `_id $in` answer.
                    docs.sort(key=lambda d: d["_id"])
                    return docs
        if self.cursor is None:
            if self.alone and not compile_filter(self.audience.get("filter")):
                # The whole list, merged with nothing: one indexed read, in whatever order the store keeps.
                self.cursor = coll.find({"sending_list_id": {"$eq": self.list_id}}, CONTACT_PROJECTION)
            else:
                fq = audience_query(self.list_id, self.audience)
                self.cursor = coll.find(fq, CONTACT_PROJECTION).sort("_id", 1)
            self.cursor = self.cursor.batch_size(self.batch)
        page: list[ContactDoc] = await self.cursor.to_list(self.batch)
        return page

    async def _fill(self) -> None:
        self.buf, self.pos = [], 0
        if self.done:
            return
        task, self.ahead = self.ahead, None
        self.buf = await task if task is not None else await self._fetch()
        if not self.buf:
            self.done = True
            return
        self.ahead = asyncio.create_task(self._fetch())

    async def head(self) -> ContactDoc | None:
        if self.pos >= len(self.buf):
            if self.done:
                return None
            await self._fill()
            if not self.buf:
                return None
        return self.buf[self.pos]

    async def close(self) -> None:
        if self.ahead is not None:
            self.ahead.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.ahead
            self.ahead = None
        if self.cursor is not None:
            await self.cursor.close()


@dataclass
class UnionCounts:
    """Per-audience counts (before compliance filters), their total and the unique contacts."""

    per_audience: dict[str, int] = field(default_factory=dict)
    unique: int = 0
    #: contacts not counted in ``unique`` because another contact stands for the same handset (a number stored in
    #: another spelling: see :mod:`trackly_exec.campaigns.evaluation`)
    duplicate_handsets: int = 0

    @property
    def audience_total(self) -> int:
        return sum(self.per_audience.values())

    @property
    def overlap(self) -> int:
        """Contacts counted in more than one audience (beyond their first)."""
        return self.audience_total - self.unique - self.duplicate_handsets


async def union(
    db: Any, sending_list_id: int, audiences: Sequence[AudienceDoc], batch: int, counts: UnionCounts
) -> AsyncIterator[list[ContactDoc]]:
    """Batches of unique contacts of the union of ``audiences`` (in ``_id`` order when several are merged; a
    whole list alone comes in the store's order), counting into ``counts``.

    A k-way merge of one ``_id``-ordered cursor per audience: nothing is kept but the current batch of
    each cursor, so memory is bounded by ``batch x len(audiences)`` whatever the audience sizes.
    """
    sources = [_Source(db, sending_list_id, a, batch, alone=len(audiences) == 1) for a in audiences]
    for a in audiences:
        counts.per_audience.setdefault(str(a["_id"]), 0)
    out: list[ContactDoc] = []
    try:
        heads = [await s.head() for s in sources]
        while True:
            live = [h["_id"] for h in heads if h is not None]
            if not live:
                break
            low = min(live)
            doc: ContactDoc | None = None
            for i, s in enumerate(sources):
                h = heads[i]
                if h is not None and h["_id"] == low:
                    counts.per_audience[str(s.audience["_id"])] += 1
                    doc = h
                    s.pos += 1
                    # drain this source's run of the same id fast path: next head
                    heads[i] = await s.head() if s.pos >= len(s.buf) else s.buf[s.pos]
            counts.unique += 1
            assert doc is not None
            out.append(doc)
            if len(out) >= batch:
                yield out
                out = []
        if out:
            yield out
    finally:
        for s in sources:
            await s.close()
