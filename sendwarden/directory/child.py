"""The builder child the milter starts (``python -m sendwarden.directory.child``): the
settings as JSON on stdin, the report as JSON on stdout (:class:`~.build.BuildChild`).

Its SQL query is sent before the builder's own modules are imported (ICU, the snapshot
writer: a tenth of a second), so that the database works while Python imports; this
module imports nothing slow before it."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sendwarden.directory.sources import SourceData, SourceError
from sendwarden.directory.sql import sql_password, start_sql

if TYPE_CHECKING:
    from sendwarden.directory.snapshot import BuildReport


def main() -> int:
    with contextlib.suppress(OSError):
        os.nice(10)  # the milter's decisions come first
    # Stopped (a shutdown): unwind, so that what was half written is removed.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    request = json.loads(sys.stdin.readline())
    sql = _sql_sent(request["settings"])
    from sendwarden.config import DirectorySettings  # after the query is sent
    from sendwarden.directory.build import build
    from sendwarden.policy import rendering  # noqa: F401 (ICU, for the look-alikes)

    settings = DirectorySettings(**request["settings"])
    try:
        report = build(
            settings, request["out"], request.get("previous"), _answer, sql, parallel=True
        )
    except SourceError as error:
        print(json.dumps({"error": str(error)}))
        return 1
    _answer(report)
    return 0


def _sql_sent(settings: dict[str, Any]) -> Callable[[], SourceData] | None:
    """The query sent now, if the settings have one; None leaves it to the build (and
    its errors, such as an unreadable password file, to the build's reading)."""
    if not settings.get("sql_url"):
        return None
    try:
        password = sql_password(settings.get("sql_password_file", ""))
    except SourceError:
        return None
    return start_sql(
        settings["sql_url"],
        settings.get("sql_query", ""),
        password=password,
        timeout_ms=settings["sql_timeout_ms"],
    )


def _answer(report: BuildReport) -> None:
    """The report, to the milter; then exit at once, leaving the build's millions of
    objects to the kernel: freeing them one by one takes a tenth of a second or more,
    and the milter waits for this process to end."""
    sys.stdout.write(json.dumps({"report": dataclasses.asdict(report)}) + "\n")
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
