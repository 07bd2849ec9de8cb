"""The driver contract suite against Acme's fake: ``pip install -e . pytest pytest-asyncio``, then ``pytest``."""

from trackly_driver_acme import AcmeDriver

from trackly_exec.testing import DriverContractSuite


class TestAcmeContract(DriverContractSuite):
    driver_class = AcmeDriver  # its fake: AcmeDriver.fake = "trackly_driver_acme.fake:AcmeFake"
