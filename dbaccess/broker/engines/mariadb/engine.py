"""MariaDB/MySQL engine: calls the bootstrap's SQL SECURITY DEFINER procedures only.

Facts this module relies on (measured on MariaDB 10.11): the server gets a
mysql_native_password hash, never the password; ``DROP USER`` leaves live sessions working,
so ``dbaccess.revoke_user`` locks the account and kills its connections first; there is no
account expiry, so the server refuses expired users at login (init_connect) and the
broker's reaper and the server's EVENT drop them (see mariadb_bootstrap).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import pymysql

from dbaccess.broker.engines.base import (
    CALL_TIMEOUT,
    CONNECT_TIMEOUT,
    Account,
    CreateSlots,
    EngineError,
    EngineRefused,
    NewUser,
    TargetUnreachable,
    not_bootstrapped,
    revoke_each,
)
from dbaccess.broker.engines.health import TargetHealth
from dbaccess.broker.engines.mariadb.bootstrap import (
    LIFETIME_ERRNO,
    LIFETIME_REFUSAL,
    MAX_USERNAME,
    native_password_hash,
)
from dbaccess.broker.settings import TargetSection


def _naive_utc(moment: datetime) -> datetime:
    # DATETIME has no zone; the procedures compare with UTC_TIMESTAMP().
    return moment.astimezone(UTC).replace(tzinfo=None, microsecond=0)


class MariaDBEngine:
    max_username_length = MAX_USERNAME

    def __init__(self, name: str, target: TargetSection) -> None:
        self.name = name
        self.target = target
        self._creating = CreateSlots(name, target.create_concurrency)
        self.health = TargetHealth(name)

    def _connect(self) -> pymysql.connections.Connection:
        try:
            return pymysql.connect(
                host=self.target.host,
                port=self.target.port,
                user=self.target.provisioner.user,
                password=self.target.provisioner.read_password(),
                connect_timeout=CONNECT_TIMEOUT,
                # Socket timeouts for every read and write, the login handshake included
                # (PyMySQL has none by default: a stopped server held a call forever).
                read_timeout=CALL_TIMEOUT,
                write_timeout=CALL_TIMEOUT,
                autocommit=True,
                program_name="dbaccess-broker",
            )
        except pymysql.err.Error as exc:
            code = exc.args[0] if exc.args else None
            said = f"cannot connect to target '{self.name}': {_message(exc)}"
            if isinstance(code, int) and code < 2000:
                # the server's own refusal (1045 access denied, 1040 too many
                # connections): it answers, so it is not down
                self.health.answered()
                raise EngineError(said) from None
            # 2003 refused or timed out, 2013 lost during the handshake (a client error)
            self.health.failed(said)
            raise TargetUnreachable(said) from None

    @property
    def troubled(self) -> bool:
        return self.health.down

    def ping(self) -> None:
        with self.health.pinging():
            self._call("checking the target", "SELECT 1", ())

    def _call(
        self,
        what: str,
        sql: str,
        args: tuple[object, ...],
        then: str | None = None,
        results: list[list[tuple[object, ...]]] | None = None,
    ) -> list[tuple[object, ...]]:
        """Run ``sql`` (and ``then``, on the same connection); return the last result
        (``results``, when given, gets each result of ``sql``: a procedure's SELECTs).
        The bootstrap's lifetime refusal (renew_user past creation + max_lifetime) is an
        EngineRefused, told by its error number."""
        conn = self._connect()
        try:
            with conn.cursor() as cur:
                cur.execute(sql, args)
                if results is not None:
                    results.append(list(cur.fetchall()))
                    while cur.nextset():
                        results.append(list(cur.fetchall()))
                if then is not None:
                    cur.execute(then)
                rows = list(cur.fetchall())
        except pymysql.err.Error as exc:
            code = exc.args[0] if exc.args else None
            if isinstance(exc, pymysql.err.OperationalError) and code in (2006, 2013, 2014, 2055):
                # gone away, lost, out of sync, read error: the server did not answer.
                # Not retried: there is no pool here, so no connection left over from
                # before a restart (each call logs in afresh), and a call cut off midway
                # may have taken effect.
                said = f"{what} on '{self.name}' failed: {_message(exc)}"
                self.health.failed(said)
                raise TargetUnreachable(said) from None
            self.health.answered()  # an error of the server's own: it answers
            if code == LIFETIME_ERRNO or (
                # a bootstrap older than LIFETIME_ERRNO signals 45000 (errno 1644) with it
                code == 1644 and LIFETIME_REFUSAL in _message(exc)
            ):
                raise EngineRefused(_message(exc).removeprefix("dbaccess: ")) from None
            # 1305: no such procedure; 1370: no EXECUTE on it (another target's bootstrap)
            hint = f"; {not_bootstrapped(self.name)}" if code in (1305, 1370) else ""
            raise EngineError(f"{what} on '{self.name}' failed: {_message(exc)}{hint}") from None
        finally:
            conn.close()
        self.health.answered()
        return rows

    def create_user(self, user: NewUser) -> None:
        timeout = user.role.statement_timeout
        password_hash = native_password_hash(user.password)
        with self._creating.hold():
            self._call(
                f"creating {user.username}",
                "CALL dbaccess.create_user(%s, %s, %s, %s, %s, %s, %s)",
                (
                    user.username,
                    password_hash,
                    user.role.group_role,
                    _naive_utc(user.expires_at),
                    user.role.connection_limit,
                    timeout.total_seconds() if timeout else None,
                    user.log_statements,
                ),
            )

    def renew_user(self, username: str, expires_at: datetime) -> None:
        self._call(
            f"renewing {username}",
            "CALL dbaccess.renew_user(%s, %s)",
            (username, _naive_utc(expires_at)),
        )

    def revoke_user(self, username: str) -> None:
        rows = self._call(
            f"revoking {username}",
            "CALL dbaccess.revoke_user(%s, @dbaccess_remaining)",
            (username,),
            then="SELECT @dbaccess_remaining",
        )
        remaining = int(str(rows[0][0])) if rows and rows[0][0] is not None else 0
        if remaining:
            raise EngineError(f"{remaining} session(s) of {username} did not end yet")

    def revoke_users(self, usernames: Sequence[str]) -> dict[str, str | None]:
        # One connection per call here, and no batch procedure: one by one.
        return revoke_each(self, usernames)

    def close(self) -> None:
        pass  # one connection per call: PyMySQL has no pool, and a login here is cheap

    def list_managed_users(self) -> list[str]:
        rows = self._call("listing users", "CALL dbaccess.managed_users()", ())
        return sorted(str(row[0]) for row in rows)

    def inventory(self) -> list[Account]:
        results: list[list[tuple[object, ...]]] = []
        self._call("reading the accounts", "CALL dbaccess.inventory()", (), results=results)
        definers = {str(definer): int(str(n)) for definer, n in results[1]}
        return _accounts(results[0], definers)


def _accounts(rows: list[tuple[Any, ...]], definers: dict[str, int]) -> list[Account]:
    """The accounts of ``CALL dbaccess.inventory()``, with roles of roles followed (a role
    granted to a role is held by whoever holds the first) and the roles themselves left
    out: they cannot log in."""
    powers: dict[str, tuple[str, ...]] = {}
    grants: dict[str, list[str]] = {}
    logins = []
    for user, host, is_role, sup, every, grant, create, file, roles, expires, ours in rows:
        words = (("SUPER", sup), ("ALL PRIVILEGES", every), ("GRANT OPTION", grant),
                 ("CREATE USER", create), ("FILE", file))  # fmt: skip
        key = str(user) if is_role == "Y" else f"{user}@{host}"
        powers[key] = tuple(word for word, on in words if on)
        grants[key] = str(roles).split("\n") if roles else []
        if is_role != "Y":
            logins.append((key, str(user), expires, definers.get(key, 0), ours))
    accounts = []
    for key, user_name, expires, owns, ours in logins:
        held: list[str] = []
        todo = list(grants[key])
        while todo:
            role = todo.pop()
            if role not in held:
                held.append(role)
                todo += grants.get(role, [])
        held.sort()
        accounts.append(
            Account(
                name=key,
                user=user_name,
                powers=powers[key],
                member_of=tuple(held),
                privileged_roles=tuple(r for r in held if powers.get(r)),
                password_expires=None
                if expires is None
                else datetime.fromisoformat(str(expires)).replace(tzinfo=UTC),
                owns=int(owns),
                managed=bool(ours),
            )
        )
    return accounts


def _message(exc: BaseException) -> str:
    """PyMySQL errors are (code, message); show the message."""
    if len(exc.args) >= 2:
        return str(exc.args[1])
    return str(exc) or type(exc).__name__


ENGINE = MariaDBEngine  # what engines/registry.py finds in every engine's package
