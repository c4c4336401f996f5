"""The PostgreSQL roles and grants of docs/operations.md, run as written: the owner
migrates, the services' role records and reads, the staff role only reads."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest

from sendwarden.consent.model import EventKind, NewEvent
from sendwarden.consent.store import open_consent_store
from sendwarden.store import StoreError
from tests.support.postgres import PostgresServer

pytestmark = pytest.mark.postgres
GUIDE = Path(__file__).resolve().parents[2] / "docs" / "operations.md"


def _guide_sql() -> tuple[list[str], list[str]]:
    """The statements of the guide's two SQL blocks: roles, then grants."""
    blocks = re.findall(r"```sql\n(.*?)```", GUIDE.read_text(), re.S)
    assert len(blocks) == 2, "the guide has a roles block and a grants block"
    statements = []
    for block in blocks:
        lines = [line for line in block.splitlines() if not line.startswith(("--", "\\"))]
        statements.append([s.strip() for s in " ".join(lines).split(";") if s.strip()])
    return statements[0], statements[1]


def _event(recipient: str) -> NewEvent:
    now = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)
    return NewEvent(
        account="acme", recipient=recipient, kind=EventKind.GRANTED, occurred_at=now,
        recorded_by="test",
    )  # fmt: skip


def test_the_guide_s_roles_and_grants_work(postgres_server: PostgresServer) -> None:
    roles, grants = _guide_sql()
    admin = postgres_server.url()
    suffix = postgres_server.port
    names = {name: f"{name}_{suffix}" for name in ("sendwarden_owner", "sendwarden_app",
                                                    "sendwarden_staff")}  # fmt: skip
    database = f"sendwarden_{suffix}"

    def rename(statement: str) -> str:
        for name, unique in names.items():
            statement = re.sub(rf"\b{name}\b", unique, statement)
        return re.sub(r"\bsendwarden\b(?!_)", database, statement)

    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(rename(roles[0]))  # CREATE ROLE owner
        conn.execute(rename(roles[1]))  # CREATE DATABASE
    db_admin = f"{postgres_server.url(database)}"
    with psycopg.connect(db_admin, autocommit=True) as conn:
        for statement in roles[2:]:
            conn.execute(rename(statement))

    def url(role: str) -> str:
        return (
            f"postgresql://{names[role]}@{postgres_server.host}:{postgres_server.port}/{database}"
        )

    open_consent_store(url("sendwarden_owner")).close()  # the owner migrates
    with psycopg.connect(url("sendwarden_owner"), autocommit=True) as conn:
        for statement in grants:
            conn.execute(rename(statement))

    app = open_consent_store(url("sendwarden_app"))
    try:
        app.append([_event("carol@example.org")])
        assert app.history("carol@example.org", None)
    finally:
        app.close()
    staff = open_consent_store(url("sendwarden_staff"))
    try:
        assert len(staff.history("carol@example.org", None)) == 1
        with pytest.raises(StoreError):
            staff.append([_event("dave@example.org")])
    finally:
        staff.close()
