"""MariaDB's definer procedures hold against hostile callers, on a real server (10.11).

- Objects a session user made (routines, events, triggers, views, with DEFINER = the
  session account or its group role: CURRENT_ROLE, the role by name, the role's name with
  any host) are dropped at revocation, or with ``session_objects = "keep"`` left with no
  more power than the template (issue 12, point 1).
- The procedures answer the same whatever the caller's time_zone, sql_mode or character
  set, and a user lives at most max_lifetime from its creation however often it is
  renewed (point 2).
- Names are compared byte-exactly: no call with a variant of a live user's name (other
  case, trailing newline or space, wildcards, a comma, a very long name) touches it, and
  every call returns in bounded time (point 3).
- A break-glass user's long statement is in the server's log whole (point 4).
- An expired user cannot log in whatever event_scheduler says; the server's expiry event
  and the broker's reaper revoking one user at once both succeed (point 7).

The module runs its own server: it switches server-wide settings (init_connect,
event_scheduler, the audit log limit) that the suite's shared server must keep.
"""

from __future__ import annotations

import logging
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pymysql
import pytest
from pymysql.constants import CLIENT

from dbaccess.broker.checks import log_server_problems
from dbaccess.broker.engines.base import EngineError, EngineRefused
from dbaccess.broker.engines.mariadb.bootstrap import (
    AUDIT_LOCK,
    AUDIT_PLACEHOLDER,
    EVENT_SCHEDULER_OFF,
    LIFETIME_ERRNO,
    LIFETIME_SQLSTATE,
    QUERY_LOG_LIMIT_MAX,
    apply,
    native_password_hash,
)
from dbaccess.broker.engines.mariadb.bootstrap import warnings as bootstrap_warnings
from dbaccess.broker.engines.mariadb.checks import server_problems
from dbaccess.broker.engines.mariadb.engine import MariaDBEngine
from dbaccess.broker.settings import TargetSection
from dbaccess.sandbox.mariadb import MariaDBServer

pytestmark = pytest.mark.integration

PROVISIONER = "dbaccess_provisioner"
PROVISIONER_PASSWORD = secrets.token_urlsafe(16)
PROVISIONER_ENV = "DBACCESS_TEST_HARDENING_PW"
MAX_LIFETIME = timedelta(hours=2)
Errors = (
    pymysql.err.OperationalError,
    pymysql.err.ProgrammingError,
    pymysql.err.InternalError,
    pymysql.err.DataError,
)


def target_for(server: MariaDBServer) -> TargetSection:
    return TargetSection.model_validate(
        {
            "engine": "mariadb",
            "host": server.host,
            "port": server.port,
            "database": "app",
            "max_lifetime": "2h",
            "provisioner": {"user": PROVISIONER, "password_env": PROVISIONER_ENV},
            "roles": {
                "readonly": {"group_role": "dbaccess_readonly"},
                "readwrite": {"group_role": "dbaccess_readwrite"},
                "migrate": {"group_role": "dbaccess_migrate", "session_objects": "keep"},
            },
        }
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MariaDBServer]:
    with MariaDBServer(tmp_path_factory.mktemp("hardening")) as running:
        admin = running.connect()
        try:
            apply(target_for(running), admin, PROVISIONER_PASSWORD)
            with admin.cursor() as cur:
                for statement in [
                    "CREATE DATABASE app",
                    "CREATE TABLE app.orders (id INT AUTO_INCREMENT PRIMARY KEY, note TEXT)",
                    "GRANT SELECT ON app.* TO dbaccess_readonly",
                    # what the tests of point 1 need: the rights to make definer objects
                    "GRANT SELECT, INSERT, UPDATE, DELETE, EXECUTE, CREATE ROUTINE, EVENT, "
                    "TRIGGER, CREATE VIEW ON app.* TO dbaccess_readwrite, dbaccess_migrate",
                ]:
                    cur.execute(statement)
        finally:
            admin.close()
        yield running


@pytest.fixture
def target(server: MariaDBServer, monkeypatch: pytest.MonkeyPatch) -> TargetSection:
    monkeypatch.setenv(PROVISIONER_ENV, PROVISIONER_PASSWORD)
    return target_for(server)


def run(
    server: MariaDBServer,
    sql: str,
    args: tuple[object, ...] = (),
    *,
    user: str | None = None,
    password: str | None = None,
    init: tuple[str, ...] = (),
) -> list[tuple[object, ...]]:
    """``sql`` on a fresh connection (as root unless ``user``), after the ``init``
    statements; the rows of its last result."""
    conn = server.connect(user=user, password=password)
    try:
        with conn.cursor() as cur:
            for statement in init:
                cur.execute(statement)
            cur.execute(sql, args or None)  # no args: a % is just a %
            rows = list(cur.fetchall())
            while cur.nextset():
                rows = list(cur.fetchall() or rows)
            return rows
    finally:
        conn.close()


def provisioner(
    server: MariaDBServer, sql: str, args: tuple[object, ...] = (), init: tuple[str, ...] = ()
) -> list[tuple[object, ...]]:
    return run(server, sql, args, user=PROVISIONER, password=PROVISIONER_PASSWORD, init=init)


def utc_in(delta: timedelta) -> datetime:
    return (datetime.now(UTC) + delta).replace(tzinfo=None, microsecond=0)


def new_name(what: str = "u") -> str:
    return f"dba_{what}_{secrets.token_hex(4)}"


