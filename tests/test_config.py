"""The foundation: config, store, registry, CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from trackly_exec.config import load_config
from trackly_exec.errors import ConfigError
from trackly_exec.store.client import Store

ROOT = Path(__file__).resolve().parent.parent


def test_default_config_loads() -> None:
    """The shipped trackly.toml is valid and uses the embedded store."""
    s = load_config(ROOT / "trackly.toml")
    assert s.mongo.embedded
    assert s.executor.workers_per_list == 6 and s.executor.pool_size == 30


def test_unknown_key_names_file_and_key(tmp_path: Path) -> None:
    """An unknown key fails with the file and the dotted key in the message."""
    f = tmp_path / "bad.toml"
    f.write_text("[executor]\npool_sise = 3\n")
    with pytest.raises(ConfigError) as e:
        load_config(f)
    assert "bad.toml" in str(e.value) and "executor.pool_sise" in str(e.value) and "unknown key" in str(e.value)


def test_wrong_type_names_key(tmp_path: Path) -> None:
    """A wrong type names the key and the value."""
    f = tmp_path / "bad.toml"
    f.write_text("[executor]\npool_size = 'many'\n")
    with pytest.raises(ConfigError) as e:
        load_config(f)
    assert "executor.pool_size" in str(e.value)


def test_env_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """TRACKLY_SECTION__KEY overrides the file."""
    monkeypatch.setenv("TRACKLY_EXECUTOR__POOL_SIZE", "7")
    assert load_config(ROOT / "trackly.toml").executor.pool_size == 7


async def test_next_ids(store: Store) -> None:
    """Id sequences hand out consecutive, never-repeated ranges."""
    assert await store.next_ids("x", 3) == [1, 2, 3]
    assert await store.next_id("x") == 4


def test_check_config_exit_2(tmp_path: Path) -> None:
    """`trackly check-config` exits 2 naming the key on a bad config."""
    f = tmp_path / "bad.toml"
    f.write_text("[mongo]\nuri = 5\n")
    r = subprocess.run(
        [sys.executable, "-m", "trackly_exec.cli", "check-config", "-c", str(f)], capture_output=True, text=True
    )
    assert r.returncode == 2 and "mongo.uri" in r.stderr


def test_every_setting_has_default_and_description() -> None:
    """Each key of every config section has a default and a description."""
    from pydantic import BaseModel

    from trackly_exec.config import Settings

    def walk(model: type[BaseModel], prefix: str) -> list[str]:
        missing = []
        for name, field in model.model_fields.items():
            if field.is_required() or not field.description:
                missing.append(prefix + name)
            ann = field.annotation
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                missing += walk(ann, f"{prefix}{name}.")
        return missing

    assert walk(Settings, "") == []


def test_secrets_never_printed(tmp_path: Path) -> None:
    """check-config prints secrets redacted."""
    f = tmp_path / "c.toml"
    f.write_text('[mongo]\nuri = "mongodb://u:hunter2@db:27017"\n[http]\napi_tokens = ["tok-secret-1"]\n')
    r = subprocess.run(
        [sys.executable, "-m", "trackly_exec.cli", "check-config", "-c", str(f)], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    assert "hunter2" not in r.stdout and "tok-secret-1" not in r.stdout and "**********" in r.stdout


def test_shipped_configs_are_valid() -> None:
    """trackly.toml passes check-config, drivers included; config/production.example.toml loads (its only problems
    are the placeholders left to fill in, see test_configcheck)."""
    r = subprocess.run(
        [sys.executable, "-m", "trackly_exec.cli", "check-config", "-c", str(ROOT / "trackly.toml"), "--no-store"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    load_config(ROOT / "config/production.example.toml")


def test_unknown_driver_lists_available(tmp_path: Path) -> None:
    """A config naming an unknown driver fails start-up with the available ones."""
    f = tmp_path / "c.toml"
    f.write_text('[drivers.sms]\ndriver = "nope"\n')
    r = subprocess.run(
        [sys.executable, "-m", "trackly_exec.cli", "check-config", "-c", str(f)], capture_output=True, text=True
    )
    assert r.returncode == 2
    assert "drivers.sms.driver" in r.stderr and "infobip" in r.stderr and "twilio" in r.stderr
