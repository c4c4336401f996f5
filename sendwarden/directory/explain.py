"""What ``sendwarden account show`` and ``account which`` print: where an account came
from and what it owns, and which account an identity would be attributed to, and why."""

from __future__ import annotations

import contextlib
import ipaddress
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from sendwarden.addresses import domain_of
from sendwarden.config import Account, ConfigError, Settings
from sendwarden.directory.build import build
from sendwarden.directory.live import DirectoryLookups
from sendwarden.directory.snapshot import Snapshot
from sendwarden.directory.sources import SourceError
from sendwarden.policy.accounts import (
    LOGIN_PREFIX,
    AccountDirectory,
    ConfiguredAccounts,
    is_listed,
    is_trusted,
)
from sendwarden.policy.facts import IPAddress

CONFIG = "[[accounts]] in the config"


def shown(text: str) -> str:
    """An identity as staff should read it: as is when every character prints, else
    quoted with escapes, so that a login holding a line break never reads as two."""
    return text if text.isprintable() else ascii(text)


@dataclass
class OpenDirectory:
    """The directory as the milter would build it now, with the means to explain it."""

    settings: Settings
    lookups: DirectoryLookups
    accounts: AccountDirectory

    @property
    def snapshot(self) -> Snapshot | None:
        return self.lookups.snapshot


@contextlib.contextmanager
def open_directory(settings: Settings) -> Iterator[OpenDirectory]:
    """Read the sources now (SourceError when one is bad) into a throw-away snapshot."""
    config = ConfiguredAccounts(settings.accounts)
    if not settings.directory.has_sources:
        lookups = DirectoryLookups(config, None)
        yield OpenDirectory(settings, lookups, AccountDirectory(settings.accounts))
        return
    workdir = Path(tempfile.mkdtemp(prefix="sendwarden-directory-"))
    snapshot: Snapshot | None = None
    try:
        build(settings.directory, workdir / "snapshot.db")
        snapshot = Snapshot(workdir / "snapshot.db")
        lookups = DirectoryLookups(config, snapshot)
        yield OpenDirectory(
            settings, lookups, AccountDirectory(settings.accounts, lookups=lambda: lookups)
        )
    finally:
        if snapshot is not None:
            snapshot.close()
        shutil.rmtree(workdir, ignore_errors=True)


def account_ids(settings: Settings) -> list[str]:
    """Every account id: the config's and the sources' (SourceError when one is bad)."""
    with open_directory(settings) as directory:
        return ids_in(directory)


def ids_in(directory: OpenDirectory) -> list[str]:
    """Every account id of an open directory: the config's and the sources'."""
    ids = dict.fromkeys(account.id for account in directory.settings.accounts)
    if directory.snapshot is not None:
        ids.update(dict.fromkeys(directory.snapshot.account_ids()))
    return list(ids)


def show_account(directory: OpenDirectory, account: Account) -> list[str]:
    """Where the account comes from and everything it owns, each with its source."""
    config = directory.lookups.config
    snapshot = directory.snapshot
    record = snapshot.record(account.id) if snapshot is not None else None
    override = config.get(account.id)
    lines = [f"account {shown(account.id)}"]
    if not is_listed(account):
        lines.append("  an unlisted proven sender: an account of its own at the default limits")
    if record is not None:
        lines.append(f"  from: {record.origin}")
        lines += [f"  also in: {origin}" for origin in record.also]
    if override is not None:
        written = ", ".join(sorted(override.keys_given - {"id"})) or "only its id"
        lines.append(f"  {'overridden by' if record else 'from'}: {CONFIG} ({written})")
    lines.append(f"  domains ({len(account.domains)}):")
    for domain in account.domains:
        origin = _identity_origin(directory, "domain", domain, account)
        lines.append(f"    {shown(domain)}  ({origin})")
    if account.allow_subdomains:
        lines.append("    and their subdomains (allow_subdomains)")
    lines.append(
        f"  logins ({len(account.logins)} listed; any address in its domains is its login too):"
    )
    for login in account.logins:
        origin = _identity_origin(directory, "login", login.casefold(), account)
        lines.append(f"    {shown(login)}  ({origin})")
    if account.uids:
        lines.append("  uids:")
        for uid in account.uids:
            name = snapshot.uid_name(uid) if snapshot is not None else None
            user = f" (Unix user {shown(name)})" if name else ""
            lines.append(f"    {uid}{user}  ({_identity_origin(directory, 'uid', uid, account)})")
    if account.networks:
        lines.append(f"  networks: {', '.join(str(net) for net in account.networks)}  ({CONFIG})")
    limit = directory.settings.recipients_per_hour(account)
    where = "the account's own" if account.recipients_per_hour is not None else "the default"
    lines.append(f"  recipients_per_hour: {limit} ({where})")
    if snapshot is not None:
        for conflict in snapshot.conflicts_of(account.id):
            lines.append(f"  CONFLICT: {conflict}")
    return lines


def _identity_origin(directory: OpenDirectory, kind: str, key: object, account: Account) -> str:
    config = directory.lookups.config
    listed = {
        "domain": lambda: config.owner_of_exact_domain(str(key)),
        "login": lambda: config.listed_login(str(key)),
        "uid": lambda: config.by_uid(int(str(key))),
    }[kind]()
    if listed is not None and listed.id == account.id:
        return CONFIG
    snapshot = directory.snapshot
    origin = snapshot.origin_of(kind, key) if snapshot is not None else None
    return str(origin) if origin is not None else "?"