def create(
    server: MariaDBServer,
    name: str,
    role: str = "dbaccess_readwrite",
    *,
    log: bool = False,
    init: tuple[str, ...] = (),
    until: timedelta = timedelta(minutes=10),
) -> str:
    """Creates session user ``name`` (password "pw-" + name) as the broker would."""
    provisioner(
        server,
        "CALL dbaccess.create_user(%s, %s, %s, %s, 5, NULL, %s)",
        (name, native_password_hash("pw-" + name), role, utc_in(until), log),
        init,
    )
    return name


def revoke(server: MariaDBServer, name: str, init: tuple[str, ...] = ()) -> int:
    """Revokes ``name`` as the broker does; the sessions it could not end."""
    conn = server.connect(user=PROVISIONER, password=PROVISIONER_PASSWORD)
    try:
        with conn.cursor() as cur:
            for statement in init:
                cur.execute(statement)
            cur.execute("CALL dbaccess.revoke_user(%s, @r)", (name,))
            cur.execute("SELECT @r")
            row = cur.fetchone()
    finally:
        conn.close()
    return int(str(row[0])) if row else -1


def as_user(server: MariaDBServer, name: str, sql: str, **kw: object) -> list[tuple[object, ...]]:
    return run(server, sql, user=name, password="pw-" + name, **kw)  # type: ignore[arg-type]


def account_exists(server: MariaDBServer, name: str) -> bool:
    return bool(run(server, "SELECT 1 FROM mysql.user WHERE BINARY user = %s", (name,)))


def registered(server: MariaDBServer, name: str) -> bool:
    return bool(
        run(server, "SELECT 1 FROM dbaccess.managed_users WHERE BINARY username = %s", (name,))
    )


def objects_of(server: MariaDBServer, definer: str) -> dict[str, list[tuple[object, ...]]]:
    """What the server has with this DEFINER, by kind."""
    return {
        "routines": run(
            server,
            "SELECT ROUTINE_NAME, SECURITY_TYPE FROM "
            "information_schema.ROUTINES WHERE BINARY DEFINER = %s",
            (definer,),
        ),
        "events": run(
            server,
            "SELECT EVENT_NAME FROM information_schema.EVENTS WHERE BINARY DEFINER = %s",
            (definer,),
        ),
        "triggers": run(
            server,
            "SELECT TRIGGER_NAME FROM information_schema.TRIGGERS WHERE BINARY DEFINER = %s",
            (definer,),
        ),
        "views": run(
            server,
            "SELECT TABLE_NAME, SECURITY_TYPE FROM information_schema.VIEWS "
            "WHERE BINARY DEFINER = %s",
            (definer,),
        ),
    }


def make_objects(server: MariaDBServer, name: str) -> list[str]:
    """A routine, a function, a view, a trigger and an event, made by session user
    ``name`` the way it can (DEFINER = itself); returns the names."""
    objects = [f"p_{name}", f"f_{name}", f"v_{name}", f"tr_{name}", f"ev_{name}"]
    p, f, v, tr, ev = objects
    conn = server.connect("app", user=name, password="pw-" + name)
    try:
        with conn.cursor() as cur:
            cur.execute(
                f"CREATE PROCEDURE app.{p}() SQL SECURITY DEFINER "
                "INSERT INTO app.orders (note) VALUES (CONCAT('by ', CURRENT_USER()))"
            )
            cur.execute(
                f"CREATE FUNCTION app.{f}() RETURNS INT SQL SECURITY DEFINER "
                "RETURN (SELECT COUNT(*) FROM app.orders)"
            )
            cur.execute(f"CREATE VIEW app.{v} AS SELECT id, note FROM app.orders")
            cur.execute(
                f"CREATE TRIGGER app.{tr} BEFORE INSERT ON app.orders FOR EACH ROW "
                "SET NEW.note = CONCAT(COALESCE(NEW.note, ''), ' [trigger]')"
            )
            cur.execute(
                f"CREATE EVENT app.{ev} ON SCHEDULE EVERY 1 HOUR COMMENT 'kept?' "
                "DO INSERT INTO app.orders (note) VALUES ('event')"
            )
            # Any other DEFINER is refused: it needs SUPER or SET USER.
            for definer in (
                "'dbaccess_owner'@'localhost'",
                "'root'@'localhost'",
                "'dbaccess_provisioner'@'%'",
            ):
                with pytest.raises(pymysql.err.OperationalError, match="SUPER, SET USER"):
                    cur.execute(f"CREATE DEFINER = {definer} PROCEDURE app.x_{name}() SELECT 1")
    finally:
        conn.close()
    return objects


# --- point 1: objects a session user made ---------------------------------------------


def test_revocation_drops_every_object_the_session_user_made(server: MariaDBServer) -> None:
    name = create(server, new_name("drop"))
    make_objects(server, name)
    definer = f"{name}@%"
    assert all(objects_of(server, definer).values())  # each kind exists while it lives
    assert revoke(server, name) == 0
    assert objects_of(server, definer) == {
        "routines": [],
        "events": [],
        "triggers": [],
        "views": [],
    }
    assert not account_exists(server, name)
    # The table works again for everyone: a trigger of a dropped definer would fail writes.
    run(server, "INSERT INTO app.orders (note) VALUES ('after')")
    # A later account of the same name finds nothing to revive.
    create(server, name, "dbaccess_readonly")
    assert objects_of(server, definer)["routines"] == []
    revoke(server, name)


