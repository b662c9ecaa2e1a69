"""A gateway target end to end: the real CLI, broker, ``dbaccess-broker gateway`` process
and PostgreSQL. The client gets the gateway's address, its CA and a session secret; the
database admits the session user only from the gateway; revocation ends live connections
at the gateway within a second."""

from __future__ import annotations

import json
import socket
import ssl
import struct
import subprocess
import threading
import time
from pathlib import Path

import psycopg
import pytest

from dbaccess.broker.settings import load_settings
from dbaccess.gateway.credentials import upstream_password
from dbaccess.sandbox.outage import frozen
from dbaccess.sandbox.stack import Stack
from tests.e2e.conftest import Cli
from tests.gateway.conftest import assert_cancelled
from tests.gateway.scram_probe import scram_first

pytestmark = pytest.mark.integration


def creds(cli: Cli, *args: str) -> dict[str, object]:
    result = cli.run("creds", "vault", "--role", "readonly", "--reveal", "--format", "json", *args)
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout)["data"])


def gateway_conninfo(granted: dict[str, object], ca: Path) -> dict[str, object]:
    return dict(
        host=granted["host"],
        port=granted["port"],
        dbname=granted["database"],
        user=granted["db_user"],
        password=granted["password"],
        sslmode="verify-full",
        sslrootcert=str(ca),
        connect_timeout=5,
    )


