"""The SQL source: one query against the provider's database (PostgreSQL with psycopg,
MySQL/MariaDB with PyMySQL, SQLite with the standard library) returning accounts with
their domains, logins and settings.

The query's columns are named: ``account`` (required) and any of ``domain``, ``login``,
``system_user``, ``uid``, ``recipients_per_hour``, ``allow_subdomains``. Each row adds
what its non-NULL columns say to its account, so one query can be a ``UNION ALL`` of
domains, logins and settings (docs/directory.md has Plesk's ``psa`` as an example).
"""

from __future__ import annotations

import importlib
import operator
import re
import sqlite3
import threading
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from itertools import compress, repeat
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

from sendwarden.directory.sources import (
    _LABEL_CHARACTERS,
    _PLAIN_ID,
    ROW,
    ClaimColumns,
    SourceData,
    SourceError,
    _domain,
    check_account_id,
    problems_error,
)

Dialect = Literal["postgresql", "mysql", "sqlite"]
COLUMNS = frozenset(
    {"account", "domain", "login", "system_user", "uid", "recipients_per_hour", "allow_subdomains"}
)
_SCHEMES: dict[str, Dialect] = {
    "postgresql": "postgresql",
    "postgres": "postgresql",
    "mysql": "mysql",
    "mariadb": "mysql",
    "sqlite": "sqlite",
}
_TRUE = frozenset({"1", "true", "yes", "on", "t", "y"})
_FALSE = frozenset({"0", "false", "no", "off", "f", "n", ""})
FETCH_ROWS = 5000


def parse_sql_url(url: str) -> Dialect:
    """The dialect of a ``[directory] sql_url``; ValueError says what a valid one is."""
    scheme = url.partition("://")[0].lower()
    dialect = _SCHEMES.get(scheme)
    if dialect is None or "://" not in url:
        raise ValueError(
            f"{redacted(url)!r}: expected postgresql://USER@HOST/DB, mysql://USER@HOST/DB "
            "(MariaDB too) or sqlite:////path/to/file.db"
        )
    if dialect == "sqlite" and not url.startswith("sqlite:///"):
        raise ValueError(f"{url!r}: write sqlite:////absolute/path.db (four slashes)")
    return dialect


def redacted(url: str) -> str:
    """The URL without its password, for logs and ``account show``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


def read_sql(
    url: str, query: str, *, password: str | None = None, timeout_ms: int = 30000
) -> SourceData:
    """Run the query and turn its rows into claims; SourceError names the bad rows."""
    dialect, label = _checked(url, query)
    return _claims_of(label, lambda: _RUNNERS[dialect](url, query, password, timeout_ms))


def start_sql(
    url: str, query: str, *, password: str | None = None, timeout_ms: int = 30000
) -> Callable[[], SourceData]:
    """The query sent now, in a thread, while the caller does something else (the
    builder child imports its modules): the database works meanwhile. The function
    returned waits for the rows and reads them as :func:`read_sql` does, with the
    same errors, raised only then."""
    try:
        dialect, label = _checked(url, query)
    except (ValueError, SourceError):
        return lambda: read_sql(url, query, password=password, timeout_ms=timeout_ms)
    # The driver imported here, not in the thread: two threads importing at once could
    # meet a module the other has only half imported.
    importlib.import_module(_DRIVERS[dialect])
    outcome: list[Result | Exception] = []

    def fetch() -> None:
        try:
            outcome.append(_RUNNERS[dialect](url, query, password, timeout_ms))
        except Exception as error:  # raised in the caller's thread, by result()
            outcome.append(error)

    # A daemon: a build that fails first (on another source) does not wait for it.
    thread = threading.Thread(target=fetch, name="sql source", daemon=True)
    thread.start()

    def result() -> Result:
        thread.join()
        if isinstance(outcome[0], Exception):
            raise outcome[0]
        return outcome[0]

    return lambda: _claims_of(label, result)


def sql_password(path: str) -> str | None:
    """The password in ``directory.sql_password_file`` (None: no file is set)."""
    if not path:
        return None
    try:
        return Path(path).read_text().strip()
    except OSError as error:
        raise SourceError(f"directory.sql_password_file {path}: {error.strerror}") from None


def _checked(url: str, query: str) -> tuple[Dialect, str]:
    """The dialect and the source's label (ValueError: a bad URL; SourceError: no query)."""
    dialect = parse_sql_url(url)
    label = f"sql {redacted(url)}"
    if not query.strip():
        raise SourceError(f"{label}: directory.sql_query is empty")
    return dialect, label


