"""``dbaccess-broker check-config`` warns when a read-only template's group role can
write (issue 12, point 5), on the suite's real servers: quiet with the sandbox's grants
(SELECT only), a warning naming the privilege and the object once the group holds
INSERT, on PostgreSQL and on MariaDB."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from dbaccess.sandbox.stack import PROVISIONER_ENV, Stack

pytestmark = pytest.mark.integration


@pytest.fixture
def config(stack: Stack, tmp_path: Path) -> Path:
    """The sandbox's config, with the MariaDB read-only template declared read_only too."""
    text = stack.broker_config.read_text()
    marker = '[targets.shop.roles.readonly]\ngroup_role = "dbaccess_readonly"\n'
    assert marker in text
    path = tmp_path / "broker.toml"
    path.write_text(text.replace(marker, marker + "read_only = true\n"))
    return path


def check_config(stack: Stack, config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dbaccess.broker", "check-config", "--config", str(config)],
        text=True,
        capture_output=True,
        timeout=120,
        env={**os.environ, PROVISIONER_ENV: stack.provisioner_password},
    )


def warnings(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [
        line
        for line in result.stderr.splitlines()
        if line.startswith("warning:") and "read_only" in line
    ]


@pytest.fixture
def maria_insert(stack: Stack) -> Iterator[None]:
    conn = stack.mariadb.connect()
    try:
        with conn.cursor() as cur:
            cur.execute("GRANT INSERT ON shop.orders TO dbaccess_readonly")
        yield
    finally:
        with conn.cursor() as cur:
            cur.execute("REVOKE INSERT ON shop.orders FROM dbaccess_readonly")
        conn.close()


def test_quiet_when_the_read_only_groups_only_read(stack: Stack, config: Path) -> None:
    result = check_config(stack, config)
    assert result.returncode == 0, result.stderr
    assert warnings(result) == []
    assert "ok (2 target(s), each bootstrapped" in result.stdout
    # the MariaDB check's throwaway session user is gone again
    conn = stack.mariadb.connect()
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT COUNT(*) FROM mysql.user WHERE User LIKE 'dba\\_checkconfig%%'")
            assert cur.fetchone() == (0,)
    finally:
        conn.close()


def test_warns_when_a_read_only_group_may_insert(
    stack: Stack, config: Path, maria_insert: None
) -> None:
    with stack.postgres.connect("demo") as admin:
        admin.execute("GRANT INSERT ON orders TO dbaccess_readonly")
        admin.execute("GRANT CREATE ON SCHEMA public TO dbaccess_readonly")
    try:
        result = check_config(stack, config)
    finally:
        with stack.postgres.connect("demo") as admin:
            admin.execute("REVOKE INSERT ON orders FROM dbaccess_readonly")
            admin.execute("REVOKE CREATE ON SCHEMA public FROM dbaccess_readonly")
    assert result.returncode == 0, result.stderr  # a warning, not an error
    found = warnings(result)
    assert len(found) == 2, result.stderr
    demo, shop = sorted(found)
    assert demo.startswith(
        f"warning: {config}: target 'demo': role template 'readonly' is "
        "read_only, but its group role dbaccess_readonly holds "
        "INSERT/UPDATE/DELETE/TRUNCATE on orders; CREATE on schema public."
    )
    assert "A session can turn read-only off" in demo
    assert shop.startswith(
        f"warning: {config}: target 'shop': role template 'readonly' is "
        "read_only, but its group role dbaccess_readonly holds INSERT on "
        "shop.orders. MariaDB has no read-only setting for an account,"
    )


def test_an_older_postgres_bootstrap_is_named(stack: Stack, config: Path) -> None:
    """Until a target is bootstrapped again, its revoke_user still hands a session's objects
    to dbaccess_owner: check-config says so, with the bootstrap command."""
    from dbaccess.broker.engines.postgres import bootstrap as postgres_bootstrap
    from dbaccess.broker.settings import load_settings

    with stack.postgres.connect("demo") as admin:
        admin.execute(
            "CREATE OR REPLACE FUNCTION dbaccess.revoke_user(p_username text) "
            "RETURNS text LANGUAGE plpgsql SECURITY DEFINER AS $fn$ BEGIN "
            "EXECUTE format('REASSIGN OWNED BY %I TO dbaccess_owner', p_username); "
            "RETURN NULL; END $fn$"
        )
    try:
        result = check_config(stack, config)
    finally:
        with stack.postgres.connect("demo") as admin:
            postgres_bootstrap.apply(
                load_settings(config).targets["demo"], admin, stack.provisioner_password
            )
    assert result.returncode == 3
    assert (
        "is not bootstrapped: missing the current dbaccess.revoke_user (an older one "
        "hands what a session made to dbaccess_owner)"
    ) in result.stderr
    assert "hint: dbaccess-broker bootstrap demo" in result.stderr
    assert check_config(stack, config).returncode == 0


def test_a_postgres_bootstrap_without_the_batch_revocation_is_named(
    stack: Stack, config: Path
) -> None:
    """A bootstrap older than dbaccess.revoke_users: the broker revokes one user per call
    there (tests/broker/engines/postgres/test_revoke_batch.py); check-config asks for the bootstrap
    that lets an expiry storm go in batches."""
    from dbaccess.broker.engines.postgres import bootstrap as postgres_bootstrap
    from dbaccess.broker.settings import load_settings

    with stack.postgres.connect("demo") as admin:
        admin.execute("DROP FUNCTION dbaccess.revoke_users(text[])")
    try:
        result = check_config(stack, config)
    finally:
        with stack.postgres.connect("demo") as admin:
            postgres_bootstrap.apply(
                load_settings(config).targets["demo"], admin, stack.provisioner_password
            )
    assert result.returncode == 3
    assert "is not bootstrapped: missing function dbaccess.revoke_users" in result.stderr
    assert "hint: dbaccess-broker bootstrap demo" in result.stderr
    assert check_config(stack, config).returncode == 0
