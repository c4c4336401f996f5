"""DNSBL lookups of the provider's sending addresses (RFC 5782).

The pure half turns addresses into query names and answers into a status and
findings; :class:`DnsblChecker` does the I/O. A lookup that could not be made or was
refused says so ("refused", "error") instead of passing for "clear": the alert rules
must not report a listing as ended because the list stopped answering.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from typing import Literal

import dns.exception
import dns.nameserver
import dns.resolver

from sendwarden.alerts.findings import DNSBL_LISTING, Finding
from sendwarden.config import AlertSettings, IPNetwork

ListingStatus = Literal["listed", "clear", "refused", "error"]
IPAddress = IPv4Address | IPv6Address

LOOPBACK_NET = ipaddress.IPv4Network("127.0.0.0/8")
#: Spamhaus answers these instead of a listing when it will not answer the query.
#: (127.255.255.0/24 is its error range; codes not named here are refusals too.)
REFUSAL_CODES = {
    "127.255.255.252": "the zone name is mistyped; check alerts.dnsbl_zones",
    "127.255.255.254": (
        "the query came through a public or open resolver; "
        "set alerts.dns_servers to a resolver of your own"
    ),
    "127.255.255.255": (
        "too many queries from this resolver; use a resolver of your own or the list's data feed"
    ),
}
REFUSAL_NET = ipaddress.IPv4Network("127.255.255.0/24")
#: What Spamhaus ZEN return codes mean; other lists' codes carry no such meaning.
SPAMHAUS_CODES = {
    "127.0.0.2": "SBL: a spam source or spam operation, listed by Spamhaus staff",
    "127.0.0.3": "SBL CSS: low-reputation mail, typically snowshoe spam, seen from it",
    "127.0.0.4": "XBL: exploited host (malware, botnet, open proxy) seen sending",
    "127.0.0.5": "XBL: exploited host (malware, botnet, open proxy) seen sending",
    "127.0.0.6": "XBL: exploited host (malware, botnet, open proxy) seen sending",
    "127.0.0.7": "XBL: exploited host (malware, botnet, open proxy) seen sending",
    "127.0.0.9": "DROP: part of a hijacked or criminal netblock",
    "127.0.0.10": "PBL (set by the network owner): not meant to send mail directly",
    "127.0.0.11": "PBL (set by Spamhaus): not meant to send mail directly",
}
SPAMHAUS_SUFFIXES = (".spamhaus.org", ".spamhaus.net")


@dataclass(frozen=True)
class DnsblAnswer:
    """What one zone said about one address."""

    address: str  # the monitored address, e.g. "192.0.2.10"
    zone: str  # e.g. "zen.spamhaus.org"
    status: ListingStatus
    codes: tuple[str, ...] = ()  # the A records returned, e.g. ("127.0.0.2", "127.0.0.4")
    reason: str = ""  # the zone's TXT text when listed (often a lookup URL)
    detail: str = ""  # refused/error: what went wrong; listed: what the codes mean, if known

    @property
    def key(self) -> str:
        """The finding key of this (address, zone) pair."""
        return finding_key(self.address, self.zone)


def finding_key(address: str, zone: str) -> str:
    return f"dnsbl:{address}:{zone}"


def query_name(address: IPAddress, zone: str) -> str:
    """RFC 5782: IPv4 octets or IPv6 nibbles, reversed, in front of the zone."""
    reversed_labels = address.reverse_pointer.rsplit(".", 2)[0]  # drop in-addr.arpa/ip6.arpa
    return f"{reversed_labels}.{zone.rstrip('.')}"


def is_spamhaus(zone: str) -> bool:
    zone = zone.rstrip(".").lower()
    return zone.endswith(SPAMHAUS_SUFFIXES)


def code_meaning(code: str, zone: str) -> str:
    """What the list ``zone`` means by answering ``code``; "" where that is not known."""
    return SPAMHAUS_CODES.get(code, "") if is_spamhaus(zone) else ""


def code_meanings(codes: Sequence[str], zone: str) -> list[str]:
    """``"127.0.0.2: SBL ..."`` for each code whose meaning is known."""
    return [f"{code}: {code_meaning(code, zone)}" for code in codes if code_meaning(code, zone)]


def classify(codes: Sequence[str], zone: str = "") -> tuple[ListingStatus, str]:
    """The status the A records ``codes`` stand for, and the detail to show with it.

    An answer outside 127.0.0.0/8 (or 127.0.0.1, which no list uses for a listing)
    means the resolver rewrites answers or the list misbehaves: it proves nothing, so
    it is an error rather than a listing. Given the ``zone``, a listing's detail says
    what its codes mean where the zone is known.
    """
    if not codes:
        return "clear", ""
    for code in codes:
        problem = _invalid_code(code)
        if problem:
            return "error", problem
    refusals = [code for code in codes if IPv4Address(code) in REFUSAL_NET]
    if refusals:
        code = refusals[0]
        meaning = REFUSAL_CODES.get(code, "the list's error code")
        return "refused", f"the list refused the query ({code}): {meaning}"
    return "listed", "; ".join(code_meanings(codes, zone))


def _invalid_code(code: str) -> str:
    try:
        address = IPv4Address(code)
    except ValueError:
        return f"invalid answer {code!r}: not an IPv4 address"
    if address not in LOOPBACK_NET:
        return (
            f"invalid answer {code}: outside 127.0.0.0/8, so the resolver rewrites "
            "answers (NXDOMAIN hijacking); use one that does not"
        )
    if code == "127.0.0.1":
        return "invalid answer 127.0.0.1: no list lists with it; some use it to refuse queries"
    return ""


def monitored_addresses(networks: Sequence[IPNetwork]) -> list[IPAddress]:
    """Every address of each network (network and broadcast included: a provider may
    send from any of them), each once, in the order given."""
    return list(dict.fromkeys(address for network in networks for address in network))


def listing_findings(answers: Sequence[DnsblAnswer]) -> list[Finding]:
    """One finding per listed (address, zone), for the abuse desk."""
    findings: dict[str, Finding] = {}
    for answer in answers:
        if answer.status == "listed" and answer.key not in findings:
            findings[answer.key] = _listing_finding(answer)
    return list(findings.values())


def _listing_finding(answer: DnsblAnswer) -> Finding:
    lines = []
    for code in answer.codes:
        meaning = code_meaning(code, answer.zone)
        lines.append(f"{answer.zone} returned {code}" + (f": {meaning}" if meaning else ""))
    if answer.reason:
        lines.append(f"The list says: {answer.reason}")
    lines.append(
        f"What to do: find the account whose mail leaves through {answer.address} "
        "(the decision log and the MTA log name it) and stop the abuse; once it is "
        "fixed, request delisting at the list's site."
    )
    if any(code_meaning(code, answer.zone).startswith("PBL") for code in answer.codes):
        lines.append(
            "PBL: if this address is a mail server, its network owner removes it from the PBL."
        )
    return Finding(
        key=answer.key,
        kind=DNSBL_LISTING,
        subject=f"{answer.address} is listed on {answer.zone}",
        lines=tuple(lines),
        facts={
            "address": answer.address,
            "zone": answer.zone,
            "codes": list(answer.codes),
            "reason": answer.reason,
        },
    )


def undetermined_keys(answers: Sequence[DnsblAnswer]) -> set[str]:
    """Keys of the (address, zone) pairs this sweep could not decide: "unknown", not
    "delisted"."""
    return {answer.key for answer in answers if answer.status in ("refused", "error")}


class DnsblChecker:
    """Looks every address up in every zone, concurrently (a thread pool), with a
    per-query timeout.

    A fresh resolver, without a cache, serves each :meth:`check`: a delisting must be
    seen on the next sweep, and a changed ``/etc/resolv.conf`` too.
    """

    def __init__(
        self,
        zones: Sequence[str],
        *,
        nameservers: Sequence[tuple[str, int]] = (),
        timeout: float = 2.0,
        workers: int = 16,
    ) -> None:
        self.zones = tuple(zone.rstrip(".").lower() for zone in zones)
        self.nameservers = tuple(nameservers)
        self.timeout = timeout
        self.workers = max(1, workers)

    def check(self, addresses: Iterable[IPAddress]) -> list[DnsblAnswer]:
        """One answer per (address, zone), sorted by address then zone; DNS problems
        become "error" answers, never exceptions."""
        unique = list(dict.fromkeys(addresses))
        pairs = [(address, zone) for address in unique for zone in self.zones]
        if not pairs:
            return []
        try:
            resolver = self._resolver()
        except (dns.exception.DNSException, OSError) as error:
            detail = f"no DNS resolver to ask ({error}); set alerts.dns_servers"
            return _sorted(
                DnsblAnswer(str(address), zone, "error", detail=detail) for address, zone in pairs
            )
        with ThreadPoolExecutor(
            max_workers=min(self.workers, len(pairs)), thread_name_prefix="dnsbl"
        ) as pool:
            answers = list(pool.map(lambda pair: self._lookup(resolver, *pair), pairs))
        return _sorted(answers)

    def _resolver(self) -> dns.resolver.Resolver:
        if self.nameservers:
            resolver = dns.resolver.Resolver(configure=False)
            resolver.nameservers = [
                dns.nameserver.Do53Nameserver(host, port) for host, port in self.nameservers
            ]
        else:
            resolver = dns.resolver.Resolver()
        resolver.cache = None
        resolver.timeout = self.timeout  # per server asked
        # Time enough to try each server once: a dead first server must not hide the next.
        resolver.lifetime = self.timeout * max(1, len(resolver.nameservers))
        return resolver

    def _lookup(
        self, resolver: dns.resolver.Resolver, address: IPAddress, zone: str
    ) -> DnsblAnswer:
        name = query_name(address, zone)
        try:
            answer = resolver.resolve(name, "A", search=False)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return DnsblAnswer(str(address), zone, "clear")
        except (dns.exception.DNSException, OSError) as error:
            return DnsblAnswer(str(address), zone, "error", detail=self._describe(error))
        codes = tuple(sorted({rdata.address for rdata in answer}, key=IPv4Address))
        status, detail = classify(codes, zone)
        reason = self._reason(resolver, name) if status == "listed" else ""
        return DnsblAnswer(str(address), zone, status, codes, reason, detail)

    @staticmethod
    def _reason(resolver: dns.resolver.Resolver, name: str) -> str:
        """The zone's TXT text at ``name``; "" when there is none or it cannot be had."""
        try:
            answer = resolver.resolve(name, "TXT", search=False)
        except (dns.exception.DNSException, OSError):
            return ""
        texts = [b"".join(rdata.strings).decode("utf-8", "replace") for rdata in answer]
        return "; ".join(dict.fromkeys(text for text in texts if text))

    def _describe(self, error: Exception) -> str:
        """The failure in words an operator can act on."""
        if isinstance(error, dns.exception.Timeout):
            return f"no answer within {self.timeout * 1000:.0f} ms from {self._servers()}"
        if isinstance(error, dns.resolver.NoNameservers):
            failures = [
                f"{_server_text(_nameserver_host(server), port)} answered {outcome}"
                for server, _tcp, port, outcome, *_rest in error.kwargs.get("errors", [])
            ]
            return "no DNS server gave an answer: " + ("; ".join(failures) or "none to ask")
        if isinstance(error, dns.resolver.YXDOMAIN):
            return "the query name is too long for the zone (YXDOMAIN)"
        return f"lookup failed: {error}"

    def _servers(self) -> str:
        if not self.nameservers:
            return "the system resolver"
        return ", ".join(_server_text(host, port) for host, port in self.nameservers)


def _nameserver_host(text: str) -> str:
    """The host of dnspython's nameserver text, ``Do53:127.0.0.1@53``."""
    host, at, _port = text.removeprefix("Do53:").rpartition("@")
    return host if at else text


def _server_text(host: str, port: int) -> str:
    """As ``alerts.dns_servers`` writes a server: ``IP:PORT``, ``[IPv6]:PORT``."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _sorted(answers: Iterable[DnsblAnswer]) -> list[DnsblAnswer]:
    def order(answer: DnsblAnswer) -> tuple[int, int, str]:
        address = ipaddress.ip_address(answer.address)
        return address.version, int(address), answer.zone

    return sorted(answers, key=order)


def checker_from_settings(alerts: AlertSettings) -> DnsblChecker:
    return DnsblChecker(
        alerts.dnsbl_zones,
        nameservers=alerts.dns_servers,
        timeout=alerts.dns_timeout_ms / 1000,
    )
