"""`trackly check-config`: every problem at once, URLs with a scheme, example placeholders, drivers used by a list
without credentials, environment variables named, `--describe`, and no secret value in any message."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pymongo import MongoClient

from trackly_exec.cli import configcheck
from trackly_exec.config import Settings, load_config
from trackly_exec.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def check_config(
    *argv: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run(
        [sys.executable, "-m", "trackly_exec.cli", "check-config", *argv],
        capture_output=True,
        text=True,
        env={**{k: v for k, v in os.environ.items() if not k.startswith("TRACKLY_")}, **(env or {})},
        timeout=60,
        check=False,
        cwd=cwd,
    )


def trackly_run(cwd: Path) -> subprocess.CompletedProcess[str]:
    """``trackly run`` in ``cwd`` (its trackly.toml), without TRACKLY_* variables: for configs it refuses."""
    import os

    return subprocess.run(
        [sys.executable, "-m", "trackly_exec.cli", "run"],
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("TRACKLY_")},
        timeout=60,
        check=False,
        cwd=cwd,
    )


def test_no_config_file_says_the_defaults_were_checked(tmp_path: Path) -> None:
    """Where there is no trackly.toml (and no -c or TRACKLY_CONFIG), the defaults are what runs: check-config says
    so instead of "config OK: trackly.toml" for a file that does not exist; a named file that is missing is an
    error; a file that is not UTF-8 is one line, not a traceback."""
    r = check_config(cwd=tmp_path)
    assert r.returncode == 0 and "no trackly.toml here" in r.stderr and "built-in defaults" in r.stderr
    r = check_config("-c", "absent.toml", cwd=tmp_path)
    assert r.returncode == 2 and "file not found" in r.stderr
    (tmp_path / "trackly.toml").write_bytes(b"\xff\xfe[daemon]\n")
    r = check_config(cwd=tmp_path)
    assert r.returncode == 2 and "not UTF-8" in r.stderr and "Traceback" not in r.stderr


def test_every_problem_reported_at_once(tmp_path: Path) -> None:
    """Several mistakes in one file are all listed, each with its key; a URL without a scheme is one of them."""
    f = tmp_path / "bad.toml"
    f.write_text(
        '[executor]\npool_size = "many"\nclaim_batch_size = 0\n[http]\npublic_url = "sms.acme.io"\n'
        'short_base = "https://"\n[redis]\nurl = "localhost:6379"\n[alerts]\n'
        'discord_webhook_url = "discord.com/api/webhooks/1/abc"\n'
        '[drivers.infobip]\nbase_url = "api.infobip.com"\napi_key = "k"\n'
    )
    with pytest.raises(ConfigError) as e:
        load_config(f)
    keys = [k for k, _ in e.value.problems]
    assert sorted(keys) == sorted(
        [
            "executor.pool_size",
            "executor.claim_batch_size",
            "redis.url",
            "http.public_url",
            "http.short_base",
            "alerts.discord_webhook_url",
            "drivers",
        ]
    ), e.value.problems
    text = str(e.value)
    assert "7 problems" in text and "scheme" in text and "infobip" in text
    assert "localhost:6379" not in text and "discord.com/api/webhooks/1/abc" not in text  # secrets never shown
    r = check_config("-c", str(f))
    assert r.returncode == 2 and all(k in r.stderr for k in keys)


def test_error_from_environment_names_the_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A bad value set by TRACKLY_SECTION__KEY names that variable; a secret's value is never repeated."""
    f = tmp_path / "ok.toml"
    f.write_text("")
    monkeypatch.setenv("TRACKLY_EXECUTOR__POOL_SIZE", "lots")
    monkeypatch.setenv("TRACKLY_REDIS__URL", "hunter2-not-a-url")
    with pytest.raises(ConfigError) as e:
        load_config(f)
    text = str(e.value)
    assert "TRACKLY_EXECUTOR__POOL_SIZE" in text and "'lots'" in text
    assert "TRACKLY_REDIS__URL" in text and "hunter2" not in text


def test_placeholders_of_the_example_are_refused() -> None:
    """The production example fails check-config, naming every key still holding a placeholder (never its value);
    the development trackly.toml passes."""
    r = check_config("-c", str(ROOT / "config/production.example.toml"), "--no-store")
    assert r.returncode == 2
    for key in (
        "mongo.uri",
        "redis.url",
        "http.public_url",
        "http.api_tokens.0",
        "tracking.ip_hash_salt",
        "alerts.discord_webhook_url",
        "drivers.infobip.api_key",
        "drivers.twilio.auth_token",
        "drivers.twilio.account_sid",
        "drivers.cm.product_token",
    ):
        assert f"{key}: still the example's placeholder" in r.stderr, (key, r.stderr)
    assert "CHANGE-ME" not in r.stderr and "CHANGE-ME" not in r.stdout
    assert check_config("-c", str(ROOT / "trackly.toml"), "--no-store").returncode == 0
    settings = load_config(ROOT / "trackly.toml", http={"api_tokens": ["YOUR_API_KEY"]})
    assert [k for k, _ in configcheck.placeholders(settings)] == ["http.api_tokens.0"]


