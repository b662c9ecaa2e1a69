"""``mask verify`` on PostgreSQL: the bypasses a session user of a masked template tries,
connected as one (the probe never sees more than a person would).

Denied (42501, insufficient privilege) is safe. A probe that returns rows, or fails past
the privilege check (a cast error quoting the value), leaked; what leaked is shown as a
length and a hash prefix, never the value."""

from __future__ import annotations

import hashlib
from fnmatch import fnmatchcase

import psycopg
from psycopg import sql

from dbaccess.broker.engines.base import CONNECT_TIMEOUT, EngineError
from dbaccess.broker.engines.postgres.masking import MASKER, SUFFIX
from dbaccess.broker.engines.postgres.tls import ssl_root
from dbaccess.broker.masking import Probe
from dbaccess.broker.settings import RoleTemplate, TargetSection

DENIED = "42501"


def _evidence(text: str) -> str:
    digest = hashlib.sha256(text.encode()).hexdigest()[:8]
    return f"{len(text)} characters, sha256 {digest}…"


def masked_columns(
    conn: psycopg.Connection[tuple[object, ...]], role: RoleTemplate
) -> list[tuple[str, str, str]]:
    """The (schema, table, column) the template's patterns reach, from the catalog (which
    every role may read)."""
    rows = conn.execute(
        "SELECT n.nspname, c.relname, a.attname FROM pg_attribute a "
        "JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE a.attnum > 0 AND NOT a.attisdropped AND c.relkind IN ('r','p','v','m','f') "
        "AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'dbaccess') "
        "AND n.nspname !~ '^pg_' AND n.nspname NOT LIKE %s ORDER BY 1, 2, 3",
        ("%" + SUFFIX,),
    ).fetchall()
    return [
        (str(s), str(t), str(c))
        for s, t, c in rows
        if any(fnmatchcase(f"{s}.{t}.{c}", pattern) for pattern in role.masked)
    ]


def _run(conn: psycopg.Connection[tuple[object, ...]], query: sql.Composed) -> tuple[str, str]:
    """(outcome, detail): "denied", "rows" (with what came back, as evidence) or "error"."""
    try:
        with conn.transaction():
            text = query.as_string(conn)
            if text.lstrip().upper().startswith("COPY"):
                chunks = []
                with conn.cursor() as cur, cur.copy(query) as copy:
                    for data in copy:
                        chunks.append(bytes(data).decode(errors="replace"))
                body = "".join(chunks)
                return ("rows" if body else "none"), _evidence(body)
            rows = conn.execute(query).fetchall()
    except psycopg.Error as exc:
        if exc.sqlstate == DENIED:
            return "denied", "permission denied"
        return "error", f"{exc.sqlstate}: {_evidence(str(exc))}"
    values = [v for row in rows for v in row if v is not None]
    if not values:
        return "none", "no value returned"
    return "rows", f"{len(rows)} row(s), {_evidence(repr(values))}"


def probe(target: TargetSection, role: RoleTemplate, username: str, password: str) -> list[Probe]:
    """Every probe of every column the template masks, as ``username``."""
    try:
        return _probe_all(target, role, username, password)
    except psycopg.Error as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise EngineError(f"probing as {username} failed: {first}") from None


def _probe_all(
    target: TargetSection, role: RoleTemplate, username: str, password: str
) -> list[Probe]:
    with psycopg.connect(
        host=target.host,
        port=target.port,
        dbname=target.database,
        user=username,
        password=password,
        sslmode=target.sslmode,
        sslrootcert=ssl_root(target),
        connect_timeout=int(CONNECT_TIMEOUT),
        autocommit=True,
        options="-c statement_timeout=8000",
    ) as conn:
        probes: list[Probe] = []
        columns = masked_columns(conn, role)
        for schema, table, column in columns:
            probes += _column_probes(conn, role, schema, table, column)
        return probes


