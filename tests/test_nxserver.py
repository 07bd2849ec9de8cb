"""The embedded store's shim (nxserver.py) against the pinned nx-27017 / neosqlite: the hook it patches exists
with the signature it wraps, the patch keeps datetimes and booleans typed, and the pins hold."""

from __future__ import annotations

import datetime as dt
import inspect
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from importlib.metadata import requires, version
from pathlib import Path
from typing import TypeVar

import pytest
from bson.int64 import Int64
from packaging.requirements import Requirement

from trackly_exec.store import nxserver

T = TypeVar("T")


@pytest.fixture
def patched() -> Iterator[None]:
    """nxserver.patch_updates() applied in this process for one test, then undone."""
    from neosqlite.collection.query_helper._sql_updates import SqlUpdatesMixin

    original = SqlUpdatesMixin.__dict__["_can_use_sql_updates"]
    nxserver.patch_updates()
    try:
        yield
    finally:
        SqlUpdatesMixin._can_use_sql_updates = original  # type: ignore[method-assign]


def test_patched_hook_exists_with_the_wrapped_signature() -> None:
    """neosqlite's SqlUpdatesMixin._can_use_sql_updates(self, update_spec, doc_id, original_doc=None) -> bool."""
    from neosqlite.collection.query_helper._sql_updates import SqlUpdatesMixin

    hook = SqlUpdatesMixin.__dict__.get("_can_use_sql_updates")
    assert callable(hook), "neosqlite no longer has SqlUpdatesMixin._can_use_sql_updates: nxserver's shim is void"
    params = list(inspect.signature(hook).parameters.values())
    assert [p.name for p in params[:3]] == ["self", "update_spec", "doc_id"]
    assert all(p.default is not inspect.Parameter.empty for p in params[3:])


def test_nx_entry_point_exists() -> None:
    """nxserver.main() runs nx_27017.nx_27017.main() (argument-less, reads sys.argv)."""
    from nx_27017.nx_27017 import main

    assert callable(main)
    assert all(p.default is not inspect.Parameter.empty for p in inspect.signature(main).parameters.values())


def _roundtrip() -> dict[str, object]:
    import neosqlite

    with neosqlite.Connection(":memory:") as db:
        coll = db["x"]
        coll.insert_one({"_id": 1, "n": 1})
        coll.update_one({"_id": 1}, {"$set": {"at": dt.datetime(2026, 1, 1, 12, 0, 0), "ok": True}, "$inc": {"n": 1}})
        doc = coll.find_one({"_id": 1})
        assert doc is not None
        return dict(doc)


@pytest.mark.usefixtures("patched")
def test_patch_keeps_datetimes_and_booleans_typed() -> None:
    """With the shim a top-level $set of a datetime / boolean comes back as one (not a string / 1)."""
    doc = _roundtrip()
    assert doc["at"] == dt.datetime(2026, 1, 1, 12, 0, 0) and doc["ok"] is True and doc["n"] == 2


def test_unpatched_store_still_flattens() -> None:
    """Without the shim the pinned neosqlite still flattens them: when this fails, the shim may be retired."""
    doc = _roundtrip()
    assert isinstance(doc["at"], str) and doc["ok"] == 1 and doc["ok"] is not True


@pytest.mark.parametrize("dist", ["nx-27017", "neosqlite"])
def test_embedded_store_is_pinned_to_a_minor_version(dist: str) -> None:
    """Both are declared with an upper bound below the next minor version, and the installed one satisfies it."""
    reqs = [Requirement(r) for r in requires("trackly-exec") or []]
    req = next((r for r in reqs if r.name == dist and not r.marker), None)
    assert req is not None, f"{dist} is not a declared dependency"
    assert any(s.operator in ("~=", "<", "==") for s in req.specifier), f"{dist} has no upper bound: {req}"
    assert req.specifier.contains(version(dist))
    major, minor = (int(x) for x in version(dist).split(".")[:2])
    assert not req.specifier.contains(f"{major}.{minor + 1}.0")


