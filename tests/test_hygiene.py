"""The test suite's own rules: no test module imports another (shared fixtures live in conftest, plain helpers
in tests/*_support.py or campaign_fixtures.py), and no helper module defines a fixture."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def _local_imports(path: Path) -> list[str]:
    """The modules of this tests package that ``path`` imports (relative, or spelt ``tests.x``)."""
    out: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level and not module:  # from . import test_x
                out.extend(alias.name for alias in node.names)
            elif node.level or module.startswith("tests."):
                out.append(module.removeprefix("tests."))
        elif isinstance(node, ast.Import):
            out.extend(a.name.removeprefix("tests.") for a in node.names if a.name.startswith("tests."))
    return out


def test_no_test_module_imports_another() -> None:
    """``from .test_x import ...`` couples test files (and imports their fixtures): use conftest or a helper."""
    offenders = [
        f"{path.name}: {mod}"
        for path in sorted(TESTS.glob("*.py"))
        for mod in _local_imports(path)
        if mod.split(".")[0].startswith("test_")
    ]
    assert not offenders, offenders


def test_helper_modules_define_no_fixtures() -> None:
    """Fixtures shared by several test modules belong in conftest.py, not in an imported helper module."""
    helpers = [p for p in sorted(TESTS.glob("*.py")) if not p.name.startswith(("test_", "conftest"))]
    offenders = [p.name for p in helpers if "@pytest.fixture" in p.read_text(encoding="utf-8")]
    assert not offenders, offenders
