"""Write sendwarden TOML configs for tests (the keys of DESIGN.md "External contract").

Tests state only what they care about (accounts, a policy override); everything else gets
a test default. Note the default ``trusted_networks`` is empty: every test client
connects from 127.0.0.1, and the production example trusts 127.0.0.0/8, which would make
every unauthenticated test client trusted.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

#: The account most tests use: SASL login alice@acme.example, local uid 65534 (nobody).
DEFAULT_ACCOUNT: dict[str, Any] = {
    "id": "acme",
    "logins": ["alice@acme.example"],
    "uids": [65534],
    "domains": ["acme.example"],
    "networks": [],
}
DEFAULT_SASL_USERS: dict[str, str] = {"alice@acme.example": "alice-secret"}
DEFAULT_LOCAL_DOMAINS: tuple[str, ...] = ("hosting.example",)


def build_config(
    *,
    socket: str,
    redis_url: str,
    accounts: Sequence[Mapping[str, Any]] | None = None,
    policy: Mapping[str, Any] | None = None,
    consent: Mapping[str, Any] | None = None,
    local_domains: Sequence[str] = DEFAULT_LOCAL_DOMAINS,
    consent_database: str | None = None,
    extra: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """The config as a dict; ``policy``/``consent`` override single keys of the defaults,
    ``extra`` adds or merges whole tables (e.g. ``{"log": {"level": "debug"}}``)."""
    config: dict[str, Any] = {
        # The milter runs as root in tests and Postfix connects as user postfix.
        "milter": {"socket": socket, "socket_mode": "0666"},
        "redis": {"url": redis_url},
        "policy": {
            "local_domains": list(local_domains),
            "trusted_networks": [],
            "recipients_per_hour": 500,
            "max_attachment_bytes": 20 * 1024 * 1024,
            "on_store_error": "tempfail",
            **dict(policy or {}),
        },
        "consent": {
            "database": consent_database or "sqlite:///:memory:",
            "bulk_recipient_threshold": 50,
            **dict(consent or {}),
        },
        # Off unless a test asks: parallel milters would all want the default port.
        "metrics": {"listen": "", "api_listen": ""},
        "accounts": [dict(a) for a in (accounts if accounts is not None else [DEFAULT_ACCOUNT])],
    }
    for table, values in (extra or {}).items():
        if isinstance(config.get(table), dict):
            config[table].update(values)
        elif isinstance(values, Mapping):
            config[table] = dict(values)
        else:  # a list of tables, e.g. [[dkim]]
            config[table] = [dict(value) for value in values]
    return config


def write_config(path: str | os.PathLike[str], **kwargs: Any) -> Path:
    """``build_config(**kwargs)`` written as TOML to ``path``; returns the path.

    Without ``consent_database`` the consent store is an SQLite file next to the config.
    """
    path = Path(path)
    if kwargs.get("consent_database") is None:
        kwargs["consent_database"] = f"sqlite:///{path.parent / 'consent.db'}"
    path.write_text(dumps_toml(build_config(**kwargs)), encoding="utf-8")
    return path


def dumps_toml(config: Mapping[str, Any]) -> str:
    """Serialise the subset of TOML configs use: tables of scalars and scalar lists, and
    arrays of such tables. (No TOML writer is a dependency; tomllib only reads.)"""
    lines: list[str] = []
    scalars = {k: v for k, v in config.items() if not _is_table(v) and not _is_table_list(v)}
    lines.extend(f"{_key(k)} = {_value(v)}" for k, v in scalars.items())
    for name, value in config.items():
        if _is_table(value):
            lines.append(f"\n[{_key(name)}]")
            lines.extend(f"{_key(k)} = {_value(v)}" for k, v in value.items())
        elif _is_table_list(value):
            for table in value:
                lines.append(f"\n[[{_key(name)}]]")
                lines.extend(f"{_key(k)} = {_value(v)}" for k, v in table.items())
    return "\n".join(lines).lstrip("\n") + "\n"


def _is_table(value: Any) -> bool:
    return isinstance(value, Mapping)


def _is_table_list(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, Mapping) for v in value)


def _key(key: str) -> str:
    return key if key.replace("_", "").replace("-", "").isalnum() else json.dumps(key)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        # JSON string escapes (\" \\ \n \t \uXXXX ...) are all valid TOML basic-string escapes.
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {type(value).__name__} to TOML: {value!r}")
