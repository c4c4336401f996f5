"""Config validation: good files load, every bad key is named in one line."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from sendwarden.cli import main
from sendwarden.config import ConfigError, load_settings, settings_from_mapping

EXAMPLES = Path(__file__).resolve().parents[2] / "deploy"


def test_defaults_follow_the_policy_numbers() -> None:
    settings = settings_from_mapping({})
    assert settings.policy.recipients_per_hour == 500
    assert settings.policy.max_attachment_bytes == 20 * 1024 * 1024
    assert settings.policy.on_store_error == "tempfail"
    assert ipaddress.ip_network("127.0.0.0/8") in settings.policy.trusted_networks


def dev_config(tmp_path: Path) -> Path:
    """deploy/sendwarden.dev.toml as `make run-config` fills it in."""
    text = (EXAMPLES / "sendwarden.dev.toml").read_text()
    for placeholder, value in (("@RUN_DIR@", str(tmp_path)), ("@REDIS_PORT@", "6379"),
                               ("@MILTER_PORT@", "8891")):  # fmt: skip
        text = text.replace(placeholder, value)
    path = tmp_path / "sendwarden.toml"
    path.write_text(text)
    return path


def test_shipped_configs_are_valid(tmp_path: Path) -> None:
    for path in (dev_config(tmp_path), EXAMPLES / "sendwarden.example.toml"):
        assert load_settings(path).accounts


def test_account_fields_are_typed_and_normalised() -> None:
    settings = settings_from_mapping(
        {
            "policy": {"local_domains": ["Hosting.Example."]},
            "accounts": [
                {
                    "id": "acme",
                    "logins": ["alice@acme.example"],
                    "uids": [1001],
                    "domains": ["ACME.example", "bücher.example"],
                    "networks": ["192.0.2.10/32"],
                    "recipients_per_hour": 1000,
                }
            ],
        }
    )
    acme = settings.account("acme")
    assert settings.policy.local_domains == ("hosting.example",)
    assert acme.domains == ("acme.example", "xn--bcher-kva.example")
    assert acme.networks == (ipaddress.ip_network("192.0.2.10/32"),)
    assert settings.recipients_per_hour(acme) == 1000
    assert settings.recipients_per_hour(None) == 500


@pytest.mark.parametrize(
    ("document", "key", "problem"),
    [
        ({"milter": {"sockt": "x"}}, "milter.sockt", "unknown key"),
        ({"nonsense": {}}, "nonsense", "unknown key"),
        ({"milter": {"socket": "tcp:25"}}, "milter.socket", "unknown socket scheme"),
        ({"milter": {"socket": "inet:99999@127.0.0.1"}}, "milter.socket", "port"),
        ({"policy": {"recipients_per_hour": "500"}}, "policy.recipients_per_hour", "whole number"),
        ({"policy": {"recipients_per_hour": 0}}, "policy.recipients_per_hour", "positive"),
        ({"policy": {"on_store_error": "ignore"}}, "policy.on_store_error", "'tempfail'"),
        (
            {"policy": {"trusted_networks": ["10.0.0.0/33"]}},
            "policy.trusted_networks[0]",
            "network",
        ),
        ({"policy": {"trusted_networks": "10.0.0.0/8"}}, "policy.trusted_networks", "list"),
        ({"policy": {"local_domains": ["bad..domain"]}}, "policy.local_domains[0]", "domain"),
        ({"accounts": [{"logins": []}]}, "accounts[0].id", "required"),
        ({"accounts": [{"id": "a", "uids": ["x"]}]}, "accounts[a].uids[0]", "whole number"),
        (
            {"accounts": [{"id": "a", "networks": ["192.0.2.300/32"]}]},
            "accounts[a].networks[0]",
            "network",
        ),
        (
            {"accounts": [{"id": "a", "logins": ["x@y"]}, {"id": "b", "logins": ["X@y"]}]},
            "accounts[b].logins",
            "already belongs to account 'a'",
        ),
        ({"accounts": [{"id": "a"}, {"id": "a"}]}, "accounts[a].id", "twice"),
        ({"accounts": [{"id": "a", "colour": "red"}]}, "accounts[a].colour", "unknown key"),
    ],
)
def test_bad_config_names_the_key(document: dict[str, object], key: str, problem: str) -> None:
    with pytest.raises(ConfigError) as raised:
        settings_from_mapping(document)
    assert raised.value.key == key
    assert problem in str(raised.value)


def test_check_config_prints_one_clear_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[policy]\ntrusted_networks = ["127.0.0.0/8", "10.1.2.0/40"]\n')
    assert main(["check-config", "-c", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "sendwarden: config error: policy.trusted_networks[1]: '10.1.2.0/40' is not a valid "
        "network ('10.1.2.0/40' does not appear to be an IPv4 or IPv6 network)"
    ]


def test_check_config_reports_broken_toml_and_missing_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text("[policy\n")
    assert main(["check-config", "-c", str(broken)]) == 2
    assert "not valid TOML" in capsys.readouterr().err
    assert main(["check-config", "-c", str(tmp_path / "absent.toml")]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_check_config_accepts_a_good_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert main(["check-config", "-c", str(dev_config(tmp_path))]) == 0
    assert "OK" in capsys.readouterr().out
