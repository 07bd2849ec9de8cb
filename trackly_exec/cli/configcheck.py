"""``trackly check-config``: every problem of a configuration at once, and ``--describe`` (every key, its default
and its description).

Beyond what loading already refuses (types, ranges, unknown keys, URLs without a scheme — all of them reported
together), the check reports:

- **placeholders** left from the examples (``CHANGE-ME``, ``changeme``, ``YOUR_API_KEY``, ``xxxxx``, an all-zero
  GUID, ``example.com`` hosts) in any setting, driver settings included;
- **driver instances** that do not build (unknown driver, invalid settings), each of them;
- **credentials**: a driver instance whose credential settings (``api_key``, ``auth_token``, ``account_sid``,
  ``product_token`` ...) are empty. When the store is read (``--store``, or by default for a ``mongodb://`` URI),
  an active sending list naming such an instance — or an instance that is not configured at all — is an error;
  otherwise an instance without credentials is a warning.

No message ever contains a secret's value: problems name the key (and the environment variable that set it).
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from typing import Any, Literal, TextIO, get_args, get_origin
from urllib.parse import urlsplit

from pydantic import BaseModel, SecretStr

from trackly_exec.config import Settings, env_var
from trackly_exec.errors import ConfigError, DriverNotFound
from trackly_exec.store.documents import ConfigTable, SendingListDoc

PLACEHOLDER = re.compile(
    r"change[-_/ ]?me|your[-_ ]?(api[-_ ]?)?(key|token|secret|password|sid)|xxxxx|replace[-_ ]?me|"
    r"^0{8}-0{4}-0{4}-0{4}-0{12}$|(^|[/.@])example\.(com|org|net)(?=$|[/:])|^(\.{3,}|…)$",
    re.IGNORECASE,
)
CREDENTIAL_WORDS = ("key", "token", "secret", "password", "sid")


def _reveal(value: Any) -> Any:
    return value.get_secret_value() if isinstance(value, SecretStr) else value


def _strings(value: Any, path: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], str]]:
    value = _reveal(value)
    if isinstance(value, BaseModel):
        for name in type(value).model_fields:
            yield from _strings(getattr(value, name), (*path, name))
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _strings(v, (*path, str(k)))
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            yield from _strings(v, (*path, str(i)))
    elif isinstance(value, str):
        yield path, value


def local_url(url: object) -> bool:
    """Whether a driver's ``base_url`` points at this machine (``trackly fake-provider``)."""
    try:
        host = (urlsplit(str(url or "")).hostname or "").lower()
    except ValueError:
        return False
    return host in ("127.0.0.1", "localhost", "::1")


def _local_driver(drivers: ConfigTable, path: tuple[str, ...]) -> bool:
    """A driver instance's setting whose instance talks to this machine (``trackly fake-provider``): its credentials
    are the fake's, the all-zero CM token included, not placeholders to replace. ``drivers``: the ``[drivers]``
    tables, validated or raw."""
    if len(path) < 3 or path[0] != "drivers":
        return False
    entry = drivers.get(path[1])
    return isinstance(entry, dict) and local_url(entry.get("base_url"))


def placeholders(settings: Settings) -> list[tuple[str, str]]:
    """Settings still holding an example placeholder (the value is never repeated)."""
    out = []
    for path, text in _strings(settings, ()):
        if text and PLACEHOLDER.search(text.strip()) and not _local_driver(settings.drivers, path):
            var = env_var(path)
            out.append(
                (
                    ".".join(path),
                    "still the example's placeholder: set the real value"
                    + (f" (from environment variable {var})" if var else ""),
                )
            )
    return out


#: Settings whose placeholder would open a door: the admin API's and the dashboard's bearer tokens (an example's token
#: is public). ``trackly run`` refuses to start with one; the other placeholders only fail ``check-config``.
DOOR_TOKENS = (("http", "api_tokens"), ("http", "dashboard_tokens"))


def placeholder_tokens(settings: Settings) -> list[tuple[str, str]]:
    """The admin and dashboard tokens still holding an example placeholder (the value is never repeated)."""
    doors = {".".join(p) for p in DOOR_TOKENS}
    return [
        (key, f"{why}: an example's token is public, so the daemon will not open its API with it")
        for key, why in placeholders(settings)
        if key.rpartition(".")[0] in doors
    ]