def test_a_local_fakes_credentials_are_not_placeholders(tmp_path: Path) -> None:
    """A driver instance pointed at this machine (``trackly fake-provider``) may use the fake's own credentials, the
    CM fake's all-zero product token included; the same token for a real gateway is still a placeholder."""
    settings = load_config(
        ROOT / "trackly.toml",
        drivers={
            "cm": {"base_url": "http://127.0.0.1:9003", "product_token": "00000000-0000-0000-0000-000000000000"},
            "cm_live": {
                "driver": "cm",
                "base_url": "https://gw.messaging.cm.com",
                "product_token": "00000000-0000-0000-0000-000000000000",
            },
        },
    )
    assert [k for k, _ in configcheck.placeholders(settings)] == ["drivers.cm_live.product_token"]
    # the same when another error keeps the config from loading (the raw reading used to flag the fake's token)
    f = tmp_path / "t.toml"
    f.write_text(
        '[executor]\npool_size = "many"\n[drivers.cm]\nbase_url = "http://127.0.0.1:9003"\n'
        'product_token = "00000000-0000-0000-0000-000000000000"\n[drivers.cm_live]\ndriver = "cm"\n'
        'base_url = "https://gw.messaging.cm.com"\nproduct_token = "00000000-0000-0000-0000-000000000000"\n'
    )
    assert [k for k, _ in configcheck.raw_placeholders(str(f))] == ["drivers.cm_live.product_token"]


def test_embedded_uri_shown_and_credentials_masked(tmp_path: Path) -> None:
    """mongo.uri = "embedded" is not a secret; a URI's password is masked, its hosts stay readable."""
    r = check_config("-c", str(ROOT / "trackly.toml"), "--no-store")
    assert '"uri": "embedded"' in r.stdout
    f = tmp_path / "c.toml"
    f.write_text('[mongo]\nuri = "mongodb://trackly:s3cr3t-pw@db1:27017/?replicaSet=rs0"\n')
    r = check_config("-c", str(f), "--no-store")
    assert r.returncode == 0, r.stderr
    assert "s3cr3t-pw" not in r.stdout and '"uri": "mongodb://trackly:**********@db1:27017/?replicaSet=rs0"' in r.stdout


def test_driver_used_by_a_list_without_credentials(settings: Settings) -> None:
    """A sending list whose driver has no credentials, or is not configured, is an error naming the list; an
    inactive list does not count; an unused instance without credentials is only a warning."""
    uri = settings.mongo.uri.get_secret_value()
    with MongoClient(uri) as client:
        db = client[settings.mongo.database]
        db["sending_lists"].insert_many(
            [
                {"_id": 1, "name": "US promos", "driver": "infobip", "active": True},
                {"_id": 2, "name": "EU", "driver": "cm"},
                {"_id": 3, "name": "old", "driver": "nosuch", "active": False},
            ]
        )
    cfg = settings.model_copy(
        update={"drivers": {"infobip": {"base_url": "https://api.infobip.com"}, "twilio": {"account_sid": "AC1"}}}
    )
    errors, warnings = configcheck.check(cfg, store=True)
    text = "\n".join(f"{k}: {m}" for k, m in errors)
    assert (
        "drivers.infobip.api_key: sending list 1 (US promos) sends through 'infobip', which has no credentials" in text
    )
    assert "drivers.cm: sending list 2 (EU) uses driver 'cm', which is not configured" in text
    assert "nosuch" not in text
    assert any("drivers.twilio: no credentials (auth_token empty)" in w for w in warnings)
    errors, warnings = configcheck.check(cfg, store=False)
    assert errors == [] and any("drivers.infobip: no credentials" in w for w in warnings)


def test_describe_lists_every_key_with_default_and_description() -> None:
    """--describe prints every key of every section (and each driver's settings) with its default and description."""
    r = check_config("--describe")
    assert r.returncode == 0
    from pydantic import BaseModel

    def keys(model: type[BaseModel], prefix: str) -> list[str]:
        out = []
        for name, field in model.model_fields.items():
            ann = field.annotation
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                out += keys(ann, f"{prefix}{name}.")
            else:
                out.append(prefix + name)
        return out

    lines = {line.split()[0]: line for line in r.stdout.splitlines() if line.startswith("  ")}
    for key in keys(Settings, ""):
        assert key in lines, key
    assert '"embedded"' in lines["mongo.uri"] and "= 30 " in lines["executor.pool_size"] + " "
    assert "Concurrent provider requests" in lines["executor.pool_size"]
    assert "drivers.infobip.api_key" in lines and "drivers.twilio.auth_token" in lines


