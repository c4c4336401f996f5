"""TOML configuration loaded into typed, validated, immutable settings.

Each section is a frozen dataclass; its fields *are* the schema. The loader walks
the fields, so adding a key is adding a field, and every error names the exact
key (``policy.trusted_networks[1]``, ``accounts[acme].uids``) and the problem in
one line, which is what ``sendwarden check-config`` prints.
"""

from __future__ import annotations

import contextvars
import dataclasses
import ipaddress
import tomllib
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
StoreErrorAction = Literal["tempfail", "accept"]
UnknownSenders = Literal["limit", "refuse"]
Section = TypeVar("Section")


class ConfigError(ValueError):
    """A bad configuration; the message names the key and the problem."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}" if key else problem)
        self.key = key
        self.problem = problem


def _parse_networks(value: Any, key: str) -> tuple[IPNetwork, ...]:
    if not isinstance(value, list):
        raise ConfigError(key, f"expected a list of CIDR networks, got {_kind(value)}")
    networks: list[IPNetwork] = []
    for index, item in enumerate(value):
        if not isinstance(item, str):
            raise ConfigError(f"{key}[{index}]", f"expected a CIDR string, got {_kind(item)}")
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError as error:
            raise ConfigError(
                f"{key}[{index}]", f"{item!r} is not a valid network ({error})"
            ) from None
    return tuple(networks)


def _parse_domains(value: Any, key: str) -> tuple[str, ...]:
    from sendwarden.addresses import normalise_domain  # local: keeps config import-light

    items = _convert(tuple[str, ...], value, key)
    domains = []
    for index, item in enumerate(items):
        try:
            domains.append(normalise_domain(item))
        except ValueError as error:
            raise ConfigError(f"{key}[{index}]", str(error)) from None
    return tuple(domains)


def parse_socket(spec: str) -> str:
    """Validate a milter socket spec: ``unix:/path``, ``local:/path`` or ``inet[6]:PORT@HOST``."""
    scheme, _, rest = spec.partition(":")
    if scheme in ("unix", "local"):
        if not rest.startswith("/") and not rest.startswith("."):
            raise ValueError(
                f"{spec!r}: a unix socket needs a path, e.g. unix:/run/sendwarden/milter.sock"
            )
        return spec
    if scheme in ("inet", "inet6"):
        port, at, host = rest.partition("@")
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{spec!r}: expected {scheme}:PORT@HOST with a port from 1 to 65535")
        if at and not host:
            raise ValueError(f"{spec!r}: empty host after '@'")
        return spec
    raise ValueError(f"{spec!r}: unknown socket scheme {scheme!r} (use unix:, inet: or inet6:)")


def _socket(value: Any, key: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(key, f"expected a string, got {_kind(value)}")
    try:
        return parse_socket(value)
    except ValueError as error:
        raise ConfigError(key, str(error)) from None


def _file_mode(value: Any, key: str) -> str:
    text = _convert(str, value, key)
    if not (len(text) in (3, 4) and all(char in "01234567" for char in text)):
        raise ConfigError(key, f'{text!r} is not an octal file mode such as "0660"')
    return typing.cast(str, text)


def _positive(value: Any, key: str) -> int:
    number = _convert(int, value, key)
    if number <= 0:
        raise ConfigError(key, f"must be a positive whole number, got {number}")
    return typing.cast(int, number)


def parsed(parser: Callable[[Any, str], Any], **kwargs: Any) -> Any:
    """A dataclass field whose raw TOML value goes through ``parser(value, key)``."""
    return field(metadata={"parse": parser}, **kwargs)


@dataclass(frozen=True)
class MilterSettings:
    socket: str = parsed(_socket, default="unix:/run/sendwarden/milter.sock")
    timeout: int = parsed(_positive, default=60)  # seconds the MTA waits for one reply
    name: str = "sendwarden"
    socket_mode: str = parsed(_file_mode, default="0660")  # unix socket; the MTA must reach it
    # Where Postfix keeps its queue: the uid of sendmail(1) mail is read from the queue
    # file, because Postfix hides its own "Received: ... from userid N" header from milters.
    postfix_queue_directory: str = "/var/spool/postfix"
    # Sendmail daemons ({daemon_name}, e.g. "MTA-v4") whose clients on this host are
    # attributed to the uid owning the client's socket: Sendmail's MSP (sendmail -t,
    # PHP mail()) reaches the MTA over loopback SMTP and Sendmail records no uid for it.
    peer_uid_daemons: tuple[str, ...] = ()


def _redis_url(value: Any, key: str) -> str:
    """A URL redis-py can connect with: a bare ``HOST:PORT`` would pass as text and
    fail only at start, with a traceback."""
    from redis.connection import parse_url  # local: keeps config import-light

    from sendwarden.store.redis import cluster_nodes, is_cluster_url

    url = typing.cast(str, _convert(str, value, key))
    if "://" not in url:
        raise ConfigError(
            key,
            f"{url!r} is not a Redis URL: write redis://HOST:PORT/DB (rediss:// for TLS, "
            "unix:///path/to/redis.sock for a socket, redis+cluster://HOST:PORT,HOST:PORT "
            "for Redis Cluster), e.g. redis://127.0.0.1:6379/0",
        )
    try:
        if is_cluster_url(url):
            cluster_nodes(url)
        else:
            parse_url(url)  # type: ignore[no-untyped-call]
    except ValueError as error:
        raise ConfigError(key, f"{url!r}: {error}") from None
    return url


@dataclass(frozen=True)
class RedisSettings:
    url: str = parsed(_redis_url, default="redis://127.0.0.1:6379/0")
    timeout_ms: int = parsed(_positive, default=250)
    key_prefix: str = "sw"


def _monitor_names(value: Any, key: str) -> tuple[str, ...]:
    from sendwarden.policy.monitor import MONITORABLE  # local: keeps config import-light

    names = typing.cast(tuple[str, ...], _convert(tuple[str, ...], value, key))
    for index, name in enumerate(names):
        if name not in MONITORABLE:
            known = ", ".join(sorted(MONITORABLE))
            raise ConfigError(f"{key}[{index}]", f"{name!r} is not a rule or check ({known})")
    return names


@dataclass(frozen=True)
class PolicySettings:
    local_domains: tuple[str, ...] = parsed(_parse_domains, default=())
    trusted_networks: tuple[IPNetwork, ...] = parsed(
        _parse_networks,
        default=(ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128")),
    )
    recipients_per_hour: int = parsed(_positive, default=500)
    max_attachment_bytes: int = parsed(_positive, default=20 * 1024 * 1024)
    check_attachments: bool = True  # off: the body step is not negotiated for it
    max_mime_depth: int = parsed(_positive, default=20)  # deeper nesting is refused
    # message/partial (a file split over several messages): refused with 554 5.6.0, or
    # "count": fragments are summed per account and id in Redis and capped as one file.
    message_partial: Literal["refuse", "count"] = "refuse"
    on_store_error: StoreErrorAction = "tempfail"
    # Host names of the provider's own MTAs: a client-supplied Received header naming
    # one, or an Authentication-Results header for authserv_id (or one of them), is forged.
    provider_hostnames: tuple[str, ...] = parsed(_parse_domains, default=())
    authserv_id: str = ""
    forged_header_action: Literal["refuse", "strip"] = "refuse"
    # A proven sender (login, local uid, trusted-network host) that no account lists:
    # "limit" makes it an account of its own under the default limits; "refuse" (for
    # providers that list every sender) refuses its mail with 550 5.7.1.
    unknown_senders: UnknownSenders = "limit"
    # Rules (or checks) that only watch: the rule runs, its would-be refusal is logged
    # and counted as "monitor", and the mail passes. For rolling sendwarden out onto
    # existing customers (``sendwarden report`` shows what would have been refused).
    monitor_only: tuple[str, ...] = parsed(_monitor_names, default=())


def _consent_database(value: Any, key: str) -> str:
    from sendwarden.consent.store import parse_database_url  # local: no driver imported

    url = typing.cast(str, _convert(str, value, key))
    try:
        parse_database_url(url)
    except ValueError as error:
        raise ConfigError(key, str(error)) from None
    return url


@dataclass(frozen=True)
class ConsentSettings:
    database: str = parsed(_consent_database, default="sqlite:////var/lib/sendwarden/consent.db")
    # Longest wait for the consent database (connect, lock, query) before the store
    # counts as unavailable and policy.on_store_error decides.
    timeout_ms: int = parsed(_positive, default=1000)
    bulk_recipient_threshold: int = parsed(_positive, default=50)
    # A campaign split into small messages: the account is sending bulk mail once it
    # has written to this many different recipients in the rolling hour.
    bulk_distinct_recipients_per_hour: int = parsed(_positive, default=200)
    on_missing_consent: Literal["reject", "remove"] = "reject"


def _sha256_hex(value: Any, key: str) -> str:
    text = _convert(str, value, key).strip().lower()
    if len(text) != 64 or any(char not in "0123456789abcdef" for char in text):
        raise ConfigError(
            key, "expected the 64 hex digits of a SHA-256 (sendwarden api token create)"
        )
    return typing.cast(str, text)


def _listen(value: Any, key: str) -> str:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6), e.g. 127.0.0.1:8025."""
    text = _convert(str, value, key)
    host, colon, port = text.rpartition(":")
    if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(key, f"{text!r}: expected HOST:PORT, e.g. 127.0.0.1:8025")
    return typing.cast(str, text)