def raw_driver_problems(file: str | None) -> list[tuple[str, str]]:
    """The problems of the ``[drivers]`` tables of the TOML file, read on their own (for a config whose other
    sections do not load, so one run still reports every problem)."""
    import tomllib
    from pathlib import Path

    from pydantic import ValidationError

    try:
        data = tomllib.loads(Path(file).read_text(encoding="utf-8")) if file else {}
        drivers = data.get("drivers")
        if not isinstance(drivers, dict) or not drivers:
            return []
        return driver_problems(Settings.model_validate({"drivers": drivers}))[0]
    except (OSError, ValueError, RecursionError, ValidationError, ConfigError):
        return []  # the tables themselves do not load: the config's own problems say so


def raw_placeholders(file: str | None) -> list[tuple[str, str]]:
    """Placeholders in the TOML file and the ``TRACKLY_*`` environment, read without validating (for a config that
    does not load, so one run still reports every problem)."""
    import os
    import tomllib
    from pathlib import Path

    out: list[tuple[str, str]] = []
    data: ConfigTable = {}
    if file:
        try:
            data = tomllib.loads(Path(file).read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError):
            data = {}
    found = data.get("drivers")
    drivers: ConfigTable = found if isinstance(found, dict) else {}
    for path, text in _strings(data, ()):
        if text and PLACEHOLDER.search(text.strip()) and not _local_driver(drivers, path):
            out.append((".".join(path), "still the example's placeholder: set the real value"))
    for name, value in os.environ.items():
        if name.upper().startswith("TRACKLY_") and "__" in name and PLACEHOLDER.search(value.strip()):
            key = ".".join(part.lower() for part in name[len("TRACKLY_") :].split("__"))
            out.append((key, f"still the example's placeholder: set the real value (from environment variable {name})"))
    return out


def credential_fields(cls: Any) -> list[str]:
    """Names of a driver's credential settings: secret or id-like fields, webhook authentication aside."""
    out = []
    for name, field in cls.settings_model.model_fields.items():
        if name.startswith("webhook_"):
            continue
        if "SecretStr" in repr(field.annotation) or any(w in name.lower() for w in CREDENTIAL_WORDS):
            out.append(name)
    return out


def missing_credentials(cls: Any, values: ConfigTable) -> list[str]:
    return [name for name in credential_fields(cls) if not str(_reveal(values.get(name)) or "").strip()]


def driver_problems(settings: Settings) -> tuple[list[tuple[str, str]], dict[str, list[str]]]:
    """``(problems, {instance: missing credential keys})`` over every configured driver instance."""
    from trackly_exec.drivers.pool import DriverPool
    from trackly_exec.drivers.registry import get_driver_class

    problems = DriverPool(settings).problems()
    bad = {key.split(".")[1] for key, _ in problems}
    missing: dict[str, list[str]] = {}
    for name, (entry, values) in settings.driver_instances().items():
        if name not in bad and (lacking := missing_credentials(get_driver_class(entry), values)):
            missing[name] = lacking
    return problems, missing


async def _active_lists(settings: Settings) -> list[SendingListDoc]:
    from trackly_exec.store import constants as c
    from trackly_exec.store.client import Store

    store = await Store.open(settings, create_indexes=False)
    try:
        docs = await store.db[c.SENDING_LISTS].find({}, {"driver": 1, "name": 1, "active": 1}).to_list(None)
        return [d for d in docs if d.get("active") is not False]
    finally:
        await store.close()


def list_problems(
    settings: Settings, lists: list[SendingListDoc], missing: dict[str, list[str]]
) -> list[tuple[str, str]]:
    """Active sending lists naming a driver instance that is not configured or has no credentials."""
    from trackly_exec.drivers.registry import get_driver_class

    configured = settings.driver_instances()
    out: list[tuple[str, str]] = []
    for lst in lists:
        name = str(lst.get("driver") or "")
        label = f"sending list {lst['_id']}" + (f" ({lst['name']})" if lst.get("name") else "")
        if name not in configured:
            try:
                cls = get_driver_class(name)
            except DriverNotFound:
                out.append((f"drivers.{name}", f"{label} uses driver {name!r}, which does not exist"))
                continue
            lacking = missing_credentials(cls, {})
            if lacking:
                msg = (
                    f"{label} uses driver {name!r}, which is not configured: "
                    f"add [drivers.{name}] with {', '.join(lacking)}"
                )
                out.append((f"drivers.{name}", msg))
        elif name in missing:
            out.append(
                (
                    f"drivers.{name}.{missing[name][0]}",
                    f"{label} sends through {name!r}, which has no credentials ({', '.join(missing[name])} empty)",
                )
            )
    return out


