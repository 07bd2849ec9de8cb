"""The worked HTTP plugin (examples/trackly-driver-acme), as its author would use it: installed as a distribution of
its own, discovered through the entry-point group, its own test module running ``DriverContractSuite`` (imported
as documented, ``from trackly_exec.testing import DriverContractSuite``) against its fake, and its fake served by
``trackly fake-provider acme`` to a campaign's worth of sends through the driver pool."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ACME = ROOT / "examples" / "trackly-driver-acme"


def _env(pythonpath: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("TRACKLY_LOAD_DRIVERS", "PYTEST_ADDOPTS")}
    env["PYTHONPATH"] = str(pythonpath)
    return env


@pytest.fixture(scope="module")
def acme(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the example's source copy, the private directory it is installed into with pip)."""
    src = tmp_path_factory.mktemp("src") / "trackly-driver-acme"
    shutil.copytree(ACME, src, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__", ".pytest_cache"))
    target = tmp_path_factory.mktemp("target")
    args = ["install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index", "--target", str(target), str(src)]
    result = subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return src, target


def test_acme_listed(acme: tuple[Path, Path]) -> None:
    """`trackly drivers` lists the installed plugin with its distribution."""
    _, target = acme
    result = subprocess.run(
        [sys.executable, "-m", "trackly_exec.cli", "drivers"],
        capture_output=True, text=True, env=_env(target), cwd=target, timeout=30,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    [line] = [line for line in result.stdout.splitlines() if line.startswith("acme ")]
    assert "trackly_driver_acme:AcmeDriver" in line and "trackly-driver-acme 0.1.0" in line
    assert line.rstrip().endswith("ok"), line


def test_acme_passes_the_contract_suite(acme: tuple[Path, Path]) -> None:
    """The example's own tests (the whole contract suite against its fake) pass, run as its author runs them."""
    src, target = acme
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "error", str(src / "tests")],
        capture_output=True, text=True, env=_env(target), cwd=src, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "15 passed" in result.stdout, result.stdout


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_acme_fake_served_by_the_cli(acme: tuple[Path, Path]) -> None:
    """`trackly fake-provider acme` serves the plugin's fake; the driver pool sends through it from config, a
    refused number comes back rejected on its own, and the fake's ledger holds each accepted message once."""
    _, target = acme
    port = _free_port()
    fake = subprocess.Popen(
        [sys.executable, "-m", "trackly_exec.cli", "fake-provider", "acme", "--port", str(port)],
        env=_env(target), cwd=target, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert fake.poll() is None and time.monotonic() < deadline, "the fake did not start"
                time.sleep(0.1)
        code = (
            "import asyncio, json, urllib.request\n"
            "from trackly_exec.config import Settings\n"
            "from trackly_exec.drivers.pool import DriverPool\n"
            "from trackly_exec import OutboundMessage\n"
            "async def main():\n"
            f"    cfg = {{'driver': 'acme', 'base_url': 'http://127.0.0.1:{port}', 'api_key': 'acme-test-key'}}\n"
            "    pool = DriverPool(Settings(drivers={'acme': cfg}))\n"
            "    pool.validate()\n"
            "    d = await pool.get('acme')\n"
            "    msgs = [OutboundMessage(id=f'{k:016x}', to=f'+1415555{k:04d}', sender='+14155550100', body='hi')\n"
            "            for k in range(250)] + [OutboundMessage(id='f' * 16, to='not-a-number', sender='x', body='hi')]\n"
            "    results = [r for k in range(0, len(msgs), 100) for r in await d.submit(msgs[k:k + 100])]\n"
            "    print(json.dumps(sorted({r.kind for r in results[:250]})), results[-1].kind, results[-1].code)\n"
            f"    ledger = json.load(urllib.request.urlopen('http://127.0.0.1:{port}/_fake/ledger'))\n"
            "    print(json.dumps([ledger['accepted'], ledger['unique'], ledger['duplicates'], ledger['requests']]))\n"
            "    await pool.close()\n"
            "asyncio.run(main())\n"
        )
        result = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env=_env(target), cwd=target, timeout=60
        )
        assert result.returncode == 0, result.stderr
        kinds, ledger = result.stdout.strip().splitlines()[-2:]
        assert kinds == '["accepted"] rejected INVALID_NUMBER', result.stdout
        assert ledger == "[250, 250, 0, 3]", result.stdout  # 251 messages in requests of 100
    finally:
        fake.terminate()
        fake.wait(timeout=10)
