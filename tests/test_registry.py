"""Driver plugins: a separate distribution is discovered through the entry-point group, with no change to
trackly_exec; broken plugins are listed with their error; unknown names list what is available."""

from __future__ import annotations

from pathlib import Path

import pytest

from trackly_exec.drivers import registry
from trackly_exec.drivers.registry import discover, get_driver_class
from trackly_exec.errors import DriverNotFound

from .plugin_support import pip_install, run_python


@pytest.fixture(scope="module")
def plugin_target(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example distribution installed with pip into a private target directory."""
    return pip_install("trackly-driver-example", tmp_path_factory)[1]


def _write_dist(target: Path, name: str, version: str, entry: str, module: str, code: str) -> None:
    dist = target / f"{name.replace('-', '_')}-{version}.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (dist / "entry_points.txt").write_text(f"[trackly.drivers]\n{entry}\n")
    (target / f"{module}.py").write_text(code)


def test_example_plugin_listed(plugin_target: Path) -> None:
    """`trackly drivers` lists the installed example with its distribution and version, next to the built-ins."""
    result = run_python(["-m", "trackly_exec.cli", "drivers"], plugin_target)
    assert result.returncode == 0, result.stderr
    lines = {line.split()[0]: line for line in result.stdout.splitlines() if line.strip()}
    assert {"infobip", "twilio", "cm", "example"} <= set(lines)
    assert "trackly_driver_example:ExampleDriver" in lines["example"]
    assert "trackly-driver-example 0.1.0" in lines["example"] and lines["example"].rstrip().endswith("ok")
    for name in ("infobip", "twilio", "cm"):
        assert "trackly-exec" in lines[name] and lines[name].rstrip().endswith("ok")


def test_example_plugin_sends(plugin_target: Path) -> None:
    """The discovered example driver is built from config by the DriverPool and accepts messages."""
    code = (
        "import asyncio\n"
        "from trackly_exec.config import Settings\n"
        "from trackly_exec.drivers.pool import DriverPool\n"
        "from trackly_exec import OutboundMessage\n"
        "async def main():\n"
        "    pool = DriverPool(Settings(drivers={'demo': {'driver': 'example', 'prefix': 'p'}}))\n"
        "    pool.validate()\n"
        "    d = await pool.get('demo')\n"
        "    [r] = await d.submit([OutboundMessage(id='0123456789abcdef', to='+14155550000', sender='x', body='b')])\n"
        "    print(r.kind, r.provider_message_id)\n"
        "    await pool.close()\n"
        "asyncio.run(main())\n"
    )
    result = run_python(["-c", code], plugin_target)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1].split() == ["accepted", "p-0123456789abcdef"]


def test_broken_plugins_listed_with_error(tmp_path: Path) -> None:
    """A plugin whose import fails, or whose entry point is not a Driver, is listed with its error."""
    _write_dist(
        tmp_path,
        "broken-plugin",
        "1.2",
        "broken = broken_mod:Driver",
        "broken_mod",
        "raise ImportError('needs the missing package frobnicate')\n",
    )
    _write_dist(
        tmp_path, "wrong-plugin", "0.3", "wrong = wrong_mod:NotADriver", "wrong_mod", "class NotADriver:\n    pass\n"
    )
    result = run_python(["-m", "trackly_exec.cli", "drivers"], tmp_path)
    assert result.returncode == 0, result.stderr
    lines = {line.split()[0]: line for line in result.stdout.splitlines() if line.strip()}
    assert "broken-plugin 1.2" in lines["broken"]
    assert "ERROR ImportError: needs the missing package frobnicate" in lines["broken"]
    assert "ERROR" in lines["wrong"] and "not a trackly_exec.Driver subclass" in lines["wrong"]
    assert lines["infobip"].rstrip().endswith("ok")


def test_unknown_driver_lists_available() -> None:
    """get_driver_class on an unknown name raises DriverNotFound naming the available drivers."""
    with pytest.raises(DriverNotFound) as exc:
        get_driver_class("no-such-provider")
    message = str(exc.value)
    assert "no-such-provider" in message
    for name in ("infobip", "twilio", "cm"):
        assert name in message


def test_builtins_discovered_in_process() -> None:
    """The built-in drivers load through the entry-point group, each naming its fake."""
    infos = discover()
    for name in ("infobip", "twilio", "cm"):
        info = infos[name]
        assert info.cls is not None and info.distribution == "trackly-exec", info
        assert info.cls.fake and info.cls.fake.startswith(f"trackly_exec.testing.fakes.{name}:")


def test_driver_class_found_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """A driver's class is discovered once per process (a discovery reads every distribution's metadata), per
    ``TRACKLY_LOAD_DRIVERS``; an unknown name is looked for again each time."""
    calls: list[int] = []
    original = registry.discover

    def counting() -> dict[str, registry.DriverInfo]:
        calls.append(1)
        return original()

    monkeypatch.setattr(registry, "discover", counting)
    monkeypatch.setattr(registry, "_found", {})
    monkeypatch.delenv("TRACKLY_LOAD_DRIVERS", raising=False)
    first = get_driver_class("twilio")
    assert get_driver_class("twilio") is first and len(calls) == 1
    monkeypatch.setenv("TRACKLY_LOAD_DRIVERS", "twilio")
    assert get_driver_class("twilio") is first and len(calls) == 2
    for _ in range(2):
        with pytest.raises(DriverNotFound):
            get_driver_class("no-such-provider")
    assert len(calls) == 4
