"""The embedded store's child process: nx-27017 with updates that keep BSON types.

nx-27017 0.8.1 (neosqlite 1.17) runs simple updates as SQL ``json_set`` with the raw value as a parameter, so a
top-level ``$set`` of a datetime stores a *string* (``"2026-11-29 11:23:34.123000"``, no longer comparable with
dates) and a boolean stores ``1``/``0``. Updates carrying a datetime or a boolean value are sent down neosqlite's
Python update path instead, which keeps the types (and measured no slower here); every other update and every
query is untouched. (neosqlite's global "force fallback" switch is not used: it breaks ``{field: None}`` queries.)

A correctness fix, :func:`patch_int_ids`: a document that neosqlite finds in Python (a query it cannot put in SQL)
and then writes by its row is written to its own row, also when its ``_id`` is an integer (neosqlite took such an
``_id`` for the row number: the write was lost, or landed on another document).

The store also always runs on the standard library's ``sqlite3`` (text JSON), never on ``pysqlite3`` should one be
installed: with it, neosqlite stores documents as JSONB in a column of NUMERIC affinity, so string ids that read as
numbers collide (``"00000000000000e0"`` and ``"0000000000000000"`` are both 0: "UNIQUE constraint failed"), and it
measured no faster for the executor's work (bench/storeops.py: 471 against 434 us of store CPU per message).

Shortcuts remove per-document Python work from neosqlite's and nx-27017's paths without changing what is stored or
answered (tests/test_nxserver.py compares each with their own path on the same documents):

- :func:`patch_bulk_set`: an ``update_many`` whose update is one ``$set`` of plain top-level scalars (strings,
  integers, finite floats, None) runs as one SQL ``UPDATE ... SET data = json_set(...)`` over the rows the filter
  selects (the same SQL ``WHERE`` neosqlite selects them with), instead of, per document, a read, a JSON parse in
  Python, a ``json_set`` and a read back and parse again; ``matched`` and ``modified`` are counted as before (a
  document whose fields already hold values equal in Python is matched, not modified), in the same statement (a
  small Python function SQLite calls for each selected row, :func:`_tally`), and the same is stored.
  Anything else (datetimes, booleans, documents, dotted or ``_id`` keys, other operators, upserts, array filters, a
  filter neosqlite cannot put in SQL, a constraint failure, which SQLite rolls back whole) takes neosqlite's path.
  The executor's claim and send intent are such updates: bench/storeops.py measured 211 and 186 us of store CPU per
  message before.
- :func:`patch_insert_copy`: an insert no longer deep-copies the document before converting its ``bytes`` to
  ``Binary`` (that conversion already builds new dicts and lists; the deep copy was half the CPU of inserting a
  record with a datetime), and a document with an id and plain scalars is written to JSON by orjson
  (:func:`_flat_json`: a 28-field record 1.5 instead of 8.5 us; the same values, read back by SQLite or by
  neosqlite's parser) and stored as it is, with no copy and no ``json_valid`` parse (orjson writes valid JSON).
- :func:`patch_insert_handling`: the insert command no longer formats every document it carries into a debug log
  line that is never written (nx-27017 builds ``f"handle_insert sections: {sections}"`` eagerly: ~5 us per
  30-field record, under the store's lock), and a document, filter or update whose top-level values are all plain
  scalars is no longer copied value by value to look for BSON ObjectIds it cannot hold (~6 us per record). Anything
  holding a document, an array, an ObjectId or a type not listed is converted as before.
- :func:`patch_or_in_sql`: a lookup of given ids with an ``$or`` of single-field conditions (``{_id: {$in: ids},
  $or: [{subscribed: false}, {blocked: true}]}``: the executor's send-time checks) selects its documents with
  neosqlite's own SQL condition for each branch joined by ``OR``, instead of reading and testing every document of
  the collection in Python (a hundred times slower for 1,000 ids among 100,000 contacts): the union of what each
  branch finds alone, as separate queries found it. Any other ``$or`` is neosqlite's.
- :func:`patch_python_fallback`: a query neosqlite answers in Python (a top-level ``$and``: how an audience's
  contacts are read, see ``campaigns.audience.audience_query``) read, parsed and tested every document of the
  collection. It now reads only the rows a SQL condition selects: for each ``$eq``/``$in`` of strings or integers
  on a field, "the field holds one of these values, or an array" (:func:`prefilter`), a superset of what the
  matcher accepts, which then tests each row as before. An audience of half a 50,000-contact list: 1.58 -> 0.95 s
  of store CPU; bench/campaign.py's evaluation ratio 0.73 -> 0.85. A query with any other operator, a literal
  value or a ``$``-key other than ``$and`` is read whole, as before.
- :func:`patch_document_loads`: stored documents are parsed by orjson, with neosqlite's own object hook applied to
  every object as the standard library applies it (3 instead of 6 us for a 25-field queue document); text orjson
  reads differently (NaN, a lone surrogate, an integer beyond 64 bits) is parsed by the standard library.
- :func:`patch_batch_insert`: an insert command whose documents all have an id and only plain values (as
  :func:`_flat_json` writes them) is stored by one ``executemany`` under a savepoint, instead of nx-27017's loop of
  ``insert_one`` calls through neosqlite; when SQLite refuses any row (a duplicate key, a unique index), the savepoint
  is rolled back and nx-27017's own loop inserts them one by one and answers each error. Any other document (no id,
  a document or array value, an ObjectId, bytes, a NaN), a client transaction, GridFS or a collection still to
  create takes nx-27017's path. With :func:`_flat_json` checking the types in C and writing datetimes by orjson's
  hook: a 28-field record 21 against 18-20 us of store CPU.
- :func:`patch_write_transactions`: a write command (insert, update, delete, findAndModify, bulkWrite) runs in one
  SQLite transaction, begun and committed under nx-27017's lock for its database, instead of one transaction per
  statement: nx-27017 inserts a batch one document at a time, each its own commit (a 28-field record with five
  indexes 25-28 against 21 us of store CPU in memory, 49-51 against 22-23 us on file, where each commit wrote its
  pages to the journal). Write errors are the statements' own as before (SQLite undoes the failed statement only,
  and the rest is committed: what was written stays written, even when the handler fails). A command of a client
  transaction, or one arriving while a transaction is open on the connection, is left as it was.
- :func:`patch_id_values`: neosqlite turns each id of a query into an ObjectId's text when it can, by trying to
  build an ObjectId from every string and catching the error; a string whose length is not 24 is kept as it is
  without trying (the error it would raise), which takes 1.6 us per id off a lookup of 1,000 string ids (4.2 ->
  2.6 ms): the executor's claims, intents and deletes, the cooldown reservations, the records of delivery reports.
- :func:`patch_datetime_checks`: neosqlite looks for dates among a query's values (to treat a date query its own
  way) by calling, for each value of an ``$in``, a method that imports its helper again and tries its date
  patterns on a string; an integer, a float, a boolean or None, and a string holding neither ``-`` nor ``/`` (which
  every one of those patterns needs: a message id) are answered at once, not a date, as the helper answers them.
  An integer id is also kept as it is by :func:`patch_id_values`. In the send-time checks' lookups of 1,000
  contact ids, these were a fifth of the store's time.
- :func:`patch_signals`: SIGTERM and SIGINT cancel the server's task from the event loop instead of raising
  ``SystemExit`` inside whatever callback runs when they land (which could leave a closing connection half closed
  and the process waiting for it for ever: a SIGKILLed daemon's store, sent SIGTERM by ``PR_SET_PDEATHSIG`` as the
  daemon's sockets closed, stayed alive once in about 30 runs).
- :func:`patch_reply_conversion`: a reply no longer copies, value by value, every document it carries to turn
  neosqlite's ObjectIds and Decimals into BSON's; a document of plain scalars is sent as it is, and in any other
  document only the values that are not plain scalars go through nx-27017's conversion (about 4 % of the
  store's CPU while the executor runs, on the thread that serves every connection).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import math
import os
import re
import signal
import sys
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from trackly_exec.store.documents import Filter, JsonObject, Update


def _typed(value: Any) -> bool:
    """True when ``value`` holds a datetime or a boolean the SQL update path would flatten."""
    if isinstance(value, (bool, dt.datetime, dt.date)):
        return True
    if isinstance(value, dict):
        return any(_typed(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_typed(v) for v in value)
    return False


def patch_updates() -> None:
    """Route updates with datetime/boolean values to neosqlite's type-preserving Python update path."""
    from neosqlite.collection.query_helper._sql_updates import SqlUpdatesMixin

    original = SqlUpdatesMixin._can_use_sql_updates

    def _can_use_sql_updates(self: Any, update_spec: Mapping[str, Any], *args: Any, **kwargs: Any) -> bool:
        if any(_typed(v) for op, v in update_spec.items() if isinstance(v, dict) and op != "$currentDate"):
            return False
        return bool(original(self, update_spec, *args, **kwargs))

    SqlUpdatesMixin._can_use_sql_updates = _can_use_sql_updates


