"""Masked columns on MariaDB: the bootstrap's column grants and masked views.

MariaDB has no catalog a procedure could match globs against cheaply, so ``apply_masks``
runs in the bootstrap's own admin connection (``--apply``): for each group role whose
template lists ``masked`` columns it resolves the patterns (``database.table.column``)
against information_schema.COLUMNS and, for each base table they reach that the group
could read (a table-level SELECT in mysql.tables_priv): revokes it and grants SELECT on
the other columns only; makes ``<group>_masked.<table>``, a ``SQL SECURITY DEFINER``
view of the unmasked columns plus NULL (or the template's expression) for each masked
one, defined by ``dbaccess_masker@localhost`` (locked: nobody logs in as it), which may
only SELECT the masked tables; and grants the group SELECT on the view. A table the
group could not read keeps it so: only masked columns' own grants are revoked.

Nothing rewrites a result: the server refuses the column to the session user whatever
the statement (WHERE, a cast whose warning quotes it, EXPLAIN, INTO OUTFILE, a join),
which ``mask verify`` probes. A database-level ``GRANT SELECT ON db.*`` cannot be taken
back per column: the bootstrap refuses a group that holds one on a masked table's
database (before changing anything), and mask verify reports one granted later as leaks.
"""

from __future__ import annotations

from fnmatch import fnmatchcase
from typing import Any

from dbaccess.broker.settings import TargetSection
from dbaccess.errors import ConfigError

MASKER = "'dbaccess_masker'@'localhost'"  # defines the views; an account nobody uses
SUFFIX = "_masked"  # the database of a group's views: <group_role>_masked
RECORD = "dbaccess.masked_columns"  # group role -> the columns masked from it
TABLES = "dbaccess.masked_tables"  # group role -> the tables masked, and restore
SYSTEM = ("mysql", "information_schema", "performance_schema", "sys", "dbaccess")


