"""Driver instances: built from ``[drivers.NAME]`` in the config, plus a sending list's own overrides.

A sending list names a driver instance (``driver = "infobip"``). Its ``driver_settings`` may only hold the
tuning keys the driver's settings model lists in ``list_overridable`` (``batch_size``, Infobip's
``intermediate_reports``, CM's ``max_parts``): endpoints, credentials and webhook secrets come from the
operator's config file only (a customer with its own provider account is a ``[drivers.NAME]`` instance of its
own). Anything else is refused (:class:`ListOverrideError`, the API answers 422 naming the key) and a stored
list holding one cannot send. Each distinct combination gets its own driver object, created on first use.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

from pydantic import TypeAdapter, ValidationError

from trackly_exec.config import Settings
from trackly_exec.drivers.contract import Driver, DriverContext
from trackly_exec.drivers.registry import get_driver_class
from trackly_exec.errors import ConfigError, DriverNotFound
from trackly_exec.logs import get_logger
from trackly_exec.store.documents import ConfigTable

log = get_logger(__name__)


#: Generated webhook path tokens, by driver instance, for instances whose config sets none (mode 0600).
TOKENS_FILE = "webhook_tokens.json"


def tokens_path(settings: Settings) -> Path:
    return Path(settings.daemon.data_dir) / TOKENS_FILE


def read_generated_tokens(settings: Settings) -> dict[str, str]:
    """The generated tokens kept under ``data_dir`` ({} when there are none yet)."""
    try:
        data = json.loads(tokens_path(settings).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in data.items() if isinstance(v, str) and v} if isinstance(data, dict) else {}


def _write_tokens(path: Path, tokens: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(tokens, f, indent=2, sort_keys=True)
    os.replace(tmp, path)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock beside ``path`` (``.NAME.lock``, ``flock``), held by one process at a time."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.with_name(f".{path.name}.lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def webhook_auth_missing(cls: type[Driver[Any]], values: ConfigTable) -> str | None:
    """What an instance lacks to authenticate its webhooks (None when it has a credential or allows none)."""
    if cls.signed_webhooks:
        secret_keys = [
            k
            for k, f in cls.settings_model.model_fields.items()
            if "SecretStr" in repr(f.annotation) and k not in ("webhook_token", "webhook_password")
        ]
        missing = [k for k in secret_keys if not values.get(k)]
        return f"{missing[0]} (signs its webhooks)" if missing else None
    if values.get("webhook_token") or values.get("webhook_username") or values.get("allow_unauthenticated_webhooks"):
        return None
    return "webhook_token"


class ListOverrideError(ConfigError):
    """A sending list's ``driver_settings`` holds a key it may not set, or a bad value (``key`` names it)."""


def check_overrides(cls: type[Driver[Any]], overrides: ConfigTable | None) -> None:
    """Raise :class:`ListOverrideError` for the first key a sending list may not override."""
    allowed = cls.settings_model.list_overridable
    for key in overrides or {}:
        if key not in allowed:
            names = ", ".join(sorted(allowed)) or "none"
            raise ListOverrideError(
                f"{key!r} may not be set by a sending list (allowed: {names}); endpoints and "
                f"credentials come from the config file",
                key=str(key),
            )


def strict_overrides(cls: type[Driver[Any]], overrides: ConfigTable | None) -> None:
    """Raise :class:`ListOverrideError` for the first override whose value is not already of its setting's type
    (``"yes"``, ``1`` or ``"false"`` for a boolean, ``"5"`` or ``true`` for a number): what an admin API body sets is
    checked strictly, never guessed (lists stored before keep building as they did)."""
    fields = cls.settings_model.model_fields
    for key, value in (overrides or {}).items():
        field = fields.get(str(key))
        if field is None or field.annotation is None:
            continue
        shape: Any = Annotated[field.annotation, *field.metadata] if field.metadata else field.annotation
        try:
            TypeAdapter(shape).validate_python(value, strict=True)
        except ValidationError as exc:
            msg = exc.errors()[0]["msg"]
            raise ListOverrideError(f"{key}: {msg} (got {value!r})", key=str(key)) from exc


