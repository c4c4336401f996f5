"""Headers only the provider's own servers may write, arriving from a client.

A ``Received:`` line naming one of the provider's MTAs, an ``Authentication-Results:``
in the provider's name (its authserv-id), or one of sendwarden's own ``X-Sendwarden-*``
headers makes a message look checked or relayed by the provider when it was not.

Postfix does not show its own ``Received:`` header to milters, but other MTAs
(Sendmail) do; the MTA's own header is recognised by the queue id it carries, which
a client cannot know in advance.

Header values are read with the full RFC 5322 comment grammar (nested comments,
quoted pairs, quoted strings, folding): ``by (x (y)) mta.provider.example`` names
the provider's host, and so does a host in any comment, such as the TCP-info
``(mta.provider.example [192.0.2.1])`` (the worse reading for a forger).
"""

from __future__ import annotations

import itertools
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from enum import StrEnum

from sendwarden.addresses import normalise_domain
from sendwarden.policy.facts import Transaction
from sendwarden.policy.rfc5322 import Kind, Token, comments, tokens, without_comments
from sendwarden.policy.verdict import Verdict, account_label, reject

RULE = "forged-header"
OWN_HEADER_PREFIX = "x-sendwarden"
#: What sendwarden's own alert mail carries; accepted only with the alert service's login.
ALERT_HEADER = "X-Sendwarden-Alert"

_HOST_KEYWORDS = frozenset({"from", "by"})  # RFC 5321 4.4: the clauses naming a host
_VALUES = (Kind.ATOM, Kind.QUOTED)


class ForgedKind(StrEnum):
    RECEIVED = "received"
    AUTHENTICATION_RESULTS = "authentication-results"
    OWN = "own"


@dataclass(frozen=True, slots=True)
class ForgedHeader:
    """One forged header: its name as written, its 1-based index among the headers of
    that name (what smfi_chgheader wants), what it is, and the host or id it claims."""

    name: str
    index: int
    kind: ForgedKind
    claim: str


def find_forged_headers(
    headers: Sequence[tuple[str, str]],
    *,
    provider_hostnames: Collection[str],
    authserv_ids: Collection[str],
    queue_id: str = "",
) -> list[ForgedHeader]:
    """Every header in the list that only the provider's servers may have written."""
    hostnames = frozenset(provider_hostnames)
    server_ids = frozenset(server_id.casefold() for server_id in authserv_ids)
    seen: dict[str, int] = {}
    forged: list[ForgedHeader] = []
    for name, value in headers:
        lowered = name.strip().lower()  # "X-Sendwarden-Verdict :" is the same header
        index = seen[lowered] = seen.get(lowered, 0) + 1
        if lowered.startswith(OWN_HEADER_PREFIX):
            forged.append(ForgedHeader(name, index, ForgedKind.OWN, name))
        elif lowered == "received" and hostnames:
            host = _claimed_provider_host(value, hostnames)
            if host and not _is_mtas_own(value, queue_id):
                forged.append(ForgedHeader(name, index, ForgedKind.RECEIVED, host))
        elif lowered == "authentication-results" and server_ids:
            server_id = authserv_id_of(value)
            if server_id and server_id.casefold() in server_ids:
                forged.append(
                    ForgedHeader(name, index, ForgedKind.AUTHENTICATION_RESULTS, server_id)
                )
    return forged


def authserv_ids(authserv_id: str, provider_hostnames: Collection[str]) -> tuple[str, ...]:
    """The ids an Authentication-Results header may not claim: the configured
    authserv-id, and the provider's host names (the usual default authserv-id)."""
    return tuple(filter(None, (authserv_id, *provider_hostnames)))


def forged_header_verdict(txn: Transaction, forged: ForgedHeader) -> Verdict:
    """550 5.7.1 at end of message for a forged provider header."""
    what = {
        ForgedKind.RECEIVED: (
            f"a {forged.name} header claiming the message passed through this provider's "
            f"server {forged.claim}"
        ),
        ForgedKind.AUTHENTICATION_RESULTS: (
            f"an {forged.name} header in the name of this provider's checks "
            f"(authserv-id {forged.claim})"
        ),
        ForgedKind.OWN: f"a {forged.name} header, which only this provider's filter may add",
    }[forged.kind]
    return reject(
        RULE,
        "550",
        "5.7.1",
        f"Forged header refused for {account_label(txn.account_id)}: the message carries "
        f"{what}: {forged.name} header number {forged.index}. Only the provider's servers "
        "write these headers; remove it and send again.",
    )


def headers_after_removal(
    headers: Sequence[tuple[str, str]], removed: Collection[tuple[str, int]]
) -> list[tuple[str, str]]:
    """The header list without the (name, 1-based index) pairs a check removes."""
    gone = {(name.lower(), index) for name, index in removed}
    seen: dict[str, int] = {}
    kept: list[tuple[str, str]] = []
    for name, value in headers:
        lowered = name.strip().lower()  # "X-Sendwarden-Verdict :" is the same header
        seen[lowered] = seen.get(lowered, 0) + 1
        if (lowered, seen[lowered]) not in gone:
            kept.append((name, value))
    return kept


def authserv_id_of(value: str) -> str:
    """The authserv-id of an Authentication-Results value (RFC 8601 2.2): its first
    value (a token or a quoted string) after any comments; '' when there is none."""
    meaningful = without_comments(value)
    if meaningful and meaningful[0].kind in _VALUES:
        return meaningful[0].text.strip()
    return ""


def _claimed_provider_host(value: str, hostnames: frozenset[str]) -> str | None:
    """A provider host the Received value names: after "from" or "by" (comments in
    between skipped), or anywhere in a comment (TCP-info, nested or not)."""
    meaningful = without_comments(value)
    candidates = [
        token.text
        for keyword, token in itertools.pairwise(meaningful)
        if _is_keyword(keyword, _HOST_KEYWORDS) and token.kind is Kind.ATOM
    ]
    candidates += [
        token.text
        for comment in comments(value)
        for token in tokens(comment)
        if token.kind is Kind.ATOM
    ]
    for candidate in candidates:
        try:
            host = normalise_domain(candidate.strip(".,"))
        except ValueError:
            continue
        if host in hostnames:
            return host
    return None


def _is_keyword(token: Token, keywords: Collection[str]) -> bool:
    return token.kind is Kind.ATOM and token.text.lower() in keywords


def _is_mtas_own(value: str, queue_id: str) -> bool:
    """The MTA's own Received line names this transaction's queue id ("id QUEUEID")."""
    if not queue_id:
        return False
    meaningful = [token for token in without_comments(value) if token.text not in "<>"]
    return any(
        _is_keyword(keyword, ("id",)) and token.kind in _VALUES and token.text == queue_id
        for keyword, token in itertools.pairwise(meaningful)
    )
