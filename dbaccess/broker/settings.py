"""The broker's one TOML configuration file, validated at start.

Errors name the file, the key and what is wrong, e.g.
``broker.toml: targets.demo.port: Input should be a valid integer``.
Secrets are never inline: a target names an environment variable or a file that holds
its provisioner password, and the value is read only when a connection needs it.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Callable, Iterator
from datetime import timedelta
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from dbaccess.broker.secrets import SecretRef
from dbaccess.durations import MAX_SECONDS, parse_duration
from dbaccess.errors import ConfigError

ASYMMETRIC_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
_NAME = r"^[a-z][a-z0-9_-]{0,31}$"
_SQL_NAME = r"^[a-z_][a-z0-9_]{0,62}$"
# A masked column, schema.table.column: each part a plain name or a glob (* and ?).
_MASKED_PART = r"[A-Za-z0-9_$*?]{1,63}"
_MASKED_COLUMN = rf"^{_MASKED_PART}\.{_MASKED_PART}\.{_MASKED_PART}$"
_COLUMN = r"^[A-Za-z0-9_$]{1,63}\.[A-Za-z0-9_$]{1,63}\.[A-Za-z0-9_$]{1,63}$"
# sun_path holds 108 bytes with its NUL
MAX_SOCKET_PATH = 107
MAX_MASKED_GROUP = 56  # + "_masked", the schema of its views, within 63 characters
# The role that owns the definer functions (OWNER in engines/*_bootstrap.py).
FUNCTIONS_OWNER = "dbaccess_owner"


def _to_timedelta(value: Any) -> Any:
    if isinstance(value, str):
        return parse_duration(value)
    if isinstance(value, int) and not isinstance(value, bool):
        if value > MAX_SECONDS:
            raise ValueError(
                f"{value} seconds is longer than {MAX_SECONDS // 86400}d, the "
                "longest duration dbaccess takes"
            )
        return timedelta(seconds=value)
    return value


Duration = Annotated[timedelta, BeforeValidator(_to_timedelta)]
# A count of things (connections): a TOML integer of at least 1, not "20" or 20.0 or true.
PositiveCount = Annotated[int, Field(strict=True, ge=1)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BrokerSection(_Section):
    # SQLAlchemy URL: sqlite:///path (default) or postgresql+psycopg://user@host/db for
    # several replicas; its password comes from store_password_env/_file, never inline.
    store: str = "sqlite:///broker.db"
    store_password_env: str | None = None
    store_password_file: Path | None = None
    # A PostgreSQL store's bounds: how long to wait for its server to answer a connection,
    # and for any one statement (a lock held by a hung replica included), so that a store
    # that stops answering fails requests and the gateway's writes instead of hanging
    # them. (A SQLite store waits at most 10 s for another process's write lock.)
    store_connect_timeout: Duration = timedelta(seconds=5)
    store_statement_timeout: Duration = timedelta(seconds=30)
    reaper_interval: Duration = timedelta(seconds=5)
    # Members of these groups may read the audit trail (GET /v1/audit, dbaccess audit).
    auditor_groups: list[str] = Field(default_factory=list)
    # GET /metrics answers only a request with "Authorization: Bearer <token>" when one of
    # these names the token (Prometheus: authorization.credentials_file); else anyone.
    metrics_token_env: str | None = None
    metrics_token_file: Path | None = None
    # How often every target is checked for managed users without a live lease.
    reconcile_interval: Duration = timedelta(minutes=1)
    # A lease still "creating" after this long belongs to an interrupted request: revoke it.
    creation_timeout: Duration = timedelta(minutes=1)
    # Revocations run this many at a time per target, so an expiry storm drains fast
    # without taking every connection from the API (a PostgreSQL target's pool has 10;
    # 8 matches the raw drop rate of bench/revocation_storm.py).
    revoke_workers: int = Field(default=8, ge=1, le=32)
    # Public base URL the CLI uses; informational for now.
    public_url: str | None = None
    # An approval request that is not approved and used within this time expires.
    request_ttl: Duration = timedelta(hours=1)
    # Addresses or networks of the reverse proxies in front of the broker. Only a request
    # arriving from one of them has its client address taken from X-Forwarded-For (for the
    # audit trail); from anywhere else the header is ignored: anyone can send it.
    trusted_proxies: list[str] = Field(default_factory=list)

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        import ipaddress

        for entry in value:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ValueError(
                    f"'{entry}' is not an IP address or network (e.g. 10.0.0.5, 10.0.0.0/24)"
                ) from None
        return value

    @field_validator("store_connect_timeout")
    @classmethod
    def _connect_timeout(cls, value: timedelta) -> timedelta:
        if not timedelta(seconds=2) <= value <= timedelta(minutes=5):
            # libpq waits at least 2 s whatever it is told
            raise ValueError("must be between 2s and 5m, e.g. 5s")
        return value

    @field_validator("store_statement_timeout")
    @classmethod
    def _statement_timeout(cls, value: timedelta) -> timedelta:
        if not timedelta(seconds=1) <= value <= timedelta(hours=1):
            raise ValueError("must be between 1s and 1h, e.g. 30s")
        return value

    @field_validator("store")
    @classmethod
    def _no_inline_password(cls, value: str) -> str:
        import sqlalchemy as sa

        try:
            url = sa.make_url(value)
        except sa.exc.ArgumentError:
            raise ValueError("not a database URL, e.g. sqlite:///broker.db") from None
        if url.password:
            raise ValueError("no password in the URL; use store_password_env or _file")
        if url.get_backend_name() not in ("sqlite", "postgresql"):
            raise ValueError("the store must be SQLite or PostgreSQL")
        if url.get_backend_name() == "postgresql" and url.get_driver_name() != "psycopg":
            # the store's hot statements use psycopg's parameter style (store/driver_sql.py)
            raise ValueError("a PostgreSQL store goes through psycopg: postgresql+psycopg://...")
        return value

    @model_validator(mode="after")
    def _one_metrics_token(self) -> BrokerSection:
        if self.metrics_token_env is not None and self.metrics_token_file is not None:
            raise ValueError("set at most one of metrics_token_env or metrics_token_file")
        return self

    @property
    def metrics_token(self) -> SecretRef | None:
        if self.metrics_token_env is None and self.metrics_token_file is None:
            return None
        return SecretRef(
            "the metrics token", env=self.metrics_token_env, file=self.metrics_token_file
        )

    def read_metrics_token(self) -> bytes | None:
        """The token GET /metrics requires (None: open), as the bytes a header carries;
        ConfigError when it cannot be read or is empty."""
        where = self.metrics_token
        if where is None:
            return None
        token = where.read().strip()
        if not token:
            raise ConfigError(f"{where.what} is empty", hint="write a random token on one line")
        return token.encode()

    @property
    def store_password(self) -> SecretRef | None:
        if self.store_password_env is None and self.store_password_file is None:
            return None
        return SecretRef(
            "the store's password", env=self.store_password_env, file=self.store_password_file
        )

    def store_url(self) -> Any:
        """The store's sqlalchemy URL, with its password read from where the config points."""
        import sqlalchemy as sa

        url = sa.make_url(self.store)
        if self.store_password is not None:
            url = url.set(password=self.store_password.read())
        if url.get_backend_name() == "postgresql":
            # libpq's own parameters; one the URL names itself wins (a later -c, too)
            query = dict(url.query)
            query.setdefault(
                "connect_timeout", str(int(self.store_connect_timeout.total_seconds()))
            )
            ms = int(self.store_statement_timeout.total_seconds() * 1000)
            query["options"] = f"-c statement_timeout={ms} {query.get('options', '')}".strip()
            url = url.set(query=query)
        return url


