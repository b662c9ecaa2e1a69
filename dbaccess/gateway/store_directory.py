"""The gateway's sessions as the broker's store holds them.

A client names its session user at the gateway; the store has the lease (active, of a
``access = "gateway"`` target, not expired) with the SCRAM verifier of the session
secret. The upstream password is derived from the lease id under the shared gateway key
(credentials.py), and the target's address comes from the same configuration file the
broker reads, so nothing secret is ever read from the store; and the verifier counts only
with its MAC under that key (credentials.bind_verifier), so writing the store does not
let anyone in.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime

from dbaccess.broker.settings import Settings
from dbaccess.broker.store import Lease, Store
from dbaccess.errors import ConfigError
from dbaccess.gateway.credentials import bound_verifier, upstream_password
from dbaccess.gateway.guardrails import ALLOW_ALL
from dbaccess.gateway.sessions import GatewaySession, LiveConnections, ScramVerifier, Upstream
from dbaccess.gateway.upstream_socket import owner_uid
from dbaccess.gateway.upstream_tls import PLAIN, UpstreamTls, upstream_tls
from dbaccess.gateway.watcher import UNBOUND, Standing

log = logging.getLogger("dbaccess.gateway")


def utc_now() -> datetime:
    return datetime.now(UTC)


class StoreDirectory:
    def __init__(
        self,
        store: Store,
        settings: Settings,
        key: str,
        live: LiveConnections | None = None,
        clock: Callable[[], datetime] = utc_now,
        seen: Callable[[str, datetime], None] | None = None,
    ) -> None:
        self.store = store
        self._tls: dict[str, UpstreamTls] = {}
        self._socket_owners: dict[str, int] = {}
        self.settings = settings
        self._key = key
        self.live = live or LiveConnections()
        self.clock = clock
        self.seen = seen  # told each session's end as it is looked up (the watcher)

    @property
    def settings(self) -> Settings:
        return self._settings

    @settings.setter
    def settings(self, settings: Settings) -> None:
        """The configuration (again, on SIGHUP): each gateway target's TLS to its database
        is made here, so a CA file that cannot be read refuses the configuration whole."""
        self._tls = {
            name: upstream_tls(target.sslmode, target.sslrootcert, f"target {name}")
            for name, target in settings.targets.items()
            if target.access == "gateway" and target.gateway_socket is None
        }
        owners: dict[str, int] = {}
        for name, target in settings.targets.items():
            if target.access == "gateway" and target.gateway_socket_owner is not None:
                try:
                    owners[name] = owner_uid(target.gateway_socket_owner)
                except KeyError:
                    raise ConfigError(
                        f"target {name}: gateway_socket_owner '{target.gateway_socket_owner}'"
                        " is no user on this host; name the user the database server runs "
                        "as here, or its uid"
                    ) from None
        self._socket_owners = owners
        self._settings = settings

    def lookup(self, user: str) -> GatewaySession | None:
        lease = self.store.gateway_lease(user, self.clock())
        if lease is None or lease.gateway_verifier is None:
            return None
        target = self.settings.targets.get(lease.target)
        if target is None or target.access != "gateway":
            return None  # a target since removed from the configuration, or made direct
        template = target.roles.get(lease.role)
        if template is None:
            return None  # a role since removed (a reload revokes its sessions too)
        verifier = self._verifier(lease)
        if verifier is None:  # not one the broker wrote for this lease: a store edited
            log.warning("gateway: lease %s has a verifier the broker did not bind", lease.id)
            return None
        if self.seen is not None:
            self.seen(lease.id, lease.expires_at)
        return GatewaySession(
            lease_id=lease.id,
            person=lease.subject,
            target=lease.target,
            role=lease.role,
            user=lease.db_user,
            verifier=verifier,
            upstream=Upstream(
                host=target.host,
                port=target.port,
                database=target.database,
                user=lease.db_user,
                password=upstream_password(self._key, lease.id),
                tls=self._tls.get(lease.target, PLAIN),
                socket=None if target.gateway_socket is None else str(target.gateway_socket),
                socket_owner=self._socket_owners.get(lease.target),
            ),
            expires_at=lease.expires_at,
            policy=ALLOW_ALL if template.gateway is None else template.gateway.policy(),
        )

    def _verifier(self, lease: Lease) -> ScramVerifier | None:
        if lease.gateway_verifier is None:
            return None
        return bound_verifier(
            self._key,
            lease.gateway_verifier,
            lease.db_user,
            lease.target,
            lease.role,
            lease.expires_at,
        )

    def standing(self, lease_ids: list[str]) -> Standing:
        """State, expiry and cause of each lease, for the revocation watcher. An active
        lease whose expiry (or user, target, role) is not what the broker bound is
        reported as ``unbound``: its end was moved in the store by someone else, and the
        watcher ends its connections rather than trust the new one."""
        found: dict[str, tuple[str, datetime, str | None]] = {}
        for lease_id, lease in self.store.gateway_standing(lease_ids).items():
            state = lease.state
            if state == "active" and self._verifier(lease) is None:
                log.warning("gateway: lease %s has an expiry the broker did not bind", lease_id)
                state = UNBOUND
            found[lease_id] = (state, lease.expires_at, lease.revoke_cause)
        return found
