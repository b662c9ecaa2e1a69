"""The identity provider's signing keys, fetched off the request path and kept in the store.

A request never waits for the provider longer than ``WAIT``, and never fetches by itself:
one background fetch at a time (single flight) refreshes the key set, with short
``FETCH_TIMEOUT``s. A token whose key is known is checked without the provider, even when
the set is old (a refresh then starts behind it). A token with an unknown ``kid`` starts a
fetch at most once every ``UNKNOWN_KID_INTERVAL``, however many such tokens arrive, so
forged kids cannot turn the broker into a fetch storm against the provider.

Every good key set is saved in the store, so a broker restarted while the provider is
unreachable still accepts valid tokens. When no key can be had because the provider is
unreachable, ``IdentityUnavailable`` says so (the API's 503): logging in again would not
help, it needs the same provider.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Protocol

import httpx
import jwt

log = logging.getLogger("dbaccess.broker.identity")

# Connect 2 s, each read/write 3 s: a stopped provider (which still completes TCP
# handshakes from its listen backlog) costs a fetch about 3 s, on the fetch's thread.
FETCH_TIMEOUT = httpx.Timeout(3.0, connect=2.0)
WAIT = 3.0  # the longest a request waits for a fetch under way
LIFESPAN = 300.0  # a key set older than this is refreshed, in the background
RETRY_AFTER_FAILURE = 5.0  # between background refreshes while the provider fails
UNKNOWN_KID_INTERVAL = 10.0  # at most one fetch per this many seconds for unknown kids


class IdentityUnavailable(Exception):
    """No key to check the token with, because the identity provider could not be
    reached (or answered nonsense). The message is safe to return to the caller."""


class UnknownKey(Exception):
    """The provider answered, and has no key the token names."""


class KeyKeeper(Protocol):
    """Where the last good key set is kept (the broker's store)."""

    def load_identity_keys(self, issuer: str) -> tuple[str, dict[str, Any], datetime] | None: ...

    def save_identity_keys(
        self, issuer: str, jwks_uri: str, jwks: dict[str, Any], now: datetime
    ) -> None: ...


class IssuerKeys:
    """The signing keys of one issuer. Thread-safe."""

    def __init__(
        self,
        issuer: str,
        *,
        http_get: Callable[[str], dict[str, Any]] | None = None,
        keeper: KeyKeeper | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.issuer = issuer
        self._http_get = http_get or get_json
        self._keeper = keeper
        self._clock = clock
        self._lock = threading.Lock()
        self._keys: dict[str | None, jwt.PyJWK] = {}
        self._jwks_uri: str | None = None
        self._fetched_at: float | None = None  # clock() of the last good set
        self._last_attempt = -math.inf
        self._failure: str | None = None  # why the last fetch failed; None after a good one
        self._running: threading.Event | None = None  # set when the fetch under way ends
        self._load_kept()

    def _load_kept(self) -> None:
        if self._keeper is None:
            return
        try:
            kept = self._keeper.load_identity_keys(self.issuer)
        except Exception as exc:  # noqa: BLE001 - the provider is asked instead
            log.warning("cannot read the kept identity keys", extra={"error": str(exc)})
            return
        if kept is None:
            return
        jwks_uri, jwks, fetched_at = kept
        try:
            self._keys = signing_keys(jwks)
        except ValueError:
            return
        self._jwks_uri = jwks_uri
        age = max(0.0, (datetime.now(UTC) - fetched_at).total_seconds())
        self._fetched_at = self._clock() - age

    def signing_key(self, kid: str | None) -> jwt.PyJWK:
        """The key named ``kid``. Waits at most ``WAIT`` for a fetch under way; raises
        UnknownKey when the provider has no such key, IdentityUnavailable when it could
        not be asked."""
        with self._lock:
            key = self._find(kid)
            if key is not None:
                if self._fetched_at is None or self._clock() - self._fetched_at > LIFESPAN:
                    self._refresh_locked(RETRY_AFTER_FAILURE)
                return key
            self._refresh_locked(UNKNOWN_KID_INTERVAL)
            running = self._running
        if running is not None:
            running.wait(WAIT)
        with self._lock:
            key = self._find(kid)
            if key is not None:
                return key
            if self._running is not None and self._running is running:
                raise IdentityUnavailable(
                    f"the identity provider at {self.issuer} is unreachable (no answer "
                    f"within {WAIT:g} s): the broker cannot check this token's signature"
                )
            if self._failure is not None:
                raise IdentityUnavailable(
                    f"the identity provider at {self.issuer} is unreachable, and the broker "
                    f"knows no key for this token ({self._failure})"
                )
        raise UnknownKey(f"the identity provider has no signing key {kid!r}")

    def _find(self, kid: str | None) -> jwt.PyJWK | None:
        if kid is None:  # a provider with one key may leave kid out
            return next(iter(self._keys.values())) if len(self._keys) == 1 else None
        return self._keys.get(kid)

    def refresh(self) -> threading.Event:
        """Start a fetch now (unless one is under way); the event is set when it ends."""
        with self._lock:
            self._refresh_locked(0.0)
            assert self._running is not None
            return self._running

    def _refresh_locked(self, min_interval: float) -> None:
        if self._running is not None or self._clock() - self._last_attempt < min_interval:
            return
        self._last_attempt = self._clock()
        self._running = done = threading.Event()
        threading.Thread(
            target=self._fetch, args=(done,), name="dbaccess-jwks", daemon=True
        ).start()

    def _fetch(self, done: threading.Event) -> None:
        try:
            jwks_uri = self._jwks_uri or self._discover()
            jwks = self._http_get(jwks_uri)
            keys = signing_keys(jwks)
        except Exception as exc:  # noqa: BLE001 - any failure is "the provider failed"
            failure = str(exc) or type(exc).__name__
            log.warning(
                "fetching the identity provider's keys failed",
                extra={"issuer": self.issuer, "error": failure},
            )
            with self._lock:
                self._failure = failure
                self._jwks_uri = None  # found again next time, in case it moved
                self._running = None
            done.set()
            return
        with self._lock:
            self._keys, self._jwks_uri = keys, jwks_uri
            self._fetched_at, self._failure = self._clock(), None
            self._running = None
        done.set()
        if self._keeper is not None:
            try:
                self._keeper.save_identity_keys(self.issuer, jwks_uri, jwks, datetime.now(UTC))
            except Exception as exc:  # noqa: BLE001 - kept in memory; saved next time
                log.warning("cannot keep the identity keys", extra={"error": str(exc)})

    def _discover(self) -> str:
        discovery = self._http_get(self.issuer + "/.well-known/openid-configuration")
        if str(discovery.get("issuer", "")).rstrip("/") != self.issuer:
            raise ValueError("the provider's discovery document names another issuer")
        jwks_uri = discovery.get("jwks_uri")
        if not isinstance(jwks_uri, str) or not jwks_uri.startswith(("https://", "http://")):
            raise ValueError("the provider's discovery document has no jwks_uri")
        return jwks_uri

    def status(self) -> dict[str, Any]:
        """For /healthz: no I/O."""
        with self._lock:
            age = None if self._fetched_at is None else round(self._clock() - self._fetched_at)
            return {
                "status": "ok" if self._failure is None else "unreachable",
                "keys": len(self._keys),
                "keys_age_seconds": age,
                **({"error": self._failure} if self._failure else {}),
            }


def signing_keys(jwks: dict[str, Any]) -> dict[str | None, jwt.PyJWK]:
    """The signature keys of a JWKS by kid (as PyJWKClient picks them); ValueError when
    there is none."""
    try:
        keyset = jwt.PyJWKSet.from_dict(jwks)
    except jwt.PyJWTError as exc:
        raise ValueError(f"the provider's key set is unusable: {exc}") from None
    keys = {k.key_id: k for k in keyset.keys if k.public_key_use in ("sig", None)}
    if not keys:
        raise ValueError("the provider's key set has no signing key")
    return keys


def get_json(url: str) -> dict[str, Any]:
    try:
        response = httpx.get(url, timeout=FETCH_TIMEOUT)
        response.raise_for_status()
        data = response.json()
    except httpx.TimeoutException:
        raise ConnectionError(f"no answer from {url} in time") from None
    except (httpx.HTTPError, ValueError) as exc:
        raise ConnectionError(f"cannot fetch {url}: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"unexpected document at {url}")
    return data
