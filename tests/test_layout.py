"""The package's layout: one subpackage per stage, imports only going down the stages, no import cycles."""

from __future__ import annotations

import ast
import tomllib
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "trackly_exec"

#: Bottom to top. A module may import from its own stage or a lower one (the package root re-exports the public
#: driver API and is left out). TYPE_CHECKING-only imports count too.
STAGES = [
    ("trackly_exec.errors", "trackly_exec.config", "trackly_exec.logs", "trackly_exec.failpoints"),
    ("trackly_exec.store",),
    ("trackly_exec.drivers",),
    ("trackly_exec.testing",),
    ("trackly_exec.app",),
    ("trackly_exec.campaigns",),
    ("trackly_exec.executor",),
    ("trackly_exec.tracking",),
    ("trackly_exec.api",),
    ("trackly_exec.operations",),
    ("trackly_exec.daemon",),
    ("trackly_exec.cli",),
]
TOP_LEVEL = {"__init__", "errors", "config", "logs", "failpoints", "app", "daemon"}


def _modules() -> dict[str, Path]:
    out = {}
    for f in PKG.rglob("*.py"):
        parts = list(f.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = f
    return out


def _edges() -> set[tuple[str, str]]:
    mods = _modules()
    edges = set()
    for name, f in mods.items():
        is_pkg = f.name == "__init__.py"
        for node in ast.walk(ast.parse(f.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = name.split(".") if is_pkg else name.split(".")[:-1]
                    base = base[: len(base) - (node.level - 1)]
                    mod = ".".join(base + ([node.module] if node.module else []))
                else:
                    mod = node.module or ""
                targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in mods else mod for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            for t in targets:
                while t and t not in mods:
                    t = t.rpartition(".")[0]
                if t and t != name and t.startswith("trackly_exec"):
                    edges.add((name, t))
    return edges


def _rank(module: str) -> int | None:
    for i, stage in enumerate(STAGES):
        if any(module == s or module.startswith(s + ".") for s in stage):
            return i
    return None


def test_every_module_belongs_to_a_stage() -> None:
    flat = sorted(f.stem for f in PKG.glob("*.py") if f.stem not in TOP_LEVEL)
    assert not flat, f"modules outside a stage subpackage: {flat}"
    unranked = sorted(m for m in _modules() if m != "trackly_exec" and _rank(m) is None)
    assert not unranked, f"modules in no stage: {unranked}"
    for d in PKG.iterdir():
        if d.is_dir() and (d / "__init__.py").exists():
            assert ast.get_docstring(ast.parse((d / "__init__.py").read_text())), (
                f"{d.name}/__init__.py: say what it owns"
            )


def test_imports_only_go_down_the_stages() -> None:
    upward = sorted(f"{a} -> {b}" for a, b in _edges() if a != "trackly_exec" and (_rank(b) or 0) > (_rank(a) or 0))
    assert not upward, "imports going up the stages:\n" + "\n".join(upward)


def test_no_import_cycles() -> None:
    graph: dict[str, set[str]] = defaultdict(set)
    for a, b in _edges():
        graph[a].add(b)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    cycles: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in list(graph):
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_no_generic_top_level_drivers_package_is_installed() -> None:
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    setuptools = meta["tool"]["setuptools"]
    assert "drivers" not in setuptools["packages"] and "trackly_drivers" in setuptools["packages"]
    assert setuptools["package-dir"]["trackly_drivers"] == "drivers"
    for name, target in meta["project"]["entry-points"]["trackly.drivers"].items():
        assert target.startswith("trackly_drivers."), (name, target)
