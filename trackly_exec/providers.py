"""Driver instances: built from ``[drivers.NAME]`` in the config, plus a sending list's own overrides.

A sending list names a driver instance (``driver = "infobip"``). Its ``driver_settings`` (credentials of
that customer's provider account, for example) are laid over the instance's settings; each distinct
combination gets its own driver object, HTTP session included, created on first use.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from pydantic import ValidationError

from .config import Settings
from .driver import Driver, DriverContext
from .errors import ConfigError, DriverNotFound
from .logs import get_logger
from .registry import get_driver_class

log = get_logger(__name__)


class DriverPool:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._instances = settings.driver_instances()
        self._drivers: dict[tuple[str, str], Driver[Any]] = {}
        self._lock = asyncio.Lock()

    def names(self) -> list[str]:
        return sorted(self._instances)

    def entry_point(self, name: str) -> str:
        return self._instances.get(name, (name, {}))[0]

    def context(self, name: str, settings: Any) -> DriverContext:
        base = f"{self.settings.http.public_url}/webhooks/{name}"
        token = getattr(settings, "webhook_token", None)
        suffix = f"/{token.get_secret_value()}" if token is not None else ""
        return DriverContext(status_url=f"{base}/status{suffix}", inbound_url=f"{base}/inbound{suffix}")

    def validate(self) -> None:
        """Check every configured instance: the driver exists and its settings are valid."""
        for name, (entry, values) in self._instances.items():
            try:
                cls = get_driver_class(entry)
            except DriverNotFound as exc:
                raise ConfigError(str(exc), key=f"drivers.{name}.driver") from exc
            try:
                cls.settings_model.model_validate(values)
            except ValidationError as exc:
                err = exc.errors()[0]
                key = ".".join(str(p) for p in err["loc"])
                msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
                raise ConfigError(msg, key=f"drivers.{name}.{key}") from exc

    def build(self, name: str, overrides: dict[str, Any] | None = None) -> Driver[Any]:
        """A new (not started) driver for instance ``name`` with ``overrides`` applied."""
        entry, values = self._instances.get(name, (name, {}))
        cls = get_driver_class(entry)
        merged = {**values, **(overrides or {})}
        try:
            settings = cls.settings_model.model_validate(merged)
        except ValidationError as exc:
            err = exc.errors()[0]
            raise ConfigError(f"{'.'.join(map(str, err['loc']))}: {err['msg']}", key=f"drivers.{name}") from exc
        return cls(settings, self.context(name, settings), name=name)

    async def get(self, name: str, overrides: dict[str, Any] | None = None) -> Driver[Any]:
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
