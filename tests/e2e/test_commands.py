"""The rest of the command surface, through the real CLI against the real stack."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dbaccess.sandbox.idp import approve_device_code
from tests.e2e.conftest import DBACCESS, Cli

pytestmark = pytest.mark.integration


def data(result) -> object:  # type: ignore[no-untyped-def]
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["data"]


def test_exec_runs_any_command_with_postgres_credentials(cli: Cli) -> None:
    result = cli.run(
        "exec",
        "demo",
        "--role",
        "readonly",
        "--",
        "sh",
        "-c",
        'psql -At -c "select current_user" && test -f "$PGPASSFILE" && echo "file:$PGPASSFILE"',
    )
    assert result.returncode == 0, result.stderr
    user, passfile = result.stdout.split()
    assert user.startswith("dba_alice_")
    assert not cli.role_exists(user)
    assert not (cli.runtime_dir / passfile.removeprefix("file:")).exists()
    assert cli.run("exec", "demo", "--role", "readonly", "--", "sh", "-c", "exit 7").returncode == 7


def test_exec_on_mariadb_reads_mysql_home(cli: Cli) -> None:
    result = cli.run(
        "exec", "shop", "--role", "readonly", "--", "mariadb", "-N", "-e", "select current_user()"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().startswith("dba_alice_")


def test_sessions_renew_and_revoke_a_live_session(cli: Cli) -> None:
    started = cli.popen(
        "connect",
        "demo",
        "--role",
        "readonly",
        "--duration",
        "10m",
        "--",
        "-At",
        "-c",
        "select current_user",
        "-c",
        "select pg_sleep(60)",
    )
    assert started.stdout is not None
    user = started.stdout.readline().strip()
    (session,) = [
        s
        for s in data(cli.run("--json", "sessions"))  # type: ignore[union-attr]
        if s["db_user"] == user
    ]
    renewed = data(cli.run("--json", "renew", session["id"], "--duration", "30m"))
    assert renewed["expires_at"] > session["expires_at"]  # type: ignore[index]
    too_long = cli.run("renew", session["id"], "--duration", "3h")
    assert too_long.returncode == 5 and "allows at most 1h" in too_long.stderr
    revoked = data(cli.run("--json", "revoke", session["id"]))
    assert revoked[0]["state"] == "revoked"  # type: ignore[index]
    _, err = started.communicate(timeout=20)
    assert started.returncode != 0  # psql's connection was terminated
    assert not cli.role_exists(user)
    usage = cli.run("revoke")
    assert usage.returncode == 2 and "name one session id, or pass --all" in usage.stderr


def test_whoami_targets_and_version(cli: Cli) -> None:
    me = data(cli.run("--json", "whoami"))
    assert me["email"] == "alice@example.com" and me["groups"] == ["dev"]  # type: ignore[index]
    allowed = data(cli.run("--json", "targets"))
    pairs = {
        (t["target"], t["role"], t["max_duration_seconds"], t["approvals"])  # type: ignore[index]
        for t in allowed
    }  # type: ignore[union-attr]
    assert pairs == {
        ("demo", "readonly", 3600, 0),
        ("shop", "readonly", 3600, 0),
        ("demo", "readwrite", 3600, 2),
        ("shop", "readwrite", 3600, 2),
    }
    human = cli.run("targets")  # the table is the result: on stdout
    assert "demo" in human.stdout and "readonly" in human.stdout and human.stderr == ""
    assert data(cli.run("--json", "version"))["version"]  # type: ignore[index]


def test_logout_forgets_the_login(cli: Cli) -> None:
    assert cli.login("bob", profile="second").returncode == 0
    assert data(cli.run("--profile", "second", "--json", "whoami"))["subject"] == "bob"  # type: ignore[index]
    out = data(cli.run("--profile", "second", "--json", "logout", "--revoke"))
    assert out == {
        "profile": "second",
        "logged_out": True,
        "revoked": [],
        "refresh_token_revoked": True,
    }
    after = cli.run("--profile", "second", "whoami")
    assert after.returncode == 4 and "not logged in" in after.stderr
    assert "hint: dbaccess --profile second login" in after.stderr  # names the profile
    # the default profile is untouched
    assert data(cli.run("--json", "whoami"))["subject"] == "alice"  # type: ignore[index]


def test_client_chosen_by_flag_or_profile(cli: Cli) -> None:
    by_flag = cli.run(
        "connect",
        "demo",
        "--role",
        "readonly",
        "--client",
        "sh",
        "--",
        "-c",
        'echo "$PGUSER"; test -f "$PGPASSFILE"',
    )
    assert by_flag.returncode == 0, by_flag.stderr
    assert by_flag.stdout.strip().startswith("dba_alice_")

    config = Path(cli.env["DBACCESS_CONFIG_DIR"]) / "config.toml"
    original = config.read_text()
    try:
        config.write_text(original + '\n[profiles.default.client]\nmariadb = "sh"\n')
        by_profile = cli.run(
            "connect",
            "shop",
            "--role",
            "readonly",
            "--",
            "-c",
            'grep -c "^user=" "$MYSQL_HOME/my.cnf"',
        )
        assert by_profile.returncode == 0, by_profile.stderr
        assert by_profile.stdout.strip() == "1"
    finally:
        config.write_text(original)


def test_creds_needs_reveal_and_warns(cli: Cli) -> None:
    refused = cli.run("creds", "demo", "--role", "readonly")
    assert refused.returncode == 2 and "--reveal" in refused.stderr
    assert refused.stdout == ""
    shown = cli.run("creds", "demo", "--role", "readonly", "--reveal", "--duration", "5m")
    assert shown.returncode == 0, shown.stderr
    values = dict(line.removeprefix("export ").split("=", 1) for line in shown.stdout.splitlines())
    assert "printing the password of" in shown.stderr
    # the credentials work for a tool outside dbaccess, and the session outlives the command
    with cli.stack.postgres.connect(
        "demo", user=values["PGUSER"], password=values["PGPASSWORD"]
    ) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (values["PGUSER"],)
    assert (
        data(cli.run("--json", "revoke", values["DBACCESS_SESSION_ID"]))[0][  # type: ignore[index]
            "state"
        ]
        == "revoked"
    )
    assert not cli.role_exists(values["PGUSER"])


def test_without_a_keyring_login_explains_and_the_file_store_is_opt_in(cli: Cli) -> None:
    import subprocess

    no_keyring = {**cli.env, "PYTHON_KEYRING_BACKEND": "keyring.backends.fail.Keyring"}
    refused = subprocess.run(
        [*DBACCESS, "--profile", "headless", "login"],
        env=no_keyring,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert refused.returncode == 3
    assert "no keyring backend is available" in refused.stderr
    assert "--insecure-storage" in refused.stderr

    process = subprocess.Popen(
        [*DBACCESS, "--profile", "headless", "--json", "login", "--insecure-storage"],
        env=no_keyring,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    assert process.stdout is not None
    code = json.loads(process.stdout.readline())["data"]
    approve_device_code(code["verification_uri_complete"], "carol")
    _, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    assert "insecure storage" in err
    tokens = Path(cli.env["DBACCESS_CONFIG_DIR"]) / "tokens" / "headless.json"
    assert oct(tokens.stat().st_mode & 0o777) == "0o600"
    me = subprocess.run(
        [*DBACCESS, "--profile", "headless", "--json", "whoami"],
        env=no_keyring,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert json.loads(me.stdout)["data"]["subject"] == "carol"
    assert "insecure storage" in me.stderr  # announced on every use
    gone = subprocess.run(
        [*DBACCESS, "--profile", "headless", "logout"],
        env=no_keyring,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert gone.returncode == 0 and not tokens.exists()
