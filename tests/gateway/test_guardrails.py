"""Guardrails through the gateway with real clients: statement classes refused before they
reach the database, rows and bytes limits, the idle timeout."""

from __future__ import annotations

import dataclasses
import secrets
import time

import psycopg
import pytest

from dbaccess.gateway.guardrails import Policy, StatementClass
from dbaccess.gateway.postgres.classify import classify
from dbaccess.gateway.records import StatementRecord
from tests.gateway.conftest import RunningGateway, Session
from tests.gateway.test_postgres_gateway import psql, query, raw_login, recv_exact

pytestmark = pytest.mark.integration

C = StatementClass
READONLY = Policy(allowed=frozenset({C.READ}))


def guarded(gw: RunningGateway, policy: Policy, role: str = "readonly") -> Session:
    """A fresh session whose role template has ``policy``."""
    session = gw.new_session()
    with gw.postgres.connect() as admin:  # something to read and to try to change
        admin.execute(f"CREATE TABLE {session.upstream_user}.t (id int)")
        admin.execute(f"ALTER TABLE {session.upstream_user}.t OWNER TO {session.upstream_user}")
        admin.execute(f"INSERT INTO {session.upstream_user}.t SELECT generate_series(1, 3)")
    changed = dataclasses.replace(session.session, policy=policy, role=role)
    gw.directory.add(changed)
    return Session(changed, session.secret)


def assert_audited(gw: RunningGateway, session: Session) -> list[StatementRecord]:
    """As RunningGateway.assert_all_audited, where a statement refused before execution
    never reached the server (a limit cuts an answer of a statement that did run)."""
    records = gw.records(session)
    ran = [
        r
        for r in records
        if r.status not in ("not_run", "refused") or (r.rule or "").startswith("limits.")
    ]
    logged = gw.server_statements(session)
    assert len(ran) == len(logged), "\n".join(logged)
    return records


REFUSED = [
    ("CREATE TABLE u (id int)", "ddl"),
    ("INSERT INTO t VALUES (4)", "write"),
    ("UPDATE t SET id = 5", "write"),
    ("WITH gone AS (DELETE FROM t RETURNING *) SELECT * FROM gone", "write"),
    ("SELECT * FROM t FOR UPDATE", "write"),
    ("GRANT SELECT ON t TO PUBLIC", "dcl"),
    ("SET ROLE postgres", "dcl"),
    ("SELECT set_config('role', 'postgres', false)", "dcl"),
    ("COPY t TO STDOUT", "copy_out"),
    ("COPY t FROM STDIN", "copy_in"),
    ("DO LANGUAGE plpython3u $$ pass $$", "dcl"),  # also ddl, write, untrusted
    # found by review: built-ins that write, in any spelling, and SQL text a built-in runs
    ("SELECT pg_catalog.lowrite(0, 'x')", "write"),
    ("SELECT query_to_xml('SELECT nextval(''s'')', true, false, '')", "write"),
    ("SELECT pg_try_advisory_lock(1)", "write"),
    ("COPY t FROM '/etc/hostname'", "copy_in"),  # also untrusted
    ("SELECT pg_read_file('/etc/hostname')", "untrusted"),
    ("SELEC 1", "unparsed"),
]


def test_readonly_role_over_simple_query_with_psql(gateway: RunningGateway) -> None:
    session = guarded(gateway, READONLY)
    script = "".join(f"{sql};\nSELECT 'after', count(*) FROM t;\n" for sql, _ in REFUSED)
    run = psql(gateway, session, stdin=script)
    assert run.returncode == 0, run.stderr
    # the session stays usable: the SELECT after each refusal ran
    assert run.stdout.split() == ["after|3"] * len(REFUSED)
    errors = [line for line in run.stderr.splitlines() if line.startswith("ERROR")]
    assert len(errors) == len(REFUSED), run.stderr
    for (_, cls), error in zip(REFUSED, errors, strict=True):
        if cls == "unparsed":
            assert "the statement does not parse" in error
        else:
            assert (
                f"statement class {cls} is not allowed for role readonly "
                f"(rule statements.{cls})" in error
            ), error
    records = assert_audited(gateway, session)  # nothing refused reached the server
    refused = [r for r in records if r.status == "refused"]
    assert [(r.sql, r.rule, r.sqlstate) for r in refused] == [
        (f"{sql};", f"statements.{cls}", "42601" if cls == "unparsed" else "42501")
        for sql, cls in REFUSED
    ]
    assert all(r.status == "completed" for r in records if r.status != "refused")


