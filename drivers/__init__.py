"""Built-in provider drivers (Infobip, Twilio, CM.com) and local fakes of their APIs.

Each driver is registered through the ``trackly.drivers`` entry-point group, exactly as a third-party
plugin would be (see ``pyproject.toml``); nothing in ``trackly_exec`` imports this package directly.

=========  ===========================  ===============================
name       driver                       fake (``trackly fake-provider``)
=========  ===========================  ===============================
infobip    ``trackly_drivers.infobip``           ``trackly_exec.testing.fakes.infobip``
twilio     ``trackly_drivers.twilio``            ``trackly_exec.testing.fakes.twilio``
cm         ``trackly_drivers.cm``                ``trackly_exec.testing.fakes.cm``
=========  ===========================  ===============================
"""
