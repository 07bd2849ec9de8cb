"""A ten-line trackly-exec driver: every message is accepted (``example-<our id>``)."""

from trackly_exec import Accepted, Driver, DriverSettings


class ExampleSettings(DriverSettings):
    prefix: str = "example"


class ExampleDriver(Driver[ExampleSettings]):
    settings_model = ExampleSettings

    async def send(self, messages):
        return [
            Accepted(message_id=m.id, provider_message_id=f"{self.settings.prefix}-{m.id}", segments=m.segments)
            for m in messages
        ]
