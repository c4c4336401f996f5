"""Early warnings for the abuse desk, before a listing or a suspension: an account
close to its hourly limit, an account sending several times its usual hourly volume,
and, when an address gets listed, the accounts that sent most through it in the hour
before.

The milter records what accepted mail each account sent (:class:`VolumeRecorder`, a
pipeline observer that adds up in memory and writes to Redis every few seconds from
its own thread, so a message costs no extra round trip):

- ``PREFIX:{account}:volume``: recipients per UTC hour (fields = epoch hour), kept
  eight days: the account's usual hourly volume is the median of its busy hours.
- ``PREFIX:sent:{ADDRESS}``: recipients per minute and account through one sending
  address (``alerts.sending_address`` of the MTA host; ``*`` when unset), kept two
  hours: who sent through an address before it was listed.
- ``PREFIX:active``: the last minute each account sent, kept two hours: the accounts
  the sweep looks at besides the config's, so accounts that only the directory knows,
  and proven senders no account lists, are warned about too.

The sweep (:class:`EarlyWarnings`) reads them with the rate limiter's own count of
the rolling hour, and turns what it sees into findings for the alert rules.
"""

from __future__ import annotations

import logging
import statistics
import threading
import time
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import redis

from sendwarden.alerts.findings import ACCOUNT_NEAR_LIMIT, ACCOUNT_SURGE, DNSBL_LISTING, Finding
from sendwarden.config import Account, Settings
from sendwarden.policy.facts import Transaction
from sendwarden.policy.verdict import Action, Verdict
from sendwarden.ratelimit.counter import RecipientCounter
from sendwarden.store import StoreError, StoreHealth
from sendwarden.store.redis import account_key, redis_errors

log = logging.getLogger(__name__)

HOUR = 3600
MINUTE = 60
VOLUME_KEEP = 8 * 86400
SENT_KEEP = 2 * HOUR
HISTORY_HOURS = 7 * 24
MIN_HISTORY_HOURS = 3  # fewer busy hours than this: no "usual" volume yet
ANY_ADDRESS = "*"
TOP_ACCOUNTS = 5


