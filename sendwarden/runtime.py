"""Everything one configuration needs at run time, built once at start-up and on
reload, never per message."""

from __future__ import annotations

from dataclasses import dataclass

import redis

from sendwarden.checks.base import Check
from sendwarden.checks.relay import RelayCheck
from sendwarden.checks.suspension import SuspensionCheck
from sendwarden.config import Settings
from sendwarden.pipeline import Pipeline
from sendwarden.store.redis import connect
from sendwarden.store.suspensions import RedisSuspensionStore


@dataclass
class Runtime:
    settings: Settings
    redis: redis.Redis
    pipeline: Pipeline

    def close(self) -> None:
        self.pipeline.close()
        self.redis.close()


def build_checks(settings: Settings, client: redis.Redis) -> list[Check]:
    """The active checks in the order they run. At RCPT, checks that refuse for
    good come before ones that count, so a refused recipient consumes no quota."""
    prefix = settings.redis.key_prefix
    return [
        SuspensionCheck(RedisSuspensionStore(client, prefix)),
        RelayCheck(settings.policy.local_domains),
    ]


def build_runtime(settings: Settings) -> Runtime:
    client = connect(settings.redis)
    return Runtime(settings, client, Pipeline(settings, build_checks(settings, client)))
