"""The broker's PostgreSQL credential cannot escalate, even used directly by an attacker.

Each test logs in as the provisioner the bootstrap created (on a real server) and tries
what a stolen broker credential would try.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from dbaccess.sandbox.stack import PROVISIONER, Stack

pytestmark = pytest.mark.integration
VERIFIER = "SCRAM-SHA-256$4096:c2FsdHNhbHRzYWx0$c3RvcmVka2V5c3RvcmVka2V5:c2VydmVya2V5c2VydmVya2V5"


@pytest.fixture
def provisioner(stack: Stack) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    with stack.postgres.connect(
        "demo", user=PROVISIONER, password=stack.provisioner_password
    ) as conn:
        yield conn


def soon(minutes: int = 10) -> datetime:
    return datetime.now(UTC) + timedelta(minutes=minutes)


def create(
    conn: psycopg.Connection[tuple[object, ...]],
    username: str = "dba_probe_1",
    verifier: str = VERIFIER,
    until: datetime | None = None,
    group: str = "dbaccess_readonly",
) -> None:
    conn.execute(
        "SELECT dbaccess.create_user(%s, %s, %s, %s, 5, true, NULL, false)",
        (username, verifier, until or soon(), group),
    )


@pytest.mark.parametrize(
    "statement",
    [
        "CREATE ROLE evil SUPERUSER LOGIN PASSWORD 'x'",
        "CREATE ROLE evil LOGIN PASSWORD 'x'",
        "ALTER ROLE dbaccess_provisioner SUPERUSER",
        "ALTER ROLE dbaccess_provisioner CREATEROLE",
        "GRANT pg_execute_server_program TO dbaccess_provisioner",
        "GRANT dbaccess_readwrite TO dbaccess_provisioner",
        "GRANT dbaccess_owner TO dbaccess_provisioner",
        "ALTER ROLE dbaccess_admin PASSWORD 'taken-over'",
        "DROP ROLE dbaccess_readonly",
        "SET ROLE dbaccess_owner",
        "SELECT * FROM dbaccess.managed_users",
        "INSERT INTO dbaccess.managed_users VALUES ('dbaccess_admin')",
        "COPY (SELECT 1) TO PROGRAM 'id'",
    ],
)
def test_direct_escalation_is_refused(
    provisioner: psycopg.Connection[tuple[object, ...]], statement: str
) -> None:
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        provisioner.execute(statement.encode())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"username": "dbaccess_admin"}, "not a managed user name"),
        ({"username": "dba_x SUPERUSER"}, "not a managed user name"),
        ({"username": 'dba_x" SUPERUSER --'}, "not a managed user name"),
        ({"group": "pg_execute_server_program"}, "not an allowed group role"),
        ({"group": "dbaccess_owner"}, "not an allowed group role"),
        ({"group": "dbaccess_admin"}, "not an allowed group role"),
        ({"verifier": "plaintext-password"}, "SCRAM-SHA-256 verifier"),
        ({"until": soon(60 * 24 * 365)}, "is outside"),
        ({"until": soon(-5)}, "is outside"),
    ],
)
def test_functions_validate_their_arguments(
    provisioner: psycopg.Connection[tuple[object, ...]], kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(psycopg.errors.RaiseException, match=message):
        create(provisioner, **kwargs)  # type: ignore[arg-type]


def test_cannot_touch_accounts_it_did_not_create(
    provisioner: psycopg.Connection[tuple[object, ...]], stack: Stack
) -> None:
    for function, args in [
        ("revoke_user", ("dbaccess_admin",)),
        ("revoke_user", ("dbaccess_readonly",)),
        ("renew_user", ("dbaccess_admin", soon())),
    ]:
        placeholders = ", ".join(["%s"] * len(args))
        with pytest.raises(psycopg.errors.RaiseException, match="not created by dbaccess"):
            provisioner.execute(f"SELECT dbaccess.{function}({placeholders})".encode(), args)
    # an existing account's password cannot be replaced by "creating" it again
    with stack.postgres.connect() as admin:
        admin.execute("CREATE ROLE dba_victim_1 LOGIN PASSWORD 'original-pw-1'")
    try:
        with pytest.raises(psycopg.errors.DuplicateObject):
            create(provisioner, username="dba_victim_1")
        stack.postgres.connect(user="dba_victim_1", password="original-pw-1").close()
        with pytest.raises(psycopg.errors.RaiseException, match="not created by dbaccess"):
            provisioner.execute("SELECT dbaccess.revoke_user('dba_victim_1')")
        # the batch revocation answers the same for each, and touches none of them
        rows = provisioner.execute(
            "SELECT * FROM dbaccess.revoke_users(%s)",
            (["dba_victim_1", "dbaccess_admin", "dbaccess_readonly", PROVISIONER],),
        ).fetchall()
        assert sorted(rows) == sorted(
            (name, f"dbaccess: {name} was not created by dbaccess")
            for name in ["dba_victim_1", "dbaccess_admin", "dbaccess_readonly", PROVISIONER]
        )
        stack.postgres.connect(user="dba_victim_1", password="original-pw-1").close()
    finally:
        with stack.postgres.connect() as admin:
            admin.execute("DROP ROLE dba_victim_1")


def test_what_it_creates_has_no_power(
    provisioner: psycopg.Connection[tuple[object, ...]], stack: Stack
) -> None:
    create(provisioner, username="dba_probe_2")
    try:
        with stack.postgres.connect() as admin:
            row = admin.execute(
                "SELECT rolsuper, rolcreaterole, rolcreatedb, rolvaliduntil IS NOT NULL, "
                "array(SELECT b.rolname FROM pg_auth_members m JOIN pg_roles b "
                "ON b.oid = m.roleid WHERE m.member = r.oid) FROM pg_roles r "
                "WHERE rolname = 'dba_probe_2'"
            ).fetchone()
        assert row == (False, False, False, True, ["dbaccess_readonly"])
    finally:
        provisioner.execute("SELECT dbaccess.revoke_user('dba_probe_2')")
    with stack.postgres.connect() as admin:
        assert (
            admin.execute("SELECT 1 FROM pg_roles WHERE rolname = 'dba_probe_2'").fetchone() is None
        )
