"""``creds --format env``: what each engine's lines say, without a broker."""

from __future__ import annotations

import shlex
import subprocess

import pytest

from dbaccess.cli.creds import shell_exports
from dbaccess.wire import SessionGranted


def granted(engine: str, sslmode: str | None) -> SessionGranted:
    return SessionGranted.model_validate(
        {
            "id": "s-1",
            "target": "t",
            "role": "readonly",
            "engine": engine,
            "db_user": "dba_alice_0123456789",
            "state": "active",
            "created_at": "2026-01-01T00:00:00Z",
            "expires_at": "2026-01-01T01:00:00Z",
            "host": "db.internal",
            "port": 5432,
            "database": "app",
            "sslmode": sslmode,
            "password": 'p\'w $(touch /tmp/x) "q"',
        }
    )


def exported(text: str) -> dict[str, str]:
    """What sh sees after ``eval`` of the lines (and that each is exported)."""
    script = f"eval {shlex.quote(text)}; env"
    out = subprocess.run(
        ["sh", "-c", script],
        env={"PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


@pytest.mark.parametrize(
    ("sslmode", "expected"),
    [("verify-full", "verify-full"), ("disable", "disable"), (None, "prefer")],
)
def test_postgres_lines_always_name_the_sslmode(sslmode: str | None, expected: str) -> None:
    text = shell_exports(granted("postgres", sslmode))
    assert all(line.startswith("export ") for line in text.splitlines())
    env = exported(text)
    assert env["PGSSLMODE"] == expected
    assert env["PGPASSWORD"] == 'p\'w $(touch /tmp/x) "q"'  # quoted, never run
    assert (env["PGHOST"], env["PGPORT"], env["PGUSER"], env["PGDATABASE"]) == (
        "db.internal",
        "5432",
        "dba_alice_0123456789",
        "app",
    )
    assert env["DBACCESS_SESSION_ID"] == "s-1"


def test_mariadb_lines_are_the_ones_the_client_reads_plus_user_and_database() -> None:
    env = exported(shell_exports(granted("mariadb", None)))
    assert env["MYSQL_HOST"] == "db.internal" and env["MYSQL_TCP_PORT"] == "5432"
    assert env["MYSQL_PWD"] == 'p\'w $(touch /tmp/x) "q"'
    assert env["MYSQL_USER"] == "dba_alice_0123456789" and env["MYSQL_DATABASE"] == "app"