def _claims_of(label: str, rows_of: Callable[[], Result]) -> SourceData:
    try:
        columns, rows = rows_of()
        return rows_to_data(label, columns, rows)
    except SourceError:
        raise
    except Exception as error:  # every driver has its own error classes
        raise SourceError(f"{label}: {type(error).__name__}: {error}") from None


def rows_to_data(
    label: str, columns: Sequence[str], rows: Iterable[Sequence[Any]] | Columns
) -> SourceData:
    """The rows' claims: read column by column when every value is plain (the usual
    big query), else row by row, naming each bad row; both read alike (a property
    test holds them equal). ``rows`` may come as their columns (:class:`Columns`)."""
    position = _positions(label, columns)
    given: Columns | list[Sequence[Any]] = rows if isinstance(rows, Columns | list) else list(rows)
    if set(position) <= _PLAIN_COLUMNS:
        if isinstance(given, Columns):
            values = given.values
        else:  # (only the plain columns, renumbered)
            values = [list(map(operator.itemgetter(at), given)) for at in position.values()]
            position = {name: at for at, name in enumerate(position)}
        plain = _plain_rows(
            label, values, position["account"], position.get("domain"), position.get("login")
        )
        if plain is not None:
            return plain
    return rows_one_by_one(label, columns, given.rows() if isinstance(given, Columns) else given)


@dataclass(frozen=True, slots=True)
class Columns:
    """A result as its columns, one list of values each, all one length: a PostgreSQL
    result read as arrays (:func:`_as_arrays`), with no tuple made per row."""

    values: list[list[Any]]

    def rows(self) -> list[tuple[Any, ...]]:
        return list(zip(*self.values, strict=True))


def _positions(label: str, columns: Sequence[str]) -> dict[str, int]:
    names = [name.lower() for name in columns]
    unknown = [name for name in names if name not in COLUMNS]
    if unknown or "account" not in names:
        raise SourceError(
            f"{label}: the query must return a column named 'account' and only these "
            f"columns: {', '.join(sorted(COLUMNS))} (got {', '.join(names)})"
        )
    return {name: index for index, name in enumerate(names)}


def _source_data(label: str) -> SourceData:
    """Where the claims come from: errors are labelled "sql URL", and an origin names
    its source itself ("sql URL row N", not "sql sql URL row N")."""
    return SourceData("sql", label.removeprefix("sql "), ROW)


def rows_one_by_one(
    label: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]
) -> SourceData:
    """The rows' claims, read a row at a time; SourceError names the bad rows."""
    position = _positions(label, columns)
    i_account = position["account"]
    i_domain = position.get("domain")
    i_login = position.get("login")
    i_user = position.get("system_user")
    i_uid = position.get("uid")
    i_limit = position.get("recipients_per_hour")
    i_sub = position.get("allow_subdomains")
    data = _source_data(label)
    domains: list[tuple[str, str, int]] = []
    logins: list[tuple[str, str, int]] = []
    problems: list[str] = []
    for number, row in enumerate(rows, start=1):
        try:
            raw_account = row[i_account]
            if raw_account is None:
                raise ValueError("account is NULL")
            account = check_account_id(str(raw_account))
            data.account(account, number)
            if i_domain is not None and (value := row[i_domain]) is not None:
                domains.append((_domain(str(value)), account, number))
            if i_login is not None and (value := row[i_login]) is not None:
                login = str(value).strip()
                if not login:
                    raise ValueError("empty login")
                if not login.isprintable():  # (one line per login where it is kept)
                    raise ValueError(f"login {login!r} holds a character that does not print")
                logins.append((login, account, number))
            if i_user is not None and (value := row[i_user]) is not None:
                data.system_users.append((str(value).strip(), account, number))
            if i_uid is not None and (value := row[i_uid]) is not None:
                data.uids.append((_whole(value, "uid", minimum=0), account, number))
            if i_limit is not None and (value := row[i_limit]) is not None:
                _setting(data.limits, account, _whole(value, "recipients_per_hour", minimum=1))
            if i_sub is not None and (value := row[i_sub]) is not None:
                _setting(data.allow_subdomains, account, _boolean(value))
        except ValueError as error:
            problems.append(f"row {number}: {error}")
    if problems:
        raise problems_error(label, problems, ROW)
    data.domains = domains
    data.logins = logins
    return data


#: Columns a query of only accounts, domains and logins returns (the usual big one).
_PLAIN_COLUMNS = frozenset({"account", "domain", "login"})
#: Plain account ids and plain lower-case ASCII domains, one a line.
_PLAIN_IDS = re.compile(rf"(?:{_PLAIN_ID.pattern}\n)*{_PLAIN_ID.pattern}")
#: What :func:`_plain_domains` makes of each byte: a character of a plain domain's
#: label "a", a dot or line break ".", anything else "#".
_DOMAIN_SHAPE = bytes(
    ord("a") if chr(code) in _LABEL_CHARACTERS else ord(".") if chr(code) in ".\n" else ord("#")
    for code in range(256)
)


