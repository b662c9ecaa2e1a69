"""Statement classes from PostgreSQL's grammar, and the pure decision over them."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dbaccess.gateway.guardrails import (
    ALL_CLASSES,
    UNPARSED_RULE,
    Policy,
    StatementClass,
    decide,
)
from dbaccess.gateway.postgres.classify import UNKNOWN_CALLS, classify

C = StatementClass

CASES = [
    ("SELECT 1", {C.READ}),
    ("select 1 union select 2", {C.READ}),
    ("SELECT * FROM t FOR UPDATE", {C.READ, C.WRITE}),
    ("SELECT * INTO copy_of_t FROM t", {C.READ, C.DDL, C.WRITE}),
    ("WITH gone AS (DELETE FROM t RETURNING *) SELECT * FROM gone", {C.READ, C.WRITE}),
    ("SELECT nextval('s')", {C.READ, C.WRITE}),
    ("SELECT set_config('role', 'admin', false)", {C.READ, C.DCL}),
    ("SELECT pg_catalog.set_config($1, $2, false)", {C.READ, C.DCL}),  # unknown setting
    ("SELECT set_config('search_path', 'x', false)", {C.READ}),
    ("INSERT INTO t VALUES (1)", {C.WRITE}),
    ("UPDATE t SET a = 1", {C.WRITE}),
    ("DELETE FROM t", {C.WRITE}),
    ("MERGE INTO t USING s ON t.a = s.a WHEN MATCHED THEN DELETE", {C.WRITE}),
    ("TRUNCATE t", {C.WRITE}),
    ("CALL p()", {C.WRITE}),
    ("LOCK TABLE t IN ACCESS SHARE MODE", {C.READ}),
    ("LOCK TABLE t", {C.WRITE}),
    ("CREATE TABLE t (a int)", {C.DDL}),
    ("ALTER TABLE t ADD b int", {C.DDL}),
    ("DROP TABLE t", {C.DDL}),
    ("CREATE TABLE c AS SELECT 1", {C.DDL}),
    ("VACUUM t", {C.DDL}),
    ("GRANT SELECT ON t TO x", {C.DCL}),
    ("REVOKE SELECT ON t FROM x", {C.DCL}),
    ("GRANT admin TO x", {C.DCL}),
    ("CREATE ROLE x", {C.DCL}),
    ("ALTER ROLE x SUPERUSER", {C.DCL}),
    ("DROP ROLE x", {C.DCL}),
    ("ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO x", {C.DCL}),
    ("ALTER SCHEMA s OWNER TO x", {C.DCL}),
    ("ALTER TABLE t OWNER TO x", {C.DDL}),  # an ALTER TABLE subcommand
    ("SET ROLE admin", {C.DCL}),
    ("SET LOCAL ROLE admin", {C.DCL}),
    ("RESET ROLE", {C.DCL}),
    ("SET SESSION AUTHORIZATION admin", {C.DCL}),
    ("COPY t TO STDOUT", {C.COPY_OUT}),
    ("COPY (SELECT * FROM t) TO STDOUT", {C.COPY_OUT}),
    ("COPY (DELETE FROM t RETURNING *) TO STDOUT", {C.COPY_OUT, C.WRITE}),
    ("COPY t FROM STDIN", {C.COPY_IN}),
    ("COPY t FROM PROGRAM 'id'", {C.COPY_IN, C.UNTRUSTED}),
    ("COPY t TO PROGRAM 'cat'", {C.COPY_OUT, C.UNTRUSTED}),
    ("DO $$ BEGIN END $$", {C.WRITE, C.DDL, C.DCL}),
    ("DO LANGUAGE plpython3u $$ pass $$", {C.WRITE, C.DDL, C.DCL, C.UNTRUSTED}),
    (
        "CREATE FUNCTION f() RETURNS int LANGUAGE plpython3u AS $$ return 1 $$",
        {C.DDL, C.UNTRUSTED},
    ),
    ("CREATE FUNCTION f() RETURNS int LANGUAGE sql AS $$ SELECT 1 $$", {C.DDL}),
    ("CREATE PROCEDURE p() LANGUAGE c AS 'lib', 'sym'", {C.DDL, C.UNTRUSTED}),
    ("LOAD 'plpython3'", {C.UNTRUSTED}),
    ("EXPLAIN DELETE FROM t", {C.READ}),
    ("EXPLAIN ANALYZE DELETE FROM t", {C.WRITE}),
    ("PREPARE p AS DELETE FROM t", {C.WRITE}),
    ("EXECUTE p", {C.SESSION}),
    ("DECLARE c CURSOR FOR SELECT 1", {C.READ}),
    ("FETCH 10 FROM c", {C.SESSION}),
    ("BEGIN", {C.SESSION}),
    ("SET search_path = x", {C.SESSION}),
    ("RESET ALL", {C.SESSION}),  # role and session_authorization are not reset by it
    ("DISCARD ALL", {C.SESSION}),
    ("SHOW ALL", {C.SESSION}),
    ("LISTEN x", {C.SESSION}),
    ("", {C.SESSION}),
    ("SET standard_conforming_strings = off", {C.PARSER_SETTINGS}),
    ("RESET backslash_quote", {C.PARSER_SETTINGS}),
    ("SET client_encoding = 'SJIS'", {C.PARSER_SETTINGS}),
    ("SET NAMES 'shift_jis_2004'", {C.PARSER_SETTINGS}),
    ("SET client_encoding = 'UTF8'", {C.SESSION}),
    ("SELECT set_config('standard_conforming_strings', 'off', false)", {C.READ, C.PARSER_SETTINGS}),
    ("SELECT 1; CREATE TABLE t (a int)", {C.READ, C.DDL}),
    # found by review: COPY with a server file is the server's OS user at work
    ("COPY t FROM '/etc/passwd'", {C.COPY_IN, C.UNTRUSTED}),
    ("COPY t TO '/var/lib/postgresql/.psqlrc'", {C.COPY_OUT, C.UNTRUSTED}),
    ("COPY (SELECT 1) TO '/tmp/x' WITH (FORMAT csv)", {C.COPY_OUT, C.UNTRUSTED}),
    # SQL text that a built-in runs is classified in turn; what the text does not show
    # (a parameter, an expression, a named argument) could be anything a call can do
    ("SELECT query_to_xml('SELECT nextval(''s'')', true, false, '')", {C.READ, C.WRITE}),
    ("SELECT query_to_xml('SELECT * FROM t', true, false, '')", {C.READ}),
    (
        "SELECT query_to_xmlschema('SELECT set_config(''role'', ''x'', false)', true, false, '')",
        {C.READ, C.DCL},
    ),
    ("SELECT query_to_xml($1, true, false, '')", {C.READ} | UNKNOWN_CALLS),
    ("SELECT query_to_xml(query => 'SELECT 1', nulls => true)", {C.READ} | UNKNOWN_CALLS),
    ("SELECT query_to_xml('SELEC 1', true, false, '')", {C.READ} | UNKNOWN_CALLS),
    ("SELECT * FROM ts_stat('SELECT lo_unlink(1)::text::tsvector')", {C.READ, C.WRITE}),
    ("SELECT ts_rewrite('a'::tsquery, 'SELECT ''a''::tsquery, ''b''::tsquery')", {C.READ}),
    ("SELECT ts_rewrite('a'::tsquery, 'a'::tsquery, 'b'::tsquery)", {C.READ}),
    ("SELECT * FROM crosstab('SELECT 1', 'SELECT pg_promote()') AS c(a int)", {C.READ, C.WRITE}),
    ("SELECT * FROM crosstab('SELECT 1', 2) AS c(a int)", {C.READ}),
    ("SELECT * FROM connectby('t', 'id', 'parent', '1', 0) AS c(id int)", {C.READ} | UNKNOWN_CALLS),
    # server files: untrusted (lo_import creates a large object too)
    ("SELECT pg_read_file('/etc/passwd')", {C.READ, C.UNTRUSTED}),
    ("SELECT * FROM pg_ls_dir('.')", {C.READ, C.UNTRUSTED}),
    ("SELECT pg_stat_file('postgresql.conf')", {C.READ, C.UNTRUSTED}),
    ("SELECT lo_import('/etc/passwd')", {C.READ, C.WRITE, C.UNTRUSTED}),
    ("SELECT lo_export(16400, '/tmp/x')", {C.READ, C.UNTRUSTED}),
    ("SELECT dblink_connect_u('dbname=postgres')", {C.READ, C.UNTRUSTED}),
    ("SELECT * FROM pg_get_wal_records_info('0/0', '0/1')", {C.READ, C.UNTRUSTED}),
    # volatile reads stay reads
    ("SELECT random(), clock_timestamp(), currval('s'), pg_notify('c', 'x')", {C.READ}),
    ("SELECT loread(lo_open(16400, 262144), 10), lo_get(16400)", {C.READ}),
    ("SELECT * FROM pg_hba_file_rules", {C.READ}),
    ("SELECT my_function(1)", {C.READ}),  # a user's function: the grants decide
]

# found by review: each new member of the writing built-ins, called as a SELECT would
NEW_WRITING = [
    "lowrite(0, 'x')",
    "lo_put(16400, 0, 'x')",
    "lo_truncate64(0, 1)",
    "lo_from_bytea(0, 'x')",
    "txid_current()",
    "pg_current_xact_id()",
    "pg_try_advisory_lock(1)",
    "pg_try_advisory_xact_lock(1)",
    "pg_try_advisory_lock_shared(1)",
    "pg_try_advisory_xact_lock_shared(1)",
    "pg_advisory_lock_shared(1)",
    "pg_advisory_xact_lock_shared(1)",
    "pg_advisory_unlock(1)",
    "pg_advisory_unlock_shared(1)",
    "pg_advisory_unlock_all()",
    "pg_logical_slot_get_changes('s', NULL, NULL)",
    "pg_logical_slot_get_binary_changes('s', NULL, NULL)",
    "pg_logical_slot_peek_changes('s', NULL, NULL)",
    "pg_logical_slot_peek_binary_changes('s', NULL, NULL)",
    "pg_replication_slot_advance('s', '0/1')",
    "pg_copy_logical_replication_slot('s', 't')",
    "pg_copy_physical_replication_slot('s', 't')",
    "pg_promote()",
    "pg_wal_replay_pause()",
    "pg_wal_replay_resume()",
    "pg_backup_start('x')",
    "pg_backup_stop()",
    "pg_start_backup('x')",
    "pg_stop_backup()",
    "pg_import_system_collations('pg_catalog')",
    "pg_stat_reset_shared('bgwriter')",
    "pg_stat_reset_slru('x')",
    "pg_stat_reset_single_table_counters(1)",
    "pg_replication_origin_drop('o')",
    "pg_replication_origin_session_setup('o')",
    "pg_replication_origin_advance('o', '0/1')",
    "pg_log_backend_memory_contexts(1)",
    "brin_summarize_new_values('i')",
    "brin_summarize_range('i', 0)",
    "brin_desummarize_range('i', 0)",
    "gin_clean_pending_list('i')",
    "binary_upgrade_set_next_pg_type_oid(1)",
    "pg_nextoid('t', 'a', 'i')",
    "dblink('dbname=postgres', 'DELETE FROM t')",
    "dblink_connect('dbname=postgres')",
    "dblink_send_query('c', 'DELETE FROM t')",
    "dblink_open('c', 'SELECT 1')",
    "dblink_fetch('c', 1)",
    "dblink_get_result('c')",
    "pg_prewarm('t')",
    "autoprewarm_dump_now()",
    "pg_stat_statements_reset()",
    "heap_force_kill('t', ARRAY['(0,1)'::tid])",
    "pg_truncate_visibility_map('t')",
]


@pytest.mark.parametrize("call", NEW_WRITING)
def test_writing_built_ins_are_writes(call: str) -> None:
    assert classify(f"SELECT {call}") == {C.READ, C.WRITE}
    assert classify(f"SELECT * FROM {call}") == {C.READ, C.WRITE}


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT pg_catalog.lowrite(0, 'x')",  # qualified with pg_catalog
        "SELECT public.dblink_exec('DELETE FROM t')",  # contrib lives in any schema
        "SELECT \"lowrite\"(0, 'x')",  # quoted, as the parser keeps it: the same function
        "SELECT LOWRITE(0, 'x')",  # unquoted: folded to lower case by the parser
        # quoted upper case: another function for PostgreSQL (none exists), a look-alike
        # of a writing built-in; refused too (fail closed)
        "SELECT \"LOWRITE\"(0, 'x')",
        'SELECT "PG_CATALOG"."Lo_Unlink"(16400)',
        "SELECT 1 WHERE EXISTS (SELECT pg_try_advisory_lock(1))",
        "WITH w AS (SELECT lo_create(0)) SELECT * FROM w",
        "COPY (SELECT pg_promote()) TO STDOUT",
        "EXPLAIN ANALYZE SELECT setval('s', 1)",
    ],
)
def test_writing_built_ins_in_any_spelling_or_place(sql: str) -> None:
    assert C.WRITE in (classify(sql) or ())


def test_explain_without_analyze_does_not_call() -> None:
    assert classify("EXPLAIN SELECT lowrite(0, 'x')") == {C.READ}


@pytest.mark.parametrize(("sql", "classes"), CASES, ids=[c[0][:40] for c in CASES])
def test_classes_from_the_grammar(sql: str, classes: set[StatementClass]) -> None:
    assert classify(sql) == classes


def test_text_that_does_not_parse_has_no_class() -> None:
    assert classify("SELEC 1") is None
    assert classify("SELECT 'unterminated") is None


def test_decide_names_the_rule_and_the_role() -> None:
    readonly = Policy(allowed=frozenset({C.READ}))
    assert decide(readonly, "readonly", {C.READ, C.SESSION}) is None
    refusal = decide(readonly, "readonly", {C.READ, C.DDL})
    assert refusal is not None and refusal.rule == "statements.ddl"
    assert refusal.message == (
        "dbaccess gateway: statement class ddl is not allowed for role readonly "
        "(rule statements.ddl)"
    )
    unparsed = decide(readonly, "readonly", None)
    assert unparsed is not None and unparsed.rule == UNPARSED_RULE
    assert not Policy().restricts_statements and readonly.restricts_statements


classes = st.frozensets(st.sampled_from(sorted(ALL_CLASSES)))


@given(allowed=classes, statement=classes)
def test_decide_refuses_exactly_what_is_not_allowed(
    allowed: frozenset[StatementClass], statement: frozenset[StatementClass]
) -> None:
    refusal = decide(Policy(allowed=allowed), "r", statement)
    missing = statement - allowed - {C.SESSION}
    assert (refusal is None) == (not missing)
    if refusal is not None:
        assert refusal.rule in {f"statements.{c.value}" for c in missing}


@pytest.mark.parametrize(
    ("params", "refused"),
    [
        # found by review: PostgreSQL compares setting names without case, '-' as '_'
        ({"options": "-c standard-conforming-strings=off"}, "options"),
        ({"options": "--standard_conforming_strings=off"}, "options"),
        ({"STANDARD_CONFORMING_STRINGS": "off"}, "STANDARD_CONFORMING_STRINGS"),
        ({"role": "dbaccess_readwrite"}, "role"),  # a SET ROLE at login
        ({"options": "-c default_transaction_read_only=off"}, "options"),
        ({"client_encoding": "WINDOWS932"}, "client_encoding"),  # an alias of SJIS
        ({"client_encoding": "shift-jis-2004"}, "client_encoding"),
        ({"client_encoding": "UTF8", "DateStyle": "ISO", "TimeZone": "UTC"}, None),
        ({"application_name": "DBeaver", "extra_float_digits": "3", "options": " "}, None),
        ({"client_encoding": "windows-1252", "search_path": "public"}, None),
    ],
)
def test_start_up_parameters_are_an_allow_list(params: dict[str, str], refused: str | None) -> None:
    from dbaccess.gateway.postgres.classify import unsafe_startup

    assert unsafe_startup({"user": "u", "database": "d", **params}) == refused


def test_a_quoted_upper_case_lexing_setting_is_still_one() -> None:
    assert classify('SET "STANDARD_CONFORMING_STRINGS" = off') == {C.PARSER_SETTINGS}
