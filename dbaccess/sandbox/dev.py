"""Dev mode, ``python -m dbaccess.sandbox --dev``: the sandbox's stack kept running until
Ctrl-C, for trying dbaccess with several people from other terminals.

It starts what the tour starts, and the gateway: PostgreSQL (``demo``, and ``vault``
behind the gateway), MariaDB (``shop``), the test identity provider, a Secret Service and
the broker, all on 127.0.0.1 in one directory. Every demo person gets a CLI profile,
``sandbox-<login>``, logged in through the real device flow (the sandbox approves each
code as that person, as the tour does), and ``env`` in that directory is a file to
``source``: afterwards ``dbaccess --profile sandbox-bob approve ID`` is bob approving.
``dbaccess --profile sandbox-bob login`` logs in again the way a person does, at the
provider's page (any password).

Nothing here is kept: at Ctrl-C (SIGTERM, SIGHUP) every server is stopped and the
directory removed, and a dev mode killed outright is cleaned up by its watchdog
(dbaccess/sandbox/lifeline.py), as the tour is.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from dbaccess.sandbox.idp import DEFAULT_USERS, IdpUser, approve_device_code
from dbaccess.sandbox.processes import ServiceError
from dbaccess.sandbox.secret_service import SecretService
from dbaccess.sandbox.stack import Stack

DBACCESS = [sys.executable, "-m", "dbaccess"]
PROFILE_PREFIX = "sandbox-"
# What a shell that sourced the env file needs of the private Secret Service: its bus and
# the keyring backend. Not its HOME and XDG directories, which the tour's processes get:
# exported into a person's shell they would move that shell's home.
SECRET_SERVICE_VARIABLES = ("DBUS_SESSION_BUS_ADDRESS", "PYTHON_KEYRING_BACKEND")


def profile_of(user: IdpUser) -> str:
    return PROFILE_PREFIX + user.login


def env_file_text(cli_env: dict[str, str], bin_dir: Path) -> str:
    """The lines a shell sources to use the dev mode's broker, profiles and keyring."""
    names = (
        "DBACCESS_CONFIG_DIR",
        "DBACCESS_RUNTIME_DIR",
        "DBACCESS_CACHE_DIR",
        "DBACCESS_DEVICE_POLL_INTERVAL",
        *SECRET_SERVICE_VARIABLES,
    )
    lines = [
        "# dbaccess dev mode: source this file in another terminal (it ends with the dev mode)",
        f'export PATH={shlex.quote(str(bin_dir))}:"$PATH"',
    ]
    lines += [f"export {name}={shlex.quote(cli_env[name])}" for name in names]
    return "\n".join(lines) + "\n"


def log_in(env: dict[str, str], broker: str, user: IdpUser) -> None:
    """``dbaccess --profile sandbox-<login> login --broker URL``, the code approved as the
    person would approve it at the provider's page."""
    login = subprocess.Popen(
        [*DBACCESS, "--profile", profile_of(user), "--json", "login", "--broker", broker],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    assert login.stdout is not None
    first = login.stdout.readline()
    try:
        code = json.loads(first)["data"]
        approve_device_code(code["verification_uri_complete"], user.login)
    except (ValueError, KeyError, ServiceError) as failed:
        login.kill()
        _, err = login.communicate()
        raise ServiceError(f"logging in {user.login} failed: {failed}; {err.strip()}") from None
    _, err = login.communicate(timeout=60)
    if login.returncode != 0:
        raise ServiceError(f"logging in {user.login} failed: {err.strip()}")


def run_dev(workdir: Path, say: Callable[[str], None]) -> None:
    """Start everything, log every demo person in, write the env file, and wait for the
    signal that ends it (the caller's handler raises, and the stack stops on the way out)."""
    with (
        Stack(workdir / "stack", reaper_interval="1s", gateway=True) as stack,
        SecretService(workdir / "secrets") as secrets,
    ):
        env = stack.cli_env()
        env.update(secrets.env)
        env.pop("DBACCESS_BROKER")  # each profile names the broker, as a person's would
        for user in DEFAULT_USERS:
            log_in(env, stack.broker_url, user)
        first = profile_of(DEFAULT_USERS[0])
        subprocess.run(
            [*DBACCESS, "profiles", "use", first],
            env=env,
            check=True,
            capture_output=True,
            stdin=subprocess.DEVNULL,
        )
        env_file = workdir / "env"
        with open(os.open(env_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as out:
            out.write(env_file_text(env, Path(sys.executable).parent))
        for line in describe(stack, env_file, first):
            say(line)
        say("ready; Ctrl-C stops everything and removes " + str(workdir))
        threading.Event().wait()  # a signal handler's exception ends the wait


def describe(stack: Stack, env_file: Path, default_profile: str) -> list[str]:
    lines = [
        f"broker        {stack.broker_url}",
        f"approvals     {stack.broker_url}/web/ (in a browser; sign in as a demo person)",
        f"identity      {stack.idp.issuer} (its login page takes a demo login, any password)",
        f"PostgreSQL    127.0.0.1:{stack.postgres.port}, database demo (direct)",
        f"gateway       127.0.0.1:{stack.gateway_port}, database vault (only through it)",
        f"MariaDB       127.0.0.1:{stack.mariadb.port}, database shop",
        f"webhooks      {stack.webhooks.path} (what a chat channel would get)",
        "",
        f"in another terminal:  source {env_file}",
        f"profiles, each logged in (the current one is {default_profile}); what each may "
        "get: dbaccess --profile NAME targets",
    ]
    for user in DEFAULT_USERS:
        groups = ", ".join(user.groups) or "none"
        lines.append(f"  --profile {profile_of(user):<17} {user.name} (groups: {groups})")
    lines += [
        "",
        "try an approval with three people:",
        "  dbaccess --profile sandbox-alice connect demo --role readwrite --reason 'fix order 7'",
        "  dbaccess --profile sandbox-erin approve ID     # in a third terminal",
        "  dbaccess --profile sandbox-frank approve ID",
        "break the glass, then review it as someone else:",
        "  dbaccess --profile sandbox-carol breakglass demo --incident INC-1 --reason stuck",
        "  dbaccess --profile sandbox-dave review INC-1",
    ]
    return lines
