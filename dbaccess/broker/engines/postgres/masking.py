"""Masked columns on PostgreSQL: the bootstrap's column grants and views.

For each group role whose template lists ``masked`` columns, ``dbaccess.apply_masks``
(run by the bootstrap, as the superuser that runs it) resolves the patterns against the
catalog and, for each table they reach that the group could read (table-level SELECT
granted to it): revokes the table's SELECT from the group and grants it again on the
other columns only; makes ``<group>_masked.<table>``, a ``security_barrier`` view of the
unmasked columns plus NULL (or the template's masking expression) for each masked one,
owned by ``dbaccess_masker`` (NOLOGIN, nobody's member) and readable by the group. What
it did is recorded in ``dbaccess.masked_tables``: a table no pattern reaches any more gets
its table-level SELECT back and loses its view. A table the group could not read keeps
it so: only its masked columns' own grants are revoked.

Nothing rewrites a result: the server refuses the column to the session user whatever
the statement (a cast, COPY, a function, a join, pg_stats), which ``mask verify`` probes.
"""

from __future__ import annotations

import json

from psycopg import sql

from dbaccess.broker.settings import TargetSection

SCHEMA = "dbaccess"
MASKER = "dbaccess_masker"  # owns the views: it reads the whole tables, and nobody is it
SUFFIX = "_masked"  # the schema of a group's views: <group_role>_masked


def _lit(value: object) -> str:
    return sql.Literal(value).as_string(None)


def part_regex(glob: str) -> str:
    """One part of a ``masked`` entry (a name, * and ?) as an anchored POSIX regex."""
    return "^" + "".join({"*": ".*", "?": ".", "$": "\\$"}.get(ch, ch) for ch in glob) + "$"


def masks_of(target: TargetSection) -> dict[str, dict[str, object]]:
    """group role -> its patterns (as regexes, per part) and masking expressions, for
    every group role of the target (an empty list unmasks what an earlier run masked)."""
    masks: dict[str, dict[str, object]] = {}
    for role in target.roles.values():
        masks[role.group_role] = {
            "patterns": [[part_regex(p) for p in entry.split(".")] for entry in role.masked],
            "mask": dict(role.mask),
        }
    return masks


# The relations a group's patterns reach now: tables, views, materialized views and
# foreign tables outside the catalogs, dbaccess and the masked views' own schemas.
_REACHED = f"""
        SELECT c.oid AS relid, n.nspname::text AS sch, c.relname::text AS tab,
               array_agg(DISTINCT a.attname::text) AS cols
          FROM jsonb_array_elements(p_masks -> g -> 'patterns') p
          JOIN pg_namespace n ON n.nspname::text COLLATE "C" ~ (p ->> 0)
          JOIN pg_class c ON c.relnamespace = n.oid AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
                         AND c.relname::text COLLATE "C" ~ (p ->> 1)
          JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
                             AND a.attname::text COLLATE "C" ~ (p ->> 2)
         WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', '{SCHEMA}')
           AND n.nspname !~ '^pg_' AND n.nspowner <> '{MASKER}'::regrole
         GROUP BY 1, 2, 3"""


