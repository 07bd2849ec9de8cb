"""The embedded store's shim (nxserver.py) against the pinned nx-27017 / neosqlite: the hook it patches exists
with the signature it wraps, the patch keeps datetimes and booleans typed, and the pins hold."""

from __future__ import annotations

import datetime as dt
import inspect
import os
import subprocess
import sys
from collections.abc import Iterator
from importlib.metadata import requires, version
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from trackly_exec.store import nxserver


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
