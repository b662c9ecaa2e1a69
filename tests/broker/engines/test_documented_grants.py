"""The group-role grants docs/broker.md shows do what it says, on real servers: a session
user of the read-only role reads (also tables created later) and cannot write; one of the
read-write role writes and cannot change the schema; other roles cannot connect."""

from __future__ import annotations

import re
from pathlib import Path

import psycopg
import pymysql
import pytest

from dbaccess.sandbox.stack import Stack

pytestmark = pytest.mark.integration

DOC = Path(__file__).resolve().parents[3] / "docs" / "broker.md"


def documented_sql() -> tuple[list[str], list[str]]:
    """The PostgreSQL and the MariaDB statements of "Granting the group roles ..."."""
    text = DOC.read_text()
    section = text[text.index("### Granting the group roles") : text.index("### Several targets")]
    blocks = re.findall(r"```sql\n(.*?)```", section, re.S)
    assert len(blocks) == 2, "expected one PostgreSQL and one MariaDB block"

    def statements(block: str) -> list[str]:
        lines = [re.sub(r"--.*", "", line) for line in block.splitlines()]
        return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]

    return statements(blocks[0]), statements(blocks[1])


def renamed(statement: str, database: str) -> str:
    """The same statement for this test's own database and roles (the shared servers'
    demo and shop databases and dbaccess_* roles belong to other tests)."""
    return (
        statement.replace("dbaccess_read", "docgrant_read")
        .replace(" demo", f" {database}")
        .replace("shop.", f"{database}.")
    )


def test_postgres_grants(stack: Stack) -> None:
    pg_statements, _ = documented_sql()
    assert any("ALTER DEFAULT PRIVILEGES" in s for s in pg_statements)
    pg = stack.postgres
    with pg.connect() as admin:
        admin.execute("CREATE ROLE app_owner LOGIN PASSWORD 'owner-pw'")
        admin.execute("CREATE DATABASE docgrants OWNER app_owner")
        for role in ("docgrant_readonly", "docgrant_readwrite"):
            admin.execute(f"CREATE ROLE {role} NOLOGIN")
        admin.execute("CREATE ROLE doc_ro LOGIN PASSWORD 'pw' IN ROLE docgrant_readonly")
        admin.execute("CREATE ROLE doc_rw LOGIN PASSWORD 'pw' IN ROLE docgrant_readwrite")
        admin.execute("CREATE ROLE doc_outsider LOGIN PASSWORD 'pw'")
    with pg.connect("docgrants", user="app_owner", password="owner-pw") as owner:
        owner.execute("CREATE TABLE before (id serial PRIMARY KEY, v text)")
        owner.execute("INSERT INTO before (v) VALUES ('a')")
    with pg.connect("docgrants") as admin:
        for statement in pg_statements:
            admin.execute(renamed(statement, "docgrants"))
    with pg.connect("docgrants", user="app_owner", password="owner-pw") as owner:
        owner.execute("CREATE TABLE later (id serial PRIMARY KEY, v text)")  # after the grants
        owner.execute("INSERT INTO later (v) VALUES ('b')")

    with pg.connect("docgrants", user="doc_ro", password="pw") as ro:
        assert ro.execute("SELECT v FROM before").fetchall() == [("a",)]
        assert ro.execute("SELECT v FROM later").fetchall() == [("b",)]
        # what pg_dump reads of a sequence, also of one created after the grants
        assert ro.execute("SELECT last_value FROM later_id_seq").fetchone() is not None
        assert ro.execute("SELECT last_value FROM before_id_seq").fetchone() is not None
        for attempt in (
            "INSERT INTO later (v) VALUES ('x')",
            "DELETE FROM before",
            "CREATE TABLE mine (id int)",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                ro.execute(attempt)
    with pg.connect("docgrants", user="doc_rw", password="pw") as rw:
        rw.execute("INSERT INTO later (v) VALUES ('c')")  # the sequence too
        rw.execute("INSERT INTO before (v) VALUES ('d')")
        rw.execute("UPDATE later SET v = 'e' WHERE v = 'c'")
        rw.execute("DELETE FROM before WHERE v = 'd'")
        for attempt in (
            "DROP TABLE later",
            "CREATE TABLE mine (id int)",
            "ALTER TABLE before ADD COLUMN w text",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                rw.execute(attempt)
    with pytest.raises(psycopg.OperationalError, match="permission denied for database"):
        pg.connect("docgrants", user="doc_outsider", password="pw")


def test_mariadb_grants(stack: Stack) -> None:
    _, maria_statements = documented_sql()
    maria = stack.mariadb
    admin = maria.connect()
    try:
        with admin.cursor() as cur:
            cur.execute("CREATE DATABASE docgrants")
            cur.execute(
                "CREATE TABLE docgrants.before (id INT AUTO_INCREMENT PRIMARY KEY, v VARCHAR(10))"
            )
            cur.execute("INSERT INTO docgrants.before (v) VALUES ('a')")
            cur.execute("CREATE VIEW docgrants.seen AS SELECT v FROM docgrants.before")
            for role in ("docgrant_readonly", "docgrant_readwrite"):
                cur.execute(f"CREATE ROLE {role}")
            for statement in maria_statements:
                cur.execute(renamed(statement, "docgrants"))
            cur.execute(
                "CREATE TABLE docgrants.later (id INT AUTO_INCREMENT PRIMARY KEY, v VARCHAR(10))"
            )
            cur.execute("INSERT INTO docgrants.later (v) VALUES ('b')")
            for user, role in (("doc_ro", "docgrant_readonly"), ("doc_rw", "docgrant_readwrite")):
                cur.execute(f"CREATE USER '{user}'@'%' IDENTIFIED BY 'pw'")
                cur.execute(f"GRANT {role} TO '{user}'@'%'")
                cur.execute(f"SET DEFAULT ROLE {role} FOR '{user}'@'%'")
    finally:
        admin.close()

    def attempts(user: str, allowed: list[str], refused: list[str]) -> None:
        conn = maria.connect(user=user, password="pw")
        try:
            with conn.cursor() as cur:
                for statement in allowed:
                    cur.execute(statement)
                for statement in refused:
                    with pytest.raises(pymysql.err.OperationalError) as caught:
                        cur.execute(statement)
                    assert caught.value.args[0] in (1142, 1044), caught.value.args  # denied
        finally:
            conn.close()

    attempts(
        "doc_ro",
        [
            "SELECT v FROM docgrants.before",
            "SELECT v FROM docgrants.later",
            "SHOW CREATE VIEW docgrants.seen",
        ],
        [
            "INSERT INTO docgrants.later (v) VALUES ('x')",
            "DELETE FROM docgrants.before",
            "CREATE TABLE docgrants.mine (id INT)",
        ],
    )
    attempts(
        "doc_rw",
        [
            "INSERT INTO docgrants.later (v) VALUES ('c')",
            "UPDATE docgrants.later SET v = 'e' WHERE v = 'c'",
            "DELETE FROM docgrants.before WHERE v = 'zz'",
        ],
        [
            "DROP TABLE docgrants.later",
            "CREATE TABLE docgrants.mine (id INT)",
            "ALTER TABLE docgrants.before ADD COLUMN w INT",
        ],
    )
