"""``creds --format env`` as the guide shows it: ``eval`` the output in ``sh`` and connect
with the real client, on both engines."""

from __future__ import annotations

import shlex
import subprocess

import pytest

from tests.e2e.conftest import DBACCESS, Cli

pytestmark = pytest.mark.integration


def in_sh(cli: Cli, script: str, **extra_env: str) -> subprocess.CompletedProcess[str]:
    """``script`` in sh, where ``$DBACCESS`` runs the real CLI."""
    env = {**cli.env, "DBACCESS": shlex.join(DBACCESS), **extra_env}
    return subprocess.run(
        ["sh", "-c", script],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def test_postgres_exports_reach_psql_with_the_targets_sslmode(cli: Cli) -> None:
    # a PGSSLMODE left in the shell must not survive the eval (the sandbox target says disable)
    result = in_sh(
        cli,
        """
        eval "$($DBACCESS creds demo --role readonly --reveal)" || exit 99
        sh -c 'echo "sslmode=$PGSSLMODE"'
        psql -At -c "select current_user, count(*) > 0 from orders"
        status=$?
        $DBACCESS revoke "$DBACCESS_SESSION_ID" >/dev/null
        exit $status
    """,
        PGSSLMODE="require",
    )
    assert result.returncode == 0, result.stderr
    sslmode, row = result.stdout.splitlines()
    assert sslmode == "sslmode=disable"  # exported, not just set
    user, readable = row.split("|")
    assert user.startswith("dba_alice_") and readable == "t"
    assert not cli.role_exists(user)


def test_mariadb_exports_reach_the_mariadb_client_as_the_guide_says(cli: Cli) -> None:
    result = in_sh(
        cli,
        """
        eval "$($DBACCESS creds shop --role readonly --reveal)" || exit 99
        mariadb -u "$MYSQL_USER" -N -e "select current_user(), database()" "$MYSQL_DATABASE"
        status=$?
        $DBACCESS revoke "$DBACCESS_SESSION_ID" >/dev/null
        exit $status
    """,
    )
    assert result.returncode == 0, result.stderr
    user, database = result.stdout.split()
    assert user.startswith("dba_alice_") and user.endswith("@%")
    assert database == "shop"
    assert 'mariadb -u "$MYSQL_USER" "$MYSQL_DATABASE"' in result.stderr  # the hint
    assert not cli.mariadb_account_exists(user.split("@")[0])
