"""DNSBL lookups over real DNS: a loopback server publishes listings, refuses, fails and
stays silent, and the checker and ``sendwarden dnsbl check`` report each for what it is."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from ipaddress import IPv4Address, IPv6Address, ip_address
from pathlib import Path

import pytest

from sendwarden.alerts.dnsbl import DnsblAnswer, DnsblChecker, query_name
from sendwarden.cli import main
from tests.support.dns_server import DnsServer
from tests.support.ports import free_port

LISTED = IPv4Address("192.0.2.10")
CLEAR = IPv4Address("192.0.2.11")
LISTED_V6 = IPv6Address("2001:db8::25")
SPAMHAUS = "zen.spamhaus.org"  # served by the test server: its code meanings apply
REFUSING = "refusing.example"  # answers as Spamhaus does to a public resolver
SILENT = "silent.example"  # never answers
BROKEN = "broken.example"  # answers SERVFAIL
HIJACKED = "hijacked.example"  # a resolver that rewrites NXDOMAIN to an ad server
BARE = "bare.example"  # lists without a TXT reason
REASON = "Listed by SBL, see https://check.spamhaus.org/sbl/query/SBL12345"
TIMEOUT = 0.3


@pytest.fixture(scope="module")
def dns_server() -> Iterator[DnsServer]:
    with DnsServer() as server:
        for address in (LISTED, LISTED_V6):
            server.publish_a(query_name(address, SPAMHAUS), "127.0.0.2")
            server.publish(query_name(address, SPAMHAUS), REASON)
        server.publish_a(query_name(LISTED, SPAMHAUS), "127.0.0.4")
        for address in (LISTED, CLEAR):
            server.publish_a(query_name(address, REFUSING), "127.255.255.254")
            server.publish_a(query_name(address, HIJACKED), "198.51.100.7")
        server.publish_a(query_name(LISTED, BARE), "127.0.0.2")
        server.unanswered(SILENT)
        server.failing(BROKEN)
        yield server


def checker(server: DnsServer, zones: Sequence[str]) -> DnsblChecker:
    return DnsblChecker(zones, nameservers=[(server.host, server.port)], timeout=TIMEOUT)


def by_pair(answers: Sequence[DnsblAnswer]) -> dict[tuple[str, str], DnsblAnswer]:
    return {(answer.address, answer.zone): answer for answer in answers}


def test_listing_and_clear(dns_server: DnsServer) -> None:
    answers = checker(dns_server, [SPAMHAUS]).check([CLEAR, LISTED_V6, LISTED])
    assert [(a.address, a.status) for a in answers] == [  # sorted by address
        ("192.0.2.10", "listed"),
        ("192.0.2.11", "clear"),
        ("2001:db8::25", "listed"),
    ]
    listed = answers[0]
    assert listed.codes == ("127.0.0.2", "127.0.0.4")
    assert listed.reason == REASON
    assert "127.0.0.2: SBL" in listed.detail
    assert "127.0.0.4: XBL" in listed.detail
    assert answers[1] == DnsblAnswer("192.0.2.11", SPAMHAUS, "clear")
    assert answers[2].codes == ("127.0.0.2",)
    assert query_name(LISTED_V6, SPAMHAUS) + "." in dns_server.queries


def test_a_listing_without_txt_has_no_reason(dns_server: DnsServer) -> None:
    (answer,) = checker(dns_server, [BARE]).check([LISTED])
    assert (answer.status, answer.codes, answer.reason) == ("listed", ("127.0.0.2",), "")


def test_refused_and_rewritten_answers(dns_server: DnsServer) -> None:
    answers = by_pair(checker(dns_server, [REFUSING, HIJACKED]).check([LISTED, CLEAR]))
    refused = answers["192.0.2.11", REFUSING]
    assert refused.status == "refused"
    assert refused.codes == ("127.255.255.254",)
    assert "public or open resolver" in refused.detail
    assert refused.reason == ""
    hijacked = answers["192.0.2.10", HIJACKED]
    assert hijacked.status == "error"
    assert "198.51.100.7" in hijacked.detail


def test_silence_and_servfail_are_errors_and_quick(dns_server: DnsServer) -> None:
    addresses = [ip_address(f"192.0.2.{n}") for n in range(100, 120)]
    started = time.monotonic()
    answers = checker(dns_server, [SILENT, BROKEN, SPAMHAUS]).check(addresses)
    elapsed = time.monotonic() - started
    assert len(answers) == 60
    statuses = {zone: {a.status for a in answers if a.zone == zone} for zone in (SILENT, BROKEN)}
    assert statuses == {SILENT: {"error"}, BROKEN: {"error"}}
    assert {a.status for a in answers if a.zone == SPAMHAUS} == {"clear"}
    silent = next(a for a in answers if a.zone == SILENT)
    assert f"no answer within 300 ms from {dns_server.address}" == silent.detail
    broken = next(a for a in answers if a.zone == BROKEN)
    assert "SERVFAIL" in broken.detail
    # 20 silent lookups of 0.3 s each, 16 at a time: two rounds, not twenty.
    assert elapsed < 2.0


def test_no_server_listening_is_an_error() -> None:
    nobody = DnsblChecker([SPAMHAUS], nameservers=[("127.0.0.1", free_port())], timeout=TIMEOUT)
    (answer,) = nobody.check([LISTED])
    assert answer.status == "error"
    assert answer.detail


def test_a_dead_first_server_does_not_hide_the_next(dns_server: DnsServer) -> None:
    servers = [("127.0.0.1", free_port()), (dns_server.host, dns_server.port)]
    (answer,) = DnsblChecker([BARE], nameservers=servers, timeout=TIMEOUT).check([LISTED])
    assert answer.status == "listed"


def test_a_listing_is_seen_on_the_next_check(dns_server: DnsServer) -> None:
    newcomer = IPv4Address("192.0.2.77")
    zone_checker = checker(dns_server, [BARE])
    assert zone_checker.check([newcomer])[0].status == "clear"
    dns_server.publish_a(query_name(newcomer, BARE), "127.0.0.3")
    assert zone_checker.check([newcomer])[0].status == "listed"  # nothing cached


# --- sendwarden dnsbl check -----------------------------------------------------------


def write_config(
    tmp_path: Path, server: DnsServer, zones: Sequence[str], networks: Sequence[str]
) -> str:
    path = tmp_path / "sendwarden.toml"
    path.write_text(
        "[alerts]\n"
        f"monitored_networks = {json.dumps(list(networks))}\n"
        f"dnsbl_zones = {json.dumps(list(zones))}\n"
        f'dns_servers = ["{server.address}"]\n'
        f"dns_timeout_ms = {int(TIMEOUT * 1000)}\n"
    )
    return str(path)


def run_check(config: str, *args: str) -> int:
    return main(["dnsbl", "check", "-c", config, *args])


def test_command_nothing_listed(
    dns_server: DnsServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, dns_server, [SPAMHAUS, BARE], ["192.0.2.11/32"])
    assert run_check(config) == 0
    assert capsys.readouterr().out == (
        "1 address checked in 2 zones: 0 listings, 0 failed lookups\n"
    )


def test_command_listing(
    dns_server: DnsServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, dns_server, [SPAMHAUS, SILENT], ["192.0.2.10/31"])
    assert run_check(config) == 1  # a listing counts for more than a failed lookup
    lines = capsys.readouterr().out.splitlines()  # by address, then zone; clear ones left out
    assert lines[0].startswith("FAILED   192.0.2.10 on silent.example: no answer within 300 ms")
    assert lines[1].startswith("LISTED   192.0.2.10 on zen.spamhaus.org: 127.0.0.2, 127.0.0.4")
    assert REASON in lines[1]
    assert lines[2].startswith("FAILED   192.0.2.11 on silent.example")
    assert lines[3] == "2 addresses checked in 2 zones: 1 listing, 2 failed lookups"


def test_command_failed_lookups_only(
    dns_server: DnsServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, dns_server, [SPAMHAUS, REFUSING, BROKEN], [])
    assert run_check(config, "192.0.2.11") == 4
    out = capsys.readouterr().out
    assert "REFUSED  192.0.2.11 on refusing.example: the list refused the query" in out
    assert "FAILED   192.0.2.11 on broken.example:" in out
    assert "SERVFAIL" in out
    assert out.endswith("1 address checked in 3 zones: 0 listings, 2 failed lookups\n")


def test_command_addresses_replace_the_monitored_networks(
    dns_server: DnsServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, dns_server, [SPAMHAUS], ["192.0.2.11/32"])
    assert run_check(config, "--json", str(LISTED_V6)) == 1
    answers = json.loads(capsys.readouterr().out)
    assert answers == [
        {
            "address": "2001:db8::25",
            "zone": SPAMHAUS,
            "status": "listed",
            "codes": ["127.0.0.2"],
            "reason": REASON,
            "detail": answers[0]["detail"],
        }
    ]
    assert "SBL" in answers[0]["detail"]


def test_command_without_addresses(
    dns_server: DnsServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, dns_server, [SPAMHAUS], [])
    assert run_check(config) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "alerts.monitored_networks" in captured.err


def test_command_bad_address(
    dns_server: DnsServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, dns_server, [SPAMHAUS], ["192.0.2.11/32"])
    assert run_check(config, "192.0.2.300") == 2
    captured = capsys.readouterr()
    assert captured.err == "sendwarden: '192.0.2.300' is not an IP address or network\n"
    assert captured.out == ""
