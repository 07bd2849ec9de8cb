"""Placeholder: routes are added by the issue that owns this module."""

from __future__ import annotations

from typing import Any


def setup(app: Any, trackly: Any) -> None:
    """Add this module's routes to the aiohttp application."""