#: A top-level field name the bulk ``$set`` writes as a literal JSON path (``$.name``).
_PLAIN_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

#: For a value the bulk ``$set`` stores: the ``json_type`` it is stored as, and the stored types neosqlite counts as
#: equal to it (bool is excluded before: an int). neosqlite compares documents in Python, where ``1 == 1.0 ==
#: True``: such a document is matched, not modified, yet the new value is written all the same.
_STORED_AS = {str: "'text'", int: "'integer'", float: "'real'", type(None): "'null'"}
_SAME_TYPES = {
    str: "('text')",
    int: "('integer', 'real', 'true', 'false')",
    float: "('integer', 'real', 'true', 'false')",
    type(None): "('null')",
}


def _plain_set(update: Mapping[str, Any]) -> JsonObject | None:
    """The fields of ``update`` when it is one ``$set`` of plain top-level scalars SQL stores unchanged, else None.

    An integer the wire brought as ``bson.Int64`` (any beyond 32 bits: epoch milliseconds) is passed as a plain int.
    """
    if len(update) != 1 or not isinstance(fields := update.get("$set"), dict) or not fields:
        return None
    plain: JsonObject = {}
    for key, value in fields.items():
        if not isinstance(key, str) or key == "_id" or not _PLAIN_KEY.match(key):
            return None
        if isinstance(value, int) and not isinstance(value, bool):
            if not -(2**63) <= value < 2**63:
                return None
            value = int(value)
        kind = type(value)
        if kind not in _SAME_TYPES:  # bool, datetime, dict, list, ObjectId, bytes...: neosqlite's path
            return None
        if kind is float and not math.isfinite(value):
            return None
        plain[key] = value
    return plain


