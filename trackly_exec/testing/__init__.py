"""For tests and plugin authors: the driver contract suite (contract) and the provider fakes (fakes: a shared
FakeProvider base with remote control, and one fake per built-in provider).

``from trackly_exec.testing import DriverContractSuite`` (also ``DriverHarness``, ``CHECKS``) loads the suite on
first use: it needs pytest and pytest-asyncio, which the fakes (``trackly fake-provider``) do not.

Imports drivers and below only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from trackly_exec.testing.contract import CHECKS, DriverContractSuite, DriverHarness

__all__ = ["CHECKS", "DriverContractSuite", "DriverHarness"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from trackly_exec.testing import contract

        return getattr(contract, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
