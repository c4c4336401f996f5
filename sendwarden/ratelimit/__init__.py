"""Per-account recipient rate limit: a sliding window in Redis, one round trip per
decision (the Lua scripts ship as package data)."""

from sendwarden.ratelimit.counter import (
    Decision,
    RecipientCounter,
    SuspensionPolicy,
    Usage,
    counter_from_settings,
)

__all__ = ["Decision", "RecipientCounter", "SuspensionPolicy", "Usage", "counter_from_settings"]