def _proxy_listen(value: Any, key: str) -> str:
    """``HOST:PORT``, or ``unix:/path`` (Postfix's smtpd_proxy_filter can use one)."""
    text = _convert(str, value, key)
    if text.startswith("unix:"):
        if not text.removeprefix("unix:").startswith("/"):
            raise ConfigError(key, f"{text!r}: a unix socket needs an absolute path")
        return typing.cast(str, text)
    return _listen(text, key)


@dataclass(frozen=True)
class ProxySettings:
    """``sendwarden proxy``: the SMTP policy proxy for Exim (and Postfix's
    ``smtpd_proxy_filter``). See docs/exim.md."""

    listen: str = parsed(_proxy_listen, default="127.0.0.1:10025")
    next_hop: str = parsed(_listen, default="127.0.0.1:10026")  # where passed mail goes
    mta: Literal["exim", "postfix"] = "exim"
    # Shared with the MTA: Exim logs in to the proxy with it (as mta_login), the proxy
    # logs in to the next hop with it (as next_hop_login). Required for Exim.
    secret_file: str = ""
    mta_login: str = "exim"
    next_hop_login: str = "sendwarden"
    hostname: str = "sendwarden-proxy"  # in the proxy's greeting
    max_message_bytes: int = parsed(_positive, default=100 * 1024 * 1024)
    timeout: int = parsed(_positive, default=300)  # seconds, each side
    workers: int = parsed(_positive, default=32)  # threads running the pipeline
    # Exim's RCPT ACL asks here (${readsocket}) for SMTP-time replies; "" = off.
    policy_listen: str = parsed(lambda v, k: _listen(v, k) if v else "", default="")


