"""Everything one configuration needs at run time, built once at start-up and on
reload, never per message."""

from __future__ import annotations

from dataclasses import dataclass

import redis

from sendwarden.alerts.early import VolumeRecorder, VolumeStore
from sendwarden.alerts.risk import RiskRecorder, RiskStore
from sendwarden.attachments.fragments import RedisFragments
from sendwarden.checks.attachments import AttachmentCheck
from sendwarden.checks.base import Check
from sendwarden.checks.identity import IdentityCheck
from sendwarden.checks.ratelimit import RecipientRateCheck
from sendwarden.checks.relay import RelayCheck
from sendwarden.checks.suspension import SuspensionCheck
from sendwarden.checks.unknown import unknown_sender_checks
from sendwarden.config import ConfigError, Settings
from sendwarden.consent.bulk import RecentRecipients
from sendwarden.consent.check import consent_check_from_settings
from sendwarden.directory.live import LiveDirectory, account_directory, live_directory
from sendwarden.directory.sources import SourceError
from sendwarden.dkim.signer import signers_from_settings
from sendwarden.monitoring import MonitorRecorder, MonitorStore
from sendwarden.pipeline import Pipeline
from sendwarden.policy.accounts import AccountDirectory
from sendwarden.ratelimit import counter_from_settings
from sendwarden.store import Shared
from sendwarden.store.redis import close_client, connect
from sendwarden.store.suspensions import (
    CachedSuspensions,
    SharedDatabase,
    suspension_store_from_settings,
)

RedisClient = redis.Redis  # the field ``Runtime.redis`` hides the module in the class


@dataclass
class Runtime:
    settings: Settings
    redis: redis.Redis
    pipeline: Pipeline
    live_directory: LiveDirectory | None = None  # refreshes the [directory] sources
    volume: VolumeRecorder | None = None
    # The durable database's pool (consent ledger, suspension history) and the Redis
    # client: a reload hands them on to the next configuration when it names the same.
    database: SharedDatabase | None = None
    shared_redis: Shared[RedisClient] | None = None

    def open_stores_soon(self) -> None:
        """Begin opening the durable database in the background: for the servers, at
        start and reload (a reload naming the running one's finds it open already),
        never for the CLI commands that build a runtime but may not need it."""
        if self.database is not None:
            self.database.open_soon()

    def close(self) -> None:
        self.pipeline.close()
        if self.database is not None:
            self.database.close()  # once for the runtime (the checks gave it back too)
        if self.volume is not None:
            self.volume.close()  # its last counts, before the client goes
        if self.shared_redis is not None:
            self.shared_redis.close()
        else:
            close_client(self.redis)
        if self.live_directory is not None:
            self.live_directory.close()


def attachment_checks(settings: Settings, client: redis.Redis) -> list[Check]:
    policy = settings.policy
    if not policy.check_attachments:
        return []
    fragments = None
    if policy.message_partial == "count":
        fragments = RedisFragments(client, settings.redis.key_prefix)
    return [
        AttachmentCheck(
            policy.max_attachment_bytes, policy.max_mime_depth, policy.message_partial, fragments
        )
    ]


def build_checks(
    settings: Settings,
    client: redis.Redis,
    directory: AccountDirectory | None = None,
    database: SharedDatabase | None = None,
) -> list[Check]:
    """The active checks in the order they run. At RCPT, checks that refuse for
    good come before ones that count, so a refused recipient consumes no quota."""
    # The durable database (consent ledger, suspension history): one pool, opened on
    # first use, shared by the checks that need it (and given back when they close).
    if database is None:
        database = SharedDatabase(settings)
    suspensions = suspension_store_from_settings(settings, client, database)
    # Shared: reservations refresh the MAIL-time suspension cache, and the rate
    # limit's end-of-message round trip counts recipients for the consent rule.
    cache = CachedSuspensions(suspensions)
    recent = RecentRecipients(client, settings.redis.key_prefix)
    return [
        # MAIL: unlisted senders, when the provider refuses them (pure).
        *unknown_sender_checks(settings.policy.unknown_senders, settings.alerts.smtp_login),
        RelayCheck(settings.policy.local_domains),
        # Last among the RCPT checks: only recipients nothing else refused are counted.
        # At MAIL its batch reservation refuses a suspended account in the same round
        # trip, and tells the suspension check below (which then needs none).
        RecipientRateCheck(
            counter_from_settings(settings, client),
            settings,
            suspensions,
            suspension_cache=cache,
            recent=recent,
        ),
        SuspensionCheck(cache),
        # End of message: forged From/Sender and provider headers (pure, no store).
        IdentityCheck(settings, directory),
        # End of message: no file over the cap (fed the body; inbound and outbound).
        *attachment_checks(settings, client),
        # End of message: bulk mail needs consent (before any signer, which stays last).
        consent_check_from_settings(settings, client, database, recent),
        # LAST: the DKIM signer signs only what every rule above passed.
        *signers_from_settings(settings.dkim),
    ]


def load_directory(
    settings: Settings, previous: LiveDirectory | None = None
) -> tuple[AccountDirectory, LiveDirectory | None]:
    """The accounts: the config's alone, or the [directory] sources read now (a bad
    source is a ConfigError naming it: the start or the reload is refused) and then
    re-read in the background."""
    if not settings.directory.has_sources:
        return AccountDirectory(settings.accounts), None
    try:
        live = live_directory(settings, previous)
    except SourceError as error:
        raise ConfigError("directory", str(error)) from None
    return account_directory(live), live


def build_runtime(settings: Settings, previous: Runtime | None = None) -> Runtime:
    """``previous``: the running configuration, on a reload (its directory's owners
    keep the domains a new read finds contested; its Redis client and database pool
    carry over when this configuration names the same)."""
    running = previous.live_directory if previous is not None else None
    directory, live = load_directory(settings, running)  # shared by pipeline and checks
    # The running configuration's open connections, where this one names the same.
    shared_redis = Shared(
        (settings.redis.url, settings.redis.timeout_ms),
        lambda: connect(settings.redis),
        close_client,
        previous.shared_redis if previous is not None else None,
    )
    client = shared_redis.resource
    database = SharedDatabase(settings, previous.database if previous is not None else None)
    try:
        checks = build_checks(settings, client, directory, database)
    except BaseException:  # a refused reload gives them back
        database.close()
        shared_redis.close()
        raise
    # Counts refusals that put the provider's addresses at risk, for the alert sweep.
    risk = RiskRecorder(RiskStore(client, settings.redis.key_prefix))
    # Counts what monitor-only mode let pass, for `sendwarden report`.
    monitor = MonitorRecorder(MonitorStore(client, settings.redis.key_prefix))
    # Sent volume per account and sending address, for the early warnings.
    volume = VolumeRecorder(
        VolumeStore(client, settings.redis.key_prefix), settings.alerts.sending_address
    )
    pipeline = Pipeline(settings, checks, directory, observers=[risk, monitor, volume])
    return Runtime(settings, client, pipeline, live, volume, database, shared_redis)
