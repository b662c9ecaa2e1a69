"""The tour, ``python -m dbaccess.sandbox [-- psql args]``: the whole flow on a local sandbox.

Starts a private PostgreSQL with a demo database, the OpenID Connect test provider, a
Secret Service for the keyring, and a broker; logs in as the demo user ``alice`` through
the real device flow (approving the code as a person would in a browser); opens psql
through ``dbaccess connect demo --role readonly``; then shows that the user is gone and
what the audit trail recorded, and tears everything down.

Ctrl-C (or SIGTERM, SIGHUP) at any point ends the tour: psql is ended through dbaccess,
which revokes the session, then the sandbox stops. A tour killed outright is cleaned up by
its watchdog (dbaccess/sandbox/lifeline.py).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType

from dbaccess.broker.store import Store
from dbaccess.errors import ExitCode
from dbaccess.sandbox import lifeline
from dbaccess.sandbox.dev import run_dev
from dbaccess.sandbox.idp import approve_device_code, require_installed
from dbaccess.sandbox.processes import ServiceError
from dbaccess.sandbox.secret_service import SecretService
from dbaccess.sandbox.stack import Stack
from dbaccess.text import one_line

DBACCESS = [sys.executable, "-m", "dbaccess"]


def say(text: str) -> None:
    print(f"sandbox: {text}", file=sys.stderr, flush=True)


class Interrupted(BaseException):
    """Ctrl-C, SIGTERM or SIGHUP: stop the tour, cleaning up on the way out."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _interrupted(signum: int, _frame: FrameType | None) -> None:
    # Once is enough: a second Ctrl-C must not cut the clean-up short.
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    raise Interrupted(signum)


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def parse_args(argv: list[str]) -> argparse.Namespace:
    """``--gateway``, and the psql arguments (those after ``--``); ``-h``/``--help`` prints
    help and exits."""
    parser = argparse.ArgumentParser(
        prog="python -m dbaccess.sandbox",
        usage="%(prog)s [-h] [--gateway] [-- PSQL ARGS...]",
        description=(
            "Try dbaccess on this machine: starts a private PostgreSQL (database 'demo'), "
            "MariaDB, an OpenID Connect provider, a Secret Service and a broker on "
            "127.0.0.1 in a temporary directory; logs in as the demo user 'alice' through "
            "the device flow; opens psql as a fresh read-only user; and, when psql exits, "
            "shows that the user is gone and what the audit trail recorded. Everything is "
            "removed at the end, also after Ctrl-C."
        ),
        epilog="example: %(prog)s -- -c 'select * from orders'",
    )
    parser.add_argument(
        "--dev",
        action="store_true",
        help="dev mode: instead of the tour, keep the sandbox (with the gateway) running "
        "until Ctrl-C, every demo person logged in as a profile 'sandbox-<login>', and an "
        "env file to source in other terminals",
    )
    parser.add_argument(
        "--gateway",
        action="store_true",
        help="also start the gateway, and open psql on the 'vault' database through it "
        "(the database admits the session user from the gateway only); at the end, show "
        "the statements the gateway recorded",
    )
    before, psql_args = (
        (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if ("--" in argv) else (argv, [])
    )
    args = parser.parse_args(before)
    if args.dev and psql_args:
        parser.error("--dev opens no psql: psql arguments after -- do not apply")
    args.psql_args = psql_args
    return args


def _short_tmp() -> str:
    """TMPDIR, unless it is so deep that MariaDB's socket in the stack would not fit a Unix
    socket path (``<tmp>/dbaccess-sandbox-XXXXXXXX/stack/mariadb/mysqld.sock``)."""
    base = tempfile.gettempdir()
    return base if len(os.fsencode(base)) <= 50 else "/tmp"


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    try:
        require_installed()
    except ServiceError as missing:
        say(f"error: {missing}")
        return int(ExitCode.CONFIG)
    workdir = Path(tempfile.mkdtemp(prefix="dbaccess-sandbox-", dir=_short_tmp()))
    lifeline.start(workdir)
    for sig in STOP_SIGNALS:
        signal.signal(sig, _interrupted)
    say(f"starting PostgreSQL, the identity provider and the broker in {workdir}")
    try:
        if args.dev:
            run_dev(workdir, say)  # until a signal
            return 0
        return _tour(workdir, args.psql_args, args.gateway)
    except Interrupted as stop:
        say("stopped; everything the sandbox started has been stopped and removed")
        return 128 + stop.signum
    except ServiceError as failed:  # a server that is not installed or did not start
        say(f"error: {failed}")
        return int(ExitCode.CONFIG)
    finally:
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
        shutil.rmtree(workdir, ignore_errors=True)


def _tour(workdir: Path, psql_args: list[str], gateway: bool = False) -> int:
    with (
        Stack(workdir / "stack", reaper_interval="1s", gateway=gateway) as stack,
        SecretService(workdir / "secrets") as secrets,
    ):
        env = stack.cli_env()
        env.update(secrets.env)
        say(
            f"broker {stack.broker_url}, identity provider {stack.idp.issuer}, "
            f"PostgreSQL 127.0.0.1:{stack.postgres.port}"
            + (f", gateway 127.0.0.1:{stack.gateway_port}" if gateway else "")
        )

        say("$ dbaccess login   (the sandbox approves the code as 'alice', like a browser)")
        login = subprocess.Popen(
            [*DBACCESS, "--json", "login"], env=env, stdout=subprocess.PIPE, text=True
        )
        assert login.stdout is not None
        code = json.loads(login.stdout.readline())["data"]
        approve_device_code(code["verification_uri_complete"], "alice")
        login.communicate(timeout=60)
        if login.returncode != 0:
            say("login failed")
            return login.returncode

        target = "vault" if gateway else "demo"
        command = ["connect", target, "--role", "readonly", "--reason", "sandbox tour"]
        if psql_args:
            command += ["--", *psql_args]
        say("$ dbaccess " + shlex.join(command))
        connect = subprocess.Popen([*DBACCESS, *command], env=env)
        interrupted: Interrupted | None = None
        try:
            code_ = connect.wait()
        except Interrupted as stop:
            # The terminal's Ctrl-C reached psql too, which only clears its line: end it
            # through dbaccess (SIGTERM is passed on, then the session is revoked).
            interrupted = stop
            say("stopping the tour: ending psql, revoking the session")
            connect.send_signal(signal.SIGTERM)
            code_ = connect.wait()

        with stack.postgres.connect() as admin:
            left = admin.execute(
                "SELECT count(*) FROM pg_roles WHERE rolname LIKE 'dba\\_%' "
                "OR rolname LIKE 'gw\\_%'"
            ).fetchone()
        say(f"psql exited with {code_}; session users left in PostgreSQL: {left[0] if left else 0}")
        store = Store(f"sqlite:///{stack.broker_config.parent / 'broker.db'}")
        for record in store.audit_records():
            say(
                f"audit #{record.seq} {record.at:%H:%M:%S} {record.event} "
                f"{record.detail.get('db_user', '')} by {record.subject}"
            )
        if gateway:
            show_statements(store)
        store.close()
        say("stopping the sandbox")
        if interrupted is not None:
            raise interrupted
    return code_


def show_statements(store: Store) -> None:
    """What the gateway recorded of the tour's session (its last batch may take a moment)."""
    import sqlalchemy as sa

    from dbaccess.broker.store import leases

    with store.engine.connect() as conn:
        row = conn.execute(
            sa.select(leases.c.id, leases.c.db_user)
            .where(leases.c.target == "vault")
            .order_by(leases.c.created_at.desc())
            .limit(1)
        ).first()
    if row is None:
        return
    lease_id, db_user = str(row.id), str(row.db_user)
    deadline = time.monotonic() + 2
    while (head := store.statement_head(lease_id)) is None and time.monotonic() < deadline:
        time.sleep(0.1)
    entries, _ = store.statement_page(lease_id, after=0, limit=50)
    say(f"the gateway recorded {head.count if head else 0} statement(s) of {db_user}:")
    for entry in entries:
        rows = "" if entry.rows is None else f", {entry.rows} row(s)"
        say(f"  #{entry.seq} {entry.kind}: {one_line(entry.sql, 70)}{rows}, {entry.status}")
