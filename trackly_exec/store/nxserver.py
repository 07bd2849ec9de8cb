"""The embedded store's child process: nx-27017 with updates that keep BSON types.

nx-27017 0.8.1 (neosqlite 1.17) runs simple updates as SQL ``json_set`` with the raw value as a parameter, so a
top-level ``$set`` of a datetime stores a *string* (``"2026-11-29 11:23:34.123000"``, no longer comparable with
dates) and a boolean stores ``1``/``0``. Updates carrying a datetime or a boolean value are sent down neosqlite's
Python update path instead, which keeps the types (and measured no slower here); every other update and every
query is untouched. (neosqlite's global "force fallback" switch is not used: it breaks ``{field: None}`` queries.)

The store also always runs on the standard library's ``sqlite3`` (text JSON), never on ``pysqlite3`` should one be
installed: with it, neosqlite stores documents as JSONB in a column of NUMERIC affinity, so string ids that read as
numbers collide (``"00000000000000e0"`` and ``"0000000000000000"`` are both 0: "UNIQUE constraint failed"), and it
measured no faster for the executor's work (bench/storeops.py: 471 against 434 us of store CPU per message).
"""

from __future__ import annotations

import datetime as dt
import sys
from collections.abc import Mapping
from typing import Any


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


def pin_sqlite() -> None:
    """Make neosqlite take the standard library's ``sqlite3``: ``pysqlite3`` cannot be imported in this process
    (call before neosqlite is first imported)."""
    sys.modules["pysqlite3"] = None  # type: ignore[assignment]  # None in sys.modules: ImportError on import
    sys.modules["pysqlite3.dbapi2"] = None  # type: ignore[assignment]


def main() -> int:
    pin_sqlite()
    from nx_27017.nx_27017 import main as nx_main

    patch_updates()
    sys.argv[0] = "nx-27017"
    return int(nx_main() or 0)


if __name__ == "__main__":
    sys.exit(main())
