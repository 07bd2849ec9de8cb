"""Plugins as their authors ship them: an example distribution installed with pip into a private directory, and
Python run in a child process that sees only that directory (``PYTHONPATH``) beside the installed trackly-exec."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def plugin_env(target: Path) -> dict[str, str]:
    """The environment of a child that loads plugins from ``target`` (no test-only driver loading, no pytest options
    of the outer run)."""
    env = {k: v for k, v in os.environ.items() if k not in ("TRACKLY_LOAD_DRIVERS", "PYTEST_ADDOPTS")}
    env["PYTHONPATH"] = str(target)
    return env


def run_python(
    args: list[str], target: Path, *, cwd: Path | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    """``python ARGS`` with the plugins installed in ``target`` (in ``cwd``, default ``target``)."""
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, env=plugin_env(target), cwd=cwd or target,
        timeout=timeout,
    )  # fmt: skip


def pip_install(example: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """``examples/<example>`` copied and installed with pip (no index, no dependencies): ``(source copy, target)``."""
    src = tmp_path_factory.mktemp("src") / example
    shutil.copytree(
        EXAMPLES / example, src, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__", ".pytest_cache")
    )
    target = tmp_path_factory.mktemp("target")
    args = ["install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index", "--target", str(target), str(src)]
    result = subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return src, target
