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
from dbaccess.gateway.postgres.classify import classify

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
]


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
