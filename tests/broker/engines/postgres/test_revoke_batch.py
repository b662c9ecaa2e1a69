"""Batch revocation on PostgreSQL (issue 12, point 8): ``dbaccess.revoke_users``, which the
reaper calls for up to 50 users at a time in an expiry storm, does what ``revoke_user``
does for each of them, on the suite's real server.

Each test gets session users of a target of its own (database ``revbatch``, prefix
``rbt_``) with a dropping and a keeping template (``session_objects``), and a second
database for objects revocation cannot reach.
"""

from __future__ import annotations

import logging
import secrets
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa

from dbaccess.broker.engines import NewUser
from dbaccess.broker.engines.postgres import bootstrap
from dbaccess.broker.engines.postgres.engine import PostgresEngine
from dbaccess.broker.reaper import TargetReaper
from dbaccess.broker.services.context import BrokerContext
from dbaccess.broker.services.sessions import SessionService
from dbaccess.broker.settings import Settings, TargetSection
from dbaccess.broker.store import Store, audit, leases
from dbaccess.sandbox.stack import Stack

pytestmark = pytest.mark.integration

DB = "revbatch"
OTHER_DB = "revbatch_other"
TARGET = "revbatch"
PROVISIONER = "rbatch_prov"
READONLY = "rbatch_readonly"
MIGRATE = "rbatch_migrate"
Conn = psycopg.Connection[tuple[Any, ...]]
User = tuple[str, str]  # name, password

TEMPLATES = {
    "readonly": {"group_role": READONLY, "read_only": True},
    "migrate": {"group_role": MIGRATE, "session_objects": "keep"},
}


@dataclass
class World:
    stack: Stack
    target: TargetSection
    engine: PostgresEngine

    def admin(self, db: str = DB) -> Conn:
        return self.stack.postgres.connect(db)

    def session(self, role: str = "readonly") -> User:
        """A new session user of ``role``, created by the provisioner as the broker does."""
        username = f"rbt_{role[:4]}_{secrets.token_hex(5)}"
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

    def login(self, user: User, db: str = DB) -> Conn:
        return self.stack.postgres.connect(db, user=user[0], password=user[1])

    def provisioner(self) -> Conn:
        return self.stack.postgres.connect(
            DB, user=PROVISIONER, password=self.target.provisioner.read_password()
        )

    def exists(self, username: str) -> bool:
        with self.admin() as admin:
            return (
                admin.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (username,)).fetchone()
                is not None
            )

    def can_login(self, username: str) -> bool:
        with self.admin() as admin:
            row = admin.execute(
                "SELECT rolcanlogin FROM pg_roles WHERE rolname = %s", (username,)
            ).fetchone()
        assert row is not None, f"{username} does not exist"
        return bool(row[0])

    def registered(self) -> set[str]:
        with self.admin() as admin:
            return {
                str(row[0])
                for row in admin.execute("SELECT username FROM dbaccess.managed_users").fetchall()
            }