@dataclass(frozen=True)
class ApiToken:
    """One API bearer token, kept only as its SHA-256: the config file holds no secret."""

    name: str
    sha256: str = parsed(_sha256_hex)
    account: str = ""  # an account token writes only this account's consent records
    role: Literal["account", "staff"] = "account"  # staff: reads every record, writes none


def _parse_api_tokens(value: Any, key: str) -> tuple[ApiToken, ...]:
    tokens: list[ApiToken] = []
    for name, token in _build_tables(
        ApiToken, value, key, "name", "expected [[api.tokens]] tables"
    ):
        if not token.name.strip():
            raise ConfigError(f"{name}.name", "must not be empty")
        if token.role == "account" and not token.account:
            raise ConfigError(f"{name}.account", 'is required unless role = "staff"')
        if token.role == "staff" and token.account:
            raise ConfigError(f"{name}.account", "a staff token belongs to no account")
        if any(other.name == token.name for other in tokens):
            raise ConfigError(f"{name}.name", "the same token name is used twice")
        if any(other.sha256 == token.sha256 for other in tokens):
            raise ConfigError(f"{name}.sha256", "the same token is configured twice")
        tokens.append(token)
    return tuple(tokens)


@dataclass(frozen=True)
class ApiSettings:
    """``sendwarden api``: the consent HTTP API (loopback only unless told otherwise)."""

    listen: str = parsed(_listen, default="127.0.0.1:8025")
    tokens: tuple[ApiToken, ...] = parsed(_parse_api_tokens, default=())


_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _duration(value: Any, key: str) -> int:
    """Seconds: a whole number of seconds, or ``"90s"``, ``"30m"``, ``"24h"``, ``"7d"``."""
    if isinstance(value, str):
        text = value.strip().lower()
        unit = _DURATION_UNITS.get(text[-1:])
        if unit is None or not text[:-1].isdigit() or int(text[:-1]) <= 0:
            raise ConfigError(key, f'{value!r} is not a duration (e.g. 3600, "90m", "24h", "7d")')
        return int(text[:-1]) * unit
    return _positive(value, key)


def _non_negative(value: Any, key: str) -> int:
    number = _convert(int, value, key)
    if number < 0:
        raise ConfigError(key, f"must be 0 or more, got {number}")
    return typing.cast(int, number)