def test_keep_mode_leaves_objects_no_more_power_than_the_template(
    server: MariaDBServer,
) -> None:
    name = create(server, new_name("keep"), "dbaccess_migrate")
    p, f, v, tr, ev = make_objects(server, name)
    assert revoke(server, name) == 0
    assert not account_exists(server, name)
    assert objects_of(server, f"{name}@%")["events"] == []
    assert objects_of(server, f"{name}@%")["triggers"] == []
    assert objects_of(server, f"{name}@%")["views"] == []
    # Routines stay, run with the caller's rights (SQL SECURITY INVOKER).
    assert sorted(objects_of(server, f"{name}@%")["routines"]) == [(f, "INVOKER"), (p, "INVOKER")]
    # Triggers, events and views belong to the template's group role: a role cannot log
    # in and has the template's rights; never dbaccess_owner, which holds SUPER.
    kept = objects_of(server, "dbaccess_migrate@")
    assert (ev,) in kept["events"] and (tr,) in kept["triggers"]
    assert kept["views"] == [(v, "INVOKER")]
    owned = objects_of(server, "dbaccess_owner@localhost")
    assert [o for kind in owned.values() for o in kind if name in str(o[0])] == []
    # The kept trigger still works for a writer (a missing definer would fail every write).
    run(server, "INSERT INTO app.orders (note) VALUES ('kept')")
    assert run(server, "SELECT note FROM app.orders ORDER BY id DESC LIMIT 1") == [
        ("kept [trigger]",)
    ]
    # A read-only session calling the kept procedure gets its own rights, not the maker's.
    reader = create(server, new_name("reader"), "dbaccess_readonly")
    run(server, f"GRANT EXECUTE ON PROCEDURE app.{p} TO '{reader}'@'%'")
    with pytest.raises(pymysql.err.OperationalError, match="INSERT command denied"):
        as_user(server, reader, f"CALL app.{p}()")
    assert as_user(server, reader, f"SELECT COUNT(*) FROM app.{v}")  # the view, as itself
    run(server, f"DROP TRIGGER app.{tr}")
    run(server, f"DROP EVENT app.{ev}")
    revoke(server, reader)


# --- point 2: the caller's session settings change nothing ------------------------------

HOSTILE = (
    "SET time_zone = '+13:00'",  # the furthest from UTC MariaDB takes
    "SET sql_mode = 'ALLOW_INVALID_DATES,PAD_CHAR_TO_FULL_LENGTH'",  # not strict
    "SET NAMES latin1 COLLATE latin1_general_ci",
    "SET collation_connection = 'utf8mb4_general_ci'",
    "SET div_precision_increment = 0",
)


def test_hostile_session_settings_do_not_bend_the_bounds(server: MariaDBServer) -> None:
    # An hour ahead of UTC is "in the past" for a +13:00 session's NOW(): still future.
    name = create(server, new_name("tz"), until=timedelta(hours=1), init=HOSTILE)
    # An expiry past max_lifetime in UTC is refused, whatever the session's time zone.
    with pytest.raises(pymysql.err.OperationalError, match="expiry is out of bounds"):
        provisioner(
            server,
            "CALL dbaccess.renew_user(%s, %s)",
            (name, utc_in(MAX_LIFETIME + timedelta(minutes=1))),
            HOSTILE,
        )
    with pytest.raises(pymysql.err.OperationalError, match="expiry is out of bounds"):
        provisioner(
            server,
            "CALL dbaccess.renew_user(%s, %s)",
            (name, utc_in(-timedelta(minutes=1))),
            HOSTILE,
        )
    # An invalid date is an error, not a zero date (the caller's sql_mode does not count).
    with pytest.raises(Errors):
        provisioner(server, "CALL dbaccess.renew_user(%s, '2031-02-31 00:00:00')", (name,), HOSTILE)
    # A name in another case or collation is not a managed name.
    with pytest.raises(pymysql.err.OperationalError, match="not a managed user name"):
        create(server, name.upper() + "x", init=HOSTILE)
    stored = run(
        server,
        "SELECT TIMESTAMPDIFF(SECOND, UTC_TIMESTAMP(), expires_at) "
        "FROM dbaccess.managed_users WHERE username = %s",
        (name,),
    )
    assert 3500 < int(str(stored[0][0])) <= 3600  # UTC, as given
    assert revoke(server, name, HOSTILE) == 0 and not registered(server, name)


def test_renewal_never_passes_max_lifetime_from_creation(
    server: MariaDBServer, target: TargetSection
) -> None:
    name = create(server, new_name("life"))
    # As if created 1h55m ago: now + 10 min is within "now + max" but beyond the total.
    run(
        server,
        "UPDATE dbaccess.managed_users SET created_at = UTC_TIMESTAMP() - INTERVAL "
        "115 MINUTE WHERE username = %s",
        (name,),
    )
    with pytest.raises(pymysql.err.OperationalError, match="beyond the maximum lifetime") as out:
        provisioner(
            server, "CALL dbaccess.renew_user(%s, %s)", (name, utc_in(timedelta(minutes=10)))
        )
    # its own condition, not the generic 45000 (errno 1644) every other refusal uses
    assert out.value.args[0] == LIFETIME_ERRNO
    assert out.value.sqlstate == LIFETIME_SQLSTATE == "45D01"
    # which the engine tells from a failure by that number: a refusal (403), not a 502
    engine = MariaDBEngine("hardening", target)
    with pytest.raises(EngineRefused, match="^beyond the maximum lifetime of this user"):
        engine.renew_user(name, datetime.now(UTC) + timedelta(minutes=10))
    with pytest.raises(EngineError) as other:  # another refusal stays an error
        engine.renew_user(name, datetime.now(UTC) + timedelta(hours=3))
    assert not isinstance(other.value, EngineRefused)
    provisioner(server, "CALL dbaccess.renew_user(%s, %s)", (name, utc_in(timedelta(minutes=4))))
    revoke(server, name)


