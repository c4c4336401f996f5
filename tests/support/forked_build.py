"""A directory build with its forked part (``build(..., parallel=True)``, as the builder
child runs it) in a worker process of its own: a fork is only safe in a process with no
other threads, and a test run may have some. Start one worker per test module
(:func:`worker`) and hand it builds (:func:`build_forked`)."""

from __future__ import annotations

import multiprocessing
import sqlite3
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from sendwarden.directory.build import build
from sendwarden.directory.sources import SourceError


def worker() -> ProcessPoolExecutor:
    """One spawned process (single-threaded: the pool's threads are in this one)."""
    return ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))


def build_forked(settings: Any, out: Path, previous: Path | None) -> tuple[str, Any]:
    """``("report", BuildReport)``, or ``("error", message)`` for a SourceError."""
    try:
        return "report", build(settings, out, previous, parallel=True)
    except SourceError as error:
        return "error", str(error)


def snapshot_tables(path: Path) -> dict[str, list[tuple[object, ...]]]:
    """Every table of a snapshot, row by row in the order SQLite keeps them (but for
    the time it was built)."""
    with sqlite3.connect(path) as connection:
        names = [
            row[0]
            for row in connection.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name"
            )
        ]
        dump = {name: list(connection.execute(f"SELECT * FROM {name}")) for name in names}
    connection.close()
    dump["meta"] = [row for row in dump["meta"] if row[0] != "built"]
    return dump