@functools.lru_cache(maxsize=1024)
def _quoted(name: str) -> str:
    """neosqlite's quoting of a collection's table name (a regular expression per call), once per name."""
    from neosqlite.sql_utils import quote_table_name

    return str(quote_table_name(name))


#: The bulk ``$set``'s counter (:func:`_tally`), per thread: nx-27017 runs commands of different databases at once.
_TALLY = threading.local()
_TALLY_FN = "_trackly_tally"


def _tally(modified: int, write: int) -> int:
    """Count a row the bulk ``$set`` selected (and whether it is modified); say whether to write it."""
    counts: list[int] = _TALLY.counts
    counts[0] += 1
    counts[1] += 1 if modified else 0
    return write


def patch_bulk_set() -> None:
    """Run an ``update_many`` of one plain ``$set`` as one SQL statement (see the module docstring)."""
    from neosqlite._sqlite import sqlite3
    from neosqlite.collection.query_engine.crud_operations import CRUDOperationsMixin
    from neosqlite.collection.type_utils import validate_session
    from neosqlite.results import UpdateResult

    original = CRUDOperationsMixin.update_many

    def update_many(
        self: Any,
        filter: Filter,
        update: Update,
        upsert: bool = False,
        array_filters: list[Filter] | None = None,
        session: Any = None,
    ) -> Any:
        fields = None if upsert or array_filters or self.jsonb.jsonb_supported else _plain_set(update)
        if fields is None:
            return original(self, filter, update, upsert, array_filters, session)
        where, params = self.sql_translator.translate_match(self.helpers._normalize_id_query(filter))
        if where is None:
            return original(self, filter, update, upsert, array_filters, session)
        validate_session(session, self.collection._database)
        table = _quoted(self.collection.name)
        db = self.collection.db
        sets = ", ".join(f"'$.{key}', ?" for key in fields)

        def differs(types: Mapping[type, str], op: str) -> str:
            return " OR ".join(
                f"coalesce(json_type(data, '$.{key}'), 'missing') {op} {types[type(value)]} "
                f"OR json_extract(data, '$.{key}') IS NOT ?"
                for key, value in fields.items()
            )

        values = list(fields.values())
        clause = where.strip()
        if clause and not clause.startswith("WHERE "):  # (not a WHERE clause: neosqlite's path)
            return original(self, filter, update, upsert, array_filters, session)
        cond = f"({clause[len('WHERE ') :]})" if clause else "1"
        # One pass: each row the filter selects is counted (matched, and modified as neosqlite counts it: Python
        # equality) by _tally, whose answer says whether to write it (its stored value differs in type or value:
        # what neosqlite's path stores). The CASE repeats the filter so that only selected rows are counted,
        # whatever order SQLite tests the terms in; the repeated JSON reads come from SQLite's per-row cache.
        sql = (
            f"UPDATE {table} SET data = json_set(data, {sets}) WHERE {cond} AND CASE WHEN {cond} "
            f"THEN {_TALLY_FN}(({differs(_SAME_TYPES, 'NOT IN')}), ({differs(_STORED_AS, 'IS NOT')})) ELSE 0 END"
        )
        args = [*values, *params, *params, *values, *values]
        counts = _TALLY.counts = [0, 0]
        try:
            try:
                db.execute(sql, args)
            except sqlite3.OperationalError as exc:
                if f"no such function: {_TALLY_FN}" not in str(exc):
                    raise
                db.create_function(_TALLY_FN, 2, _tally)
                counts = _TALLY.counts = [0, 0]
                db.execute(sql, args)
        except sqlite3.IntegrityError:  # the statement was rolled back whole: neosqlite's path says what it says
            return original(self, filter, update, upsert, array_filters, session)
        return UpdateResult(matched_count=counts[0], modified_count=counts[1], upserted_id=None)

    CRUDOperationsMixin.update_many = update_many


def _flat_json_types() -> frozenset[type]:
    from bson.int64 import Int64

    return frozenset({str, int, bool, type(None), Int64, float, dt.datetime})


_FLAT = _flat_json_types()


def _dollar_date(value: Any) -> Any:
    """orjson's hook: a datetime as neosqlite writes it; anything else is not written here."""
    if type(value) is dt.datetime:
        return {"$date": value.isoformat()}
    raise TypeError


