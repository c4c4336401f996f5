"""Reading the provider's sources into :class:`SourceData`: plain claims with the line or
row they came from, validated, with every bad line named. No decision is made here."""

from __future__ import annotations

import operator
import os
import pwd
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from itertools import compress, count
from pathlib import Path
from typing import Any, overload

from sendwarden.addresses import normalise_domain

#: What a source reports its places as ("line 12", "row 7").
LINE = "line"
ROW = "row"
#: Most bad lines one error message lists (the count says how many there were).
MAX_LISTED_PROBLEMS = 10
#: Characters an account id may not hold: whitespace and controls would make logs and
#: replies ambiguous, braces would break the Redis Cluster hash tag of its keys.
_FORBIDDEN_ID_CHARACTERS = frozenset("{}:#\"'\\")
#: Printable ASCII without space and the characters above, at most 255 of them.
_PLAIN_ID = re.compile(r"[!$%&()*+,\-./0-9;<=>?@A-Z\[\]^_`a-z|~]{1,255}")
#: A lower-case ASCII domain whose labels are 1 to 63 characters long.
_PLAIN_DOMAIN = re.compile(r"(?:[a-z0-9_-]{1,63}\.)*[a-z0-9_-]{1,63}")
#: The characters of its labels.
_LABEL_CHARACTERS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_-")


class SourceError(Exception):
    """A source could not be read, or is malformed; the message says where and why."""


@dataclass(slots=True)
class SourceData:
    """Everything one source claims, in the order it claims it.

    Each claim is ``(identity, account id, place)``; ``place`` is the line or row number
    (``where`` says which). Settings are per account id.
    """

    source: str  # "domain_map", "sql", "system_users"
    label: str  # the file, or the database without its password
    where: str = LINE
    accounts: dict[str, int] = field(default_factory=dict)  # id -> first line/row
    domains: Sequence[tuple[str, str, int]] = field(default_factory=list)
    logins: Sequence[tuple[str, str, int]] = field(default_factory=list)
    system_users: list[tuple[str, str, int]] = field(default_factory=list)  # Unix user name
    uids: list[tuple[int, str, int]] = field(default_factory=list)
    limits: dict[str, int] = field(default_factory=dict)
    allow_subdomains: dict[str, bool] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # lines skipped on purpose, and why

    def account(self, account_id: str, place: int) -> None:
        self.accounts.setdefault(account_id, place)


class ClaimColumns(Sequence[tuple[str, str, int]]):
    """Claims kept as the three columns the column-by-column SQL reading finds them in
    (identities, account ids, rows): the merge takes the columns as they are, rather
    than a tuple made for each claim only to be taken apart again (a fifth of a second
    at 750,000 rows). Reads as the list of ``(identity, account, place)`` it stands for."""

    __slots__ = ("accounts", "identities", "places")

    def __init__(self, identities: list[str], accounts: list[str], places: list[int]) -> None:
        if not len(identities) == len(accounts) == len(places):
            raise ValueError("claim columns of different lengths")
        self.identities = identities
        self.accounts = accounts
        self.places = places

    def __len__(self) -> int:
        return len(self.places)

    @overload
    def __getitem__(self, index: int) -> tuple[str, str, int]: ...
    @overload
    def __getitem__(self, index: slice) -> list[tuple[str, str, int]]: ...
    def __getitem__(self, index: int | slice) -> tuple[str, str, int] | list[tuple[str, str, int]]:
        if isinstance(index, slice):
            return list(self)[index]
        return self.identities[index], self.accounts[index], self.places[index]

    def __iter__(self) -> Iterator[tuple[str, str, int]]:
        return zip(self.identities, self.accounts, self.places, strict=True)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Sequence) and not isinstance(other, str):
            return list(self) == list(other)
        return NotImplemented

    def __repr__(self) -> str:
        return f"ClaimColumns({list(self)!r})"


def claim_columns(
    claimed: Sequence[tuple[Any, str, int]],
) -> tuple[Sequence[Any], Sequence[str], Sequence[int]]:
    """A source's claims as three columns: identities, account ids, places."""
    if isinstance(claimed, ClaimColumns):
        return claimed.identities, claimed.accounts, claimed.places
    if not claimed:
        return (), (), ()
    identities, accounts, places = zip(*claimed, strict=True)
    return identities, accounts, places


def check_account_id(text: str) -> str:
    """An account id as a source writes it; ValueError says what is wrong with it."""
    account = text.strip()
    if _PLAIN_ID.fullmatch(account):  # the usual case, without looking at each character
        return account
    if not account:
        raise ValueError("empty account name")
    if len(account) > 255:
        raise ValueError("account name longer than 255 characters")
    bad = [
        c for c in account if c.isspace() or not c.isprintable() or c in _FORBIDDEN_ID_CHARACTERS
    ]
    if bad:
        raise ValueError(f"account name {account!r} holds the character {bad[0]!r}")
    return account


def problems_error(label: str, problems: list[str], noun: str = LINE) -> SourceError:
    """One error naming the first bad lines (or rows), and how many there were in all."""
    shown = problems[:MAX_LISTED_PROBLEMS]
    more = len(problems) - len(shown)
    tail = f"; and {more} more" if more > 0 else ""
    return SourceError(f"{label}: {len(problems)} bad {noun}(s): {'; '.join(shown)}{tail}")


# -- domain_map: "domain: account" lines ---------------------------------------------


