"""``python -m dbaccess.sandbox [-- psql args]``: the whole flow on a local sandbox.

Starts a private PostgreSQL with a demo database, the OpenID Connect test provider, a
Secret Service for the keyring, and a broker; logs in as the demo user ``alice`` through
the real device flow (approving the code as a person would in a browser); opens psql
through ``dbaccess connect demo --role readonly``; then shows that the user is gone and
what the audit trail recorded, and tears everything down.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from dbaccess.broker.store import Store
from dbaccess.sandbox.idp import approve_device_code
from dbaccess.sandbox.secret_service import SecretService
from dbaccess.sandbox.stack import Stack

DBACCESS = [sys.executable, "-m", "dbaccess"]


def say(text: str) -> None:
    print(f"sandbox: {text}", file=sys.stderr, flush=True)


def main(argv: list[str]) -> int:
    psql_args = argv[argv.index("--") + 1 :] if "--" in argv else argv
    workdir = Path(tempfile.mkdtemp(prefix="dbaccess-sandbox-"))
    say(f"starting PostgreSQL, the identity provider and the broker in {workdir}")
    try:
        return _tour(workdir, psql_args)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _tour(workdir: Path, psql_args: list[str]) -> int:
    with (
        Stack(workdir / "stack", reaper_interval="1s") as stack,
        SecretService(workdir / "secrets") as secrets,
    ):
        env = stack.cli_env()
        env.update(secrets.env)
        say(
            f"broker {stack.broker_url}, identity provider {stack.idp.issuer}, "
            f"PostgreSQL 127.0.0.1:{stack.postgres.port}"
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

        command = ["connect", "demo", "--role", "readonly", "--reason", "sandbox tour"]
        if psql_args:
            command += ["--", *psql_args]
        say("$ dbaccess " + shlex.join(command))
        code_ = subprocess.call([*DBACCESS, *command], env=env)

        with stack.postgres.connect() as admin:
            left = admin.execute(
                "SELECT count(*) FROM pg_roles WHERE rolname LIKE 'dba\\_%'"
            ).fetchone()
        say(f"psql exited with {code_}; session users left in PostgreSQL: {left[0] if left else 0}")
        store = Store(f"sqlite:///{stack.broker_config.parent / 'broker.db'}")
        for record in store.audit_records():
            say(
                f"audit #{record.seq} {record.at:%H:%M:%S} {record.event} "
                f"{record.detail.get('db_user', '')} by {record.subject}"
            )
        store.close()
        say("stopping the sandbox")
    return code_


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
