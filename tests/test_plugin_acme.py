"""The worked HTTP plugin (examples/trackly-driver-acme), as its author would use it: installed as a distribution of
its own, discovered through the entry-point group, its own test module running ``DriverContractSuite`` (imported
as documented, ``from trackly_exec.testing import DriverContractSuite``) against its fake, and its fake served by
``trackly fake-provider acme`` to a campaign's worth of sends through the driver pool."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from trackly_exec.store.embedded import free_port

from .plugin_support import pip_install, plugin_env, run_python
from .services import wait_port


@pytest.fixture(scope="module")
def acme(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the example's source copy, the private directory it is installed into with pip)."""
    return pip_install("trackly-driver-acme", tmp_path_factory)


def test_acme_listed(acme: tuple[Path, Path]) -> None:
    """`trackly drivers` lists the installed plugin with its distribution."""
    _, target = acme
    result = run_python(["-m", "trackly_exec.cli", "drivers"], target)
    assert result.returncode == 0, result.stderr
    [line] = [line for line in result.stdout.splitlines() if line.startswith("acme ")]
    assert "trackly_driver_acme:AcmeDriver" in line and "trackly-driver-acme 0.1.0" in line
    assert line.rstrip().endswith("ok"), line


def test_acme_passes_the_contract_suite(acme: tuple[Path, Path]) -> None:
    """The example's own tests (the whole contract suite against its fake) pass, run as its author runs them."""
    src, target = acme
    args = ["-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "error", str(src / "tests")]
    result = run_python(args, target, cwd=src, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "16 passed" in result.stdout, result.stdout


def test_acme_fake_served_by_the_cli(acme: tuple[Path, Path]) -> None:
    """`trackly fake-provider acme` serves the plugin's fake; the driver pool sends through it from config, a
    refused number comes back rejected on its own, and the fake's ledger holds each accepted message once."""
    _, target = acme
    port = free_port()
    fake = subprocess.Popen(
        [sys.executable, "-m", "trackly_exec.cli", "fake-provider", "acme", "--port", str(port)],
        env=plugin_env(target), cwd=target, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_port("127.0.0.1", port, timeout=30)
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
        result = run_python(["-c", code], target, timeout=60)
        assert result.returncode == 0, result.stderr
        kinds, ledger = result.stdout.strip().splitlines()[-2:]
        assert kinds == '["accepted"] rejected INVALID_NUMBER', result.stdout
        assert ledger == "[250, 250, 0, 3]", result.stdout  # 251 messages in requests of 100
    finally:
        fake.terminate()
        fake.wait(timeout=10)