def _column_probes(
    conn: psycopg.Connection[tuple[object, ...]],
    role: RoleTemplate,
    schema: str,
    table: str,
    column: str,
) -> list[Probe]:
    t = sql.Identifier(schema, table)
    c = sql.Identifier(column)
    name = f"{schema}.{table}.{column}"
    tries: list[tuple[str, sql.Composed, bool]] = [
        # (probe, statement, whether an error past the privilege check is a leak)
        ("select", sql.SQL("SELECT {} FROM {} LIMIT 5").format(c, t), False),
        ("select-star", sql.SQL("SELECT * FROM {} LIMIT 5").format(t), False),
        ("whole-row", sql.SQL("SELECT row_to_json(x) FROM {} x LIMIT 5").format(t), False),
        ("cast-int-error", sql.SQL("SELECT {}::int FROM {}").format(c, t), True),
        ("cast-date-error", sql.SQL("SELECT CAST({} AS date) FROM {}").format(c, t), True),
        (
            "like-oracle",
            sql.SQL("SELECT count(*) FROM {} WHERE {}::text LIKE '1%'").format(t, c),
            False,
        ),
        (
            "functions",
            sql.SQL("SELECT length({0}::text), md5({0}::text) FROM {1}").format(c, t),
            False,
        ),
        (
            "subquery",
            sql.SQL(
                "SELECT count(*) FROM (SELECT 1) s WHERE EXISTS "
                "(SELECT 1 FROM {} WHERE {} IS NOT NULL)"
            ).format(t, c),
            False,
        ),
        (
            "join",
            sql.SQL("SELECT count(*) FROM {0} a JOIN {0} b ON a.{1} = b.{1}").format(t, c),
            False,
        ),
        ("copy-table", sql.SQL("COPY {} TO STDOUT").format(t), False),
        ("copy-column", sql.SQL("COPY {} ({}) TO STDOUT").format(t, c), False),
        ("copy-query", sql.SQL("COPY (SELECT {} FROM {}) TO STDOUT").format(c, t), False),
        (
            "pg-stats",
            sql.SQL(
                "SELECT most_common_vals::text, histogram_bounds::text FROM pg_stats "
                "WHERE schemaname = {} AND tablename = {} AND attname = {}"
            ).format(sql.Literal(schema), sql.Literal(table), sql.Literal(column)),
            False,
        ),
        (
            "pg-stats-ext",
            sql.SQL(
                "SELECT most_common_vals::text FROM pg_stats_ext "
                "WHERE schemaname = {} AND tablename = {} AND {} = ANY (attnames)"
            ).format(sql.Literal(schema), sql.Literal(table), sql.Literal(column)),
            False,
        ),
    ]
    # tables that inherit the column (partitions, children): their own grants
    children = conn.execute(
        "SELECT n.nspname, c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE i.inhparent = %s::regclass",
        (t.as_string(conn),),
    ).fetchall()
    for child_schema, child in children:
        tries.append(
            (
                f"child-{child}",
                sql.SQL("SELECT {} FROM {} LIMIT 5").format(
                    c, sql.Identifier(str(child_schema), str(child))
                ),
                False,
            )
        )
    # views that read the column (made by a DBA, say), but the masked views themselves:
    # one the session can read hands the column on under any name
    views = conn.execute(
        "SELECT DISTINCT n.nspname, v.relname FROM pg_depend d "
        "JOIN pg_rewrite w ON w.oid = d.objid JOIN pg_class v ON v.oid = w.ev_class "
        "JOIN pg_namespace n ON n.oid = v.relnamespace "
        "WHERE d.classid = 'pg_rewrite'::regclass AND d.refclassid = 'pg_class'::regclass "
        "AND d.refobjid = %s::regclass AND d.refobjsubid = (SELECT attnum FROM pg_attribute "
        "WHERE attrelid = %s::regclass AND attname = %s) AND v.oid <> d.refobjid "
        "AND v.relowner <> (SELECT oid FROM pg_roles WHERE rolname = %s) ORDER BY 1, 2",
        (t.as_string(conn), t.as_string(conn), column, MASKER),
    ).fetchall()
    for view_schema, view_name in views:
        tries.append(
            (
                f"view-{view_name}",
                sql.SQL("SELECT * FROM {} LIMIT 5").format(
                    sql.Identifier(str(view_schema), str(view_name))
                ),
                False,
            )
        )
    probes = []
    for probe_name, statement, error_leaks in tries:
        outcome, detail = _run(conn, statement)
        if probe_name.startswith("pg-stats"):
            leaked = outcome == "rows"  # the view answers everyone: values are the leak
        else:
            leaked = outcome in ("rows", "none") or (outcome == "error" and error_leaks)
        probes.append(
            Probe(
                column=name,
                name=probe_name,
                tried=statement.as_string(conn),
                leaked=leaked,
                detail=detail if outcome != "none" else "ran (no value came back)",
                error=outcome == "error" and not error_leaks,
            )
        )
    view = sql.Identifier(role.group_role + SUFFIX, table)
    outcome, detail = _run(conn, sql.SQL("SELECT {} FROM {} LIMIT 5").format(c, view))
    expression = role.mask.get(name)
    if outcome == "denied" or outcome == "error":
        probes.append(
            Probe(
                name,
                "masked-view",
                f"SELECT {column} FROM {view.as_string(conn)}",
                False,
                f"the masked view cannot be read: {detail}",
                error=True,
            )  # fmt: skip
        )
    else:
        # without an expression the view shows NULL only; with one, what it makes
        leaked = expression is None and outcome == "rows"
        probes.append(
            Probe(
                name,
                "masked-view",
                f"SELECT {column} FROM {view.as_string(conn)}",
                leaked,
                detail if leaked else ("masked" if expression else "NULL only"),
            )  # fmt: skip
        )
    return probes
