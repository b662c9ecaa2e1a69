"""``dbaccess-broker inventory`` on real servers: every standing login account of a target
with what makes it risky, live session users left out, the provisioner known, the allow
list honoured, orphans found, exit 12 for findings, and ``--diff`` against an earlier run.

The servers are the suite's, shared with other tests (PostgreSQL roles and MariaDB
accounts are server-wide): the assertions name this test's own accounts only."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from dbaccess.broker.store import Store
from dbaccess.sandbox.mariadb import MariaDBServer
from dbaccess.sandbox.stack import Stack

pytestmark = pytest.mark.integration
VERIFIER = "SCRAM-SHA-256$4096:c2FsdHNhbHRzYWx0$c3RvcmVka2V5c3RvcmVka2V5:c2VydmVya2V5c2VydmVya2V5"


def broker(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dbaccess.broker", *args],
        text=True,
        capture_output=True,
        env={**os.environ, **(env or {})},
        cwd=cwd,
        timeout=120,
    )


def write_config(stack: Stack, path: Path, engine: str, port: int, allow: list[str]) -> Path:
    config = path / "broker.toml"
    database = "inv_pg" if engine == "postgres" else "inv_shop"
    config.write_text(f"""\
[broker]
store = "sqlite:///{path / "broker.db"}"

[identity]
issuer = "{stack.idp.issuer}"
client_id = "dbaccess-cli"

[inventory]
allow = {json.dumps(allow)}

[targets.inv]
engine = "{engine}"
host = "127.0.0.1"
port = {port}
database = "{database}"
{'sslmode = "disable"' if engine == "postgres" else ""}
username_prefix = "iv_"
provisioner = {{ user = "inv_prov", password_file = "provisioner.pw" }}

