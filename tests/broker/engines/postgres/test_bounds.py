"""Bounds the caller's session cannot bend (issue 12, point 2, PostgreSQL), on the suite's
real server: the definer functions give the same answer under hostile session settings,
and a user's whole life ends by its creation plus the target's max_lifetime (24h on the
demo target) however often it is renewed — through the functions directly (a stolen
broker credential) and through the broker's renew path (a 403, never a 5xx)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient

from dbaccess.broker.api.app import create_app
from dbaccess.broker.engines import EngineRefused, engine_for
from dbaccess.broker.settings import load_settings
from dbaccess.broker.store import Store
from dbaccess.sandbox.stack import PROVISIONER, PROVISIONER_ENV, Stack

pytestmark = pytest.mark.integration
VERIFIER = "SCRAM-SHA-256$4096:c2FsdHNhbHRzYWx0$c3RvcmVka2V5c3RvcmVka2V5:c2VydmVya2V5c2VydmVya2V5"
Conn = psycopg.Connection[tuple[Any, ...]]

HOSTILE = {
    # 'IST' printed for India reads back as Israel Standard Time: +3.5 h on main
    "india": ["SET TimeZone = 'Asia/Kolkata'", "SET DateStyle = 'SQL, DMY'"],
    # 'EST' printed for New York reads back as Australian Eastern time
    "abbreviations": [
        "SET TimeZone = 'America/New_York'",
        "SET timezone_abbreviations = 'Australia'",
        "SET DateStyle = 'Postgres, DMY'",
    ],
    "posix zone": [
        "SET TimeZone = '<+1337>-13:37'",
        "SET DateStyle = 'German'",
        "SET IntervalStyle = 'sql_standard'",
    ],
    "look-alikes": [
        "SET search_path = lookalike, pg_catalog",
        "SET lc_time = 'C'",
        "SET IntervalStyle = 'iso_8601'",
        "SET DateStyle = 'SQL, MDY'",
    ],
}


@pytest.fixture(scope="module")
def lookalikes(stack: Stack) -> None:
    """A schema of functions and operators named like the ones the definer functions use,
    that a caller may put first on its search_path."""
    with stack.postgres.connect("demo") as admin:
        admin.execute("CREATE SCHEMA IF NOT EXISTS lookalike")
        admin.execute(
            "CREATE OR REPLACE FUNCTION lookalike.now() RETURNS timestamptz "
            "LANGUAGE sql AS $$ SELECT timestamptz '2999-01-01 00:00+00' $$"
        )
        admin.execute(
            "CREATE OR REPLACE FUNCTION lookalike.tsgt(timestamptz, timestamptz) "
            "RETURNS boolean LANGUAGE sql AS $$ SELECT false $$"
        )
        admin.execute("DROP OPERATOR IF EXISTS lookalike.> (timestamptz, timestamptz)")
        admin.execute(
            "CREATE OPERATOR lookalike.> (leftarg = timestamptz, "
            "rightarg = timestamptz, function = lookalike.tsgt)"
        )
        admin.execute(f"GRANT USAGE ON SCHEMA lookalike TO {PROVISIONER}")


@pytest.fixture
def provisioner(stack: Stack, lookalikes: None) -> Iterator[Conn]:
    with stack.postgres.connect(
        "demo", user=PROVISIONER, password=stack.provisioner_password
    ) as conn:
        yield conn


def valid_until(stack: Stack, user: str) -> datetime:
    with stack.postgres.connect() as admin:
        row = admin.execute(
            "SELECT rolvaliduntil FROM pg_roles WHERE rolname = %s", (user,)
        ).fetchone()
    assert row is not None
    return row[0]  # type: ignore[no-any-return]


def revoke(conn: Conn, user: str) -> None:
    with conn.cursor() as cur:
        cur.execute("RESET ALL")
        assert cur.execute("SELECT dbaccess.revoke_user(%s)", (user,)).fetchone() == (None,)


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_the_functions_answer_the_same_whatever_the_session_set(
    provisioner: Conn, stack: Stack, name: str
) -> None:
    for statement in HOSTILE[name]:
        provisioner.execute(statement.encode())
    user = f"dba_bounds_{name.replace(' ', '').replace('-', '')[:8]}"
    until = datetime.now(UTC).replace(microsecond=123456) + timedelta(hours=2)
    provisioner.execute(
        "SELECT dbaccess.create_user(%s, %s, %s, 'dbaccess_readonly', 5, true, NULL, false)",
        (user, VERIFIER, until),
    )
    try:
        assert valid_until(stack, user) == until  # the instant checked is the one set
        later = until + timedelta(hours=1)
        provisioner.execute("SELECT dbaccess.renew_user(%s, %s)", (user, later))
        assert valid_until(stack, user) == later
        # the bound is the same instant too: just inside passes, just outside does not
        for beyond in (timedelta(hours=24, minutes=1), timedelta(days=400)):
            with pytest.raises(psycopg.errors.RaiseException, match="is outside"):
                provisioner.execute(
                    "SELECT dbaccess.renew_user(%s, %s)", (user, datetime.now(UTC) + beyond)
                )
        with pytest.raises(psycopg.errors.RaiseException, match="is outside"):
            provisioner.execute(
                "SELECT dbaccess.create_user('dba_bounds_far', %s, %s, "
                "'dbaccess_readonly', 5, true, NULL, false)",
                (VERIFIER, datetime.now(UTC) + timedelta(hours=24, minutes=1)),
            )
        assert valid_until(stack, user) == later
    finally:
        revoke(provisioner, user)


def age(stack: Stack, user: str, by: timedelta) -> None:
    """Make ``user`` look created ``by`` earlier (a user renewed for most of a day; or a
    database whose clock runs ahead of the broker's)."""
    with stack.postgres.connect("demo") as admin:
        admin.execute(
            "UPDATE dbaccess.managed_users SET created_at = created_at - %s WHERE username = %s",
            (by, user),
        )


def test_renewals_never_pass_creation_plus_max_lifetime(
    provisioner: Conn, stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(PROVISIONER_ENV, stack.provisioner_password)
    user = "dba_bounds_lifetime"
    provisioner.execute(
        "SELECT dbaccess.create_user(%s, %s, %s, 'dbaccess_readonly', 5, true, NULL, false)",
        (user, VERIFIER, datetime.now(UTC) + timedelta(minutes=10)),
    )
    try:
        age(stack, user, timedelta(hours=23, minutes=30))
        # each step is within now + 24h, but the whole life would not be
        with pytest.raises(psycopg.errors.DatabaseError, match="may live until") as refused:
            provisioner.execute(
                "SELECT dbaccess.renew_user(%s, %s)", (user, datetime.now(UTC) + timedelta(hours=1))
            )
        assert refused.value.sqlstate == "DBA01"
        inside = datetime.now(UTC).replace(microsecond=0) + timedelta(minutes=20)
        provisioner.execute("SELECT dbaccess.renew_user(%s, %s)", (user, inside))
        assert valid_until(stack, user) == inside
        # the broker's engine turns it into a refusal, not a database failure
        engine = engine_for("demo", load_settings(stack.broker_config).targets["demo"])
        try:
            with pytest.raises(
                EngineRefused, match=f"{user} was created at .* it may live until .* not until"
            ):
                engine.renew_user(user, datetime.now(UTC) + timedelta(hours=1))
        finally:
            engine.close()
    finally:
        revoke(provisioner, user)


def test_the_broker_answers_a_renewal_past_the_lifetime_with_a_403(
    stack: Stack, tokens: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(PROVISIONER_ENV, stack.provisioner_password)
    settings = load_settings(stack.broker_config)
    settings = settings.model_copy(
        update={
            "broker": settings.broker.model_copy(
                update={"store": f"sqlite:///{tmp_path / 'api.db'}"}
            )
        }
    )
    store = Store(f"sqlite:///{tmp_path / 'api.db'}")
    alice = {"Authorization": f"Bearer {tokens['alice']}"}
    with TestClient(create_app(settings, store=store, run_reaper=False)) as api:
        session = api.post(
            "/v1/sessions",
            headers=alice,
            json={"target": "demo", "role": "readonly", "duration_seconds": 600},
        ).json()
        before = valid_until(stack, session["db_user"])
        # the policy allows 1h in all; the database's own record says the user is older
        age(stack, session["db_user"], timedelta(hours=23, minutes=55))
        answer = api.post(
            f"/v1/sessions/{session['id']}/renew", headers=alice, json={"duration_seconds": 1800}
        )
        assert answer.status_code == 403, answer.text
        error = answer.json()["error"]
        assert error["code"] == "max_lifetime"
        assert "may live until" in error["message"]
        assert error["hint"] == "start a new one: dbaccess connect demo --role readonly"
        assert valid_until(stack, session["db_user"]) == before  # nothing changed
        assert (
            api.get("/v1/sessions", headers=alice).json()[0]["expires_at"] == session["expires_at"]
        )
        api.delete(f"/v1/sessions/{session['id']}", headers=alice)
