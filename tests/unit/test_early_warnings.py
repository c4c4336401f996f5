"""The early warnings' pure rules: near the hourly limit, a surge over the usual
volume, and a listing told who sent most through the address."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from sendwarden.alerts.early import listing_with_senders, near_limit_finding, surge_finding
from sendwarden.alerts.findings import ACCOUNT_NEAR_LIMIT, ACCOUNT_SURGE, DNSBL_LISTING, Finding


def test_near_limit_from_the_share_on() -> None:
    assert near_limit_finding("acme", 399, 500, 0.8) is None
    finding = near_limit_finding("acme", 400, 500, 0.8)
    assert finding is not None and finding.kind == ACCOUNT_NEAR_LIMIT
    assert finding.key == "near-limit:acme"
    assert finding.subject == "Account acme has used 80% of its hourly limit"
    assert near_limit_finding("acme", 500, 500, 0) is None  # 0: off


@given(used=st.integers(0, 10_000), limit=st.integers(1, 10_000), share=st.floats(0.01, 1))
def test_near_limit_fires_exactly_at_or_over_the_share(used: int, limit: int, share: float) -> None:
    assert (near_limit_finding("a", used, limit, share) is not None) == (used >= share * limit)


def test_surge_needs_history_a_minimum_and_the_factor() -> None:
    assert surge_finding("acme", 500, None, 5, 50) is None  # no usual volume yet
    assert surge_finding("acme", 40, 5.0, 5, 50) is None  # 8x, but under the minimum
    assert surge_finding("acme", 99, 20.0, 5, 50) is None  # 4.95x
    finding = surge_finding("acme", 100, 20.0, 5, 50)
    assert finding is not None and finding.kind == ACCOUNT_SURGE
    assert finding.subject == "Account acme is sending 5 times its usual hourly volume"
    assert surge_finding("acme", 10_000, 1.0, 0, 50) is None  # 0: off


def test_a_listing_names_the_top_senders_and_the_unknown_address_ones_apart() -> None:
    listing = Finding(
        key="dnsbl:192.0.2.10:zen",
        kind=DNSBL_LISTING,
        subject="listed",
        lines=("zen returned 127.0.0.2",),
        facts={"address": "192.0.2.10"},
    )
    told = listing_with_senders(listing, "192.0.2.10", [("beta", 60), ("acme", 8)], [("gamma", 3)])
    assert told.key == listing.key and told.subject == listing.subject  # same condition
    assert told.lines[:2] == (
        "zen returned 127.0.0.2",
        "Accounts that sent most through 192.0.2.10 in the hour before:",
    )
    assert told.lines[2:4] == ("  beta: 60 recipients", "  acme: 8 recipients")
    assert told.lines[-1] == "  gamma: 3 recipients"
    assert told.facts["top_senders"] == [
        {"account": "beta", "recipients": 60}, {"account": "acme", "recipients": 8}
    ]  # fmt: skip
    quiet = listing_with_senders(listing, "192.0.2.10", [], [])
    assert quiet.lines[-1] == "No account sent mail through 192.0.2.10 in the hour before."