@dataclass(frozen=True)
class RateLimitSettings:
    """Recipient rate limit (the limit itself is ``policy.recipients_per_hour``):
    an account refused ``suspend_after`` separate times within ``suspend_period``
    is suspended until staff lift it (0 never suspends)."""

    suspend_after: int = parsed(_non_negative, default=5)
    suspend_period: int = parsed(_duration, default=86400)


@dataclass(frozen=True)
class LogSettings:
    level: Literal["debug", "info", "warning", "error"] = "info"
    decisions: bool = True  # one JSON line per decision


def _dkim_domain(value: Any, key: str) -> str:
    (domain,) = _parse_domains([value], key)
    return domain


def _dkim_selector(value: Any, key: str) -> str:
    from sendwarden.dkim.keys import check_selector  # local: keeps config light

    try:
        return check_selector(typing.cast(str, _convert(str, value, key)))
    except ValueError as error:
        raise ConfigError(key, str(error)) from None


@dataclass(frozen=True)
class PrivateKeyFile:
    """A DKIM key file, read and checked when the config loads: a missing or
    unreadable key stops the start (or the reload), never a message."""

    path: str
    pem: bytes = field(repr=False)


#: Whether loading a config reads the DKIM key files: the milter (which signs) and
#: check-config do; commands that never sign do not, so staff and the alert service run
#: them without access to the private keys.
_READ_KEYS: contextvars.ContextVar[bool] = contextvars.ContextVar("read_keys", default=True)


def _dkim_key_file(value: Any, key: str) -> PrivateKeyFile:
    from sendwarden.dkim.keys import KeyFileError, read_private_key  # local: keeps config light

    path = typing.cast(str, _convert(str, value, key))
    if not _READ_KEYS.get():
        return PrivateKeyFile(path, b"")
    try:
        return PrivateKeyFile(path, read_private_key(path))
    except KeyFileError as error:
        raise ConfigError(key, str(error)) from None


@dataclass(frozen=True)
class DkimKey:
    """``[[dkim]]``: sign mail From this domain with this key (published at
    ``selector._domainkey.domain``)."""

    domain: str = parsed(_dkim_domain)
    selector: str = parsed(_dkim_selector)
    key_file: PrivateKeyFile = parsed(_dkim_key_file)  # noqa: RUF009 (a field())


def _parse_dkim_keys(value: Any, key: str) -> tuple[DkimKey, ...]:
    """``[dkim]`` for one signing domain, ``[[dkim]]`` tables for several."""
    if isinstance(value, Mapping):
        value = [value]
    keys: list[DkimKey] = []
    for name, dkim_key in _build_tables(
        DkimKey, value, key, "domain", "expected a [dkim] table or [[dkim]] tables"
    ):
        if any(other.domain == dkim_key.domain for other in keys):
            raise ConfigError(f"{name}.domain", "the domain has two keys; configure one")
        keys.append(dkim_key)
    return tuple(keys)


#: Most addresses ``alerts.monitored_networks`` may expand to: each is looked up in every
#: zone on every sweep, and public DNSBLs throttle heavy users.
MAX_MONITORED_ADDRESSES = 4096


def _monitored_networks(value: Any, key: str) -> tuple[IPNetwork, ...]:
    networks = _parse_networks(value, key)
    total = sum(network.num_addresses for network in networks)
    if total > MAX_MONITORED_ADDRESSES:
        raise ConfigError(
            key,
            f"covers {total} addresses; list the provider's sending addresses "
            f"(at most {MAX_MONITORED_ADDRESSES})",
        )
    return networks


def parse_dns_server(text: str) -> tuple[str, int]:
    """``IP``, ``IP:PORT`` or ``[IPv6]:PORT``: a resolver to ask (port 53 by default)."""
    host, port = text, 53
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError(f"{text!r}: expected [IPv6]:PORT")
        if rest:
            port = int(rest[1:]) if rest[1:].isdigit() else -1
    elif text.count(":") == 1:
        host, _, digits = text.partition(":")
        port = int(digits) if digits.isdigit() else -1
    if not 0 < port < 65536:
        raise ValueError(f"{text!r}: the port must be a number from 1 to 65535")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{text!r}: expected a resolver's IP address, e.g. 127.0.0.1:53") from None
    return host, port


def _dns_servers(value: Any, key: str) -> tuple[tuple[str, int], ...]:
    items = _convert(tuple[str, ...], value, key)
    servers = []
    for index, item in enumerate(items):
        try:
            servers.append(parse_dns_server(item))
        except ValueError as error:
            raise ConfigError(f"{key}[{index}]", str(error)) from None
    return tuple(servers)