def check(settings: Settings, *, store: bool | None = None) -> tuple[list[tuple[str, str]], list[str]]:
    """``(errors, warnings)`` of ``settings``. ``store``: read the sending lists (None: only for a real MongoDB)."""
    errors, missing = driver_problems(settings)
    errors += placeholders(settings)
    warnings: list[str] = []
    read_store = (not settings.mongo.embedded) if store is None else store
    if read_store:
        try:
            quick = settings.model_copy(
                update={
                    "mongo": settings.mongo.model_copy(
                        update={"connect_timeout_seconds": min(settings.mongo.connect_timeout_seconds, 5.0)}
                    )
                }
            )
            lists = asyncio.run(asyncio.wait_for(_active_lists(quick), 15))
        except Exception as exc:  # the store is optional for this check: say so and go on
            if settings.mongo.embedded and "in use by process" in str(exc):
                warnings.append(
                    "sending lists not checked: the embedded store is in use by the running daemon (only one process "
                    "opens it; stop the daemon to check them, or use a real MongoDB)"
                )
            else:
                warnings.append(f"sending lists not checked: the store is not reachable ({type(exc).__name__})")
        else:
            errors += list_problems(settings, lists, missing)
            used = {str(lst.get("driver")) for lst in lists}
            missing = {n: lacking for n, lacking in missing.items() if n not in used}
    elif store is False:
        warnings.append("sending lists not checked against the drivers (--no-store)")
    else:
        warnings.append(
            "sending lists not checked against the drivers (embedded store; add --store to read it while the daemon "
            "is stopped)"
        )
    for name, lacking in missing.items():
        warnings.append(f"drivers.{name}: no credentials ({', '.join(lacking)} empty); lists using it cannot send")
    return errors, warnings


# --------------------------------------------------------------------------------------------- --describe


def _default(field: Any) -> Any:
    value = field.get_default(call_default_factory=True)
    if isinstance(value, BaseModel):
        return None
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    return value


def _type_name(ann: Any) -> str:
    text = str(ann) if get_origin(ann) is not None or not hasattr(ann, "__name__") else ann.__name__
    if get_origin(ann) is Literal:
        return "|".join(str(a) for a in get_args(ann))
    return re.sub(r"\b(typing|pydantic\.types|pathlib)\.", "", text).replace("NoneType", "None")


def describe_rows(model: type[BaseModel] = Settings, prefix: str = "") -> Iterator[tuple[str, str, str, str]]:
    """``(key, type, default, description)`` for every key of ``model``, sections first-level by first-level."""
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            yield f"[{prefix}{name}]", "section", "", field.description or ""
            yield from describe_rows(ann, f"{prefix}{name}.")
            continue
        type_name = _type_name(ann)
        default = _default(field)
        shown = json.dumps(default, default=str) if default is not None else "(unset)"
        yield f"{prefix}{name}", type_name, shown, field.description or ""


def describe(out: TextIO, *, drivers: bool = True) -> None:
    """Every key with its type, default and description (the config sections, then each driver's settings)."""
    width = 44
    for key, type_name, default, text in describe_rows():
        if type_name == "section":
            print(f"\n{key}  {text}", file=out)
            continue
        print(f"  {key:<{width}} = {default:<24}  {text}  [{type_name}]", file=out)
    if not drivers:
        return
    from trackly_exec.drivers.registry import discover

    for name, info in discover().items():
        if info.cls is None:
            continue
        print(
            f"\n[drivers.{name}]  settings of the {name} driver ({info.value}); TRACKLY_DRIVERS__NAME__KEY overrides",
            file=out,
        )
        for key, type_name, default, text in describe_rows(info.cls.settings_model, f"drivers.{name}."):
            print(f"  {key:<{width}} = {default:<24}  {text}  [{type_name}]", file=out)