ENTRA_LOGIN = "https://login.microsoftonline.com"


class IdentitySection(_Section):
    # "oidc": the CLI's RFC 8628 client; "entra": msal's device flow against the tenant.
    kind: Literal["oidc", "entra"] = "oidc"
    # Entra: the issuer defaults to https://login.microsoftonline.com/{tenant}/v2.0.
    tenant: str | None = None
    issuer: str = ""
    client_id: str
    audiences: list[str] = Field(default_factory=list)
    scopes: list[str] = Field(
        default_factory=lambda: ["openid", "profile", "email", "offline_access"]
    )
    groups_claim: str = "groups"
    # The boolean claim that says the token's email was verified by the provider. A rule
    # naming a user by email matches only a verified one (else by subject). Default
    # "email_verified" (OpenID Connect); for Entra, which sends none, "xms_edov" (the
    # optional claim "email domain owner verified", to add in the app registration).
    # "" trusts no email: rules then match users by subject only.
    email_verified_claim: str | None = None
    # The bearer token must be an ID token (audience: the CLI's client id). JWT access
    # tokens (RFC 9068 typ at+jwt, or with scp/scope/client_id claims) are refused unless
    # this is true — an access token for some API of the same client is not a login here.
    accept_access_tokens: bool = False
    algorithms: list[str] = Field(default_factory=lambda: ["RS256", "ES256", "PS256", "EdDSA"])
    leeway: Duration = timedelta(seconds=30)

    @field_validator("issuer")
    @classmethod
    def _issuer_is_url(cls, value: str) -> str:
        if value and not re.match(r"^https?://[^/\s]+", value):
            raise ValueError("must be an http(s) URL, e.g. https://login.example.com/realms/x")
        return value.rstrip("/")

    @model_validator(mode="before")
    @classmethod
    def _entra_issuer_from_tenant(cls, data: Any) -> Any:
        if (
            isinstance(data, dict)
            and data.get("kind") == "entra"
            and data.get("tenant")
            and not data.get("issuer")
        ):
            return {**data, "issuer": f"{ENTRA_LOGIN}/{data['tenant']}/v2.0"}
        return data

    @model_validator(mode="after")
    def _verified_claim_for_kind(self) -> IdentitySection:
        if self.email_verified_claim is None:
            claim = "xms_edov" if self.kind == "entra" else "email_verified"
            object.__setattr__(self, "email_verified_claim", claim)  # frozen model
        return self

    @model_validator(mode="after")
    def _issuer_for_kind(self) -> IdentitySection:
        if self.kind == "entra":
            if not self.issuer.startswith("https://") or not self.issuer.endswith("/v2.0"):
                raise ValueError(
                    'kind = "entra" needs tenant = "...", or an https issuer ending in '
                    "/v2.0 (msal's authority is the issuer without it)"
                )
        elif not self.issuer:
            raise ValueError("issuer is required, e.g. https://login.example.com/realms/x")
        return self

    @field_validator("algorithms")
    @classmethod
    def _only_asymmetric(cls, value: list[str]) -> list[str]:
        bad = sorted(set(value) - ASYMMETRIC_ALGORITHMS)
        if bad:
            raise ValueError(
                f"only asymmetric algorithms are allowed, not {', '.join(bad)} "
                f"(choose from {', '.join(sorted(ASYMMETRIC_ALGORITHMS))})"
            )
        if not value:
            raise ValueError("name at least one algorithm")
        return value

    @property
    def accepted_audiences(self) -> list[str]:
        return self.audiences or [self.client_id]


class ProvisionerSection(_Section):
    user: str
    password_env: str | None = None
    password_file: Path | None = None

    @model_validator(mode="after")
    def _exactly_one_source(self) -> ProvisionerSection:
        if (self.password_env is None) == (self.password_file is None):
            raise ValueError("set exactly one of password_env or password_file (never inline)")
        return self

    @property
    def password(self) -> SecretRef:
        return SecretRef(
            f"the provisioner password of user {self.user}",
            env=self.password_env,
            file=self.password_file,
        )

    def ensure_password(self) -> str:
        """The password, first generating one into a missing ``password_file`` (0600)."""
        return self.password.ensure()

    def read_password(self) -> str:
        """Read the provisioner password from where the config points, at use time."""
        return self.password.read()


class GatewayRules(_Section):
    """``[targets.T.roles.R.gateway]``: what a session of this role may do through the
    gateway, checked before the statement runs (docs/gateway.md, "Guardrails")."""

    # The statement classes allowed (read, write, ddl, dcl, copy_out, copy_in, untrusted,
    # parser_settings); transaction control, SET and SHOW always are. Default: all.
    statements: list[str] | None = None
    max_rows_per_result: int | None = Field(default=None, ge=1)
    max_bytes_per_session: int | None = Field(default=None, ge=1)
    idle_timeout: Duration | None = None

    @field_validator("statements")
    @classmethod
    def _known_classes(cls, value: list[str] | None) -> list[str] | None:
        from dbaccess.gateway.guardrails import StatementClass

        if value is not None:
            known = [c.value for c in StatementClass if c is not StatementClass.SESSION]
            unknown = [v for v in value if v not in known]
            if unknown:
                raise ValueError(
                    f"unknown statement class {', '.join(map(repr, unknown))} "
                    f"(choose from {', '.join(known)})"
                )
        return value

    def policy(self) -> Any:
        """The gateway's ``guardrails.Policy`` for these rules."""
        from dbaccess.gateway.guardrails import ALL_CLASSES, Policy, StatementClass

        return Policy(
            allowed=ALL_CLASSES
            if self.statements is None
            else frozenset({StatementClass.SESSION, *map(StatementClass, self.statements)}),
            max_rows_per_result=self.max_rows_per_result,
            max_bytes_per_session=self.max_bytes_per_session,
            idle_timeout=None if self.idle_timeout is None else self.idle_timeout.total_seconds(),
        )


