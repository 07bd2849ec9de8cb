"""trackly-exec: a self-hosted SMS campaign execution engine.

The public API for provider plugins lives here: subclass :class:`Driver` and register it in the
``trackly.drivers`` entry-point group.
"""

from __future__ import annotations

from typing import Any

from trackly_exec.drivers.contract import (
    Accepted,
    DeliveryReport,
    Driver,
    DriverContext,
    DriverSettings,
    Found,
    InboundMessage,
    LookupQuery,
    LookupResult,
    NotFound,
    OutboundMessage,
    Rejected,
    SendResult,
    TransientFailure,
    UnknownOutcome,
    WebhookRequest,
    WebhookResponse,
)
from trackly_exec.errors import (
    ConfigError,
    DriverError,
    PermanentSendError,
    TracklyError,
    TransientSendError,
    UnknownOutcomeError,
    WebhookAuthError,
    WebhookError,
    WebhookFormatError,
)

__all__ = [
    "Accepted",
    "ConfigError",
    "DeliveryReport",
    "Driver",
    "DriverContext",
    "DriverError",
    "DriverSettings",
    "Found",
    "InboundMessage",
    "LookupQuery",
    "LookupResult",
    "NotFound",
    "OutboundMessage",
    "PermanentSendError",
    "Rejected",
    "SendResult",
    "TracklyError",
    "TransientFailure",
    "TransientSendError",
    "UnknownOutcome",
    "UnknownOutcomeError",
    "WebhookAuthError",
    "WebhookError",
    "WebhookFormatError",
    "WebhookRequest",
    "WebhookResponse",
    "__version__",
]


def __getattr__(name: str) -> Any:
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("trackly-exec")
        except PackageNotFoundError:  # running from a checkout without an install
            return "0+unknown"
    raise AttributeError(name)
