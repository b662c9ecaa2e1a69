"""``mask verify`` on MariaDB: the bypasses a session user of a masked template tries,
connected as one (the probe never sees more than a person would).

Denied (1142 table, 1143 column, 1044/1045 access, 1227 and 1356 view) is safe. A probe
that returns values, or whose warnings or error quote a value (a cast's "Truncated
incorrect INTEGER value: '...'"), leaked; what leaked is shown as a length and a hash
prefix, never the value."""

from __future__ import annotations

import hashlib

import pymysql

from dbaccess.broker.engines.base import CONNECT_TIMEOUT, EngineError
from dbaccess.broker.engines.mariadb.masking import RECORD, SUFFIX, masked_columns
from dbaccess.broker.masking import Probe
from dbaccess.broker.settings import RoleTemplate, TargetSection

DENIED = {1044, 1045, 1142, 1143, 1227, 1356, 1370}


def _evidence(text: str) -> str:
    digest = hashlib.sha256(text.encode()).hexdigest()[:8]
    return f"{len(text)} characters, sha256 {digest}…"


def _lit(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def _ident(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def _run(conn: pymysql.connections.Connection, query: str) -> tuple[str, str]:
    """(outcome, detail): "denied", "rows" (what came back, as evidence), "none" or
    "error". Warnings (SHOW WARNINGS) count as values: they quote what a cast cut."""
    try:
        with conn.cursor() as cur:
            cur.execute(query)
            rows = list(cur.fetchall() or [])
            cur.execute("SHOW WARNINGS")
            warned = [str(w[2]) for w in cur.fetchall() or [] if "'" in str(w[2])]
    except pymysql.err.Error as exc:
        code = exc.args[0] if exc.args else None
        if code in DENIED:
            return "denied", "permission denied"
        return "error", f"{code}: {_evidence(str(exc))}"
    values = [v for row in rows for v in row if v is not None] + warned
    if not values:
        return "none", "no value returned"
    return "rows", f"{len(rows)} row(s), {len(warned)} warning(s), {_evidence(repr(values))}"


def probe(target: TargetSection, role: RoleTemplate, username: str, password: str) -> list[Probe]:
    """Every probe of every column the template masks, as ``username``."""
    try:
        conn = pymysql.connect(
            host=target.host,
            port=target.port,
            user=username,
            password=password,
            connect_timeout=CONNECT_TIMEOUT,
            read_timeout=30,
            autocommit=True,
        )
    except pymysql.err.Error as exc:
        raise EngineError(f"probing as {username} failed: {exc.args[-1]}") from None
    try:
        # the masked columns it can see (a grant too many) and those the bootstrap masked
        with conn.cursor() as cur:
            cur.execute("SET SESSION max_statement_time = 8")
            cur.execute(
                "SELECT TABLE_SCHEMA, TABLE_NAME, COLUMN_NAME FROM information_schema.COLUMNS "
                "ORDER BY 1, 2, ORDINAL_POSITION"
            )
            visible = list(cur.fetchall())
        columns = masked_columns(visible, list(role.masked)) + _recorded(conn, role)
        probes: list[Probe] = []
        for db, table, column in sorted(set(columns)):
            probes += _column_probes(conn, role, db, table, column)
        return probes
    finally:
        conn.close()


def _recorded(
    conn: pymysql.connections.Connection, role: RoleTemplate
) -> list[tuple[str, str, str]]:
    """The columns the bootstrap masked from the group (dbaccess.masked_columns, which
    it may read): information_schema shows the session none of them."""
    with conn.cursor() as cur:
        try:
            cur.execute(
                f"SELECT db, tbl, col FROM {RECORD} WHERE group_role = %s", (role.group_role,)
            )
        except pymysql.err.Error:
            return []  # never bootstrapped with masks: the visible ones are probed
        return [(str(d), str(t), str(c)) for d, t, c in cur.fetchall()]


def _column_probes(
    conn: pymysql.connections.Connection, role: RoleTemplate, db: str, table: str, column: str
) -> list[Probe]:
    t = f"{_ident(db)}.{_ident(table)}"
    c = _ident(column)
    name = f"{db}.{table}.{column}"
    tries: list[tuple[str, str, bool]] = [
        # (probe, statement, whether an error past the privilege check is a leak)
        ("select", f"SELECT {c} FROM {t} LIMIT 5", False),
        ("select-star", f"SELECT * FROM {t} LIMIT 5", False),
        ("where", f"SELECT COUNT(*) FROM {t} WHERE {c} IS NOT NULL", False),
        ("order-by", f"SELECT 1 FROM {t} ORDER BY {c} LIMIT 5", False),
        ("group-by", f"SELECT COUNT(*) FROM {t} GROUP BY {c}", False),
        ("like-oracle", f"SELECT COUNT(*) FROM {t} WHERE {c} LIKE '1%'", False),
        ("compare-oracle", f"SELECT COUNT(*) FROM {t} WHERE {c} > '5'", False),
        ("functions", f"SELECT LENGTH({c}), MD5({c}) FROM {t} LIMIT 5", False),
        ("cast-warning", f"SELECT CAST({c} AS SIGNED) FROM {t} LIMIT 5", True),
        ("cast-error", f"SELECT CAST({c} AS DATE) + INTERVAL 1 DAY FROM {t} LIMIT 5", True),
        ("join", f"SELECT COUNT(*) FROM {t} a JOIN {t} b ON a.{c} = b.{c}", False),
        (
            "subquery",
            f"SELECT COUNT(*) FROM DUAL WHERE EXISTS (SELECT 1 FROM {t} WHERE {c} IS NOT NULL)",
            False,
        ),
        ("explain-json", f"EXPLAIN FORMAT=JSON SELECT * FROM {t} WHERE {c} = 'x'", False),
        ("analyze-json", f"ANALYZE FORMAT=JSON SELECT {c} FROM {t} LIMIT 5", False),
        ("into-outfile", f"SELECT {c} FROM {t} INTO OUTFILE '/tmp/dbaccess-probe-{column}'", True),
        (
            "column-stats",
            "SELECT min_value, max_value, histogram FROM mysql.column_stats "
            f"WHERE db_name = {_lit(db)} AND table_name = {_lit(table)} "
            f"AND column_name = {_lit(column)}",
            False,
        ),
        (
            "is-columns",
            "SELECT COLUMN_DEFAULT FROM information_schema.COLUMNS "
            "WHERE COLUMN_DEFAULT IS NOT NULL "
            f"AND TABLE_SCHEMA = {_lit(db)} AND TABLE_NAME = {_lit(table)} "
            f"AND COLUMN_NAME = {_lit(column)}",
            False,
        ),
    ]
    # DEFINER views and routines the session may use (but the masked views) that name the
    # column, or whose definition it is not shown (it never is without SHOW VIEW, or for
    # another definer's routine: measured on 10.11): they read with the definer's rights,
    # so they may hand the column on under any name
    named = (f"%{table}%", f"%{column}%")
    with conn.cursor() as cur:
        cur.execute(
            "SELECT TABLE_SCHEMA, TABLE_NAME FROM information_schema.VIEWS "
            "WHERE SECURITY_TYPE = 'DEFINER' AND TABLE_SCHEMA NOT LIKE %s "
            "AND TABLE_SCHEMA NOT IN ('sys', 'mysql', 'dbaccess') AND (VIEW_DEFINITION = '' "
            "OR (VIEW_DEFINITION LIKE %s AND VIEW_DEFINITION LIKE %s)) ORDER BY 1, 2",
            ("%" + SUFFIX, *named),
        )
        views = list(cur.fetchall())
        cur.execute(
            "SELECT ROUTINE_SCHEMA, ROUTINE_NAME FROM information_schema.ROUTINES "
            "WHERE SECURITY_TYPE = 'DEFINER' AND ROUTINE_SCHEMA NOT IN ('sys', 'mysql', "
            "'dbaccess') AND (ROUTINE_DEFINITION IS NULL OR (ROUTINE_DEFINITION LIKE %s "
            "AND ROUTINE_DEFINITION LIKE %s)) ORDER BY 1, 2",
            named,
        )
        routines = list(cur.fetchall())
    for view_db, view_name in views:
        tries.append(
            (f"view-{view_name}", f"SELECT * FROM {_ident(view_db)}.{_ident(view_name)}", False)
        )
    probes = []
    for probe_name, statement, error_leaks in tries:
        outcome, detail = _run(conn, statement)
        leaked = outcome in ("rows", "none") or (outcome == "error" and error_leaks)
        if probe_name in ("column-stats", "is-columns"):
            leaked = outcome == "rows"  # readable by design at times: values are the leak
        probes.append(
            Probe(
                column=name,
                name=probe_name,
                tried=statement,
                leaked=leaked,
                detail=detail if outcome != "none" else "ran (no value came back)",
                error=outcome == "error" and not error_leaks,
            )
        )
    for routine_db, routine in routines:
        probes.append(
            Probe(
                name,
                f"definer-{routine}",
                f"information_schema.ROUTINES: {routine_db}.{routine}",
                True,
                "a DEFINER routine the session may run may read the column",
            )  # fmt: skip
        )
    view = f"{_ident(role.group_role + SUFFIX)}.{_ident(table)}"
    outcome, detail = _run(conn, f"SELECT {c} FROM {view} LIMIT 5")
    expression = role.mask.get(name)
    if outcome in ("denied", "error"):
        probes.append(
            Probe(name, "masked-view", f"SELECT {c} FROM {view}", False,
                  f"the masked view cannot be read: {detail}", error=True)
        )  # fmt: skip
    else:
        leaked = expression is None and outcome == "rows"
        probes.append(
            Probe(name, "masked-view", f"SELECT {c} FROM {view}", leaked,
                  detail if leaked else ("masked" if expression else "NULL only"))
        )  # fmt: skip
    return probes
