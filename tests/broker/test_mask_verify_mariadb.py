"""Masked columns on a real MariaDB: the bootstrap revokes them from the template's group
role (column grants) and makes a SQL SECURITY DEFINER masked view; a session user of the
template cannot read them by any probe of ``dbaccess-broker mask verify`` (0 leaks), and
reads the view and the other columns; a weakened mask (a DBA's later table-level GRANT,
a DEFINER view or function over the column, readable column statistics) is reported as
leaks (exit 12), never with the value; the bootstrap takes a later grant over again."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pymysql
import pytest

from dbaccess.sandbox.idp import OidcProvider
from dbaccess.sandbox.mariadb import MariaDBServer
from dbaccess.sandbox.stack import Stack

pytestmark = pytest.mark.integration


@dataclass
class Sandbox:
    """The suite's identity provider, and a MariaDB server of this module's own: a
    bootstrap replaces the server-wide ``dbaccess`` procedures (prefix, allowed roles),
    so the masked target "mm" must not share the suite's server with its "shop" target
    (docs/broker.md, "Several targets on one server")."""

    mariadb: MariaDBServer
    idp: OidcProvider


@pytest.fixture(scope="module")
def stack(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    """This module's "stack": the suite's, with a MariaDB of its own (the suite's fixture
    of that name is the one it overrides, and asks for)."""
    server = MariaDBServer(tmp_path_factory.mktemp("maria-mask"))
    server.start()
    try:
        yield Sandbox(server, stack.idp)
    finally:
        server.stop()


PASSWORD = "pw-mask-provisioner-m"


def broker(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dbaccess.broker", *args],
        text=True, capture_output=True, env={**os.environ, **(env or {})}, cwd=cwd, timeout=120,
    )  # fmt: skip


MASKED = ["mask_m.customers.ssn", "mask_m.*.email"]


def write_config(stack: Sandbox, path: Path, masked: list[str] = MASKED) -> Path:
    config = path / "broker.toml"
    config.write_text(f"""\
[broker]
store = "sqlite:///{path / "broker.db"}"

[identity]
issuer = "{stack.idp.issuer}"
client_id = "dbaccess-cli"

[targets.mm]
engine = "mariadb"
host = "127.0.0.1"
port = {stack.mariadb.port}
database = "mask_m"
username_prefix = "mm_"
provisioner = {{ user = "mask_prov_m", password_file = "provisioner.pw" }}

