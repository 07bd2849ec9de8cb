"""Packaging: the distribution builds with the declared setuptools floor and without a single warning
(the PEP 639 licence string, static/ as package data rather than an unlisted package)."""

from __future__ import annotations

import email.parser
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

from packaging.specifiers import SpecifierSet
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent


def test_license_is_an_spdx_string_and_the_floor_supports_it() -> None:
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert meta["project"]["license"] == "MIT"
    (req,) = [r for r in meta["build-system"]["requires"] if r.startswith("setuptools")]
    floor = SpecifierSet(req.removeprefix("setuptools"))
    assert not floor.contains("76.1.0") and floor.contains("77.0.3")  # 77: `license` as an SPDX expression


def test_wheel_builds_without_warnings(tmp_path: Path) -> None:
    """The wheel, built by the build backend with every warning an error, carries the licence expression,
    the dashboard page and py.typed."""
    import setuptools

    assert Version(setuptools.__version__) >= Version("77.0.3")
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for name in ("trackly_exec", "drivers"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    out = tmp_path / "dist"
    code = f"from setuptools import build_meta; print(build_meta.build_wheel({str(out)!r}))"
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", code], cwd=src, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert "Deprecat" not in result.stderr and "Warning" not in result.stderr, result.stderr[-4000:]
    wheel = out / result.stdout.strip().splitlines()[-1]
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        (metadata,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        headers = email.parser.Parser().parsestr(zf.read(metadata).decode())
    assert headers["License-Expression"] == "MIT" and headers["License"] is None
    assert {"trackly_exec/operations/static/dashboard.html", "trackly_exec/py.typed"} <= names
