"""The private test servers are real and strict: passwords are checked, expiry is enforced."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import psycopg
import pymysql
import pytest

from dbaccess.sandbox.mariadb import MariaDBServer
from dbaccess.sandbox.processes import find_binary
from dbaccess.sandbox.stack import Stack

pytestmark = pytest.mark.integration


def test_postgres_checks_passwords_with_scram(stack: Stack) -> None:
    pg = stack.postgres
    with pg.connect() as admin:
        assert admin.execute("SHOW password_encryption").fetchone() == ("scram-sha-256",)
        methods = {row[0] for row in admin.execute("SELECT auth_method FROM pg_hba_file_rules")}
        assert methods == {"scram-sha-256"}
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        pg.connect(user=pg.admin_user, password="wrong")


def test_postgres_enforces_valid_until(stack: Stack) -> None:
    pg = stack.postgres
    with pg.connect() as admin:
        admin.execute(
            "CREATE ROLE expired_probe LOGIN PASSWORD 'probe-pw-1' VALID UNTIL '2000-01-01'"
        )
        admin.execute("CREATE ROLE valid_probe LOGIN PASSWORD 'probe-pw-2' VALID UNTIL 'infinity'")
    try:
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            pg.connect(user="expired_probe", password="probe-pw-1")
        pg.connect(user="valid_probe", password="probe-pw-2").close()
    finally:
        with pg.connect() as admin:
            admin.execute("DROP ROLE expired_probe")
            admin.execute("DROP ROLE valid_probe")


def test_real_psql_connects_with_password_from_env(stack: Stack) -> None:
    pg = stack.postgres
    psql = find_binary("psql", "/usr/lib/postgresql/*/bin/psql")
    env = {
        **os.environ,
        "PGHOST": pg.host,
        "PGPORT": str(pg.port),
        "PGUSER": pg.admin_user,
        "PGPASSWORD": pg.admin_password,
        "PGDATABASE": "postgres",
    }
    result = subprocess.run(
        [psql, "-At", "-c", "select 40 + 2"], env=env, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "42"


def test_mariadb_is_reachable_and_strict(mariadb: MariaDBServer, tmp_path: Path) -> None:
    conn = mariadb.connect()
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM mysql.user WHERE user = ''")
            assert cur.fetchone() == (0,)  # anonymous accounts would shadow u@'%'
            cur.execute("SELECT @@event_scheduler")
            assert cur.fetchone() == ("ON",)
            cur.execute("CREATE USER 'probe'@'%' IDENTIFIED BY 'probe-pw-3'")
    finally:
        conn.close()
    with pytest.raises(pymysql.err.OperationalError):
        mariadb.connect(user="root", password="wrong")
    mariadb.connect(user="probe", password="probe-pw-3").close()

    # the real client, credentials in a 0600 file named by the first argument
    defaults = tmp_path / "client.cnf"
    defaults.touch(mode=0o600)
    defaults.write_text(
        f"[client]\nuser=probe\npassword=probe-pw-3\nhost=127.0.0.1\nport={mariadb.port}\n"
    )
    client = find_binary("mariadb", "/usr/bin/mariadb")
    result = subprocess.run(
        [client, f"--defaults-extra-file={defaults}", "-N", "-e", "select current_user()"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "probe@%"


def test_servers_stop_cleanly(tmp_path: Path) -> None:
    from dbaccess.sandbox.postgres import PostgresServer
    from dbaccess.sandbox.processes import port_open

    pg = PostgresServer(tmp_path / "pg")
    maria = MariaDBServer(tmp_path / "maria")
    with pg, maria:
        assert port_open(pg.port) and port_open(maria.port)
    assert not port_open(pg.port) and not port_open(maria.port)
