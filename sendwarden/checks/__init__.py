"""Checks: the service layer between adapters and the pure policy core.

A check gathers the facts its rule needs (from Redis, the consent store, the
body stream), asks the pure rule in :mod:`sendwarden.policy`, and returns the
verdict. Adapters never call rules directly; they run the :class:`Pipeline`.
"""
