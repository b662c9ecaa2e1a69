"""``dbaccess-broker check-config`` on targets that were never bootstrapped (real servers):
it names what is missing and the exact bootstrap command, instead of a later failure."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from dbaccess.broker.engines import EngineError, engine_for
from dbaccess.broker.settings import load_settings
from dbaccess.sandbox.mariadb import MariaDBServer
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


def fresh_config(
    stack: Stack,
    tmp_path: Path,
    *,
    database: str,
    provisioner: str,
    groups: str,
    engine: str = "postgres",
    port: int | None = None,
) -> Path:
    """A config with one target, ``fresh``, that no bootstrap has seen."""
    port = port or (stack.postgres if engine == "postgres" else stack.mariadb).port
    config = tmp_path / "broker.toml"
    config.write_text(f"""\
[identity]
issuer = "{stack.idp.issuer}"
client_id = "dbaccess-cli"

[targets.fresh]
engine = "{engine}"
host = "127.0.0.1"
port = {port}
database = "{database}"
{'sslmode = "disable"' if engine == "postgres" else ""}
username_prefix = "fr_"
provisioner = {{ user = "{provisioner}", password_file = "provisioner.pw" }}

[targets.fresh.roles.readonly]
group_role = "{groups}_readonly"
""")
    (tmp_path / "provisioner.pw").write_text("pw-" + secrets.token_hex(8) + "\n")
    return config


def test_postgres_target_without_bootstrap(stack: Stack, tmp_path: Path) -> None:
    with stack.postgres.connect() as admin:
        admin.execute("CREATE DATABASE fresh_pg")
    config = fresh_config(
        stack, tmp_path, database="fresh_pg", provisioner="fresh_prov", groups="fresh"
    )
    # no provisioner login yet: the common first run, before any bootstrap
    result = broker("check-config", "--config", str(config))
    assert result.returncode == 3, result.stdout + result.stderr
    assert "target 'fresh' (postgres 127.0.0.1:" in result.stderr
    assert "cannot log in as fresh_prov: password authentication failed" in result.stderr
    assert (
        f"hint: if the target is not bootstrapped yet: dbaccess-broker bootstrap fresh "
        f"--config {config}" in result.stderr
    )
    assert "Traceback" not in result.stderr

    # a DBA made the login by hand, but the functions and group roles are not there
    password = (tmp_path / "provisioner.pw").read_text().strip()
    with stack.postgres.connect() as admin:
        admin.execute(f"CREATE ROLE fresh_prov LOGIN PASSWORD '{password}'")
    result = broker("check-config", "--config", str(config))
    assert result.returncode == 3
    assert (
        "is not bootstrapped: missing function dbaccess.create_user, function "
        "dbaccess.renew_user, function dbaccess.revoke_user, function "
        "dbaccess.revoke_users, function dbaccess.managed_users, group role "
        "fresh_readonly"
    ) in result.stderr
    assert (
        f"hint: dbaccess-broker bootstrap fresh --config {config} (prints the SQL" in result.stderr
    )
    # a broker serving it anyway says the same at the first request
    engine = engine_for("fresh", load_settings(config).targets["fresh"])
    try:
        with pytest.raises(
            EngineError,
            match="listing users on 'fresh' failed: schema "
            "\"dbaccess\" does not exist; target 'fresh' looks not "
            "bootstrapped; an operator runs: dbaccess-broker bootstrap fresh",
        ):
            engine.list_managed_users()
    finally:
        engine.close()

    # the offline check only reads the file
    offline = broker("check-config", "--offline", "--config", str(config))
    assert offline.returncode == 0, offline.stderr
    assert "ok (1 target(s), 1 rule(s))" not in offline.stdout  # no rules in this file
    assert "ok (1 target(s), 0 rule(s))" in offline.stdout

    pg = stack.postgres
    dsn = (
        f"host={pg.host} port={pg.port} user={pg.admin_user} "
        f"password={pg.admin_password} sslmode=disable"
    )
    applied = broker(
        "bootstrap", "fresh", "--config", str(config), "--apply", env={"DBACCESS_ADMIN_DSN": dsn}
    )
    assert applied.returncode == 0, applied.stderr
    result = broker("check-config", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert "ok (1 target(s), each bootstrapped, 0 rule(s))" in result.stdout

    # a role template added after the bootstrap: its group is unknown to the functions
    config.write_text(
        config.read_text() + '\n[targets.fresh.roles.readwrite]\ngroup_role = "fresh_readwrite"\n'
    )
    result = broker("check-config", "--config", str(config))
    assert result.returncode == 3
    assert "missing group role fresh_readwrite" in result.stderr
    assert "hint: dbaccess-broker bootstrap fresh" in result.stderr


@pytest.fixture
def bare_mariadb(tmp_path: Path) -> Iterator[MariaDBServer]:
    """A MariaDB server of its own: a server holds one dbaccess database, and bootstrapping
    another target on the shared one would replace the procedures other tests use."""
    with MariaDBServer(tmp_path / "mariadb") as server:
        yield server


def test_mariadb_target_without_bootstrap(
    stack: Stack, bare_mariadb: MariaDBServer, tmp_path: Path
) -> None:
    maria = bare_mariadb
    config = fresh_config(
        stack,
        tmp_path,
        database="fresh_maria",
        provisioner="fresh_mprov",
        groups="fresh",
        engine="mariadb",
        port=maria.port,
    )
    result = broker("check-config", "--config", str(config))
    assert result.returncode == 3, result.stdout + result.stderr
    assert "target 'fresh' (mariadb 127.0.0.1:" in result.stderr
    assert "cannot log in as fresh_mprov: Access denied" in result.stderr
    assert "dbaccess-broker bootstrap fresh --config" in result.stderr

    password = (tmp_path / "provisioner.pw").read_text().strip()
    admin = maria.connect()
    try:
        with admin.cursor() as cur:
            cur.execute("CREATE USER 'fresh_mprov'@'%%' IDENTIFIED BY %s", (password,))
    finally:
        admin.close()
    result = broker("check-config", "--config", str(config))
    assert result.returncode == 3
    assert (
        "is not bootstrapped: missing procedure dbaccess.create_user (EXECUTE for fresh_mprov)"
    ) in result.stderr
    assert f"hint: dbaccess-broker bootstrap fresh --config {config}" in result.stderr
    with pytest.raises(
        EngineError,
        match=r"listing users on 'fresh' failed: .*; target "
        r"'fresh' looks not bootstrapped; an operator runs: dbaccess-broker "
        r"bootstrap fresh",
    ):
        engine_for("fresh", load_settings(config).targets["fresh"]).list_managed_users()

    applied = broker(
        "bootstrap",
        "fresh",
        "--config",
        str(config),
        "--apply",
        env={"DBACCESS_ADMIN_DSN": f"mariadb://root:{maria.admin_password}@127.0.0.1:{maria.port}"},
    )
    assert applied.returncode == 0, applied.stderr
    result = broker("check-config", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert "each bootstrapped" in result.stdout


def test_warns_when_two_targets_share_one_server(stack: Stack, tmp_path: Path) -> None:
    text = stack.broker_config.read_text()
    text += (
        text[text.index("[targets.demo]") : text.index("[targets.shop]")]
        .replace("[targets.demo", "[targets.demo2")
        .replace('database = "demo"', 'database = "demo2"')
    )
    config = tmp_path / "broker.toml"
    config.write_text(text)
    result = broker(
        "check-config",
        "--offline",
        "--config",
        str(config),
        env={"DBACCESS_SANDBOX_PROVISIONER_PASSWORD": "unused offline"},
    )
    assert result.returncode == 0, result.stderr
    assert (
        f"warning: {config}: targets 'demo', 'demo2' are on one server "
        f"(127.0.0.1:{stack.postgres.port} and the same username_prefix)"
    ) in result.stderr
    assert "give each target its own username_prefix" in result.stderr
    assert "shop" not in result.stderr  # alone on its server

    text += (
        text[text.index("[targets.shop]") : text.index("[[rules]]")]
        .replace("[targets.shop", "[targets.shop2")
        .replace('database = "shop"', 'database = "shop2"')
    )
    config.write_text(text)
    result = broker(
        "check-config",
        "--offline",
        "--config",
        str(config),
        env={"DBACCESS_SANDBOX_PROVISIONER_PASSWORD": "unused offline"},
    )
    assert result.returncode == 0, result.stderr
    assert (
        f"targets 'shop', 'shop2' are on one MariaDB server (127.0.0.1:"
        f"{stack.mariadb.port}): it holds one dbaccess database"
    ) in result.stderr
    assert "keep one target per MariaDB server" in result.stderr


@pytest.mark.parametrize("engine", ["postgres", "mariadb"])
def test_a_target_that_does_not_answer(stack: Stack, tmp_path: Path, engine: str) -> None:
    from dbaccess.sandbox.processes import free_port

    config = fresh_config(stack, tmp_path, database="x", provisioner="p", groups="g", engine=engine)
    server = stack.postgres if engine == "postgres" else stack.mariadb
    config.write_text(config.read_text().replace(f"port = {server.port}", f"port = {free_port()}"))
    result = broker("check-config", "--config", str(config))
    assert result.returncode == 3, result.stdout + result.stderr
    assert f"error: {config}: target 'fresh' ({engine} 127.0.0.1:" in result.stderr
    assert "hint: check targets.fresh.host and .port, and that the server runs" in result.stderr
    assert "bootstrap" not in result.stderr
