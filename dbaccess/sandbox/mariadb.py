"""A private MariaDB server on 127.0.0.1 in a temporary directory.

After ``mariadb-install-db`` the anonymous accounts are dropped: they shadow ``u@'%'`` on
local logins. When we are root the server runs as the ``mysql`` account.
"""

from __future__ import annotations

import os
import secrets
import subprocess
from pathlib import Path
from typing import Any

import pymysql

from dbaccess.sandbox.processes import (
    ServiceError,
    end_process,
    find_binary,
    free_port,
    hand_over,
    make_traversable,
    port_open,
    service_user,
    spawn_logged,
    wait_started,
)

# sun_path holds 108 bytes with the final NUL on Linux.
SOCKET_PATH_MAX = 107


class MariaDBServer:
    host = "127.0.0.1"
    admin_user = "root"

    def __init__(self, workdir: Path, *, port: int | None = None) -> None:
        self.workdir = workdir.absolute()  # servers change directory; paths must not be relative
        self.port = port or free_port()
        self.admin_password = secrets.token_urlsafe(24)
        self.data_dir = workdir / "data"
        self.socket = workdir / "mysqld.sock"
        self.log_path = workdir / "mariadb.log"
        self._user = service_user("mysql")
        self._process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60) -> None:
        if len(os.fsencode(self.socket)) > SOCKET_PATH_MAX:
            # mariadbd would only say so in its log, after a slow start-up
            raise ServiceError(
                f"the MariaDB socket path {self.socket} is longer than a Unix socket "
                f"allows ({SOCKET_PATH_MAX} bytes); start it in a shorter directory"
            )
        self.workdir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.workdir, 0o700)
        # Its own temporary directory: the caller's TMPDIR (e.g. pam_tmpdir's /tmp/user/0)
        # may be closed to the mysql account, and InnoDB then refuses to start.
        tmpdir = self.workdir / "tmp"
        tmpdir.mkdir(mode=0o700, exist_ok=True)
        env = {**os.environ, "TMPDIR": str(tmpdir)}
        hand_over(self.workdir, self._user)
        if self._user:  # a service account runs the server: it must reach its directory
            make_traversable(self.workdir)
        install = find_binary("mariadb-install-db", "/usr/bin/mariadb-install-db")
        user_flag = [f"--user={self._user}"] if self._user else []
        result = subprocess.run(
            [
                install,
                "--no-defaults",
                f"--datadir={self.data_dir}",
                *user_flag,
                "--auth-root-authentication-method=socket",
                "--skip-test-db",
            ],
            capture_output=True,
            text=True,
            env=env,
        )
        if result.returncode != 0:
            raise ServiceError(f"mariadb-install-db failed:\n{result.stdout}\n{result.stderr}")
        mariadbd = find_binary("mariadbd", "/usr/sbin/mariadbd")
        self._process = spawn_logged(
            [
                mariadbd,
                "--no-defaults",
                f"--datadir={self.data_dir}",
                f"--tmpdir={tmpdir}",
                f"--socket={self.socket}",
                f"--port={self.port}",
                "--bind-address=127.0.0.1",
                f"--pid-file={self.workdir / 'mariadbd.pid'}",
                f"--log-error={self.log_path}",
                "--skip-name-resolve",
                "--innodb-buffer-pool-size=32M",
                "--max-connections=200",  # the stack's [limits] fit within it
                "--event-scheduler=ON",
                "--skip-log-bin",
                "--innodb-flush-log-at-trx-commit=0",
                *user_flag,
            ],
            self.workdir / "mariadbd.out",
            env=env,
        )
        # the server writes its own log (--log-error): the reason for a failed start is there
        wait_started(
            self._process,
            self._socket_ready,
            timeout=timeout,
            what="MariaDB",
            log_path=self.log_path,
            stop=self.stop,
        )
        try:
            self._secure()
        except BaseException:
            self.stop()
            raise

    def _socket_ready(self) -> bool:
        if not port_open(self.port):  # PyMySQL leaks a socket when it cannot connect
            return False
        try:
            pymysql.connect(unix_socket=str(self.socket), user="root").close()
        except pymysql.err.OperationalError:
            return False
        return True

    def _secure(self) -> None:
        """Root gets a password over TCP; the anonymous accounts go."""
        conn = pymysql.connect(unix_socket=str(self.socket), user="root", autocommit=True)
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT user, host FROM mysql.user WHERE user = ''")
                for user, host in cur.fetchall():
                    cur.execute("DROP USER %s@%s", (user, host))
                cur.execute(
                    "CREATE USER 'root'@'127.0.0.1' IDENTIFIED BY %s", (self.admin_password,)
                )
                cur.execute("GRANT ALL PRIVILEGES ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION")
        finally:
            conn.close()

    @property
    def pid(self) -> int:
        """The server's pid (one process: its connections are threads)."""
        assert self._process is not None, "the server is not running"
        return self._process.pid

    def stop(self) -> None:
        process, self._process = self._process, None
        end_process(process, timeout=30)

    def connect(
        self,
        database: str | None = None,
        user: str | None = None,
        password: str | None = None,
        **kw: Any,
    ) -> pymysql.connections.Connection:
        kw.setdefault("autocommit", True)
        kw.setdefault("connect_timeout", 5)
        return pymysql.connect(
            host=self.host,
            port=self.port,
            user=user or self.admin_user,
            password=password if user else self.admin_password,
            database=database,
            **kw,
        )

    def version(self) -> str:
        conn = self.connect()
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT VERSION()")
                row = cur.fetchone()
        finally:
            conn.close()
        return str(row[0]) if row else "unknown"

    def __enter__(self) -> MariaDBServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
