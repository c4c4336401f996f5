"""The directory the milter decides with: the config's ``[[accounts]]`` on top of the
latest good snapshot of the sources, swapped in by a background refresher.

A refresh reads every source whole in a child process, validates it and writes a new
snapshot; only then is it swapped in, with one assignment, so a lookup sees the old
directory or the new one and never half of each, and no decision waits. A source that
fails or is malformed keeps the last good directory: logged once (and once more when
it is fixed), and reported to the abuse desk through the alert channels.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from sendwarden import metrics
from sendwarden.alerts.findings import Finding
from sendwarden.alerts.notify import Notifier, deliver, notifiers_from_settings
from sendwarden.alerts.rules import Alert
from sendwarden.config import Account, Settings
from sendwarden.directory.build import (
    KEPT_SNAPSHOT,
    BuildChild,
    EarlyBuild,
    kept_snapshot,
    state_directory,
    take_early,
)
from sendwarden.directory.snapshot import Conflict, Snapshot
from sendwarden.directory.sources import PASSWD_FILE, FileSignature, SourceError, file_signature
from sendwarden.policy.accounts import AccountDirectory, ConfiguredAccounts
from sendwarden.policy.facts import IPAddress

log = logging.getLogger(__name__)

#: The kind of the abuse-desk finding for a directory source that cannot be read.
DIRECTORY_FAILED = "directory-source-failed"
#: Accounts built (merged with their overrides) kept per snapshot.
ACCOUNT_CACHE = 4096
#: Longest close() waits for the refresh thread once its build was stopped.
CLOSE_TIMEOUT = 10.0
#: Longest a build may take before it counts as failed.
BUILD_TIMEOUT = 600.0


class DirectoryLookups:
    """Lookups over one snapshot with the ``[[accounts]]`` overrides on top.

    Overrides win: an identity the config gives one account is that account's whatever
    a source says, and an account the config names takes the settings the config writes.
    """

    def __init__(self, config: ConfiguredAccounts, snapshot: Snapshot | None) -> None:
        self.config = config
        self.snapshot = snapshot
        self._cache: dict[str, Account | None] = {}

    def get(self, account_id: str) -> Account | None:
        cached = self._cache.get(account_id, self)
        if cached is not self:
            return cached  # type: ignore[return-value]
        account = self._merged(account_id)
        if len(self._cache) >= ACCOUNT_CACHE:
            self._cache.clear()
        self._cache[account_id] = account
        return account

    def _merged(self, account_id: str) -> Account | None:
        override = self.config.get(account_id)
        record = self.snapshot.record(account_id) if self.snapshot is not None else None
        if record is None:
            return override
        config = self.config

        def kept(owner: Account | None) -> bool:
            return owner is None or owner.id == account_id

        domains = [d for d in record.domains if kept(config.owner_of_exact_domain(d))]
        logins = [login for login in record.logins if kept(config.listed_login(login))]
        uids = [uid for uid in record.uids if kept(config.by_uid(uid))]
        account = Account(
            id=account_id,
            logins=tuple(logins),
            uids=tuple(uids),
            domains=tuple(domains),
            recipients_per_hour=record.recipients_per_hour,
            allow_subdomains=bool(record.allow_subdomains),
        )
        if override is None:
            return account
        given = override.keys_given
        return replace(
            account,
            logins=_union(override.logins, account.logins),
            uids=_union(override.uids, account.uids),
            domains=_union(override.domains, account.domains),
            networks=override.networks,
            recipients_per_hour=(
                override.recipients_per_hour
                if "recipients_per_hour" in given
                else account.recipients_per_hour
            ),
            allow_subdomains=(
                override.allow_subdomains
                if "allow_subdomains" in given
                else account.allow_subdomains
            ),
            keys_given=given,
        )

    def _owned(self, owner: Account | None, kind: str, key: object) -> Account | None:
        if owner is not None:
            return self.get(owner.id)
        if self.snapshot is None:
            return None
        account_id = self.snapshot.owner(kind, key)
        return None if account_id is None else self.get(account_id)

    def listed_login(self, login: str) -> Account | None:
        return self._owned(self.config.listed_login(login), "login", login.casefold())

    def by_uid(self, uid: int) -> Account | None:
        return self._owned(self.config.by_uid(uid), "uid", uid)

    def by_address(self, address: IPAddress) -> Account | None:
        owner = self.config.by_address(address)
        return None if owner is None else self.get(owner.id)

    def owner_of_exact_domain(self, domain: str) -> Account | None:
        return self._owned(self.config.owner_of_exact_domain(domain), "domain", domain)

    def owner_of_exact_look(self, look: str) -> Account | None:
        return self._owned(self.config.owner_of_exact_look(look), "look", look)


def _union(first: Sequence[object], second: Sequence[object]) -> tuple:  # type: ignore[type-arg]
    return tuple(dict.fromkeys([*first, *second]))


@dataclass
class _Problem:
    message: str
    since: float
    alerted: bool = False


class LiveDirectory:
    """The current :class:`DirectoryLookups`, replaced whole by the refresher."""

    def __init__(
        self,
        settings: Settings,
        *,
        notifiers: Sequence[Notifier] | None = None,
        clock: Callable[[], float] = time.time,
        workdir: str | Path | None = None,
    ) -> None:
        self.settings = settings
        self.directory_settings = settings.directory
        self.config = ConfiguredAccounts(settings.accounts)
        # The first read, if start_early() began it while the milter was starting.
        self._early = take_early(settings.directory) if workdir is None else None
        if self._early is not None:
            self.workdir, self._own_workdir = self._early.workdir, self._early.own_workdir
        else:
            state = workdir or state_directory(settings.directory)
            self._own_workdir = not state
            self.workdir = Path(state or tempfile.mkdtemp(prefix="sendwarden-directory-"))
            if state:
                self.workdir.mkdir(parents=True, exist_ok=True)
        self._kept = self.workdir / KEPT_SNAPSHOT
        self._stale_start = False
        self._notifiers = (
            list(notifiers) if notifiers is not None else notifiers_from_settings(settings.alerts)
        )
        self._clock = clock
        self._generation = 0
        self._signatures: dict[str, FileSignature | None] = {}
        self._problem: _Problem | None = None
        self._known_conflicts: set[tuple[str, str]] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._child: subprocess.Popen[bytes] | None = None  # a build in progress
        self._refresh_lock = threading.Lock()
        self.lookups = DirectoryLookups(self.config, None)
        self.last_refresh = 0.0
        self._loaded: tuple[int, float] | None = None  # (accounts, when built), for metrics

    # -- life cycle -------------------------------------------------------------------

    def load(self, previous: LiveDirectory | None = None) -> None:
        """The first read, at start-up or reload: SourceError when a source is bad (the
        start, or the reload, is refused with the reason). ``previous`` (the running
        directory, on a reload) keeps contested domains with their owners. With a
        ``state_directory`` holding the last good snapshot of the same sources, start on
        it at once and re-read the sources in the background right away."""
        if not self.directory_settings.has_sources:
            return
        early, self._early = self._early, None
        if early is not None and previous is not None:
            early.discard(remove_workdir=False)  # a reload settles against the running one
            early = None
        kept = self._kept_snapshot()
        if kept is not None:
            if early is not None:
                early.discard(remove_workdir=False)
            self.lookups = DirectoryLookups(self.config, kept)
            self._stale_start = True
            accounts = kept.counts()["accounts"]
            built = float(kept.meta("built") or self._clock())
            self._announce(accounts, built)  # its age is the kept directory's
            log.info(
                "directory: starting on the last good one kept in %s (%s accounts); "
                "re-reading the sources now",
                self._kept,
                accounts,
            )
            return
        self._rebuild(previous.lookups.snapshot if previous is not None else None, early)

    def _kept_snapshot(self) -> Snapshot | None:
        return None if self._own_workdir else kept_snapshot(self.directory_settings, self.workdir)

    def start(self) -> None:
        """Re-read the sources every ``directory.refresh`` seconds, in the background."""
        if not self.directory_settings.has_sources or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="directory-refresh", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop refreshing; a build in progress is stopped, not waited for."""
        self._stop.set()
        early, self._early = self._early, None
        if early is not None:  # taken over but never loaded
            early.discard(remove_workdir=False)
        child = self._child
        if child is not None and child.poll() is None:
            child.terminate()
        if self._thread is not None:
            self._thread.join(timeout=CLOSE_TIMEOUT)
        # The snapshot is not closed here: a lookup may still hold it. Its connection
        # closes when the last reference goes; its file may go before (Unix keeps it).
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def _run(self) -> None:
        if self._stale_start:
            self.refresh(force=True)
        while not self._stop.wait(self.directory_settings.refresh):
            self.refresh()

    # -- refreshing -------------------------------------------------------------------

    def refresh(self, *, force: bool = False) -> bool:
        """Re-read the sources if they may have changed; True when a new directory was
        swapped in. Never raises: a bad source keeps the last good directory."""
        with self._refresh_lock:
            if not force and not self._may_have_changed():
                return False
            try:
                self._rebuild()
            except SourceError as error:
                if not self._stop.is_set():  # a build stopped by close() is no problem
                    self._failed(str(error))
                return False
            self._recovered()
            return True

    def _may_have_changed(self) -> bool:
        """Files are re-read only when they changed; a query is run every time."""
        if self.directory_settings.sql_url or self._problem is not None:
            return True
        return self._current_signatures() != self._signatures

    def _current_signatures(self) -> dict[str, FileSignature | None]:
        paths = [self.directory_settings.domain_map] if self.directory_settings.domain_map else []
        if self.directory_settings.system_users:
            paths.append(PASSWD_FILE)
        return {path: file_signature(path) for path in paths}

    def _rebuild(self, before: Snapshot | None = None, early: EarlyBuild | None = None) -> None:
        """Build a new snapshot (conflicts settled against ``before``, by default the
        current one) and swap it in; ``early``: the first build, already running."""
        signatures = self._current_signatures()
        self._generation += 1
        out = self.workdir / f"snapshot-{os.getpid()}-{id(self):x}-{self._generation}.db"
        previous = self.lookups.snapshot
        settled_against = before or previous
        started = time.monotonic() if early is None else early.started
        if early is None:
            child = BuildChild(
                self.directory_settings,
                out,
                settled_against.path if settled_against is not None else None,
            )
        else:
            child, out = early.child, early.child.out
        self._child = child.process
        try:
            report = child.report(timeout=BUILD_TIMEOUT)
        finally:
            self._child = None
        snapshot = Snapshot(out)
        if not self._own_workdir:
            # Kept for the next start; the open snapshot reads on through its handle.
            os.replace(out, self._kept)
            snapshot.path = self._kept
        self.lookups = DirectoryLookups(self.config, snapshot)  # the swap: one assignment
        self._signatures = signatures
        self.last_refresh = self._clock()
        self._announce(report.accounts, self.last_refresh)
        log.info("directory loaded in %.2fs: %s", time.monotonic() - started, report.summary())
        self._log_new_conflicts(report.conflicts)
        if previous is not None and previous.path != snapshot.path:
            # Not closed: a lookup that took the old directory just before the swap
            # finishes on it; its connection closes when the last reference goes, and
            # an open file outlives its name. (A kept one was replaced already.)
            previous.path.unlink(missing_ok=True)

    def _announce(self, accounts: int, loaded_at: float) -> None:
        self._loaded = (accounts, loaded_at)
        metrics.directory_loaded(accounts, loaded_at)  # size and age on /metrics, when on

    def announce(self) -> None:
        """Put the directory in force on /metrics again: the first load happens before
        the metrics server starts."""
        if self._loaded is not None:
            metrics.directory_loaded(*self._loaded)

    def _log_new_conflicts(self, conflicts: Sequence[Conflict]) -> None:
        current = {(conflict.kind, conflict.key) for conflict in conflicts}
        for conflict in conflicts:
            if (conflict.kind, conflict.key) not in self._known_conflicts:
                log.error("directory conflict: %s", conflict)
        self._known_conflicts = current

    def _failed(self, message: str) -> None:
        """Log each distinct problem once; alert the desk once per outage (again on the
        next refresh only if the alert could not be delivered)."""
        problem = self._problem
        if problem is None or problem.message != message:
            log.error("directory not refreshed, keeping the last good one: %s", message)
        if problem is None:
            problem = self._problem = _Problem(message, self._clock())
        problem.message = message
        if not problem.alerted:
            self._alert("new", problem)

    def _recovered(self) -> None:
        problem, self._problem = self._problem, None
        if problem is None:
            return
        log.warning("directory sources read again without problems")
        if problem.alerted:
            self._alert("resolved", problem)

    def _alert(self, kind: str, problem: _Problem) -> None:
        finding = Finding(
            key="directory:sources",
            kind=DIRECTORY_FAILED,
            subject="Account directory source cannot be read; mail is judged on the last good one",
            lines=(
                problem.message,
                "New accounts, domains and limits are not in force until the source is fixed; "
                "removed ones still are. Run `sendwarden account show ACCOUNT` or "
                "`sendwarden check-config` to see what the sources say.",
            ),
            facts={"problem": problem.message},
        )
        failures = deliver(Alert(kind, finding, problem.since), self._notifiers)  # type: ignore[arg-type]
        if failures:
            log.error(
                "directory alert not delivered (tried again next refresh): %s", "; ".join(failures)
            )
        elif kind == "new":
            problem.alerted = True


def live_directory(
    settings: Settings, previous: LiveDirectory | None = None, **options: object
) -> LiveDirectory:
    """Load the directory (SourceError when a source is bad) and start refreshing it;
    ``previous`` is the running one, on a reload."""
    live = LiveDirectory(settings, **options)  # type: ignore[arg-type]
    try:
        live.load(previous)
    except BaseException:
        live.close()
        raise
    live.start()
    return live


def account_directory(live: LiveDirectory) -> AccountDirectory:
    """The directory the pipeline and the checks share, reading through ``live``."""
    return AccountDirectory(live.settings.accounts, lookups=lambda: live.lookups)