def _plain_domains(joined: str) -> bool:
    """Whether every line of ``joined`` is a plain domain (``_PLAIN_DOMAIN``: dotted
    labels of 1 to 63 lower-case ASCII letters, digits, "_" or "-"), told from its
    shape at C speed: 250,000 domains in 0.02 s, where one regular expression over
    them took 0.1 s (a property test holds the two equal)."""
    if not joined.isascii():
        return False
    shape = joined.encode("ascii").translate(_DOMAIN_SHAPE)
    return (
        bool(shape)
        and b"#" not in shape
        and b".." not in shape  # (an empty label or line)
        and not shape.startswith(b".")
        and not shape.endswith(b".")
        and b"a" * 64 not in shape  # (a label longer than 63)
    )


def _plain_rows(
    label: str,
    values: Sequence[list[Any]],
    i_account: int,
    i_domain: int | None,
    i_login: int | None,
) -> SourceData | None:
    """The rows (as their columns) read column by column at C speed, when every value
    is as the row-by-row reading would take it unchanged: every account a plain id,
    every domain plain lower-case ASCII, every login text with no space around it.
    None: anything else, left to the row-by-row reading, which names the bad rows."""
    accounts = values[i_account]
    if not accounts:
        return None
    numbers = range(1, len(accounts) + 1)
    first_row: dict[Any, int] = {}  # each account's first row, in the order of the rows
    data = _source_data(label)
    columns: dict[str, ClaimColumns] = {}
    try:
        deque(map(first_row.setdefault, accounts, numbers), maxlen=0)  # (TypeError: unhashable)
        ids = "\n".join(first_row)
        # (one line per account: an id holding a line break is not two plain ones)
        if ids.count("\n") != len(first_row) - 1 or not _PLAIN_IDS.fullmatch(ids):
            return None
        for kind, index in (("domains", i_domain), ("logins", i_login)):
            if index is None:
                continue
            column = values[index]
            given = list(map(operator.is_not, column, repeat(None)))
            present = list(compress(column, given))
            if kind == "domains" and present:
                joined = "\n".join(present)  # (TypeError for a value that is not text)
                # (one line per domain: a line break inside one is not two plain ones)
                if joined.count("\n") != len(present) - 1 or not _plain_domains(joined):
                    return None
            if kind == "logins" and not _stripped(present):
                return None
            columns[kind] = ClaimColumns(
                present, list(compress(accounts, given)), list(compress(numbers, given))
            )
    except TypeError:
        return None
    data.domains = columns.get("domains", [])
    data.logins = columns.get("logins", [])
    data.accounts = first_row
    return data


#: Whitespace other than a line break.
_SPACE = re.compile(r"[^\S\n]")
#: Whitespace but the line break, or a character that does not print (controls,
#: format characters, separators), in ASCII: the bytes to delete (deleting none
#: tells there is none).
_ASCII_ODD = bytes(
    code
    for code in range(128)
    if chr(code) != "\n" and (chr(code).isspace() or not chr(code).isprintable())
)


def _has_odd_character(joined: str) -> bool:
    """Whether the text holds whitespace other than a line break, or a character that
    does not print (ASCII text at C speed: a fifth of the time a regular expression
    takes)."""
    if joined.isascii():
        data = joined.encode("ascii")
        return len(data.translate(None, _ASCII_ODD)) != len(data)
    return _SPACE.search(joined) is not None or not joined.replace("\n", "").isprintable()


def _stripped(texts: list[Any]) -> bool:
    """Whether every value is text, not empty, with no whitespace around it and every
    character printable (TypeError for a value that is not text). Read as one text when
    it holds no whitespace or unprintable character but its line breaks, one for each
    join; else each value is looked at to tell."""
    joined = "\n".join(texts)
    if (
        joined
        and joined.count("\n") == len(texts) - 1
        and not _has_odd_character(joined)
        and not joined.startswith("\n")
        and not joined.endswith("\n")
        and "\n\n" not in joined
    ):
        return bool(texts)
    return (
        all(map(str.__eq__, texts, map(str.strip, texts)))
        and all(texts)
        and all(map(str.isprintable, texts))
    )


def _setting(settings: dict[str, Any], account: str, value: Any) -> None:
    """Rows that disagree about an account's setting: the stricter one holds (the lower
    limit; subdomains only if every row allows them)."""
    earlier = settings.get(account)
    settings[account] = value if earlier is None else min(earlier, value)


