"""The test suite's own rules: no test module imports another (shared fixtures live in conftest, plain helpers
in tests/*_support.py or campaign_fixtures.py), no helper module defines a fixture, and tests/README.md maps every
package module to its tests."""

from __future__ import annotations

import ast
import fnmatch
import re
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
        f"{path.relative_to(TESTS)}: {mod}"
        for path in sorted(TESTS.rglob("*.py"))
        for mod in _local_imports(path)
        if mod.split(".")[0].startswith("test_")
    ]
    assert not offenders, offenders


def test_helper_modules_define_no_fixtures() -> None:
    """Fixtures shared by several test modules belong in conftest.py, not in an imported helper module."""
    helpers = [p for p in sorted(TESTS.glob("*.py")) if not p.name.startswith(("test_", "conftest"))]
    offenders = [p.name for p in helpers if "@pytest.fixture" in p.read_text(encoding="utf-8")]
    assert not offenders, offenders


def _map_names() -> set[str]:
    """What tests/README.md names in backticks (a cell's ``a.py``, ``b.py`` are two names)."""
    text = (TESTS / "README.md").read_text(encoding="utf-8")
    return {name.strip() for quoted in re.findall(r"`([^`]+)`", text) for name in quoted.split(",")}


def test_the_map_names_every_module_and_test_file() -> None:
    """tests/README.md maps every package module to its tests and names every test file: a new module or test file
    gets a line there (a module by its path under trackly_exec/, its file name, or a pattern such as ``models*.py``)."""
    names = _map_names()
    patterns = [n for n in names if "*" in n]
    root = TESTS.parent
    modules = [p.relative_to(root / "trackly_exec").as_posix() for p in (root / "trackly_exec").rglob("*.py")]
    modules += [p.relative_to(root).as_posix() for p in (root / "drivers").glob("*.py")]
    unmapped = [
        m
        for m in sorted(modules)
        if not m.endswith("__init__.py")
        and not {m, m.rsplit("/", 1)[-1]} & names
        and not any(fnmatch.fnmatch(m, p) or fnmatch.fnmatch(m.rsplit("/", 1)[-1], p) for p in patterns)
    ]
    assert not unmapped, f"add these modules to tests/README.md: {unmapped}"
    files = {p.name for p in TESTS.glob("test_*.py")}
    assert not files - names, f"add these test files to tests/README.md: {sorted(files - names)}"
    named = {n for n in names if n.startswith("test_") and n.endswith(".py") and "*" not in n and "<" not in n}
    assert not named - files, f"tests/README.md names test files that do not exist: {sorted(named - files)}"


def _fixture_bodies(path: Path) -> dict[str, str]:
    """The fixtures defined at the top of ``path``: name -> their parameter names and body (docstring and annotations
    left out)."""
    out: dict[str, str] = {}
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        decorators = [d.func if isinstance(d, ast.Call) else d for d in node.decorator_list]
        if not any(isinstance(d, ast.Attribute) and d.attr == "fixture" for d in decorators):
            continue
        body = node.body[1:] if ast.get_docstring(node) is not None else node.body
        params = ",".join(a.arg for a in [*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs])
        out[node.name] = params + "".join(ast.dump(stmt) for stmt in body)
    return out


def test_no_fixture_is_copied_between_modules() -> None:
    """A fixture whose body appears in two test modules, or in a test module and conftest.py, is shared: it lives
    once in conftest.py (a module may still override a conftest fixture with a different body)."""
    seen: dict[str, list[str]] = {}
    for path in sorted([TESTS / "conftest.py", *TESTS.glob("test_*.py")]):
        for name, body in _fixture_bodies(path).items():
            seen.setdefault(body, []).append(f"{path.name}::{name}")
    copies = [where for where in seen.values() if len(where) > 1]
    assert not copies, copies
