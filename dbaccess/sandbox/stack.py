"""A whole local stack: PostgreSQL with a demo database, the OIDC provider and a broker.

The broker runs as a real ``dbaccess-broker serve`` process. ``cli_env()`` gives the
environment a ``dbaccess`` process needs to use this stack (its own config, runtime dir
and keyring), so nothing touches the user's real configuration.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from dbaccess.broker.engines.mariadb import bootstrap as maria_bootstrap
from dbaccess.broker.engines.postgres import bootstrap
from dbaccess.broker.settings import load_settings
from dbaccess.sandbox.idp import OidcProvider
from dbaccess.sandbox.mariadb import MariaDBServer
from dbaccess.sandbox.postgres import PostgresServer
from dbaccess.sandbox.processes import (
    end_process,
    free_port,
    port_open,
    spawn_logged,
    wait_started,
)
from dbaccess.sandbox.webhook import WebhookSink

PROVISIONER = "dbaccess_provisioner"
PROVISIONER_ENV = "DBACCESS_SANDBOX_PROVISIONER_PASSWORD"
STORE_ENV = "DBACCESS_SANDBOX_STORE_PASSWORD"

BROKER_TOML = """\
[broker]
{store}
reaper_interval = "{reaper_interval}"
auditor_groups = ["auditors"]
reconcile_interval = "{reconcile_interval}"
creation_timeout = "{creation_timeout}"
request_ttl = "{request_ttl}"

[identity]
issuer = "{issuer}"
client_id = "{client_id}"
scopes = ["openid", "profile", "email", "groups", "offline_access"]
groups_claim = "groups"

[targets.demo]
engine = "postgres"
host = "127.0.0.1"
port = {pg_port}
database = "demo"
sslmode = "disable"
provisioner = {{ user = "{provisioner}", password_env = "{provisioner_env}" }}

[targets.demo.roles.readonly]
group_role = "dbaccess_readonly"
read_only = true
statement_timeout = "5m"

[targets.demo.roles.readwrite]
group_role = "dbaccess_readwrite"

[targets.shop]
engine = "mariadb"
host = "127.0.0.1"
port = {maria_port}
database = "shop"
provisioner = {{ user = "{provisioner}", password_env = "{provisioner_env}" }}

[targets.shop.roles.readonly]
group_role = "dbaccess_readonly"
statement_timeout = "5m"

[targets.shop.roles.readwrite]
group_role = "dbaccess_readwrite"

[[rules]]
name = "dev-readonly"
groups = ["dev"]
targets = ["demo", "shop"{gateway_rule_targets}]
roles = ["readonly"]
max_duration = "{max_duration}"

[[rules]]
name = "dba-readwrite"
groups = ["dba"]
targets = ["demo", "shop"{gateway_rule_targets}]
roles = ["readonly", "readwrite"]
max_duration = "8h"
require_reason = true

# Developers may write too, once two leads approved (never their own request).
[[rules]]
name = "dev-readwrite"
groups = ["dev"]
targets = ["demo", "shop"{gateway_rule_targets}]
roles = ["readwrite"]
max_duration = "1h"
approvals = 2
approver_groups = ["leads"]

[breakglass]
groups = ["oncall"]
targets = {{ demo = "readwrite", shop = "readwrite"{gateway_breakglass} }}
incident_pattern = "INC-[0-9]+"
max_duration = "1h"
reviewer_groups = ["auditors", "oncall"]

{gateway}
# Approvals from a browser, at {broker_url}/web/: signed in through the provider's web
# client (the authorization code flow with PKCE); the cookie key is made next to this file.
[web]
public_url = "{broker_url}"
client_id = "{web_client_id}"
cookie_key_file = "web-cookie.key"

[notify]
webhooks = [{webhooks}]

