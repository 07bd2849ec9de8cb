"""The ``trackly`` command line."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import logging
import os
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from trackly_exec import __version__
from trackly_exec.config import Settings, config_file, load_config
from trackly_exec.errors import ConfigError, StoreError, TracklyError
from trackly_exec.logs import configure_logging

#: Modules that add sub-commands with ``register(subparsers, common)``.
EXTRA_COMMANDS: tuple[str, ...] = ("trackly_exec.cli.admin", "trackly_exec.cli.ops", "trackly_exec.cli.demo")


def _runner() -> asyncio.Runner:
    """An event-loop runner on uvloop (asyncio's own loop where uvloop is missing)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return asyncio.Runner()
    return asyncio.Runner(loop_factory=uvloop.new_event_loop)


def _run(coro: Coroutine[Any, Any, int]) -> int:
    with _runner() as runner:  # (an ImportError raised by the coroutine itself must not re-run it)
        return runner.run(coro)


def _settings(args: argparse.Namespace) -> Settings:
    return load_config(args.config)


def cmd_run(args: argparse.Namespace) -> int:
    from trackly_exec.cli import configcheck
    from trackly_exec.drivers.pool import DriverPool

    file = config_file(args.config)
    if not file.exists():  # a daemon on every default (no driver, no token) is never what was meant: a wrong directory
        raise ConfigError(
            "no config file to run with: pass -c /etc/trackly/trackly.toml or set TRACKLY_CONFIG (the repository's "
            "trackly.toml runs as is)",
            file=str(file),
        )
    settings = _settings(args)
    # refused before anything starts, naming the file: an example's admin token, and every driver table's problem
    if problems := configcheck.placeholder_tokens(settings) or DriverPool(settings).problems():
        raise ConfigError(problems[0][1], file=str(config_file(args.config)), key=problems[0][0], problems=problems)
    configure_logging(settings.daemon.log_level, settings.daemon.log_format)
    from trackly_exec.app import tune_gc
    from trackly_exec.daemon import serve

    tune_gc()
    code = _runner().run(serve(settings))
    # serve has stopped every component within its grace: exit now. Closing the runner would wait, without a bound,
    # for any thread of the loop's default executor still blocked on a store that hangs (the process lived on for
    # up to 11 s after its "stopped" line, past the grace the unit's TimeoutStopSec allows for)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def cmd_check_config(args: argparse.Namespace) -> int:
    from trackly_exec.cli import configcheck

    if args.describe:
        configcheck.describe(sys.stdout)
        return 0
    try:
        settings = _settings(args)  # every load problem at once (ConfigError: exit 2)
    except ConfigError as exc:  # add the drivers' problems and the placeholders of the raw file and environment
        known = {k for k, _ in exc.problems}
        raw = [*configcheck.raw_driver_problems(exc.file), *configcheck.raw_placeholders(exc.file)]
        extra = [p for p in raw if p[0] not in known]
        if not extra:
            raise
        problems = [*exc.problems, *extra]
        raise ConfigError(problems[0][1], file=exc.file, key=problems[0][0], problems=problems) from exc
    errors, warnings = configcheck.check(settings, store=args.store)
    from trackly_exec.drivers.pool import DriverPool

    warnings = [*warnings, *DriverPool(settings).auth_problems()]  # webhooks refused for want of a credential
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    name = config_file(args.config)
    if errors:
        raise ConfigError(errors[0][1], file=str(name), key=errors[0][0], problems=errors)
    print(json.dumps(settings.redacted(), indent=2, default=str))
    if not name.exists():  # only the default file may be missing (load_config refuses a named one)
        print(
            f"config OK: no {name} here, so the built-in defaults (and TRACKLY_* variables) were checked",
            file=sys.stderr,
        )
    else:
        print(f"config OK: {name}", file=sys.stderr)
    return 0


def cmd_webhook_urls(args: argparse.Namespace) -> int:
    """Print each driver instance's webhook URLs (secret path token included) to configure at the provider."""
    settings = _settings(args)
    from trackly_exec.drivers.pool import DriverPool

    pool = DriverPool(settings, generate_tokens=True)
    pool.validate()
    urls = pool.webhook_urls()
    if not urls:
        file = config_file(args.config)
        where = f"{file} configures" if file.exists() else f"no config file was read ({file} does not exist), so"
        print(
            f"trackly: {where} no driver instance ([drivers.NAME]): no webhook URL to give a provider", file=sys.stderr
        )
    for name, ctx in urls.items():
        print(f"{name}  status   {ctx.status_url}")
        print(f"{name}  inbound  {ctx.inbound_url}")
    for problem in pool.auth_problems():
        print(f"warning: {problem}", file=sys.stderr)
    return 0


def cmd_init_db(args: argparse.Namespace) -> int:
    settings = _settings(args)
    configure_logging(settings.daemon.log_level, settings.daemon.log_format)
    from trackly_exec.store.client import INDEXES, Store

    async def go() -> int:
        store = await Store.open(settings)
        await store.close()
        print(f"indexes ready on {len(INDEXES)} collections in database {settings.mongo.database!r}")
        return 0

    return _run(go())


def cmd_drivers(args: argparse.Namespace) -> int:
    from trackly_exec.drivers.registry import discover

    infos = discover()
    if not infos:
        print("no drivers found")
        return 1
    width = max(len(n) for n in infos)
    for name, info in infos.items():
        origin = f"{info.distribution} {info.version}" if info.distribution else "registered in-process"
        status = "ok" if info.cls else f"ERROR {info.error}"
        print(f"{name:<{width}}  {info.value:<36}  {origin:<28}  {status}")
    return 0


def cmd_fake_provider(args: argparse.Namespace) -> int:
    configure_logging("info", "auto")
    from trackly_exec.cli.fake_provider import serve_fake

    return _run(
        serve_fake(
            args.name,
            host=args.host,
            port=args.port,
            dlr_delay=args.dlr_delay,
            report_url=args.report_url,
            inbound_url=args.inbound_url,
            config=getattr(args, "config", None),
        )
    )


def build_parser() -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    common = argparse.ArgumentParser(add_help=False)
    # SUPPRESS: a sub-command's own (absent) -c must not overwrite `trackly -c FILE COMMAND`.
    common.add_argument(
        "-c", "--config", default=argparse.SUPPRESS, help="config file (default: $TRACKLY_CONFIG or ./trackly.toml)"
    )
    parser = argparse.ArgumentParser(
        prog="trackly", description="trackly-exec: self-hosted SMS campaign execution engine."
    )
    parser.add_argument("-c", "--config", help="config file (default: $TRACKLY_CONFIG or ./trackly.toml)")
    parser.add_argument("--version", action="version", version=f"trackly-exec {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    def add(name: str, fn: Callable[[argparse.Namespace], int], help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help, parents=[common])
        p.set_defaults(func=fn)
        return p

    add("run", cmd_run, "run the daemon (scheduler, executor, HTTP server) until SIGTERM")
    cc = add(
        "check-config",
        cmd_check_config,
        "validate the config (every problem at once: types, URLs, example "
        "placeholders, drivers and their credentials) and print it with secrets redacted",
    )
    cc.add_argument("--describe", action="store_true", help="print every key with its default and description")
    cc.add_argument(
        "--store",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="read the sending lists from the store to check the drivers they use "
        "(default: yes for a mongodb:// URI, no for the embedded store)",
    )
    add(
        "webhook-urls",
        cmd_webhook_urls,
        "print the provider webhook URLs (with their secret token; generated "
        "into data_dir on first use when the config sets none)",
    )
    add("init-db", cmd_init_db, "create every collection index (idempotent)")
    add("drivers", cmd_drivers, "list every discovered provider driver")
    fp = add("fake-provider", cmd_fake_provider, "run a local fake of a provider's API (no account needed)")
    fp.add_argument("name", help="driver name, e.g. infobip, twilio, cm")
    fp.add_argument("--host", default="127.0.0.1")
    fp.add_argument("--port", type=int, default=9000)
    fp.add_argument("--dlr-delay", type=float, default=1.0, help="seconds before posting a delivery report")
    fp.add_argument(
        "--report-url",
        default=None,
        help="where to post delivery reports when a request names none (CM: its portal setting); "
        "default: the config's webhook URL of the first instance of that driver (with its token)",
    )
    fp.add_argument("--inbound-url", default=None, help="where POST /_fake/inbound delivers; default as --report-url")
    for module in EXTRA_COMMANDS:
        importlib.import_module(module).register(sub, common)
    return parser, common


def main(argv: list[str] | None = None) -> int:
    parser, _ = build_parser()
    args = parser.parse_args(argv)
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # inside the try: a closed pipe surfaces here, not in the interpreter's exit flush
        return code
    except BrokenPipeError:
        return _reader_left()
    except ConfigError as exc:
        print(f"trackly: config error: {exc}", file=sys.stderr)
        return 2
    except (StoreError, TracklyError) as exc:
        print(f"trackly: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # a file the command reads or writes: its name and why, not a traceback
        where = f": {exc.filename}" if exc.filename else ""
        print(f"trackly: {exc.strerror or exc}{where}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _reader_left() -> int:
    """``trackly stats 1 | head``: the reader closed the pipe. Exit quietly with the shell's SIGPIPE status;
    stdout now points at /dev/null so the interpreter's final flush cannot raise a second time."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass
    return 141


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