def _whole(value: Any, name: str, *, minimum: int) -> int:
    try:
        number = int(str(value).strip())
    except ValueError:
        raise ValueError(f"{name} {value!r} is not a whole number") from None
    if number < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {number}")
    return number


def _boolean(value: Any) -> bool:
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"allow_subdomains {value!r} is not a boolean (true/false, 1/0)")


# -- drivers --------------------------------------------------------------------------

Result = tuple[list[str], list[Sequence[Any]] | Columns]


def _postgresql(url: str, query: str, password: str | None, timeout_ms: int) -> Result:
    import psycopg
    from psycopg.conninfo import conninfo_to_dict

    ours = f"-c statement_timeout={timeout_ms} -c default_transaction_read_only=on"
    given = conninfo_to_dict(url).get("options")
    connection = psycopg.connect(
        url,
        connect_timeout=max(1, timeout_ms // 1000),
        options=f"{given} {ours}" if given else ours,
        **({"password": password} if password is not None else {}),  # type: ignore[arg-type]
    )
    try:
        arrays = _as_arrays(connection, query)
    except psycopg.errors.QueryCanceled:
        connection.close()
        raise  # (the statement timeout: running the query again would only wait as long)
    except psycopg.Error:
        arrays = None  # the query as it is says what is wrong with it, just below
    if arrays is not None:
        connection.close()
        return arrays
    try:
        connection.rollback()
    except BaseException:
        connection.close()
        raise
    return _fetch_all(connection, query)


#: PostgreSQL's text types (text, varchar): their arrays load as the values do.
_PG_TEXT_TYPES = frozenset({25, 1043})


def _as_arrays(connection: Any, query: str) -> Result | None:
    """The query's result as one array per column, when every column is text: one row
    of three arrays instead of 750,000 rows loaded value by value (half a second).
    Run without parallel workers, so the arrays hold the rows in the order the query
    alone gives them. None: not all text (the caller runs the query as it is)."""
    query = query.strip().rstrip(";")  # (a subquery has no semicolon)
    cursor = connection.cursor(binary=True)
    cursor.execute(f"SELECT * FROM (\n{query}\n) AS sendwarden_query LIMIT 0")
    described = cursor.description or ()
    if not described or any(column.type_code not in _PG_TEXT_TYPES for column in described):
        return None
    names = [str(column.name) for column in described]
    aliases = [f"c{at}" for at in range(len(names))]
    arrays = ", ".join(f"array_agg({alias})" for alias in aliases)
    cursor.execute("SET LOCAL max_parallel_workers_per_gather = 0")
    cursor.execute(f"SELECT {arrays} FROM (\n{query}\n) AS sendwarden_query ({', '.join(aliases)})")
    row = cursor.fetchone()
    if row is None or len(row) != len(names):
        return None
    if all(value is None for value in row):  # (no rows: array_agg gives NULL)
        return names, Columns([[] for _name in names])
    if any(not isinstance(value, list) for value in row) or len({len(v) for v in row}) != 1:
        return None
    return names, Columns(list(row))


def _mysql(url: str, query: str, password: str | None, timeout_ms: int) -> Result:
    import pymysql

    parts = urlsplit(url)
    seconds = max(1, timeout_ms // 1000)
    connection = pymysql.connect(
        host=parts.hostname or "localhost",
        port=parts.port or 3306,
        user=unquote(parts.username or ""),
        password=password if password is not None else unquote(parts.password or ""),
        database=unquote(parts.path.lstrip("/")),
        connect_timeout=seconds,
        read_timeout=seconds,
        charset="utf8mb4",
    )
    return _fetch_all(connection, query)


def _sqlite(url: str, query: str, password: str | None, timeout_ms: int) -> Result:
    path = url.removeprefix("sqlite:///")
    if not Path(path).exists():
        raise SourceError(f"sql {url}: no such database file")
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=timeout_ms / 1000)
    return _fetch_all(connection, query)


def _fetch_all(connection: Any, query: str) -> Result:
    """Every row, fetched in batches, then the connection closed."""
    try:
        cursor = connection.cursor()
        cursor.execute(query)
        columns = [str(description[0]) for description in cursor.description or ()]
        rows: list[Sequence[Any]] = []
        while batch := cursor.fetchmany(FETCH_ROWS):
            rows.extend(batch)
    finally:
        connection.close()
    return columns, rows


_RUNNERS = {"postgresql": _postgresql, "mysql": _mysql, "sqlite": _sqlite}
#: The module each runner imports (psycopg's own imports conninfo).
_DRIVERS = {"postgresql": "psycopg", "mysql": "pymysql", "sqlite": "sqlite3"}
