"""Reading every source and writing a snapshot: in-process for the CLI, and as a child
process for the milter (``python -m sendwarden.directory.child``, the settings as JSON
on stdin, the report as JSON on stdout), so the milter's interpreter never runs it."""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import gc
import json
import logging
import os
import selectors
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sendwarden.config import DirectorySettings, load_directory_settings
from sendwarden.directory.sources import SourceData, SourceError, read_domain_map, read_system_users

if TYPE_CHECKING:
    from sendwarden.directory.snapshot import BuildReport, Snapshot

# The snapshot and SQL modules are imported where they are used, not here: the milter
# imports this module to start the builder child (start_early), and every hundredth
# of a second before that start is one more before it answers.

log = logging.getLogger(__name__)


def read_sources(
    settings: DirectorySettings, sql: Callable[[], SourceData] | None = None
) -> list[SourceData]:
    """Each configured file and query, read whole and validated (SourceError if not).
    ``sql``: the query already sent (:func:`start_sql`), for its rows."""
    from sendwarden.directory.sql import read_sql, sql_password

    sources = []
    if settings.domain_map:
        sources.append(read_domain_map(settings.domain_map))
    if settings.sql_url and sql is not None:
        sources.append(sql())
    elif settings.sql_url:
        password = sql_password(settings.sql_password_file)
        sources.append(
            read_sql(
                settings.sql_url,
                settings.sql_query,
                password=password,
                timeout_ms=settings.sql_timeout_ms,
            )
        )
    return sources


def fingerprint(settings: DirectorySettings) -> str:
    """What the sources are: a kept snapshot is only used again for the same ones."""
    sources = {
        "domain_map": settings.domain_map,
        "system_users": settings.system_users,
        "sql_url": settings.sql_url,
        "sql_query": settings.sql_query,
    }
    return json.dumps(sources, sort_keys=True)


def build(
    settings: DirectorySettings,
    out: str | Path,
    previous: str | Path | None = None,
    written: Callable[[BuildReport], None] | None = None,
    sql: Callable[[], SourceData] | None = None,
    parallel: bool = False,
) -> BuildReport:
    """Read the sources and write the snapshot ``out``; SourceError leaves no file.
    ``written`` is given the report as soon as the file is in place (see
    :func:`write_snapshot`, as is ``parallel``); ``sql`` is the query already sent, as
    for :func:`read_sources`."""
    from sendwarden.directory.snapshot import Snapshot, write_snapshot

    with _no_cycle_collection():
        sources = read_sources(settings, sql)
        users = read_system_users() if settings.system_users else None
        before = Snapshot(previous) if previous else None
        try:
            return write_snapshot(
                out,
                sources,
                system_users=users,
                previous=before,
                max_shrink_percent=settings.max_shrink_percent,
                fingerprint=fingerprint(settings),
                written=written,
                parallel=parallel,
            )
        finally:
            if before is not None:
                before.close()


@contextlib.contextmanager
def _no_cycle_collection() -> Iterator[None]:
    """A build makes millions of tuples and no reference cycles: the cycle collector
    would only walk the growing heap again and again (a third of a build's time)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class BuildFailed(SourceError):
    """The child could not build a snapshot; the message is its reason."""


class BuildChild:
    """:func:`build` in a child process at lower priority, started at once: its parsing
    never holds the milter's interpreter lock, and its garbage is not the milter's
    memory. :meth:`report` waits for it."""

    def __init__(self, settings: DirectorySettings, out: str | Path, previous: str | Path | None):
        self.settings = settings
        self.out = Path(out)
        request = {
            "settings": dataclasses.asdict(settings),
            "out": str(out),
            "previous": previous and str(previous),
        }
        self.process = subprocess.Popen(
            [sys.executable, "-m", "sendwarden.directory.child"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert self.process.stdin is not None
        # One line (JSON has no raw newline): the child starts on it before stdin closes.
        self.process.stdin.write(json.dumps(request).encode() + b"\n")
        self.process.stdin.flush()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()

    def report(self, timeout: float) -> BuildReport:
        """The child's report once it is done; BuildFailed with its reason if it failed.
        A report is taken as soon as its line is complete (the snapshot is in place by
        then), without waiting for the child to exit: its exit frees a heap of
        hundreds of megabytes, which takes a few hundredths of a second."""
        child = self.process
        deadline = time.monotonic() + timeout
        try:
            stdout, stderr = _first_line(child, deadline)
            answer = _answer_of(stdout)
            if "report" in answer and "error" not in answer:
                threading.Thread(target=_reap, args=(child,), daemon=True).start()
                return _report_from_json(answer["report"])
            with child:
                more, errors = child.communicate(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with child:
                child.kill()
                child.communicate()
            raise BuildFailed(f"reading the directory sources took over {timeout:.0f}s") from None
        answer = _answer_of(stdout + more)
        if child.returncode != 0 or "error" in answer or "report" not in answer:
            reason = answer.get("error") or (stderr + errors).decode(errors="replace").strip()
            raise BuildFailed(
                reason[-2000:] or f"the directory builder exited with {child.returncode}"
            )
        return _report_from_json(answer["report"])


def _first_line(child: subprocess.Popen[bytes], deadline: float) -> tuple[bytes, bytes]:
    """What the child wrote until its first line on stdout is complete (or both its
    outputs closed): stdout and stderr, both read as they come, so that neither pipe
    fills up and blocks it. TimeoutExpired at the deadline."""
    assert child.stdout is not None and child.stderr is not None
    read: dict[int, bytearray] = {child.stdout.fileno(): bytearray()}
    read[child.stderr.fileno()] = bytearray()
    stdout = read[child.stdout.fileno()]
    with selectors.DefaultSelector() as selector:
        for fd in read:
            selector.register(fd, selectors.EVENT_READ)
        while b"\n" not in stdout and selector.get_map():
            remaining = deadline - time.monotonic()
            ready = selector.select(remaining) if remaining > 0 else []
            if not ready:
                raise subprocess.TimeoutExpired(child.args, 0)
            for key, _events in ready:
                data = os.read(key.fd, 1 << 16)
                if not data:
                    selector.unregister(key.fd)
                read[key.fd] += data
    return bytes(stdout), bytes(read[child.stderr.fileno()])


def _answer_of(stdout: bytes) -> dict[str, Any]:
    try:
        answer = json.loads(stdout.decode() or "{}")
    except ValueError:
        return {}
    return answer if isinstance(answer, dict) else {}


def _reap(child: subprocess.Popen[bytes]) -> None:
    """Wait for a child that has answered to exit, and close its pipes."""
    with child:
        child.communicate()


def build_in_child(
    settings: DirectorySettings,
    out: str | Path,
    previous: str | Path | None,
    timeout: float,
    started: Callable[[subprocess.Popen[bytes]], None] | None = None,
) -> BuildReport:
    """:func:`build` in a :class:`BuildChild`; ``started`` is given the child process
    (so a shutdown can stop it)."""
    child = BuildChild(settings, out, previous)
    if started is not None:
        started(child.process)
    return child.report(timeout)


#: The last good snapshot's name in the state directory.
KEPT_SNAPSHOT = "directory.db"
#: Where the state directory is by default: under the one systemd makes for the service
#: (``StateDirectory=sendwarden`` in deploy/sendwarden.service: /var/lib/sendwarden).
SYSTEMD_STATE = "STATE_DIRECTORY"


def state_directory(settings: DirectorySettings) -> Path | None:
    """Where the last good directory is kept across restarts: ``state_directory``, or
    else ``directory`` in the service's systemd state directory, or nowhere."""
    if settings.state_directory:
        return Path(settings.state_directory)
    systemd = os.environ.get(SYSTEMD_STATE, "").split(":")[0]
    return Path(systemd) / "directory" if systemd else None


