"""Opening the consent ledger: the backend is chosen by URL.

``sqlite:////abs/path.db`` (or ``sqlite:///relative.db``) is the embedded default
(``sqlite:///:memory:`` is a private in-memory ledger, for tests);
``postgresql://user@host/db`` lets several MTA hosts share one ledger. Backends are
imported only when chosen, so reading a config never loads a database driver.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Literal

from sendwarden.consent.model import ConsentStore

if TYPE_CHECKING:
    from sendwarden.config import ConsentSettings

Dialect = Literal["sqlite", "postgresql"]
DEFAULT_TIMEOUT_MS = 1000


def parse_database_url(url: str) -> tuple[Dialect, str]:
    """``(dialect, target)``: a SQLite file path or a PostgreSQL conninfo URL.
    ValueError says what a valid URL looks like."""
    if url.startswith("sqlite:"):
        if not url.startswith("sqlite:///"):
            raise ValueError(f"{url!r}: write sqlite:////absolute/path.db (four slashes)")
        path = url.removeprefix("sqlite:///")
        if not path or path.endswith("/") or "?" in path:
            raise ValueError(
                f"{url!r}: needs a database file path, e.g. sqlite:////var/lib/sendwarden/consent.db"
            )
        if path != ":memory:" and not path.startswith("/"):
            # Relative to whatever directory the service happens to start in: the milter
            # and the CLI would silently use two different ledgers.
            raise ValueError(
                f"{url!r}: {path!r} is a relative path; write the absolute path with four "
                f"slashes, e.g. sqlite:////var/lib/sendwarden/{path.rpartition('/')[2]}"
            )
        return "sqlite", path
    if url.startswith(("postgresql://", "postgres://")):
        return "postgresql", url
    raise ValueError(
        f"{url!r}: unknown database URL (use sqlite:////path/to/consent.db or postgresql://...)"
    )


def open_consent_store(
    url: str,
    *,
    timeout_ms: int = DEFAULT_TIMEOUT_MS,
    clock: Callable[[], datetime] | None = None,
    pool_size: int = 8,
    migrate: bool = True,
) -> ConsentStore:
    """The ledger at ``url``, its schema brought up to date unless ``migrate=False``.
    Raises StoreError when the database cannot be reached, ValueError for a bad URL."""
    dialect, target = parse_database_url(url)
    if dialect == "sqlite":
        from sendwarden.consent.sqlite import SQLiteConsentStore

        return SQLiteConsentStore(
            target, timeout_ms=timeout_ms, clock=clock, pool_size=pool_size, migrate=migrate
        )
    from sendwarden.consent.postgres import PostgresConsentStore

    return PostgresConsentStore(
        target, timeout_ms=timeout_ms, clock=clock, pool_size=pool_size, migrate=migrate
    )


def open_from_settings(
    settings: ConsentSettings, *, clock: Callable[[], datetime] | None = None
) -> ConsentStore:
    """The ledger a config's ``[consent]`` section names."""
    return open_consent_store(settings.database, timeout_ms=settings.timeout_ms, clock=clock)
