"""The ``[consent]`` keys the ledger reads: a bad URL is a config error naming the key."""

from __future__ import annotations

import pytest

from sendwarden.config import ConfigError, settings_from_mapping


def test_defaults() -> None:
    consent = settings_from_mapping({}).consent
    assert consent.database == "sqlite:////var/lib/sendwarden/consent.db"
    assert consent.timeout_ms == 1000


def test_a_postgresql_url_and_a_timeout() -> None:
    consent = settings_from_mapping(
        {"consent": {"database": "postgresql://sw@db.example/sw", "timeout_ms": 300}}
    ).consent
    assert (consent.database, consent.timeout_ms) == ("postgresql://sw@db.example/sw", 300)


@pytest.mark.parametrize(
    ("table", "key", "problem"),
    [
        ({"database": "sqlite://consent.db"}, "consent.database", "four slashes"),
        ({"database": "mysql://db/sw"}, "consent.database", "unknown database URL"),
        ({"database": 5}, "consent.database", "expected a string"),
        ({"timeout_ms": 0}, "consent.timeout_ms", "positive"),
    ],
)
def test_bad_values_name_the_key(table: dict[str, object], key: str, problem: str) -> None:
    with pytest.raises(ConfigError) as raised:
        settings_from_mapping({"consent": table})
    assert raised.value.key == key and problem in raised.value.problem