def _flat_json(doc: Mapping[str, Any]) -> str | None:
    """``doc`` as JSON text, encoded by orjson, when its values are all plain scalars (strings, integers within 64
    bits, finite floats, booleans, None, datetimes as neosqlite writes them: ``{"$date": isoformat}``); else None
    (neosqlite's encoder then writes it, and raises what it raises). The text differs from neosqlite's only in
    spacing, in non-ASCII characters written as themselves rather than as ``\\u`` escapes, and in how an exponent
    is spelled: SQLite and the JSON parser read the same values back. About 1 against 8.5 us for a 28-field record
    (the types are checked in C, the datetimes written by a hook).
    """
    import orjson

    kinds = set(map(type, doc.values()))
    if not kinds <= _FLAT:
        return None
    # json.dumps writes NaN, which SQLite refuses (neosqlite's error); orjson would write null
    if float in kinds and not all(math.isfinite(v) for v in doc.values() if type(v) is float):
        return None
    try:  # a key that is not a string, an integer beyond 64 bits, a lone surrogate: neosqlite's encoder
        return orjson.dumps(doc, default=_dollar_date, option=orjson.OPT_PASSTHROUGH_DATETIME).decode()
    except orjson.JSONEncodeError:
        return None


def patch_insert_copy() -> None:
    """Insert without neosqlite's defensive deep copy of each document (see the module docstring)."""
    from neosqlite.collection.json_helpers import NeoSQLiteJSONEncoder
    from neosqlite.collection.query_helper import crud_operations as ops
    from neosqlite.collection.query_helper.utils import _convert_bytes_to_binary

    original = ops.CRUDOperationsMixin._internal_insert
    encode = NeoSQLiteJSONEncoder().encode  # what neosqlite_json_dumps builds per call (json.dumps's defaults)

    def _internal_insert(self: Any, document: Any) -> Any:
        if not isinstance(document, dict):
            return original(self, document)  # raises neosqlite's MalformedDocument
        original_has_id = "_id" in document
        if original_has_id and document["_id"] is not None and (flat := _flat_json(document)) is not None:
            # orjson's text of plain scalars: valid JSON, nothing to convert or copy
            self.collection.db.execute(
                f"INSERT INTO {_quoted(self.collection.name)}(data, _id) VALUES (?, ?)", (flat, str(document["_id"]))
            )
            return document["_id"]
        generated_id = ops.ObjectId() if not original_has_id or document["_id"] is None else document["_id"]
        # _convert_bytes_to_binary builds new dicts and lists all the way down (scalars are immutable), so the
        # stored copy shares nothing mutable with the caller's document; a scalar needs no call
        doc_to_insert = {
            k: _convert_bytes_to_binary(v) if isinstance(v, (bytes, dict, list)) else v for k, v in document.items()
        }
        doc_to_insert["_id"] = (
            _convert_bytes_to_binary(generated_id) if isinstance(generated_id, (bytes, dict, list)) else generated_id
        )
        json_str = encode(doc_to_insert)
        # one statement: stored only if SQLite finds it valid JSON (json.dumps writes NaN as is), as neosqlite checks
        cursor = self.collection.db.execute(
            f"INSERT INTO {_quoted(self.collection.name)}(data, _id) SELECT ?, ? WHERE json_valid(?)",
            (json_str, str(generated_id), json_str),
        )
        if cursor.rowcount != 1:
            return original(self, document)  # raises neosqlite's error with the position
        if not original_has_id:
            document["_id"] = generated_id
        return generated_id

    ops.CRUDOperationsMixin._internal_insert = _internal_insert


class _Unprinted(list[Any]):
    """A command's sections that format as a summary, not as every document they carry (see the docstring)."""

    def __repr__(self) -> str:
        return f"<{len(self)} sections>"

    __str__ = __repr__


def _scalar_types() -> frozenset[type]:
    from bson.binary import Binary
    from bson.int64 import Int64

    return frozenset({str, int, float, bool, type(None), bytes, dt.datetime, Int64, Binary})


def patch_insert_handling() -> None:
    """Insert and convert ids without the per-document work that changes nothing (see the module docstring)."""
    from nx_27017.handler import NeoSQLiteHandler
    from nx_27017.utils import convert_bson_to_neo_objectids

    original_insert = NeoSQLiteHandler.handle_insert
    scalars = _scalar_types()

    def handle_insert(self: Any, msg: Any) -> Any:
        if isinstance(msg, dict) and type(msg.get("sections")) is list:
            msg = {**msg, "sections": _Unprinted(msg["sections"])}
        return original_insert(self, msg)

    def _convert_objectids(self: Any, doc: Any) -> Any:
        # only exact scalar types: a subclass, an ObjectId, a document or an array takes nx-27017's conversion
        if type(doc) is dict and scalars.issuperset(map(type, doc.values())):
            return doc
        return convert_bson_to_neo_objectids(doc)

    NeoSQLiteHandler.handle_insert = handle_insert
    NeoSQLiteHandler._convert_objectids = _convert_objectids


def _in_client_transaction(body: Mapping[str, Any]) -> bool:
    """Whether a command belongs to a client transaction (its statements are that transaction's, not ours)."""
    return "autocommit" in body or "startTransaction" in body


