"""Reading every source and writing a snapshot: in-process for the CLI, and as a child
process for the milter (``python -m sendwarden.directory.build``, the settings as JSON
on stdin, the report as JSON on stdout), so the milter's interpreter never runs it."""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from sendwarden.config import DirectorySettings
from sendwarden.directory.snapshot import BuildReport, Conflict, Snapshot, write_snapshot
from sendwarden.directory.sources import SourceData, SourceError, read_domain_map, read_system_users
from sendwarden.directory.sql import read_sql


def read_sources(settings: DirectorySettings) -> list[SourceData]:
    """Each configured file and query, read whole and validated (SourceError if not)."""
    sources = []
    if settings.domain_map:
        sources.append(read_domain_map(settings.domain_map))
    if settings.sql_url:
        password = None
        if settings.sql_password_file:
            try:
                password = Path(settings.sql_password_file).read_text().strip()
            except OSError as error:
                raise SourceError(
                    f"directory.sql_password_file {settings.sql_password_file}: {error.strerror}"
                ) from None
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
    settings: DirectorySettings, out: str | Path, previous: str | Path | None = None
) -> BuildReport:
    """Read the sources and write the snapshot ``out``; SourceError leaves no file."""
    with _no_cycle_collection():
        sources = read_sources(settings)
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


def build_in_child(
    settings: DirectorySettings,
    out: str | Path,
    previous: str | Path | None,
    timeout: float,
    started: Callable[[subprocess.Popen[bytes]], None] | None = None,
) -> BuildReport:
    """:func:`build` in a child process at lower priority: its parsing never holds the
    milter's interpreter lock, and its garbage is not the milter's memory. ``started``
    is given the child (so a shutdown can stop it)."""
    request = {
        "settings": dataclasses.asdict(settings),
        "out": str(out),
        "previous": previous and str(previous),
    }
    with subprocess.Popen(
        [sys.executable, "-m", "sendwarden.directory.build"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as child:
        if started is not None:
            started(child)
        try:
            stdout, stderr = child.communicate(json.dumps(request).encode(), timeout=timeout)
        except subprocess.TimeoutExpired:
            child.kill()
            child.communicate()
            raise BuildFailed(f"reading the directory sources took over {timeout:.0f}s") from None
    try:
        answer = json.loads(stdout.decode() or "{}")
    except ValueError:
        answer = {}
    if child.returncode != 0 or "error" in answer or "report" not in answer:
        reason = answer.get("error") or stderr.decode(errors="replace").strip()[-2000:]
        raise BuildFailed(reason or f"the directory builder exited with {child.returncode}")
    return _report_from_json(answer["report"])


def _report_from_json(document: dict[str, Any]) -> BuildReport:
    conflicts = [
        Conflict(c["kind"], c["key"], tuple(c["claimants"]), c["kept"])
        for c in document.pop("conflicts")
    ]
    return BuildReport(**document, conflicts=conflicts)


def main() -> int:
    with contextlib.suppress(OSError):
        os.nice(10)  # the milter's decisions come first
    request = json.loads(sys.stdin.read())
    settings = DirectorySettings(**request["settings"])
    try:
        report = build(settings, request["out"], request.get("previous"))
    except SourceError as error:
        print(json.dumps({"error": str(error)}))
        return 1
    print(json.dumps({"report": dataclasses.asdict(report)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
