"""Masked columns on a real PostgreSQL: the bootstrap revokes them from the template's
group role and makes a masked view; a session user of the template cannot read them by
any probe of ``dbaccess-broker mask verify`` (0 leaks), and reads the view and the other
columns; a DBA's later GRANT SELECT ON ALL TABLES is reported as leaks (exit 12); the
bootstrap is idempotent, and unmasking a column gives the table-level grant back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from dbaccess.sandbox.stack import Stack

pytestmark = pytest.mark.integration
PASSWORD = "pw-mask-provisioner"


def broker(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dbaccess.broker", *args],
        text=True, capture_output=True, env={**os.environ, **(env or {})}, cwd=cwd, timeout=120,
    )  # fmt: skip


def write_config(stack: Stack, path: Path, masked: list[str]) -> Path:
    config = path / "broker.toml"
    config.write_text(f"""\
[broker]
store = "sqlite:///{path / "broker.db"}"

[identity]
issuer = "{stack.idp.issuer}"
client_id = "dbaccess-cli"

[targets.mk]
engine = "postgres"
host = "127.0.0.1"
port = {stack.postgres.port}
database = "mask_pg"
sslmode = "disable"
username_prefix = "mk_"
provisioner = {{ user = "mask_prov", password_file = "provisioner.pw" }}

