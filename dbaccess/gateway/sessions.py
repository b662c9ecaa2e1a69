"""Who may come in through the gateway: the sessions it knows, and their live connections.

Engine-neutral: a protocol server asks the directory for the session a client's user name
names, checks the client's secret against the session's verifier, and registers each
connection it opens so that ``end(lease_id, reason)`` can close them all at once.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import threading
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from dbaccess.gateway.guardrails import ALLOW_ALL, Policy
from dbaccess.gateway.upstream_tls import PLAIN, UpstreamTls

SCRAM_ITERATIONS = 4096


@dataclass(frozen=True)
class ScramVerifier:
    """A SCRAM-SHA-256 verifier (RFC 5802/7677): what the gateway keeps instead of a secret."""

    salt: bytes
    stored_key: bytes
    server_key: bytes
    iterations: int = SCRAM_ITERATIONS

    @classmethod
    def for_secret(cls, secret: str, iterations: int = SCRAM_ITERATIONS) -> ScramVerifier:
        # The secrets are ours (URL-safe ASCII), so SASLprep leaves them unchanged.
        if not secret.isascii():
            raise ValueError("a gateway secret must be ASCII")
        salt = secrets.token_bytes(16)
        salted = hashlib.pbkdf2_hmac("sha256", secret.encode(), salt, iterations)
        client_key = hmac.digest(salted, b"Client Key", "sha256")
        return cls(
            salt=salt,
            stored_key=hashlib.sha256(client_key).digest(),
            server_key=hmac.digest(salted, b"Server Key", "sha256"),
            iterations=iterations,
        )

    @classmethod
    def parse(cls, text: str) -> ScramVerifier:
        """PostgreSQL's form: ``SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>``."""
        try:
            mechanism, header, keys = text.split("$")
            iterations, salt = header.split(":")
            stored, server = keys.split(":")
            if mechanism != "SCRAM-SHA-256":
                raise ValueError
            return cls(
                base64.b64decode(salt, validate=True),
                base64.b64decode(stored, validate=True),
                base64.b64decode(server, validate=True),
                int(iterations),
            )
        except ValueError:
            raise ValueError("not a SCRAM-SHA-256 verifier") from None

    def __str__(self) -> str:
        b64 = base64.b64encode
        return (
            f"SCRAM-SHA-256${self.iterations}:{b64(self.salt).decode()}$"
            f"{b64(self.stored_key).decode()}:{b64(self.server_key).decode()}"
        )

    def auth_info(self) -> tuple[bytes, bytes, bytes, int]:
        """What scramp's server ``auth_fn`` returns."""
        return self.salt, self.stored_key, self.server_key, self.iterations


@dataclass(frozen=True)
class Upstream:
    """Where and as whom the gateway connects for a session (never shown to the client)."""

    host: str
    port: int
    database: str
    user: str
    password: str = field(repr=False)
    # TLS to the database (upstream_tls.py; the target's sslmode): plain TCP by default
    tls: UpstreamTls = field(default=PLAIN, repr=False, compare=False)
    # The database's Unix socket (a path on the gateway's host), connected instead of
    # host:port when set: no network between the two, so no TLS (the server has none
    # there); host:port still names the database in messages.
    socket: str | None = None
    # The uid the database server runs as: a socket served by another is refused
    # (upstream_socket.py); required with ``socket``.
    socket_owner: int | None = None

    def __post_init__(self) -> None:
        if self.socket is not None and self.tls.context is not None:
            raise ValueError("a database reached by its Unix socket has no TLS to ask for")
        if (self.socket is None) != (self.socket_owner is None):
            raise ValueError("a database's socket goes with the uid that serves it")


@dataclass(frozen=True)
class GatewaySession:
    lease_id: str
    person: str
    target: str
    role: str
    user: str  # the user name the client presents to the gateway
    verifier: ScramVerifier = field(repr=False)
    upstream: Upstream
    # When the session ends; the gateway closes its connections then even if it cannot
    # reach the store. None: only revocation ends it (tests' in-memory sessions).
    expires_at: datetime | None = None
    policy: Policy = ALLOW_ALL  # the role template's guardrails


class SessionDirectory(Protocol):
    def lookup(self, user: str) -> GatewaySession | None:
        """The live session the client's user name names, or None."""


class Terminable(Protocol):
    def terminate(self, reason: str) -> None:
        """Tell the client why (the protocol's own way) and close both sides."""


class LiveConnections:
    """The open connections of each session; ``end`` is the revocation hook."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_lease: dict[str, set[Terminable]] = {}

    def attach(self, lease_id: str, connection: Terminable) -> None:
        with self._lock:
            self._by_lease.setdefault(lease_id, set()).add(connection)

    def detach(self, lease_id: str, connection: Terminable) -> None:
        with self._lock:
            open_ = self._by_lease.get(lease_id)
            if open_ is not None:
                open_.discard(connection)
                if not open_:
                    del self._by_lease[lease_id]

    def leases(self) -> list[str]:
        """The sessions that have a connection open now."""
        with self._lock:
            return list(self._by_lease)

    def count(self, lease_id: str) -> int:
        with self._lock:
            return len(self._by_lease.get(lease_id, ()))

    def end(self, lease_id: str, reason: str) -> int:
        """Close every connection of the session; how many there were."""
        with self._lock:
            connections = list(self._by_lease.pop(lease_id, ()))
        for connection in connections:
            connection.terminate(reason)
        return len(connections)


class MemoryDirectory:
    """Sessions held in memory (tests; later the store's view). Thread-safe."""

    def __init__(self, live: LiveConnections | None = None) -> None:
        self.live = live or LiveConnections()
        self._lock = threading.Lock()
        self._by_user: dict[str, GatewaySession] = {}

    def add(self, session: GatewaySession) -> None:
        with self._lock:
            self._by_user[session.user] = session

    def lookup(self, user: str) -> GatewaySession | None:
        with self._lock:
            return self._by_user.get(user)

    def end(self, lease_id: str, reason: str) -> int:
        """Forget the session (no new connections) and close the open ones."""
        with self._lock:
            for user in [u for u, s in self._by_user.items() if s.lease_id == lease_id]:
                del self._by_user[user]
        return self.live.end(lease_id, reason)