def test_refusal_inside_a_transaction_keeps_it_open(gateway: RunningGateway) -> None:
    session = guarded(gateway, READONLY)
    run = psql(
        gateway,
        session,
        stdin="BEGIN;\nINSERT INTO t VALUES (9);\nSELECT count(*) FROM t;\n"
        "\\echo :SQLSTATE\nCOMMIT;\n",
    )
    assert run.returncode == 0, run.stderr
    # nothing reached the server, so its transaction is not aborted: the next SELECT runs
    assert run.stdout.split() == ["BEGIN", "3", "00000", "COMMIT"], run.stdout
    assert "rule statements.write" in run.stderr


def test_multi_statement_query_is_refused_whole(gateway: RunningGateway) -> None:
    session = guarded(gateway, READONLY)
    run = psql(gateway, session, "-c", "SELECT 1; CREATE TABLE u (id int); SELECT 2")
    assert "rule statements.ddl" in run.stderr
    assert run.stdout == ""  # not even the first SELECT ran
    records = assert_audited(gateway, session)
    assert [(r.status, r.rule) for r in records] == [("refused", "statements.ddl")]
    with psycopg.connect(gateway.dsn(session), autocommit=True) as conn:
        # psycopg sends a string without parameters as a simple Query: both allowed
        cur = conn.execute("SELECT 1; SELECT count(*) FROM t")
        assert cur.fetchall() == [(1,)]
        assert cur.nextset() and cur.fetchall() == [(3,)]


