"""PostgreSQL engine.

Facts this module relies on (measured on PostgreSQL 15):
- the password reaches the server only as a SCRAM-SHA-256 verifier computed here by libpq
  (a failing statement is written to the server log, so a plaintext password would be too);
- ``VALID UNTIL`` is checked only at password login, and ``DROP ROLE``/``NOLOGIN`` leave live
  sessions running, so revocation terminates the role's backends before dropping it;
- per-role settings are not inherited from group roles, so they are set on each user.
"""

from __future__ import annotations

import time

import psycopg
from psycopg import sql

from dbaccess.broker.engines.base import EngineError, NewUser
from dbaccess.broker.settings import TargetSection

TERMINATE_TIMEOUT = 5.0


class PostgresEngine:
    max_username_length = 63

    def __init__(self, name: str, target: TargetSection) -> None:
        self.name = name
        self.target = target

    def _connect(self) -> psycopg.Connection[tuple[object, ...]]:
        try:
            return psycopg.connect(
                host=self.target.host,
                port=self.target.port,
                dbname=self.target.database,
                user=self.target.provisioner.user,
                password=self.target.provisioner.read_password(),
                sslmode=self.target.sslmode,
                connect_timeout=5,
                application_name="dbaccess-broker",
                autocommit=True,
            )
        except psycopg.Error as exc:
            raise EngineError(
                f"cannot connect to target '{self.name}': {_first_line(exc)}"
            ) from None

    def create_user(self, user: NewUser) -> None:
        with self._connect() as conn:
            verifier = conn.pgconn.encrypt_password(
                user.password.encode(), user.username.encode(), b"scram-sha-256"
            ).decode()
            ident = sql.Identifier(user.username)
            statements = [
                sql.SQL(
                    "CREATE ROLE {user} LOGIN PASSWORD {verifier} VALID UNTIL {until} "
                    "CONNECTION LIMIT {limit} IN ROLE {group}"
                ).format(
                    user=ident,
                    verifier=sql.Literal(verifier),
                    until=sql.Literal(user.expires_at.isoformat()),
                    limit=sql.Literal(user.role.connection_limit),
                    group=sql.Identifier(user.role.group_role),
                )
            ]
            if user.role.read_only:
                statements.append(
                    sql.SQL("ALTER ROLE {} SET default_transaction_read_only = on").format(ident)
                )
            if user.role.statement_timeout is not None:
                ms = int(user.role.statement_timeout.total_seconds() * 1000)
                statements.append(
                    sql.SQL("ALTER ROLE {} SET statement_timeout = {}").format(
                        ident, sql.Literal(ms)
                    )
                )
            try:
                with conn.transaction():
                    for statement in statements:
                        conn.execute(statement)
            except psycopg.Error as exc:
                raise EngineError(
                    f"creating {user.username} on '{self.name}' failed: {_first_line(exc)}"
                ) from None

    def revoke_user(self, username: str) -> None:
        ident = sql.Identifier(username)
        try:
            with self._connect() as conn:
                exists = conn.execute(
                    "SELECT 1 FROM pg_roles WHERE rolname = %s", (username,)
                ).fetchone()
                if exists is None:
                    return
                conn.execute(sql.SQL("ALTER ROLE {} NOLOGIN").format(ident))
                self._terminate_sessions(conn, username)
                with conn.transaction():
                    # REASSIGN/DROP OWNED need membership in the role being dropped.
                    conn.execute(sql.SQL("GRANT {} TO CURRENT_USER").format(ident))
                    conn.execute(sql.SQL("REASSIGN OWNED BY {} TO CURRENT_USER").format(ident))
                    conn.execute(sql.SQL("DROP OWNED BY {}").format(ident))
                    conn.execute(sql.SQL("DROP ROLE {}").format(ident))
        except psycopg.Error as exc:
            raise EngineError(
                f"revoking {username} on '{self.name}' failed: {_first_line(exc)}"
            ) from None

    def _terminate_sessions(
        self, conn: psycopg.Connection[tuple[object, ...]], username: str
    ) -> None:
        # pg_terminate_backend only signals; poll until the backends are really gone so
        # DROP ROLE does not race a session that is still running.
        deadline = time.monotonic() + TERMINATE_TIMEOUT
        while True:
            rows = conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
                (username,),
            ).fetchall()
            if not rows:
                return
            if time.monotonic() > deadline:
                raise EngineError(f"{len(rows)} session(s) of {username} did not terminate")
            time.sleep(0.01)

    def list_managed_users(self) -> list[str]:
        with self._connect() as conn:
            rows = conn.execute(
                "SELECT rolname FROM pg_roles WHERE starts_with(rolname, %s) ORDER BY 1",
                (self.target.username_prefix,),
            ).fetchall()
        return [str(row[0]) for row in rows]


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