def apply_masks_function() -> str:
    """``dbaccess.apply_masks(masks)``: see the module docstring. Not SECURITY DEFINER:
    it runs with the rights of the superuser running the bootstrap, and nobody else may
    call it."""
    return f"""CREATE OR REPLACE FUNCTION {SCHEMA}.apply_masks(p_masks jsonb)
RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    g text;
    t record;
    r record;
    wanted text[] := '{{}}';
    v_restore boolean;
    v_schema text;
    v_cols text;
    v_select text;
    v_seen text[];
BEGIN
    FOR g IN SELECT jsonb_object_keys(p_masks) LOOP
        FOR t IN {_REACHED} LOOP
            wanted := wanted || (g || '/' || t.relid::text);
        END LOOP;
    END LOOP;
    -- no longer masked: the group's table-level SELECT back (if it had one), no view
    FOR r IN SELECT * FROM {SCHEMA}.masked_tables m
              WHERE NOT ((m.group_role || '/' || m.relid::text) = ANY (wanted)) LOOP
        EXECUTE format('DROP VIEW IF EXISTS %I.%I', r.group_role || '{SUFFIX}', r.table_name);
        IF EXISTS (SELECT 1 FROM pg_class WHERE oid = r.relid)
           AND EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r.group_role) THEN
            IF r.restore THEN
                EXECUTE format('REVOKE SELECT ON TABLE %s FROM %I', r.relid::regclass,
                               r.group_role);
                EXECUTE format('GRANT SELECT ON TABLE %s TO %I', r.relid::regclass,
                               r.group_role);
            END IF;
            IF NOT EXISTS (SELECT 1 FROM {SCHEMA}.masked_tables o
                            WHERE o.relid = r.relid AND o.group_role <> r.group_role) THEN
                EXECUTE format('REVOKE SELECT ON TABLE %s FROM {MASKER}', r.relid::regclass);
            END IF;
        END IF;
        DELETE FROM {SCHEMA}.masked_tables m
         WHERE m.group_role = r.group_role AND m.relid = r.relid;
    END LOOP;
    FOR g IN SELECT jsonb_object_keys(p_masks) LOOP
        v_schema := g || '{SUFFIX}';
        v_seen := '{{}}';
        FOR t IN {_REACHED} ORDER BY 2, 3 LOOP
            IF t.tab = ANY (v_seen) THEN
                RAISE EXCEPTION 'dbaccess: two masked tables of % are named %: their views '
                                'would share %.%', g, t.tab, v_schema, t.tab
                    USING HINT = 'narrow the masked patterns of that template to one of them';
            END IF;
            v_seen := v_seen || t.tab;
            -- table-level SELECT of the group now (granted before the first run, or
            -- again since): masking takes it over, and gives it back once unmasked
            v_restore := EXISTS (
                SELECT 1 FROM pg_class c, aclexplode(c.relacl) x
                 WHERE c.oid = t.relid AND x.privilege_type = 'SELECT'
                   AND x.grantee = (SELECT oid FROM pg_roles WHERE rolname = g));
            INSERT INTO {SCHEMA}.masked_tables AS m (group_role, relid, schema_name,
                                                     table_name, restore)
            VALUES (g, t.relid, t.sch, t.tab, v_restore)
            ON CONFLICT (group_role, relid) DO UPDATE
               SET restore = m.restore OR excluded.restore, table_name = excluded.table_name,
                   schema_name = excluded.schema_name
            RETURNING m.restore INTO v_restore;
            IF NOT v_restore THEN
                -- it could not read the table: only the masked columns' own grants go
                SELECT string_agg(quote_ident(c), ', ') INTO v_cols FROM unnest(t.cols) c;
                EXECUTE format('REVOKE SELECT (%s) ON TABLE %I.%I FROM %I', v_cols, t.sch,
                               t.tab, g);
                CONTINUE;
            END IF;
            -- table-level SELECT (and every column's grant) goes; the others come back
            EXECUTE format('REVOKE SELECT ON TABLE %I.%I FROM %I', t.sch, t.tab, g);
            SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY a.attnum) INTO v_cols
              FROM pg_attribute a
             WHERE a.attrelid = t.relid AND a.attnum > 0 AND NOT a.attisdropped
               AND NOT (a.attname::text = ANY (t.cols));
            IF v_cols IS NOT NULL THEN
                EXECUTE format('GRANT SELECT (%s) ON TABLE %I.%I TO %I', v_cols, t.sch,
                               t.tab, g);
            END IF;
            SELECT string_agg(CASE WHEN a.attname::text = ANY (t.cols) THEN
                       coalesce('(' || (p_masks -> g -> 'mask' ->> (t.sch || '.' || t.tab
                                        || '.' || a.attname)) || ')',
                                'NULL::' || format_type(a.atttypid, a.atttypmod))
                       || ' AS ' || quote_ident(a.attname)
                       ELSE quote_ident(a.attname) END, ', ' ORDER BY a.attnum)
              INTO v_select
              FROM pg_attribute a
             WHERE a.attrelid = t.relid AND a.attnum > 0 AND NOT a.attisdropped;
            EXECUTE format('CREATE SCHEMA IF NOT EXISTS %I AUTHORIZATION {MASKER}', v_schema);
            EXECUTE format('REVOKE ALL ON SCHEMA %I FROM PUBLIC', v_schema);
            EXECUTE format('GRANT USAGE ON SCHEMA %I TO %I', v_schema, g);
            EXECUTE format('GRANT SELECT ON TABLE %I.%I TO {MASKER}', t.sch, t.tab);
            BEGIN
                EXECUTE format('CREATE OR REPLACE VIEW %I.%I WITH (security_barrier) AS '
                               'SELECT %s FROM %I.%I', v_schema, t.tab, v_select, t.sch, t.tab);
            EXCEPTION WHEN invalid_table_definition OR datatype_mismatch THEN
                -- a column dropped or retyped since: CREATE OR REPLACE cannot, so anew
                EXECUTE format('DROP VIEW %I.%I', v_schema, t.tab);
                EXECUTE format('CREATE VIEW %I.%I WITH (security_barrier) AS SELECT %s '
                               'FROM %I.%I', v_schema, t.tab, v_select, t.sch, t.tab);
            END;
            EXECUTE format('ALTER VIEW %I.%I OWNER TO {MASKER}', v_schema, t.tab);
            EXECUTE format('REVOKE ALL ON TABLE %I.%I FROM PUBLIC', v_schema, t.tab);
            EXECUTE format('GRANT SELECT ON TABLE %I.%I TO %I', v_schema, t.tab, g);
        END LOOP;
    END LOOP;
END
$fn$"""


def mask_sql(target: TargetSection) -> list[str]:
    """The bootstrap's statements for masked columns (after the group roles exist)."""
    masks = masks_of(target)
    return [
        "DO $do$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = "
        f"{_lit(MASKER)}) THEN CREATE ROLE {MASKER} NOLOGIN; END IF; END $do$",
        # whatever it became meanwhile, it only owns the views and reads their tables
        f"ALTER ROLE {MASKER} NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION "
        "NOBYPASSRLS",
        f"CREATE TABLE IF NOT EXISTS {SCHEMA}.masked_tables ("
        ' group_role text COLLATE "C" NOT NULL, relid oid NOT NULL, schema_name text NOT NULL,'
        " table_name text NOT NULL, restore boolean NOT NULL,"
        " PRIMARY KEY (group_role, relid))",
        f"REVOKE ALL ON {SCHEMA}.masked_tables FROM PUBLIC",
        apply_masks_function(),
        f"REVOKE ALL ON FUNCTION {SCHEMA}.apply_masks(jsonb) FROM PUBLIC",
        f"SELECT {SCHEMA}.apply_masks({_lit(json.dumps(masks, sort_keys=True))}::jsonb)",
    ]