# --- point 3: names compared exactly, every call bounded ------------------------------


def variants(name: str) -> list[str]:
    return [
        name.upper(),
        name[:4] + name[4].upper() + name[5:],
        name + "\n",
        name + " ",
        name + "\t",
        name[:-1] + ".",
        name[:-2] + ".*",
        name[:-1] + "_",
        name[:-2] + "%",
        name + "," + AUDIT_PLACEHOLDER,
        AUDIT_PLACEHOLDER + "," + name,
        name + "\x00",
        name + "x" * 80,
        name + "x" * 10000,
        "dba_%",
        "dba_.*",
        "",
    ]


def test_no_variant_of_a_live_name_touches_it(server: MariaDBServer) -> None:
    name = create(server, new_name("exact"), log=True)
    try:
        for variant in variants(name):
            started = time.monotonic()
            for call, args in [
                ("CALL dbaccess.revoke_user(%s, @r)", (variant,)),
                ("CALL dbaccess.renew_user(%s, %s)", (variant, utc_in(timedelta(minutes=20)))),
                (
                    "CALL dbaccess.create_user(%s, %s, 'dbaccess_readonly', %s, 5, NULL, TRUE)",
                    (variant, native_password_hash("x"), utc_in(timedelta(minutes=5))),
                ),
            ]:
                try:
                    provisioner(server, call, args, HOSTILE[2:4])
                except Errors:
                    pass  # refused: what matters is that the live user is untouched
            assert time.monotonic() - started < 20, f"{variant!r} took too long"
            assert registered(server, name) and account_exists(server, name), repr(variant)
            if registered(server, variant):  # a valid name of its own: created, as it may
                assert revoke(server, variant) == 0
            listed = str(run(server, "SELECT @@GLOBAL.server_audit_incl_users")[0][0])
            assert name in listed.split(","), f"{variant!r} took it off the logging list"
        assert as_user(server, name, "SELECT 1") == [(1,)]
        # The listing shows it once, exactly.
        assert provisioner(server, "CALL dbaccess.managed_users()").count((name,)) == 1
    finally:
        assert revoke(server, name) == 0
    assert not registered(server, name) and not account_exists(server, name)
    listed = str(run(server, "SELECT @@GLOBAL.server_audit_incl_users")[0][0])
    assert name not in listed.split(",") and AUDIT_PLACEHOLDER in listed.split(",")


def test_expire_due_passes_over_a_user_it_cannot_revoke(server: MariaDBServer) -> None:
    run(server, "SET GLOBAL event_scheduler = OFF")
    stuck, healthy = create(server, new_name("stuck"), log=True), create(server, new_name("ok"))
    # Expire both, the stuck one first; its revocation fails on the held logging lock.
    run(
        server,
        "UPDATE dbaccess.managed_users SET expires_at = UTC_TIMESTAMP() - INTERVAL 2 "
        "MINUTE WHERE username = %s",
        (stuck,),
    )
    run(
        server,
        "UPDATE dbaccess.managed_users SET expires_at = UTC_TIMESTAMP() - INTERVAL 1 "
        "MINUTE WHERE username = %s",
        (healthy,),
    )
    holder = server.connect()
    try:
        with holder.cursor() as cur:
            cur.execute("SELECT GET_LOCK(%s, 1)", (AUDIT_LOCK,))
            started = time.monotonic()
            run(server, "CALL dbaccess.expire_due()")
            took = time.monotonic() - started
        assert took < 30  # one lock wait (10 s), not a loop on the stuck user
        assert registered(server, stuck) and not registered(server, healthy)
        assert not account_exists(server, healthy)
    finally:
        holder.close()
        run(server, "SET GLOBAL event_scheduler = ON")
    run(server, "CALL dbaccess.expire_due()")  # the lock is free: the next run gets it
    assert not registered(server, stuck) and not account_exists(server, stuck)


# --- point 4: long statements logged whole ---------------------------------------------


def audit_log(server: MariaDBServer) -> Path:
    return server.data_dir / str(run(server, "SELECT @@GLOBAL.server_audit_file_path")[0][0])