def kept_snapshot(settings: DirectorySettings, state: Path | None) -> Snapshot | None:
    """The last good snapshot kept in ``state`` for these same sources, if readable."""
    kept = state / KEPT_SNAPSHOT if state is not None else None
    if kept is None or not kept.exists():
        return None
    import sqlite3

    from sendwarden.directory.snapshot import Snapshot

    try:
        snapshot = Snapshot(kept)
        if snapshot.meta("fingerprint") == fingerprint(settings):
            return snapshot
        snapshot.close()
    except sqlite3.Error as error:
        log.warning("the kept directory %s is unreadable (%s); reading the sources", kept, error)
    return None


@dataclasses.dataclass
class EarlyBuild:
    """The first read of the sources, started before the milter has finished starting."""

    settings: DirectorySettings
    workdir: Path
    own_workdir: bool  # a temporary directory, removed with the directory
    child: BuildChild
    started: float = dataclasses.field(default_factory=time.monotonic)

    def discard(self, *, remove_workdir: bool = True) -> None:
        """Stop it and remove what it wrote (and its temporary directory, unless a
        directory took that over)."""
        self.child.stop()
        with contextlib.suppress(BuildFailed):
            self.child.report(timeout=CHILD_STOP_TIMEOUT)
        self.child.out.unlink(missing_ok=True)
        if self.own_workdir and remove_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)


#: How long a stopped child may take to go.
CHILD_STOP_TIMEOUT = 10.0
_early: EarlyBuild | None = None


def start_early(settings: DirectorySettings) -> None:
    """Start reading the sources now, in the builder child, while the milter is still
    importing its modules and connecting to its stores: on two cores the two overlap,
    and the milter answers that much sooner. The directory of the same settings takes
    it over (:func:`take_early`); one never taken is stopped at exit. Nothing starts
    when a kept snapshot of these sources lets the milter answer at once anyway."""
    global _early
    if _early is not None or not settings.has_sources:
        return
    state = state_directory(settings)
    try:
        if state is not None:
            kept = kept_snapshot(settings, state)
            if kept is not None:
                kept.close()
                return
            state.mkdir(parents=True, exist_ok=True)
            workdir, own = state, False
        else:
            workdir, own = Path(tempfile.mkdtemp(prefix="sendwarden-directory-")), True
    except OSError:
        return  # the milter's own start reports it
    out = workdir / f"snapshot-{os.getpid()}-early.db"
    _early = EarlyBuild(settings, workdir, own, BuildChild(settings, out, None))
    atexit.register(_discard_early)


def start_early_from(config_path: str | Path) -> None:
    """:func:`start_early` on the ``[directory]`` of the config file alone, before the
    rest of it is read and checked: the milter (or proxy) then takes the build over
    if its settings are the ones the whole file gives (:func:`take_early`), and
    stops it otherwise. Nothing starts when that section cannot be read."""
    settings = load_directory_settings(config_path)
    if settings is not None:
        start_early(settings)


def take_early(settings: DirectorySettings) -> EarlyBuild | None:
    """The build :func:`start_early` started for these settings, now the caller's."""
    global _early
    early, _early = _early, None
    if early is not None and early.settings != settings:
        early.discard()
        return None
    return early


def _discard_early() -> None:
    global _early
    early, _early = _early, None
    if early is not None:
        early.discard()


def _report_from_json(document: dict[str, Any]) -> BuildReport:
    from sendwarden.directory.snapshot import BuildReport, Conflict

    conflicts = [
        Conflict(c["kind"], c["key"], tuple(c["claimants"]), c["kept"])
        for c in document.pop("conflicts")
    ]
    return BuildReport(**document, conflicts=conflicts)