[targets.inv.roles.readonly]
group_role = "inv_readonly"
""")
    (path / "provisioner.pw").write_text("pw-inventory-provisioner\n")
    return config


def inventory(config: Path, *extra: str) -> tuple[int, dict[str, Any]]:
    result = broker("inventory", "--config", str(config), "--json", *extra, cwd=config.parent)
    assert "Traceback" not in result.stderr, result.stderr
    return result.returncode, json.loads(result.stdout)


def by_name(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {a["account"]: a for a in document["accounts"] if a["target"] == "inv"}


def live_lease(config: Path, db_user: str) -> None:
    store = Store(f"sqlite:///{config.parent / 'broker.db'}")
    now = datetime.now(UTC)
    lease = store.open_lease(
        now=now, subject="alice", email=None, target="inv", role="readonly", engine="postgres",
        db_user=db_user, rule="dev", reason="look", ticket=None,
        expires_at=now + timedelta(hours=1), source="127.0.0.1",
    )  # fmt: skip
    store.activate(lease, now)
    store.close()


@pytest.fixture(scope="module")
def pg_target(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("inventory-pg")
    config = write_config(stack, path, "postgres", stack.postgres.port, ["inv_service"])
    with stack.postgres.connect() as admin:
        admin.execute("CREATE DATABASE inv_pg")
    pg = stack.postgres
    dsn = f"host={pg.host} port={pg.port} user={pg.admin_user} password={pg.admin_password}"
    applied = broker(
        "bootstrap", "inv", "--config", str(config), "--apply",
        cwd=path, env={"DBACCESS_ADMIN_DSN": dsn + " sslmode=disable"},
    )  # fmt: skip
    assert applied.returncode == 0, applied.stderr
    with stack.postgres.connect() as admin:
        admin.execute("ALTER ROLE inv_prov PASSWORD 'pw-inventory-provisioner'")
        admin.execute("CREATE ROLE inv_super LOGIN SUPERUSER")
        admin.execute("CREATE ROLE inv_service LOGIN PASSWORD 'x' VALID UNTIL 'infinity'")
        admin.execute("CREATE ROLE inv_reader LOGIN VALID UNTIL '2999-01-01 00:00:00+00'")
        admin.execute("GRANT pg_read_all_data TO inv_reader")
        # standing access of a JIT role, through a team role in between
        admin.execute("CREATE ROLE inv_team NOLOGIN")
        admin.execute("GRANT inv_readonly TO inv_team")
        admin.execute("CREATE ROLE inv_standing LOGIN VALID UNTIL '2999-01-01 00:00:00+00'")
        admin.execute("GRANT inv_team TO inv_standing")
        admin.execute("CREATE ROLE inv_owner LOGIN VALID UNTIL '2999-01-01 00:00:00+00'")
    with stack.postgres.connect("inv_pg") as admin:
        admin.execute("CREATE TABLE public.owned_by_inv (a int)")
        admin.execute("ALTER TABLE public.owned_by_inv OWNER TO inv_owner")
    with stack.postgres.connect(
        "inv_pg", user="inv_prov", password="pw-inventory-provisioner"
    ) as provisioner:
        for user in ("iv_alice_1", "iv_orphan_1"):
            provisioner.execute(
                "SELECT dbaccess.create_user(%s, %s, %s, 'inv_readonly', 5, true, NULL, false)",
                (user, VERIFIER, datetime.now(UTC) + timedelta(hours=1)),
            )
    live_lease(config, "iv_alice_1")
    return config


def test_every_standing_account_and_what_makes_it_risky(pg_target: Path) -> None:
    code, document = inventory(pg_target)
    assert code == 12  # findings: for CI and cron
    found = by_name(document)
    assert "iv_alice_1" not in found  # a live session: what dbaccess is for
    assert found["iv_orphan_1"]["status"] == "finding"
    assert "a dbaccess user with no live lease (an orphan)" in found["iv_orphan_1"]["risks"]
    assert found["inv_super"]["status"] == "finding"
    assert "has SUPERUSER" in found["inv_super"]["risks"]
    assert found["inv_service"]["status"] == "allowed"
    assert found["inv_service"]["risks"] == ["password never expires"]  # infinity is never
    assert found["inv_prov"]["status"] == "provisioner"
    reader = found["inv_reader"]["risks"]
    assert reader == ["member of privileged role pg_read_all_data"]  # an expiry is set
    standing = found["inv_standing"]
    assert (
        "member of template role inv_readonly (standing access of a JIT role)"
        in (standing["risks"])
    )
    assert standing["member_of"] == ["inv_readonly", "inv_team"]
    assert found["inv_owner"]["risks"] == ["owns 1 object(s)"]
    assert "inv_team" not in found  # NOLOGIN: no path in by itself


def test_the_text_report_and_an_allow_list_that_covers_everything(
    pg_target: Path, stack: Stack
) -> None:
    result = broker("inventory", "inv", "--config", str(pg_target), cwd=pg_target.parent)
    assert result.returncode == 12, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("inv: ") and "finding(s)" in lines[0]
    assert any(line.split()[:2] == ["FINDING", "inv_super"] for line in lines)
    assert any(line.split()[:2] == ["allowed", "inv_service"] for line in lines)
    # every finding made explicit: nothing left to report, exit 0
    _, document = inventory(pg_target)
    named = sorted(a["account"] for a in document["accounts"] if a["status"] == "finding")
    everything = pg_target.parent / "all-allowed"
    everything.mkdir()
    allow = [*named, "inv_service"]
    config = write_config(stack, everything, "postgres", stack.postgres.port, allow)
    config.write_text(
        config.read_text().replace(
            str(everything / "broker.db"), str(pg_target.parent / "broker.db")
        )
    )
    (everything / "provisioner.pw").write_text("pw-inventory-provisioner\n")
    code, again = inventory(config)
    orphan = by_name(again)["iv_orphan_1"]
    # an orphan stays a finding, whatever the allow list says
    assert orphan["status"] == "finding" and code == 12
    left = [a["account"] for a in again["accounts"] if a["status"] == "finding"]
    assert left == ["iv_orphan_1"]


def test_diff_says_what_appeared_and_what_went(pg_target: Path, stack: Stack) -> None:
    _, before = inventory(pg_target)
    earlier = pg_target.parent / "earlier.json"
    earlier.write_text(json.dumps(before))
    with stack.postgres.connect() as admin:
        admin.execute("DROP ROLE inv_super")
        admin.execute("CREATE ROLE inv_newcomer LOGIN CREATEROLE")
        admin.execute("ALTER ROLE inv_service CREATEDB")
    _, now = inventory(pg_target, "--diff", str(earlier))
    diff = now["diff"]
    assert [a["account"] for a in diff["appeared"] if a["target"] == "inv"] == ["inv_newcomer"]
    assert [a["account"] for a in diff["went"] if a["target"] == "inv"] == ["inv_super"]
    changed = {c["now"]["account"]: c for c in diff["changed"]}
    assert changed["inv_service"]["now"]["risks"] == ["has CREATEDB", "password never expires"]
    text = broker(
        "inventory", "inv", "--config", str(pg_target), "--diff", str(earlier), cwd=pg_target.parent
    ).stdout
    assert "appeared  inv:inv_newcomer (finding)" in text
    assert "went      inv:inv_super" in text
    # what is not an inventory is refused with a hint, nothing else happens
    bad = pg_target.parent / "bad.json"
    bad.write_text('{"not": "an inventory"}')
    refused = broker(
        "inventory", "--config", str(pg_target), "--diff", str(bad), cwd=pg_target.parent
    )
    assert refused.returncode == 3 and "not an inventory" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_an_unknown_target_is_a_config_error(pg_target: Path) -> None:
    result = broker("inventory", "nope", "--config", str(pg_target), cwd=pg_target.parent)
    assert result.returncode == 3
    assert "no target 'nope'" in result.stderr and "one of: inv" in result.stderr


def test_the_provisioner_reads_the_catalog_through_the_function_only(
    pg_target: Path, stack: Stack
) -> None:
    with stack.postgres.connect(
        "inv_pg", user="inv_prov", password="pw-inventory-provisioner"
    ) as provisioner:
        rows = provisioner.execute("SELECT username FROM dbaccess.inventory()").fetchall()
        assert any(row == ("inv_owner",) for row in rows)
        with pytest.raises(Exception, match="permission denied"):
            provisioner.execute("SELECT rolpassword FROM pg_authid")


@pytest.fixture(scope="module")
def maria_target(
    stack: Stack, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Path, MariaDBServer]]:
    """A MariaDB server of its own (a server holds one dbaccess database)."""
    path = tmp_path_factory.mktemp("inventory-maria")
    with MariaDBServer(path / "mariadb") as maria:
        config = write_config(stack, path, "mariadb", maria.port, [])
        admin_dsn = f"mariadb://root:{maria.admin_password}@127.0.0.1:{maria.port}"
        admin = maria.connect()
        try:
            with admin.cursor() as cur:
                cur.execute("CREATE DATABASE inv_shop")
                cur.execute("CREATE USER 'inv_prov'@'%' IDENTIFIED BY 'pw-inventory-provisioner'")
        finally:
            admin.close()
        applied = broker(
            "bootstrap", "inv", "--config", str(config), "--apply",
            cwd=path, env={"DBACCESS_ADMIN_DSN": admin_dsn},
        )  # fmt: skip
        assert applied.returncode == 0, applied.stderr
        admin = maria.connect()
        try:
            with admin.cursor() as cur:
                for statement in [
                    "CREATE USER 'inv_super'@'%' IDENTIFIED BY 'x'",
                    "GRANT SUPER ON *.* TO 'inv_super'@'%'",
                    "CREATE USER 'inv_granter'@'localhost' IDENTIFIED BY 'x' "
                    "PASSWORD EXPIRE INTERVAL 30 DAY",
                    "GRANT SELECT ON *.* TO 'inv_granter'@'localhost' WITH GRANT OPTION",
                    # a role of a role: the power is two grants away
                    "CREATE ROLE inv_power",
                    "GRANT CREATE USER ON *.* TO inv_power",
                    "CREATE ROLE inv_outer",
                    "GRANT inv_power TO inv_outer",
                    "CREATE USER 'inv_member'@'%' IDENTIFIED BY 'x'",
                    "GRANT inv_outer TO 'inv_member'@'%'",
                    "CREATE USER 'inv_owner'@'%' IDENTIFIED BY 'x'",
                    "CREATE DEFINER = 'inv_owner'@'%' PROCEDURE inv_shop.p() SELECT 1",
                ]:
                    cur.execute(statement)
        finally:
            admin.close()
        yield config, maria


def test_mariadb_accounts_their_powers_roles_and_definers(
    maria_target: tuple[Path, MariaDBServer],
) -> None:
    config, _ = maria_target
    code, document = inventory(config)
    assert code == 12, document["errors"]
    found = by_name(document)
    assert "has SUPER" in found["inv_super@%"]["risks"]
    granter = found["inv_granter@localhost"]["risks"]
    assert "has GRANT OPTION" in granter and "password never expires" not in granter
    member = found["inv_member@%"]
    assert member["member_of"] == ["inv_outer", "inv_power"]
    assert "member of privileged role inv_power" in member["risks"]
    assert "owns 1 object(s)" in found["inv_owner@%"]["risks"]
    assert found["inv_prov@%"]["status"] == "provisioner"
    assert not any(name.startswith("inv_power") for name in found)  # roles cannot log in
