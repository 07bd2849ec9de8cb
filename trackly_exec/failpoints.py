"""Crash points for the chaos tests: ``TRACKLY_FAILPOINT=NAME[:N]`` SIGKILLs this process at the N-th
(default first) time the executor reaches point NAME.

Points: ``after_claim`` (a batch is claimed), ``after_intent`` (send intent recorded, provider not called),
``after_provider_accept`` (the provider accepted a request, nothing recorded), ``before_record`` (about to
insert the outcome records); campaign engine: ``after_queue_batch`` (a batch of queue documents was inserted,
the evaluation is not finished). Unset, :func:`hit` is a no-op function (no environment lookup per call).
"""

from __future__ import annotations

import os
import signal

POINTS = ("after_claim", "after_intent", "after_provider_accept", "before_record", "after_queue_batch")


def _parse(spec: str) -> tuple[str, int]:
    name, _, count = spec.partition(":")
    name = name.strip()
    if name not in POINTS:
        raise ValueError(f"TRACKLY_FAILPOINT: unknown point {name!r}; one of {', '.join(POINTS)}")
    return name, int(count) if count.strip() else 1


_SPEC = os.environ.get("TRACKLY_FAILPOINT", "").strip()
_seen = 0


def _noop(name: str) -> None:
    """Failpoints are off."""


def _armed(name: str) -> None:
    """Kill this process (SIGKILL: no cleanup, no flush) when ``name`` is reached for the configured time."""
    global _seen
    point, nth = _parse(_SPEC)
    if name != point:
        return
    _seen += 1
    if _seen >= nth:
        os.kill(os.getpid(), signal.SIGKILL)


#: ``failpoints.hit("after_claim")``: kill here if armed.
hit = _armed if _SPEC else _noop
if _SPEC:
    _parse(_SPEC)  # fail fast on a typo rather than never crashing