def test_extended_protocol_refusals_with_psycopg(gateway: RunningGateway) -> None:
    session = guarded(gateway, Policy(allowed=frozenset({C.READ, C.WRITE})))
    with psycopg.connect(gateway.dsn(session), prepare_threshold=0) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match=r"statements\.ddl"):
            conn.execute("CREATE TABLE u (id int CHECK (id > %s))", (0,))
        # the transaction psycopg began is still open, and usable
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
        conn.execute("INSERT INTO t VALUES (%s)", (10,))
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match=r"statements\.dcl"):
            conn.execute("SELECT set_config(%s, %s, false)", ("role", "postgres"))
        assert conn.execute("SELECT count(*) FROM t WHERE id >= %s", (0,)).fetchone() == (4,)
        conn.commit()
    with psycopg.connect(gateway.dsn(session), autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM t").fetchone() == (4,)
    records = assert_audited(gateway, session)
    refused = [(r.kind, r.sql, r.rule) for r in records if r.status == "refused"]
    assert refused == [
        ("execute", "CREATE TABLE u (id int CHECK (id > $1))", "statements.ddl"),
        ("execute", "SELECT set_config($1, $2, false)", "statements.dcl"),
    ]


def test_refusal_in_a_pipeline_ends_the_batch_like_an_error(gateway: RunningGateway) -> None:
    session = guarded(gateway, READONLY)
    with psycopg.connect(gateway.dsn(session), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.SyntaxError, match="rule_statements_write"):
            with conn.pipeline():
                conn.execute("SELECT %s::int", (1,))
                conn.execute("DELETE FROM t WHERE id = %s", (1,))
                conn.execute("SELECT %s::int", (2,))  # skipped, as after any error
        assert conn.execute("SELECT count(*) FROM t").fetchone() == (3,)
    records = assert_audited(gateway, session)
    # the refused Parse's record, then its Execute and the next one, which the server
    # skipped after the error that stands in for the refusal
    assert [(r.sql, r.status, r.rule) for r in records[:4]] == [
        ("SELECT $1::int", "completed", None),
        ("DELETE FROM t WHERE id = $1", "refused", "statements.write"),
        ("DELETE FROM t WHERE id = $1", "not_run", None),
        ("SELECT $1::int", "not_run", None),
    ]


def test_untrusted_language_refused_where_ddl_is_allowed(gateway: RunningGateway) -> None:
    session = guarded(gateway, Policy(allowed=frozenset(set(C) - {C.UNTRUSTED})), "owner")
    run = psql(
        gateway,
        session,
        stdin="CREATE FUNCTION f() RETURNS int LANGUAGE plpython3u AS $$ return 1 $$;\n"
        "COPY t TO PROGRAM 'cat > /tmp/x';\n"
        "CREATE FUNCTION g() RETURNS int LANGUAGE sql AS $$ SELECT 1 $$;\n"
        "SELECT g();\n",
    )
    assert run.stdout.split() == ["CREATE", "FUNCTION", "1"], run.stderr
    assert run.stderr.count("rule statements.untrusted") == 2
    # a server file, read or written, is the server's OS user too (found by review)
    run = psql(
        gateway,
        session,
        stdin="COPY t TO '/tmp/dbaccess-guard-x';\nCOPY t FROM '/etc/hostname';\n"
        "SELECT pg_read_file('/etc/hostname');\nSELECT 'after';\n",
    )
    assert run.stdout.split() == ["after"], run.stderr
    assert run.stderr.count("rule statements.untrusted") == 3


def test_settings_that_change_the_lexing_are_refused(gateway: RunningGateway) -> None:
    """With standard_conforming_strings off the server would read 'a\\'' ; DROP ... --'
    as a string and a DROP where our parser (and PostgreSQL's default) sees one string."""
    session = guarded(gateway, Policy(allowed=frozenset({C.READ, C.DDL})), "owner")
    for options in (
        {"options": "'-c standard_conforming_strings=off'"},
        {"client_encoding": "SJIS"},
    ):
        with pytest.raises(psycopg.OperationalError, match=r"rule statements\.parser_settings"):
            psycopg.connect(gateway.dsn(session, **options), connect_timeout=5)
    with psycopg.connect(gateway.dsn(session), autocommit=True) as conn:
        with pytest.raises(
            psycopg.errors.InsufficientPrivilege, match=r"statements\.parser_settings"
        ):
            conn.execute("SET standard_conforming_strings = off")
        # what the text does not show, the server's ParameterStatus does: a function's SET
        conn.execute(
            "CREATE FUNCTION lax() RETURNS text LANGUAGE sql AS "
            "$$ SELECT set_config('standard_conforming_strings', 'off', false) $$"
        )
        with pytest.raises(psycopg.Error, match="cannot parse safely"):
            conn.execute("SELECT lax()")
            conn.execute("SELECT 1")


def test_the_lexing_difference_is_real_on_the_server(gateway: RunningGateway) -> None:
    """Why parser_settings exists: the text our parser reads as one SELECT drops a table
    on a server whose standard_conforming_strings is off (straight to the server here)."""
    smuggled = "SELECT 'a\\'' ; DROP TABLE smuggle_target; --'"
    assert classify(smuggled) == {C.READ}
    with gateway.postgres.connect() as admin:
        admin.autocommit = True
        admin.execute("CREATE TABLE smuggle_target (id int)")
        admin.execute("SET standard_conforming_strings = off")
        admin.execute(smuggled.encode())  # bytes: psycopg sends them as one simple Query
        admin.execute("RESET standard_conforming_strings")
        gone = admin.execute("SELECT to_regclass('smuggle_target')").fetchone()
    assert gone == (None,)


def test_rows_per_result_limit(gateway: RunningGateway) -> None:
    session = guarded(gateway, Policy(max_rows_per_result=100))
    with psycopg.connect(gateway.dsn(session), autocommit=True) as conn:
        assert len(conn.execute("SELECT generate_series(1, 100)").fetchall()) == 100
        started = time.monotonic()
        with pytest.raises(psycopg.errors.ProgramLimitExceeded, match="100 rows per result"):
            conn.execute("SELECT g, repeat('x', 100) FROM generate_series(1, %s) g", (10**7,))
        assert time.monotonic() - started < 10  # cancelled upstream, not read to the end
        assert conn.execute("SELECT 42").fetchone() == (42,)  # the session goes on
        with pytest.raises(psycopg.errors.ProgramLimitExceeded):
            with (
                conn.cursor() as cur,
                cur.copy("COPY (SELECT generate_series(1, 1000)) TO STDOUT") as copy,
            ):
                for _ in copy:
                    pass
    with psycopg.connect(gateway.dsn(session), autocommit=True) as conn:
        assert conn.execute("SELECT 43").fetchone() == (43,)
    records = assert_audited(gateway, session)
    cut = [r for r in records if r.status == "refused"]
    assert [(r.rule, r.sqlstate) for r in cut] == [("limits.rows_per_result", "54000")] * 2
    assert records[-1].sql == "SELECT 43" and records[-1].status == "completed"


def test_rows_limit_over_simple_query_with_psql(gateway: RunningGateway) -> None:
    session = guarded(gateway, Policy(max_rows_per_result=10))
    run = psql(
        gateway,
        session,
        stdin="SELECT generate_series(1, 1000000);\nSELECT 'still here';\n",
    )
    assert "rule limits.rows_per_result" in run.stderr
    assert run.stdout.split() == ["still", "here"]


def test_bytes_per_session_limit_spans_connections(gateway: RunningGateway) -> None:
    session = guarded(gateway, Policy(max_bytes_per_session=300_000))
    big = "SELECT repeat('x', 1000) FROM generate_series(1, 200)"  # ~200 kB
    with psycopg.connect(gateway.dsn(session), autocommit=True) as conn:
        assert len(conn.execute(big).fetchall()) == 200
        with pytest.raises(psycopg.errors.ProgramLimitExceeded, match="bytes per session"):
            conn.execute(big)
        conn.execute("SET search_path = public")  # no rows: still answered
    with psycopg.connect(gateway.dsn(session), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.ProgramLimitExceeded, match="bytes_per_session"):
            conn.execute("SELECT 1")
    records = assert_audited(gateway, session)
    assert [r.rule for r in records if r.status == "refused"] == ["limits.bytes_per_session"] * 2


def test_idle_timeout_ends_an_idle_connection_only(gateway: RunningGateway) -> None:
    session = guarded(gateway, Policy(idle_timeout=1.0))
    with psycopg.connect(gateway.dsn(session), autocommit=True) as conn:
        # a statement running longer than the timeout is not idleness
        assert conn.execute("SELECT pg_sleep(1.6), 1").fetchone() == ("", 1)
        time.sleep(0.5)
        assert conn.execute("SELECT 2").fetchone() == (2,)
        time.sleep(1.6)
        with pytest.raises(psycopg.OperationalError, match="idle-session timeout"):
            conn.execute("SELECT 3")
    sock = raw_login(gateway, session)
    time.sleep(1.5)
    head = recv_exact(sock, 5)
    assert head[:1] == b"E"
    body = recv_exact(sock, int.from_bytes(head[1:], "big") - 4)
    assert b"C57P05\0" in body and b"rule limits.idle_timeout" in body
    query(sock, "SELECT 4")
    assert sock.recv(100) == b""  # closed
    sock.close()


# Functions no SELECT can call: triggers, handlers, and anything taking an internal value
UNCALLABLE = """
    NOT 'internal'::regtype = ANY (p.proargtypes)
    AND p.prorettype NOT IN ('trigger'::regtype, 'event_trigger'::regtype,
        'language_handler'::regtype, 'fdw_handler'::regtype, 'index_am_handler'::regtype,
        'table_am_handler'::regtype, 'tsm_handler'::regtype)"""
BUILT_IN = """(p.pronamespace = 'pg_catalog'::regnamespace OR EXISTS (SELECT FROM pg_depend d
    WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e'))"""


def test_every_volatile_built_in_is_known_to_the_classifier(gateway: RunningGateway) -> None:
    """The classifier's knowledge of functions, checked against the real catalog with every
    contrib extension the server has: a volatile (or not PUBLIC-executable) function of
    pg_catalog or an extension that is neither a known writer nor a reviewed read fails
    here, so a new PostgreSQL version's new function is a failure, not a hole."""
    from dbaccess.gateway.postgres import classify as known

    name = f"builtins_{secrets.token_hex(4)}"
    with gateway.postgres.connect() as admin:
        admin.execute(f"CREATE DATABASE {name}")
    try:
        with gateway.postgres.connect(dbname=name) as conn:
            for (ext,) in conn.execute("SELECT name FROM pg_available_extensions").fetchall():
                conn.execute(f'CREATE EXTENSION IF NOT EXISTS "{ext}" CASCADE')
            volatile = conn.execute(
                f"""SELECT DISTINCT p.proname FROM pg_proc p WHERE {BUILT_IN} AND {UNCALLABLE}
                AND (p.provolatile = 'v' OR (p.proacl IS NOT NULL AND NOT EXISTS (
                    SELECT FROM aclexplode(p.proacl) a WHERE a.grantee = 0)))"""
            ).fetchall()
            every = {row[0] for row in conn.execute("SELECT proname FROM pg_proc")}
            views = conn.execute(
                "SELECT oid::regclass::text, pg_get_viewdef(oid) FROM pg_class "
                "WHERE relkind IN ('v', 'm')"
            ).fetchall()
    finally:
        with gateway.postgres.connect() as admin:
            admin.execute(f"DROP DATABASE {name}")
    assert len(volatile) > 250  # the query found them
    assert [n for (n,) in volatile if known.builtin_classes(n) is None] == []
    # and no name the classifier knows is a typo (older servers' names aside)
    mine = (
        known.WRITING_FUNCTIONS
        | known.SERVER_FILE_FUNCTIONS
        | known.SQL_BUILDING_FUNCTIONS
        | set(known.SQL_TEXT_FUNCTIONS)
        | known.READ_ONLY_VOLATILE
    )
    assert mine - every == {"pg_start_backup", "pg_stop_backup"}  # PostgreSQL 14's
    assert not known.READ_ONLY_VOLATILE & (known.WRITING_FUNCTIONS | known.SERVER_FILE_FUNCTIONS)
    # a system or extension view whose text would hide a writing call would be a hole too
    assert [v for v, text in views if classify(text) != {C.READ}] == []


def test_state_changing_built_ins_refused_with_psycopg(gateway: RunningGateway) -> None:
    """What the review found, on a readonly session whose upstream user could do it: the
    sequence, the large object and the advisory lock are untouched; reads still run."""
    session = guarded(gateway, READONLY)
    with gateway.postgres.connect() as admin:
        admin.execute(f"CREATE SEQUENCE {session.upstream_user}.s")
        admin.execute(f"ALTER SEQUENCE {session.upstream_user}.s OWNER TO {session.upstream_user}")
    with psycopg.connect(gateway.dsn(session), autocommit=True) as conn:
        for sql, params in [
            ("SELECT query_to_xml('SELECT nextval(''s'')', true, false, '')", ()),
            ("SELECT query_to_xml(%s, true, false, '')", ("SELECT nextval('s')",)),
            ('SELECT "PG_CATALOG".lo_from_bytea(0, %s)', (b"x",)),
            ("SELECT pg_try_advisory_lock(%s)", (42,)),
            ("SELECT txid_current()", ()),
        ]:
            with pytest.raises(
                psycopg.errors.InsufficientPrivilege, match=r"statements\.(write|dcl)"
            ):
                conn.execute(sql, params)
        xml = conn.execute("SELECT query_to_xml('SELECT count(*) FROM t', true, false, '')")
        assert "<count>3</count>" in str(xml.fetchone())
        assert conn.execute("SELECT random() < 2, pg_notify('c', 'x')::text = ''").fetchone() == (
            True,
            True,
        )
    with gateway.postgres.connect() as admin:
        seq = admin.execute(f"SELECT is_called FROM {session.upstream_user}.s").fetchone()
        los = admin.execute(
            "SELECT count(*) FROM pg_largeobject_metadata WHERE lomowner::regrole::text = %s",
            (session.upstream_user,),
        ).fetchone()
        locks = admin.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
        ).fetchone()
    assert (seq, los, locks) == ((False,), (0,), (0,))
    assert_audited(gateway, session)
