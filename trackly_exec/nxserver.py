"""The embedded store's child process: nx-27017 with its update path keeping BSON types.

nx-27017 0.8.1 (neosqlite 1.17) runs simple updates as SQL ``json_set`` with the raw value as a parameter, so a
top-level ``$set`` of a datetime stores a *string* (``"2026-11-29 11:23:34.123000"``, no longer comparable with
dates) and a boolean stores ``1``/``0``. Its Python update path keeps the types (and measured no slower here), so
the child is started through this module, which switches that path on before running the server.
"""

from __future__ import annotations

import sys


def main() -> int:
    from nx_27017.nx_27017 import main as nx_main

    sys.argv[0] = "nx-27017"
    return int(nx_main() or 0)


if __name__ == "__main__":
    sys.exit(main())