def test_placeholders_reported_with_load_errors(tmp_path: Path) -> None:
    """A config that does not load still gets its placeholders reported in the same run."""
    f = tmp_path / "c.toml"
    f.write_text('[executor]\npool_size = "x"\n[http]\napi_tokens = ["CHANGE-ME"]\n')
    r = check_config("-c", str(f), "--no-store", env={"TRACKLY_TRACKING__IP_HASH_SALT": "changeme"})
    assert r.returncode == 2
    assert "3 problems" in r.stderr and "executor.pool_size" in r.stderr
    assert "http.api_tokens.0: still the example's placeholder" in r.stderr
    assert (
        "tracking.ip_hash_salt: still the example's placeholder: set the real value (from environment variable "
        "TRACKLY_TRACKING__IP_HASH_SALT)" in r.stderr
    )
    assert "CHANGE-ME" not in r.stderr and "changeme" not in r.stderr


def test_check_config_exit_2(tmp_path: Path) -> None:
    """`trackly check-config` exits 2 naming the key on a bad config."""
    f = tmp_path / "bad.toml"
    f.write_text("[mongo]\nuri = 5\n")
    r = subprocess.run(
        [sys.executable, "-m", "trackly_exec.cli", "check-config", "-c", str(f)], capture_output=True, text=True
    )
    assert r.returncode == 2 and "mongo.uri" in r.stderr


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


def test_run_refuses_an_example_admin_token_and_check_config_sees_dots(tmp_path: Path) -> None:
    """``trackly run`` with the README's minimal config (token ``change-me``) does not start: an example's token is
    public. Its ``api_key = "..."`` is a placeholder too. Neither value is printed."""

    (tmp_path / "trackly.toml").write_text(
        '[mongo]\nuri = "embedded"\n[http]\npublic_url = "https://sms.example.com"\napi_tokens = ["change-me"]\n'
        '[drivers.infobip]\nbase_url = "https://xxxxx.api.infobip.com"\napi_key = "..."\n'
    )
    r = trackly_run(tmp_path)
    assert r.returncode == 2 and "http.api_tokens.0" in r.stderr and "will not open its API" in r.stderr, r.stderr
    assert "change-me" not in r.stderr and not (tmp_path / ".trackly").exists()  # refused before anything started
    r = check_config(cwd=tmp_path, env={})
    assert r.returncode == 2 and "drivers.infobip.api_key: still the example's placeholder" in r.stderr, r.stderr
    settings = load_config(ROOT / "trackly.toml", http={"dashboard_tokens": ["CHANGE-ME"]})
    assert [k for k, _ in configcheck.placeholder_tokens(settings)] == ["http.dashboard_tokens.0"]
    assert configcheck.placeholder_tokens(load_config(ROOT / "trackly.toml")) == []


def test_list_check_warnings_say_why_the_lists_were_not_read(tmp_path: Path) -> None:
    """``--no-store`` says so (not "embedded store" for a mongodb:// config); an embedded store that the running
    daemon holds is named as in use, not as unreachable."""
    from trackly_exec.store.embedded import EmbeddedMongo

    remote = load_config(ROOT / "trackly.toml", mongo={"uri": "mongodb://127.0.0.1:9/"})
    _, warnings = configcheck.check(remote, store=False)
    assert "sending lists not checked against the drivers (--no-store)" in warnings
    data = tmp_path / "data"
    running = EmbeddedMongo(data)  # the daemon of this data_dir (a file store: one process holds it)
    running.start()
    try:
        running.wait_ready()
        r = check_config("-c", str(ROOT / "trackly.toml"), "--store", env={"TRACKLY_DAEMON__DATA_DIR": str(data)})
    finally:
        running.stop()
    assert r.returncode == 0 and "in use by the running daemon" in r.stderr, r.stderr


def test_driver_problems_come_with_the_rest_at_once(tmp_path: Path) -> None:
    """A config with mistakes in its core sections and in its driver tables: one check-config run lists every one
    (the drivers' came only once the rest was fixed); ``trackly run`` lists every driver problem and writes no
    webhook token for a config it refuses."""

    (tmp_path / "trackly.toml").write_text(
        '[daemon]\nshutdown_grace = 5\n[executor]\nworkers_per_list = 0\n[http]\npublic_url = "127.0.0.1:18380"\n'
        '[drivers.infobip]\napikey = "x"\n[drivers.twillio]\n'
    )
    r = check_config(cwd=tmp_path)
    assert r.returncode == 2 and "5 problems" in r.stderr, r.stderr
    for key in ("daemon.shutdown_grace", "executor.workers_per_list", "http.public_url"):
        assert f"  {key}: " in r.stderr, (key, r.stderr)
    assert "drivers.infobip.apikey: unknown key" in r.stderr and "drivers.twillio.driver: unknown driver" in r.stderr
    (tmp_path / "trackly.toml").write_text('[drivers.infobip]\napikey = "x"\n[drivers.twillio]\n')
    r = trackly_run(tmp_path)
    assert r.returncode == 2 and "trackly.toml: 2 problems" in r.stderr, r.stderr
    assert "twillio" in r.stderr and "apikey" in r.stderr, r.stderr
    assert not list(tmp_path.rglob("webhook_tokens.json"))
