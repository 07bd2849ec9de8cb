"""Placeholder: the fake-provider runner is built with the drivers."""

from __future__ import annotations


async def serve_fake(name: str, *, host: str, port: int, dlr_delay: float) -> int:
    raise NotImplementedError
