"""``dbaccess-broker bootstrap``: print the SQL, or apply it to a real server."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from dbaccess.sandbox.stack import Stack

pytestmark = pytest.mark.integration


def broker(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dbaccess.broker", *args],
        text=True,
        capture_output=True,
        env={**os.environ, **(env or {})},
        timeout=60,
    )


def config_for(stack: Stack, tmp_path: Path, database: str) -> Path:
    text = stack.broker_config.read_text()
    text = text.replace('database = "demo"', f'database = "{database}"')
    text = text.replace(
        'password_env = "DBACCESS_SANDBOX_PROVISIONER_PASSWORD"',
        'password_file = "secrets/provisioner.pw"',
    )
    text = text.replace('user = "dbaccess_provisioner"', 'user = "probe_provisioner"')
    path = tmp_path / "broker.toml"
    path.write_text(text)
    return path


def test_prints_reviewable_sql_without_secrets(stack: Stack, tmp_path: Path) -> None:
    result = broker("bootstrap", "demo", "--config", str(config_for(stack, tmp_path, "x")))
    assert result.returncode == 0, result.stderr
    sql = result.stdout
    assert "SECURITY DEFINER" in sql
    assert 'CREATE ROLE "probe_provisioner" LOGIN' in sql
    assert "PASSWORD" not in sql.split("dbaccess.create_user")[0]  # no password is printed
    assert not (tmp_path / "secrets").exists()


def test_apply_sets_up_a_database_and_a_provisioner(stack: Stack, tmp_path: Path) -> None:
    with stack.postgres.connect() as admin:
        admin.execute("CREATE DATABASE bootstrap_probe")
    config = config_for(stack, tmp_path, "bootstrap_probe")
    pg = stack.postgres
    dsn = (
        f"host={pg.host} port={pg.port} user={pg.admin_user} "
        f"password={pg.admin_password} sslmode=disable"
    )
    missing = broker("bootstrap", "demo", "--config", str(config), "--apply")
    assert missing.returncode == 3 and "DBACCESS_ADMIN_DSN" in missing.stderr
    result = broker(
        "bootstrap", "demo", "--config", str(config), "--apply", env={"DBACCESS_ADMIN_DSN": dsn}
    )
    assert result.returncode == 0, result.stderr
    secret = tmp_path / "secrets" / "provisioner.pw"
    assert oct(secret.stat().st_mode & 0o777) == "0o600"
    password = secret.read_text().strip()
    assert password not in result.stdout + result.stderr
    # Roles are cluster-wide: the suite's other sessions on this server may still hold
    # dba_ users, which managed_users() lists by prefix for recovery. A fresh database has
    # none of its own, and the listing shows no user that is not on the server.
    with pg.connect("bootstrap_probe") as admin:
        assert admin.execute("SELECT * FROM dbaccess.managed_users").fetchall() == []
        on_server = {
            row[0]
            for row in admin.execute(
                "SELECT rolname FROM pg_roles WHERE starts_with(rolname, 'dba_')"
            )
        }
    with pg.connect("bootstrap_probe", user="probe_provisioner", password=password) as conn:
        listed = {row[0] for row in conn.execute("SELECT * FROM dbaccess.managed_users()")}
        assert listed <= on_server
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("CREATE ROLE nope")
    # running it again is harmless (idempotent)
    again = broker(
        "bootstrap", "demo", "--config", str(config), "--apply", env={"DBACCESS_ADMIN_DSN": dsn}
    )
    assert again.returncode == 0, again.stderr
    assert secret.read_text().strip() == password


def test_unknown_target(stack: Stack, tmp_path: Path) -> None:
    result = broker("bootstrap", "prod", "--config", str(config_for(stack, tmp_path, "x")))
    assert result.returncode == 2
    assert "there is no target 'prod'" in result.stderr


def test_apply_on_mariadb(stack: Stack, tmp_path: Path) -> None:
    import pymysql

    text = (
        stack.broker_config.read_text()
        .replace(
            'password_env = "DBACCESS_SANDBOX_PROVISIONER_PASSWORD"',
            'password_file = "secrets/provisioner.pw"',
        )
        .replace('user = "dbaccess_provisioner"', 'user = "probe_provisioner_m"')
    )
    config = tmp_path / "broker.toml"
    config.write_text(text)
    printed = broker("bootstrap", "shop", "--config", str(config))
    assert printed.returncode == 0, printed.stderr
    assert "SQL SECURITY DEFINER" in printed.stdout and "DELIMITER //" in printed.stdout
    maria = stack.mariadb
    dsn = f"mariadb://root:{maria.admin_password}@127.0.0.1:{maria.port}"
    result = broker(
        "bootstrap", "shop", "--config", str(config), "--apply", env={"DBACCESS_ADMIN_DSN": dsn}
    )
    assert result.returncode == 0, result.stderr
    password = (tmp_path / "secrets" / "provisioner.pw").read_text().strip()
    conn = maria.connect(user="probe_provisioner_m", password=password)
    try:
        with conn.cursor() as cur:
            cur.execute("CALL dbaccess.managed_users()")
            with pytest.raises(pymysql.err.OperationalError):
                cur.execute("CREATE USER 'nope'@'%'")
    finally:
        conn.close()