def _webhook_url(value: Any, key: str) -> str:
    text = typing.cast(str, _convert(str, value, key))
    if text and not text.startswith(("http://", "https://")):
        raise ConfigError(key, f"{text!r}: expected an http:// or https:// URL")
    return text


def _absolute_path(value: Any, key: str) -> str:
    text = typing.cast(str, _convert(str, value, key))
    if text and not text.startswith("/"):
        raise ConfigError(key, f"{text!r}: write an absolute path (the services start in /)")
    return text


def _non_negative_number(value: Any, key: str) -> float:
    number = typing.cast(float, _convert(float, value, key))
    if number < 0:
        raise ConfigError(key, f"must be 0 or more, got {number}")
    return number


def _share(value: Any, key: str) -> float:
    number = _non_negative_number(value, key)
    if number > 1:
        raise ConfigError(key, f"a share from 0 to 1 (0.8 = 80%), got {number}")
    return number


def _ip_address_or_empty(value: Any, key: str) -> str:
    text = typing.cast(str, _convert(str, value, key))
    if text:
        try:
            ipaddress.ip_address(text)
        except ValueError:
            raise ConfigError(key, f"{text!r} is not an IP address") from None
    return text


@dataclass(frozen=True)
class AlertSettings:
    """``sendwarden alerts``: DNSBL listings of the provider's addresses and accounts
    whose behaviour puts them at risk, reported to the abuse desk."""

    monitored_networks: tuple[IPNetwork, ...] = parsed(_monitored_networks, default=())
    dnsbl_zones: tuple[str, ...] = parsed(
        _parse_domains, default=("zen.spamhaus.org", "bl.spamcop.net", "b.barracudacentral.org")
    )
    # Resolvers to ask; empty: the system's (/etc/resolv.conf). Spamhaus refuses
    # queries that come through large public resolvers.
    dns_servers: tuple[tuple[str, int], ...] = parsed(_dns_servers, default=())
    dns_timeout_ms: int = parsed(_positive, default=2000)
    interval: int = parsed(_duration, default=900)  # seconds between sweeps
    remind_after: int = parsed(_duration, default=86400)  # repeat an alert still true
    # An account refused this many times in the rolling hour (rate limit, forged or
    # impersonating headers, bulk mail without consent, ...) is at risk; 0: never.
    risk_refusals_per_hour: int = parsed(_non_negative, default=25)
    mail_to: tuple[str, ...] = ()  # the abuse desk's addresses
    mail_from: str = "sendwarden@localhost"
    smtp_server: str = parsed(_listen, default="127.0.0.1:25")  # where alert mail is sent
    # SASL login of the alert service at smtp_server, and the file holding its password.
    # The milter knows this login (same config) and lets mail authenticated with it carry
    # sendwarden's own X-Sendwarden-Alert header, which it refuses from anyone else.
    smtp_login: str = ""
    smtp_password_file: str = parsed(_absolute_path, default="")
    webhook_url: str = parsed(_webhook_url, default="")  # POSTed one JSON object per alert
    # Early warnings: an account past this share of its hourly limit (0: never) ...
    near_limit_share: float = parsed(_share, default=0.8)
    # ... or sending this many times its usual hourly volume (the median of its busy
    # hours last week; 0: never), once it sends to at least surge_min_recipients.
    surge_factor: float = parsed(_non_negative_number, default=5.0)
    surge_min_recipients: int = parsed(_positive, default=50)
    # This MTA host's outbound address, so a listing of it names the accounts that sent
    # most through it; empty: recorded as "address unknown".
    sending_address: str = parsed(_ip_address_or_empty, default="")


def _optional_listen(value: Any, key: str) -> str:
    """``HOST:PORT``, or ``""`` for off."""
    if value == "":
        return ""
    return _listen(value, key)


@dataclass(frozen=True)
class MetricsSettings:
    """Prometheus metrics and ``/healthz``, served over plain HTTP (loopback by default:
    scrape through an SSH tunnel or a reverse proxy from elsewhere). ``""`` turns a
    process's metrics off, recording included."""

    listen: str = parsed(_optional_listen, default="127.0.0.1:9464")  # the milter
    api_listen: str = parsed(_optional_listen, default="127.0.0.1:9465")  # sendwarden api
    proxy_listen: str = parsed(_optional_listen, default="127.0.0.1:9466")  # the SMTP proxy
    alerts_listen: str = parsed(_optional_listen, default="127.0.0.1:9467")  # sendwarden alerts