class VolumeStore:
    """The Redis side of the volume counts (layout in the module doc)."""

    def __init__(
        self, client: redis.Redis, prefix: str = "sw", clock: Callable[[], float] = time.time
    ) -> None:
        self._client = client
        self._prefix = prefix
        self._clock = clock

    def volume_key(self, account_id: str) -> str:
        return account_key(self._prefix, account_id, "volume")

    def sent_key(self, address: str) -> str:
        return f"{self._prefix}:sent:{{{address or ANY_ADDRESS}}}"

    def active_key(self) -> str:
        return f"{self._prefix}:active"

    def add(self, address: str, counts: dict[tuple[int, str], int]) -> None:
        """Add ``{(epoch minute, account): recipients}`` in one round trip."""
        with redis_errors("recording sent volume"):
            pipe = self._client.pipeline(transaction=False)
            sent_key = self.sent_key(address)
            for (minute, account_id), count in counts.items():
                volume_key = self.volume_key(account_id)
                pipe.hincrby(volume_key, str(minute * MINUTE // HOUR), count)
                pipe.expire(volume_key, VOLUME_KEEP)
                pipe.hincrby(sent_key, f"{minute}\t{account_id}", count)
            pipe.hset(
                self.active_key(),
                mapping={account_id: minute for minute, account_id in sorted(counts)},
            )
            pipe.expire(sent_key, SENT_KEEP)
            pipe.expire(self.active_key(), SENT_KEEP)
            pipe.execute()

    def active_accounts(self) -> list[str]:
        """The accounts that sent accepted mail in the last hour (from any MTA host)."""
        oldest_minute = int(self._clock()) // MINUTE - HOUR // MINUTE
        with redis_errors("reading the accounts active this hour"):
            fields = typing.cast(dict[bytes, bytes], self._client.hgetall(self.active_key()))
        return sorted(
            name.decode(errors="replace")
            for name, minute in fields.items()
            if minute.isdigit() and int(minute) >= oldest_minute
        )

    def usual_hourly(self, account_ids: Sequence[str]) -> dict[str, float]:
        """The median recipients of each account's busy hours in the last week, the
        current hour left out; accounts with too little history are absent."""
        now_hour = int(self._clock()) // HOUR
        with redis_errors("reading the accounts' hourly volumes"):
            pipe = self._client.pipeline(transaction=False)
            for account_id in account_ids:
                pipe.hgetall(self.volume_key(account_id))
            replies = pipe.execute()
        usual: dict[str, float] = {}
        for account_id, fields in zip(account_ids, replies, strict=True):
            hours = [
                int(value)
                for hour, value in typing.cast(dict[bytes, bytes], fields).items()
                if hour.isdigit() and now_hour - HISTORY_HOURS <= int(hour) < now_hour
                and int(value) > 0
            ]  # fmt: skip
            if len(hours) >= MIN_HISTORY_HOURS:
                usual[account_id] = float(statistics.median(hours))
        return usual

    def top_senders(self, address: str, limit: int = TOP_ACCOUNTS) -> list[tuple[str, int]]:
        """The accounts that sent most recipients through ``address`` in the last hour."""
        oldest_minute = int(self._clock()) // MINUTE - HOUR // MINUTE
        with redis_errors(f"reading who sent through {address}"):
            fields = typing.cast(dict[bytes, bytes], self._client.hgetall(self.sent_key(address)))
        totals: dict[str, int] = {}
        for name, value in fields.items():
            minute, _, account_id = name.decode(errors="replace").partition("\t")
            if minute.isdigit() and int(minute) >= oldest_minute and account_id:
                totals[account_id] = totals.get(account_id, 0) + int(value)
        ranked = sorted(totals.items(), key=lambda item: (-item[1], item[0]))
        return ranked[:limit]


class VolumeRecorder:
    """Pipeline observer: recipients of accepted outbound mail, per account, added up in
    memory and written every ``interval`` seconds by a daemon thread."""

    def __init__(
        self,
        store: VolumeStore,
        address: str,
        interval: float = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._address = address
        self._interval = interval
        self._clock = clock
        self._lock = threading.Lock()
        self._pending: dict[tuple[int, str], int] = {}
        self._outage = StoreHealth(log, "sent volumes are not recorded until it is back")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def observe(self, txn: Transaction, stage: str, verdict: Verdict) -> None:
        accepted = not verdict.is_final or verdict.action is Action.ACCEPT
        if stage != "eom" or not accepted or txn.account is None:
            return
        if not (txn.identified or txn.trusted):
            return  # inbound mail claiming a customer's domain is not the customer's volume
        removed = set(txn.changes.remove_recipients)
        count = sum(1 for recipient in txn.recipients if recipient not in removed)
        if not count:
            return
        key = (int(self._clock()) // MINUTE, txn.account.id)
        with self._lock:
            self._pending[key] = self._pending.get(key, 0) + count
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="volume-recorder", daemon=True
                )
                self._thread.start()

    def flush(self) -> None:
        """Write what has been counted; kept for the next flush if Redis fails."""
        with self._lock:
            pending, self._pending = self._pending, {}
        if not pending:
            return
        try:
            self._store.add(self._address, pending)
        except StoreError as error:
            self._outage.failed(error)
            with self._lock:
                for key, count in pending.items():
                    self._pending[key] = self._pending.get(key, 0) + count
            return
        self._outage.succeeded({"redis"})

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self._interval + 1)
        self.flush()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.flush()


@dataclass(frozen=True)
class EarlyWarnings:
    """The sweep's side: findings from the counts above."""

    settings: Settings
    counter: RecipientCounter
    volumes: VolumeStore

    def account_findings(
        self, find: Callable[[str], Account | None] | None = None
    ) -> list[Finding]:
        """Accounts near their limit or far above their usual volume: the config's, and
        every account that sent this hour (``find`` gives an id's account, for its limit:
        the directory's; unknown ids have the default limit); raises StoreError."""
        alerts = self.settings.alerts
        if alerts.near_limit_share <= 0 and alerts.surge_factor <= 0:
            return []
        configured = {account.id: account for account in self.settings.accounts}
        ids = list(dict.fromkeys([*configured, *self.volumes.active_accounts()]))
        if not ids:
            return []
        usual = self.volumes.usual_hourly(ids)
        findings = []
        for account_id in ids:
            account = configured.get(account_id) or (find(account_id) if find else None)
            used = self.counter.usage(account_id).used
            limit = self.settings.recipients_per_hour(account)
            near = near_limit_finding(account_id, used, limit, alerts.near_limit_share)
            if near is not None:
                findings.append(near)
            surge = surge_finding(
                account_id, used, usual.get(account_id), alerts.surge_factor,
                alerts.surge_min_recipients,
            )  # fmt: skip
            if surge is not None:
                findings.append(surge)
        return findings

    def with_top_senders(self, findings: Sequence[Finding]) -> list[Finding]:
        """Listing findings, each told which accounts sent most through the address in
        the hour before (from the MTA hosts that know their sending address, and from
        those that do not, marked so)."""
        enriched = []
        for finding in findings:
            if finding.kind != DNSBL_LISTING:
                enriched.append(finding)
                continue
            address = str(finding.facts.get("address", ""))
            try:
                exact = self.volumes.top_senders(address)
                unknown = self.volumes.top_senders(ANY_ADDRESS)
            except StoreError as error:
                lines = (*finding.lines, f"Who sent through {address} is unknown: {error}")
                enriched.append(replace(finding, lines=lines))
                continue
            enriched.append(listing_with_senders(finding, address, exact, unknown))
        return enriched


def near_limit_finding(account_id: str, used: int, limit: int, share: float) -> Finding | None:
    """The account has used ``share`` of its hourly limit or more (pure)."""
    if share <= 0 or limit <= 0 or used < share * limit:
        return None
    percent = round(100 * used / limit)
    return Finding(
        key=f"near-limit:{account_id}",
        kind=ACCOUNT_NEAR_LIMIT,
        subject=f"Account {account_id} has used {percent}% of its hourly limit",
        lines=(
            f"Account {account_id} sent to {used} recipients in the last hour; its limit is "
            f"{limit} (warning at {round(share * 100)}%).",
            "If this is not the customer's usual campaign, check for a compromised login "
            "or script before the limit starts deferring its mail.",
        ),
        facts={"account": account_id, "used": used, "limit": limit, "share": share},
    )


def surge_finding(
    account_id: str, used: int, usual: float | None, factor: float, minimum: int
) -> Finding | None:
    """The account sent ``factor`` times its usual hourly volume or more (pure)."""
    if factor <= 0 or usual is None or used < minimum or used < factor * usual:
        return None
    times = used / usual
    return Finding(
        key=f"surge:{account_id}",
        kind=ACCOUNT_SURGE,
        subject=f"Account {account_id} is sending {times:.0f} times its usual hourly volume",
        lines=(
            f"Account {account_id} sent to {used} recipients in the last hour; it usually "
            f"sends to about {usual:.0f} in a busy hour (median of the last week).",
            "A sudden surge is the typical sign of a stolen password or an exploited "
            "web form: check the account's recent logins and scripts.",
        ),
        facts={"account": account_id, "used": used, "usual": usual, "factor": factor},
    )


def listing_with_senders(
    finding: Finding,
    address: str,
    exact: Sequence[tuple[str, int]],
    unknown: Sequence[tuple[str, int]],
) -> Finding:
    lines = list(finding.lines)
    if exact:
        lines.append(f"Accounts that sent most through {address} in the hour before:")
        lines += [f"  {account}: {count} recipients" for account, count in exact]
    if unknown:
        lines.append(
            "Accounts that sent most in the hour before from MTA hosts without "
            "alerts.sending_address (their outbound address is not known):"
        )
        lines += [f"  {account}: {count} recipients" for account, count in unknown]
    if not exact and not unknown:
        lines.append(f"No account sent mail through {address} in the hour before.")
    facts = {
        **finding.facts,
        "top_senders": [{"account": a, "recipients": n} for a, n in exact],
        "top_senders_unknown_address": [{"account": a, "recipients": n} for a, n in unknown],
    }
    return replace(finding, lines=tuple(lines), facts=facts)
