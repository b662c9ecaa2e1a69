"""Nothing a PostgreSQL session user creates outlives it with more power than it had
(issue 12, point 1), on the suite's real server.

Each test gets session users of a target of its own (database ``sessobj``, prefix ``so_``)
whose template group roles hold CREATE on schema public, as every role does on
PostgreSQL 14 and older. The attack being closed: a read-only session leaves a SECURITY
DEFINER function behind; revocation used to REASSIGN it to the definer functions' owner
(CREATEROLE), so a later session could run it to grant itself pg_execute_server_program
and run programs on the server.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from dbaccess.broker.checks import check_target
from dbaccess.broker.engines import EngineError, NewUser
from dbaccess.broker.engines.postgres import bootstrap
from dbaccess.broker.engines.postgres.checks import target_warnings
from dbaccess.broker.engines.postgres.engine import PostgresEngine
from dbaccess.broker.settings import TargetSection
from dbaccess.sandbox.stack import Stack

pytestmark = pytest.mark.integration

DB = "sessobj"
OTHER_DB = "sessobj_other"
PROVISIONER = "sobj_prov"
READONLY = "sobj_readonly"
MIGRATE = "sobj_migrate"
Conn = psycopg.Connection[tuple[Any, ...]]


@dataclass
class World:
    stack: Stack
    target: TargetSection
    engine: PostgresEngine

    def admin(self, db: str = DB) -> Conn:
        return self.stack.postgres.connect(db)

    def session(self, role: str) -> tuple[str, str]:
        """A new session user of ``role`` (created by the provisioner, as the broker does)."""
        username = f"so_{role[:4]}_{secrets.token_hex(4)}"
        password = secrets.token_urlsafe(16)
        self.engine.create_user(
            NewUser(
                username,
                password,
                self.target.roles[role],
                datetime.now(UTC) + timedelta(minutes=10),
            )
        )
        return username, password

    def login(self, user: tuple[str, str], db: str = DB) -> Conn:
        return self.stack.postgres.connect(db, user=user[0], password=user[1])

    def exists(self, username: str) -> bool:
        with self.admin() as admin:
            return (
                admin.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (username,)).fetchone()
                is not None
            )


TEMPLATES = {
    "readonly": {"group_role": READONLY, "read_only": True, "statement_timeout": "1m"},
    "migrate": {"group_role": MIGRATE, "session_objects": "keep"},
}


@pytest.fixture(scope="module")
def world(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    password_file = tmp_path_factory.mktemp("sessobj") / "provisioner.pw"
    password_file.write_text(secrets.token_urlsafe(24) + "\n")
    target = TargetSection.model_validate(
        {
            "engine": "postgres",
            "host": "127.0.0.1",
            "port": stack.postgres.port,
            "database": DB,
            "sslmode": "disable",
            "username_prefix": "so_",
            "max_lifetime": "2h",
            "provisioner": {"user": PROVISIONER, "password_file": str(password_file)},
            "roles": TEMPLATES,
        }
    )
    with stack.postgres.connect() as admin:
        admin.execute(f"CREATE DATABASE {DB}")
        admin.execute(f"CREATE DATABASE {OTHER_DB}")
    groups = sorted({role.group_role for role in target.roles.values()})
    with stack.postgres.connect(DB) as admin:
        bootstrap.apply(target, admin, target.provisioner.read_password())
        admin.execute("CREATE SCHEMA sobj_extra")
        admin.execute("CREATE TABLE public.facts (id int PRIMARY KEY, v text)")
        admin.execute("INSERT INTO public.facts VALUES (1, 'one')")
        for group in groups:
            admin.execute(f"GRANT CONNECT ON DATABASE {DB} TO {group}")
            admin.execute(f"GRANT USAGE ON SCHEMA public, sobj_extra TO {group}")
            # the PostgreSQL <= 14 default, given to the template roles on purpose
            admin.execute(f"GRANT CREATE ON SCHEMA public, sobj_extra TO {group}")
            admin.execute(f"GRANT SELECT ON public.facts TO {group}")
    engine = PostgresEngine("sessobj", target)
    try:
        yield World(stack, target, engine)
    finally:
        engine.close()


def clean_up(world: World) -> None:
    """Undo what a successful attack would have left (so one failing test does not
    poison the others)."""
    with world.admin() as admin:
        for group in (READONLY, MIGRATE):
            if admin.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (group,)).fetchone():
                admin.execute(f"REVOKE pg_execute_server_program FROM {group}")
        admin.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
        admin.execute("DROP FUNCTION IF EXISTS public.pwn()")


@pytest.mark.parametrize("create_for", [READONLY, "PUBLIC"])
def test_a_definer_function_left_behind_cannot_run_programs(world: World, create_for: str) -> None:
    """The exploit: a read-only session makes a SECURITY DEFINER function, the session is
    revoked, a later read-only session calls the function and runs a program."""
    with world.admin() as admin:
        admin.execute(f"GRANT CREATE ON SCHEMA public TO {create_for}")
    try:
        first = world.session("readonly")
        with world.login(first) as conn:
            # read_only is a default the session may lift (issue 12, point 5)
            conn.execute("SET default_transaction_read_only = off")
            conn.execute(
                "CREATE FUNCTION public.pwn() RETURNS void LANGUAGE plpgsql SECURITY DEFINER "
                "AS $$ BEGIN EXECUTE 'GRANT pg_execute_server_program TO " + READONLY + "'; END $$"
            )
        world.engine.revoke_user(first[0])
        assert not world.exists(first[0])

        later = world.session("readonly")
        try:
            with world.login(later) as conn:
                conn.execute("SET default_transaction_read_only = off")
                try:
                    conn.execute("SELECT public.pwn()")
                except psycopg.Error:
                    pass  # what a fixed server says
                conn.execute("CREATE TEMP TABLE out (line text)")
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    conn.execute("COPY out FROM PROGRAM 'id -un'")
        finally:
            world.engine.revoke_user(later[0])
        with world.admin() as admin:
            owners = admin.execute(
                "SELECT p.proowner::regrole::text FROM pg_proc p WHERE p.proname = 'pwn'"
            ).fetchall()
        assert owners == [], "the session's function outlived it"
    finally:
        with world.admin() as admin:
            admin.execute(f"REVOKE CREATE ON SCHEMA public FROM {create_for}")
            admin.execute(f"GRANT CREATE ON SCHEMA public TO {READONLY}")
        clean_up(world)


# One of each kind of object a session user can make with CREATE on a schema (two
# schemas: public and another one), executed by the session user itself.
OBJECTS = [
    "CREATE FUNCTION public.so_definer() RETURNS text LANGUAGE sql SECURITY DEFINER "
    "AS $$ SELECT current_user::text $$",
    "CREATE FUNCTION public.so_invoker() RETURNS int LANGUAGE sql AS $$ SELECT 1 $$",
    "CREATE PROCEDURE public.so_proc() LANGUAGE sql SECURITY DEFINER AS $$ SELECT 1 $$",
    "CREATE TABLE public.so_table (id serial PRIMARY KEY, v text)",
    "CREATE FUNCTION public.so_trigger_fn() RETURNS trigger LANGUAGE plpgsql "
    "SECURITY DEFINER AS $$ BEGIN RETURN NEW; END $$",
    "CREATE TRIGGER so_trigger BEFORE INSERT ON public.so_table FOR EACH ROW "
    "EXECUTE FUNCTION public.so_trigger_fn()",
    "CREATE VIEW public.so_view AS SELECT id, v FROM public.facts",
    "CREATE SEQUENCE public.so_seq",
    "CREATE TYPE public.so_type AS (a int)",
    "CREATE OPERATOR public.=== (leftarg = int, rightarg = int, function = int4eq)",
    "SELECT lo_create(0)",
    "ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO PUBLIC",
    "CREATE TABLE sobj_extra.so_elsewhere (a int)",
    "CREATE FUNCTION sobj_extra.so_definer2() RETURNS text LANGUAGE sql SECURITY DEFINER "
    "AS $$ SELECT current_user::text $$",
]
NAMES = [
    "so_definer",
    "so_invoker",
    "so_proc",
    "so_table",
    "so_trigger_fn",
    "so_view",
    "so_seq",
    "so_type",
    "===",
    "so_elsewhere",
    "so_definer2",
]

OWNERS_SQL = """
SELECT name, owner FROM (
  SELECT proname::text AS name, proowner AS owner_oid FROM pg_proc
  UNION ALL SELECT relname::text, relowner FROM pg_class WHERE relkind IN ('r','v','S')
  UNION ALL SELECT typname::text, typowner FROM pg_type WHERE typtype = 'c' AND typrelid = 0
      OR typname = 'so_type'
  UNION ALL SELECT oprname::text, oprowner FROM pg_operator
  UNION ALL SELECT 'large object ' || oid, lomowner FROM pg_largeobject_metadata
  UNION ALL SELECT 'default acl', defaclrole FROM pg_default_acl
) o JOIN LATERAL (SELECT o.owner_oid::regrole::text AS owner) r ON true
WHERE name = ANY(%s) OR name LIKE 'large object %%' OR name = 'default acl'
ORDER BY 1
"""


def make_everything(world: World, user: tuple[str, str]) -> None:
    with world.login(user) as conn:
        conn.execute("SET default_transaction_read_only = off")
        for statement in OBJECTS:
            conn.execute(statement.encode())


def owners(world: World) -> dict[str, str]:
    with world.admin() as admin:
        rows = admin.execute(OWNERS_SQL.encode(), (NAMES,)).fetchall()
    return {str(name): str(owner) for name, owner in rows}


def privileged_owned(world: World) -> list[str]:
    """Objects of this database owned by a role with power, outside the bootstrap's
    own schema: the definer functions' owner, or any CREATEROLE/SUPERUSER/pg_* role
    (the bootstrap superuser's own catalog objects aside)."""
    with world.admin() as admin:
        rows = admin.execute(
            "SELECT s.classid::regclass::text || ' ' || s.objid, r.rolname FROM pg_shdepend s "
            "JOIN pg_roles r ON r.oid = s.refobjid JOIN pg_database d ON d.oid = s.dbid "
            "WHERE d.datname = current_database() AND s.deptype = 'o' "
            "AND (r.rolcreaterole OR r.rolsuper OR r.rolname LIKE 'pg\\_%%') "
            "AND NOT (s.classid = 'pg_namespace'::regclass AND s.objid = "
            "'dbaccess'::regnamespace) "
            "AND NOT (s.classid IN ('pg_proc'::regclass, 'pg_class'::regclass, "
            "'pg_type'::regclass) AND (SELECT nspname FROM pg_namespace WHERE oid = "
            "COALESCE((SELECT pronamespace FROM pg_proc WHERE oid = s.objid "
            "AND s.classid = 'pg_proc'::regclass), (SELECT relnamespace FROM pg_class "
            "WHERE oid = s.objid AND s.classid = 'pg_class'::regclass), (SELECT "
            "typnamespace FROM pg_type WHERE oid = s.objid AND s.classid = "
            "'pg_type'::regclass))) = 'dbaccess')"
        ).fetchall()
    return [f"{what} owned by {role}" for what, role in rows]


def test_drop_mode_drops_every_kind_of_object(world: World) -> None:
    user = world.session("readonly")
    make_everything(world, user)
    made = owners(world)
    assert set(made) >= {*NAMES, "default acl"} and any(
        k.startswith("large object") for k in made
    ), made
    assert set(made.values()) == {user[0]}
    world.engine.revoke_user(user[0])
    assert not world.exists(user[0])
    assert owners(world) == {}, "objects of the session outlived it"
    assert privileged_owned(world) == []


def test_keep_mode_gives_objects_to_the_template_group_not_to_a_power(world: World) -> None:
    user = world.session("migrate")
    make_everything(world, user)
    with world.login(user) as conn:
        conn.execute("INSERT INTO public.so_table (v) VALUES ('kept row')")
    try:
        world.engine.revoke_user(user[0])
        assert not world.exists(user[0])
        kept = owners(world)
        assert "default acl" not in kept  # default privileges died with the user
        assert {name: kept.get(name) for name in NAMES} == dict.fromkeys(NAMES, MIGRATE)
        assert privileged_owned(world) == []
        with world.admin() as admin:
            group = admin.execute(
                "SELECT rolcanlogin, rolsuper, rolcreaterole, rolcreatedb, rolbypassrls, "
                "array(SELECT b.rolname::text FROM pg_auth_members m JOIN pg_roles b "
                "ON b.oid = m.roleid WHERE m.member = r.oid) FROM pg_roles r "
                "WHERE rolname = %s",
                (MIGRATE,),
            ).fetchone()
            public_execute = admin.execute(
                "SELECT p.proname, has_function_privilege('public', p.oid, 'EXECUTE') "
                "FROM pg_proc p WHERE p.proname LIKE 'so\\_%%' ORDER BY 1"
            ).fetchall()
        assert group == (False, False, False, False, False, [])
        # definer routines are not everyone's: they would lend the template's rights
        assert dict(public_execute) == {
            "so_definer": False,
            "so_definer2": False,
            "so_invoker": True,
            "so_proc": False,
            "so_trigger_fn": False,
        }

        # a later session of another template cannot borrow them ...
        reader = world.session("readonly")
        try:
            with world.login(reader) as conn:
                for call in (
                    "SELECT public.so_definer()",
                    "SELECT sobj_extra.so_definer2()",
                    "CALL public.so_proc()",
                ):
                    with pytest.raises(psycopg.errors.InsufficientPrivilege):
                        conn.execute(call.encode())
        finally:
            world.engine.revoke_user(reader[0])
        # ... while the next migration session uses and changes what the last one kept,
        # with the template's rights and no more
        again = world.session("migrate")
        try:
            with world.login(again) as conn:
                row = conn.execute(
                    "SELECT public.so_definer(), count(*) FROM public.so_table "
                ).fetchone()
                assert row == (MIGRATE, 1)
                conn.execute("ALTER TABLE public.so_table ADD COLUMN note text")
        finally:
            world.engine.revoke_user(again[0])
        assert owners(world)["so_table"] == MIGRATE
    finally:
        with world.admin() as admin:
            admin.execute(f"DROP OWNED BY {MIGRATE}")
            admin.execute(f"GRANT CONNECT ON DATABASE {DB} TO {MIGRATE}")
            admin.execute(f"GRANT USAGE, CREATE ON SCHEMA public, sobj_extra TO {MIGRATE}")
            admin.execute(f"GRANT SELECT ON public.facts TO {MIGRATE}")


def test_objects_in_another_database_keep_the_user_locked_and_say_so(world: World) -> None:
    """DROP OWNED reaches only the database it runs in. A user owning something in another
    database of the cluster is not silently orphaned: revocation fails naming that
    database, the user stays NOLOGIN and registered, and a retry after an administrator
    cleaned up there succeeds."""
    with world.admin(OTHER_DB) as admin:
        admin.execute(f"GRANT CONNECT ON DATABASE {OTHER_DB} TO {READONLY}")
        admin.execute(f"GRANT CREATE ON SCHEMA public TO {READONLY}")
    user = world.session("readonly")
    try:
        with world.login(user, OTHER_DB) as conn:
            conn.execute("SET default_transaction_read_only = off")
            conn.execute("CREATE TABLE public.left_behind (a int)")
        with pytest.raises(
            EngineError,
            match=rf"in database\(s\) {OTHER_DB}, which "
            r"revocation cannot reach.*stays NOLOGIN",
        ):
            world.engine.revoke_user(user[0])
        assert world.exists(user[0])
        assert user[0] in world.engine.list_managed_users()
        with pytest.raises(psycopg.OperationalError, match="not permitted to log in"):
            world.login(user).close()
    finally:
        with world.admin(OTHER_DB) as admin:
            admin.execute(f"DROP OWNED BY {user[0]}")
            admin.execute(f"REVOKE ALL ON DATABASE {OTHER_DB} FROM {READONLY}")
            admin.execute(f"REVOKE CREATE ON SCHEMA public FROM {READONLY}")
    world.engine.revoke_user(user[0])
    assert not world.exists(user[0])


def test_an_object_built_on_a_session_object_stops_the_drop_visibly(world: World) -> None:
    """RESTRICT: an administrator's view over a session's table is not dropped with it;
    the revocation says why and the user stays locked until it is dealt with."""
    user = world.session("readonly")
    with world.login(user) as conn:
        conn.execute("SET default_transaction_read_only = off")
        conn.execute("CREATE TABLE public.so_base (a int)")
    with world.admin() as admin:
        admin.execute("CREATE VIEW public.admin_view AS SELECT a FROM public.so_base")
    try:
        with pytest.raises(
            EngineError,
            match=r"cannot be dropped yet: .*depend.*admin_view"
            r".*stays NOLOGIN",
        ):
            world.engine.revoke_user(user[0])
        assert world.exists(user[0])
        with world.admin() as admin:
            assert (
                admin.execute("SELECT 1 FROM pg_views WHERE viewname = 'admin_view'").fetchone()
                is not None
            )
    finally:
        with world.admin() as admin:
            admin.execute("DROP VIEW public.admin_view")
    world.engine.revoke_user(user[0])
    assert not world.exists(user[0])


@pytest.mark.parametrize("how", ["set role", "owner to"])
def test_a_session_makes_objects_only_as_itself(world: World, how: str) -> None:
    """Membership would let a session make objects owned by its group role (SET ROLE, or
    OWNER TO), which would survive the revocation with the group's rights for any caller.
    The bootstrap's event trigger refuses. (A session user cannot make itself a member of
    another one: "must have admin option", measured on PostgreSQL 15.)"""
    user = world.session("readonly")
    other = world.session("readonly")
    definer = (
        "CREATE FUNCTION public.so_stray() RETURNS text LANGUAGE sql SECURITY DEFINER "
        "AS $$ SELECT current_user::text $$"
    )
    try:
        with world.login(other) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SET default_transaction_read_only = off")
            conn.execute(f"GRANT {other[0]} TO {user[0]}")
        with world.login(user) as conn:
            conn.execute("SET default_transaction_read_only = off")
            with pytest.raises(
                psycopg.errors.RaiseException,
                match=f"session user {user[0]} may not make objects owned by",
            ):
                if how == "set role":
                    conn.execute(f"SET ROLE {READONLY}")
                    conn.execute(definer)
                else:
                    conn.execute("BEGIN")
                    conn.execute(definer)
                    conn.execute(f"ALTER FUNCTION public.so_stray() OWNER TO {READONLY}")
            conn.rollback()
            conn.execute("RESET ROLE")
            conn.execute(definer)  # as itself it may (and it is dropped at revocation)
    finally:
        world.engine.revoke_user(user[0])
        world.engine.revoke_user(other[0])
    with world.admin() as admin:
        assert admin.execute("SELECT 1 FROM pg_proc WHERE proname = 'so_stray'").fetchone() is None


def large_objects_of(world: World, role: str) -> list[int]:
    with world.admin() as admin:
        rows = admin.execute(
            "SELECT m.oid::bigint FROM pg_largeobject_metadata m "
            "JOIN pg_roles r ON r.oid = m.lomowner WHERE r.rolname = %s "
            "ORDER BY 1",
            (role,),
        ).fetchall()
    return [int(row[0]) for row in rows]


def unlink_large_objects(world: World, role: str) -> None:
    with world.admin() as admin:
        for oid in large_objects_of(world, role):
            admin.execute("SELECT lo_unlink(%s)", (oid,))


@pytest.mark.parametrize("how", ["lo_create", "lo_from_bytea", "lo_creat"])
def test_large_objects_made_as_the_group_role_go_at_revocation(world: World, how: str) -> None:
    """Large objects are no DDL: the event trigger does not see one made after SET ROLE to
    the group role, and DROP OWNED BY the session user does not reach it (measured on
    PostgreSQL 15: both survived revocation). Revocation of a "drop" template's session
    unlinks the large objects its group role owns."""
    user = world.session("readonly")
    made = {
        "lo_create": "SELECT lo_create(0)",
        "lo_from_bytea": "SELECT lo_from_bytea(0, 'left behind'::bytea)",
        "lo_creat": "SELECT lo_creat(-1)",
    }[how]
    try:
        with world.login(user) as conn:
            conn.execute("SET default_transaction_read_only = off")
            conn.execute(f"SET ROLE {READONLY}")
            conn.execute(made)
            conn.execute("RESET ROLE")
            conn.execute(made)  # as itself: DROP OWNED takes it
        assert len(large_objects_of(world, READONLY)) == 1
        world.engine.revoke_user(user[0])
        assert not world.exists(user[0])
        assert large_objects_of(world, READONLY) == [], "a large object outlived the session"
        assert large_objects_of(world, user[0]) == []
    finally:
        world.engine.revoke_user(user[0])
        unlink_large_objects(world, READONLY)


def test_a_large_object_is_given_to_the_group_role_by_no_session(world: World) -> None:
    """ALTER LARGE OBJECT ... OWNER TO is DDL: the event trigger refuses it."""
    user = world.session("readonly")
    try:
        with world.login(user) as conn:
            conn.execute("SET default_transaction_read_only = off")
            row = conn.execute("SELECT lo_create(0)").fetchone()
            assert row is not None
            with pytest.raises(
                psycopg.errors.RaiseException,
                match=f"session user {user[0]} may not make objects owned by",
            ):
                conn.execute(f"ALTER LARGE OBJECT {int(row[0])} OWNER TO {READONLY}")
    finally:
        world.engine.revoke_user(user[0])
        unlink_large_objects(world, READONLY)
    assert large_objects_of(world, READONLY) == []


def test_batch_revocation_unlinks_the_group_roles_large_objects_too(world: World) -> None:
    users = [world.session("readonly") for _ in range(2)]
    try:
        for user in users:
            with world.login(user) as conn:
                conn.execute("SET default_transaction_read_only = off")
                conn.execute(f"SET ROLE {READONLY}")
                conn.execute("SELECT lo_from_bytea(0, 'left behind'::bytea)")
        assert len(large_objects_of(world, READONLY)) == 2
        outcome = world.engine.revoke_users([u[0] for u in users])
        assert outcome == {u[0]: None for u in users}
        assert large_objects_of(world, READONLY) == []
    finally:
        for user in users:
            world.engine.revoke_user(user[0])
        unlink_large_objects(world, READONLY)


def test_check_config_warns_of_large_objects_revocation_would_unlink_or_not_reach(
    world: World,
) -> None:
    assert target_warnings("sessobj", world.target) == []
    with world.admin() as admin:
        # an administrator's large objects: the "drop" group's go at its next revocation
        # (warned), the "keep" group's stay (no warning)
        admin.execute(f"SET ROLE {READONLY}")
        admin.execute("SELECT lo_create(0)")
        admin.execute(f"SET ROLE {MIGRATE}")
        admin.execute("SELECT lo_create(0)")
        admin.execute("RESET ROLE")
        # a role beyond the group: a session may SET ROLE to it, out of revocation's reach
        admin.execute("DROP ROLE IF EXISTS sobj_beyond")
        admin.execute("CREATE ROLE sobj_beyond NOLOGIN")
        admin.execute(f"GRANT sobj_beyond TO {MIGRATE}")
    try:
        warnings = target_warnings("sessobj", world.target)
        assert len(warnings) == 2, warnings
        beyond, owns = warnings  # by group role: sobj_migrate, sobj_readonly
        assert f"group role {READONLY} owns 1 large object(s)" in owns
        assert "unlinks them, whoever made them" in owns
        assert f"group role {MIGRATE} is a member of sobj_beyond: a session can SET ROLE" in beyond
    finally:
        unlink_large_objects(world, READONLY)
        unlink_large_objects(world, MIGRATE)
        with world.admin() as admin:
            admin.execute("DROP ROLE sobj_beyond")
    assert target_warnings("sessobj", world.target) == []


def test_check_config_names_a_revoke_user_older_than_the_large_object_sweep(
    world: World,
) -> None:
    [current] = [
        s
        for s in bootstrap.bootstrap_sql(world.target)
        if s.startswith("CREATE OR REPLACE FUNCTION dbaccess.revoke_user(")
    ]
    older = re.sub(
        r"\n            ELSIF EXISTS \(SELECT 1 FROM pg_shdepend .*?END IF;",
        "\n            END IF;",
        current,
        count=1,
        flags=re.S,
    )
    assert "lo_unlink" in current and "lo_unlink" not in older
    assert check_target("sessobj", world.target, "broker.toml") is None
    with world.admin() as admin:
        admin.execute(older.encode())
    try:
        problem = check_target("sessobj", world.target, "broker.toml")
        assert (
            problem is not None
            and "the current dbaccess.revoke_user (an older one "
            "leaves the large objects a session made after SET ROLE"
            in problem.message
        )
    finally:
        with world.admin() as admin:
            admin.execute(current.encode())
    assert check_target("sessobj", world.target, "broker.toml") is None
