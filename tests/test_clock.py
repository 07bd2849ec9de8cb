"""One clock: the package reads the wall clock only through ``Trackly.clock`` (default ``models.utcnow``), so a test
sets the time instead of sleeping. An AST check keeps it so; the few legitimate direct readers are listed with why.
"""

from __future__ import annotations

import ast
import datetime as dt
from collections.abc import Iterator
from pathlib import Path

from trackly_exec.app import Trackly
from trackly_exec.executor.coordinator import Coordinator
from trackly_exec.store.models import utcnow

PKG = Path(__file__).resolve().parent.parent / "trackly_exec"

#: Modules (or folders) that may read the wall clock directly, and why.
ALLOWED = {
    "store/models.py": "the clock's home: utcnow() is Trackly.clock for daemon.clock = 'local'",
    "testing/": "the provider fakes stand for the providers: their own clocks, not the engine's",
    "drivers/http.py": "a Retry-After HTTP date is the provider's wall-clock time",
    "drivers/contract.py": "Driver.resolve()'s default for a caller without a clock (reconcile passes its own)",
    "executor/ratelimit.py": "GCRA slots are absolute times shared through Redis (time.time), waited for for real",
    "executor/worker.py": "waits for a rate-limit slot (time.time, as the limiter hands them out)",
    "tracking/customer_webhook.py": "verify_signature() runs in the customer's receiver, on its clock",
    "cli/demo.py": "the demo reports how long a real run took",
}


def reads(source: str) -> Iterator[tuple[int, str]]:
    """``(line, call)`` of every direct read of the wall clock in ``source``."""
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        if isinstance(f, ast.Name) and f.id == "utcnow":
            yield node.lineno, "utcnow()"
        elif isinstance(f, ast.Attribute):
            owner = f.value
            owner_name = (
                owner.id if isinstance(owner, ast.Name) else owner.attr if isinstance(owner, ast.Attribute) else ""
            )
            if f.attr == "utcnow":
                yield node.lineno, f"{owner_name}.utcnow()"
            elif f.attr in {"now", "today"} and owner_name in {"datetime", "date"}:
                yield node.lineno, f"{owner_name}.{f.attr}()"
            elif f.attr == "time" and owner_name == "time":
                yield node.lineno, "time.time()"


def test_the_package_reads_the_time_through_the_clock() -> None:
    found = []
    for f in sorted(PKG.rglob("*.py")):
        rel = f.relative_to(PKG).as_posix()
        if any(rel == k or (k.endswith("/") and rel.startswith(k)) for k in ALLOWED):
            continue
        found.extend(f"{rel}:{line} calls {call}" for line, call in reads(f.read_text()))
    assert not found, "read the time through trackly.now() (or take a clock):\n" + "\n".join(found)


def test_the_allow_list_is_current() -> None:
    """Every allowed module still exists and still reads the wall clock (else drop it from the list)."""
    for key in ALLOWED:
        files = sorted((PKG / key).rglob("*.py")) if key.endswith("/") else [PKG / key]
        assert files and all(f.exists() for f in files), key
        assert any(list(reads(f.read_text())) for f in files), f"{key} no longer reads the clock"


def test_the_check_sees_each_way_of_reading() -> None:
    samples = {
        "x = utcnow()": ["utcnow()"],
        "x = models.utcnow()": ["models.utcnow()"],
        "x = dt.datetime.now(dt.UTC)": ["datetime.now()"],
        "x = datetime.now()": ["datetime.now()"],
        "x = dt.datetime.utcnow()": ["datetime.utcnow()"],
        "x = dt.date.today()": ["date.today()"],
        "x = time.time()": ["time.time()"],
    }
    for source, expected in samples.items():
        assert [c for _, c in reads(source)] == expected, source
    fine = "x = trackly.now(); y = time.monotonic(); z = Field(default_factory=utcnow); w = self.clock()"
    assert not list(reads(fine))


async def test_trackly_has_one_settable_clock(trackly: Trackly) -> None:
    """``trackly.now()`` follows ``trackly.clock``; an executor built without a clock follows it too."""
    assert abs(trackly.now() - utcnow()) < dt.timedelta(minutes=1)
    t = dt.datetime(2030, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    coord = Coordinator(trackly)
    trackly.clock = lambda: t
    assert trackly.now() == t and coord.clock() == t
    own = dt.datetime(2031, 1, 1, tzinfo=dt.UTC)
    assert Coordinator(trackly, clock=lambda: own).clock() == own