class RoleTemplate(_Section):
    group_role: Annotated[str, Field(pattern=_SQL_NAME)]
    read_only: bool = False
    statement_timeout: Duration | None = None
    connection_limit: int = Field(default=5, ge=1, le=100)
    # What happens at revocation to objects the session user made: "drop" them (default),
    # or "keep" them owned by a powerless role of this template (for migrations).
    session_objects: Literal["drop", "keep"] = "drop"
    # Guardrails for sessions through the gateway (access = "gateway" targets only).
    gateway: GatewayRules | None = None
    # Columns this template's sessions may not read, "schema.table.column", each part a
    # name or a glob (* and ?), resolved against the catalog by the bootstrap, which
    # revokes them from the group role and makes a masked view of each table
    # (docs/policies.md, "Masked read-only views"). read_only templates only.
    masked: list[Annotated[str, Field(pattern=_MASKED_COLUMN)]] = Field(default_factory=list)
    # What a masked column's view shows instead of NULL: SQL text by the operator, as
    # trusted as the bootstrap it lands in (it is not quoted), over the column's name.
    mask: dict[Annotated[str, Field(pattern=_COLUMN)], str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _masks_fit(self) -> RoleTemplate:
        if not self.masked:
            if self.mask:
                raise ValueError("mask names columns but masked is empty: list them in masked")
            return self
        if not self.read_only:
            raise ValueError(
                "masked needs read_only = true: a session that writes could move the "
                "masked data where it can read it"
            )
        if len(self.group_role) > MAX_MASKED_GROUP:
            raise ValueError(
                f"group_role {self.group_role} is too long for masked columns (at most "
                f"{MAX_MASKED_GROUP} characters: its views live in {self.group_role}_masked)"
            )
        for column, expression in self.mask.items():
            if not any(fnmatchcase(column, pattern) for pattern in self.masked):
                raise ValueError(f"mask names {column}, which no masked entry covers")
            if not expression.strip() or any(
                ord(ch) < 32 and ch not in "\t\n" for ch in expression
            ):
                raise ValueError(f"mask of {column}: an SQL expression, without control characters")
        return self


class LimitsSection(_Section):
    """Caps on live sessions and on their connections (each session may open its role's
    connection_limit), so that one person cannot starve a target and the broker's users
    cannot take all of a server's max_connections. Break-glass sessions count in a budget
    of their own and are not held back by everyday ones: an incident must not wait for
    developers to log off. The defaults keep one target within 70 connections (50 + 20),
    below PostgreSQL's default max_connections of 100 (97 after its 3 reserved for
    superusers) and MariaDB's 151; ``check-config`` compares them with the server's."""

    sessions_per_person: int = Field(default=5, ge=1, le=10_000)
    connections_per_person: int = Field(default=25, ge=1, le=100_000)
    sessions_per_target: int = Field(default=50, ge=1, le=100_000)
    connections_per_target: int = Field(default=50, ge=1, le=100_000)
    breakglass_sessions_per_person: int = Field(default=2, ge=1, le=1_000)
    breakglass_connections_per_target: int = Field(default=20, ge=1, le=100_000)


class TargetLimits(_Section):
    """``[targets.NAME.limits]``: this target's own values of ``[limits]`` keys."""

    sessions_per_person: int | None = Field(default=None, ge=1, le=10_000)
    connections_per_person: int | None = Field(default=None, ge=1, le=100_000)
    sessions_per_target: int | None = Field(default=None, ge=1, le=100_000)
    connections_per_target: int | None = Field(default=None, ge=1, le=100_000)
    breakglass_sessions_per_person: int | None = Field(default=None, ge=1, le=1_000)
    breakglass_connections_per_target: int | None = Field(default=None, ge=1, le=100_000)


class StatementLogSection(_Section):
    """A file of the database server's log the broker can read, in one of the formats its
    engine reads (PostgreSQL: jsonlog, csvlog; MariaDB: server_audit)."""

    path: Path
    format: str


class TargetSection(_Section):
    engine: str  # a name in engines/registry.py
    host: str
    port: int = Field(ge=1, le=65535)
    database: str
    sslmode: Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"] = "prefer"
    # The CA file that verifies the database's certificate (verify-ca, verify-full), for the
    # broker's connections and the gateway's; default: libpq's (~/.postgresql/root.crt) for
    # the broker, the system's trust store for the gateway.
    sslrootcert: Path | None = None
    username_prefix: Annotated[str, Field(pattern=r"^[a-z][a-z0-9]{1,8}_$")] = "dba_"
    # The longest a session user may live; enforced again inside the database by the
    # bootstrap functions, so even the broker's credential cannot mint a longer one.
    max_lifetime: Duration = timedelta(hours=24)
    # Rotate the provisioner's password this often (needs provisioner.password_file).
    rotate_every: Duration | None = None
    # Session users being created at once on this target, per broker process; more wait.
    # Creation is CPU work for the database (see engines.base.CreateSlots): about its
    # core count is enough.
    create_concurrency: int = Field(default=4, ge=1, le=64)
    provisioner: ProvisionerSection
    roles: dict[Annotated[str, Field(pattern=_NAME)], RoleTemplate]
    limits: TargetLimits = Field(default_factory=TargetLimits)
    # "direct": clients get the database's address and the session user's password.
    # "gateway": they get the gateway's address and a session secret for it; the session
    # user's password never leaves the broker and gateway (needs [gateway]).
    access: Literal["direct", "gateway"] = "direct"
    # access = "gateway" only: the database's Unix socket as the gateway's host sees it
    # (PostgreSQL: DIRECTORY/.s.PGSQL.PORT), for a gateway next to the database. The
    # gateway connects there instead of host:port, so the database needs no network
    # listener for session users at all; without TLS (none exists there: sslmode and
    # sslrootcert are for the broker's connections over host:port then).
    gateway_socket: Path | None = None
    # With gateway_socket: the user the database server runs as on the gateway's host (a
    # name, or a uid), the only one whose socket the gateway uses (libpq's requirepeer).
    gateway_socket_owner: (
        Annotated[str, Field(pattern=r"^([a-z_][a-z0-9_.-]{0,31}|[0-9]{1,10})$")] | None
    ) = None
    # Where the broker reads what the database logged of break-glass users, for incident
    # reviews of a direct target (docs/policies.md, "Incident reviews").
    statement_log: StatementLogSection | None = None

    @field_validator("engine")
    @classmethod
    def _known_engine(cls, value: str) -> str:
        # Here, not at the top: the engines' package imports this module.
        from dbaccess.broker.engines.registry import ENGINES

        if value not in ENGINES:
            known = list(ENGINES)
            raise ValueError(
                "Input should be "
                + " or ".join(
                    [", ".join(f"'{k}'" for k in known[:-1]), f"'{known[-1]}'"]
                    if len(known) > 1
                    else [f"'{known[0]}'"]
                )
            )
        return value

    @model_validator(mode="after")
    def _sslmode_the_engine_honours(self) -> TargetSection:
        from dbaccess.broker.engines.registry import SSLMODES

        honoured = SSLMODES.get(self.engine)
        if honoured is not None and self.sslmode not in honoured:
            raise ValueError(
                f"sslmode '{self.sslmode}' is not supported by engine '{self.engine}' yet: "
                "its connections do not use TLS, and would go in clear text; set one of "
                f"{', '.join(sorted(honoured))}, with the database on a trusted network"
            )
        return self

    @field_validator("gateway_socket")
    @classmethod
    def _a_socket_path(cls, value: Path | None) -> Path | None:
        if value is not None:
            if not value.is_absolute():
                raise ValueError(f"'{value}' is not an absolute path (the socket's file)")
            if len(os.fsencode(value)) > MAX_SOCKET_PATH:
                raise ValueError(
                    f"'{value}' is longer than a Unix socket's path may be "
                    f"({MAX_SOCKET_PATH} bytes); have the database put its socket in a "
                    "directory with a shorter path"
                )
        return value

    @model_validator(mode="after")
    def _socket_only_for_the_gateway(self) -> TargetSection:
        if self.gateway_socket is not None and self.access != "gateway":
            raise ValueError(
                'gateway_socket is for access = "gateway" targets (the gateway connects '
                "there); a direct target's clients connect to host:port"
            )
        if (self.gateway_socket is None) != (self.gateway_socket_owner is None):
            raise ValueError(
                "gateway_socket and gateway_socket_owner go together: the socket, and the "
                "user the database server runs as (the gateway uses no socket another "
                "user serves)"
            )
        return self

    @model_validator(mode="after")
    def _rotation_needs_a_file(self) -> TargetSection:
        if self.rotate_every is not None and self.provisioner.password_file is None:
            raise ValueError(
                "rotate_every needs provisioner.password_file (the broker "
                "writes the new password there)"
            )
        return self

    @model_validator(mode="after")
    def _one_mode_per_group_role(self) -> TargetSection:
        """The mode is baked into the bootstrap per group role (revocation looks it up by
        the user's group), so templates sharing a group role must agree on it."""
        modes: dict[str, tuple[str, str]] = {}
        for name, role in sorted(self.roles.items()):
            seen = modes.setdefault(role.group_role, (name, role.session_objects))
            if seen[1] != role.session_objects:
                raise ValueError(
                    f"roles.{seen[0]} and roles.{name} share group_role "
                    f"{role.group_role} but not session_objects ('{seen[1]}' and "
                    f"'{role.session_objects}'): give them the same value, or each its own "
                    "group role"
                )
        return self

    @model_validator(mode="after")
    def _log_format_is_read(self) -> TargetSection:
        if self.statement_log is not None:
            from dbaccess.broker.statement_logs import log_formats

            formats = log_formats(self.engine)
            if self.statement_log.format not in formats:
                raise ValueError(
                    f"statement_log.format: the broker reads {', '.join(formats) or 'no'} "
                    f"logs of {self.engine}, not '{self.statement_log.format}'"
                )
        return self

    @model_validator(mode="after")
    def _masks_only_where_applied(self) -> TargetSection:
        """A mask the engine's bootstrap does not apply would leave the columns readable
        while the configuration says they are not: refused at start, not discovered."""
        if not engine_masks_columns(self.engine):
            for name, role in sorted(self.roles.items()):
                if role.masked:
                    raise ValueError(
                        f"roles.{name}.masked: masked columns are not applied on "
                        f"{self.engine} targets (its engine has no masking yet); remove "
                        "masked and mask here, or give these columns no grant to the group "
                        "role"
                    )
        return self

    @model_validator(mode="after")
    def _one_mask_per_group_role(self) -> TargetSection:
        """The masks are the group role's grants, so its templates must agree on them."""
        seen: dict[str, tuple[str, RoleTemplate]] = {}
        for name, role in sorted(self.roles.items()):
            first, other = seen.setdefault(role.group_role, (name, role))
            if (sorted(other.masked), other.mask) != (sorted(role.masked), role.mask):
                raise ValueError(
                    f"roles.{first} and roles.{name} share group_role {role.group_role} "
                    "but not masked and mask: give them the same, or each its own group role"
                )
        return self

    @field_validator("roles")
    @classmethod
    def _some_roles(cls, value: dict[str, RoleTemplate]) -> dict[str, RoleTemplate]:
        if not value:
            raise ValueError(
                "define at least one role template, e.g. [targets.NAME.roles.readonly]"
            )
        return value


class Tier(_Section):
    """A higher bar inside a rule for what a session may do: more approvals for some of its
    roles (a DDL-capable one), or for sessions longer than ``longer_than``. A request
    lands in the matching tier that asks the most (docs/policies.md, "Tiers")."""

    name: Annotated[str, Field(pattern=_NAME)]
    roles: list[str] = Field(default_factory=list)  # none: any of the rule's roles
    longer_than: Duration | None = None  # none: any duration
    approvals: int = Field(ge=0, le=5)
    approver_groups: list[str] = Field(default_factory=list)  # none: the rule's

    @model_validator(mode="after")
    def _says_when(self) -> Tier:
        if not self.roles and self.longer_than is None:
            raise ValueError(
                f"tier '{self.name}' names no roles and no longer_than: it would be the "
                "rule's own approvals (set those instead)"
            )
        return self


class PagerDutyFeed(_Section):
    """PagerDuty's REST API, ``GET /oncalls`` for these escalation policies: each entry's
    ``escalation_level`` is the level of its shift."""

    # the REST API key, read at each fetch (replace the file to rotate it), never logged
    token_file: Path
    escalation_policy_ids: Annotated[
        list[Annotated[str, Field(pattern=r"^[A-Za-z0-9]{1,32}$")]], Field(min_length=1)
    ]
    url: str = "https://api.pagerduty.com"  # another only for a regional or test endpoint

    @field_validator("url")
    @classmethod
    def _https(cls, value: str) -> str:
        if not re.fullmatch(r"https://[^\s/?#]+(/[^\s?#]*)?", value):
            raise ValueError("url must be an https:// address")
        return value.rstrip("/")


class OncallSource(_Section):
    """A schedule: an iCalendar feed (a file, or an https:// URL) whose events name the
    people on call as ATTENDEE, or PagerDuty's on-calls (docs/policies.md, "On-call
    tiers")."""

    name: Annotated[str, Field(pattern=_NAME)]
    ics: Annotated[str, Field(min_length=1)] | None = None
    pagerduty: PagerDutyFeed | None = None
    ca_file: Path | None = None  # the CA of an https source, if not a public one
    level: int = Field(default=1, ge=1, le=10)  # the escalation level an ICS feed stands for
    max_age: Duration = timedelta(minutes=5)  # a copy is used this long at most
    timeout: Duration = timedelta(seconds=1.5)  # a look-up waits this long at most

    @field_validator("ics")
    @classmethod
    def _where(cls, value: str | None) -> str | None:
        if value is not None and "://" in value and not value.startswith("https://"):
            raise ValueError("a feed is a file path or an https:// URL")
        return value

    @model_validator(mode="after")
    def _bounded(self) -> OncallSource:
        if (self.ics is None) == (self.pagerduty is None):
            raise ValueError("a source has either ics or pagerduty, not both or neither")
        if not timedelta(0) < self.timeout <= timedelta(seconds=2):
            raise ValueError("timeout must be over 0 and at most 2s (a decision waits for it)")
        if not timedelta(seconds=10) <= self.max_age <= timedelta(hours=1):
            raise ValueError("max_age must be between 10s and 1h")
        return self


class OncallGrant(_Section):
    """Approvals waived for the people on call now: in ``source``, at one of ``levels``,
    for ``roles`` (none: all the rule's); the session ends with the shift."""

    source: str
    roles: list[str] = Field(default_factory=list)
    levels: list[int] = Field(default_factory=lambda: [1], min_length=1)


class Rule(_Section):
    name: Annotated[str, Field(pattern=_NAME)]
    groups: list[str] = Field(default_factory=list)
    users: list[str] = Field(default_factory=list)
    targets: list[str]
    roles: list[str]
    max_duration: Duration
    default_duration: Duration | None = None
    require_reason: bool = False
    # A ticket id matching this regular expression must accompany the request.
    ticket_pattern: str | None = None
    # Approval tier: this many approvals from members of approver_groups (never the
    # requester); the requester must then give a reason.
    approvals: int = Field(default=0, ge=0, le=5)
    approver_groups: list[str] = Field(default_factory=list)
    # More approvals for some roles or longer sessions (Tier); the highest matching wins.
    tiers: list[Tier] = Field(default_factory=list)
    # None for the people on call now (OncallGrant), until their shift ends.
    oncall: OncallGrant | None = None

    @field_validator("ticket_pattern")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"not a valid regular expression: {exc}") from None
        return value

    @model_validator(mode="after")
    def _who(self) -> Rule:
        if self.approvals and not self.approver_groups:
            raise ValueError("approvals needs approver_groups")
        if not self.groups and not self.users:
            raise ValueError("a rule must name at least one group or user")
        if self.default_duration is not None and self.default_duration > self.max_duration:
            raise ValueError("default_duration is longer than max_duration")
        if self.oncall is not None:
            stray = [r for r in self.oncall.roles if "*" not in self.roles and r not in self.roles]
            if stray:
                raise ValueError(
                    f"oncall names role(s) the rule does not grant: {', '.join(stray)}"
                )
        names = [tier.name for tier in self.tiers]
        if len(set(names)) != len(names):
            raise ValueError("two tiers have the same name")
        for tier in self.tiers:
            stray = [r for r in tier.roles if "*" not in self.roles and r not in self.roles]
            if stray:
                raise ValueError(
                    f"tier '{tier.name}' names role(s) the rule does not grant: {', '.join(stray)}"
                )
            if tier.approvals and not (tier.approver_groups or self.approver_groups):
                raise ValueError(
                    f"tier '{tier.name}' needs approver_groups (its own or the rule's)"
                )
            if tier.longer_than is not None and tier.longer_than >= self.max_duration:
                raise ValueError(
                    f"tier '{tier.name}': longer_than is not shorter than the rule's "
                    "max_duration, so no session could land in it"
                )
        return self

    def tier_for(self, role: str, duration: timedelta) -> Tier | None:
        """The matching tier that asks the most approvals (the first of equals); None when
        none asks more than the rule itself."""
        best: Tier | None = None
        for tier in self.tiers:
            if tier.roles and role not in tier.roles:
                continue
            if tier.longer_than is not None and duration <= tier.longer_than:
                continue
            if tier.approvals > self.approvals and (
                best is None or tier.approvals > best.approvals
            ):
                best = tier
        return best

    def oncall_covers(self, role: str) -> bool:
        """Do the people on call get ``role`` without approvals under this rule?"""
        return self.oncall is not None and (not self.oncall.roles or role in self.oncall.roles)

    def may_need_approval(self, role: str) -> bool:
        """Some request for ``role`` under this rule needs approvals (of any length)."""
        return bool(self.approvals) or any(
            tier.approvals and (not tier.roles or role in tier.roles) for tier in self.tiers
        )