def test_exec_runs_psql_through_the_gateway_with_tls_verified(gw_cli: Cli, gw_stack: Stack) -> None:
    result = gw_cli.run(
        "exec", "vault", "--role", "readonly", "--",
        "psql", "-At", "-c", "select current_user, count(*) from orders",
        "-c", "select ssl from pg_stat_ssl where pid = pg_backend_pid()",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    who, tls_upstream = result.stdout.splitlines()
    user, count = who.split("|")
    assert user.startswith("gw_alice_") and count == "3"
    assert tls_upstream == "f"  # the database saw the gateway (plain, next to it), not psql
    assert gw_stack.gateway_port != gw_stack.postgres.port
    assert not gw_cli.role_exists(user)  # exec's session is revoked when psql exits


def test_the_client_gets_the_gateway_and_a_secret_never_the_database_password(
    gw_cli: Cli, gw_stack: Stack, tmp_path: Path
) -> None:
    granted = creds(gw_cli)
    try:
        assert granted["access"] == "gateway"
        assert (granted["host"], granted["port"]) == ("127.0.0.1", gw_stack.gateway_port)
        assert granted["sslmode"] == "verify-full"
        ca = tmp_path / "ca.pem"
        ca.write_text(str(granted["ca_certificate"]))
        with psycopg.connect(**gateway_conninfo(granted, ca)) as conn:  # type: ignore[arg-type]
            assert conn.execute("select count(*) from orders").fetchone() == (3,)

        direct = dict(
            host="127.0.0.1",
            port=gw_stack.postgres.port,
            dbname="vault",
            user=granted["db_user"],
            connect_timeout=5,
        )
        # the secret is not the database user's password ...
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(**direct, password=granted["password"])  # type: ignore[arg-type]
        # ... and even with the real one (which only the broker and gateway can derive),
        # the database admits the session user from the gateway's address alone
        settings = load_settings(gw_stack.broker_config)
        assert settings.gateway is not None
        real = upstream_password(settings.gateway.key.read(), str(granted["id"]))
        with pytest.raises(psycopg.OperationalError, match="pg_hba.conf rejects"):
            psycopg.connect(**direct, password=real)  # type: ignore[arg-type]
        # the store holds the secret's verifier, and no password of either kind
        lease = gw_cli.store().get(str(granted["id"]))
        assert lease is not None and lease.access == "gateway"
        assert lease.gateway_verifier and lease.gateway_verifier.startswith("SCRAM-SHA-256$")
        dump = "\n".join(
            " ".join(repr(v) for v in row)
            for row in subprocess.run(
                ["sqlite3", str(gw_stack.broker_config.parent / "broker.db"), ".dump"],
                capture_output=True,
                text=True,
                check=False,
            ).stdout.splitlines()
        )
        assert str(granted["password"]) not in dump and real not in dump
    finally:
        assert gw_cli.run("revoke", str(granted["id"])).returncode == 0


def test_revocation_ends_a_live_gateway_connection_within_a_second(
    gw_cli: Cli, tmp_path: Path
) -> None:
    granted = creds(gw_cli)
    ca = tmp_path / "ca.pem"
    ca.write_text(str(granted["ca_certificate"]))
    conn = psycopg.connect(**gateway_conninfo(granted, ca), autocommit=True)  # type: ignore[arg-type]
    try:
        assert conn.execute("select 1").fetchone() == (1,)
        revoked = gw_cli.run("revoke", str(granted["id"]))
        assert revoked.returncode == 0, revoked.stderr
        returned = time.monotonic()
        error: psycopg.Error | None = None
        while time.monotonic() - returned < 5:
            try:
                conn.execute("select 1")
            except psycopg.Error as exc:
                error = exc
                break
            time.sleep(0.05)
        took = time.monotonic() - returned
        assert error is not None, "the connection still works 5 s after revocation"
        assert took < 1.0, f"ended {took:.2f} s after revoke returned"
        assert error.sqlstate in ("57P01", None)  # None: the FATAL arrived before the query
        assert "revoked" in str(error) or conn.closed
    finally:
        conn.close()
    # and no new connection gets in
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(**gateway_conninfo(granted, ca))  # type: ignore[arg-type]


def test_every_statement_through_the_gateway_is_in_the_audit_with_its_result(
    gw_cli: Cli, tmp_path: Path
) -> None:
    granted = creds(gw_cli)
    ca = tmp_path / "ca.pem"
    ca.write_text(str(granted["ca_certificate"]))
    with psycopg.connect(**gateway_conninfo(granted, ca), autocommit=True) as conn:  # type: ignore[arg-type]
        conn.execute("select customer from orders order by id")
        conn.execute("select customer from orders where total > %s", (20,), prepare=True)
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as refused:
            conn.execute("delete from orders")  # the role's guardrails: reads only
        assert "rule statements.write" in str(refused.value)
        assert conn.execute("select count(*) from orders").fetchone() == (3,)  # still usable
    assert gw_cli.run("revoke", str(granted["id"])).returncode == 0

    def page() -> dict[str, object]:
        shown = gw_cli.run("--json", "audit", "--statements", str(granted["id"]))
        assert shown.returncode == 0, shown.stderr
        return dict(json.loads(shown.stdout)["data"])

    deadline = time.monotonic() + 10
    while len(entries := list(page()["entries"])) < 4 and time.monotonic() < deadline:
        time.sleep(0.2)  # the gateway writes in batches, off the hot path
    got = [(e["kind"], e["sql"], e["rows"], e["sqlstate"], e["status"]) for e in entries]
    assert got[0] == ("query", "select customer from orders order by id", 3, None, "completed")
    assert got[1][:4] == ("execute", "select customer from orders where total > $1", 2, None)
    assert got[2] == ("query", "delete from orders", None, "42501", "refused")
    assert entries[2]["rule"] == "statements.write"  # type: ignore[index]
    assert got[3] == ("query", "select count(*) from orders", 1, None, "completed")
    assert all(e["params_policy"] == "redacted" for e in entries)
    # what the server sent; the refusal was the gateway's own answer: nothing went upstream
    assert [e["bytes_out"] > 0 for e in entries] == [True, True, False, True]
    assert page()["verification"]["ok"] is True  # type: ignore[index]


def test_two_gateways_share_one_address_and_a_killed_one_drops_only_its_connections(
    gw_cli: Cli, gw_stack: Stack, tmp_path: Path
) -> None:
    log = tmp_path / "gateway-b.log"
    second = gw_stack.spawn_gateway(log, "--name", "gw-b")
    try:
        wait_for(lambda: "listening on" in log.read_text(), "the second gateway")
        granted = creds(gw_cli)
        ca = tmp_path / "ca.pem"
        ca.write_text(str(granted["ca_certificate"]))
        conns = [
            psycopg.connect(**gateway_conninfo(granted, ca), autocommit=True)  # type: ignore[arg-type]
            for _ in range(12)
        ]
        for number, conn in enumerate(conns):
            conn.execute(f"select {number}")
        store = gw_cli.store()
        served_by = gateways_serving(gw_cli, granted, 12)
        assert len(served_by) == 12
        assert "gw-b" in served_by.values() and len(set(served_by.values())) == 2

        second.kill()  # SIGKILL: no goodbye to anyone
        second.wait(10)
        for number, conn in enumerate(conns):
            if served_by[number] == "gw-b":
                with pytest.raises(psycopg.OperationalError):
                    conn.execute("select 1")  # a clean error, not a hang
            else:
                assert conn.execute("select 1").fetchone() == (1,)
        # the records gw-b had acknowledged survive it, and the chain still verifies
        assert store.verify_statements(str(granted["id"])).ok
        # the killed gateway's upstream connections are gone from the database too
        survivors = sum(1 for n in served_by if served_by[n] != "gw-b")

        def backends() -> int:
            with gw_stack.postgres.connect() as admin:
                row = admin.execute(
                    "select count(*) from pg_stat_activity where usename = %s",
                    (granted["db_user"],),
                ).fetchone()
            return int(row[0]) if row else -1

        wait_for(lambda: backends() == survivors, "the killed gateway's backends to end")
        # a new connection is served by the gateway still running
        with psycopg.connect(**gateway_conninfo(granted, ca)) as fresh:  # type: ignore[arg-type]
            assert fresh.execute("select 2").fetchone() == (2,)
        for conn in conns:
            conn.close()
    finally:
        if second.poll() is None:
            second.kill()
        second.wait(10)
        gw_cli.run("revoke", str(granted["id"]))


def test_a_cancel_that_reaches_the_other_gateway_process_still_cancels(
    gw_cli: Cli, gw_stack: Stack, tmp_path: Path
) -> None:
    """A CancelRequest is a connection of its own: the kernel gives it to either process on
    the address, whichever serves the session. Each cancel here must end its statement (3
    per process: without the hand-over about half would land on the wrong one)."""
    log = tmp_path / "gateway-d.log"
    second = gw_stack.spawn_gateway(log, "--name", "gw-d")
    granted = creds(gw_cli)
    conns: list[psycopg.Connection[tuple[object, ...]]] = []
    try:
        wait_for(lambda: "listening on" in log.read_text(), "the second gateway")
        ca = tmp_path / "ca.pem"
        ca.write_text(str(granted["ca_certificate"]))
        for number in range(12):
            conn = psycopg.connect(**gateway_conninfo(granted, ca), autocommit=True)  # type: ignore[arg-type]
            conn.execute(f"select {number}")
            conns.append(conn)
        served_by = gateways_serving(gw_cli, granted, 12)
        by_process = {name: conns[number] for number, name in served_by.items()}
        assert len(by_process) == 2, "the kernel gave all 12 connections to one process"
        # a key's low 10 bits name the process's slot, the rest is random (not its pid)
        slots = {
            name: {conns[n].info.backend_pid & 1023 for n, by in served_by.items() if by == name}
            for name in by_process
        }
        assert all(len(s) == 1 for s in slots.values()) and len(set.union(*slots.values())) == 2
        pids = {conn.info.backend_pid for conn in conns}
        assert len(pids) == 12 and not pids & {second.pid, gw_stack.gateway_pid}
        for conn in list(by_process.values()) * 3:
            assert_cancelled(conn, "select pg_sleep(8)", after=0.5, within=5)
            assert conn.execute("select 1").fetchone() == (1,)
        # a guessed key naming either process's slot cancels nothing, wherever it lands
        victim = by_process["gw-d"]
        timer = threading.Timer(
            0.3,
            lambda: [
                send_cancel(gw_stack.gateway_port, (high << 10) | slot, secret)
                for [slot] in slots.values()
                for high in (0, 1, victim.info.backend_pid >> 10)
                for secret in (1, -5, 2**31 - 1, 12345)
            ],
        )
        timer.start()
        started = time.monotonic()
        assert victim.execute("select pg_sleep(2), 7").fetchone() == ("", 7)
        assert time.monotonic() - started >= 2
        assert "Traceback" not in log.read_text() + gw_stack.gateway_log.read_text()
    finally:
        for conn in conns:
            conn.close()
        second.kill()
        second.wait(10)
        gw_cli.run("revoke", str(granted["id"]))


def test_gateways_behind_one_address_do_not_tell_real_user_names_from_guesses(
    gw_cli: Cli, gw_stack: Stack, tmp_path: Path
) -> None:
    """The kernel spreads connections over both processes: a guessed name's salt is the
    same from each, as a real lease's is (it comes from the store)."""
    log = tmp_path / "gateway-c.log"
    second = gw_stack.spawn_gateway(log, "--name", "gw-c")
    granted = creds(gw_cli)
    try:
        wait_for(lambda: "listening on" in log.read_text(), "the second gateway")
        tls = ssl.create_default_context(cafile=gw_stack.broker_config.parent / "gateway/ca.pem")
        for user in ("gw_alice_guessed", str(granted["db_user"])):
            answers = {scram_first(gw_stack.gateway_port, user, tls=tls) for _ in range(24)}
            assert len(answers) == 1, user  # 24 connections: both processes answered
            [(salt, iterations)] = answers
            assert (len(salt), iterations) == (16, 4096)
    finally:
        second.kill()
        second.wait(10)
        gw_cli.run("revoke", str(granted["id"]))


def test_no_secret_reaches_argv_environment_logs_or_records(
    gw_cli: Cli, gw_stack: Stack, tmp_path: Path
) -> None:
    granted = creds(gw_cli)
    ca = tmp_path / "ca.pem"
    ca.write_text(str(granted["ca_certificate"]))
    with psycopg.connect(**gateway_conninfo(granted, ca)) as conn:  # type: ignore[arg-type]
        conn.execute("select %s::text", ("a bind parameter",))
    settings = load_settings(gw_stack.broker_config)
    assert settings.gateway is not None
    secrets = [
        str(granted["password"]),
        upstream_password(settings.gateway.key.read(), str(granted["id"])),
        settings.gateway.key.read(),
    ]
    assert gw_cli.run("revoke", str(granted["id"])).returncode == 0
    pid = gw_stack.gateway_pid
    exposed = {
        "argv": Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"),
        "environment": Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace"),
        "gateway log": gw_stack.gateway_log.read_text(),
        "broker log": gw_stack.broker_log.read_text(),
    }
    store = gw_cli.store()
    wait_for(lambda: store.statement_head(str(granted["id"])) is not None, "the record")
    exposed["records"] = "\n".join(
        repr(entry) for entry in store.statement_page(str(granted["id"]), after=0, limit=100)[0]
    )
    for where, text in exposed.items():
        for secret in secrets:
            assert secret not in text, f"a secret is in the gateway's {where}"
    assert "a bind parameter" not in exposed["records"]  # params = "redacted" (the default)


def gateways_serving(cli: Cli, granted: dict[str, object], count: int) -> dict[int, str]:
    """Connection number -> the gateway that served it, as the records of ``count``
    connections that each ran ``select N`` say (once all are stored)."""
    store, lease = cli.store(), str(granted["id"])
    wait_for(
        lambda: (
            store.statement_head(lease) is not None and store.statement_head(lease).count >= count  # type: ignore[union-attr]
        ),
        "the records of both gateways",
    )
    return {
        int(entry.sql.removeprefix("select ")): entry.gateway
        for entry in store.statement_page(lease, after=0, limit=100)[0]
    }


def send_cancel(port: int, pid: int, secret: int) -> None:
    """A CancelRequest in the clear, as libpq sends one (the gateway answers none)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(struct.pack("!iiii", 16, 80877102, pid, secret))
        sock.settimeout(5)
        assert sock.recv(16) == b""  # closed without an answer


def wait_for(condition: object, what: str, timeout: float = 10) -> None:
    assert callable(condition)
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def test_expiry_ends_the_connection_with_the_broker_stopped_and_the_database_frozen(
    gw_cli: Cli, gw_stack: Stack, tmp_path: Path
) -> None:
    import select
    from datetime import datetime

    granted = creds(gw_cli, "--duration", "4s")
    ca = tmp_path / "ca.pem"
    ca.write_text(str(granted["ca_certificate"]))
    conn = psycopg.connect(**gateway_conninfo(granted, ca), autocommit=True)  # type: ignore[arg-type]
    assert conn.execute("select 1").fetchone() == (1,)
    expires_at = datetime.fromisoformat(str(granted["expires_at"]))
    gw_stack.stop_broker()  # no API, no reaper
    try:
        with frozen(gw_stack.postgres):  # and a database that answers nothing
            left = (expires_at - datetime.now(expires_at.tzinfo)).total_seconds()
            readable, _, _ = select.select([conn.fileno()], [], [], max(left, 0) + 3)
            ended = datetime.now(expires_at.tzinfo)
            assert readable, "the gateway kept the connection open after the session's end"
            late = (ended - expires_at).total_seconds()
            assert -0.1 < late < 1.0, f"ended {late:.2f} s after the expiry"
            with pytest.raises(psycopg.OperationalError, match="the session expired"):
                conn.execute("select 1")
    finally:
        conn.close()
        gw_stack.start_broker()


def test_targets_says_which_are_reached_through_the_gateway(gw_cli: Cli) -> None:
    listed = gw_cli.run("--json", "targets")
    assert listed.returncode == 0, listed.stderr
    access = {(t["target"], t["role"]): t["access"] for t in json.loads(listed.stdout)["data"]}
    assert access[("vault", "readonly")] == "gateway"
    assert access[("demo", "readonly")] == "direct"
    table = gw_cli.run("targets")
    assert table.returncode == 0, table.stderr
    assert any(
        line.split()[:3] == ["vault", "postgres", "via"] for line in table.stdout.splitlines()
    ), table.stdout


def test_revocation_with_the_database_frozen_still_ends_the_connection_at_once(
    gw_cli: Cli, gw_stack: Stack, tmp_path: Path
) -> None:
    import select

    granted = creds(gw_cli)
    ca = tmp_path / "ca.pem"
    ca.write_text(str(granted["ca_certificate"]))
    conn = psycopg.connect(**gateway_conninfo(granted, ca), autocommit=True)  # type: ignore[arg-type]
    assert conn.execute("select 1").fetchone() == (1,)
    try:
        with frozen(gw_stack.postgres):  # the user cannot be dropped now
            revoked = gw_cli.run("--json", "revoke", str(granted["id"]), timeout=30)
            assert revoked.returncode == 0, revoked.stderr
            returned = time.monotonic()
            readable, _, _ = select.select([conn.fileno()], [], [], 3)
            took = time.monotonic() - returned
            assert readable and took < 1.0, f"the gateway ended it {took:.2f} s after revoke"
            with pytest.raises(psycopg.OperationalError, match="the session was revoked"):
                conn.execute("select 1")
    finally:
        conn.close()
    # and once the database answers again, the broker finishes dropping the user
    wait_for(lambda: not gw_cli.role_exists(str(granted["db_user"])), "the drop", timeout=30)


def test_sighup_rereads_the_configuration_and_keeps_serving(gw_cli: Cli, gw_stack: Stack) -> None:
    import os
    import signal

    os.kill(gw_stack.gateway_pid, signal.SIGHUP)
    wait_for(lambda: "configuration reloaded" in gw_stack.gateway_log.read_text(), "the reload")
    result = gw_cli.run("exec", "vault", "--role", "readonly", "--", "psql", "-Atc", "select 7")
    assert result.returncode == 0 and result.stdout == "7\n", result.stderr


def test_a_verifier_written_into_the_store_lets_nobody_in(
    gw_cli: Cli, gw_stack: Stack, tmp_path: Path
) -> None:
    """Whoever can write the store (not the key) puts their own secret's verifier on a
    live lease: the gateway refuses it, as it would an unknown user."""
    from dbaccess.broker.store import leases
    from dbaccess.gateway.credentials import new_session_secret

    granted = creds(gw_cli)
    ca = tmp_path / "ca.pem"
    ca.write_text(str(granted["ca_certificate"]))
    mine, verifier = new_session_secret()
    store = gw_cli.store()
    try:
        with store.engine.begin() as conn:
            conn.execute(
                leases.update()
                .where(leases.c.id == granted["id"])
                .values(gateway_verifier=str(verifier))
            )
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            psycopg.connect(**{**gateway_conninfo(granted, ca), "password": mine})  # type: ignore[arg-type]
        with pytest.raises(psycopg.OperationalError):  # nor the real secret, any more
            psycopg.connect(**gateway_conninfo(granted, ca))  # type: ignore[arg-type]
        assert "did not bind" in gw_stack.gateway_log.read_text()
    finally:
        gw_cli.run("revoke", str(granted["id"]))


def test_a_renewal_keeps_the_session_and_an_expiry_moved_in_the_store_ends_it(
    gw_cli: Cli, gw_stack: Stack, tmp_path: Path
) -> None:
    """The verifier's binding covers the expiry: a renewal binds it again, and the
    connection and new logins go on; whoever writes the store without the key and moves
    the end later gets the session ended (within a second) instead of kept."""
    from datetime import timedelta

    from dbaccess.broker.store import leases

    granted = creds(gw_cli, "--duration", "10m")
    ca = tmp_path / "ca.pem"
    ca.write_text(str(granted["ca_certificate"]))
    conn = psycopg.connect(**gateway_conninfo(granted, ca), autocommit=True)  # type: ignore[arg-type]
    try:
        renewed = gw_cli.run("renew", str(granted["id"]), "--duration", "20m")
        assert renewed.returncode == 0, renewed.stderr
        time.sleep(1)  # four passes of the watcher
        assert conn.execute("select 1").fetchone() == (1,)
        psycopg.connect(**gateway_conninfo(granted, ca)).close()  # type: ignore[arg-type]

        store = gw_cli.store()
        lease = store.get(str(granted["id"]))
        assert lease is not None
        with store.engine.begin() as edit:
            edit.execute(
                leases.update()
                .where(leases.c.id == granted["id"])
                .values(expires_at=lease.expires_at + timedelta(days=7))
            )
        edited = time.monotonic()
        error: psycopg.Error | None = None
        while time.monotonic() - edited < 5:
            try:
                conn.execute("select 1")
            except psycopg.Error as exc:
                error = exc
                break
            time.sleep(0.05)
        assert error is not None, "the connection outlived an expiry moved in the store"
        assert time.monotonic() - edited < 1.5
        assert "changed outside the broker" in str(error) or conn.closed
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            psycopg.connect(**gateway_conninfo(granted, ca))  # type: ignore[arg-type]
        assert "did not bind" in gw_stack.gateway_log.read_text()
    finally:
        conn.close()
        gw_cli.run("revoke", str(granted["id"]))