@dataclass(frozen=True)
class UiSettings:
    """The support page under ``/ui`` of ``sendwarden api``. Staff sign in with a staff
    token, or a reverse proxy that authenticated them passes their name in
    ``trusted_header``; the header is believed only from ``trusted_proxies``."""

    trusted_header: str = ""  # e.g. "X-Remote-User"; empty: token sign-in only
    trusted_proxies: tuple[IPNetwork, ...] = parsed(_parse_networks, default=())
    session_minutes: int = parsed(_positive, default=480)


def _directory_sql_url(value: Any, key: str) -> str:
    from sendwarden.directory.sql import parse_sql_url  # local: no driver imported

    url = typing.cast(str, _convert(str, value, key))
    if url:
        try:
            parse_sql_url(url)
        except ValueError as error:
            raise ConfigError(key, str(error)) from None
    return url


def _percent(value: Any, key: str) -> int:
    number = _convert(int, value, key)
    if not 0 <= number <= 100:
        raise ConfigError(key, f"must be a percentage from 0 to 100, got {number}")
    return typing.cast(int, number)


@dataclass(frozen=True)
class DirectorySettings:
    """``[directory]``: accounts kept where the hosting provider keeps them, re-read
    every ``refresh`` without a reload (docs/directory.md)."""

    domain_map: str = ""  # "domain: account" lines (cPanel /etc/userdomains, DirectAdmin)
    system_users: bool = False  # a local uid is the account named by its Unix user name
    refresh: int = parsed(_duration, default=60)
    # An SQL query returning accounts with their domains, logins and settings.
    sql_url: str = parsed(_directory_sql_url, default="")  # postgresql://, mysql://, sqlite:///
    sql_query: str = ""
    sql_password_file: str = ""  # the password, kept out of the config (e.g. /etc/psa/.psa.shadow)
    sql_timeout_ms: int = parsed(_positive, default=30000)
    # A re-read that loses more than this share of the directory's domains and logins is
    # taken for a half-written or broken source and refused (100: never refused).
    max_shrink_percent: int = parsed(_percent, default=50)
    # Where the last good directory is kept across restarts: the milter then answers at
    # once on it and re-reads the sources in the background. Empty: "directory" in the
    # service's systemd state directory ($STATE_DIRECTORY), else a temporary directory.
    state_directory: str = ""

    @property
    def has_sources(self) -> bool:
        return bool(self.domain_map or self.system_users or self.sql_url)


@dataclass(frozen=True)
class Account:
    id: str
    logins: tuple[str, ...] = ()
    uids: tuple[int, ...] = ()
    domains: tuple[str, ...] = parsed(_parse_domains, default=())
    networks: tuple[IPNetwork, ...] = parsed(_parse_networks, default=())
    recipients_per_hour: int | None = parsed(_positive, default=None)
    allow_subdomains: bool = False  # From/Sender may also use subdomains of its domains
    monitor_only: bool = False  # every rule only watches this account's mail (roll-out)
    # Not a key: the keys the [[accounts]] table wrote, so that an override of an account
    # from a [directory] source replaces only the settings it actually states.
    keys_given: frozenset[str] = field(
        default=frozenset(), metadata={"internal": True}, compare=False, repr=False
    )


