"""The broker's MariaDB credential cannot escalate, even used directly by an attacker."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pymysql
import pytest

from dbaccess.broker.engines.mariadb.bootstrap import native_password_hash
from dbaccess.sandbox.stack import PROVISIONER, Stack

pytestmark = pytest.mark.integration


@pytest.fixture
def provisioner(stack: Stack) -> Iterator[pymysql.cursors.Cursor]:
    conn = stack.mariadb.connect(user=PROVISIONER, password=stack.provisioner_password)
    try:
        with conn.cursor() as cur:
            yield cur
    finally:
        conn.close()


def soon(minutes: int = 10) -> datetime:
    return (datetime.now(UTC) + timedelta(minutes=minutes)).replace(tzinfo=None)


def create(
    cur: pymysql.cursors.Cursor,
    user: str = "dba_probe_1",
    password_hash: str = native_password_hash("pw"),
    role: str = "dbaccess_readonly",
    until: datetime | None = None,
) -> None:
    cur.execute(
        "CALL dbaccess.create_user(%s, %s, %s, %s, 5, NULL, FALSE)",
        (user, password_hash, role, until or soon()),
    )


@pytest.mark.parametrize(
    "statement",
    [
        "CREATE USER 'evil'@'%' IDENTIFIED BY 'x'",
        "ALTER USER 'root'@'localhost' IDENTIFIED BY 'taken-over'",
        "SET PASSWORD FOR 'root'@'127.0.0.1' = PASSWORD('taken-over')",
        "GRANT ALL PRIVILEGES ON *.* TO 'dbaccess_provisioner'@'%'",
        "GRANT dbaccess_readwrite TO 'dbaccess_provisioner'@'%'",
        "SET ROLE dbaccess_readwrite",
        "DROP USER 'root'@'127.0.0.1'",
        "SELECT * FROM mysql.user",
        "SELECT * FROM dbaccess.managed_users",
        "INSERT INTO dbaccess.managed_users (username, expires_at) VALUES ('root', NOW())",
        "CREATE DEFINER = 'dbaccess_owner'@'localhost' PROCEDURE dbaccess.evil() SELECT 1",
    ],
)
def test_direct_escalation_is_refused(provisioner: pymysql.cursors.Cursor, statement: str) -> None:
    with pytest.raises(
        (pymysql.err.OperationalError, pymysql.err.ProgrammingError, pymysql.err.InternalError)
    ):
        provisioner.execute(statement)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"user": "root"}, "not a managed user name"),
        ({"user": "dba_x'@'%' IDENTIFIED BY 'x"}, "not a managed user name"),
        ({"role": "dbaccess_owner"}, "not an allowed role"),
        ({"password_hash": "plaintext"}, "a password hash is required"),
        ({"until": soon(60 * 24 * 365)}, "expiry is out of bounds"),
        ({"until": soon(-5)}, "expiry is out of bounds"),
    ],
)
def test_procedures_validate_their_arguments(
    provisioner: pymysql.cursors.Cursor, kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(pymysql.err.OperationalError, match=message):
        create(provisioner, **kwargs)  # type: ignore[arg-type]


def test_cannot_touch_accounts_it_did_not_create(
    provisioner: pymysql.cursors.Cursor, stack: Stack
) -> None:
    for statement, args in [
        ("CALL dbaccess.revoke_user(%s, @r)", ("root",)),
        ("CALL dbaccess.renew_user(%s, %s)", ("root", soon())),
    ]:
        with pytest.raises(pymysql.err.OperationalError, match="not created by dbaccess"):
            provisioner.execute(statement, args)
    admin = stack.mariadb.connect()
    try:
        with admin.cursor() as cur:
            cur.execute("CREATE USER 'dba_victim_1'@'%' IDENTIFIED BY 'original-pw-1'")
        with pytest.raises(pymysql.err.OperationalError, match="account already exists"):
            create(provisioner, user="dba_victim_1")  # cannot take over an existing account
        stack.mariadb.connect(user="dba_victim_1", password="original-pw-1").close()
        with pytest.raises(pymysql.err.OperationalError, match="not created by dbaccess"):
            provisioner.execute("CALL dbaccess.revoke_user('dba_victim_1', @r)")
    finally:
        with admin.cursor() as cur:
            cur.execute(
                "SELECT count(*) FROM dbaccess.managed_users WHERE username = 'dba_victim_1'"
            )
            assert cur.fetchone() == (0,)  # never registered, so never revocable
            cur.execute("DROP USER 'dba_victim_1'@'%'")
        admin.close()
