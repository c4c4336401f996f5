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


# -- the merge, against a model of its rule claim by claim ------------------------------

KEYS = {
    "domain": st.sampled_from(["a.example", "b.example", "c.example"]),
    "login": st.sampled_from(["bob", "Bob", "BOB", "ftp", "ß", "ss", "eve@a.example"]),
    "uid": st.integers(1000, 1003),
    "system user": st.sampled_from(["acme", "web1", "web2"]),
}
GENERATED_SOURCE = st.fixed_dictionaries(
    {kind: st.lists(st.tuples(keys, ACCOUNTS), max_size=6) for kind, keys in KEYS.items()}
)


def generated(name: str, claims: dict[str, list[tuple[object, str]]]) -> SourceData:
    data = SourceData(name, name, "row")
    places = iter(range(1, 100))
    for kind, field in (
        ("domain", data.domains),
        ("login", data.logins),
        ("uid", data.uids),
        ("system user", data.system_users),
    ):
        for key, account in claims[kind]:
            place = next(places)
            data.account(account, place)
            field.append((key, account, place))  # type: ignore[attr-defined]
    return data


def model(
    sources: list[SourceData], previous: Snapshot | None, system_users: dict[int, str]
) -> tuple[dict[str, dict[object, tuple[str, int, int, object]]], list[tuple[object, ...]]]:
    """The merge claim by claim: each key's first claim owns it; another account's
    claim contests it; a contested key goes to its previous owner if a claimant, else
    to nobody; a uid no source lists goes to the account its user name names."""
    owner: dict[str, dict[object, tuple[str, int, int, object]]] = {kind: {} for kind in KEYS}
    contested: dict[str, dict[object, set[str]]] = {kind: {} for kind in KEYS}
    for src, data in enumerate(sources):
        for kind, claims in (
            ("domain", data.domains),
            ("login", data.logins),
            ("uid", data.uids),
            ("system user", data.system_users),
        ):
            for key, account, place in claims:
                folded = key.casefold() if kind == "login" else key  # type: ignore[attr-defined]
                earlier = owner[kind].get(folded)
                if earlier is None:
                    owner[kind][folded] = (account, src, place, key)
                elif earlier[0] != account:
                    contested[kind].setdefault(folded, {earlier[0]}).add(account)
    conflicts: list[tuple[object, ...]] = []
    for kind in ("domain", "login", "system user", "uid"):
        for key, claimants in contested[kind].items():
            names = tuple(sorted(claimants))
            before = previous.owner(kind, key) if previous is not None else None
            if before is not None and before in names:
                owner[kind][key] = (before, *owner[kind][key][1:])
            else:
                del owner[kind][key]
                before = None
            conflicts.append((kind, str(key), names, before))
    for uid, name in system_users.items():
        if uid in owner["uid"] or uid in contested["uid"]:
            continue
        listed = owner["system user"].get(name)
        owner["uid"][uid] = (listed[0] if listed else name, len(sources), uid, uid)
    return owner, conflicts


@settings(max_examples=150, deadline=None)
@given(
    before=st.lists(GENERATED_SOURCE, max_size=2),
    after=st.lists(GENERATED_SOURCE, min_size=1, max_size=3),
    system_users=st.dictionaries(st.integers(1000, 1005), st.sampled_from(["acme", "web1"])),
)
def test_the_merge_follows_its_rule_claim_by_claim(
    before: list[dict[str, list[tuple[object, str]]]],
    after: list[dict[str, list[tuple[object, str]]]],
    system_users: dict[int, str],
) -> None:
    """The merge (columns sorted by key, repeats settled) gives what claiming one by
    one gives: owners, their sources and places, conflicts in the order they arose,
    each account's domains, logins and uids in the order claimed, and the counts."""
    with tempfile.TemporaryDirectory() as tmp:
        old = None
        if before:
            sources = [generated(f"old{n}", claims) for n, claims in enumerate(before)]
            old = build(Path(tmp), "old.db", sources, None)
        sources = [generated(f"src{n}", claims) for n, claims in enumerate(after)]
        report = write_snapshot(
            Path(tmp) / "new.db", sources, previous=old, system_users=system_users
        )
        new = Snapshot(Path(tmp) / "new.db")
        owner, conflicts = model(sources, old, system_users)
        assert [(c.kind, c.key, c.claimants, c.kept) for c in report.conflicts] == conflicts
        assert [(c.kind, c.key, c.claimants, c.kept) for c in new.conflicts()] == conflicts
        for kind, keys in (
            ("domain", ["a.example", "b.example", "c.example"]),
            ("login", ["bob", "ftp", "ß", "ss", "eve@a.example"]),
            ("uid", list(range(1000, 1006))),
            ("system user", ["acme", "web1", "web2"]),
        ):
            for key in keys:
                folded = key.casefold() if isinstance(key, str) else key
                expected = owner[kind].get(folded)
                assert new.owner(kind, folded) == (expected and expected[0]), (kind, key)
                origin = new.origin_of(kind, folded)
                assert (origin and (origin.place, origin.label)) == (
                    expected
                    and (
                        expected[2],
                        "password database" if expected[1] == len(sources) else f"src{expected[1]}",
                    )
                ), (kind, key)
        for account in {a for kinds in owner.values() for a, *_ in kinds.values()}:
            record = new.record(account)
            assert record is not None
            assert record.domains == tuple(
                key for key, row in owner["domain"].items() if row[0] == account
            )
            assert record.logins == tuple(
                row[3] for row in owner["login"].values() if row[0] == account
            )
            assert record.uids == tuple(
                key for key, row in owner["uid"].items() if row[0] == account
            )
        assert (report.domains, report.logins, report.uids) == (
            len(owner["domain"]),
            len(owner["login"]),
            len(owner["uid"]),
        )
