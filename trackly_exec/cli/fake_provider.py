"""``trackly fake-provider NAME``: run a driver's local API fake as a standalone process.

The fake is the driver's own ``Driver.fake`` class (``"module:Class"``), so a third-party plugin that ships a
fake gets this command for free. Its default credentials match the default ``trackly.toml``; delivery
reports are posted in the background ``dlr_delay`` seconds after acceptance; remote control:
``GET /_fake/ledger``, ``POST /_fake/script``, ``POST /_fake/reset``, ``POST /_fake/flush``,
``POST /_fake/inbound``.
"""

from __future__ import annotations

import asyncio
import importlib
import signal
from typing import Any

from trackly_exec.drivers.registry import get_driver_class
from trackly_exec.errors import ConfigError
from trackly_exec.logs import get_logger
from trackly_exec.store.documents import ConfigTable
from trackly_exec.testing.fakes.control import MODES

log = get_logger(__name__)


def load_fake_class(name: str) -> type[Any]:
    """The fake class of driver ``name`` (raises ConfigError when the driver has none)."""
    cls = get_driver_class(name)
    target = getattr(cls, "fake", None)
    if not target:
        raise ConfigError(f"driver {name!r} ships no fake provider")
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)  # type: ignore[no-any-return]


def _credentials(fake: Any) -> ConfigTable:
    settings = fake.driver_settings()
    return {k: v for k, v in settings.items() if k != "base_url"}


def configured_webhook_urls(name: str, config: str | None) -> tuple[str, str]:
    """The daemon's webhook URLs (secret path token included) for the first instance of driver ``name`` in
    ``config`` (default ./trackly.toml), or the defaults without a token when there is none."""
    return _configured(name, config)[:2]


def _configured(name: str, config: str | None) -> tuple[str, str, ConfigTable]:
    """:func:`configured_webhook_urls`, and the credentials of that instance when it points at this machine (a
    fake's: the fake then takes them, so the config works as written; a real provider's key is never taken).
    Without such an instance, the webhooks under the config's ``http.public_url`` (no token: the daemon then
    refuses them until the driver is configured)."""
    from trackly_exec.cli.configcheck import local_url
    from trackly_exec.config import load_config
    from trackly_exec.drivers.pool import DriverPool

    fallback = "http://127.0.0.1:8080"
    try:
        settings = load_config(config)
        fallback = settings.http.public_url.rstrip("/") or fallback
        pool = DriverPool(settings, generate_tokens=True)
        for instance, ctx in pool.webhook_urls().items():
            if pool.entry_point(instance) == name:
                table = dict(settings.drivers.get(instance) or {})
                local = local_url(table.get("base_url"))
                creds = {k: v for k, v in table.items() if k not in ("base_url", "driver")} if local else {}
                return ctx.status_url, ctx.inbound_url, creds
    except (ConfigError, ValueError) as exc:
        log.warning("fake_provider_no_config", error=str(exc))
    return f"{fallback}/webhooks/{name}/status", f"{fallback}/webhooks/{name}/inbound", {}


async def serve_fake(
    name: str,
    *,
    host: str,
    port: int,
    dlr_delay: float,
    report_url: str | None = None,
    inbound_url: str | None = None,
    config: str | None = None,
) -> int:
    """Run the fake of driver ``name`` on ``host:port`` until SIGINT/SIGTERM; returns the exit status."""
    import inspect

    fake_cls = load_fake_class(name)
    default_report, default_inbound, configured = _configured(name, config)
    report_url, inbound_url = report_url or default_report, inbound_url or default_inbound
    accepted = inspect.signature(fake_cls.__init__).parameters
    taken = {k: v for k, v in configured.items() if k in accepted and isinstance(v, str) and v}
    fake = fake_cls(
        host=host,
        auto_reports=True,
        report_delay=dlr_delay,
        report_url=report_url,
        inbound_url=inbound_url,
        **taken,
    )
    await fake.start(port=port)
    creds = ", ".join(f'{k} = "{v}"' for k, v in _credentials(fake).items())
    print(f"fake {name} provider listening on {fake.url}", flush=True)
    print(f'  driver settings: base_url = "{fake.url}", {creds}', flush=True)
    print(
        f"  delivery reports after {dlr_delay:g}s; default report URL "
        f"{fake.report_url.rsplit('/', 1)[0] + '/<token>' if '/status/' in fake.report_url else fake.report_url}",
        flush=True,
    )
    print(f"  remote control: GET {fake.url}/_fake/ledger, POST /_fake/script, POST /_fake/reset", flush=True)
    print(
        f"  a contact texting you (a STOP): curl -X POST {fake.url}/_fake/inbound -H 'Content-Type: application/json'"
        """ -d '{"from": "+12025550101", "to": "<your list's number>", "text": "STOP"}'""",
        flush=True,
    )
    print(
        f"  provider trouble: curl -X POST {fake.url}/_fake/script -H 'Content-Type: application/json'"
        """ -d '{"default": {"mode": "reject"}}'   (modes: """
        + ", ".join(sorted(MODES))
        + """; {"default": {"mode": "ok"}} or /_fake/reset ends it)""",
        flush=True,
    )
    log.info("fake_provider_started", driver=name, url=fake.url)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await fake.stop()
        log.info("fake_provider_stopped", driver=name, **fake.summary())
    return 0