def _insert_parts(msg: Any) -> tuple[JsonObject, list[Any]] | None:
    """An insert command's body and its documents, gathered as nx-27017's ``handle_insert`` gathers them (payload
    sections, then the body's ``documents`` and any other document-valued key it does not know); None when ``msg``
    has any other shape."""
    sections = msg.get("sections") if isinstance(msg, dict) else None
    if not isinstance(sections, list):
        return None
    body: JsonObject | None = None
    docs: list[Any] = []
    for section in sections:
        if not (isinstance(section, tuple) and len(section) == 2):
            return None
        kind, part = section
        if kind == "body" and body is None and isinstance(part, dict):
            body = part
        elif kind == "payload_docs" and isinstance(part, list):
            docs.extend(part)
        elif kind == "payload" and isinstance(part, dict):
            for value in part.values():
                if isinstance(value, list):
                    docs.extend(value)
                elif isinstance(value, dict):
                    docs.append(value)
        else:
            return None
    if body is None:
        return None
    for key, value in body.items():
        if key == "documents" and isinstance(value, list):
            docs.extend(value)
        elif (
            key not in {"$db", "insert", "ordered", "writeConcern", "lsid"}
            and not key.startswith("$")
            and isinstance(value, dict)
        ):
            docs.append(value)
    return body, docs


def patch_batch_insert() -> None:
    """Insert a batch of documents of plain values in one statement (see the module docstring)."""
    import sqlite3

    from nx_27017.handler import NeoSQLiteHandler

    per_document = NeoSQLiteHandler.handle_insert

    def handle_insert(self: Any, msg: Any) -> Any:
        parts = _insert_parts(msg)
        if parts is None:
            return per_document(self, msg)
        body, docs = parts
        name, coll_name = body.get("$db", "test"), body.get("insert")
        if (
            not docs
            or not isinstance(name, str)
            or not isinstance(coll_name, str)
            or _in_client_transaction(body)
            or self._is_gridfs_collection(coll_name)
        ):
            return per_document(self, msg)
        rows: list[tuple[str, str]] = []
        for doc in docs:
            if type(doc) is not dict or doc.get("_id") is None or (text := _flat_json(doc)) is None:
                return per_document(self, msg)
            rows.append((text, str(doc["_id"])))
        with self._lock_for(name):
            try:
                db = self.get_database(name)
            except Exception:  # a name nx-27017 refuses: its handler answers the error
                return per_document(self, msg)
            if coll_name not in db.list_collection_names():  # nx-27017 creates it first
                return per_document(self, msg)
            self._get_or_create_session(body, db, name)  # nx-27017's session bookkeeping, as its handler does
            self._apply_write_concern(db, name, body.get("writeConcern"))
            conn = db.db
            conn.execute("SAVEPOINT trackly_batch_insert")
            try:
                conn.executemany(f"INSERT INTO {_quoted(coll_name)}(data, _id) VALUES (?, ?)", rows)
            except sqlite3.Error:  # a duplicate key, a constraint: nothing of the batch stays, nx-27017 inserts
                conn.execute("ROLLBACK TO trackly_batch_insert")  # one by one and answers each error
                conn.execute("RELEASE trackly_batch_insert")
                return per_document(self, msg)
            conn.execute("RELEASE trackly_batch_insert")
        return msg.get("request_id"), {"ok": 1, "n": len(docs), "insertedIds": [d["_id"] for d in docs]}

    NeoSQLiteHandler.handle_insert = handle_insert


#: Commands that write: each runs in one SQLite transaction (:func:`patch_write_transactions`).
_WRITES = frozenset({"insert", "update", "delete", "findAndModify", "findandmodify", "bulkWrite"})


def _write_body(msg: Any) -> Mapping[str, Any] | None:
    """The body of ``msg`` when it is a write command outside a client transaction, else None."""
    sections = msg.get("sections") if isinstance(msg, dict) else None
    if not isinstance(sections, list):
        return None
    for section in sections:
        if isinstance(section, tuple) and len(section) == 2 and section[0] == "body" and isinstance(section[1], dict):
            body = section[1]
            first = next(iter(body), None)
            if first in _WRITES and not _in_client_transaction(body):
                return body
            return None
    return None


def in_one_transaction(handle: Callable[..., Any]) -> Callable[..., Any]:
    """``handle`` (an nx-27017 command handler) running each write command in one SQLite transaction: begun under
    nx-27017's lock for the command's database, committed whatever happens (what a statement wrote stays written,
    as when each statement committed itself), rolled back only when the commit itself fails. Not begun for a read,
    for a command of a client transaction, or while a transaction is open on the connection."""
    from nx_27017.handler import _msg_db_name

    @functools.wraps(handle)
    def run(self: Any, msg: Any, *args: Any, **kwargs: Any) -> Any:
        if _write_body(msg) is None:
            return handle(self, msg, *args, **kwargs)
        name = _msg_db_name(msg)
        with self._lock_for(name):  # nx-27017's own lock for this database (re-entrant: the handler takes it too)
            try:
                conn = self.get_database(name).db
            except Exception:  # a name nx-27017 refuses: its handler answers the error
                return handle(self, msg, *args, **kwargs)
            if conn.in_transaction:  # a client transaction is open on it: its statements are its own
                return handle(self, msg, *args, **kwargs)
            conn.execute("BEGIN")
            try:
                return handle(self, msg, *args, **kwargs)
            finally:
                if conn.in_transaction:
                    try:
                        conn.execute("COMMIT")
                    except BaseException:
                        if conn.in_transaction:
                            conn.execute("ROLLBACK")
                        raise

    return run


