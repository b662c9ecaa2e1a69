"""A private PostgreSQL server on 127.0.0.1 in a temporary directory.

Authentication is scram-sha-256, never ``trust``: under trust, passwords and VALID UNTIL
are ignored, so tests of expiry and wrong passwords would prove nothing. When we are root
the server runs as the ``postgres`` account (``initdb`` and ``postgres`` refuse root).
"""

from __future__ import annotations

import os
import pwd
import re
import secrets
import signal
import subprocess
from pathlib import Path
from typing import Any

import psycopg

from dbaccess.sandbox.processes import (
    ServiceError,
    end_process,
    find_binary,
    free_port,
    hand_over,
    make_traversable,
    service_user,
    spawn_logged,
    wait_started,
)

PG_BIN_GLOB = "/usr/lib/postgresql/*/bin/"


class PostgresServer:
    host = "127.0.0.1"
    admin_user = "dbaccess_admin"

    def __init__(self, workdir: Path, *, port: int | None = None) -> None:
        self.workdir = workdir.absolute()  # servers change directory; paths must not be relative
        self.port = port or free_port()
        self.admin_password = secrets.token_urlsafe(24)
        # pg_hba.conf lines before the catch-all (the first matching line decides)
        self.hba_first: list[str] = []
        # (certificate, key) PEM files: the server speaks TLS with them (set before start)
        self.tls: tuple[Path, Path] | None = None
        # postgresql.conf lines after the test server's own (set before start)
        self.extra_conf: list[str] = []
        # a directory for the server's Unix socket too, with password logins on it (set
        # before start); none by default: TCP on 127.0.0.1 only
        self.socket_dir: Path | None = None
        self.data_dir = workdir / "data"
        self.log_path = workdir / "postgres.log"
        self._user = service_user("postgres")
        self._process: subprocess.Popen[bytes] | None = None

    def _run_as(self) -> dict[str, Any]:
        return {"user": self._user, "group": self._user} if self._user else {}

    def start(self, timeout: float = 60) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.workdir, 0o700)
        pwfile = self.workdir / "pwfile"
        pwfile.write_text(self.admin_password + "\n")
        os.chmod(pwfile, 0o600)
        hand_over(self.workdir, self._user)
        if self._user:  # a service account runs the server: it must reach its directory
            make_traversable(self.workdir)
        if self.socket_dir is not None:  # the server's and ours (root's) alone
            self.socket_dir.mkdir(parents=True, exist_ok=True)
            os.chmod(self.socket_dir, 0o700)
            hand_over(self.socket_dir, self._user)
            if self._user:
                make_traversable(self.socket_dir)
        initdb = find_binary("initdb", PG_BIN_GLOB + "initdb")
        try:
            result = subprocess.run(
                [
                    initdb,
                    "-D",
                    str(self.data_dir),
                    "--auth=scram-sha-256",
                    f"--username={self.admin_user}",
                    f"--pwfile={pwfile}",
                    "-E",
                    "UTF8",
                    "--locale=C",
                    "--no-sync",
                ],
                capture_output=True,
                text=True,
                **self._run_as(),
            )
        finally:
            pwfile.unlink(missing_ok=True)
        if result.returncode != 0:
            raise ServiceError(f"initdb failed:\n{result.stdout}\n{result.stderr}")
        (self.data_dir / "pg_hba.conf").write_text(
            "# dbaccess test server: passwords only, loopback only\n"
            + "".join(line + "\n" for line in self.hba_first)
            + "host all all 127.0.0.1/32 scram-sha-256\n"
            + ("local all all scram-sha-256\n" if self.socket_dir is not None else "")
        )
        with (self.data_dir / "postgresql.conf").open("a") as conf:
            conf.write(
                "\n# dbaccess test server\n"
                f"listen_addresses = '127.0.0.1'\nport = {self.port}\n"
                "unix_socket_directories = ''\npassword_encryption = 'scram-sha-256'\n"
                "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
                "shared_buffers = 32MB\nmax_connections = 200\n"
                "logging_collector = off\nlog_destination = 'stderr'\nlog_connections = on\n"
                "log_line_prefix = '%m [%p] user=%u db=%d '\n"
            )
            if self.tls is not None:
                # copies in the data directory: the server wants its key 0600 and its own
                for source, name in zip(self.tls, ("server.crt", "server.key"), strict=True):
                    (self.data_dir / name).write_bytes(source.read_bytes())
                    os.chmod(self.data_dir / name, 0o600)
                conf.write("ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n")
            if self.socket_dir is not None:
                conf.write(f"unix_socket_directories = '{self.socket_dir}'\n")
            conf.write("".join(line + "\n" for line in self.extra_conf))
        hand_over(self.data_dir, self._user)
        self.resume(timeout)

    def resume(self, timeout: float = 60) -> None:
        """Start the server again on its existing data directory (after ``stop``)."""
        postgres = find_binary("postgres", PG_BIN_GLOB + "postgres")
        self._process = spawn_logged(
            [postgres, "-D", str(self.data_dir)], self.log_path, user=self._user
        )
        wait_started(
            self._process,
            self._ready,
            timeout=timeout,
            what="PostgreSQL",
            log_path=self.log_path,
            stop=self.stop,
        )

    @property
    def uid(self) -> int:
        """The user id the server runs as (what a Unix-socket client sees, SO_PEERCRED)."""
        return pwd.getpwnam(self._user).pw_uid if self._user else os.getuid()

    @property
    def socket_path(self) -> Path:
        """The server's Unix socket (with ``socket_dir`` set)."""
        assert self.socket_dir is not None, "the server has no Unix socket"
        return self.socket_dir / f".s.PGSQL.{self.port}"

    @property
    def pid(self) -> int:
        """The postmaster's pid, which is also its process group's (the backends')."""
        assert self._process is not None, "the server is not running"
        return self._process.pid

    def _ready(self) -> bool:
        try:
            self.connect().close()
        except psycopg.OperationalError:
            return False
        return True

    def stop(self) -> None:
        process, self._process = self._process, None
        end_process(process, timeout=20, sig=signal.SIGINT)  # PostgreSQL's "fast" shutdown

    def connect(
        self,
        dbname: str = "postgres",
        user: str | None = None,
        password: str | None = None,
        **kw: Any,
    ) -> psycopg.Connection[tuple[Any, ...]]:
        kw.setdefault("autocommit", True)
        kw.setdefault("connect_timeout", 5)
        return psycopg.connect(
            host=self.host,
            port=self.port,
            dbname=dbname,
            user=user or self.admin_user,
            password=password if user else self.admin_password,
            sslmode="disable",
            **kw,
        )

    def version(self) -> str:
        with self.connect() as conn:
            row = conn.execute("SHOW server_version").fetchone()
        match = re.match(r"[\d.]+", str(row[0]) if row else "")
        return match.group(0) if match else "unknown"

    def __enter__(self) -> PostgresServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
