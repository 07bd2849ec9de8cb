"""For tests and plugin authors: the driver contract suite (contract) and the provider fakes (fakes: a shared
FakeProvider base with remote control, and one fake per built-in provider).

Imports drivers and below only.
"""