def patch_write_transactions() -> None:
    """Run each write command in one SQLite transaction instead of one per statement (see the module docstring)."""
    from nx_27017.handler import NeoSQLiteHandler

    NeoSQLiteHandler.handle_insert = in_one_transaction(NeoSQLiteHandler.handle_insert)
    NeoSQLiteHandler.handle_command = in_one_transaction(NeoSQLiteHandler.handle_command)


STOP_GRACE_SECONDS = 3.0


def patch_signals() -> None:
    """SIGTERM and SIGINT stop the server at a safe point of its event loop, always.

    nx-27017's own handlers raise ``SystemExit`` from wherever the main thread is when the signal lands. Landing in
    a connection's close callback (a SIGKILLed daemon's sockets close just before ``PR_SET_PDEATHSIG`` sends its
    store SIGTERM), it left that connection half closed and ``asyncio.run`` waiting for it forever: an orphan
    store, once in about 30 stops with 40 connections closing. Now the loop's own signal handling cancels the
    server's task, and each connection is closed in order at the point where it waits. A stop that still takes
    over :data:`STOP_GRACE_SECONDS` ends the process anyway (nothing waits for an answer from it then).
    """
    from nx_27017 import server

    serve = server.run_server

    async def run_server(host: str, port: int, handler: Any) -> None:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        stopping = False  # (read and set on the loop only)

        def stop() -> None:
            nonlocal stopping
            if not stopping:
                stopping = True
                deadline = threading.Timer(STOP_GRACE_SECONDS, os._exit, (0,))
                deadline.daemon = True
                deadline.start()
            task.cancel()

        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop)
        try:
            await serve(host, port, handler)
        except asyncio.CancelledError:
            if not stopping:
                raise

    server.run_server = run_server


def patch_reply_conversion() -> None:
    """Build replies without copying every document whose values are plain scalars (see the module docstring)."""
    from bson.int64 import Int64
    from nx_27017 import wire_protocol
    from nx_27017.utils import convert_neo_to_bson_objectids

    scalars = _scalar_types()

    def convert(doc: Any) -> Any:
        kind = type(doc)
        if kind is dict:
            # as nx-27017 converts a document, key by key (its odd rule included: an "id" equal to 0 is an Int64)
            if "id" not in doc and scalars.issuperset(map(type, doc.values())):
                return doc
            # a scalar value is what nx-27017's conversion returns it as: only the others go through it
            return {
                k: Int64(0) if k == "id" and v == 0 else v if type(v) in scalars else convert(v) for k, v in doc.items()
            }
        if kind is list:  # (an insert's 1,000 ids: converted one by one, they were a tenth of its store time)
            return [v if type(v) in scalars else convert(v) for v in doc]
        return convert_neo_to_bson_objectids(doc)  # a scalar, an ObjectId, a Decimal, a subclass: nx-27017's

    wire_protocol._convert_objectids = convert


def patch_or_in_sql() -> None:
    """Look up given ids with an ``$or`` of field conditions in SQL (see the module docstring)."""
    from neosqlite.collection.query_helper._sql_query_builder import SqlQueryBuilderMixin

    original = SqlQueryBuilderMixin._build_simple_where_clause

    def condition(self: Any, query: Mapping[str, Any]) -> tuple[str, list[Any]] | None:
        """neosqlite's own SQL condition for ``query`` alone, or None."""
        built = original(self, query)
        if built is None or built[2] or not built[0].startswith("WHERE "):  # Python's, or temporary tables
            return None
        return built[0][len("WHERE ") :], list(built[1])

    def _build_simple_where_clause(self: Any, query: Any) -> Any:
        if not (isinstance(query, dict) and query.keys() == {"_id", "$or"}):
            return original(self, query)
        ids, branches = query["_id"], query["$or"]
        if not (isinstance(ids, dict) and ids.keys() == {"$in"} and isinstance(ids["$in"], list)):
            return original(self, query)
        if not (isinstance(branches, list) and branches and all(_one_field(b) for b in branches)):
            return original(self, query)
        parts = [condition(self, {"_id": ids}), *(condition(self, b) for b in branches)]
        if any(p is None for p in parts):
            return original(self, query)
        (where, params), *alternatives = (p for p in parts if p is not None)
        params = [*params, *(v for _, values in alternatives for v in values)]
        return f"WHERE ({where}) AND ({' OR '.join(f'({sql})' for sql, _ in alternatives)})", params, []

    SqlQueryBuilderMixin._build_simple_where_clause = _build_simple_where_clause


