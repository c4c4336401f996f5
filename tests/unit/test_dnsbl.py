"""DNSBL core: query names (RFC 5782), what answers mean, findings for the abuse desk."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address, ip_network

import pytest

from sendwarden.alerts.dnsbl import (
    DnsblAnswer,
    classify,
    listing_findings,
    monitored_addresses,
    query_name,
    undetermined_keys,
)


def test_query_name_reverses_ipv4_octets() -> None:
    assert query_name(IPv4Address("192.0.2.99"), "dnsbl.example") == "99.2.0.192.dnsbl.example"


def test_query_name_reverses_ipv6_nibbles() -> None:
    # The example of RFC 5782 section 2.4.
    name = query_name(IPv6Address("2001:db8:1:2:3:4:567:89ab"), "ugly.example.com")
    assert name == (
        "b.a.9.8.7.6.5.0.4.0.0.0.3.0.0.0.2.0.0.0.1.0.0.0.8.b.d.0.1.0.0.2.ugly.example.com"
    )


def test_query_name_ignores_a_trailing_dot_on_the_zone() -> None:
    assert query_name(IPv4Address("192.0.2.1"), "zen.spamhaus.org.") == "1.2.0.192.zen.spamhaus.org"


@pytest.mark.parametrize(
    ("codes", "status", "detail_has"),
    [
        ((), "clear", ""),
        (("127.0.0.2",), "listed", ""),
        (("127.0.0.2", "127.0.0.4"), "listed", ""),
        (("127.1.2.3",), "listed", ""),
        (("127.255.255.252",), "refused", "mistyped"),
        (("127.255.255.254",), "refused", "public or open resolver"),
        (("127.255.255.255",), "refused", "too many queries"),
        (("127.255.255.1",), "refused", "127.255.255.1"),
        (("127.0.0.2", "127.255.255.254"), "refused", "public or open resolver"),
        (("127.0.0.1",), "error", "127.0.0.1"),
        (("198.51.100.7",), "error", "outside 127.0.0.0/8"),
        (("127.0.0.2", "198.51.100.7"), "error", "rewrites answers"),
        (("not-an-address",), "error", "not an IPv4 address"),
    ],
)
def test_classify(codes: tuple[str, ...], status: str, detail_has: str) -> None:
    got_status, detail = classify(codes)
    assert got_status == status
    assert detail_has in detail
    if status == "listed":
        assert detail == ""  # no zone: no meaning claimed


def test_classify_gives_spamhaus_meanings_only_for_spamhaus_zones() -> None:
    status, detail = classify(("127.0.0.2", "127.0.0.4"), "zen.spamhaus.org")
    assert status == "listed"
    assert "127.0.0.2: SBL" in detail
    assert "127.0.0.4: XBL" in detail
    assert classify(("127.0.0.2",), "bl.spamcop.net") == ("listed", "")


def test_monitored_addresses_expand_networks_once_in_order() -> None:
    networks = [
        ip_network("192.0.2.10/32"),
        ip_network("198.51.100.0/30"),
        ip_network("192.0.2.10/32"),
        ip_network("2001:db8::1/128"),
    ]
    assert [str(address) for address in monitored_addresses(networks)] == [
        "192.0.2.10",
        "198.51.100.0",
        "198.51.100.1",
        "198.51.100.2",
        "198.51.100.3",
        "2001:db8::1",
    ]
    assert monitored_addresses([]) == []


SBL_URL = "https://check.spamhaus.org/sbl/query/SBL12345"
ANSWERS = [
    DnsblAnswer(
        "192.0.2.10",
        "zen.spamhaus.org",
        "listed",
        ("127.0.0.2", "127.0.0.10"),
        reason=f"Listed by SBL, see {SBL_URL}",
    ),
    DnsblAnswer("192.0.2.10", "bl.spamcop.net", "listed", ("127.0.0.2",)),
    DnsblAnswer("192.0.2.11", "zen.spamhaus.org", "clear"),
    DnsblAnswer("192.0.2.11", "bl.spamcop.net", "refused", ("127.255.255.254",), detail="x"),
    DnsblAnswer("192.0.2.12", "bl.spamcop.net", "error", detail="no answer within 300 ms"),
]


def test_listing_findings_one_per_listed_address_and_zone() -> None:
    findings = listing_findings([*ANSWERS, ANSWERS[0]])  # a repeat is reported once
    assert [finding.key for finding in findings] == [
        "dnsbl:192.0.2.10:zen.spamhaus.org",
        "dnsbl:192.0.2.10:bl.spamcop.net",
    ]
    spamhaus, spamcop = findings
    assert spamhaus.kind == "dnsbl-listing"
    assert spamhaus.subject == "192.0.2.10 is listed on zen.spamhaus.org"
    body = "\n".join(spamhaus.lines)
    assert "127.0.0.2: SBL" in body
    assert "127.0.0.10: PBL" in body
    assert SBL_URL in body
    assert "find the account" in body
    assert "delisting" in body
    assert spamhaus.facts == {
        "address": "192.0.2.10",
        "zone": "zen.spamhaus.org",
        "codes": ["127.0.0.2", "127.0.0.10"],
        "reason": f"Listed by SBL, see {SBL_URL}",
    }
    # SpamCop's 127.0.0.2 is no SBL listing: no Spamhaus meaning is claimed for it.
    assert "SBL" not in "\n".join(spamcop.lines)
    assert "bl.spamcop.net returned 127.0.0.2" in spamcop.lines


def test_undetermined_keys_are_refused_and_failed_lookups() -> None:
    assert undetermined_keys(ANSWERS) == {
        "dnsbl:192.0.2.11:bl.spamcop.net",
        "dnsbl:192.0.2.12:bl.spamcop.net",
    }
    assert undetermined_keys([]) == set()
