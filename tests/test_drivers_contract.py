"""The driver contract suite (trackly_exec.testing) run against each built-in driver and its fake."""

from __future__ import annotations

from drivers.cm import CMDriver
from drivers.infobip import InfobipDriver
from drivers.twilio import TwilioDriver
from trackly_exec.testing import DriverContractSuite


class TestInfobipContract(DriverContractSuite):
    """Infobip against InfobipFake."""

    driver_class = InfobipDriver


class TestTwilioContract(DriverContractSuite):
    """Twilio against TwilioFake."""

    driver_class = TwilioDriver


class TestCMContract(DriverContractSuite):
    """CM.com against CMFake."""

    driver_class = CMDriver