def test_store_never_takes_pysqlite3(tmp_path: Path) -> None:
    """With a ``pysqlite3`` importable, neosqlite would store JSONB with numeric-looking string ids coerced to
    numbers (two message ids colliding); the store process pins the standard library's sqlite3."""
    fake = tmp_path / "pysqlite3"
    fake.mkdir()
    (fake / "__init__.py").write_text("")
    (fake / "dbapi2.py").write_text("from sqlite3 import *  # noqa\nFAKE_PYSQLITE3 = True\n")
    probe = (
        "import sys\n"
        "from trackly_exec.store import nxserver\n"
        "import pysqlite3.dbapi2 as p\n"  # importable before the pin
        "assert p.FAKE_PYSQLITE3\n"
        "del sys.modules['pysqlite3'], sys.modules['pysqlite3.dbapi2']\n"
        "nxserver.pin_sqlite()\n"
        "import neosqlite._sqlite as s\n"
        "print(s.sqlite3.__name__)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])}
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "sqlite3"


# --- the two write shortcuts (patch_bulk_set, patch_insert_copy): same stored documents, same answers ------------


@pytest.fixture
def shortcuts() -> Iterator[None]:
    """nxserver.patch_bulk_set() and patch_insert_copy() applied in this process for one test, then undone."""
    from neosqlite.collection.query_engine.crud_operations import CRUDOperationsMixin as Engine
    from neosqlite.collection.query_helper.crud_operations import CRUDOperationsMixin as Helper

    saved = Engine.__dict__["update_many"], Helper.__dict__["_internal_insert"]
    nxserver.patch_bulk_set()
    nxserver.patch_insert_copy()
    try:
        yield
    finally:
        Engine.update_many, Helper._internal_insert = saved


def test_shortcut_hooks_exist_with_the_wrapped_signatures() -> None:
    """neosqlite's QueryEngine.update_many(self, filter, update, upsert, array_filters, session) and
    QueryHelper._internal_insert(self, document): the shortcuts replace exactly these."""
    from neosqlite.collection.query_engine.crud_operations import CRUDOperationsMixin as Engine
    from neosqlite.collection.query_helper.crud_operations import CRUDOperationsMixin as Helper

    names = [p.name for p in inspect.signature(Engine.__dict__["update_many"]).parameters.values()]
    assert names == ["self", "filter", "update", "upsert", "array_filters", "session"]
    assert [p.name for p in inspect.signature(Helper.__dict__["_internal_insert"]).parameters.values()] == [
        "self",
        "document",
    ]


def _queue() -> list[dict[str, object]]:
    return [
        {"_id": "a", "l": 1, "c": None, "due": 5, "s": "x", "n": 1},
        {"_id": "b", "l": 1, "c": None, "due": 5, "s": "y", "n": 1.0},
        {"_id": "c", "l": 2, "c": "held", "due": 9, "flag": True},
        {"_id": "d", "l": 2, "c": None, "due": 9, "s": "1", "nested": {"k": [1, 2]}},
        {"_id": "e", "l": 3, "u": 7},
    ]


#: (filter, update) pairs: the claim and intent shapes, values equal to what is stored (matched, not modified),
#: missing fields, type changes, and shapes that must take neosqlite's own path (datetime, bool, document, dotted
#: key, other operators, a filter neosqlite evaluates in Python).
UPDATES: list[tuple[dict[str, object], dict[str, object]]] = [
    ({"_id": {"$in": ["a", "b", "d"]}, "c": None, "due": {"$eq": 5}}, {"$set": {"c": "tok", "at": 123}}),
    ({"c": {"$eq": "held"}}, {"$set": {"sending_at": 1_700_000_000_000}}),
    ({"c": {"$eq": "held"}}, {"$set": {"sending_at": Int64(1_700_000_000_000)}}),  # as the wire brings epoch ms
    ({"l": {"$eq": 1}}, {"$set": {"s": "x"}}),  # a: same value; b: changed
    ({"l": {"$in": [1, 2]}}, {"$set": {"n": 1}}),  # 1, 1.0: equal in neosqlite's eyes; c, d: missing
    ({}, {"$set": {"n": 2.5, "s": None}}),
    ({"_id": "d"}, {"$set": {"s": 1}}),  # "1" -> 1: a type change
    ({"_id": "c"}, {"$set": {"flag": 1}}),  # True -> 1: equal in neosqlite's eyes
    ({"l": {"$gte": 2}}, {"$set": {"u": None}}),
    ({"l": 9}, {"$set": {"c": "nobody"}}),  # matches nothing
    ({"l": 1}, {"$set": {"at": dt.datetime(2026, 1, 1, tzinfo=dt.UTC)}}),
    ({"l": 1}, {"$set": {"ok": False}}),
    ({"l": 1}, {"$set": {"doc": {"k": 1}}}),
    ({"l": 2}, {"$set": {"nested.k": 3}}),
    ({"l": 1}, {"$set": {"c": "t"}, "$inc": {"n": 1}}),
    ({"l": 1}, {"$unset": {"s": ""}}),
    ({"$where": "this.l == 1"}, {"$set": {"c": "w"}}),
    ({"_id": "a"}, {"$set": {"_id": "z"}}),
    ({"l": 1}, {"$set": {"big": 2**70}}),
]


def _apply_updates(steps: list[tuple[dict[str, object], dict[str, object]]]) -> list[object]:
    import neosqlite

    seen: list[object] = []
    with neosqlite.Connection(":memory:") as db:
        coll = db["q"]
        coll.create_index([("l", 1), ("c", 1), ("due", 1)])
        coll.insert_many(_queue())
        for flt, upd in steps:
            try:
                res = coll.update_many(flt, upd)
                seen.append(("ok", res.matched_count, res.modified_count))
            except Exception as exc:
                seen.append(("error", type(exc).__name__))
            # repr, not ==: 1, 1.0 and True are equal in Python but not the same stored value
            seen.append(sorted(repr(sorted(dict(d).items())) for d in coll.find({})))
        seen.append([d["_id"] for d in coll.find({"c": {"$eq": "tok"}})])  # the index still serves the queue query
    return seen


@pytest.mark.parametrize("step", range(len(UPDATES)))
def test_bulk_set_answers_and_stores_as_neosqlite_does(step: int, request: pytest.FixtureRequest) -> None:
    """Each update, on the same documents, with and without the shortcut: the same matched / modified counts (or
    the same error), the same documents after it, the same answer of an indexed query."""
    steps = [UPDATES[step]]
    plain = _apply_updates(steps)
    request.getfixturevalue("shortcuts")
    assert _apply_updates(steps) == plain


@pytest.mark.usefixtures("shortcuts")
def test_bulk_set_runs_the_executor_claim_as_one_statement() -> None:
    """The claim shape takes the shortcut: no document is read back into Python (neosqlite's path reads each
    one twice), yet the counts are right and a second claim of the same ids matches nothing."""
    import neosqlite

    with neosqlite.Connection(":memory:") as db:
        coll = db["q"]
        coll.insert_many(_queue())
        loads = 0
        real = coll._load_with_stored_id

        def counting(*args: object) -> object:
            nonlocal loads
            loads += 1
            return real(*args)

        coll._load_with_stored_id = counting
        claim = {"$set": {"c": "tok", "at": Int64(1_796_177_994_651)}}  # epoch ms arrive as Int64
        res = coll.update_many({"_id": {"$in": ["a", "b", "d"]}, "c": None, "due": {"$eq": 5}}, claim)
        assert (res.matched_count, res.modified_count, loads) == (2, 2, 0)
        again = coll.update_many({"_id": {"$in": ["a", "b"]}, "c": None, "due": {"$eq": 5}}, claim)
        assert (again.matched_count, again.modified_count) == (0, 0)


def test_bulk_set_constraint_failure_is_neosqlites(request: pytest.FixtureRequest) -> None:
    """A $set that breaks a unique index: SQLite rolls the one statement back and neosqlite's own path runs,
    so the error and what is left stored are what they were without the shortcut."""
    import neosqlite

    def run() -> list[object]:
        with neosqlite.Connection(":memory:") as db:
            coll = db["q"]
            coll.create_index("u", unique=True)
            coll.insert_many([{"_id": 1, "u": 1, "l": 1}, {"_id": 2, "u": 2, "l": 1}])
            try:
                coll.update_many({"l": 1}, {"$set": {"u": 5}})
                out: list[object] = ["ok"]
            except Exception as exc:
                out = [type(exc).__name__]
            return [*out, sorted((dict(d) for d in coll.find({})), key=lambda d: str(d["_id"]))]

    plain = run()
    assert plain[0] != "ok"
    request.getfixturevalue("shortcuts")
    assert run() == plain


def _insert_all() -> list[object]:
    import neosqlite

    when = dt.datetime(2026, 3, 1, 12, 30, tzinfo=dt.UTC)
    given: list[dict[str, object]] = [
        {"_id": "r1", "at": when, "n": 1, "f": 0.5, "none": None, "ok": True, "s": "é"},
        {"_id": "r2", "nested": {"a": [1, {"b": b"\x00\x01"}], "when": when}, "raw": b"bytes"},
        {"no_id": 1},  # neosqlite gives it an ObjectId and sets it on the caller's document
        {"_id": None, "n": 2},
        {"_id": "nan", "f": float("nan")},  # json.dumps writes NaN: not JSON, refused, nothing stored
        {"_id": b"\x01\x02", "n": 3},  # a bytes id is stored as Binary, as neosqlite does
        {"_id": {"k": [1, 2]}, "n": 4},  # a document id
        # flat documents (orjson's text): non-ASCII, control characters, a lone surrogate (orjson refuses it:
        # neosqlite's encoder), integers at and beyond 64 bits, Int64, exponents, -0.0, naive and aware datetimes
        {"_id": "r3", "s": "日本 🙂", "c": 'a\n\t\x00"\\', "t": when.replace(tzinfo=None)},
        {"_id": "r3s", "sur": "\ud800"},
        {"_id": "r4", "big": 2**63 - 1, "neg": -(2**63), "i64": Int64(2**40), "f": 1e16},
        {"_id": "r4h", "huge": 2**70},
        {"_id": "r5", "f": 1.5e-7, "z": -0.0, "inf": float("inf")},  # json.dumps writes Infinity: refused
        {"_id": "r6", "f": 1e300, "z": -0.0, "u": dt.datetime(2026, 3, 1, 12, 30, 0, 123456), "b": False},
        {"n": 5, "s": "ünï", "_id": "r7"},  # _id last: the key order is kept
    ]
    out: list[object] = []
    with neosqlite.Connection(":memory:") as db:
        coll = db["r"]
        for doc in given:
            before = dict(doc)
            try:
                ident = coll.insert_one(doc).inserted_id
            except Exception as exc:
                out.append((type(exc).__name__, str(exc)))
                continue
            out.append((type(ident).__name__, "_id" in doc and "_id" not in before))
            nested = doc.get("nested")
            if isinstance(nested, dict):
                nested["a"].append("after")  # the stored copy must not share it
        try:
            coll.insert_one({"_id": "r1"})
            out.append("no error")
        except Exception as exc:
            out.append(type(exc).__name__)
        for d in coll.find({}):
            d = dict(d)
            if not isinstance(d["_id"], (str, dict, bytes)):
                d["_id"] = type(d["_id"]).__name__
            out.append(repr(list(d.items())))  # by repr: 1, 1.0 and True, or 0.0 and -0.0, are not the same
        # SQL reads the same values out of either text
        queries = ({"s": "日本 🙂"}, {"s": "ünï"}, {"f": {"$gt": 1e15}}, {"big": {"$gte": 2**62}}, {"z": 0})
        out.extend(sorted(str(d["_id"]) for d in coll.find(query)) for query in queries)
    return out


def test_insert_without_deep_copy_stores_as_neosqlite_does(request: pytest.FixtureRequest) -> None:
    """Documents with datetimes, nested documents and arrays, bytes, no ``_id`` or a None ``_id``, a NaN, and a
    duplicate: the same ids, errors and stored documents; a nested array changed by the caller afterwards is not
    changed in the store."""
    plain = _insert_all()
    request.getfixturevalue("shortcuts")
    assert _insert_all() == plain


def _patched_run(owner: object, name: str, patch: Callable[[], None], run: Callable[[], T]) -> T:
    """What ``run`` gives with ``patch`` applied (it replaces ``owner.name``), which is restored after."""
    saved = getattr(owner, name)
    patch()
    try:
        return run()
    finally:
        setattr(owner, name, saved)


def _before_after(owner: object, name: str, patch: Callable[[], None], run: Callable[[], T]) -> tuple[T, T]:
    """What ``run`` gives as it is, then with ``patch`` applied (it replaces ``owner.name``, restored after)."""
    return run(), _patched_run(owner, name, patch, run)


def _patched_handler(patch: Callable[[], None], *names: str) -> Iterator[None]:
    """``patch`` applied to nx-27017's NeoSQLiteHandler in this process for one test; its methods ``names``
    restored after."""
    from nx_27017.handler import NeoSQLiteHandler

    saved = {name: NeoSQLiteHandler.__dict__[name] for name in names}
    patch()
    try:
        yield
    finally:
        for name, method in saved.items():
            setattr(NeoSQLiteHandler, name, method)


@pytest.fixture
def insert_handling() -> Iterator[None]:
    """nxserver.patch_insert_handling() applied in this process for one test, then undone."""
    yield from _patched_handler(nxserver.patch_insert_handling, "handle_insert", "_convert_objectids")


def _insert_commands(monkeypatch: pytest.MonkeyPatch) -> tuple[list[object], list[str]]:
    """Insert commands as the wire delivers them through nx-27017's handler; its answers, what it stored (by
    repr, so an ObjectId left unconverted or a changed type shows) and its debug log lines."""
    from bson import ObjectId as BsonObjectId
    from nx_27017 import handler as nx_handler
    from nx_27017.handler import NeoSQLiteHandler

    class Sub(dict[str, object]):
        pass

    oid = BsonObjectId("65f0c0ffee0000000000abcd")
    when = dt.datetime(2026, 3, 1, 12, 30)
    docs: list[dict[str, object]] = [
        {"_id": "a", "n": 1, "i": Int64(7), "f": 0.5, "b": True, "none": None, "at": when, "s": "x", "raw": b"\x00"},
        {"_id": oid, "n": 2},  # a top-level ObjectId: converted for neosqlite
        {"_id": "c", "ref": oid},
        {"_id": "d", "nested": {"ref": oid, "list": [oid, 1]}},
        {"_id": "e", "sub": Sub(k=1)},
        {"_id": "a", "n": 3},  # duplicate: a write error, nothing else lost
    ]
    handler = NeoSQLiteHandler(":memory:")
    logged: list[str] = []
    monkeypatch.setattr(nx_handler.logger, "debug", lambda message, *a, **k: logged.append(str(message)))
    answer = handler.handle_insert(
        {"request_id": 1, "sections": [("body", {"insert": "r", "ordered": False, "$db": "t"}), ("payload_docs", docs)]}
    )[1]
    stored = [repr(sorted(d.items())) for d in handler.get_database("t")["r"].find({})]
    found = handler._convert_objectids({"_id": "a", "n": 1})
    lines = [line for line in logged if line.startswith("handle_insert sections")]
    answer["writeErrors"] = [e.get("code") for e in answer.get("writeErrors", [])]
    return [answer, stored, found], lines


def test_insert_handling_stores_and_answers_as_nx_does(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Scalars of every wire type, ObjectIds at the top, inside documents and arrays, a dict subclass, a duplicate:
    the same answer and stored documents; the debug line no longer carries every document."""
    plain, plain_lines = _insert_commands(monkeypatch)
    request.getfixturevalue("insert_handling")
    fast, lines = _insert_commands(monkeypatch)
    assert fast == plain
    assert "'n': 2" in plain_lines[0]  # nx-27017 formats every document into it
    assert lines == ["handle_insert sections: <2 sections>"]


def test_insert_handling_hooks_exist_with_the_wrapped_signatures() -> None:
    """nx-27017's NeoSQLiteHandler.handle_insert(self, msg) and _convert_objectids(self, doc), and the debug line
    the first formats: patch_insert_handling() replaces exactly these."""
    from nx_27017.handler import NeoSQLiteHandler

    for name, params in (("handle_insert", ["self", "msg"]), ("_convert_objectids", ["self", "doc"])):
        hook = inspect.unwrap(NeoSQLiteHandler.__dict__[name])
        assert [p.name for p in inspect.signature(hook).parameters.values()] == params
    assert 'f"handle_insert sections: {sections}"' in inspect.getsource(NeoSQLiteHandler.handle_insert)


def _replies() -> list[dict[str, object]]:
    """Replies as nx-27017's handler builds them: a find's cursor of documents with every kind of value."""
    from decimal import Decimal

    from bson.binary import Binary
    from neosqlite.objectid import ObjectId as NeoObjectId

    class Sub(dict[str, object]):
        pass

    class Text(str):
        pass

    neo = NeoObjectId("65f0c0ffee0000000000abcd")
    when = dt.datetime(2026, 3, 1, 12, 30)
    docs: list[object] = [
        {"_id": "a", "n": 1, "i": Int64(7), "f": 0.5, "b": True, "none": None, "at": when, "s": "x", "raw": b"\x00"},
        {"_id": neo, "n": 2},  # neosqlite's ObjectId: BSON's on the wire
        {"_id": "c", "d": Decimal("1.10"), "bin": Binary(b"\x01", 4)},
        {"_id": "d", "nested": {"ref": neo, "list": [neo, 1, [Decimal("2"), {"id": 0}]]}},
        {"_id": "e", "sub": Sub(k=neo), "t": Text("y")},
        {"_id": "f", "id": 0},  # nx-27017 answers an "id" equal to 0 as an Int64, at any depth
        {"_id": "g", "id": False},
        {"_id": "h", "id": 0.0, "x": {"id": 1}},
        Sub(_id="i", ref=neo),
    ]
    return [
        {"cursor": {"firstBatch": docs, "id": 0, "ns": "t.r"}, "ok": 1.0},
        {"cursor": {"nextBatch": [], "id": Int64(5), "ns": "t.r"}, "ok": 1.0},
        {"n": 3, "ok": 1.0},
        {"n": 6, "ok": 1.0, "insertedIds": ["a", 1, Int64(2), None, when, neo, Decimal("3"), Text("z")]},  # an insert's
        {"ok": 0.0, "errmsg": "e", "code": 2},
    ]


def test_reply_conversion_sends_what_nx_sends() -> None:
    """Every reply is the same BSON on the wire with or without patch_reply_conversion(): ObjectIds, Decimals,
    documents and arrays inside documents and arrays, subclasses, nx-27017's "id" rule; a document of plain
    scalars is passed as it is."""
    import bson
    from nx_27017 import wire_protocol

    saved = wire_protocol._convert_objectids
    plain = [bson.encode(saved(r)) for r in _replies()]
    nxserver.patch_reply_conversion()
    try:
        fast = [bson.encode(wire_protocol._convert_objectids(r)) for r in _replies()]
        flat = {"_id": "a", "n": 1, "at": dt.datetime(2026, 3, 1)}
        assert wire_protocol._convert_objectids(flat) is flat
        reply = wire_protocol.ResponseBuilder.build_op_msg_reply(1, 2, _replies()[0])
    finally:
        wire_protocol._convert_objectids = saved
    assert fast == plain
    assert reply == wire_protocol.ResponseBuilder.build_op_msg_reply(1, 2, _replies()[0])
    assert "_convert_objectids(document)" in inspect.getsource(wire_protocol.ResponseBuilder.build_op_msg_reply)


def _or_lookups(patched: bool) -> tuple[list[object], list[bool]]:
    """Lookups of ids with ``$or`` over documents of every kind of value: what each returns (by repr, in ``_id``
    order) and whether it was answered in SQL; with ``patched``, what the union of its branches' own finds returns."""
    import neosqlite

    docs: list[dict[str, object]] = [
        {"_id": 1, "subscribed": False, "blocked": False, "timezone": None},
        {"_id": 2, "subscribed": True, "blocked": True, "timezone": ""},
        {"_id": 3, "subscribed": True, "blocked": False, "timezone": "Europe/Paris"},
        {"_id": 4, "subscribed": True, "blocked": False},
        {"_id": 5, "blocked": 1, "subscribed": 0, "timezone": 5},
        {"_id": 6, "subscribed": None, "blocked": [True], "timezone": ["UTC"], "n": 2.5},
        {"_id": 7, "subscribed": "false", "blocked": "true", "timezone": {"z": 1}, "n": "2.5"},
        {"_id": 8, "subscribed": [False], "blocked": 0.0, "timezone": "UTC", "n": 3},
        {"_id": "9", "subscribed": False},
    ]
    ids: list[object] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 99]
    branches: list[list[dict[str, object]]] = [
        [{"subscribed": False}, {"blocked": True}, {"timezone": {"$gt": ""}}],  # the claim-time check
        [{"subscribed": False}, {"blocked": True}],  # the re-check
        [{"subscribed": None}, {"n": {"$gte": 2.5}}, {"timezone": "UTC"}, {"blocked": {"$ne": False}}],
    ]
    others: list[dict[str, object]] = [  # not the lookup shape: neosqlite's own way
        {"$or": [{"subscribed": False}, {"blocked": True}]},
        {"_id": {"$in": ids}, "$or": [{"subscribed": False}, {"sub.k": 1}]},
        {"_id": {"$in": ids}, "$or": [{"subscribed": False}, {"blocked": True, "n": 3}]},
        {"_id": {"$in": ids}, "$or": [{"subscribed": False}, {"$and": [{"blocked": True}]}]},
        {"_id": {"$in": ids}, "$or": [{"subscribed": False}, {"timezone": {"$gt": "", "$lt": "Z"}}]},
        {"_id": {"$in": ids}, "blocked": True, "$or": [{"subscribed": False}]},
    ]
    found: list[object] = []
    in_sql: list[bool] = []
    with neosqlite.Connection(":memory:") as db:
        coll = db["contacts"]
        coll.insert_many(docs)

        def answer(flt: dict[str, object]) -> list[str]:
            return sorted(repr(sorted(d.items())) for d in coll.find(flt))

        for alternatives in branches:
            flt = {"_id": {"$in": ids}, "$or": alternatives}
            if patched:
                found.append(answer(flt))
            else:  # as the checks asked before: one find per branch
                union = {r for b in alternatives for r in answer({"_id": {"$in": ids}, **b})}
                found.append(sorted(union))
            in_sql.append(coll.query_engine.helpers._build_simple_where_clause(flt) is not None)
        for flt in others:
            found.append(answer(flt))
            in_sql.append(coll.query_engine.helpers._build_simple_where_clause(flt) is not None)
    return found, in_sql


def test_or_lookup_in_sql_finds_what_its_branches_find() -> None:
    """A lookup of ids with an ``$or`` of single-field conditions, over booleans, numbers and strings posing as
    booleans, None and missing fields, arrays, documents, int and str ids: with patch_or_in_sql() it finds what
    its branches' own finds found together (the checks' earlier queries), in SQL; any other ``$or`` is still
    neosqlite's, answered as before."""
    from neosqlite.collection.query_helper._sql_query_builder import SqlQueryBuilderMixin

    plain, plain_sql = _or_lookups(patched=False)
    saved = SqlQueryBuilderMixin.__dict__["_build_simple_where_clause"]
    nxserver.patch_or_in_sql()
    try:
        fast, fast_sql = _or_lookups(patched=True)
    finally:
        SqlQueryBuilderMixin._build_simple_where_clause = saved  # type: ignore[method-assign]
    assert fast == plain
    assert plain_sql == [False] * 9
    assert fast_sql == [True] * 3 + [False] * 6
    assert len(fast[0]) == 8 and not any("('_id', 4)" in r for r in fast[0])  # every contact but the plain one


def test_document_loads_reads_what_neosqlite_reads() -> None:
    """Stored texts of every kind (datetimes as ISO text, with Z, as epoch numbers, invalid; Binary and ObjectId
    objects; nested in arrays; integers at and beyond 64 bits; exponents; NaN, Infinity, a lone surrogate;
    duplicate keys; escapes; a top-level array, scalar or date): patch_document_loads() reads the same values, by
    repr, as neosqlite's json.loads with its object hook."""
    import json

    import orjson
    from neosqlite import collection
    from neosqlite.binary import Binary
    from neosqlite.collection.json_helpers import NeoSQLiteJSONEncoder
    from neosqlite.objectid import ObjectId as NeoObjectId

    when = dt.datetime(2026, 3, 1, 12, 30, 0, 123456)
    docs: list[object] = [
        {"_id": "a", "n": 1, "f": 0.5, "b": True, "none": None, "at": when, "s": "日本 é", "c": 'a\n\x00"\\'},
        {"_id": "b", "nested": {"a": [1, {"when": when}, [when]], "raw": Binary(b"\x00\x01")}, "oid": NeoObjectId()},
        {"_id": "c", "big": 2**63 - 1, "neg": -(2**63), "u64": 2**64 - 1, "f": 1e16, "g": 1e300, "z": -0.0},
    ]
    texts = [json.dumps(d, cls=NeoSQLiteJSONEncoder) for d in docs]
    texts += [orjson.dumps(d, default=NeoSQLiteJSONEncoder().default).decode() for d in docs[::2]]
    texts += [
        '{"d": {"$date": "2026-03-01T12:30:00Z"}, "e": {"$date": 1772368200000}, "f": {"$date": 1.5e12}}',
        '{"d": {"$date": "not a date"}, "e": {"$date": null}, "f": {"$date": "2026-03-01", "x": 1}}',
        '{"huge": 123456789012345678901234567890, "neg": -9223372036854775809}',
        '{"deep": [[{"x": 100000000000000000000}]]}',
        '{"nan": NaN, "inf": Infinity}',
        '{"s": "\\ud800", "t": "\\u00e9\\n"}',
        '{"a": 1, "a": 2, "b": {"c": 1, "c": {"$date": "2026-01-01T00:00:00"}}}',
        '[1, {"$date": "2026-01-01T00:00:00"}, [{}]]',
        "5",
        '"text"',
        '{"$date": "2026-01-01T00:00:00"}',
        "{}",
    ]
    plain, fast = _before_after(
        collection,
        "neosqlite_json_loads",
        nxserver.patch_document_loads,
        lambda: [repr(collection.neosqlite_json_loads(t)) for t in texts],
    )
    assert fast == plain
    assert "datetime.datetime(2026, 3, 1, 12, 30, 0, 123456)" in plain[0] and "Binary(" in plain[1]


@pytest.fixture
def write_transactions() -> Iterator[None]:
    """nxserver.patch_write_transactions() applied in this process for one test, then undone."""
    yield from _patched_handler(nxserver.patch_write_transactions, "handle_insert", "handle_command")


def _command(handler: object, body: dict[str, object], docs: list[dict[str, object]] | None = None) -> object:
    """One command through nx-27017's handler, as the wire delivers it (documents in a payload section)."""
    sections: list[tuple[str, object]] = [("body", {**body, "$db": "t"})]
    if docs is not None:
        sections.append(("payload_docs", docs))
    call = handler.handle_insert if "insert" in body else handler.handle_command  # type: ignore[attr-defined]
    answer = dict(call({"request_id": 1, "sections": sections})[1])
    for key in ("writeErrors", "writeConcernError"):
        if key in answer:
            answer[key] = [(e.get("index"), e.get("code")) for e in answer[key]]
    return answer


def _writes() -> tuple[list[object], list[str]]:
    """Inserts, updates, deletes and a findAndModify, ordered and not, with duplicate keys and unique-index
    failures among them, through nx-27017's handler: its answers, what it stored, and the SQL it ran."""
    from nx_27017.handler import NeoSQLiteHandler

    handler = NeoSQLiteHandler(":memory:")
    conn = handler.get_database("t").db
    sql: list[str] = []
    conn.set_trace_callback(sql.append)
    when = dt.datetime(2026, 3, 1, 12, 30)
    out: list[object] = [
        _command(handler, {"createIndexes": "r", "indexes": [{"key": {"u": 1}, "name": "u_1", "unique": True}]}),
        _command(handler, {"insert": "r", "ordered": True}, [{"_id": i, "u": i, "n": 0} for i in range(5)]),
        _command(handler, {"insert": "r", "ordered": False}, [{"_id": 1}, {"_id": 9, "u": 2}, {"_id": 10, "at": when}]),
        _command(handler, {"insert": "r", "ordered": True}, [{"_id": 11}, {"_id": 0}, {"_id": 12}]),
        _command(
            handler,
            {
                "update": "r",
                "ordered": True,
                "updates": [
                    {"q": {"_id": 0}, "u": {"$set": {"n": 1}}},
                    {"q": {"_id": 1}, "u": {"$set": {"u": 2}}},  # unique index: an error, ordered stops
                    {"q": {"_id": 2}, "u": {"$set": {"n": 2}}},
                ],
            },
        ),
        _command(
            handler,
            {
                "update": "r",
                "ordered": False,
                "updates": [
                    {"q": {"_id": 3}, "u": {"$set": {"u": 4}}},
                    {"q": {"n": 0}, "u": {"$set": {"n": 5, "at": when}}, "multi": True},
                    {"q": {"_id": 20}, "u": {"$set": {"n": 6}}, "upsert": True},
                ],
            },
        ),
        _command(handler, {"delete": "r", "deletes": [{"q": {"_id": 11}, "limit": 1}, {"q": {"n": 6}, "limit": 0}]}),
        _command(handler, {"findAndModify": "r", "query": {"_id": 4}, "update": {"$inc": {"n": 1}}, "new": True}),
        _command(handler, {"find": "r", "filter": {}}),
    ]
    out.append(sorted(repr(sorted(d.items())) for d in handler.get_database("t")["r"].find({})))
    conn.set_trace_callback(None)
    assert not conn.in_transaction
    return out, sql


def test_write_transactions_answer_and_store_as_nx_does(request: pytest.FixtureRequest) -> None:
    """Writes of every kind, with write errors in ordered and unordered commands: with each write command in one
    transaction, the same answers and stored documents; one BEGIN and one COMMIT per write command, none for a
    read or for the index creation."""
    plain, plain_sql = _writes()
    request.getfixturevalue("write_transactions")
    fast, sql = _writes()
    assert fast == plain
    assert "BEGIN" not in plain_sql
    assert sql.count("BEGIN") == sql.count("COMMIT") == 7  # 3 inserts, 2 updates, a delete, a findAndModify
    assert "ROLLBACK" not in sql


@pytest.mark.usefixtures("write_transactions")
@pytest.mark.parametrize("end", ["commitTransaction", "abortTransaction"])
def test_write_transactions_leave_client_transactions_alone(end: str) -> None:
    """A write of a client transaction (``startTransaction``, ``autocommit: false``) runs in that transaction:
    committed or aborted with it."""
    import uuid

    from bson.binary import Binary
    from nx_27017.handler import NeoSQLiteHandler

    handler = NeoSQLiteHandler(":memory:")
    lsid = {"id": Binary(uuid.uuid4().bytes, 4)}
    txn = {"lsid": lsid, "txnNumber": Int64(1), "autocommit": False}
    _command(handler, {"insert": "r"}, [{"_id": 0}])
    assert _command(handler, {"insert": "r", "startTransaction": True, **txn}, [{"_id": 1}])["ok"] == 1  # type: ignore[index]
    assert _command(handler, {"insert": "r", **txn}, [{"_id": 2}])["ok"] == 1  # type: ignore[index]
    _command(handler, {end: 1, **txn})
    ids = sorted(d["_id"] for d in handler.get_database("t")["r"].find({}))
    assert ids == ([0, 1, 2] if end == "commitTransaction" else [0])
    assert not handler.get_database("t").db.in_transaction


def test_one_transaction_keeps_what_was_written_when_the_handler_fails() -> None:
    """A handler that fails after a statement wrote: the write stays (as when each statement committed itself),
    no transaction is left open, and the error reaches the caller."""
    from nx_27017.handler import NeoSQLiteHandler

    class Failing(NeoSQLiteHandler):  # type: ignore[misc]
        def handle_command(self, msg: dict[str, object]) -> object:
            self.get_database("t").db.execute("CREATE TABLE IF NOT EXISTS w (x)")
            self.get_database("t").db.execute("INSERT INTO w VALUES (1)")
            raise RuntimeError("boom")

    handler = Failing(":memory:")
    run = nxserver.in_one_transaction(Failing.handle_command)
    with pytest.raises(RuntimeError, match="boom"):
        run(handler, {"request_id": 1, "sections": [("body", {"update": "w", "updates": [], "$db": "t"})]})
    conn = handler.get_database("t").db
    assert not conn.in_transaction
    assert conn.execute("SELECT count(*) FROM w").fetchone() == (1,)


@pytest.fixture
def batch_insert() -> Iterator[None]:
    """nxserver.patch_batch_insert() applied in this process for one test, then undone."""
    yield from _patched_handler(nxserver.patch_batch_insert, "handle_insert")


def _batches(monkeypatch: pytest.MonkeyPatch) -> tuple[list[object], int]:
    """Insert commands of every shape through nx-27017's handler: its answers, what it stored (by repr), and how
    many documents went through neosqlite's insert_one (one by one)."""
    from bson import ObjectId as BsonObjectId
    from neosqlite.collection import Collection
    from nx_27017.handler import NeoSQLiteHandler

    one_by_one = 0
    insert_one = Collection.insert_one

    def counted(self: object, *args: object, **kwargs: object) -> object:
        nonlocal one_by_one
        one_by_one += 1
        return insert_one(self, *args, **kwargs)

    monkeypatch.setattr(Collection, "insert_one", counted)
    when = dt.datetime(2026, 3, 1, 12, 30, 0, 123000)
    handler = NeoSQLiteHandler(":memory:")

    def insert(body: dict[str, object], sections: list[tuple[str, object]]) -> object:
        answer = dict(
            handler.handle_insert({"request_id": 7, "sections": [("body", {**body, "$db": "t"}), *sections]})[1]
        )
        if "writeErrors" in answer:
            answer["writeErrors"] = [(e.get("index"), e.get("code")) for e in answer["writeErrors"]]
        return answer

    flat = [
        {"_id": f"m{i}", "n": i, "i": Int64(i), "f": i / 2, "b": i % 2 == 0, "z": None, "at": when} for i in range(5)
    ]
    out: list[object] = [
        insert({"insert": "r"}, [("payload_docs", [{"_id": "seed"}])]),  # creates the collection: nx-27017's path
        _command(handler, {"createIndexes": "r", "indexes": [{"key": {"u": 1}, "name": "u_1", "unique": True}]}),
        insert({"insert": "r", "ordered": False}, [("payload", {"documents": flat})]),  # PyMongo's shape: one batch
        insert({"insert": "r", "documents": [{"_id": 100, "s": "日本 🙂"}, {"_id": Int64(101)}]}, []),
        insert({"insert": "r", "ordered": True}, [("payload_docs", [{"_id": "x1"}, {"_id": "m1"}, {"_id": "x2"}])]),
        insert({"insert": "r", "ordered": False}, [("payload_docs", [{"_id": "y1"}, {"_id": "m2"}, {"_id": "y2"}])]),
        insert({"insert": "r"}, [("payload_docs", [{"_id": "u1", "u": 1}, {"_id": "u2", "u": 1}])]),  # unique index
        insert({"insert": "r"}, [("payload_docs", [{"_id": "d1", "d": {"a": 1}}, {"_id": "d2"}])]),  # a document
        insert({"insert": "r"}, [("payload_docs", [{"_id": "o1", "ref": BsonObjectId("65f0c0ffee0000000000abcd")}])]),
        insert({"insert": "r"}, [("payload_docs", [{"n": 1}, {"_id": None, "n": 2}])]),  # ids to generate
        insert({"insert": "r"}, [("payload_docs", [{"_id": "nan", "f": float("nan")}])]),  # SQLite refuses NaN
        insert({"insert": "r"}, [("payload_docs", [])]),
        insert({"insert": "fresh"}, [("payload_docs", [{"_id": 1}])]),  # a new collection
        insert({"insert": "r", "comment": {"_id": "c1"}}, [("payload_docs", [{"_id": "c2"}])]),  # nx's odd rule
    ]
    out.append(sorted(repr(sorted(d.items())) for d in handler.get_database("t")["r"].find({})))
    assert not handler.get_database("t").db.in_transaction
    return [_unstamped(o) for o in out], one_by_one


def _unstamped(value: object) -> object:
    """``value`` with every generated ObjectId (BSON's or neosqlite's) replaced by its type's name."""
    from bson import ObjectId as BsonObjectId
    from neosqlite.objectid import ObjectId as NeoObjectId

    if isinstance(value, (BsonObjectId, NeoObjectId)):
        return type(value).__name__
    if isinstance(value, dict):
        return {k: _unstamped(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_unstamped(v) for v in value]
    if isinstance(value, str):
        return re.sub(r"ObjectId\('[0-9a-f]{24}'\)", "ObjectId", value)
    return value


def test_batch_insert_answers_and_stores_as_nx_does(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Batches of plain values in both wire shapes, with a duplicate key (ordered and not), a unique index
    refusal, a document, an ObjectId, ids to generate, a NaN, nothing to insert, a new collection, a document-valued
    key in the body: the same answers and stored documents as nx-27017's one-by-one path; only the batches of plain
    values with ids skip it."""
    plain, plain_one_by_one = _batches(monkeypatch)
    request.getfixturevalue("batch_insert")
    fast, one_by_one = _batches(monkeypatch)
    assert fast == plain
    assert plain_one_by_one - one_by_one == 5 + 2 + 2  # the three batches of plain values with ids
    assert any("writeErrors" in a for a in plain if isinstance(a, dict))  # the errors were answered, both ways


def test_id_values_normalize_as_neosqlite_does() -> None:
    """Ids of every kind (ObjectId texts valid and not, other lengths, subclasses, numbers, None, bytes, neosqlite's
    and BSON's ObjectIds): patch_id_values() gives what neosqlite's _normalize_id_value gives, by repr."""
    from bson import ObjectId as BsonObjectId
    from neosqlite.collection.query_helper import _sql_query_builder as builder
    from neosqlite.objectid import ObjectId as NeoObjectId

    class Text(str):
        pass

    values: list[object] = [
        "65f0c0ffee0000000000abcd",
        "65F0C0FFEE0000000000ABCD",  # upper case: neosqlite writes it lower
        "65f0c0ffee0000000000abcz",  # 24 characters, not hexadecimal
        "000005d8cf89f640",
        "1:+15550000000",
        "",
        "x" * 25,
        Text("65f0c0ffee0000000000abcd"),
        Text("short"),
        NeoObjectId("65f0c0ffee0000000000abcd"),
        BsonObjectId("65f0c0ffee0000000000abcd"),
        7,
        Int64(8),
        1.5,
        None,
        True,
        b"\x00" * 12,
    ]
    plain, fast = _before_after(
        builder,
        "_normalize_id_value",
        nxserver.patch_id_values,
        lambda: [repr(builder._normalize_id_value(v)) for v in values],
    )
    assert fast == plain
    assert plain[1] == repr("65f0c0ffee0000000000abcd") and plain[3] == repr("000005d8cf89f640")


def _fallback_finds(queries: list[dict[str, object]]) -> tuple[list[list[str]], list[str]]:
    """What each query finds (by repr, in the cursor's order, sorted by ``_id`` and unsorted) over documents whose
    fields hold every kind of value, and the SQL neosqlite's Python path ran for the last."""
    import random

    import neosqlite

    rng = random.Random(7)
    values: list[object] = [
        "a", "ab", "b", "", "1", "A", 1, 2, 0, 1.0, 1.5, True, False, None, 2**60,
        ["a"], ["b", "ab"], [], [1, "a"], [["a"]], {"seg": "a"}, {"x": 1}, {"$date": 1},
    ]  # fmt: skip
    docs: list[dict[str, object]] = []
    for k in range(400):
        doc: dict[str, object] = {"_id": k if k % 3 else str(k), "sending_list_id": rng.choice([1, 2, 1.0, "1", [1]])}
        for name in ("seg", "n"):
            if rng.random() < 0.8:
                doc[name] = rng.choice(values)
        shape = rng.random()
        if shape < 0.6:
            doc["attributes"] = {"seg": rng.choice(values), "n": rng.choice(values)}
        elif shape < 0.8:
            doc["attributes"] = rng.choice([[{"seg": "a"}], "a", None, [], {"seg": {"seg": "a"}}])
        docs.append(doc)
    statements: list[str] = []
    found: list[list[str]] = []
    with neosqlite.Connection(":memory:") as db:
        coll = db["contacts"]
        coll.insert_many(docs)
        db.db.set_trace_callback(statements.append)
        for q in queries:
            found.append([repr(d) for d in coll.find(q).sort("_id", 1)])
            found.append(sorted(repr(d) for d in coll.find(q, {"seg": 1, "_id": 0})))
    return found, statements


#: Queries on neosqlite's Python path: what bench/campaign.py's audiences ask, and every operator beside them.
FALLBACK_QUERIES: list[dict[str, object]] = [
    {"$and": [{"sending_list_id": {"$eq": 1}}, {"attributes.seg": {"$in": ["a", "ab"]}}]},
    {"$and": [{"sending_list_id": {"$eq": 1}}]},
    {"$and": [{"sending_list_id": {"$eq": 1}}, {"seg": {"$eq": "a"}}, {"n": {"$in": [1, 2]}}]},
    {"$and": [{"sending_list_id": {"$eq": 2}}, {"$and": [{"seg": {"$in": ["1", "b"]}}, {"n": {"$gt": 0}}]}]},
    {"$and": [{"sending_list_id": {"$eq": 1}}, {"n": {"$in": [1, None]}}]},
    {"$and": [{"sending_list_id": {"$eq": 1}}, {"n": {"$eq": 1.5}}, {"seg": {"$ne": "a"}}]},
    {"$and": [{"sending_list_id": {"$eq": 1}}, {"attributes.seg": {"$nin": ["a"], "$exists": True}}]},
    {"$and": [{"sending_list_id": {"$eq": 1}}, {"attributes.n": {"$in": [True, 2**60]}}]},
    {"$and": [{"sending_list_id": {"$eq": 1}}, {"$or": [{"seg": {"$eq": "a"}}, {"n": {"$eq": 1}}]}]},
    {"$and": [{"sending_list_id": {"$eq": 1}}, {"seg": "a"}]},
    {"$and": [{"sending_list_id": {"$eq": 1}}, {"seg": {"$regex": "^a"}}]},
    {"$and": [{"sending_list_id": {"$eq": 1}}, {"attri-butes.seg": {"$eq": "a"}}, {"seg": {"$in": []}}]},
    {"$and": [{"attributes.seg.seg": {"$eq": "a"}}, {"attributes": {"$eq": "a"}}]},
]


def test_python_fallback_prefilter_finds_what_neosqlite_finds() -> None:
    """Queries neosqlite answers on its Python path (a top-level ``$and``), over fields holding strings, numbers
    posing as one another, booleans, None, arrays, documents and missing fields, int and str ids: with
    patch_python_fallback() each finds the same documents in the same order, and the prefiltered ones read only
    the rows their ``$eq``/``$in`` conditions may match."""
    from neosqlite.collection.cursor import Cursor

    (plain, plain_sql), (fast, fast_sql) = _before_after(
        Cursor, "_handle_python_fallback", nxserver.patch_python_fallback, lambda: _fallback_finds(FALLBACK_QUERIES)
    )
    assert fast == plain
    assert sum(map(len, plain)) > 1000 and all(found for found in plain[:8])
    assert not any("json_type" in s for s in plain_sql)
    assert sum("json_type(data" in s for s in fast_sql) >= 2 * 10


def test_prefilter_takes_only_what_the_matcher_decides_alike() -> None:
    """Strings and integers within 2**53 are prefiltered; floats, booleans, None, other operators' queries are not."""
    prefilter = nxserver.prefilter
    assert prefilter({"$and": [{"l": {"$eq": 1}}, {"a.b": {"$in": ["x", "y"]}}]}) == (
        "(json_extract(data, ?) IN (?) OR json_type(data, ?) = 'array') AND "
        "(json_extract(data, ?) IN (?,?) OR json_type(data, ?) = 'array')",
        ['$."l"', 1, '$."l"', '$."a"."b"', "x", "y", '$."a"."b"'],
    )
    assert prefilter({"l": {"$eq": 1.5}}) == ("", [])
    assert prefilter({"l": {"$in": ["x", None]}}) == ("", [])
    assert prefilter({"l": {"$eq": True}}) == ("", [])
    assert prefilter({"l": {"$eq": 2**60}}) == ("", [])
    assert prefilter({"l": "x"}) is None
    assert prefilter({"l": {"$regex": "x"}}) is None
    assert prefilter({"$or": [{"l": {"$eq": 1}}]}) is None
    assert prefilter({"_id": {"$eq": 1}}) is None


def test_datetime_checks_answer_as_neosqlite_does() -> None:
    """Values of every kind (dates and date texts in each of neosqlite's patterns, padded, ids, hex and HMAC texts,
    numbers, booleans, None, $date documents, subclasses): patch_datetime_checks() answers what neosqlite's own
    check answers; and a query's dates are still found among its values."""
    from neosqlite.collection.cursor import Cursor

    class Text(str):
        pass

    values: list[object] = [
        dt.datetime(2026, 1, 2), dt.date(2026, 1, 2), "2023-01-15T10:30:00", "2023-01-15T10:30:00+05:30",
        "2023-01-15T10:30:00Z", "2023-01-15 10:30:00", "2023-01-15", "01/15/2023", "01-15-2023", "2023/01/15",
        "  2023-01-15  ", "2023-01-1", "000005d8cf89f640", "1:+15550000000", "12345678901234", "", "2023_01_15",
        Text("2023-01-15"), Text("abc"), 7, -1, Int64(8), 1.5, float("nan"), True, False, None,
        {"$date": "2023-01-15"}, {"x": dt.datetime(2026, 1, 2)}, {"x": 1}, ["2023-01-15"], b"2023-01-15",
    ]  # fmt: skip
    plain, fast = _before_after(
        Cursor,
        "_is_datetime_value",
        nxserver.patch_datetime_checks,
        lambda: [Cursor._is_datetime_value(None, v) for v in values],  # type: ignore[arg-type]
    )
    assert fast == plain
    assert plain[:12] == [True] * 11 + [False] and sum(plain) == 14


# -- stopping on a signal ----------------------------------------------------------------------------------------

_SIGNAL_SCRIPT = """
import asyncio, os, signal, sys, time
from nx_27017 import daemon, server
from nx_27017.handler import NeoSQLiteHandler
from trackly_exec.store import nxserver

if sys.argv[1] == "patched":
    nxserver.patch_signals()
inner = server.run_server

async def run_server(host, port, handler):
    def callback():  # a callback of the loop's own, in Python, when SIGTERM lands
        os.kill(os.getpid(), signal.SIGTERM)
        end = time.monotonic() + 0.1
        while time.monotonic() < end:
            pass
        print("callback completed", flush=True)
    asyncio.get_running_loop().call_later(0.2, callback)
    await inner(host, port, handler)

server.run_server = run_server
signal.signal(signal.SIGTERM, daemon._signal_exit_handler)  # as nx-27017's run_foreground installs it
try:
    server.run_server_threaded("127.0.0.1", 0, NeoSQLiteHandler(":memory:"), use_threading=False)
    print("returned", flush=True)
except SystemExit:
    print("SystemExit", flush=True)
"""


def _signal_run(mode: str) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-c", _SIGNAL_SCRIPT, mode], capture_output=True, text=True, timeout=30, check=True
    ).stdout
    return out.split("\n")[:-1]


def test_sigterm_stops_the_server_at_a_safe_point() -> None:
    """nx-27017's handler raises SystemExit inside whatever callback runs when SIGTERM lands (a connection's close
    callback left half done kept the process alive for ever, an orphan); patch_signals stops the server from the
    loop once that callback is done, and the server returns."""
    assert _signal_run("unpatched") == ["SystemExit"]
    assert _signal_run("patched") == ["callback completed", "returned"]


def _int_id_fallback_update() -> list[dict[str, object]]:
    """find_one_and_update by a query neosqlite cannot put in SQL (``$and`` with a date comparison) of a document
    whose integer ``_id`` (7) is not its row number (2; there is no row 7); the documents afterwards."""
    import neosqlite

    with neosqlite.Connection(":memory:") as db:
        coll = db["x"]
        old = dt.datetime(2020, 1, 1)
        coll.insert_many([{"_id": 2, "s": "done", "h": old}, {"_id": 7, "s": "ev", "h": old}, {"_id": 5, "s": "x"}])
        query = {"$and": [{"s": {"$in": ["ev"]}}, {"h": {"$lt": dt.datetime(2021, 1, 1)}}]}
        coll.find_one_and_update(query, {"$set": {"o": "new"}})
        return [dict(d) for d in coll.find({}, sort=[("_id", 1)])]


def test_a_fallback_update_writes_the_document_it_found() -> None:
    """With nxserver's patch an update found in Python lands on its own document, not on the row numbered as its
    integer ``_id`` (there: nothing, or another document)."""
    from neosqlite.collection.query_engine.crud_operations import CRUDOperationsMixin

    original = CRUDOperationsMixin.__dict__["_get_integer_id_for_oid"]
    nxserver.patch_int_ids()
    try:
        docs = _int_id_fallback_update()
    finally:
        CRUDOperationsMixin._get_integer_id_for_oid = original  # type: ignore[method-assign]
    assert [d.get("o") for d in docs] == [None, None, "new"] and [d["_id"] for d in docs] == [2, 5, 7]


def test_unpatched_fallback_update_misses_its_document() -> None:
    """Without the patch the pinned neosqlite writes row 7 (absent): the update is lost. When this fails, the patch
    may be retired."""
    assert [d.get("o") for d in _int_id_fallback_update()] == [None, None, None]


async def test_a_crashed_evaluation_is_taken_over_on_the_embedded_store(store: object) -> None:
    """The evaluation lease's take-over (find_one_and_update with ``$and`` and a date comparison) of an execution
    whose id is not its row number stores the new owner: a crashed evaluation is resumed once, not returned
    unchanged to every pass."""
    from trackly_exec.store.client import Store
    from trackly_exec.store.lease import Lease

    assert isinstance(store, Store)
    col = store.db["lease_probe"]
    old = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
    await col.insert_many(
        [{"_id": i, "status": "evaluating", "lease_owner": "dead", "heartbeat_at": old} for i in (3, 9, 4)]
    )
    lease = Lease("lease_owner", stamp="heartbeat_at", ttl=dt.timedelta(seconds=60))
    now = dt.datetime.now(dt.UTC)
    taken = []
    for _ in range(5):
        doc = await lease.claim_one(col, {"status": "evaluating"}, "me", now, expired_only=True, inc={"attempts": 1})
        if doc is None:
            break
        taken.append(doc["_id"])
    assert sorted(taken) == [3, 4, 9]
    stored = await col.find({}).to_list(None)
    assert all(d["lease_owner"] == "me" and d["attempts"] == 1 for d in stored), stored