class DriverPool:
    def __init__(self, settings: Settings, *, generate_tokens: bool = False) -> None:
        """``generate_tokens``: give every instance that has no webhook credential a random path token, kept in
        ``data_dir/webhook_tokens.json`` (created on the daemon's first run; ``trackly webhook-urls`` shows the
        URLs to give the provider). Without it such instances use a token already generated, or refuse every
        webhook."""
        self.settings = settings
        self._instances = settings.driver_instances()
        self._drivers: dict[tuple[str, str], Driver[Any]] = {}
        self._lock = asyncio.Lock()
        self.generated: set[str] = set()
        # never for a config that is refused anyway (validate(): the daemon would not start with it)
        self._apply_generated_tokens(generate_tokens and not self.problems())

    def _apply_generated_tokens(self, create: bool) -> None:
        wanting: list[tuple[str, ConfigTable]] = []  # instances whose webhooks need a generated path token
        for name, (entry, values) in self._instances.items():
            try:
                cls = get_driver_class(entry)
            except DriverNotFound:
                continue  # reported by validate()
            if not cls.signed_webhooks and webhook_auth_missing(cls, values) == "webhook_token":
                wanting.append((name, values))
        if not wanting:
            return
        tokens = read_generated_tokens(self.settings)
        if create and any(name not in tokens for name, _ in wanting):
            # Read again and generate under a lock: a daemon, `trackly fake-provider` and `trackly webhook-urls`
            # starting together must all take the one token the file keeps (each kept its own before: the daemon
            # then refused the fake's STOPs with 403 until it was restarted).
            path = tokens_path(self.settings)
            with _locked(path):
                tokens = read_generated_tokens(self.settings)
                missing = [name for name, _ in wanting if name not in tokens]
                for name in missing:
                    tokens[name] = secrets.token_urlsafe(24)
                if missing:
                    _write_tokens(path, tokens)
                    log.info(
                        "webhook_tokens_generated",
                        file=str(path),
                        hint="`trackly webhook-urls` prints the URLs to configure at the provider",
                    )
        for name, values in wanting:
            if name in tokens:
                values["webhook_token"] = tokens[name]
                self.generated.add(name)

    def webhook_urls(self) -> dict[str, DriverContext]:
        """Each instance's status and inbound URLs (path token included) for the provider's settings."""
        out: dict[str, DriverContext] = {}
        for name in self.names():
            try:
                out[name] = self.build(name).context
            except Exception:  # reported by validate()
                continue
        return out

    def auth_problems(self) -> list[str]:
        """``drivers.NAME.KEY: ...`` for each instance whose webhooks are refused for want of a credential."""
        problems = []
        for name, (entry, values) in self._instances.items():
            try:
                cls = get_driver_class(entry)
            except DriverNotFound:
                continue
            missing = webhook_auth_missing(cls, values)
            if missing == "webhook_token":
                problems.append(
                    f"drivers.{name}.webhook_token: not set, webhooks are refused; `trackly run` "
                    f"generates one into {tokens_path(self.settings)} (or set it, Basic auth, or "
                    f"allow_unauthenticated_webhooks = true)"
                )
            elif missing:
                problems.append(
                    f"drivers.{name}.{missing.split()[0]}: not set, webhooks cannot be verified and are refused"
                )
        return problems

    def names(self) -> list[str]:
        return sorted(self._instances)

    def entry_point(self, name: str) -> str:
        return self._instances.get(name, (name, {}))[0]

    def context(self, name: str, settings: Any) -> DriverContext:
        base = f"{self.settings.http.public_url}/webhooks/{name}"
        token = getattr(settings, "webhook_token", None)
        suffix = f"/{token.get_secret_value()}" if token is not None else ""
        return DriverContext(status_url=f"{base}/status{suffix}", inbound_url=f"{base}/inbound{suffix}")

    def problems(self) -> list[tuple[str, str]]:
        """``(key, message)`` of every problem of the configured instances: a driver that does not exist, each bad
        or unknown key of an instance's settings."""
        out: list[tuple[str, str]] = []
        for name, (entry, values) in self._instances.items():
            try:
                cls = get_driver_class(entry)
            except DriverNotFound as exc:
                out.append((f"drivers.{name}.driver", str(exc)))
                continue
            try:
                cls.settings_model.model_validate(values)
            except ValidationError as exc:
                for err in exc.errors():
                    key = ".".join(str(p) for p in err["loc"])
                    msg = "unknown key" if err["type"] == "extra_forbidden" else str(err["msg"])
                    out.append((f"drivers.{name}.{key}", msg.removeprefix("Value error, ")))
        return out

    def validate(self) -> None:
        """Check every configured instance (the driver exists, its settings are valid); raise one
        :class:`ConfigError` listing every problem."""
        if problems := self.problems():
            key, message = problems[0]
            raise ConfigError(message, key=key, problems=problems)

    def build(self, name: str, overrides: ConfigTable | None = None) -> Driver[Any]:
        """A new (not started) driver for instance ``name`` with ``overrides`` applied."""
        entry, values = self._instances.get(name, (name, {}))
        cls = get_driver_class(entry)
        check_overrides(cls, overrides)
        merged = {**values, **(overrides or {})}
        try:
            settings = cls.settings_model.model_validate(merged)
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(map(str, err["loc"]))
            if overrides and err["loc"] and err["loc"][0] in overrides:
                raise ListOverrideError(f"{where}: {err['msg']}", key=where) from exc
            raise ConfigError(f"{where}: {err['msg']}", key=f"drivers.{name}") from exc
        return cls(settings, self.context(name, settings), name=name)

    async def get(self, name: str, overrides: ConfigTable | None = None) -> Driver[Any]:
        """The started driver for instance ``name`` with a list's ``overrides``."""
        key = (name, json.dumps(overrides or {}, sort_keys=True, default=str))
        driver = self._drivers.get(key)
        if driver is not None:
            return driver
        async with self._lock:
            driver = self._drivers.get(key)
            if driver is None:
                driver = self.build(name, overrides)
                await driver.startup()
                self._drivers[key] = driver
                log.info("driver_started", driver=name, entry_point=self.entry_point(name))
        return driver

    def started(self) -> list[Driver[Any]]:
        return list(self._drivers.values())

    async def close(self) -> None:
        drivers, self._drivers = list(self._drivers.values()), {}
        for driver in drivers:
            try:
                await driver.shutdown()
            except Exception as exc:
                log.warning("driver_shutdown_failed", driver=driver.name, error=str(exc))