# Caps on live sessions and their connections (docs/broker.md, "Limits"): higher than the
# defaults, for the test suite's many sessions of one person, and within this stack's
# servers (max_connections = 200 each).
[limits]
{limits}
"""

# With ``Stack(gateway=True)``: the gateway, and a target reached only through it. Its
# database admits session users from the gateway's source address alone (pg_hba.conf),
# so a session user of "vault" has no other path in. Its users have a prefix of their
# own: demo's reconciler, on the same server, lists users by prefix.
GATEWAY_TOML = """\
[gateway]
listen = "127.0.0.1:{gateway_port}"
tls_cert_file = "gateway/server.pem"
tls_key_file = "gateway/server.key"
ca_file = "gateway/ca.pem"
key_file = "gateway/gateway.key"
upstream_source_address = "{gateway_source}"

[targets.vault]
engine = "postgres"
host = "127.0.0.1"
port = {pg_port}
database = "vault"
sslmode = "disable"
access = "gateway"{gateway_socket}
username_prefix = "gw_"
provisioner = {{ user = "{provisioner}", password_env = "{provisioner_env}" }}

[targets.vault.roles.readonly]
group_role = "dbaccess_readonly"
read_only = true
statement_timeout = "5m"
connection_limit = 16             # a GUI opens several; the tests spread them over gateways

# Checked by the gateway before a statement runs: reads and exports only, at most 100,000
# rows per result (the grants make the session read-only as well).
[targets.vault.roles.readonly.gateway]
statements = ["read", "copy_out"]
max_rows_per_result = 100000

[targets.vault.roles.readwrite]
group_role = "dbaccess_readwrite"