def test_breakglass_statements_reach_the_log_whole(server: MariaDBServer) -> None:
    # As after a restart without the my.cnf line: the next break-glass creation raises it.
    run(server, "SET GLOBAL server_audit_query_log_limit = 1024")
    name = create(server, new_name("loud"), log=True)
    try:
        assert run(server, "SELECT @@GLOBAL.server_audit_query_log_limit") == [
            (QUERY_LOG_LIMIT_MAX,)
        ]
        marks = {
            what: f"mark-{what}-{secrets.token_hex(4)}"
            for what in ("long", "multi", "prepared", "immediate", "comment", "inside")
        }
        run(server, f"CREATE OR REPLACE PROCEDURE app.sp_{name}() SELECT '{marks['inside']}'")
        long_statement = f"SELECT '{marks['long']}', '{'y' * 200_000}', 'end-{marks['long']}'"
        conn = server.connect(user=name, password="pw-" + name, client_flag=CLIENT.MULTI_STATEMENTS)
        try:
            with conn.cursor() as cur:
                cur.execute(long_statement)
                cur.execute(f"SELECT 1; SELECT '{marks['multi']}'")
                while cur.nextset():
                    pass
                cur.execute(f"PREPARE s FROM 'SELECT ?'; SET @m = '{marks['prepared']}'")
                cur.execute("EXECUTE s USING @m")
                cur.execute(f"EXECUTE IMMEDIATE CONCAT('SELECT ', QUOTE('{marks['immediate']}'))")
                cur.execute(f"/* {marks['comment']} */ SELECT 1")
                cur.execute(f"CALL app.sp_{name}()")  # what a procedure runs is logged too
                # Nothing the session user may run turns its logging off.
                for statement in (
                    "SET sql_log_off = 1",
                    "SET GLOBAL server_audit_logging = OFF",
                    f"SET GLOBAL server_audit_excl_users = '{name}'",
                    "SET GLOBAL server_audit_query_log_limit = 10",
                    "SET GLOBAL server_audit_incl_users = 'nobody'",
                ):
                    with pytest.raises(pymysql.err.OperationalError, match="SUPER"):
                        cur.execute(statement)
                cur.execute("SELECT 1")  # the plugin logs a query after answering it
        finally:
            conn.close()
        deadline = time.monotonic() + 10
        while True:
            log = audit_log(server).read_text(errors="replace")
            if f"end-{marks['long']}" in log or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        lines = [line for line in log.splitlines() if marks["long"] in line]
        assert lines and f"end-{marks['long']}" in lines[0]
        assert "y" * 200_000 in lines[0]  # not cut
        for what in ("multi", "prepared", "immediate", "comment", "inside"):
            assert [
                line
                for line in log.splitlines()
                if marks[what] in line and f",{name}," in line and "CREATE" not in line
            ], f"no {what} statement"
    finally:
        revoke(server, name)


# --- point 7: expired users cannot log in; the event and the reaper do not collide -----


def test_an_expired_user_cannot_log_in_whatever_event_scheduler_says(
    server: MariaDBServer, target: TargetSection
) -> None:
    run(server, "SET GLOBAL event_scheduler = OFF")  # the server's default; as after a stall
    try:
        expired, live = create(server, new_name("late")), create(server, new_name("live"))
        run(server, "CREATE USER IF NOT EXISTS 'app_account'@'%' IDENTIFIED BY 'pw-app'")
        run(
            server,
            "UPDATE dbaccess.managed_users SET expires_at = UTC_TIMESTAMP() - "
            "INTERVAL 1 SECOND WHERE username = %s",
            (expired,),
        )
        with pytest.raises(pymysql.err.OperationalError, match="init_connect command failed"):
            as_user(server, expired, "SELECT 1")
        assert as_user(server, live, "SELECT 1") == [(1,)]
        assert run(server, "SELECT 1", user="app_account", password="pw-app") == [(1,)]
        assert registered(server, expired)  # nothing dropped it: the login check alone held
        errors, warnings = server_problems(target)
        assert errors == [] and any("event_scheduler is OFF" in w for w in warnings)
        # Without init_connect (a restart without the my.cnf line) it is an error.
        run(server, "SET GLOBAL init_connect = ''")
        try:
            errors, _ = server_problems(target)
            assert len(errors) == 1 and "init_connect" in errors[0] and "my.cnf" in errors[0]
        finally:
            run(server, "SET GLOBAL init_connect = 'CALL dbaccess.login_check()'")
        assert revoke(server, expired) == 0 and revoke(server, live) == 0
    finally:
        run(server, "SET GLOBAL event_scheduler = ON")


def test_the_expiry_event_and_the_reaper_revoking_at_once_both_succeed(
    server: MariaDBServer,
) -> None:
    names = [create(server, new_name("race"), log=True) for _ in range(6)]
    # live sessions, so that each revocation takes a while (the revocation kills them)
    sessions = [server.connect(user=name, password="pw-" + name) for name in names]
    run(
        server,
        "UPDATE dbaccess.managed_users SET expires_at = UTC_TIMESTAMP() - INTERVAL 1 "
        "SECOND WHERE username LIKE 'dba\\_race\\_%'",
    )

    def reaper(name: str) -> int:
        return revoke(server, name)

    with ThreadPoolExecutor(8) as pool:
        event = pool.submit(run, server, "CALL dbaccess.expire_due()")
        results = list(pool.map(reaper, names + names))  # twice each, and the event
        event.result()
    assert results == [0] * len(results)  # no "failed": a revocation that lost is a success
    del sessions
    for name in names:
        assert not registered(server, name) and not account_exists(server, name)


def test_start_up_logs_what_is_missing(
    server: MariaDBServer, target: TargetSection, caplog: pytest.LogCaptureFixture
) -> None:
    run(server, "SET GLOBAL event_scheduler = OFF")
    run(server, "SET GLOBAL init_connect = ''")
    try:
        with caplog.at_level(logging.WARNING, logger="dbaccess.broker"):
            log_server_problems({"app": target})
    finally:
        run(server, "SET GLOBAL init_connect = 'CALL dbaccess.login_check()'")
        run(server, "SET GLOBAL event_scheduler = ON")
    found = {
        (r.levelname, r.getMessage().split(":")[1].strip().split(" ")[0]) for r in caplog.records
    }
    assert found == {("ERROR", "init_connect"), ("WARNING", "event_scheduler")}