def _one_field(branch: Any) -> bool:
    """A branch the ``$or`` lookup takes: one top-level field, not ``_id``, and a plain value or one operator."""
    if not isinstance(branch, dict) or len(branch) != 1:
        return False
    ((key, value),) = branch.items()
    if not isinstance(key, str) or key == "_id" or not _PLAIN_KEY.match(key):
        return False
    return not isinstance(value, dict) or (len(value) == 1 and next(iter(value)) in _LOOKUP_OPS)


_LOOKUP_OPS = frozenset({"$eq", "$ne", "$gt", "$gte", "$lt", "$lte"})


_PREFILTER_OPS = frozenset({"$eq", "$in", "$ne", "$nin", "$gt", "$gte", "$lt", "$lte", "$exists"})
_JSON_LABEL = re.compile(r"[A-Za-z0-9_\-]+")


def _prefilter_value(value: Any) -> bool:
    """A value whose equality SQLite decides as neosqlite's Python matcher does (a string or an integer)."""
    kind = type(value)
    return (kind is str and "\x00" not in value) or (kind is int and -(2**53) < value < 2**53)


def prefilter(query: Any) -> tuple[str, list[Any]] | None:
    """A SQL condition selecting every document neosqlite's Python matcher may accept for ``query``, or None.

    Taken from the ``$eq`` and ``$in`` conditions on a field (top level or inside ``$and``), each as "the field's
    value is one of these, or the field is an array" (the matcher follows dots through documents only, and tests
    array elements): a superset of the documents the query matches, which the matcher then tests as before. A query
    with an operator not listed, a ``$``-key other than ``$and`` or a literal value is not prefiltered."""
    if not isinstance(query, dict):
        return None
    parts: list[str] = []
    params: list[Any] = []
    for key, value in query.items():
        if key == "$and":
            if not isinstance(value, list):
                return None
            for branch in value:
                inner = prefilter(branch)
                if inner is None:
                    return None
                if inner[0]:
                    parts.append(inner[0])
                    params.extend(inner[1])
            continue
        if not isinstance(key, str) or key.startswith("$") or key == "_id":
            return None
        if not isinstance(value, dict) or not value or not value.keys() <= _PREFILTER_OPS:
            return None
        labels = key.split(".")
        if not all(_JSON_LABEL.fullmatch(label) for label in labels):
            continue  # (a condition not prefiltered: the matcher alone decides it)
        path = "$." + ".".join(f'"{label}"' for label in labels)
        for op in ("$eq", "$in"):
            if op not in value:
                continue
            values = [value[op]] if op == "$eq" else value[op]
            if not isinstance(values, list) or not values or not all(_prefilter_value(v) for v in values):
                continue
            marks = ",".join("?" * len(values))
            parts.append(f"(json_extract(data, ?) IN ({marks}) OR json_type(data, ?) = 'array')")
            params.extend([path, *values, path])
    return " AND ".join(parts), params


def patch_python_fallback() -> None:
    """Read only the rows a query's prefilter selects on neosqlite's Python path (see the module docstring)."""
    from neosqlite.collection.cursor import Cursor
    from neosqlite.collection.jsonb_support import json_data_column
    from neosqlite.sql_utils import quote_table_name

    original = Cursor._handle_python_fallback

    def _handle_python_fallback(self: Any) -> Any:
        built = None if (self._min or self._max) else prefilter(self._filter)
        if not built or not built[0]:
            return original(self)
        where, params = built
        sort_clause = self._query_helpers._build_sort_clause(self._sort, self._collation)
        jsonb = self._collection.query_engine.jsonb.jsonb_supported
        cmd = (
            f"SELECT id, _id, {json_data_column(jsonb)} as data FROM {quote_table_name(self._collection.name)} "
            f"WHERE {where}{sort_clause}"
        )
        return _matching(self, cmd, params, bool(sort_clause))

    Cursor._handle_python_fallback = _handle_python_fallback


def _matching(cursor: Any, cmd: str, params: list[Any], sorted_in_sql: bool) -> Any:
    """The documents ``cmd`` selects that neosqlite's matcher accepts for the cursor's filter, as its Python path
    yields them: a generator, which marks the sort as done in SQL only once iterated, as neosqlite's does (by then
    the cursor has decided to sort in Python too, which it then does)."""
    if sorted_in_sql:
        cursor._sql_handled_sort = True
    rows = cursor._collection.db.execute(cmd, params)
    apply = functools.partial(cursor._query_helpers._apply_query, cursor._filter)
    while True:
        batch = rows.fetchmany(cursor._batch_size)
        if not batch:
            break
        for doc in cursor._load_documents(batch):
            if apply(doc):
                yield doc


