"""Built-in provider drivers (Infobip, Twilio, CM.com) and local fakes of their APIs.

Each driver is registered through the ``trackly.drivers`` entry-point group, exactly as a third-party
plugin would be (see ``pyproject.toml``); nothing in ``trackly_exec`` imports this package directly.

=========  ===========================  ===============================
name       driver                       fake (``trackly fake-provider``)
=========  ===========================  ===============================
infobip    ``drivers.infobip``           ``drivers.infobip_fake``
twilio     ``drivers.twilio``            ``drivers.twilio_fake``
cm         ``drivers.cm``                ``drivers.cm_fake``
=========  ===========================  ===============================
"""