def _lit(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def _ident(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def masked_columns(rows: list[tuple[Any, ...]], patterns: list[str]) -> list[tuple[str, str, str]]:
    """The (database, table, column) of ``rows`` that one of ``patterns`` reaches."""
    return [
        (str(d), str(t), str(c))
        for d, t, c in rows
        if str(d) not in SYSTEM
        and not str(d).endswith(SUFFIX)
        and any(fnmatchcase(f"{d}.{t}.{c}", p) for p in patterns)
    ]


def _refuse_database_wide_reads(cur: Any, groups_and_dbs: list[tuple[str, str]]) -> None:
    """A group that may SELECT a whole database (``GRANT SELECT ON db.*``, or on ``*.*``)
    reads a masked column whatever a view or column grant says, and MariaDB cannot take
    one column out of such a grant: refused before anything changes, naming the fix."""
    for group, db in groups_and_dbs:
        cur.execute(
            "SELECT 1 FROM mysql.db WHERE Db = %s AND User = %s AND Host = '' "
            "AND Select_priv = 'Y' UNION ALL SELECT 1 FROM mysql.user WHERE User = %s "
            "AND Host = '' AND is_role = 'Y' AND Select_priv = 'Y'",
            (db, group, group),
        )
        if cur.fetchone() is not None:
            raise ConfigError(
                f"role {group} may SELECT every table of {db} (a database-level or global "
                f"grant): its masked columns there cannot be taken out of it",
                hint=f"grant {group} SELECT per table instead (REVOKE SELECT ON {db}.* FROM "
                f"{group}; GRANT SELECT ON {db}.<table> TO {group} for each table), then "
                "run the bootstrap again",
            )


def apply_masks(target: TargetSection, cur: Any) -> None:
    """Apply every group role's masks through ``cur`` (the bootstrap's admin cursor)."""
    masks = {r.group_role: r for r in target.roles.values()}
    cur.execute(
        "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = 'dbaccess' "
        "AND TABLE_NAME = 'masked_tables'"
    )
    found = cur.fetchone()
    if not any(r.masked for r in masks.values()) and not (found and found[0]):
        return  # never masked anything: nothing to give back either
    cur.execute(f"CREATE USER IF NOT EXISTS {MASKER} ACCOUNT LOCK")
    cur.execute(f"ALTER USER {MASKER} ACCOUNT LOCK")
    cur.execute(
        f"CREATE TABLE IF NOT EXISTS {RECORD} (group_role VARCHAR(80) NOT NULL,"
        " db VARCHAR(64) NOT NULL, tbl VARCHAR(64) NOT NULL, col VARCHAR(64) NOT NULL,"
        " PRIMARY KEY (group_role, db, tbl, col)) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
    )
    # what the group could read before masking (restore): given back once unmasked
    cur.execute(
        f"CREATE TABLE IF NOT EXISTS {TABLES} (group_role VARCHAR(80) NOT NULL,"
        " db VARCHAR(64) NOT NULL, tbl VARCHAR(64) NOT NULL, restore BOOLEAN NOT NULL,"
        " PRIMARY KEY (group_role, db, tbl)) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
    )
    cur.execute(
        "SELECT c.TABLE_SCHEMA, c.TABLE_NAME, c.COLUMN_NAME FROM information_schema.COLUMNS c "
        "JOIN information_schema.TABLES t ON t.TABLE_SCHEMA = c.TABLE_SCHEMA "
        "AND t.TABLE_NAME = c.TABLE_NAME WHERE t.TABLE_TYPE = 'BASE TABLE' "
        "ORDER BY c.TABLE_SCHEMA, c.TABLE_NAME, c.ORDINAL_POSITION"
    )
    rows = list(cur.fetchall())
    cur.execute(f"SELECT group_role, db, tbl, restore FROM {TABLES}")
    recorded = {(str(g), str(d), str(t)): bool(r) for g, d, t, r in cur.fetchall()}
    reached: dict[tuple[str, str, str], list[str]] = {}
    for group, role in sorted(masks.items()):
        for d, t, c in masked_columns(rows, list(role.masked)):
            reached.setdefault((group, d, t), []).append(c)
    seen: dict[tuple[str, str], str] = {}
    for group, db, table in sorted(reached):
        other = seen.setdefault((group, table), db)
        if other != db:
            raise ConfigError(
                f"two masked tables of {group} are named {table} ({other} and {db}): their "
                f"views would share {group + SUFFIX}.{table}",
                hint="narrow the masked patterns of that template to one of them",
            )
    _refuse_database_wide_reads(cur, sorted({(g, d) for g, d, _ in reached}))
    for (group, db, table), restore in sorted(recorded.items()):
        if (group, db, table) in reached:
            continue
        # no longer masked: no view, and the table-level SELECT back if it had one
        cur.execute(f"DROP VIEW IF EXISTS {_ident(group + SUFFIX)}.{_ident(table)}")
        if restore and any((d, t) == (db, table) for d, t, _ in rows):
            cur.execute(f"GRANT SELECT ON {_ident(db)}.{_ident(table)} TO {_ident(group)}")
        cur.execute(
            f"DELETE FROM {TABLES} WHERE group_role = %s AND db = %s AND tbl = %s",
            (group, db, table),
        )
    for group in sorted(masks):
        cur.execute(f"DELETE FROM {RECORD} WHERE group_role = %s", (group,))
        # the session user sees no masked column in information_schema: mask verify
        # reads the names here (the names only, as PostgreSQL's catalog shows them)
        cur.execute(f"GRANT SELECT ON {RECORD} TO {_ident(group)}")
    for (group, db, table), cols in sorted(reached.items()):
        role = masks[group]
        for c in cols:
            cur.execute(f"INSERT INTO {RECORD} VALUES (%s, %s, %s, %s)", (group, db, table, c))
        all_cols = [str(c) for d, t, c in rows if (d, t) == (db, table)]
        name = f"{_ident(db)}.{_ident(table)}"
        cur.execute(
            "SELECT FIND_IN_SET('Select', Table_priv) > 0 FROM mysql.tables_priv "
            "WHERE Db = %s AND Table_name = %s AND User = %s AND Host = ''",
            (db, table, group),
        )
        found = cur.fetchone()
        table_level = bool(found and found[0])
        restore = table_level or recorded.get((group, db, table), False)
        cur.execute(
            f"INSERT INTO {TABLES} VALUES (%s, %s, %s, %s) ON DUPLICATE KEY UPDATE restore = %s",
            (group, db, table, restore, restore),
        )
        if not restore:
            # it could not read the table: only the masked columns' own grants go
            cur.execute(
                "SELECT Column_name FROM mysql.columns_priv WHERE Db = %s AND "
                "Table_name = %s AND User = %s AND Host = '' "
                "AND FIND_IN_SET('Select', Column_priv) > 0",
                (db, table, group),
            )
            granted = {str(r[0]) for r in cur.fetchall()} & set(cols)
            if granted:
                listed = ", ".join(_ident(c) for c in sorted(granted))
                cur.execute(f"REVOKE SELECT ({listed}) ON {name} FROM {_ident(group)}")
            continue
        if table_level:  # granted before the first run, or again since: taken over
            cur.execute(f"REVOKE SELECT ON {name} FROM {_ident(group)}")
        cur.execute(
            "SELECT Column_name FROM mysql.columns_priv WHERE Db = %s AND Table_name = %s "
            "AND User = %s AND Host = '' AND FIND_IN_SET('Select', Column_priv) > 0",
            (db, table, group),
        )
        granted = {str(r[0]) for r in cur.fetchall()} & set(cols)
        if granted:  # a column masked since the last run
            listed = ", ".join(_ident(c) for c in sorted(granted))
            cur.execute(f"REVOKE SELECT ({listed}) ON {name} FROM {_ident(group)}")
        others = [c for c in all_cols if c not in cols]
        if others:
            listed = ", ".join(_ident(c) for c in others)
            cur.execute(f"GRANT SELECT ({listed}) ON {name} TO {_ident(group)}")
        select = ", ".join(
            (
                f"({role.mask[f'{db}.{table}.{c}']}) AS {_ident(c)}"
                if f"{db}.{table}.{c}" in role.mask
                else f"NULL AS {_ident(c)}"
            )
            if c in cols
            else _ident(c)
            for c in all_cols
        )
        views = group + SUFFIX
        view = f"{_ident(views)}.{_ident(table)}"
        cur.execute(f"CREATE DATABASE IF NOT EXISTS {_ident(views)}")
        cur.execute(f"GRANT SELECT ON {name} TO {MASKER}")
        cur.execute(
            f"CREATE OR REPLACE DEFINER = {MASKER} SQL SECURITY DEFINER VIEW {view} AS "
            f"SELECT {select} FROM {name}"
        )
        cur.execute(f"GRANT SELECT ON {view} TO {_ident(group)}")