class BreakglassSection(_Section):
    """Emergency access: no approval wait, but loud (webhook), short, fully logged by the
    database, and reviewed afterwards by someone else."""

    groups: list[str] = Field(min_length=1)
    # target -> the elevated role template a break-glass session gets there
    targets: dict[str, str] = Field(min_length=1)
    incident_pattern: str = r"INC-[0-9]+"
    max_duration: Duration = timedelta(hours=1)
    # Who may close post-incident reviews (never the user who broke the glass).
    reviewer_groups: list[str] = Field(default_factory=list)
    # Practice: a drill (breakglass --drill) is due this often; once none was run for that
    # long the broker says so (webhook, dbaccess targets) and review --drills shows who.
    drill_every: Duration | None = None

    @field_validator("incident_pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"not a valid regular expression: {exc}") from None
        return value


class ReviewSection(_Section):
    """``[review]``: what an incident review (``dbaccess review INC-...``) flags."""

    # a statement returning or changing more rows than this is flagged as a bulk read
    bulk_rows: int = Field(default=10000, ge=1)
    # a credential revoked later than this after its session's end is flagged
    revoke_within: Duration = timedelta(seconds=30)
    # where the incident's own window comes from: an [[oncall]] source with `pagerduty`
    # (its key and address), asked for GET /incidents/{id}
    incidents: str | None = None
    # the incident's id or number at that source, from the break-glass --incident value:
    # the first group of this expression (default: the value as it is)
    incident_id: str = r"(.+)"

    @field_validator("incident_id")
    @classmethod
    def _one_group(cls, value: str) -> str:
        try:
            groups = re.compile(value).groups
        except re.error as exc:
            raise ValueError(f"incident_id does not compile: {exc}") from None
        if groups < 1:
            raise ValueError("incident_id needs a group: the id is its first one")
        return value


class NotifySection(_Section):
    """Webhooks for break-glass and approval events: a JSON body with a Slack-compatible
    ``text`` field, POSTed to each URL."""

    webhooks: list[str] = Field(default_factory=list)
    timeout: Duration = timedelta(seconds=5)
    attempts: int = Field(default=3, ge=1, le=10)

    @field_validator("webhooks")
    @classmethod
    def _urls(cls, value: list[str]) -> list[str]:
        for url in value:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"{url!r} is not an http(s) URL")
        return value