# Writes, but no DDL, role changes or server-side code: stopped before they run.
[targets.vault.roles.readwrite.gateway]
statements = ["read", "write", "copy_out", "copy_in"]
idle_timeout = "30m"
"""
GATEWAY_SOURCE = "127.0.0.2"  # loopback too, but not the address clients come from

# The stack's [limits]: 160 + 20 break-glass + the broker's pool of 10 < 200 - 3 reserved.
SANDBOX_LIMITS = {
    "sessions_per_person": 30,
    "connections_per_person": 150,
    "sessions_per_target": 32,
    "connections_per_target": 160,
    "breakglass_sessions_per_person": 4,
    "breakglass_connections_per_target": 20,
}

DEMO_SQL = [
    "CREATE TABLE orders (id serial PRIMARY KEY, customer text NOT NULL,"
    " total numeric(10, 2) NOT NULL, created_at timestamptz NOT NULL DEFAULT now())",
    "INSERT INTO orders (customer, total) VALUES ('ada', 42.00), ('grace', 17.50),"
    " ('linus', 99.95)",
    "GRANT CONNECT ON DATABASE demo TO dbaccess_readonly, dbaccess_readwrite",
    "GRANT USAGE ON SCHEMA public TO dbaccess_readonly, dbaccess_readwrite",
    "GRANT SELECT ON ALL TABLES IN SCHEMA public TO dbaccess_readonly",
    # pg_dump reads each sequence's position (SELECT last_value): a read, but not one that
    # "ALL TABLES" covers
    "GRANT SELECT ON ALL SEQUENCES IN SCHEMA public TO dbaccess_readonly",
    "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO dbaccess_readwrite",
    "GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO dbaccess_readwrite",
]

SHOP_SQL = [
    "CREATE DATABASE shop",
    "CREATE TABLE shop.orders (id INT AUTO_INCREMENT PRIMARY KEY, customer VARCHAR(80) NOT NULL,"
    " total DECIMAL(10, 2) NOT NULL)",
    "INSERT INTO shop.orders (customer, total) VALUES ('ada', 42.00), ('grace', 17.50)",
    "CREATE VIEW shop.big_orders AS SELECT id, customer, total FROM shop.orders WHERE total > 20",
    # SHOW VIEW: mysqldump needs it for SHOW CREATE VIEW. Not LOCK TABLES (a reader could
    # block every writer; the option file asks mysqldump for --single-transaction instead)
    # nor TRIGGER (it also creates and drops triggers): a dump by these roles has no triggers.
    "GRANT SELECT, SHOW VIEW ON shop.* TO dbaccess_readonly",
    "GRANT SELECT, INSERT, UPDATE, DELETE, SHOW VIEW ON shop.* TO dbaccess_readwrite",
]


@dataclass
class Stack:
    workdir: Path
    reaper_interval: str = "1s"
    reconcile_interval: str = "1m"
    creation_timeout: str = "1m"
    # Keep the broker's state in this stack's PostgreSQL (as several replicas would).
    store_on_postgres: bool = False
    broker_workers: int = 1
    max_duration: str = "1h"
    request_ttl: str = "1h"
    limits: dict[str, int] = field(default_factory=lambda: dict(SANDBOX_LIMITS))
    # A gateway process and the "vault" target behind it (docs/gateway.md).
    gateway: bool = False
    # With the gateway: it reaches "vault" by PostgreSQL's Unix socket (gateway_socket),
    # and the session users have no TCP path at all.
    gateway_socket: bool = False
    postgres: PostgresServer = field(init=False)
    mariadb: MariaDBServer = field(init=False)
    idp: OidcProvider = field(init=False)
    broker_port: int = field(init=False)
    _broker: subprocess.Popen[bytes] | None = field(default=None, init=False)
    _gateway: subprocess.Popen[bytes] | None = field(default=None, init=False)
    gateway_port: int = field(init=False)
    provisioner_password: str = field(
        default_factory=lambda: secrets.token_urlsafe(24), init=False, repr=False
    )

    def __post_init__(self) -> None:
        self.workdir = self.workdir.absolute()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.postgres = PostgresServer(self.workdir / "postgres")
        self.mariadb = MariaDBServer(self.workdir / "mariadb")
        self.idp = OidcProvider(self.workdir / "idp")
        self.broker_port = free_port()
        self.gateway_port = free_port()
        if self.gateway:
            pg = self.postgres
            pg.hba_first = [
                f"host vault {PROVISIONER} 127.0.0.1/32 scram-sha-256",
                f"host vault {pg.admin_user} 127.0.0.1/32 scram-sha-256",
                f"host vault all {GATEWAY_SOURCE}/32 scram-sha-256",
                "host vault all all reject",
            ]
            if self.gateway_socket:  # then `local all all`, after these: by the socket only
                pg.socket_dir = self.workdir / "pg-socket"
        # Break-glass and approval events land here, as they would in a chat channel.
        self.webhooks = WebhookSink(self.workdir / "webhooks.jsonl")

    @property
    def broker_url(self) -> str:
        return f"http://127.0.0.1:{self.broker_port}"

    @property
    def broker_log(self) -> Path:
        return self.workdir / "broker" / "broker.log"

    @property
    def broker_config(self) -> Path:
        return self.workdir / "broker" / "broker.toml"

    def start(self) -> None:
        try:
            self.postgres.start()
            self.mariadb.start()
            self.idp.start()
            self.webhooks.start()
            self._write_broker_config()
            self._create_demo_database()
            self._create_shop_database()
            if self.gateway:
                self._create_vault_database()
            self.start_broker()
            if self.gateway:
                self.start_gateway()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        self.stop_gateway()
        self.stop_broker()
        self.webhooks.stop()
        self.idp.stop()
        self.mariadb.stop()
        self.postgres.stop()

    def __enter__(self) -> Stack:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def cli_env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """Environment for a ``dbaccess`` process that should use this stack."""
        env = dict(os.environ if base is None else base)
        home = self.workdir / "cli"
        (home / "runtime").mkdir(parents=True, exist_ok=True, mode=0o700)
        env.update(
            {
                "DBACCESS_CONFIG_DIR": str(home / "config"),
                "DBACCESS_RUNTIME_DIR": str(home / "runtime"),
                "DBACCESS_CACHE_DIR": str(home / "cache"),  # names for shell completion
                "DBACCESS_BROKER": self.broker_url,
                # The test provider sends no polling interval; RFC 8628 would make us wait 5 s.
                "DBACCESS_DEVICE_POLL_INTERVAL": "0.2",
            }
        )
        return env

    def _create_demo_database(self) -> None:
        """The demo database, bootstrapped as a DBA would: group roles, definer functions,
        a powerless provisioner; then the grants that give the group roles their meaning."""
        with self.postgres.connect() as admin:
            admin.execute("CREATE DATABASE demo")
            if self.store_on_postgres:
                admin.execute("CREATE DATABASE broker_store")
        target = load_settings(self.broker_config).targets["demo"]
        with self.postgres.connect("demo") as demo:
            bootstrap.apply(target, demo, self.provisioner_password)
            for statement in DEMO_SQL:
                demo.execute(statement)

    def _create_vault_database(self) -> None:
        """The gateway's target: the demo's tables in a database of its own."""
        with self.postgres.connect() as admin:
            admin.execute("CREATE DATABASE vault")
        target = load_settings(self.broker_config).targets["vault"]
        with self.postgres.connect("vault") as vault:
            bootstrap.apply(target, vault, self.provisioner_password)
            for statement in DEMO_SQL:
                vault.execute(statement.replace("DATABASE demo", "DATABASE vault"))

    def _create_shop_database(self) -> None:
        """The same on MariaDB: bootstrap, then the grants of the group roles."""
        target = load_settings(self.broker_config).targets["shop"]
        admin = self.mariadb.connect()
        try:
            maria_bootstrap.apply(target, admin, self.provisioner_password)
            with admin.cursor() as cur:
                for statement in SHOP_SQL:
                    cur.execute(statement)
        finally:
            admin.close()

    def _write_broker_config(self) -> None:
        # the broker's store, logs, webhook log and cookie key: this user's only (the
        # working directory's parents may be open to the servers' service accounts)
        self.broker_config.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(self.broker_config.parent, 0o700)
        self.broker_config.write_text(
            BROKER_TOML.format(
                reaper_interval=self.reaper_interval,
                reconcile_interval=self.reconcile_interval,
                creation_timeout=self.creation_timeout,
                store=(
                    f'store = "postgresql+psycopg://{self.postgres.admin_user}@127.0.0.1:'
                    f'{self.postgres.port}/broker_store"\n'
                    f'store_password_env = "{STORE_ENV}"'
                    if self.store_on_postgres
                    else 'store = "sqlite:///broker.db"'
                ),
                issuer=self.idp.issuer,
                client_id=self.idp.client_id,
                broker_url=self.broker_url,
                web_client_id=self.idp.web_client_id,
                pg_port=self.postgres.port,
                maria_port=self.mariadb.port,
                provisioner=PROVISIONER,
                provisioner_env=PROVISIONER_ENV,
                max_duration=self.max_duration,
                webhooks=f'"{self.webhooks.url}"',
                request_ttl=self.request_ttl,
                limits="\n".join(f"{key} = {value}" for key, value in self.limits.items()),
                gateway=self._gateway_toml(),
                gateway_rule_targets=', "vault"' if self.gateway else "",
                gateway_breakglass=', vault = "readwrite"' if self.gateway else "",
            )
        )

    def _gateway_toml(self) -> str:
        if not self.gateway:
            return ""
        from dbaccess.sandbox.tls import make_certificates

        make_certificates(self.broker_config.parent / "gateway")  # ca.pem, server.pem, .key
        return GATEWAY_TOML.format(
            gateway_port=self.gateway_port,
            gateway_source=GATEWAY_SOURCE,
            pg_port=self.postgres.port,
            gateway_socket=f'\ngateway_socket = "{self.postgres.socket_path}"'
            f'\ngateway_socket_owner = "{self.postgres.uid}"'
            if self.gateway_socket
            else "",
            provisioner=PROVISIONER,
            provisioner_env=PROVISIONER_ENV,
        )

    @property
    def gateway_log(self) -> Path:
        return self.workdir / "broker" / "gateway.log"

    def spawn_gateway(self, log: Path, *extra: str) -> subprocess.Popen[bytes]:
        """Another ``dbaccess-broker gateway`` process on this stack's config (by default on
        the same address: the processes share it)."""
        return spawn_logged(
            [
                sys.executable,
                "-m",
                "dbaccess.broker",
                "gateway",
                "--config",
                str(self.broker_config),
                *extra,
            ],
            log,
            env=self.broker_env(),
            cwd=self.broker_config.parent,
        )

    def start_gateway(self) -> None:
        """Start ``dbaccess-broker gateway`` on this stack's config; wait until it listens."""
        self._gateway = self.spawn_gateway(self.gateway_log)
        wait_started(
            self._gateway,
            lambda: port_open(self.gateway_port),
            timeout=30,
            what="the gateway",
            log_path=self.gateway_log,
            stop=self.stop_gateway,
        )

    def stop_gateway(self) -> None:
        gateway, self._gateway = self._gateway, None
        end_process(gateway, timeout=10)

    @property
    def gateway_pid(self) -> int:
        assert self._gateway is not None
        return self._gateway.pid

    def stop_broker(self) -> None:
        broker, self._broker = self._broker, None
        end_process(broker, timeout=10)

    @property
    def broker_pid(self) -> int:
        assert self._broker is not None
        return self._broker.pid

    def wait_broker_exit(self, timeout: float = 30) -> int:
        """Wait for the broker process to end by itself (e.g. at a fail point)."""
        assert self._broker is not None
        code = self._broker.wait(timeout=timeout)
        self._broker = None
        return code

    @property
    def store_url(self) -> str:
        if self.store_on_postgres:
            pg = self.postgres
            return (
                f"postgresql+psycopg://{pg.admin_user}:{pg.admin_password}@127.0.0.1:"
                f"{pg.port}/broker_store"
            )
        return f"sqlite:///{self.broker_config.parent / 'broker.db'}"

    def broker_env(self, extra_env: dict[str, str] | None = None) -> dict[str, str]:
        env = dict(os.environ)
        env.update(extra_env or {})
        env[PROVISIONER_ENV] = self.provisioner_password
        env[STORE_ENV] = self.postgres.admin_password
        return env

    def spawn_broker(
        self,
        port: int,
        log: Path,
        *extra: str,
        extra_env: dict[str, str] | None = None,
        config: Path | None = None,
    ) -> subprocess.Popen[bytes]:
        """Another replica of the broker on the same config and store, or on ``config``
        (a variant of it; run in its directory, where a relative store path points)."""
        config = config or self.broker_config
        return spawn_logged(
            [
                sys.executable,
                "-m",
                "dbaccess.broker",
                "serve",
                "--config",
                str(config),
                "--port",
                str(port),
                *extra,
            ],
            log,
            env=self.broker_env(extra_env),
            cwd=config.parent,
        )

    def start_broker(self, extra_env: dict[str, str] | None = None) -> None:
        """Start ``dbaccess-broker serve`` on this stack's config and wait until healthy."""
        self._broker = self.spawn_broker(
            self.broker_port,
            self.broker_log,
            "--workers",
            str(self.broker_workers),
            extra_env=extra_env,
        )

        def healthy() -> bool:
            try:
                return httpx.get(self.broker_url + "/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_started(
            self._broker,
            healthy,
            timeout=30,
            what="the broker",
            log_path=self.broker_log,
            stop=self.stop_broker,
        )

    def managed_users(self) -> list[str]:
        """Session users that exist in the demo database right now."""
        with self.postgres.connect() as admin:
            rows = admin.execute(
                "SELECT rolname FROM pg_roles WHERE starts_with(rolname, 'dba_') ORDER BY 1"
            ).fetchall()
        return [str(row[0]) for row in rows]
