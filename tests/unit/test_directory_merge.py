"""Merging the sources and the config's overrides: precedence, conflicts, the previous
owner keeping a contested domain, the shrink guard, and logins that need no listing."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from sendwarden.config import settings_from_mapping
from sendwarden.directory.live import DirectoryLookups
from sendwarden.directory.snapshot import ShrinkRefused, Snapshot, write_snapshot
from sendwarden.directory.sources import SourceData, parse_domain_map
from sendwarden.directory.sql import rows_to_data
from sendwarden.policy.accounts import AccountDirectory, ConfiguredAccounts
from sendwarden.policy.facts import Client, Transaction
from sendwarden.policy.identity import RULE_IMPERSONATION, identity_verdict
from sendwarden.policy.rendering import domain_skeleton

MAP = "acme.example: acme\nshop.example: acme\nglobex.example: globex\n"


def snapshot(tmp_path: Path, *sources: SourceData, name: str = "s.db", **options) -> Snapshot:  # type: ignore[no-untyped-def]
    write_snapshot(tmp_path / name, sources, **options)
    return Snapshot(tmp_path / name)


def directory(snap: Snapshot | None, accounts: list[dict] | None = None) -> AccountDirectory:  # type: ignore[type-arg]
    settings = settings_from_mapping({"accounts": accounts or []})
    lookups = DirectoryLookups(ConfiguredAccounts(settings.accounts), snap)
    return AccountDirectory(settings.accounts, lookups=lambda: lookups)


def test_map_accounts_own_their_domains_and_mailboxes(tmp_path: Path) -> None:
    d = directory(snapshot(tmp_path, parse_domain_map(MAP, "/etc/userdomains")))
    acme = d.get("acme")
    assert acme is not None and acme.domains == ("acme.example", "shop.example")
    # A login that is an address in an account's domain needs no listing ...
    assert d.by_login("Info@Shop.example") == acme
    # ... but only in its own domain, not a subdomain, and a bare name is nobody's.
    assert d.by_login("x@sub.shop.example") is None
    assert d.by_login("acme") is None
    assert d.owner_of_domain("www.globex.example") == d.get("globex")
    assert d.owner_of_domain("www.globex.example", subdomains=False) is None


def test_config_overrides_win(tmp_path: Path) -> None:
    sql = rows_to_data(
        "sql",
        ["account", "domain", "login", "recipients_per_hour", "allow_subdomains"],
        [("acme", "acme.example", "ftp-acme", 50, 1), ("globex", "globex.example", None, 9, None)],
    )
    snap = snapshot(tmp_path, parse_domain_map("contested.example: globex\n", "map"), sql)
    d = directory(
        snap,
        [
            # Writes only the limit: allow_subdomains still comes from the source.
            {"id": "acme", "recipients_per_hour": 1000, "domains": ["contested.example"]},
            {"id": "globex", "allow_subdomains": False, "networks": ["192.0.2.0/24"]},
            {"id": "config-only", "logins": ["ftp-acme"]},
        ],
    )
    acme, globex = d.get("acme"), d.get("globex")
    assert acme is not None and globex is not None
    assert acme.recipients_per_hour == 1000 and acme.allow_subdomains is True
    assert set(acme.domains) == {"acme.example", "contested.example"}
    # The config gave contested.example to acme: globex's source claim is overridden.
    assert d.owner_of_domain("contested.example") == acme
    assert "contested.example" not in globex.domains
    assert globex.recipients_per_hour == 9
    # The config's listed login wins over the source's.
    config_only = d.by_login("FTP-ACME")
    assert config_only is not None and config_only.id == "config-only"
    assert "ftp-acme" not in acme.logins
    import ipaddress

    assert d.by_address(ipaddress.ip_address("192.0.2.7")) == globex


def test_a_domain_claimed_twice_stays_with_its_previous_owner(tmp_path: Path) -> None:
    first = snapshot(tmp_path, parse_domain_map(MAP, "map"), name="1.db")
    both = (
        "acme.example: acme\nglobex.example: globex\nacme.example: globex\n"
        "new.example: a\nnew.example: b\n"
    )
    report = write_snapshot(tmp_path / "2.db", [parse_domain_map(both, "map")], previous=first)
    second = Snapshot(tmp_path / "2.db")
    conflicts = {c.key: c for c in report.conflicts}
    assert conflicts["acme.example"].kept == "acme"
    assert conflicts["acme.example"].claimants == ("acme", "globex")
    assert conflicts["new.example"].kept is None  # nobody owned it before: nobody now
    assert "acme.example is claimed by 'acme' and 'globex'; it stays with 'acme'" in str(
        conflicts["acme.example"]
    )
    d = directory(second)
    assert d.owner_of_domain("acme.example") == d.get("acme")
    assert d.owner_of_domain("new.example") is None
    assert {c.key for c in second.conflicts_of("globex")} == {"acme.example"}


def test_the_same_account_on_many_lines_owns_them_all(tmp_path: Path) -> None:
    text = "".join(f"d{i}.example: acme\n" for i in range(50)) + "d0.example: acme\n"
    report = write_snapshot(tmp_path / "s.db", [parse_domain_map(text, "map")])
    assert report.conflicts == [] and report.domains == 50 and report.accounts == 1


def test_losing_most_of_the_directory_at_once_is_refused(tmp_path: Path) -> None:
    big = "".join(f"d{i}.example: a{i}\n" for i in range(10))
    first = snapshot(tmp_path, parse_domain_map(big, "map"), name="1.db")
    small = "".join(f"d{i}.example: a{i}\n" for i in range(4))
    with pytest.raises(ShrinkRefused, match="max_shrink_percent = 50%"):
        write_snapshot(
            tmp_path / "2.db",
            [parse_domain_map(small, "map")],
            previous=first,
            max_shrink_percent=50,
        )
    assert not (tmp_path / "2.db").exists()
    half = "".join(f"d{i}.example: a{i}\n" for i in range(5))
    write_snapshot(
        tmp_path / "3.db", [parse_domain_map(half, "map")], previous=first, max_shrink_percent=50
    )


def test_system_users_name_the_account_of_a_uid(tmp_path: Path) -> None:
    sql = rows_to_data(
        "sql",
        ["account", "system_user", "uid"],
        [("customer7", "web7", None), ("acme", None, 4242)],
    )
    snap = snapshot(
        tmp_path,
        parse_domain_map(MAP, "map"),
        sql,
        system_users={1001: "acme", 1002: "web7", 1003: "stranger", 4242: "clash", 0: "root"},
    )
    d = directory(snap, [{"id": "pinned", "uids": [1003]}])
    assert d.by_uid(1001) == d.get("acme")  # the account named by the user name
    customer7 = d.by_uid(1002)
    assert customer7 is not None and customer7.id == "customer7"  # a source named the user
    pinned = d.by_uid(1003)
    assert pinned is not None and pinned.id == "pinned"  # the config's uid wins
    assert d.by_uid(4242) == d.get("acme")  # a listed uid wins over the password database
    root = d.by_uid(0)
    assert root is not None and root.id == "root" and root.domains == ()
    assert d.by_uid(99999) is None
    record = snap.record("root")
    assert record is not None and str(record.origin) == "system_users (password database, uid 0)"


def test_origins_name_source_and_line(tmp_path: Path) -> None:
    sql = rows_to_data(
        "sql db", ["account", "domain"], [("globex", "g2.example"), ("new", "n.example")]
    )
    snap = snapshot(tmp_path, parse_domain_map(MAP, "/etc/userdomains"), sql)
    globex = snap.record("globex")
    assert globex is not None
    assert str(globex.origin) == "domain_map /etc/userdomains line 3"
    assert [str(o) for o in globex.also] == ["sql db row 1"]
    origin = snap.origin_of("domain", "g2.example")
    assert origin is not None and str(origin) == "sql db row 1"


def test_without_a_snapshot_the_config_alone_answers() -> None:
    d = directory(None, [{"id": "acme", "domains": ["acme.example"]}])
    assert d.by_login("anyone@acme.example") == d.get("acme")
    assert d.get("nobody") is None


@pytest.mark.parametrize(
    "from_",
    [
        "ceo@gl\u043ebex.example",  # Cyrillic o: a look-alike of a domain only the map has
        "news@mail.gl\u043ebex.example",  # a subdomain of the look-alike
        "ceo@shop.ex\u0430mple",  # Cyrillic a in the suffix
    ],
)
def test_look_alikes_of_a_sources_domains_are_that_customers(tmp_path: Path, from_: str) -> None:
    """An unlisted proven sender may not use a domain a reader cannot tell from one
    that only the provider's own records (not the config) give to a customer."""
    d = directory(snapshot(tmp_path, parse_domain_map(MAP, "/etc/userdomains")))
    look = domain_skeleton(from_.rpartition("@")[2])
    owner = d.owner_of_look(look)
    assert owner is not None and owner.id in ("acme", "globex")
    client = Client(ipaddress.ip_address("192.0.2.7"), "host.example")
    txn = Transaction(client=client, trusted=True, mail_from="news@other.example")
    attribution = d.resolve(login=None, uid=None, client_address=client.address, trusted=True)
    txn.account, txn.account_source = attribution.account, attribution.source
    txn.headers = [("From", from_), ("To", "x@remote.example"), ("Subject", "hi")]
    verdict = identity_verdict(txn, d)
    assert verdict is not None and verdict.rule == RULE_IMPERSONATION


def test_a_snapshot_without_the_look_index_answers_nobody(tmp_path: Path) -> None:
    """A snapshot kept by an older version (no ``looks`` table) is read, not a crash."""
    import sqlite3

    path = tmp_path / "old.db"
    write_snapshot(path, [parse_domain_map(MAP, "/etc/userdomains")])
    with sqlite3.connect(path) as connection:
        connection.execute("DROP TABLE looks")
    connection.close()
    d = directory(Snapshot(path))
    assert d.owner_of_look(domain_skeleton("gl\u043ebex.example")) is None
    assert d.owner_of_domain("globex.example") == d.get("globex")