def parse_domain_map(text: str, label: str) -> SourceData:
    """``domain: account`` lines (cPanel ``/etc/userdomains``, DirectAdmin
    ``/etc/virtual/domainowners``). ``#`` comments and blank lines are allowed; cPanel's
    catch-all ``*: nobody`` owns no domain and is skipped. A file whose last line has no
    newline was caught half-written and is refused, as is any bad line."""
    data = SourceData("domain_map", label, LINE)
    if text and not text.endswith("\n"):
        raise SourceError(
            f"{label}: the last line has no newline: the file is incomplete "
            "(being written, or truncated); the directory is kept as it was"
        )
    # One match per line (and an empty one after the last newline): a plain line's
    # domain and account, already valid; any other line whole, for parse_map_line.
    lines = _PLAIN_MAP_LINE.findall(text)[:-1] if text else []
    domain_of = list(map(_FIRST, lines))
    claims = list(compress(zip(domain_of, map(_SECOND, lines), count(1)), domain_of))
    problems: list[str] = []
    odd = []
    for number in compress(count(1), map(operator.not_, domain_of)):  # usually few
        try:
            pair = parse_map_line(lines[number - 1][2])
        except ValueError as error:
            problems.append(f"line {number}: {error}")
            continue
        if pair is None:
            continue  # blank or comment
        if pair[0] == "*":
            data.notes.append(f"line {number}: the catch-all '*' owns no domain; skipped")
            continue
        odd.append((*pair, number))
    if problems:
        raise problems_error(label, problems)
    if odd:
        claims = sorted(claims + odd, key=_THIRD)  # back in line order
    data.domains = claims
    first_line = data.accounts
    for _domain_name, account, number in claims:
        first_line.setdefault(account, number)
    return data


_FIRST, _SECOND, _THIRD = (operator.itemgetter(index) for index in range(3))


def parse_map_line(raw: str) -> tuple[str, str] | None:
    """One line of a domain map: ``(domain, account)``, ``("*", account)`` for the
    catch-all (its account unchecked: it owns nothing), or None for a blank line or a
    comment; ValueError says what is wrong."""
    match = _MAP_LINE.fullmatch(raw)
    if match is None:
        problem = _map_line_problem(raw)
        if problem is None:
            return None  # a catch-all written oddly: it owns nothing either
        raise ValueError(problem)
    domain_text, account_text = match.groups()
    if domain_text is None:
        return None
    if domain_text == "*":
        return "*", account_text
    return _domain(domain_text.lower()), check_account_id(account_text)


#: A well-formed ``domain: account`` line, a comment or a blank line (groups: None).
_MAP_LINE = re.compile(r"[ \t]*(?:([^\s#:]+)[ \t]*:[ \t]*([^\s#:]+)[ \t]*)?(?:#.*)?\r?")
#: Every line of a map: either plain (a lower-case ASCII domain and a plain account id,
#: which parse_map_line would give back as they are) or anything else, whole.
_PLAIN_MAP_LINE = re.compile(
    rf"^(?:[ \t]*({_PLAIN_DOMAIN.pattern})[ \t]*:[ \t]*({_PLAIN_ID.pattern})[ \t]*$|(.*)$)",
    re.MULTILINE,
)


def _map_line_problem(raw: str) -> str | None:
    """Why a line is not ``domain: account`` (None: it is one after all)."""
    line = raw.partition("#")[0].strip()
    domain_text, colon, account_text = line.partition(":")
    if not colon:
        return f"expected 'domain: account', got {_excerpt(raw)}"
    if domain_text.strip() == "*":
        return None
    try:
        check_account_id(account_text)
        _domain(domain_text.strip())
    except ValueError as error:
        return str(error)
    return f"expected one 'domain: account' pair, got {_excerpt(raw)}"


def _domain(text: str) -> str:
    if _PLAIN_DOMAIN.fullmatch(text):  # the usual case: already normalised
        return text
    if not text or "@" in text or any(c.isspace() or not c.isprintable() for c in text):
        raise ValueError(f"{text!r} is not a domain name")
    return normalise_domain(text)


def _excerpt(text: str, limit: int = 60) -> str:
    flat = text.strip()
    return repr(flat if len(flat) <= limit else flat[: limit - 3] + "...")


@dataclass(frozen=True)
class FileSignature:
    """What changes when a file is rewritten, replaced or appended to."""

    inode: int
    size: int
    mtime_ns: int
    ctime_ns: int

    @classmethod
    def of(cls, stat: os.stat_result) -> FileSignature:
        return cls(stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)


def file_signature(path: str) -> FileSignature | None:
    try:
        return FileSignature.of(os.stat(path))
    except OSError:
        return None


def read_whole(path: str) -> str:
    """The file's text in one piece: refused when it changed while being read (a writer
    is at work; the next refresh reads it again)."""
    try:
        with open(path, "rb") as handle:
            before = FileSignature.of(os.fstat(handle.fileno()))
            content = handle.read()
            after = FileSignature.of(os.fstat(handle.fileno()))
    except OSError as error:
        raise SourceError(f"{path}: cannot read: {error.strerror}") from None
    if before != after or len(content) != after.size:
        raise SourceError(f"{path}: changed while being read; read again at the next refresh")
    try:
        return content.decode("utf-8")
    except UnicodeDecodeError as error:
        line = content[: error.start].count(b"\n") + 1
        raise SourceError(f"{path}: line {line}: not UTF-8 text") from None


def read_domain_map(path: str) -> SourceData:
    return parse_domain_map(read_whole(path), str(Path(path)))


# -- system_users: the password database -----------------------------------------------


def read_system_users() -> dict[int, str]:
    """uid -> Unix user name, from the password database (files, and any NSS source
    that enumerates). The first name listed for a uid wins, as getpwuid() answers."""
    users: dict[int, str] = {}
    try:
        entries = pwd.getpwall()
    except OSError as error:  # pragma: no cover - NSS failures are rare
        raise SourceError(f"password database: {error}") from None
    for entry in entries:
        users.setdefault(entry.pw_uid, entry.pw_name)
    return users


PASSWD_FILE = "/etc/passwd"