class WebSection(_Section):
    """``[web]``: approvals from a browser (docs/broker.md, "Approvals from a browser"). Pages
    under /web/, signed in through the identity provider with the authorization code flow
    and PKCE, acting through the same services (and rules) as the API."""

    # The broker's address as a browser reaches it (https, except on a loopback address):
    # the sign-in returns to {public_url}/web/callback, and webhook messages link to
    # {public_url}/web/requests/ID.
    public_url: str
    # The provider's client for this sign-in (redirect URI: the callback above). Its ID
    # tokens' audience is this client, not the CLI's, so a web sign-in's token is never
    # taken as an API bearer token.
    client_id: str
    # A confidential client's secret (never inline); none for a public client (PKCE alone).
    client_secret_env: str | None = None
    client_secret_file: Path | None = None
    # The key the session cookies are signed with; every replica must have the same one.
    # A missing cookie_key_file is generated (0600) by the first process that needs it.
    cookie_key_env: str | None = None
    cookie_key_file: Path | None = None
    # How long a browser stays signed in. The person's groups are those of the sign-in's
    # ID token until then: a group taken away at the provider counts until the session
    # ends (or the person signs out), so keep it short where that matters.
    session: Duration = timedelta(hours=8)

    @field_validator("public_url")
    @classmethod
    def _browser_url(cls, value: str) -> str:
        from urllib.parse import urlsplit

        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http(s) URL, e.g. https://dbaccess.example.com")
        if parts.scheme == "http" and parts.hostname not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError(
                "must be https (the session cookie is only sent over TLS); http is for "
                "a loopback address only"
            )
        if parts.query or parts.fragment:
            raise ValueError("must be the broker's address only, without ?query or #fragment")
        return value.rstrip("/")

    @field_validator("session")
    @classmethod
    def _session_length(cls, value: timedelta) -> timedelta:
        if not timedelta(minutes=5) <= value <= timedelta(hours=24):
            raise ValueError("must be between 5m and 24h")
        return value

    @model_validator(mode="after")
    def _secret_sources(self) -> WebSection:
        if self.client_secret_env is not None and self.client_secret_file is not None:
            raise ValueError("set at most one of client_secret_env or client_secret_file")
        if (self.cookie_key_env is None) == (self.cookie_key_file is None):
            raise ValueError(
                "set exactly one of cookie_key_env or cookie_key_file (never inline): "
                "every replica signs and reads the same cookies"
            )
        return self

    @property
    def secure(self) -> bool:
        return self.public_url.startswith("https://")

    @property
    def redirect_uri(self) -> str:
        return f"{self.public_url}/web/callback"

    def request_link(self, request_id: str) -> str:
        return f"{self.public_url}/web/requests/{request_id}"

    @property
    def client_secret(self) -> SecretRef | None:
        if self.client_secret_env is None and self.client_secret_file is None:
            return None
        return SecretRef(
            "the web sign-in's client secret",
            env=self.client_secret_env,
            file=self.client_secret_file,
        )

    @property
    def cookie_key(self) -> SecretRef:
        return SecretRef(
            "the web session cookie key", env=self.cookie_key_env, file=self.cookie_key_file
        )


