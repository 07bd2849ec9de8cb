"""Faithful local fakes of the providers' APIs (one per built-in driver) on a shared base."""