def test_bootstrap_keeps_an_administrators_init_connect(
    server: MariaDBServer, target: TargetSection
) -> None:
    run(server, "SET GLOBAL init_connect = 'SET @site_setting = 1'")
    admin = server.connect()
    try:
        with pytest.raises(pymysql.err.OperationalError, match="init_connect is already set"):
            apply(target, admin, PROVISIONER_PASSWORD)
        # Once the administrator has added the call, the bootstrap runs and leaves it.
        ours = "SET @site_setting = 1;CALL dbaccess.login_check()"
        run(server, "SET GLOBAL init_connect = %s", (ours,))
        apply(target, admin, PROVISIONER_PASSWORD)
        assert run(server, "SELECT @@GLOBAL.init_connect") == [(ours,)]
        assert server_problems(target)[0] == []
    finally:
        admin.close()
        run(server, "SET GLOBAL init_connect = 'CALL dbaccess.login_check()'")
    again = server.connect()
    try:
        apply(target, again, PROVISIONER_PASSWORD)  # running it again is harmless
        assert bootstrap_warnings(again) == []
        run(server, "SET GLOBAL event_scheduler = OFF")  # the server's default
        assert bootstrap_warnings(again) == [EVENT_SCHEDULER_OFF]
        assert "event_scheduler is OFF" in EVENT_SCHEDULER_OFF
    finally:
        run(server, "SET GLOBAL event_scheduler = ON")
        again.close()


def test_check_config_says_what_the_server_misses(server: MariaDBServer, tmp_path: Path) -> None:
    config = tmp_path / "broker.toml"
    config.write_text(f"""\
[identity]
issuer = "https://idp.example.test"
client_id = "dbaccess-cli"

[targets.app]
engine = "mariadb"
host = "127.0.0.1"
port = {server.port}
database = "app"
max_lifetime = "2h"
provisioner = {{ user = "{PROVISIONER}", password_env = "{PROVISIONER_ENV}" }}

[targets.app.roles.readwrite]
group_role = "dbaccess_readwrite"
""")

    def check() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "dbaccess.broker", "check-config", "--config", str(config)],
            text=True,
            capture_output=True,
            timeout=60,
            env={**os.environ, PROVISIONER_ENV: PROVISIONER_PASSWORD},
        )

    ok = check()
    assert ok.returncode == 0 and "warning" not in ok.stderr, ok.stderr
    run(server, "SET GLOBAL event_scheduler = OFF")
    run(server, "SET GLOBAL init_connect = ''")
    run(server, "SET GLOBAL server_audit_query_log_limit = 1024")
    try:
        result = check()
    finally:
        run(server, "SET GLOBAL init_connect = 'CALL dbaccess.login_check()'")
        run(server, "SET GLOBAL event_scheduler = ON")
        run(server, f"SET GLOBAL server_audit_query_log_limit = {QUERY_LOG_LIMIT_MAX}")
    assert result.returncode == 3, result.stderr
    assert (
        "error: " in result.stderr
        and "init_connect does not run CALL "
        "dbaccess.login_check(): an expired session user can log in"
    ) in result.stderr
    assert "warning: " in result.stderr and "event_scheduler is OFF" in result.stderr
    assert "server_audit_query_log_limit is 1024" in result.stderr


def test_objects_made_through_a_nested_role_or_public_are_found(server: MariaDBServer) -> None:
    # Revocation searches triggers and views only where someone the account is could make
    # them: a right two roles away, or given to PUBLIC, counts too.
    for statement in [
        "CREATE ROLE IF NOT EXISTS app_nested",
        "GRANT TRIGGER ON app.orders TO app_nested",
        "GRANT app_nested TO dbaccess_readonly",
        "GRANT CREATE VIEW ON app.* TO PUBLIC",
    ]:
        run(server, statement)
    try:
        name = create(server, new_name("nest"), "dbaccess_readonly")
        as_user(
            server,
            name,
            f"CREATE TRIGGER app.tr_{name} AFTER INSERT ON app.orders FOR EACH ROW SET @seen = 1",
        )
        as_user(server, name, f"CREATE VIEW app.v_{name} AS SELECT 1 AS one")
        assert objects_of(server, f"{name}@%")["triggers"] == [(f"tr_{name}",)]
        assert revoke(server, name) == 0
        assert objects_of(server, f"{name}@%") == {
            "routines": [],
            "events": [],
            "triggers": [],
            "views": [],
        }
    finally:
        for statement in ["REVOKE CREATE VIEW ON app.* FROM PUBLIC", "DROP ROLE app_nested"]:
            run(server, statement)


# --- point 1: objects a session user made as its group role -----------------------------

# A session user may name the role it has on as DEFINER, without SUPER: CURRENT_ROLE, the
# role by name, or the role's name with any host (the server compares the name only).
ROLE_DEFINERS = {
    "current_role": lambda role: "CURRENT_ROLE",
    "by_name": lambda role: f"`{role}`",
    "any_host": lambda role: f"'{role}'@'evil.example'",
}


@pytest.fixture(scope="module")
def secret(server: MariaDBServer) -> str:
    """A table the read-write and migration roles may read and the read-only one may not."""
    for statement in [
        "CREATE DATABASE IF NOT EXISTS secret",
        "CREATE TABLE IF NOT EXISTS secret.codes (code TEXT)",
        "INSERT INTO secret.codes VALUES ('s3cr3t')",
        "GRANT SELECT ON secret.* TO dbaccess_readwrite, dbaccess_migrate",
    ]:
        run(server, statement)
    return "secret.codes"


