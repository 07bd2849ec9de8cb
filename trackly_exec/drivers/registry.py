"""Driver discovery through the ``trackly.drivers`` entry-point group (built-ins use it too)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from trackly_exec.drivers.contract import Driver
from trackly_exec.errors import DriverNotFound
from trackly_exec.store.constants import DRIVER_GROUP

#: Test hook: drivers registered in-process, without an installed distribution.
_registered: dict[str, type[Driver[Any]]] = {}
#: Classes found by :func:`get_driver_class`, by name and ``TRACKLY_LOAD_DRIVERS``: a discovery reads every installed
#: distribution's metadata (about 12 ms), and a driver's class does not change while the process runs.
_found: dict[tuple[str, str | None], type[Driver[Any]]] = {}


@dataclass
class DriverInfo:
    """One discovered driver: its class, or why it could not be loaded."""

    name: str
    value: str
    distribution: str | None
    version: str | None
    cls: type[Driver[Any]] | None = None
    error: str | None = None


def register(name: str, cls: type[Driver[Any]]) -> None:
    """Register a driver class by name in this process (for tests and embedding)."""
    if not (isinstance(cls, type) and issubclass(cls, Driver)):
        raise TypeError(f"{cls!r} is not a trackly_exec.Driver subclass")
    _registered[name] = cls


def unregister(name: str) -> None:
    _registered.pop(name, None)


def _allowed() -> set[str] | None:
    """``TRACKLY_LOAD_DRIVERS=a,b`` restricts discovery to those names."""
    raw = os.environ.get("TRACKLY_LOAD_DRIVERS")
    return {n.strip() for n in raw.split(",") if n.strip()} if raw else None


def _load(ep: EntryPoint) -> DriverInfo:
    dist = ep.dist
    info = DriverInfo(ep.name, ep.value, dist.name if dist else None, dist.version if dist else None)
    try:
        obj = ep.load()
    except Exception as exc:  # a broken plugin is listed with its error, not fatal for discovery
        info.error = f"{type(exc).__name__}: {exc}"
        return info
    if not (isinstance(obj, type) and issubclass(obj, Driver)):
        info.error = f"{ep.value} is not a trackly_exec.Driver subclass"
        return info
    info.cls = obj
    return info


def discover() -> dict[str, DriverInfo]:
    """Every driver in the entry-point group (plus in-process registrations), loaded."""
    allowed = _allowed()
    found: dict[str, DriverInfo] = {}
    for ep in entry_points(group=DRIVER_GROUP):
        if allowed is not None and ep.name not in allowed:
            continue
        if ep.name not in found:
            found[ep.name] = _load(ep)
    for name, cls in _registered.items():
        found[name] = DriverInfo(name, f"{cls.__module__}:{cls.__qualname__}", None, None, cls=cls)
    return dict(sorted(found.items()))


def get_driver_class(name: str) -> type[Driver[Any]]:
    """The driver class called ``name``; :class:`DriverNotFound` lists what is available."""
    if name in _registered:
        return _registered[name]
    key = (name, os.environ.get("TRACKLY_LOAD_DRIVERS"))
    found = _found.get(key)
    if found is not None:
        return found
    infos = discover()
    info = infos.get(name)
    if info is None:
        available = ", ".join(n for n, i in infos.items() if i.cls) or "none"
        raise DriverNotFound(f"unknown driver {name!r}; available drivers: {available}")
    if info.cls is None:
        raise DriverNotFound(f"driver {name!r} ({info.value}) failed to load: {info.error}")
    _found[key] = info.cls
    return info.cls
