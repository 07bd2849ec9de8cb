"""The chaos suite: a campaign under SIGKILLs, store and Redis outages and provider faults, checked against the
provider's ledger. ``python -m tests.chaos --seed N [--short]`` (``make test-chaos`` / ``make test-chaos-short``)
prints the table and exits 1 on a violated invariant; ``tests/test_chaos.py`` runs a small version under pytest.
"""