def make_role_objects(server: MariaDBServer, name: str, definer: str) -> dict[str, str]:
    """A procedure, a function, an event, a trigger (on a table of its own) and a view,
    made by session user ``name`` with ``definer``; returns the names by kind."""
    made = {
        kind: f"{kind[0]}r_{name}" for kind in ("procedure", "function", "event", "trigger", "view")
    }
    made["table"] = f"t_{name}"
    run(server, f"CREATE TABLE app.{made['table']} (id INT AUTO_INCREMENT PRIMARY KEY, note TEXT)")
    conn = server.connect("app", user=name, password="pw-" + name)
    try:
        with conn.cursor() as cur:
            cur.execute(
                f"CREATE DEFINER = {definer} PROCEDURE app.{made['procedure']}() "
                "SQL SECURITY DEFINER INSERT INTO app.orders (note) VALUES ('by role')"
            )
            cur.execute(
                f"CREATE DEFINER = {definer} FUNCTION app.{made['function']}() "
                "RETURNS TEXT SQL SECURITY DEFINER "
                "RETURN (SELECT MAX(code) FROM secret.codes)"
            )
            cur.execute(
                f"CREATE DEFINER = {definer} EVENT app.{made['event']} "
                "ON SCHEDULE EVERY 1 HOUR COMMENT 'by role' "
                "DO INSERT INTO app.orders (note) VALUES ('event')"
            )
            cur.execute(
                f"CREATE DEFINER = {definer} TRIGGER app.{made['trigger']} "
                f"BEFORE INSERT ON app.{made['table']} FOR EACH ROW "
                "SET NEW.note = CONCAT(COALESCE(NEW.note, ''), ' [trigger]')"
            )
            cur.execute(
                f"CREATE DEFINER = {definer} SQL SECURITY DEFINER VIEW "
                f"app.{made['view']} AS SELECT code FROM secret.codes"
            )
    finally:
        conn.close()
    return made


def objects_named(
    server: MariaDBServer, made: dict[str, str]
) -> dict[str, list[tuple[object, ...]]]:
    """(DEFINER, SQL SECURITY) of each object in ``made`` that still exists, by kind."""

    def one(sql: str, obj: str) -> list[tuple[object, ...]]:
        return run(server, sql, (obj,))

    routine = (
        "SELECT DEFINER, SECURITY_TYPE FROM information_schema.ROUTINES "
        "WHERE ROUTINE_SCHEMA = 'app' AND BINARY ROUTINE_NAME = %s"
    )
    return {
        "procedure": one(routine, made["procedure"]),
        "function": one(routine, made["function"]),
        "event": one(
            "SELECT DEFINER, 'DEFINER' FROM information_schema.EVENTS "
            "WHERE EVENT_SCHEMA = 'app' AND BINARY EVENT_NAME = %s",
            made["event"],
        ),
        "trigger": one(
            "SELECT DEFINER, 'DEFINER' FROM information_schema.TRIGGERS "
            "WHERE TRIGGER_SCHEMA = 'app' AND BINARY TRIGGER_NAME = %s",
            made["trigger"],
        ),
        "view": one(
            "SELECT DEFINER, SECURITY_TYPE FROM information_schema.VIEWS "
            "WHERE TABLE_SCHEMA = 'app' AND BINARY TABLE_NAME = %s",
            made["view"],
        ),
    }


def drop_made(server: MariaDBServer, made: dict[str, str]) -> None:
    for kind in ("procedure", "function", "event", "trigger", "view", "table"):
        run(server, f"DROP {kind.upper()} IF EXISTS app.{made[kind]}")


@pytest.mark.parametrize("form", sorted(ROLE_DEFINERS))
def test_objects_defined_as_the_group_role_are_dropped_with_the_session(
    server: MariaDBServer,
    secret: str,
    form: str,
) -> None:
    role = "dbaccess_readwrite"
    name = create(server, new_name("rdrop"), role)
    other = create(server, new_name("rlive"), role)  # another live session of the template
    made = make_role_objects(server, name, ROLE_DEFINERS[form](role))
    theirs = f"pr_{other}"
    as_user(server, other, f"CREATE DEFINER = CURRENT_ROLE PROCEDURE app.{theirs}() SELECT 1")
    reader = create(server, new_name("rread"), "dbaccess_readonly")
    try:
        assert all(objects_named(server, made).values())  # each kind exists while it lives
        with pytest.raises(pymysql.err.OperationalError, match="SELECT command denied"):
            as_user(server, reader, f"SELECT * FROM {secret}")
        if form != "any_host":  # the hole: the reader gets the read-write role's rights
            assert as_user(server, reader, f"SELECT code FROM app.{made['view']}") == [("s3cr3t",)]
        assert revoke(server, name) == 0
        assert objects_named(server, made) == {
            "procedure": [],
            "function": [],
            "event": [],
            "trigger": [],
            "view": [],
        }
        # Nothing of the role is left for a later session of another role to use.
        with pytest.raises(pymysql.err.ProgrammingError, match="doesn't exist"):
            as_user(server, reader, f"SELECT code FROM app.{made['view']}")
        # The table works again for every writer.
        run(server, f"INSERT INTO app.{made['table']} (note) VALUES ('after')")
        # In "drop" mode the role owns nothing: the live session's object went too, and
        # the live session keeps its rights (it can make it again).
        assert not run(server, "SELECT 1 FROM mysql.proc WHERE db = 'app' AND name = %s", (theirs,))
        as_user(server, other, f"CREATE DEFINER = CURRENT_ROLE PROCEDURE app.{theirs}() SELECT 1")
        assert revoke(server, other) == 0
        assert not run(server, "SELECT 1 FROM mysql.proc WHERE db = 'app' AND name = %s", (theirs,))
    finally:
        drop_made(server, made)
        run(server, f"DROP PROCEDURE IF EXISTS app.{theirs}")
        for user in (name, other, reader):
            revoke(server, user)


