"""Helpers of the admin API tests (test_api, test_cli_admin): a driver with a settings model of its own."""

from __future__ import annotations

from collections.abc import Sequence

from trackly_exec import Accepted, Driver, DriverSettings, OutboundMessage, SendResult


class EchoSettings(DriverSettings):
    api_key: str = "k"


class EchoDriver(Driver[EchoSettings]):
    """Accepts everything; its settings model checks ``driver_settings`` like a real driver's."""

    settings_model = EchoSettings

    async def send(self, messages: Sequence[OutboundMessage]) -> list[SendResult]:
        return [Accepted(message_id=m.id, provider_message_id=m.id) for m in messages]
