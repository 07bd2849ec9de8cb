"""The configuration (config.py): trackly.toml into pydantic models, errors naming the file and key, environment
overrides, a default and a description for every key (check-config itself: test_configcheck.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from trackly_exec.config import load_config, mask_url_password
from trackly_exec.errors import ConfigError

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


@pytest.mark.parametrize("key", ["public_url", "short_base"])
def test_a_public_url_whose_host_is_no_host_name_is_refused(tmp_path: Path, key: str) -> None:
    """An underscore (a Docker service name, say) is no host name: Twilio refuses a StatusCallback on it, so every
    send would fail; the config names the key instead."""
    f = tmp_path / "bad.toml"
    f.write_text(f'[http]\n{key} = "https://trackly_daemon.internal:8443"\n')
    with pytest.raises(ConfigError) as e:
        load_config(f)
    assert f"http.{key}" in str(e.value) and "'_'" in str(e.value)
    f.write_text(f'[http]\n{key} = "https://trackly-daemon.internal:8443"\n')
    assert load_config(f)


@pytest.mark.parametrize(
    ("section", "key", "value", "says"),
    [
        ("redis", "url", "redis://:PW-s3cret@127.0.0.1:99999/0", "Port out of range"),
        ("redis", "url", "redis://:PW-s3cret@[::1/0", "Invalid IPv6 URL"),
        ("mongo", "uri", "mongodb://u:PW-s3cret@h:99999/x", "Port must be an integer"),
        ("mongo", "uri", "mongodb://u:PW-s3cret@[zz/x", "IPv6"),
        ("mongo", "write_concern", "\u00b9", "tag set name"),
    ],
)
def test_a_store_or_redis_address_that_cannot_be_used_is_a_config_error(
    tmp_path: Path, section: str, key: str, value: str, says: str
) -> None:
    """What the daemon could not connect with is refused when the config is read (check-config too), naming the
    key and never echoing the password: it used to pass check-config and end `trackly run` in a traceback."""
    f = tmp_path / "bad.toml"
    f.write_text(f'[{section}]\n{key} = "{value}"\n')
    with pytest.raises(ConfigError) as e:
        load_config(f)
    assert f"{section}.{key}" in str(e.value) and says in str(e.value) and "PW-s3cret" not in str(e.value)


def test_uri_options_holding_secrets_are_masked() -> None:
    uri = "mongodb://u:MongoPW@h1:27017,h2:27017/x?authSource=admin&tlsCertificateKeyFilePassword=KeyPW"
    shown = mask_url_password(uri)
    assert "MongoPW" not in shown and "KeyPW" not in shown and "authSource=admin" in shown
    assert "AWS" not in mask_url_password("mongodb://h/?authMechanismProperties=AWS_SESSION_TOKEN:abc")


def test_env_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """TRACKLY_SECTION__KEY overrides the file."""
    monkeypatch.setenv("TRACKLY_EXECUTOR__POOL_SIZE", "7")
    assert load_config(ROOT / "trackly.toml").executor.pool_size == 7


def test_a_file_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    """A config file in another encoding (UTF-16's byte-order mark, Latin-1) is one clear error, not a traceback."""
    f = tmp_path / "utf16.toml"
    f.write_bytes("[executor]\npool_size = 3\n".encode("utf-16"))
    with pytest.raises(ConfigError, match=r"utf16\.toml: not UTF-8 text"):
        load_config(f)


def test_an_env_list_that_is_not_json_is_a_config_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A list key set from the environment must be JSON (pydantic-settings' rule): a plain value names the variable
    and shows the form, without repeating the value (a token); the JSON form works."""
    monkeypatch.setenv("TRACKLY_HTTP__API_TOKENS", "s3cret-token")
    with pytest.raises(ConfigError) as e:
        load_config(ROOT / "trackly.toml")
    assert e.value.key == "http.api_tokens" and "TRACKLY_HTTP__API_TOKENS='[" in str(e.value)
    assert "s3cret-token" not in str(e.value)
    monkeypatch.setenv("TRACKLY_HTTP__API_TOKENS", '["s3cret-token"]')
    assert [t.get_secret_value() for t in load_config(ROOT / "trackly.toml").http.api_tokens] == ["s3cret-token"]


def test_admin_url_follows_the_operator_listener(tmp_path: Path) -> None:
    """The CLI's default API address: the operator listener when operator_port is set (the main listener then
    serves no admin API), else host:port; a wildcard listen address is reached on loopback."""
    assert load_config(ROOT / "trackly.toml", http={"port": 9000}).http.admin_url == "http://127.0.0.1:9000"
    s = load_config(ROOT / "trackly.toml", http={"host": "0.0.0.0", "port": 9000, "operator_port": 9001})
    assert s.http.admin_url == "http://127.0.0.1:9001"
    s = load_config(ROOT / "trackly.toml", http={"operator_host": "::1", "operator_port": 9001})
    assert s.http.admin_url == "http://[::1]:9001"


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


def test_toml_nested_too_deeply_is_a_config_error(tmp_path: Path) -> None:
    """Arrays nested hundreds deep (tomllib recurses) are a config error naming the file, not a RecursionError."""
    f = tmp_path / "deep.toml"
    f.write_text("a = " + "[" * 600 + "]" * 600 + "\n")
    with pytest.raises(ConfigError, match=r"deep\.toml: not valid TOML: arrays or tables nested too deeply"):
        load_config(f)


@pytest.mark.parametrize(
    "section,key,value,why",
    [
        ("executor", "poll_interval_seconds", "inf", "finite number"),
        ("executor", "claim_ttl_minutes", "1e308", "at most 525600 (a year)"),
        ("executor", "stale_after_minutes", "nan", "finite number"),
        ("scheduler", "poll_interval_seconds", "-inf", "finite number"),
        ("reconcile", "interval_seconds", "1e9", "at most 3.1536e+07 (a year)"),
        ("tracking", "outbox_max_age_hours", "9000", "at most 8760 (a year)"),
    ],
)
def test_durations_must_be_finite_and_at_most_a_year(
    tmp_path: Path, section: str, key: str, value: str, why: str
) -> None:
    """A duration of ``inf``, ``nan`` or beyond a year is refused naming the key (it overflowed the timers built from
    it at start-up, after check-config had said OK)."""
    f = tmp_path / "t.toml"
    f.write_text(f"[{section}]\n{key} = {value}\n")
    with pytest.raises(ConfigError) as e:
        load_config(f)
    assert f"{section}.{key}" in str(e.value) and why in str(e.value), str(e.value)


@pytest.mark.parametrize("value,why", [(float("inf"), "finite number"), (86400.0, "less than or equal to 3600")])
def test_a_driver_timeout_must_be_finite_and_at_most_an_hour(value: float, why: str) -> None:
    """A driver's timeouts too (the daemon and check-config report it as ``drivers.NAME.timeout_seconds``)."""
    from pydantic import ValidationError

    from trackly_exec.drivers.contract import DriverSettings

    for key in ("timeout_seconds", "connect_timeout_seconds"):
        with pytest.raises(ValidationError, match=why):
            DriverSettings.model_validate({key: value})


@pytest.mark.parametrize(
    "text",
    [
        '[[http]]\napi_tokens = ["SECRETAPITOKEN99"]\n',
        '[[drivers.infobip]]\napi_key = "SECRETREALKEY123"\nwebhook_token = "SECRETWEBHOOKTOK"\n',
        '[[redis]]\nurl = "redis://:SECRETREDISPW@h:6379/0"\n',
        '[[mongo]]\nuri = "mongodb://u:SECRETMONGOPW@h/"\n',
        '[drivers]\ninfobip = ["SECRETREALKEY123"]\n',
        'http = "SECRETAPITOKEN99"\n',
    ],
)
def test_a_section_of_the_wrong_shape_is_named_without_its_values(tmp_path: Path, text: str) -> None:
    """``[[http]]`` for ``[http]`` (an array of tables), a list or a text where a table belongs: the error names the
    section, never the values inside it (it printed the tokens, keys and passwords)."""
    f = tmp_path / "shape.toml"
    f.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(f)
    assert "SECRET" not in str(e.value), str(e.value)


@pytest.mark.parametrize("key", ["public_url", "short_base"])
def test_a_public_url_with_a_password_is_refused(tmp_path: Path, key: str) -> None:
    """It would go into every tracked link and provider callback (and was logged at every start)."""
    f = tmp_path / "pu.toml"
    f.write_text(f'[http]\n{key} = "https://user:PUBSECRETPW@sms.example.com"\n')
    with pytest.raises(ConfigError) as e:
        load_config(f)
    assert f"http.{key}" in str(e.value) and "PUBSECRETPW" not in str(e.value)


@pytest.mark.parametrize(
    "entry,ok",
    [
        ("10.0.0.0/8", True),
        ("192.168.1.5", True),
        ("fd00::/8", True),
        ("hooks.internal", True),
        ("10.0.0.0/33", False),
        ("10.1.2.0/24 ", False),
        ("", False),
        ("192.168.1.0/255.255.255.0x", False),
        ("not a host", False),
    ],
)
def test_webhook_allowlist_entries_are_networks_or_host_names(tmp_path: Path, entry: str, ok: bool) -> None:
    """A malformed CIDR was taken for a host name (allowing nothing, in silence); an empty entry was dropped."""
    f = tmp_path / "allow.toml"
    f.write_text(f"[tracking]\nwebhook_url_allowlist = [{entry!r}]\n".replace("'", '"'))
    if ok:
        assert load_config(f).tracking.webhook_url_allowlist == [entry]
        return
    with pytest.raises(ConfigError, match=r"tracking\.webhook_url_allowlist: entry 0"):
        load_config(f)