@pytest.fixture(scope="module")
def world(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    password_file = tmp_path_factory.mktemp("revbatch") / "provisioner.pw"
    password_file.write_text(secrets.token_urlsafe(24) + "\n")
    target = TargetSection.model_validate(
        {
            "engine": "postgres",
            "host": "127.0.0.1",
            "port": stack.postgres.port,
            "database": DB,
            "sslmode": "disable",
            "username_prefix": "rbt_",
            "max_lifetime": "2h",
            "provisioner": {"user": PROVISIONER, "password_file": str(password_file)},
            "roles": TEMPLATES,
        }
    )
    with stack.postgres.connect() as admin:
        admin.execute(f"CREATE DATABASE {DB}")
        admin.execute(f"CREATE DATABASE {OTHER_DB}")
    with stack.postgres.connect(DB) as admin:
        bootstrap.apply(target, admin, target.provisioner.read_password())
        admin.execute("CREATE TABLE public.facts (id int PRIMARY KEY)")
        for group in (READONLY, MIGRATE):
            admin.execute(f"GRANT CONNECT ON DATABASE {DB} TO {group}")
            admin.execute(f"GRANT USAGE, CREATE ON SCHEMA public TO {group}")
            admin.execute(f"GRANT SELECT ON public.facts TO {group}")
    engine = PostgresEngine(TARGET, target)
    try:
        yield World(stack, target, engine)
    finally:
        engine.close()


def make_table(world: World, user: User, name: str, db: str = DB) -> None:
    with world.login(user, db) as conn:
        conn.execute("SET default_transaction_read_only = off")
        conn.execute(f"CREATE TABLE public.{name} (a int)".encode())


def table_owner(world: World, name: str) -> str | None:
    with world.admin() as admin:
        row = admin.execute(
            "SELECT tableowner FROM pg_tables WHERE tablename = %s", (name,)
        ).fetchone()
    return None if row is None else str(row[0])


def test_a_batch_is_dropped_with_its_sessions_and_objects(world: World) -> None:
    """One call: every user locked, its live sessions ended (idle or inside a
    transaction), its objects dropped or, for a keeping template, handed to the template's
    group; a name already gone and a name given twice are fine (idempotent)."""
    users = [world.session() for _ in range(4)] + [world.session("migrate")]
    idle = world.login(users[0])
    busy = world.login(users[1])
    busy.execute("BEGIN")
    busy.execute("SELECT * FROM public.facts")
    kept = world.login(users[4])
    suffix = secrets.token_hex(3)
    make_table(world, users[2], f"dropped_{suffix}")
    make_table(world, users[4], f"kept_{suffix}")
    gone_already = "rbt_read_0000000000"
    names = [name for name, _ in users]
    try:
        with world.provisioner() as provisioner:
            rows = provisioner.execute(
                "SELECT * FROM dbaccess.revoke_users(%s)", ([*names, gone_already, names[0]],)
            ).fetchall()
        assert sorted(rows) == sorted((name, None) for name in [*names, gone_already])
        for name in names:
            assert not world.exists(name)
        assert world.registered().isdisjoint(names)
        for conn in (idle, busy, kept):
            with pytest.raises(psycopg.OperationalError):
                conn.execute("SELECT 1")
        assert table_owner(world, f"dropped_{suffix}") is None
        assert table_owner(world, f"kept_{suffix}") == MIGRATE
    finally:
        for conn in (idle, busy, kept):
            conn.close()
        with world.admin() as admin:
            admin.execute(f"DROP TABLE IF EXISTS public.kept_{suffix}".encode())


def test_roles_it_did_not_create_are_refused_and_left_alone(world: World) -> None:
    """A role with the managed prefix made by someone else, the bootstrap's own roles, and
    near misses of a managed name (case, a trailing newline, an injected quote) are
    answered, never touched: the foreign role keeps its login and its live session, and
    the managed user whose name they resemble stays. The batch's own user goes."""
    foreign, password = f"rbt_foreign_{secrets.token_hex(3)}", secrets.token_urlsafe(12)
    with world.admin() as admin:
        admin.execute(f"CREATE ROLE {foreign} LOGIN PASSWORD '{password}'".encode())
        admin.execute(f"GRANT CONNECT ON DATABASE {DB} TO {foreign}".encode())
    victim_session = world.stack.postgres.connect(DB, user=foreign, password=password)
    resembled = world.session()
    mine = world.session()
    near_misses = [resembled[0].upper(), resembled[0] + "\n", f'{resembled[0]}" SUPERUSER --']
    try:
        outcome = world.engine.revoke_users(
            [foreign, PROVISIONER, READONLY, "dbaccess_owner", *near_misses, mine[0]]
        )
        for name in (foreign, PROVISIONER, READONLY, "dbaccess_owner"):
            assert outcome[name] == (
                f"revoking {name} on '{TARGET}': dbaccess: {name} was not created by dbaccess"
            )
        assert {name: outcome[name] for name in near_misses} == dict.fromkeys(near_misses)
        assert outcome[mine[0]] is None and not world.exists(mine[0])
        assert world.can_login(foreign) and world.can_login(PROVISIONER)
        assert victim_session.execute("SELECT 1").fetchone() == (1,)
        world.stack.postgres.connect(DB, user=foreign, password=password).close()
        world.login(resembled).close()
    finally:
        victim_session.close()
        world.engine.revoke_user(resembled[0])
        with world.admin() as admin:
            admin.execute(f"DROP OWNED BY {foreign}".encode())
            admin.execute(f"DROP ROLE {foreign}".encode())


def test_one_users_failure_does_not_stop_the_others(world: World) -> None:
    """RESTRICT (an administrator's view over a session's table) and objects in another
    database stop only their own user: it stays NOLOGIN and registered, the answer says
    why, and the rest of the batch (one with a live session) is dropped. Once an
    administrator dealt with it, the next call drops it."""
    with world.admin(OTHER_DB) as admin:
        admin.execute(f"GRANT CONNECT ON DATABASE {OTHER_DB} TO {READONLY}")
        admin.execute(f"GRANT CREATE ON SCHEMA public TO {READONLY}")
    depended_on, elsewhere, plain, connected = (world.session() for _ in range(4))
    suffix = secrets.token_hex(3)
    make_table(world, depended_on, f"base_{suffix}")
    with world.admin() as admin:
        admin.execute(
            f"CREATE VIEW public.admin_view_{suffix} AS SELECT a FROM public.base_{suffix}".encode()
        )
    make_table(world, elsewhere, f"left_{suffix}", db=OTHER_DB)
    live = world.login(connected)
    try:
        outcome = world.engine.revoke_users([depended_on[0], elsewhere[0], plain[0], connected[0]])
        assert outcome[plain[0]] is None and outcome[connected[0]] is None
        assert not world.exists(plain[0]) and not world.exists(connected[0])
        assert outcome[depended_on[0]] is not None
        assert outcome[depended_on[0]].startswith(
            f"revoking {depended_on[0]} on '{TARGET}': {depended_on[0]} cannot be dropped yet: "
        )
        assert f"admin_view_{suffix}" in outcome[depended_on[0]]
        assert outcome[depended_on[0]].endswith("it stays NOLOGIN and is retried")
        assert outcome[elsewhere[0]] is not None
        assert (
            f"{elsewhere[0]} owns objects or holds privileges in database(s) {OTHER_DB}, "
            "which revocation cannot reach"
        ) in outcome[elsewhere[0]]
        for user in (depended_on, elsewhere):
            assert world.exists(user[0]) and not world.can_login(user[0])
            assert user[0] in world.registered()
            with pytest.raises(psycopg.OperationalError, match="not permitted to log in"):
                world.login(user).close()
        with pytest.raises(psycopg.OperationalError):
            live.execute("SELECT 1")
    finally:
        live.close()
        with world.admin() as admin:
            admin.execute(f"DROP VIEW IF EXISTS public.admin_view_{suffix}".encode())
        with world.admin(OTHER_DB) as admin:
            admin.execute(f"DROP OWNED BY {elsewhere[0]}".encode())
            admin.execute(f"REVOKE ALL ON DATABASE {OTHER_DB} FROM {READONLY}")
            admin.execute(f"REVOKE CREATE ON SCHEMA public FROM {READONLY}")
    assert world.engine.revoke_users([depended_on[0], elsewhere[0]]) == {
        depended_on[0]: None,
        elsewhere[0]: None,
    }
    assert not world.exists(depended_on[0]) and not world.exists(elsewhere[0])
    assert world.registered().isdisjoint([depended_on[0], elsewhere[0]])


def test_a_call_is_bounded(world: World) -> None:
    with (
        world.provisioner() as provisioner,
        pytest.raises(psycopg.errors.RaiseException, match="at most 1000 names"),
    ):
        provisioner.execute(
            "SELECT * FROM dbaccess.revoke_users(%s)", ([f"rbt_x_{i}" for i in range(1001)],)
        )


def test_an_older_bootstrap_is_revoked_one_by_one(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    """A target bootstrapped before revoke_users existed still has its users revoked, a
    revoke_user call each, and the log says to re-run the bootstrap."""
    users = [world.session() for _ in range(3)]
    with world.admin() as admin:
        admin.execute("DROP FUNCTION dbaccess.revoke_users(text[])")
    engine = PostgresEngine(TARGET, world.target)
    try:
        with caplog.at_level(logging.WARNING, logger="dbaccess.broker.engines"):
            outcome = engine.revoke_users([name for name, _ in users])
        assert outcome == dict.fromkeys(name for name, _ in users)
        assert not any(world.exists(name) for name, _ in users)
        assert any(
            "dbaccess.revoke_users is missing" in r.getMessage() and "bootstrap" in r.getMessage()
            for r in caplog.records
        )
    finally:
        engine.close()
        with world.admin() as admin:
            bootstrap.apply(world.target, admin, world.target.provisioner.read_password())


def test_the_reaper_drains_a_batch_and_retries_only_the_user_that_failed(
    world: World, tmp_path: Path
) -> None:
    """The reaper's path end to end, with a store of its own: 120 leases expire at once
    (8 calls of 15 names on the 8 revocation workers). One user a view depends on fails:
    its lease stays ``revoking`` with the reason, a ``session.revoke_failed`` record and a
    retry time; the other 119 are revoked with their audit records. Once the view is
    gone, the next pass revokes it."""
    settings = Settings.model_validate(
        {
            "identity": {"issuer": "https://idp.example", "client_id": "dbaccess"},
            "targets": {TARGET: world.target.model_dump()},
        }
    )
    store = Store(f"sqlite:///{tmp_path / 'store.db'}")
    service = SessionService(BrokerContext.build(settings, store, {TARGET: world.engine}))
    users = [world.session() for _ in range(120)]
    stuck = users[57][0]
    suffix = secrets.token_hex(3)
    make_table(world, users[57], f"base_{suffix}")
    with world.admin() as admin:
        admin.execute(
            f"CREATE VIEW public.reaper_view_{suffix} AS SELECT a FROM "
            f"public.base_{suffix}".encode()
        )
    expired = datetime.now(UTC) - timedelta(seconds=1)
    with store.engine.begin() as conn:
        conn.execute(
            leases.insert(),
            [
                {
                    "id": str(uuid.uuid4()),
                    "subject": "storm",
                    "target": TARGET,
                    "role": "readonly",
                    "engine": "postgres",
                    "db_user": name,
                    "state": "active",
                    "created_at": expired - timedelta(minutes=5),
                    "expires_at": expired,
                    "attempts": 0,
                }
                for name, _ in users
            ],
        )
    reaper = TargetReaper(service, TARGET, 1.0, 3600.0, threading.Event())
    try:
        assert reaper.drain() == 119
        assert [name for name, _ in users if world.exists(name)] == [stuck]
        assert not world.can_login(stuck)
        with store.engine.connect() as conn:
            states = dict(conn.execute(sa.select(leases.c.db_user, leases.c.state)).all())
            row = conn.execute(sa.select(leases).where(leases.c.db_user == stuck)).one()
            events = conn.execute(
                sa.select(audit.c.event, sa.func.count()).group_by(audit.c.event)
            ).all()
        assert states == {name: "revoked" if name != stuck else "revoking" for name, _ in users}
        assert row.attempts == 1 and row.claimed_by is None
        assert f"reaper_view_{suffix}" in row.last_error
        assert "stays NOLOGIN and is retried" in row.last_error
        assert row.next_attempt_at is not None
        assert dict(events) == {
            "session.revoke_requested": 120,
            "session.revoked": 119,
            "session.revoke_failed": 1,
        }
    finally:
        with world.admin() as admin:
            admin.execute(f"DROP VIEW IF EXISTS public.reaper_view_{suffix}".encode())
    store.retry_now(TARGET, datetime.now(UTC))
    assert reaper.drain() == 1
    assert not world.exists(stuck)
    with store.engine.connect() as conn:
        assert (
            conn.execute(sa.select(leases.c.state).where(leases.c.db_user == stuck)).scalar_one()
            == "revoked"
        )
    store.close()