@pytest.mark.parametrize("form", sorted(ROLE_DEFINERS))
def test_keep_mode_leaves_objects_defined_as_the_role_no_more_power_than_kept_ones(
    server: MariaDBServer,
    secret: str,
    form: str,
) -> None:
    role = "dbaccess_migrate"
    name = create(server, new_name("rkeep"), role)
    made = make_role_objects(server, name, ROLE_DEFINERS[form](role))
    reader = create(server, new_name("rread"), "dbaccess_readonly")
    try:
        assert revoke(server, name) == 0
        # Exactly as kept objects end up: routines and views SQL SECURITY INVOKER, views,
        # triggers and events defined as the group role (a role cannot log in).
        kept = objects_named(server, made)
        assert kept["procedure"][0][1] == "INVOKER" and kept["function"][0][1] == "INVOKER"
        assert kept["view"] == [(f"{role}@", "INVOKER")]
        assert kept["event"] == [(f"{role}@", "DEFINER")]
        assert kept["trigger"] == [(f"{role}@", "DEFINER")]
        # A read-only session gets its own rights through them, not the migration role's.
        run(server, f"GRANT EXECUTE ON PROCEDURE app.{made['procedure']} TO '{reader}'@'%'")
        run(server, f"GRANT EXECUTE ON FUNCTION app.{made['function']} TO '{reader}'@'%'")
        with pytest.raises(pymysql.err.OperationalError, match="INSERT command denied"):
            as_user(server, reader, f"CALL app.{made['procedure']}()")
        with pytest.raises(pymysql.err.OperationalError, match="SELECT command denied"):
            as_user(server, reader, f"SELECT app.{made['function']}()")
        with pytest.raises(pymysql.err.OperationalError, match="lack rights to use them"):
            as_user(server, reader, f"SELECT code FROM app.{made['view']}")
        # The kept trigger works for a writer (with a host, it failed every write before).
        run(server, f"INSERT INTO app.{made['table']} (note) VALUES ('kept')")
        assert run(server, f"SELECT note FROM app.{made['table']}") == [("kept [trigger]",)]
        # A second revocation of the template finds them already as they should be.
        other = create(server, new_name("rkeep"), role)
        assert revoke(server, other) == 0
        assert objects_named(server, made) == kept
    finally:
        drop_made(server, made)
        revoke(server, name)
        revoke(server, reader)


def test_check_config_warns_of_objects_defined_as_a_drop_templates_role(
    server: MariaDBServer,
    target: TargetSection,
) -> None:
    def role_warnings() -> list[str]:
        return [w for w in server_problems(target)[1] if "is the DEFINER of" in w]

    assert role_warnings() == []
    # An administrator defines things as the roles: revocation will drop the "drop"
    # template's (whoever made them); a "keep" template's are what kept objects look like.
    run(server, "CREATE DEFINER = dbaccess_readwrite PROCEDURE app.admin_rw() SELECT 1")
    run(
        server,
        "CREATE DEFINER = dbaccess_readwrite SQL SECURITY INVOKER VIEW app.admin_v "
        "AS SELECT 1 AS one",
    )
    run(server, "CREATE DEFINER = dbaccess_migrate PROCEDURE app.admin_mig() SELECT 1")
    try:
        found = role_warnings()
        assert len(found) == 1 and "'dbaccess_readwrite' is the DEFINER of 2 " in found[0]
        assert 'session_objects is "drop"' in found[0]
        # As the warning says: the next revocation of a read-write session drops them.
        name = create(server, new_name("adm"), "dbaccess_readwrite")
        assert revoke(server, name) == 0
        assert not run(server, "SELECT 1 FROM mysql.proc WHERE db = 'app' AND name = 'admin_rw'")
        assert not run(
            server,
            "SELECT 1 FROM information_schema.VIEWS "
            "WHERE TABLE_SCHEMA = 'app' AND TABLE_NAME = 'admin_v'",
        )
        assert role_warnings() == []
        assert run(server, "SELECT 1 FROM mysql.proc WHERE db = 'app' AND name = 'admin_mig'")
    finally:
        for statement in [
            "DROP PROCEDURE IF EXISTS app.admin_rw",
            "DROP VIEW IF EXISTS app.admin_v",
            "DROP PROCEDURE IF EXISTS app.admin_mig",
        ]:
            run(server, statement)
    # A server bootstrapped by an older release: check-config says to run it again.
    run(server, "DROP PROCEDURE dbaccess.group_role_objects")
    try:
        assert any(
            "no dbaccess.group_role_objects): run it again" in w for w in server_problems(target)[1]
        )
    finally:
        admin = server.connect()
        try:
            apply(target, admin, PROVISIONER_PASSWORD)
        finally:
            admin.close()
    assert role_warnings() == [] and not any(
        "run it again" in w for w in server_problems(target)[1]
    )


def test_role_objects_go_even_when_the_account_is_gone_first(
    server: MariaDBServer,
    secret: str,
) -> None:
    # A revocation retried after DROP USER (or an account an administrator dropped): the
    # recorded group role still finds what the session defined as it.
    name = create(server, new_name("rgone"), "dbaccess_readwrite")
    made = make_role_objects(server, name, "CURRENT_ROLE")
    try:
        run(server, f"DROP USER '{name}'@'%'")
        assert registered(server, name) and all(objects_named(server, made).values())
        assert revoke(server, name) == 0
        assert objects_named(server, made) == {
            "procedure": [],
            "function": [],
            "event": [],
            "trigger": [],
            "view": [],
        }
        assert not registered(server, name)
    finally:
        drop_made(server, made)
