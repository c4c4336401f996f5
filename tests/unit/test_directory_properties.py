"""Properties of the merged directory over generated sources: whatever two sources and
the config say, every domain has at most one owner, the config's word is final, and a
customer who claims another's domain in the panel never takes it over."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from sendwarden.config import settings_from_mapping
from sendwarden.directory.live import DirectoryLookups
from sendwarden.directory.snapshot import Snapshot, write_snapshot
from sendwarden.directory.sources import SourceData
from sendwarden.policy.accounts import AccountDirectory, ConfiguredAccounts

ACCOUNTS = st.sampled_from(["acme", "globex", "initech", "mallory"])
DOMAINS = st.sampled_from(["a.example", "b.example", "c.example", "d.example", "e.example"])
CLAIMS = st.lists(st.tuples(DOMAINS, ACCOUNTS), max_size=8)


def source(name: str, claims: list[tuple[str, str]]) -> SourceData:
    data = SourceData(name, name)
    for place, (domain, account) in enumerate(claims, start=1):
        data.account(account, place)
        data.domains.append((domain, account, place))
    return data


def build(tmp: Path, name: str, sources: list[SourceData], previous: Snapshot | None) -> Snapshot:
    write_snapshot(tmp / name, sources, previous=previous)
    return Snapshot(tmp / name)


def directory(snapshot: Snapshot, config: dict[str, str]) -> AccountDirectory:
    by_account: dict[str, list[str]] = {}
    for domain, account in config.items():
        by_account.setdefault(account, []).append(domain)
    accounts = [{"id": account, "domains": domains} for account, domains in by_account.items()]
    configured = settings_from_mapping({"accounts": accounts}).accounts
    lookups = DirectoryLookups(ConfiguredAccounts(configured), snapshot)
    return AccountDirectory(configured, lookups=lambda: lookups)


@settings(max_examples=60, deadline=None)
@given(
    before=CLAIMS,
    map_claims=CLAIMS,
    sql_claims=CLAIMS,
    config=st.dictionaries(DOMAINS, ACCOUNTS, max_size=2),
)
def test_merged_ownership(
    before: list[tuple[str, str]],
    map_claims: list[tuple[str, str]],
    sql_claims: list[tuple[str, str]],
    config: dict[str, str],
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        old = build(Path(tmp), "old.db", [source("map", before)], None)
        new = build(
            Path(tmp), "new.db", [source("map", map_claims), source("sql", sql_claims)], old
        )
        accounts = directory(new, config)
        for domain in ["a.example", "b.example", "c.example", "d.example", "e.example"]:
            owner = accounts.owner_of_domain(domain, subdomains=False)
            claimants = {a for d, a in map_claims + sql_claims if d == domain}
            holders = [
                account_id
                for account_id in {a for _, a in map_claims + sql_claims} | set(config.values())
                if (account := accounts.get(account_id)) is not None and domain in account.domains
            ]
            assert len(holders) <= 1, (domain, holders)  # never two accounts' domain
            if domain in config:  # the config's word is final
                assert owner is not None and owner.id == config[domain]
                continue
            if len(claimants) == 1:
                assert owner is not None and owner.id in claimants
            elif len(claimants) > 1:
                previous = old.owner("domain", domain)
                expected = previous if previous in claimants else None
                assert (owner.id if owner else None) == expected
            else:
                assert owner is None
            if owner is not None:
                login = accounts.by_login(f"someone@{domain}")
                assert login is not None and login.id == owner.id
            else:
                assert accounts.by_login(f"someone@{domain}") is None


def test_a_customer_who_claims_anothers_domain_does_not_get_it(tmp_path: Path) -> None:
    """Mallory adds acme's domain to her panel: acme keeps it, mallory's mailboxes in it
    are not hers, and the conflict is reported."""
    old = build(tmp_path, "old.db", [source("sql", [("acme.example", "acme")])], None)
    hostile = [("acme.example", "acme"), ("acme.example", "mallory"), ("m.example", "mallory")]
    new = build(tmp_path, "new.db", [source("sql", hostile)], old)
    accounts = directory(new, {})
    owner = accounts.by_login("ceo@acme.example")
    assert owner is not None and owner.id == "acme"
    mallory = accounts.get("mallory")
    assert mallory is not None and mallory.domains == ("m.example",)
    (conflict,) = new.conflicts()
    assert conflict.kept == "acme" and conflict.claimants == ("acme", "mallory")