def patch_document_loads() -> None:
    """Read stored documents with orjson (see the module docstring)."""
    import json

    import orjson
    from neosqlite import collection
    from neosqlite.collection.json_helpers import neosqlite_json_loads

    hooks: list[Callable[[JsonObject], Any]] = []

    class _Capture(json.JSONDecoder):  # neosqlite's object hook, as it hands it to json.loads
        def __init__(self, *, object_hook: Callable[[JsonObject], Any], **kwargs: Any) -> None:
            hooks.append(object_hook)
            super().__init__()

    neosqlite_json_loads("{}", cls=_Capture)
    hook = hooks[0]
    big = 2.0**63

    def convert(value: Any) -> Any:
        """What json.loads with ``hook`` builds from orjson's parse: the hook applied to every object, innermost
        first. A float beyond 64-bit integers may have been an integer orjson read as a float: the standard library's
        parse is taken then."""
        items = value.items() if type(value) is dict else enumerate(value)
        for key, item in items:
            kind = type(item)
            if kind is dict or kind is list:
                value[key] = convert(item)
            elif kind is float and not -big < item < big:
                raise OverflowError  # (caught below)
        return hook(value) if type(value) is dict else value

    def loads(s: Any, **kwargs: Any) -> Any:
        if kwargs or type(s) is not str:
            return neosqlite_json_loads(s, **kwargs)
        try:
            parsed = orjson.loads(s)
            return convert(parsed) if type(parsed) in (dict, list) else parsed
        except (orjson.JSONDecodeError, OverflowError):  # NaN, a lone surrogate, a huge number: the standard library's
            return neosqlite_json_loads(s)

    collection.neosqlite_json_loads = loads


def patch_id_values() -> None:
    """A string id that cannot be an ObjectId's text is used as it is, without trying (see the module docstring)."""
    from neosqlite.collection.query_helper import _sql_query_builder as builder

    original = builder._normalize_id_value

    def _normalize_id_value(v: Any) -> Any:
        kind = type(v)
        if kind is int or (kind is str and len(v) != 24):  # an int is kept as it is; neosqlite's ObjectId refuses a
            return v  # string of any other length: it keeps the string
        return original(v)

    builder._normalize_id_value = _normalize_id_value


def patch_int_ids() -> None:
    """A document found by a query neosqlite cannot put in SQL, then written by its row, is written to *its* row.

    neosqlite's query engine turns a found document's ``_id`` into the SQLite row id with a helper that takes any
    ``int`` for a row id already, so a document whose own ``_id`` is an integer (our executions, campaigns, lists,
    accounts, contacts) was written to the row whose number is that ``_id``: the update of execution 7 stored in row
    2 was lost (row 7 absent) or, worse, written over whatever document row 7 holds. A crashed evaluation was
    never resumed that way (the lease take-over's ``find_one_and_update`` with a date comparison returned the
    document and stored nothing). Here the query engine looks an integer ``_id`` up like any other id; neosqlite's
    update helpers, which are given row ids, keep theirs."""
    from neosqlite.collection.query_engine.crud_operations import CRUDOperationsMixin
    from neosqlite.collection.type_correction import get_integer_id_for_oid
    from neosqlite.sql_utils import quote_table_name

    def _get_integer_id_for_oid(self: Any, oid: Any) -> int:
        if type(oid) is int:
            row = self.collection.db.execute(
                f"SELECT id FROM {quote_table_name(self.collection.name)} WHERE _id = ?", (str(oid),)
            ).fetchone()
            if row is None:
                raise ValueError(f"no document with _id {oid}")
            return int(row[0])
        return int(get_integer_id_for_oid(self.collection.db, self.collection.name, oid))

    CRUDOperationsMixin._get_integer_id_for_oid = _get_integer_id_for_oid


def patch_datetime_checks() -> None:
    """neosqlite's check for dates in a query's values, without importing its helper at every value, and answered
    at once for a number, a boolean, None or a string no date pattern can match (see the module docstring)."""
    from neosqlite.collection.cursor import Cursor
    from neosqlite.collection.datetime_utils import is_datetime_value

    def _is_datetime_value(self: Any, value: Any) -> bool:
        kind = type(value)
        if kind is int or kind is float or kind is bool or value is None:  # (is_datetime_value's answer)
            return False
        if kind is str and "-" not in value and "/" not in value:  # each of its date patterns has one or the other
            return False
        return bool(is_datetime_value(value))

    Cursor._is_datetime_value = _is_datetime_value


def pin_sqlite() -> None:
    """Make neosqlite take the standard library's ``sqlite3``: ``pysqlite3`` cannot be imported in this process
    (call before neosqlite is first imported)."""
    sys.modules["pysqlite3"] = None  # type: ignore[assignment]  # None in sys.modules: ImportError on import
    sys.modules["pysqlite3.dbapi2"] = None  # type: ignore[assignment]


def main() -> int:
    pin_sqlite()
    from nx_27017.nx_27017 import main as nx_main

    patch_signals()
    patch_updates()
    patch_bulk_set()
    patch_insert_copy()
    patch_insert_handling()
    patch_batch_insert()
    patch_write_transactions()
    patch_reply_conversion()
    patch_or_in_sql()
    patch_python_fallback()
    patch_document_loads()
    patch_id_values()
    patch_int_ids()
    patch_datetime_checks()
    sys.argv[0] = "nx-27017"
    return int(nx_main() or 0)


if __name__ == "__main__":
    sys.exit(main())
