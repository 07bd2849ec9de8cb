"""The provider-driver contract (contract: Driver.send() is the one required method), the entry-point registry (group
``trackly.drivers``), the driver pool built from the config, and the public HTTP error mapping (http) that built-in
and third-party drivers share.

Imports store and below.
"""