[targets.mk.roles.analyst]
group_role = "mask_analyst"
read_only = true
masked = {json.dumps(masked)}
mask = {{ "public.customers.ssn" = "'***-**-' || right(ssn, 4)" }}
""")
    (path / "provisioner.pw").write_text(PASSWORD + "\n")
    return config


def bootstrap(stack: Stack, config: Path) -> None:
    pg = stack.postgres
    dsn = f"host={pg.host} port={pg.port} user={pg.admin_user} password={pg.admin_password}"
    applied = broker(
        "bootstrap", "mk", "--config", str(config), "--apply",
        cwd=config.parent, env={"DBACCESS_ADMIN_DSN": dsn + " sslmode=disable"},
    )  # fmt: skip
    assert applied.returncode == 0, applied.stderr


def verify(config: Path) -> tuple[int, dict[str, Any]]:
    result = broker("mask", "verify", "mk", "--config", str(config), "--json", cwd=config.parent)
    assert "Traceback" not in result.stderr, result.stderr
    return result.returncode, json.loads(result.stdout)["data"][0]


def grants(stack: Stack) -> list[tuple[Any, ...]]:
    with stack.postgres.connect("mask_pg") as admin:
        return admin.execute(
            "SELECT c.relname::text, c.relacl::text, array_agg(a.attname::text || '=' || "
            "a.attacl::text ORDER BY a.attnum) FILTER (WHERE a.attacl IS NOT NULL) FROM pg_class c "
            "LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 "
            "WHERE c.relname IN ('customers', 'orders') "
            "AND c.relnamespace = 'public'::regnamespace "
            "GROUP BY 1, 2 ORDER BY 1, 2"
        ).fetchall()


@pytest.fixture(scope="module")
def target(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("mask-pg")
    config = write_config(stack, path, ["public.customers.ssn", "public.*.email"])
    with stack.postgres.connect() as admin:
        admin.execute("CREATE DATABASE mask_pg")
    with stack.postgres.connect("mask_pg") as admin:
        admin.execute("CREATE TABLE customers (id int, name text, ssn text, email text)")
        admin.execute(
            "INSERT INTO customers SELECT i, 'n' || i, '123-45-' || lpad(i::text, 4, '0'), "
            "'p' || i || '@example.org' FROM generate_series(1, 200) i"
        )
        admin.execute("CREATE TABLE orders (id int, email text)")
        # a hostile name the glob reaches: every statement quotes it
        admin.execute('CREATE TABLE "We""ird; DROP TABLE orders" (email text)')
        admin.execute("""INSERT INTO "We""ird; DROP TABLE orders" VALUES ('w@example.org')""")
        admin.execute("ANALYZE customers")
    bootstrap(stack, config)  # the group role exists from here on
    with stack.postgres.connect("mask_pg") as admin:
        admin.execute("GRANT USAGE ON SCHEMA public TO mask_analyst")
        admin.execute("GRANT SELECT ON ALL TABLES IN SCHEMA public TO mask_analyst")
    bootstrap(stack, config)  # takes the new table-level grants over
    return config


def test_no_probe_leaks_and_the_view_shows_the_masked_form(target: Path, stack: Stack) -> None:
    code, verdict = verify(target)
    leaked = [(p["column"], p["name"]) for p in verdict["probes"] if p["leaked"]]
    assert leaked == [] and code == 0
    names = {p["name"] for p in verdict["probes"]}
    assert {"cast-int-error", "like-oracle", "copy-table", "copy-query", "pg-stats",
            "functions", "join", "masked-view"} <= names  # fmt: skip
    assert {p["column"] for p in verdict["probes"]} == {
        "public.customers.ssn", "public.customers.email", "public.orders.email",
        'public.We"ird; DROP TABLE orders.email',
    }  # fmt: skip
    with stack.postgres.connect("mask_pg") as admin:
        admin.execute("CREATE ROLE mask_person LOGIN PASSWORD 'pw-person' IN ROLE mask_analyst")
    try:
        with stack.postgres.connect("mask_pg", user="mask_person", password="pw-person") as me:
            assert me.execute("SELECT id, name FROM customers WHERE id = 7").fetchone() == (7, "n7")
            row = me.execute(
                "SELECT ssn, email FROM mask_analyst_masked.customers WHERE id = 7"
            ).fetchone()
            assert row == ("***-**-0007", None)
    finally:
        with stack.postgres.connect("mask_pg") as admin:
            admin.execute("DROP ROLE mask_person")


def test_nothing_is_left_behind(target: Path, stack: Stack) -> None:
    verify(target)
    with stack.postgres.connect("mask_pg") as admin:
        left = admin.execute("SELECT rolname FROM pg_roles WHERE rolname LIKE 'mk\\_%'").fetchall()
    assert left == []


def test_a_second_bootstrap_changes_nothing(target: Path, stack: Stack) -> None:
    before = grants(stack)
    bootstrap(stack, target)
    assert grants(stack) == before


def test_a_later_grant_is_a_leak_until_the_bootstrap_runs_again(target: Path, stack: Stack) -> None:
    with stack.postgres.connect("mask_pg") as admin:
        admin.execute("GRANT SELECT ON ALL TABLES IN SCHEMA public TO mask_analyst")
    code, verdict = verify(target)
    assert code == 12
    leaked = {(p["column"], p["name"]) for p in verdict["probes"] if p["leaked"]}
    assert ("public.customers.ssn", "cast-int-error") in leaked
    assert ("public.customers.ssn", "copy-table") in leaked
    assert ("public.customers.ssn", "pg-stats") in leaked
    text = json.dumps(verdict)
    assert "123-45-" not in text and "example.org" not in text  # never the value itself
    human = broker("mask", "verify", "mk", "--config", str(target), cwd=target.parent)
    assert human.returncode == 12 and "LEAKED" in human.stdout and "123-45-" not in human.stdout
    bootstrap(stack, target)
    assert verify(target)[0] == 0


def test_unmasking_a_column_gives_the_grant_back(target: Path, stack: Stack) -> None:
    write_config(stack, target.parent, ["public.customers.ssn"])
    try:
        bootstrap(stack, target)
        table_level = dict((name, acl) for name, acl, _ in grants(stack))
        assert "mask_analyst=r/" in table_level["orders"]
        assert "mask_analyst=r/" not in table_level["customers"]
        with stack.postgres.connect("mask_pg") as admin:
            assert admin.execute("SELECT to_regclass('mask_analyst_masked.orders')").fetchone() == (
                None,
            )
        code, verdict = verify(target)
        assert code == 0 and {p["column"] for p in verdict["probes"]} == {"public.customers.ssn"}
    finally:
        write_config(stack, target.parent, ["public.customers.ssn", "public.*.email"])
        bootstrap(stack, target)


def test_an_unknown_or_unmasked_role_is_a_config_error(target: Path) -> None:
    result = broker(
        "mask", "verify", "mk", "--role", "nope", "--config", str(target), cwd=target.parent
    )
    assert result.returncode == 3 and "masked ones: analyst" in result.stderr
    result = broker("mask", "verify", "nope", "--config", str(target), cwd=target.parent)
    assert result.returncode == 3 and "one of: mk" in result.stderr


def test_a_view_over_the_column_that_the_group_can_read_is_a_leak(
    target: Path, stack: Stack
) -> None:
    with stack.postgres.connect("mask_pg") as admin:
        admin.execute("CREATE VIEW public.contacts AS SELECT name, ssn AS tax_id FROM customers")
        admin.execute("GRANT SELECT ON public.contacts TO mask_analyst")
    try:
        code, verdict = verify(target)
        leaked = {(p["column"], p["name"]) for p in verdict["probes"] if p["leaked"]}
        assert code == 12 and leaked == {("public.customers.ssn", "view-contacts")}
    finally:
        with stack.postgres.connect("mask_pg") as admin:
            admin.execute("DROP VIEW public.contacts")
