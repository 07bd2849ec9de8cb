"""The ``trackly`` command: run, check-config, drivers, admin commands against the API, the demo and the fake-provider
command.

Imports everything below.
"""