[targets.mm.roles.analyst]
group_role = "mask_analyst_m"
read_only = true
masked = {json.dumps(masked)}
mask = {{ "mask_m.customers.ssn" = "CONCAT('***-**-', RIGHT(ssn, 4))" }}
""")
    (path / "provisioner.pw").write_text(PASSWORD + "\n")
    return config


def bootstrap(stack: Sandbox, config: Path) -> None:
    maria = stack.mariadb
    dsn = f"mariadb://root:{maria.admin_password}@127.0.0.1:{maria.port}"
    applied = broker(
        "bootstrap", "mm", "--config", str(config), "--apply", cwd=config.parent,
        env={"DBACCESS_ADMIN_DSN": dsn},
    )  # fmt: skip
    assert applied.returncode == 0, applied.stderr


def verify(config: Path) -> tuple[int, dict[str, Any]]:
    result = broker("mask", "verify", "mm", "--config", str(config), "--json", cwd=config.parent)
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stdout, result.stderr
    return result.returncode, json.loads(result.stdout)["data"][0]


def admin(stack: Sandbox, *statements: str) -> None:
    conn = stack.mariadb.connect()
    try:
        with conn.cursor() as cur:
            for statement in statements:
                cur.execute(statement)
    finally:
        conn.close()


def leaked(verdict: dict[str, Any]) -> set[tuple[str, str]]:
    return {(p["column"], p["name"]) for p in verdict["probes"] if p["leaked"]}


@pytest.fixture(scope="module")
def target(stack: Sandbox, tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = write_config(stack, tmp_path_factory.mktemp("mask-m"))
    admin(
        stack,
        "DROP DATABASE IF EXISTS mask_m",
        "CREATE DATABASE mask_m",
        "CREATE TABLE mask_m.customers (id INT PRIMARY KEY, name TEXT, ssn VARCHAR(20),"
        " email VARCHAR(80))",
        "INSERT INTO mask_m.customers SELECT seq, CONCAT('n', seq),"
        " CONCAT('123-45-', LPAD(seq, 4, '0')), CONCAT('p', seq, '@example.org')"
        " FROM mask_m.seq_1_to_200",
        "CREATE TABLE mask_m.orders (id INT, email VARCHAR(80))",
        "INSERT INTO mask_m.orders VALUES (1, 'o1@example.org')",
        # engine-independent statistics: min/max values in mysql.column_stats
        "ANALYZE TABLE mask_m.customers PERSISTENT FOR ALL",
    )
    bootstrap(stack, config)  # the group role exists from here on
    admin(stack, "GRANT SELECT ON mask_m.customers TO mask_analyst_m",
          "GRANT SELECT ON mask_m.orders TO mask_analyst_m")  # fmt: skip
    bootstrap(stack, config)  # takes the table-level grants over
    return config


def test_no_probe_leaks_and_the_view_shows_the_masked_form(target: Path, stack: Sandbox) -> None:
    code, verdict = verify(target)
    assert leaked(verdict) == set() and code == 0, verdict
    names = {p["name"] for p in verdict["probes"]}
    assert {"where", "order-by", "group-by", "like-oracle", "compare-oracle", "functions",
            "cast-warning", "cast-error", "join", "explain-json", "analyze-json",
            "into-outfile", "column-stats", "masked-view"} <= names  # fmt: skip
    assert {p["column"] for p in verdict["probes"]} == {
        "mask_m.customers.ssn", "mask_m.customers.email", "mask_m.orders.email",
    }  # fmt: skip
    admin(
        stack,
        "CREATE USER 'mask_person_m'@'%' IDENTIFIED BY 'pw-person'",
        "GRANT mask_analyst_m TO 'mask_person_m'@'%'",
        "SET DEFAULT ROLE mask_analyst_m FOR 'mask_person_m'@'%'",
    )
    try:
        me = stack.mariadb.connect(user="mask_person_m", password="pw-person")
        try:
            with me.cursor() as cur:
                cur.execute("SELECT id, name FROM mask_m.customers WHERE id = 7")
                assert cur.fetchone() == (7, "n7")
                cur.execute("SELECT ssn, email FROM mask_analyst_m_masked.customers WHERE id = 7")
                assert cur.fetchone() == ("***-**-0007", None)
                with pytest.raises(pymysql.err.OperationalError):
                    cur.execute("SELECT ssn FROM mask_m.customers")
        finally:
            me.close()
    finally:
        admin(stack, "DROP USER 'mask_person_m'@'%'")


def test_nothing_is_left_behind(target: Path, stack: Sandbox) -> None:
    verify(target)
    conn = stack.mariadb.connect()
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT User FROM mysql.user WHERE User LIKE 'mm\\_%'")
            assert cur.fetchall() == ()
    finally:
        conn.close()


def test_a_later_grant_is_a_leak_until_the_bootstrap_runs_again(
    target: Path, stack: Sandbox
) -> None:
    admin(stack, "GRANT SELECT ON mask_m.customers TO mask_analyst_m")
    code, verdict = verify(target)
    assert code == 12
    found = leaked(verdict)
    for probe in ("select", "where", "like-oracle", "cast-warning", "explain-json", "join"):
        assert ("mask_m.customers.ssn", probe) in found
    text = json.dumps(verdict)
    assert "123-45-" not in text and "example.org" not in text  # never the value itself
    human = broker("mask", "verify", "mm", "--config", str(target), cwd=target.parent)
    assert human.returncode == 12 and "LEAKED" in human.stdout and "123-45-" not in human.stdout
    bootstrap(stack, target)
    assert verify(target)[0] == 0


def test_readable_column_statistics_are_a_leak(target: Path, stack: Sandbox) -> None:
    admin(stack, "GRANT SELECT ON mysql.column_stats TO mask_analyst_m")
    try:
        code, verdict = verify(target)
        assert code == 12 and ("mask_m.customers.ssn", "column-stats") in leaked(verdict)
    finally:
        admin(stack, "REVOKE SELECT ON mysql.column_stats FROM mask_analyst_m")


def test_a_definer_view_or_function_over_the_column_is_a_leak(target: Path, stack: Sandbox) -> None:
    admin(
        stack,
        "CREATE DEFINER = root@localhost SQL SECURITY DEFINER VIEW mask_m.contacts AS "
        "SELECT name, ssn AS tax_id FROM mask_m.customers",
        "GRANT SELECT ON mask_m.contacts TO mask_analyst_m",
        "CREATE DEFINER = root@localhost FUNCTION mask_m.ssn_of(p INT) RETURNS TEXT "
        "SQL SECURITY DEFINER RETURN (SELECT ssn FROM mask_m.customers WHERE id = p)",
        "GRANT EXECUTE ON FUNCTION mask_m.ssn_of TO mask_analyst_m",
    )
    try:
        code, verdict = verify(target)
        found = leaked(verdict)
        assert code == 12
        assert ("mask_m.customers.ssn", "view-contacts") in found
        assert ("mask_m.customers.ssn", "definer-ssn_of") in found
    finally:
        admin(stack, "REVOKE SELECT ON mask_m.contacts FROM mask_analyst_m",
              "REVOKE EXECUTE ON FUNCTION mask_m.ssn_of FROM mask_analyst_m",
              "DROP VIEW mask_m.contacts", "DROP FUNCTION mask_m.ssn_of")  # fmt: skip


def grants(stack: Sandbox) -> list[tuple[Any, ...]]:
    conn = stack.mariadb.connect()
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT 't', Db, Table_name, '', Table_priv FROM mysql.tables_priv "
                "WHERE User = 'mask_analyst_m' UNION ALL SELECT 'c', Db, Table_name, "
                "Column_name, Column_priv FROM mysql.columns_priv WHERE User = 'mask_analyst_m' "
                "ORDER BY 1, 2, 3, 4"
            )
            return list(cur.fetchall())
    finally:
        conn.close()


def test_a_second_bootstrap_changes_nothing(target: Path, stack: Sandbox) -> None:
    before = grants(stack)
    assert ("c", "mask_m", "customers", "name", "Select") in before
    assert not any(row[3] in ("ssn", "email") for row in before)
    bootstrap(stack, target)
    assert grants(stack) == before


def test_unmasking_a_column_gives_the_grant_back(target: Path, stack: Sandbox) -> None:
    write_config(stack, target.parent, ["mask_m.customers.ssn"])
    try:
        bootstrap(stack, target)
        table_level = {(row[1], row[2], row[4]) for row in grants(stack) if row[0] == "t"}
        assert ("mask_m", "orders", "Select") in table_level
        assert ("mask_m", "customers", "Select") not in table_level  # column grants there
        assert ("c", "mask_m", "customers", "email", "Select") in grants(stack)
        conn = stack.mariadb.connect()
        try:
            with conn.cursor() as cur:
                cur.execute(
                    "SELECT COUNT(*) FROM information_schema.TABLES "
                    "WHERE TABLE_SCHEMA = 'mask_analyst_m_masked' AND TABLE_NAME = 'orders'"
                )
                assert cur.fetchone() == (0,)
        finally:
            conn.close()
        code, verdict = verify(target)
        assert code == 0 and {p["column"] for p in verdict["probes"]} == {"mask_m.customers.ssn"}
    finally:
        write_config(stack, target.parent)
        bootstrap(stack, target)
    assert verify(target)[0] == 0


def test_a_database_wide_grant_is_refused_before_anything_changes(
    target: Path, stack: Sandbox
) -> None:
    """MariaDB cannot take one column out of ``GRANT SELECT ON db.*``: the bootstrap says
    so and how to grant instead, and changes nothing (the masks stay as they were)."""
    admin(stack, "GRANT SELECT ON mask_m.* TO mask_analyst_m")
    try:
        maria = stack.mariadb
        dsn = f"mariadb://root:{maria.admin_password}@127.0.0.1:{maria.port}"
        refused = broker(
            "bootstrap", "mm", "--config", str(target), "--apply", cwd=target.parent,
            env={"DBACCESS_ADMIN_DSN": dsn},
        )  # fmt: skip
        assert refused.returncode != 0
        assert "Traceback" not in refused.stderr
        assert "may SELECT every table of mask_m" in refused.stderr
        assert "GRANT SELECT ON mask_m.<table> TO mask_analyst_m" in refused.stderr
        code, verdict = verify(target)
        assert code == 12 and ("mask_m.customers.ssn", "select") in leaked(verdict)
    finally:
        admin(stack, "REVOKE SELECT ON mask_m.* FROM mask_analyst_m")
    code, verdict = verify(target)
    assert code == 0, verdict  # the masks as they were: nothing was changed