class GatewaySection(_Section):
    """``[gateway]``: the server-side access proxy (``dbaccess-broker gateway``) that clients
    of ``access = "gateway"`` targets reach instead of the database (docs/gateway.md)."""

    # Where the gateway process listens, and what clients are told to connect to (a load
    # balancer's name in front of several gateways); address defaults to listen.
    listen: str = "127.0.0.1:6432"
    address: str | None = None
    # The gateway's TLS certificate and key, and the CA clients verify it with (handed to
    # them with each session; defaults to the certificate itself, when self-signed).
    tls_cert_file: Path
    tls_key_file: Path
    ca_file: Path | None = None
    # The key the session users' database passwords are derived from (HMAC of the lease
    # id): the broker and every gateway share it, and the store never holds a password.
    # A missing key_file is generated (0600) by the first process that needs it.
    key_env: str | None = None
    key_file: Path | None = None
    # Bind parameters in statement records: none, redacted (their count only), full.
    params: Literal["none", "redacted", "full"] = "redacted"
    # Characters of a statement's SQL a record keeps; longer text is kept as its head and
    # a marker with its whole length and SHA-256 (gateway/store_sink.py). Read at start.
    max_sql_text: int = 64 * 1024
    # The local address the gateway's database connections leave from, for a database
    # (pg_hba.conf, a firewall) that admits session users from the gateway's address only.
    upstream_source_address: str | None = None
    # Caps against connection floods (docs/gateway.md, "Limits"): connections still in
    # their start-up (not authenticated yet) per process and per client IP address, and
    # client connections (starting or established) per process; one over gets 53300.
    max_startups: PositiveCount = 100
    max_startups_per_source: PositiveCount = 20
    max_connections: PositiveCount = 5000

    @field_validator("upstream_source_address")
    @classmethod
    def _an_ip(cls, value: str | None) -> str | None:
        import ipaddress

        if value is not None:
            try:
                ipaddress.ip_address(value)
            except ValueError:
                raise ValueError(f"'{value}' is not an IP address") from None
        return value

    @field_validator("max_sql_text")
    @classmethod
    def _sql_text(cls, value: int) -> int:
        # under 1 KiB a record would hardly say which statement it was; over 1 MiB a
        # block of a batch's records (up to 2,000) could outgrow what a store takes
        if not 1024 <= value <= 1024 * 1024:
            raise ValueError(f"{value} is not between 1024 and 1048576 (characters)")
        return value

    @field_validator("listen", "address")
    @classmethod
    def _host_port(cls, value: str | None) -> str | None:
        if value is not None:
            split_address(value)
        return value

    @model_validator(mode="after")
    def _exactly_one_key_source(self) -> GatewaySection:
        if (self.key_env is None) == (self.key_file is None):
            raise ValueError("set exactly one of key_env or key_file (never inline)")
        return self

    @model_validator(mode="after")
    def _limits_fit(self) -> GatewaySection:
        if self.max_startups_per_source > self.max_startups:
            raise ValueError(
                f"max_startups_per_source ({self.max_startups_per_source}) is more than "
                f"max_startups ({self.max_startups}): one address could never reach it; "
                "lower it or raise max_startups"
            )
        if self.max_startups > self.max_connections:
            raise ValueError(
                f"max_startups ({self.max_startups}) is more than max_connections "
                f"({self.max_connections}), which counts starting connections too; "
                "lower it or raise max_connections"
            )
        return self

    @property
    def key(self) -> SecretRef:
        return SecretRef("the gateway key", env=self.key_env, file=self.key_file)

    @property
    def client_address(self) -> tuple[str, int]:
        return split_address(self.address or self.listen)

    @property
    def listen_address(self) -> tuple[str, int]:
        return split_address(self.listen)

    def client_ca(self) -> str:
        """The PEM clients verify the gateway with."""
        path = self.ca_file or self.tls_cert_file
        try:
            return path.read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read gateway.ca_file {path}: {exc.strerror}") from None