@dataclass(frozen=True)
class Settings:
    milter: MilterSettings = field(default_factory=MilterSettings)
    proxy: ProxySettings = field(default_factory=ProxySettings)
    redis: RedisSettings = field(default_factory=RedisSettings)
    policy: PolicySettings = field(default_factory=PolicySettings)
    consent: ConsentSettings = field(default_factory=ConsentSettings)
    api: ApiSettings = field(default_factory=ApiSettings)
    ratelimit: RateLimitSettings = field(default_factory=RateLimitSettings)
    log: LogSettings = field(default_factory=LogSettings)
    dkim: tuple[DkimKey, ...] = parsed(_parse_dkim_keys, default=())
    alerts: AlertSettings = field(default_factory=AlertSettings)
    directory: DirectorySettings = field(default_factory=DirectorySettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    ui: UiSettings = field(default_factory=UiSettings)
    accounts: tuple[Account, ...] = ()

    def account(self, account_id: str) -> Account:
        """The account with this id; ConfigError names it when it is not configured."""
        for account in self.accounts:
            if account.id == account_id:
                return account
        raise ConfigError("accounts", f"no account with id {account_id!r}")

    def recipients_per_hour(self, account: Account | None) -> int:
        if account is not None and account.recipients_per_hour is not None:
            return account.recipients_per_hour
        return self.policy.recipients_per_hour


def _kind(value: Any) -> str:
    return {
        bool: "a boolean",
        int: "a whole number",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "a table",
    }.get(type(value), type(value).__name__)


def _convert(kind: Any, value: Any, key: str) -> Any:
    """Check a raw TOML value against a field's type annotation."""
    origin = typing.get_origin(kind)
    if origin is Literal:
        choices = typing.get_args(kind)
        if value not in choices:
            allowed = ", ".join(repr(choice) for choice in choices)
            raise ConfigError(key, f"{value!r} is not one of {allowed}")
        return value
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(kind)
        if value is None and type(None) in options:
            return None
        (inner,) = [option for option in options if option is not type(None)]
        return _convert(inner, value, key)
    if origin is tuple:
        inner = typing.get_args(kind)[0]
        if not isinstance(value, list):
            raise ConfigError(key, f"expected a list, got {_kind(value)}")
        return tuple(_convert(inner, item, f"{key}[{index}]") for index, item in enumerate(value))
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(key, f"expected a whole number, got {_kind(value)}")
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(key, f"expected a number, got {_kind(value)}")
        return float(value)
    if kind in (str, bool):
        if type(value) is not kind:
            raise ConfigError(key, f"expected {_kind(kind())}, got {_kind(value)}")
        return value
    if dataclasses.is_dataclass(kind):
        return _build(typing.cast(type, kind), value, key)
    raise TypeError(f"config field {key} has an unsupported type {kind!r}")


def _build(cls: type, table: Any, key: str) -> Any:
    """Build one section dataclass from its TOML table, naming any bad key."""
    if not isinstance(table, Mapping):
        raise ConfigError(key, f"expected a table, got {_kind(table)}")
    hints = typing.get_type_hints(cls)
    fields = {
        spec.name: spec for spec in dataclasses.fields(cls) if not spec.metadata.get("internal")
    }
    prefix = f"{key}." if key else ""
    for name in table:
        if name not in fields:
            known = ", ".join(sorted(fields))
            raise ConfigError(f"{prefix}{name}", f"unknown key (known keys here: {known})")
    values: dict[str, Any] = {}
    for name, spec in fields.items():
        if name not in table:
            no_default = (
                spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING
            )
            if no_default:
                raise ConfigError(f"{prefix}{name}", "is required")
            continue
        parser = spec.metadata.get("parse")
        raw = table[name]
        values[name] = (
            parser(raw, f"{prefix}{name}") if parser else _convert(hints[name], raw, prefix + name)
        )
    return cls(**values)


def _build_tables(
    cls: type[Section], value: Any, key: str, label: str, expected: str
) -> Iterator[tuple[str, Section]]:
    """A list of tables (``[[key]]``), each built into ``cls``, one at a time, with the
    name its errors carry: ``key[LABEL]`` by the table's ``label`` key when it has
    one, else ``key[INDEX]``. ``expected`` is the error when ``value`` is no list."""
    if not isinstance(value, list):
        raise ConfigError(key, expected)
    for index, table in enumerate(value):
        tag = table.get(label) if isinstance(table, Mapping) else None
        name = f"{key}[{tag}]" if isinstance(tag, str) and tag else f"{key}[{index}]"
        yield name, typing.cast(Section, _build(cls, table, name))


def _build_accounts(raw: Any) -> tuple[Account, ...]:
    accounts: list[Account] = []
    tables = raw if isinstance(raw, list) else []
    built = _build_tables(Account, raw, "accounts", "id", "expected [[accounts]] tables")
    for (name, account), table in zip(built, tables, strict=False):
        if not account.id.strip():
            raise ConfigError(f"{name}.id", "must not be empty")
        if ":" in account.id:
            # Unlisted senders are named "login:...", "uid:...", "host:...": never a customer.
            raise ConfigError(f"{name}.id", f"{account.id!r}: an account id may not contain ':'")
        accounts.append(dataclasses.replace(account, keys_given=frozenset(table)))
    _check_unique(accounts)
    return tuple(accounts)


def _check_unique(accounts: list[Account]) -> None:
    """An identity that maps to two accounts would make attribution a coin toss."""
    ids: set[str] = set()
    owners: dict[tuple[str, object], str] = {}
    for account in accounts:
        if account.id in ids:
            raise ConfigError(f"accounts[{account.id}].id", "the same id is used twice")
        ids.add(account.id)
        identities: list[tuple[str, object]] = [
            ("logins", login.casefold()) for login in account.logins
        ]
        identities += [("uids", uid) for uid in account.uids]
        identities += [("domains", domain) for domain in account.domains]
        identities += [("networks", network) for network in account.networks]
        for kind, identity in identities:
            owner = owners.setdefault((kind, identity), account.id)
            if owner != account.id:
                raise ConfigError(
                    f"accounts[{account.id}].{kind}",
                    f"{identity!s} already belongs to account {owner!r}",
                )


def split_listen(listen: str) -> tuple[str, int]:
    """``127.0.0.1:8025`` -> ("127.0.0.1", 8025); ``[::1]:8025`` -> ("::1", 8025)."""
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def config_warnings(settings: Settings) -> list[str]:
    """Settings that run but are very likely a mistake, each naming its key; printed by
    ``check-config`` and logged when a service starts."""
    warnings = []
    for index, network in enumerate(settings.policy.trusted_networks):
        if network.prefixlen == 0:
            warnings.append(
                f"policy.trusted_networks[{index}]: {network} trusts every address on the "
                "internet: anyone may send to any domain without logging in (an open relay); "
                "list only your own networks"
            )
    if settings.alerts.mail_to and not settings.alerts.smtp_login:
        warnings.append(
            "alerts.smtp_login: alert mail is submitted without logging in, so it passes "
            "the milter only as mail from a trusted network; give the alert service a SASL "
            "login (alerts.smtp_login, alerts.smtp_password_file)"
        )
    host, _ = split_listen(settings.api.listen)
    if not is_loopback(host):
        warnings.append(
            f"api.listen: {settings.api.listen} is reachable from other hosts, and "
            "`sendwarden api` speaks plain HTTP (bearer tokens in clear text): listen on "
            "127.0.0.1 and put a TLS-terminating proxy in front of it"
        )
    return warnings


def _check_token_accounts(
    tokens: tuple[ApiToken, ...], accounts: tuple[Account, ...], directory: DirectorySettings
) -> None:
    """An account token must name a configured account, or it could write records for
    nobody. With a [directory], an account only its sources know cannot be checked
    without reading them: ``check-config`` (and ``api token create``) do."""
    if directory.has_sources:
        return
    known = {account.id for account in accounts}
    for token in tokens:
        if token.account and token.account not in known:
            raise ConfigError(
                f"api.tokens[{token.name}].account", f"no account with id {token.account!r}"
            )


def _check_alert_login(alerts: AlertSettings, accounts: tuple[Account, ...]) -> None:
    """The alert service's login proves sendwarden's own mail: no customer may hold it,
    and it is useless without its password."""
    if bool(alerts.smtp_login) != bool(alerts.smtp_password_file):
        missing = "smtp_password_file" if alerts.smtp_login else "smtp_login"
        raise ConfigError(f"alerts.{missing}", "smtp_login and smtp_password_file go together")
    login = alerts.smtp_login.casefold()
    for account in accounts:
        if login and any(own.casefold() == login for own in account.logins):
            raise ConfigError(
                f"accounts[{account.id}].logins",
                f"{alerts.smtp_login} is alerts.smtp_login, sendwarden's own login: "
                "give the alert service a login of its own",
            )


def settings_from_mapping(document: Mapping[str, Any]) -> Settings:
    """Validate a parsed TOML document (also used by tests that build configs in code)."""
    document = dict(document)
    accounts = _build_accounts(document.pop("accounts", []))
    settings = typing.cast(Settings, _build(Settings, document, ""))
    _check_token_accounts(settings.api.tokens, accounts, settings.directory)
    _check_alert_login(settings.alerts, accounts)
    return dataclasses.replace(settings, accounts=accounts)


def load_settings(path: str | Path, *, read_keys: bool = True) -> Settings:
    """Read and validate a TOML config file. ``read_keys=False``: the DKIM key files
    are named but not read (their ``pem`` is empty), for commands that never sign."""
    token = _READ_KEYS.set(read_keys)
    try:
        return _load_settings(path)
    finally:
        _READ_KEYS.reset(token)


def load_directory_settings(path: str | Path) -> DirectorySettings | None:
    """The ``[directory]`` of a config file alone, checked as :func:`load_settings`
    checks it, so that its first read can start before the rest of the file is
    checked (those checks import the Redis client: a tenth of a second). None when
    the file or the section is not valid: :func:`load_settings` says why."""
    try:
        document = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        directory = _build(DirectorySettings, document.get("directory", {}), "directory")
    except Exception:  # (whatever it is, the full read raises it again, with its reason)
        return None
    return typing.cast(DirectorySettings, directory)


def _load_settings(path: str | Path) -> Settings:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError("", f"cannot read {path}: {error.strerror}") from error
    except UnicodeDecodeError as error:
        raise ConfigError("", f"{path} is not UTF-8 text: {error}") from error
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError("", f"{path} is not valid TOML: {error}") from error
    return settings_from_mapping(document)
