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


# --------------------------------------------------------------------------------------------- the package's rules

PKG = TESTS.parent / "trackly_exec"
CONSTANTS = PKG / "store" / "constants.py"
DOCUMENTS = PKG / "store" / "documents.py"
#: What a collection is reached through: ``trackly.db[c.NAME]``, ``self.db[...]``, ``store[...]``.
_STORE_NAMES = {"db", "store", "database"}
#: String literals that equal a collection name but are not one (a contract-suite check's name).
_NOT_COLLECTIONS = {("trackly_exec/testing/contract.py", "delivery_reports")}


def _package_files() -> list[Path]:
    return sorted(p for p in PKG.rglob("*.py") if "static" not in p.parts)


def _collection_names() -> set[str]:
    from trackly_exec.store import constants as c

    return set(c.ALL_COLLECTIONS)


def _store_like(node: ast.expr) -> bool:
    return (isinstance(node, ast.Name) and node.id in _STORE_NAMES) or (
        isinstance(node, ast.Attribute) and node.attr in _STORE_NAMES
    )


def _is_store(node: ast.expr) -> bool:
    return (isinstance(node, ast.Name) and node.id == "store") or (
        isinstance(node, ast.Attribute) and node.attr == "store"
    )


def _collection_literals(path: Path, names: set[str]) -> list[str]:
    rel = path.relative_to(TESTS.parent).as_posix()
    out: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        where = f"{rel}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Subscript) and _is_store(node.value) and rel != "trackly_exec/store/client.py":
            out.append(f"{where}: collection through Store[...]: use .db[c.NAME]")
        if isinstance(node, ast.Subscript) and _store_like(node.value):
            if isinstance(node.slice, ast.Constant) and isinstance(node.slice.value, str):
                out.append(f"{where}: collection by literal {node.slice.value!r}")
        elif isinstance(node, ast.Attribute) and node.attr in names and _store_like(node.value):
            out.append(f"{where}: collection by attribute .{node.attr}")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get_collection":
            out.append(f"{where}: get_collection()")
        elif (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and node.value in names
            and "_" in node.value  # the distinctive ones ("events", "contacts"... are also field names)
            and (rel, node.value) not in _NOT_COLLECTIONS
        ):
            out.append(f"{where}: collection name literal {node.value!r}")
    return out


def test_collections_are_reached_one_way() -> None:
    """Every collection is ``trackly.db[c.NAME]`` (or ``store.db[...]``) with its name from ``store/constants.py``:
    not ``trackly.store[...]`` (tests' shorthand only), no name literal (``db["queued_text_messages"]``), no attribute
    access (``db.queued_text_messages``), no ``get_collection``."""
    names = _collection_names()
    offenders = [hit for path in _package_files() if path != CONSTANTS for hit in _collection_literals(path, names)]
    assert not offenders, "\n".join(offenders)


#: The ratchet: bare ``dict[str, Any]`` left in the package and the built-in drivers (the type aliases that name
#: the shapes aside: ``X: TypeAlias = dict[str, Any]`` in store/documents.py and config.py). A stored document has
#: its TypedDict in store/documents.py (QueuedDoc, SentDoc, CampaignDoc...); a query is a ``Filter``, an update an
#: ``Update``, a pipeline a ``Pipeline``, a body a ``JsonObject``, a config table a ``ConfigTable``. Never raise it.
MAX_BARE_DICTS = 0


def test_bare_dict_annotations_do_not_grow() -> None:
    hits = [
        f"{path.relative_to(TESTS.parent).as_posix()}:{n}: {line.strip()}"
        for path in [*_package_files(), *sorted((TESTS.parent / "drivers").glob("*.py"))]
        if path != DOCUMENTS
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if ": TypeAlias = " not in line
        for _ in range(line.count("dict[str, Any]"))
    ]
    assert len(hits) <= MAX_BARE_DICTS, (
        f"{len(hits)} bare dict[str, Any] (at most {MAX_BARE_DICTS}): use the types of trackly_exec.store.documents\n"
        + "\n".join(hits)
    )


def test_no_source_points_outside_the_repository() -> None:
    """Comments and docstrings cite the providers' public documents, never a path of the machine the code was
    written on (a reader of a clone has neither ``/work`` nor ``../shared``)."""
    root = TESTS.parent
    pattern = re.compile(r"/work/|\.\./shared|shared/reference")
    offenders = [
        f"{path.relative_to(root)}:{n}"
        for folder in ("trackly_exec", "drivers", "bench", "config")
        for path in sorted((root / folder).rglob("*"))
        if path.is_file() and path.suffix in {".py", ".toml", ".md", ".service", ".html", ".js"}
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if pattern.search(line)
    ]
    offenders += [
        f"{name}:{n}"
        for name in ("README.md", "CONTRIBUTING.md", "pyproject.toml", "trackly.toml", "Makefile")
        for n, line in enumerate((root / name).read_text(encoding="utf-8").splitlines(), 1)
        if pattern.search(line)
    ]
    assert not offenders, f"paths outside the repository: {offenders}"


def test_the_docs_name_modules_and_functions_that_exist() -> None:
    """Every ``trackly_exec.x.y`` the README or CONTRIBUTING names (a module, or a module's attribute) imports, and
    every ``trackly_exec/....py`` path they name is a file of the repository."""
    import importlib

    root = TESTS.parent
    missing = []
    for name in ("README.md", "CONTRIBUTING.md"):
        text = (root / name).read_text(encoding="utf-8")
        for dotted in sorted(set(re.findall(r"\btrackly_exec(?:\.[A-Za-z_]\w*)+", text))):
            parts = dotted.split(".")
            for cut in range(len(parts), 0, -1):  # the longest importable module, then attributes
                try:
                    obj: object = importlib.import_module(".".join(parts[:cut]))
                except ImportError:
                    continue
                for attr in parts[cut:]:
                    obj = getattr(obj, attr, None)
                if obj is None:
                    missing.append(f"{name}: {dotted}")
                break
        paths = sorted(set(re.findall(r"\btrackly_exec/[\w/]+\.\w+", text)))
        missing.extend(f"{name}: {path}" for path in paths if not (root / path).exists())
    assert not missing, missing