def engine_masks_columns(engine: str) -> bool:
    """An engine's bootstrap applies masked columns when its package has a masking module."""
    from importlib.util import find_spec

    try:
        return find_spec(f"dbaccess.broker.engines.{engine}.masking") is not None
    except ModuleNotFoundError:  # not an engine at all: said by the engine check
        return False


def gateway_speaks(engine: str) -> bool:
    """The gateway has one sub-package per engine whose protocol it speaks."""
    from importlib.util import find_spec

    return find_spec(f"dbaccess.gateway.{engine}") is not None


def split_address(value: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port``) as a pair, or ValueError naming the expected form."""
    host, sep, port = value.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"'{value}' is not host:port, e.g. 127.0.0.1:6432")
    return host, int(port)


class InventorySection(_Section):
    """``[inventory]``: the standing login accounts of the targets that are known and meant
    to be there (service accounts, the DBA's own): listed as allowed, not as findings
    (``dbaccess-broker inventory``, docs/policies.md). Each entry is an account's name, on
    every target, or ``TARGET:NAME`` for one (MariaDB names are ``user@host``)."""

    allow: list[Annotated[str, Field(min_length=1, max_length=200)]] = Field(default_factory=list)

    def allows(self, target: str, account: str) -> bool:
        return account in self.allow or f"{target}:{account}" in self.allow


def fields_named(
    model: BaseModel, wanted: Callable[[str], bool], where: str = ""
) -> Iterator[tuple[str, object]]:
    """(dotted key, value) of every field at any depth whose name is ``wanted`` (not looked
    inside), through sections, lists and tables: for checks over every setting of a kind
    (groups, secret files), which a setting added later cannot escape."""
    for name in type(model).model_fields:
        value = getattr(model, name)
        if wanted(name):
            yield f"{where}{name}", value
        else:
            yield from _fields_in(value, wanted, f"{where}{name}.")


def _fields_in(
    value: object, wanted: Callable[[str], bool], where: str
) -> Iterator[tuple[str, object]]:
    if isinstance(value, BaseModel):
        yield from fields_named(value, wanted, where)
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _fields_in(item, wanted, f"{where}{key}.")
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield from _fields_in(item, wanted, f"{where}{index}.")


class Settings(_Section):
    broker: BrokerSection = Field(default_factory=BrokerSection)
    identity: IdentitySection
    targets: dict[Annotated[str, Field(pattern=_NAME)], TargetSection]
    rules: list[Rule] = Field(default_factory=list)
    breakglass: BreakglassSection | None = None
    review: ReviewSection = Field(default_factory=ReviewSection)
    notify: NotifySection = Field(default_factory=NotifySection)
    limits: LimitsSection = Field(default_factory=LimitsSection)
    gateway: GatewaySection | None = None
    web: WebSection | None = None
    inventory: InventorySection = Field(default_factory=InventorySection)
    oncall: list[OncallSource] = Field(default_factory=list)

    def named_groups(self) -> frozenset[str]:
        """Every group the config names (the fields called ``groups`` or ``*_groups``, at
        any depth): the only groups a decision can turn on. Found by walking the model, so
        a group setting added later is not forgotten here."""
        return frozenset(
            str(group)
            for _, groups in fields_named(self, lambda n: n == "groups" or n.endswith("_groups"))
            if isinstance(groups, list)
            for group in groups
        )

    def limit(self, target: str, key: str) -> tuple[int, str]:
        """The value of limits key ``key`` for ``target``, and the setting it comes from
        (``targets.T.limits.KEY`` when the target sets it, else ``limits.KEY``)."""
        own = getattr(self.targets[target].limits, key)
        if own is not None:
            return int(own), f"targets.{target}.limits.{key}"
        return int(getattr(self.limits, key)), f"limits.{key}"

    @model_validator(mode="after")
    def _web_signs_in_the_cli_s_people(self) -> Settings:
        """Entra gives each app registration its own ``sub`` for one person (a pairwise
        subject): signed in through another app, an approver would be another subject, able
        to approve a request twice (once from the CLI, once from the page) or, with no email
        claim, their own. So the pages sign in through the CLI's app there."""
        web = self.web
        if (
            web is not None
            and self.identity.kind == "entra"
            and (web.client_id != self.identity.client_id)
        ):
            raise _KeyedError(
                "web.client_id",
                'with kind = "entra" it must be identity.client_id '
                f"({self.identity.client_id}): Entra names a person differently in each app "
                "registration, so the pages sign in through the CLI's (add a Web platform "
                "with the redirect URI {public_url}/web/callback and a client secret to it)",
            )
        return self

    @model_validator(mode="after")
    def _oncall_sources_exist(self) -> Settings:
        names = [source.name for source in self.oncall]
        if len(set(names)) != len(names):
            raise _KeyedError("oncall", "two sources have the same name")
        for index, rule in enumerate(self.rules):
            if rule.oncall is not None and rule.oncall.source not in names:
                raise _KeyedError(
                    f"rules.{index}.oncall.source",
                    f"'{rule.oncall.source}' is not an [[oncall]] source"
                    + (f" (there are: {', '.join(names)})" if names else " (there is none)"),
                )
        wanted = self.review.incidents
        if wanted is not None and not any(
            source.name == wanted and source.pagerduty is not None for source in self.oncall
        ):
            raise _KeyedError(
                "review.incidents", f"'{wanted}' is not an [[oncall]] source with pagerduty"
            )
        return self

    @model_validator(mode="after")
    def _every_role_fits_its_limits(self) -> Settings:
        """A role whose connection_limit exceeds a connection cap could never be granted:
        said at start-up, not as a 429 to its first user."""
        breakglass = self.breakglass.targets if self.breakglass else {}
        for name, target in self.targets.items():
            for role_name, role in target.roles.items():
                keys = ["connections_per_person", "connections_per_target"]
                if breakglass.get(name) == role_name:
                    keys.append("breakglass_connections_per_target")
                for key in keys:
                    most, setting = self.limit(name, key)
                    if role.connection_limit > most:
                        raise _KeyedError(
                            f"targets.{name}.roles.{role_name}.connection_limit",
                            f"{role.connection_limit} is more than {setting} ({most}): no "
                            "session of this role could ever be granted",
                        )
        return self

    @model_validator(mode="after")
    def _gateway_targets_have_a_gateway(self) -> Settings:
        for name, target in self.targets.items():
            if target.access != "gateway":
                for role_name, role in target.roles.items():
                    if role.gateway is not None:
                        raise _KeyedError(
                            f"targets.{name}.roles.{role_name}.gateway",
                            'guardrails apply through the gateway only: set access = "gateway" '
                            "on the target, or remove them",
                        )
                continue
            if self.gateway is None:
                raise _KeyedError(
                    f"targets.{name}.access",
                    '"gateway" needs a [gateway] section (listen, tls_cert_file, ...)',
                )
            if not gateway_speaks(target.engine):
                raise _KeyedError(
                    f"targets.{name}.access",
                    f"the gateway does not speak {target.engine} yet; a "
                    f'{target.engine} target is "direct"',
                )
        return self

    @model_validator(mode="after")
    def _breakglass_points_at_real_things(self) -> Settings:
        if self.breakglass is None:
            return self
        for target, role in self.breakglass.targets.items():
            if target not in self.targets:
                raise _KeyedError("breakglass.targets", f"unknown target '{target}'")
            if role not in self.targets[target].roles:
                raise _KeyedError(
                    f"breakglass.targets.{target}", f"target '{target}' has no role '{role}'"
                )
            if self.breakglass.max_duration > self.targets[target].max_lifetime:
                raise _KeyedError(
                    "breakglass.max_duration", f"longer than the max_lifetime of target '{target}'"
                )
        return self

    @model_validator(mode="after")
    def _prefix_catches_only_session_users(self) -> Settings:
        """Every user whose name starts with a target's username_prefix counts as a session
        user of the broker, which the reconciler drops when it has no lease. So the prefix
        must not match the names the bootstrap sets up, on any target of the same server
        (PostgreSQL roles and MariaDB users are server-wide)."""
        for name, target in self.targets.items():
            prefix = target.username_prefix
            fixed = {FUNCTIONS_OWNER: "the definer functions' owner"}
            for other in self.targets.values():
                if (other.engine, other.host, other.port) != (
                    target.engine,
                    target.host,
                    target.port,
                ):
                    continue
                fixed.setdefault(other.provisioner.user, "the provisioner")
                for role in other.roles.values():
                    fixed.setdefault(role.group_role, "a group role")
            for role_name, what in sorted(fixed.items()):
                if role_name.lower().startswith(prefix):
                    raise _KeyedError(
                        f"targets.{name}.username_prefix",
                        f"'{prefix}' is also the start of {role_name} ({what}): the broker "
                        "would take it for a session user and could drop it; choose another "
                        "prefix, e.g. 'jit_'",
                    )
        return self

    @model_validator(mode="after")
    def _rules_point_at_real_things(self) -> Settings:
        names: set[str] = set()
        for index, rule in enumerate(self.rules):
            if rule.name in names:
                raise _KeyedError(f"rules.{index}.name", f"duplicate rule name '{rule.name}'")
            names.add(rule.name)
            for target in rule.targets:
                if target != "*" and target not in self.targets:
                    raise _KeyedError(f"rules.{index}.targets", f"unknown target '{target}'")
                for name, section in self.targets.items():
                    if target in ("*", name) and rule.max_duration > section.max_lifetime:
                        raise _KeyedError(
                            f"rules.{index}.max_duration",
                            f"longer than the max_lifetime of target '{name}'",
                        )
                for role in rule.roles:
                    known = (
                        {r for t in self.targets.values() for r in t.roles}
                        if target == "*"
                        else set(self.targets[target].roles)
                    )
                    if role != "*" and role not in known:
                        raise _KeyedError(
                            f"rules.{index}.roles", f"target '{target}' has no role '{role}'"
                        )
        return self


class _KeyedError(ValueError):
    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")


def load_settings(path: Path, *, read_secrets: bool = False) -> Settings:
    """Read and validate ``path``; raise ConfigError naming file, key and problem. With
    ``read_secrets``, also read every provisioner password once, so a broker about to
    serve fails at start, not at the first request (the values are read again at use)."""
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: no such file", hint="pass --config PATH or set DBACCESS_BROKER_CONFIG"
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    try:
        settings = Settings.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{path}: {_describe(exc)}", hint="fix the key named above") from None
    settings = _resolve_paths(settings, path.parent)
    if read_secrets:
        settings.broker.read_metrics_token()
        for target in settings.targets.values():
            target.provisioner.password.read()
        if settings.gateway is not None and any(
            t.access == "gateway" for t in settings.targets.values()
        ):
            settings.gateway.key.ensure()
            settings.gateway.client_ca()
    return settings


def _describe(exc: ValidationError) -> str:
    lines = []
    for error in exc.errors(include_url=False, include_input=False):
        key = ".".join(str(part) for part in error["loc"])
        message = str(error["msg"])
        for prefix in ("Value error, ", "Assertion failed, "):
            message = message.removeprefix(prefix)
        lines.append(f"{key}: {message}" if key else message)
    return "; ".join(lines)


def _resolve_paths(settings: Settings, base: Path) -> Settings:
    """Relative SQLite, password-file and certificate paths are relative to the config file."""
    store = settings.broker.store
    store_password_file = settings.broker.store_password_file
    if store_password_file is not None and not store_password_file.is_absolute():
        store_password_file = (base / store_password_file).resolve()
    prefix = "sqlite:///"
    if store.startswith(prefix) and not store.startswith(prefix + "/") and ":memory:" not in store:
        store = prefix + str((base / store[len(prefix) :]).resolve())
    targets = {}
    for name, target in settings.targets.items():
        if target.sslrootcert is not None and not target.sslrootcert.is_absolute():
            target = target.model_copy(
                update={"sslrootcert": (base / target.sslrootcert).resolve()}
            )
        log = target.statement_log
        if log is not None and not log.path.is_absolute():
            target = target.model_copy(
                update={"statement_log": log.model_copy(update={"path": base / log.path})}
            )
        file = target.provisioner.password_file
        if file is not None and not file.is_absolute():
            target = target.model_copy(
                update={
                    "provisioner": target.provisioner.model_copy(
                        update={"password_file": (base / file).resolve()}
                    )
                }
            )
        targets[name] = target
    oncall = [
        source.model_copy(
            update={
                "ca_file": _beside(base, source.ca_file),
                "pagerduty": source.pagerduty
                and source.pagerduty.model_copy(
                    update={"token_file": _beside(base, source.pagerduty.token_file)}
                ),
            }
        )
        for source in settings.oncall
    ]
    gateway = settings.gateway
    if gateway is not None:
        gateway = gateway.model_copy(
            update={
                key: (base / value).resolve()
                for key in ("tls_cert_file", "tls_key_file", "ca_file", "key_file")
                if (value := getattr(gateway, key)) is not None and not value.is_absolute()
            }
        )
    web = settings.web and settings.web.model_copy(
        update={
            "client_secret_file": _beside(base, settings.web.client_secret_file),
            "cookie_key_file": _beside(base, settings.web.cookie_key_file),
        }
    )
    return settings.model_copy(
        update={
            "broker": settings.broker.model_copy(
                update={
                    "store": store,
                    "store_password_file": store_password_file,
                    "metrics_token_file": _beside(base, settings.broker.metrics_token_file),
                }
            ),
            "targets": targets,
            "gateway": gateway,
            "oncall": oncall,
            "web": web,
        }
    )


def _beside(base: Path, path: Path | None) -> Path | None:
    """A path of the configuration file, relative to the file's folder."""
    return path if path is None or path.is_absolute() else (base / path).resolve()
