"""Every exception the package defines is under the one root, :class:`trackly_exec.errors.TracklyError`."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import trackly_exec
from trackly_exec.errors import TracklyError


def _modules() -> list[str]:
    names = [m.name for m in pkgutil.walk_packages(trackly_exec.__path__, "trackly_exec.")]
    return [n for n in names if not n.endswith("__main__")]


def test_every_exception_class_of_the_package_is_a_trackly_error() -> None:
    strays = []
    for name in _modules():
        module = importlib.import_module(name)
        for attr, obj in vars(module).items():
            if (
                inspect.isclass(obj)
                and issubclass(obj, BaseException)
                and obj.__module__ == module.__name__
                and not issubclass(obj, TracklyError)
            ):
                strays.append(f"{name}.{attr}")
    assert not strays, f"exceptions outside TracklyError: {strays}"


def test_exceptions_that_must_stay_catchable_by_their_builtin_family() -> None:
    from trackly_exec.errors import WebhookError

    refused = importlib.import_module(_where("RefusedAddress")).RefusedAddress
    assert issubclass(refused, OSError) and issubclass(refused, TracklyError)  # aiohttp treats it as a connect error
    assert issubclass(WebhookError, TracklyError)


def _where(cls_name: str) -> str:
    for name in _modules():
        if hasattr(importlib.import_module(name), cls_name):
            return name
    raise LookupError(cls_name)
