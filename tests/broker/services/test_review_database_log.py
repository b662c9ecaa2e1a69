"""Incident reviews of direct targets (issue 15, point 5): the statements come from what
the database logged for the break-glass user, read by the broker from the target's
``statement_log`` — MariaDB's server_audit file of the suite's own server, written by the
real break-glass session; PostgreSQL's jsonlog and csvlog of a private server that logs
a user of the session's name. Other users' lines stay out, DDL is flagged, hostile text
is escaped, an unreadable log is a note and not an error."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient

from dbaccess.broker.api.app import create_app
from dbaccess.broker.review_report import render
from dbaccess.broker.settings import Settings, StatementLogSection, load_settings
from dbaccess.sandbox.postgres import PostgresServer
from dbaccess.sandbox.stack import PROVISIONER_ENV, Stack
from dbaccess.wire import IncidentReport

pytestmark = pytest.mark.integration

HOSTILE = "SELECT '<script>alert(1)</script>\n-- \x1b[2J' AS x"


def with_log(settings: Settings, target: str, path: Path, fmt: str, store: Path) -> Settings:
    chosen = settings.targets[target].model_copy(
        update={"statement_log": StatementLogSection(path=path, format=fmt)}
    )
    return settings.model_copy(
        update={
            "targets": {**settings.targets, target: chosen},
            "broker": settings.broker.model_copy(update={"store": f"sqlite:///{store}"}),
        }
    )


def review_of(api: TestClient, tokens: dict[str, str], incident: str) -> IncidentReport:
    got = api.get(
        f"/v1/incidents/{incident}/review", headers={"Authorization": f"Bearer {tokens['dave']}"}
    )
    assert got.status_code == 200, got.text
    return IncidentReport.model_validate(got.json())


def audit_log(stack: Stack) -> Path:
    conn = stack.mariadb.connect()
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT @@GLOBAL.server_audit_file_path")
            row = cur.fetchone()
    finally:
        conn.close()
    assert row is not None
    return stack.mariadb.data_dir / str(row[0])


@pytest.fixture
def broker(
    stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Callable[[Settings], Any]:
    monkeypatch.setenv(PROVISIONER_ENV, stack.provisioner_password)

    def start(settings: Settings) -> Any:
        return TestClient(create_app(settings, run_reaper=False))

    return start


def test_a_mariadb_break_glass_session_from_its_audit_log(
    stack: Stack, tmp_path: Path, tokens: dict[str, str], broker: Callable[[Settings], Any]
) -> None:
    settings = with_log(
        load_settings(stack.broker_config), "shop", audit_log(stack), "server_audit",
        tmp_path / "broker.db",
    )  # fmt: skip
    carol = {"Authorization": f"Bearer {tokens['carol']}"}
    with broker(settings) as api:
        opened = api.post(
            "/v1/breakglass",
            headers=carol,
            json={"target": "shop", "incident": "INC-5150", "reason": "orders stuck"},
        )
        assert opened.status_code == 201, opened.text
        granted = opened.json()
        conn = stack.mariadb.connect("shop", user=granted["db_user"], password=granted["password"])
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT count(*) FROM orders")
                cur.execute(HOSTILE)
                with pytest.raises(Exception, match="CREATE command denied"):
                    cur.execute("CREATE TABLE incident_notes (note TEXT)")  # tried: logged
                with pytest.raises(Exception, match="doesn't exist"):
                    cur.execute("SELECT * FROM no_such_table")
                cur.execute("SELECT 1")  # the plugin logs a query after answering it
        finally:
            conn.close()
        assert api.delete(f"/v1/sessions/{granted['id']}", headers=carol).status_code < 300
        report = review_of(api, tokens, "INC-5150")
    (session,) = report.sessions
    assert session.statements_from == "database log"
    assert session.statements_note and "no row counts" in session.statements_note
    sqls = [s.sql for s in session.statements]
    assert "SELECT count(*) FROM orders" in sqls and HOSTILE in sqls
    assert all(s.rows is None for s in session.statements)
    failed = [s for s in session.statements if s.sql == "SELECT * FROM no_such_table"]
    assert failed and failed[0].status == "failed (error 1146)"
    ddl = [f for f in report.flags if f.kind == "ddl"]
    assert len(ddl) == 1 and "ddl" in ddl[0].message
    # only this user's lines: the provisioner's own statements are in the same file
    assert not [s for s in session.statements if "server_audit" in s.sql]
    page = render(report, "html")
    assert "<script>alert(1)" not in page and "&lt;script&gt;alert(1)" in page
    assert "\x1b" not in render(report, "md")


@pytest.fixture(scope="module")
def logging_postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    """A private PostgreSQL writing jsonlog and csvlog, as a production server would."""
    server = PostgresServer(tmp_path_factory.mktemp("pglog"))
    server.extra_conf = [
        "logging_collector = on",
        "log_destination = 'jsonlog,csvlog'",
        "log_directory = 'log'",
        "log_filename = 'postgresql'",
        "log_timezone = 'UTC'",
    ]
    server.start()
    with server.connect() as admin:  # someone else whose statements are logged too
        admin.execute("CREATE ROLE bystander LOGIN PASSWORD 'y'")
        admin.execute("ALTER ROLE bystander SET log_statement = 'all'")
    try:
        yield server
    finally:
        server.stop()


def wait_for(path: Path, text: str) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text(errors="replace"):
            return
        time.sleep(0.1)
    raise AssertionError(f"{text!r} not in {path}")


@pytest.mark.parametrize("fmt", ["jsonlog", "csvlog"])
def test_a_postgres_session_from_its_server_log(
    stack: Stack,
    tmp_path: Path,
    tokens: dict[str, str],
    broker: Callable[[Settings], Any],
    logging_postgres: PostgresServer,
    fmt: str,
) -> None:
    log = (
        logging_postgres.data_dir
        / "log"
        / ("postgresql.json" if fmt == "jsonlog" else "postgresql.csv")
    )
    settings = with_log(
        load_settings(stack.broker_config), "demo", log, fmt, tmp_path / "broker.db"
    )
    carol = {"Authorization": f"Bearer {tokens['carol']}"}
    incident = "INC-8001" if fmt == "jsonlog" else "INC-8002"
    with broker(settings) as api:
        opened = api.post(
            "/v1/breakglass",
            headers=carol,
            json={"target": "demo", "incident": incident, "reason": "orders stuck"},
        )
        assert opened.status_code == 201, opened.text
        user = opened.json()["db_user"]
        # the private server's user of the same name, logged as the bootstrap logs one
        with logging_postgres.connect() as admin:
            admin.execute(f"CREATE ROLE {user} LOGIN PASSWORD 'x-{fmt}'")
            admin.execute(f"ALTER ROLE {user} SET log_statement = 'all'")
        dsn = f"host=127.0.0.1 port={logging_postgres.port} dbname=postgres"
        with psycopg.connect(f"{dsn} user={user} password=x-{fmt}", autocommit=True) as conn:
            conn.execute("SELECT 1")
            conn.execute(HOSTILE)
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(f"CREATE TABLE notes_{fmt} (note text)")  # tried: logged
            with pytest.raises(psycopg.errors.UndefinedTable):
                conn.execute("SELECT * FROM no_such_table")
            conn.execute("SELECT 'last one'")
        with psycopg.connect(f"{dsn} user=bystander password=y", autocommit=True) as other:
            other.execute(f"SELECT 'not carol, {fmt}'")
        wait_for(log, f"not carol, {fmt}")
        assert api.delete(f"/v1/sessions/{opened.json()['id']}", headers=carol).status_code < 300
        report = review_of(api, tokens, incident)
    (session,) = report.sessions
    assert session.statements_from == "database log"
    sqls = [s.sql for s in session.statements]
    assert sqls == [
        "SELECT 1",
        HOSTILE,
        f"CREATE TABLE notes_{fmt} (note text)",
        "SELECT * FROM no_such_table",
        "SELECT 'last one'",
    ]
    statuses = [(s.status, s.sqlstate) for s in session.statements]
    assert statuses[2:4] == [("failed", "42501"), ("failed", "42P01")]
    assert [f.seq for f in report.flags if f.kind == "ddl"] == [3]
    assert session.statements[2].classes == ["ddl"]


def test_an_unreadable_log_is_a_note(
    stack: Stack, tmp_path: Path, tokens: dict[str, str], broker: Callable[[Settings], Any]
) -> None:
    missing = tmp_path / "nowhere" / "postgresql.json"
    settings = with_log(
        load_settings(stack.broker_config), "demo", missing, "jsonlog", tmp_path / "broker.db"
    )
    carol = {"Authorization": f"Bearer {tokens['carol']}"}
    with broker(settings) as api:
        opened = api.post(
            "/v1/breakglass",
            headers=carol,
            json={"target": "demo", "incident": "INC-404", "reason": "orders stuck"},
        )
        assert opened.status_code == 201, opened.text
        report = review_of(api, tokens, "INC-404")
    (session,) = report.sessions
    assert not session.statements_recorded and session.statements_from is None
    assert session.statements_note == (
        f"the database's log {missing} could not be read: No such file or directory"
    )


def test_a_log_format_the_engine_has_no_reader_for_is_refused(stack: Stack) -> None:
    settings = load_settings(stack.broker_config)
    data = settings.targets["shop"].model_dump()
    data["statement_log"] = {"path": "/var/log/x", "format": "jsonlog"}
    with pytest.raises(ValueError, match="the broker reads server_audit logs of mariadb"):
        type(settings.targets["shop"]).model_validate(data)