def named_account(directory: OpenDirectory, account_id: str) -> Account:
    """For staff commands: an account of the directory, or an unlisted sender by the id
    the decision log shows (``login:...``, ``uid:...``, ``host:...``); ConfigError for
    any other id."""
    account = directory.accounts.get(account_id)
    if account is None:
        raise ConfigError("accounts", f"no account with id {account_id!r}")
    return account


def find_account(settings: Settings, account_id: str, *, listed: bool = False) -> Account:
    """For staff commands naming an account: one of the config's or the sources' (read
    now), or (unless ``listed``) an unlisted sender's id; ConfigError for an unknown id
    or a bad source."""
    try:
        with open_directory(settings) as directory:
            account = named_account(directory, account_id)
    except SourceError as error:
        raise ConfigError("directory", str(error)) from None
    if listed and not is_listed(account):
        raise ConfigError("accounts", f"no account with id {account_id!r}")
    return account


def which(directory: OpenDirectory, identity: str) -> list[str]:
    """Which account ``identity`` (an address, a login, a uid or an IP address) is
    attributed to, and why; for an address, both readings (login and sender)."""
    identity = identity.strip()
    with contextlib.suppress(ValueError):
        return _which_address(directory, ipaddress.ip_address(identity))
    if identity.isdigit():
        return _which_uid(directory, int(identity))
    lines = _which_login(directory, identity)
    if "@" in identity:
        lines += _which_sender(directory, identity)
    return lines


def _unlisted(directory: OpenDirectory, account: Account, what: str) -> list[str]:
    """An unlisted proven sender: an account of its own, or refused."""
    if directory.settings.policy.unknown_senders == "refuse":
        return [f"  refused: {what} belongs to no account (policy.unknown_senders = refuse)"]
    domains = ", ".join(account.domains) or "any domain but a customer's"
    if account.id.startswith(LOGIN_PREFIX) and not account.domains:
        domains = "no domain of its own (its login's domain is a customer's, or it has none)"
    return [
        f"  why: {what} belongs to no account: it is an account of its own at the default "
        f"limits; it may send from {domains}"
    ]


def _which_address(directory: OpenDirectory, address: IPAddress) -> list[str]:
    trusted = is_trusted(address, directory.settings.policy.trusted_networks)
    attribution = directory.accounts.resolve(
        login=None, uid=None, client_address=address, trusted=trusted
    )
    account = attribution.account
    head = f"client address {address} (no login)"
    if account is None:
        return [f"{head}: no account (not in any account's networks nor trusted_networks)"]
    if not is_listed(account):
        return [f"{head}: {shown(account.id)}", *_unlisted(directory, account, "a trusted host")]
    network = next(
        (net for net in account.networks if net.version == address.version and address in net),
        None,
    )
    return [
        f"{head}: account {shown(account.id)}",
        f"  why: it is in {network}, one of the account's networks ({CONFIG})",
    ]


def _which_uid(directory: OpenDirectory, uid: int) -> list[str]:
    attribution = directory.accounts.resolve(
        login=None, uid=uid, client_address=None, local_submission=True
    )
    account = attribution.account
    head = f"uid {uid} (sendmail(1), PHP mail())"
    if account is not None and is_listed(account):
        why = _why("uid", uid, account, directory)
        return [f"{head}: account {shown(account.id)}", f"  why: {why}"]
    reason = (
        "no source lists it and system_users is off"
        if not directory.settings.directory.system_users
        else "no source lists it and the password database has no such uid"
    )
    if account is None:
        return [f"{head}: nobody ({reason})"]
    return [f"{head}: {shown(account.id)}", *_unlisted(directory, account, f"the uid ({reason})")]


def _which_login(directory: OpenDirectory, login: str) -> list[str]:
    attribution = directory.accounts.resolve(login=login, uid=None, client_address=None)
    account = attribution.account
    head = f"SASL login {shown(login)}"
    if account is None:
        return [f"{head}: nobody"]
    if not is_listed(account):
        return [f"{head}: {shown(account.id)}", *_unlisted(directory, account, "the login")]
    if directory.lookups.listed_login(login) is not None:
        why = f"the login is listed ({_why('login', login.casefold(), account, directory)})"
        return [f"{head}: account {shown(account.id)}", f"  why: {why}"]
    domain = domain_of(login) or ""
    why = (
        f"an address in {shown(domain)}, which the account owns "
        f"({_why('domain', domain, account, directory)}); such logins need no listing"
    )
    return [f"{head}: account {shown(account.id)}", f"  why: {why}"]


def _which_sender(directory: OpenDirectory, address: str) -> list[str]:
    domain = domain_of(address)
    owner = directory.accounts.owner_of_domain(domain) if domain else None
    claim = "  a claim, not a proof: it never picks the account; only a login, uid or address does"
    if owner is None:
        return [f"envelope sender {shown(address)}: its domain belongs to no account", claim]
    where = _why("domain", _owned_domain(owner, domain), owner, directory)
    return [
        f"envelope sender {shown(address)}: in a domain of account {shown(owner.id)} ({where})",
        claim,
        f"  only {shown(owner.id)} may send From it; anyone else is refused as an impersonation",
    ]


def _owned_domain(account: Account, domain: str | None) -> str:
    while domain and domain not in account.domains:
        domain = domain.partition(".")[2]
    return domain or ""


def _why(kind: str, key: object, account: Account, directory: OpenDirectory) -> str:
    origin = _identity_origin(directory, kind, key, account)
    snapshot = directory.snapshot
    if kind == "uid" and origin.startswith("system_users") and snapshot is not None:
        name = snapshot.uid_name(int(str(key)))
        if name == account.id:
            return f"its Unix user is {shown(name)}, the account of that name ({origin})"
        given = snapshot.origin_of("system user", name)
        return f"its Unix user is {shown(str(name))}, which {given} gives to the account"
    return origin
