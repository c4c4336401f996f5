"""Fragments of messages sent in parts (``message/partial``, RFC 2046 §5.2.2),
counted across messages so the whole is capped like one file.

Each fragmented message is one Redis hash per account and id,
``prefix:{account}:partial:SHA``: field ``nN`` holds fragment N's size, ``total``
the number of fragments it declares. One script call per fragment records it and
returns the sum (one key, under the account's hash tag: it runs on Redis Cluster).
A fragment sent again replaces its own entry, so retries never count twice.
"""

from __future__ import annotations

import hashlib
import typing
from dataclasses import dataclass
from importlib import resources
from typing import Protocol

import redis

from sendwarden.attachments.report import Fragment
from sendwarden.store.redis import account_key, redis_errors

#: How long a fragmented message is remembered after its last fragment.
FRAGMENT_TTL_SECONDS = 7 * 24 * 3600
MAX_FRAGMENT_NUMBER = 100_000
UNKNOWN_ACCOUNT = "~unknown"  # senders no account lists share one namespace


@dataclass(frozen=True, slots=True)
class FragmentTally:
    """What the fragments of one message add up to so far."""

    message_id: str
    bytes: int
    fragments: int
    declared_total: int


class FragmentStore(Protocol):
    def add(self, account_id: str | None, fragment: Fragment) -> FragmentTally: ...


class RedisFragments:
    """Fragment sizes per account and message id, shared by every MTA host."""

    def __init__(
        self, client: redis.Redis, prefix: str = "sw", ttl_seconds: int = FRAGMENT_TTL_SECONDS
    ) -> None:
        self._prefix = prefix
        self._ttl = ttl_seconds
        source = resources.files(__package__).joinpath("fragments.lua").read_text("utf-8")
        self._script = client.register_script(source)

    def key(self, account_id: str | None, message_id: str) -> str:
        digest = hashlib.sha256(message_id.encode("utf-8", "surrogateescape")).hexdigest()[:32]
        return account_key(self._prefix, account_id or UNKNOWN_ACCOUNT, f"partial:{digest}")

    def add(self, account_id: str | None, fragment: Fragment) -> FragmentTally:
        """Record one fragment (number and size) and return the message's tally."""
        number = fragment.number if 0 < fragment.number <= MAX_FRAGMENT_NUMBER else 0
        total = fragment.total if 0 < fragment.total <= MAX_FRAGMENT_NUMBER else 0
        with redis_errors(f"counting the fragments of message/partial {fragment.message_id!r}"):
            result = self._script(
                keys=[self.key(account_id, fragment.message_id)],
                args=[f"n{number}", fragment.size, total, self._ttl],
            )
        size, count, declared = (int(value) for value in typing.cast(list[int], result))
        return FragmentTally(fragment.message_id, size, count, declared)
