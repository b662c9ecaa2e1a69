"""The revocation watcher: which sessions it ends, with what reason, and that an
unreachable store still lets expiry end them (unit tests over LiveConnections)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from dbaccess.gateway.credentials import new_session_secret, upstream_password
from dbaccess.gateway.sessions import LiveConnections
from dbaccess.gateway.watcher import UNBOUND, RevocationWatcher, Standing

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)


class Connection:
    def __init__(self) -> None:
        self.reasons: list[str] = []

    def terminate(self, reason: str) -> None:
        self.reasons.append(reason)


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> datetime:
        return self.now


def watcher_with(standing: dict[str, tuple[str, datetime, str | None]] | Exception):
    live = LiveConnections()
    clock = Clock()

    def read(ids: list[str]) -> Standing:
        if isinstance(standing, Exception):
            raise standing
        return {i: standing[i] for i in ids if i in standing}

    return live, clock, RevocationWatcher(live, read, clock=clock)


def test_only_sessions_that_left_active_are_ended_with_their_reason() -> None:
    later = NOW + timedelta(hours=1)
    standing = {
        "live": ("active", later, None),
        "revoked": ("revoking", later, "revoked_by_user"),
        "expired": ("revoked", NOW, "expired"),
    }
    live, _, watcher = watcher_with(standing)
    connections = {name: Connection() for name in [*standing, "gone"]}
    for name, connection in connections.items():
        live.attach(name, connection)
    assert watcher.check() == 3
    assert connections["live"].reasons == []
    assert connections["revoked"].reasons == ["the session was revoked (revoked_by_user)"]
    assert connections["expired"].reasons == ["the session expired"]
    assert connections["gone"].reasons == ["the session no longer exists"]
    assert live.leases() == ["live"]


def test_expiry_ends_a_session_by_the_gateways_clock_when_the_store_is_down() -> None:
    standing: dict[str, tuple[str, datetime, str | None]] = {
        "a": ("active", NOW + timedelta(seconds=30), None)
    }
    live, clock, watcher = watcher_with(standing)
    connection = Connection()
    live.attach("a", connection)
    assert watcher.check() == 0  # learns the expiry
    watcher._standing = lambda ids: (_ for _ in ()).throw(OSError("store down"))  # type: ignore[method-assign]
    assert watcher.check() == 0 and connection.reasons == []  # down, not yet due
    clock.now = NOW + timedelta(seconds=31)
    assert watcher.check() == 1
    assert connection.reasons == ["the session expired"]


def test_a_store_that_never_answered_ends_nothing_it_does_not_know(
    caplog: pytest.LogCaptureFixture,
) -> None:
    live, _, watcher = watcher_with(OSError("store down"))
    connection = Connection()
    live.attach("a", connection)
    assert watcher.check() == 0 and connection.reasons == []
    assert "reading the standing of live gateway sessions" in caplog.text


def test_the_upstream_password_is_derived_per_lease_and_key() -> None:
    one = upstream_password("key-1", "lease-a")
    assert one == upstream_password("key-1", "lease-a")
    assert (
        len({one, upstream_password("key-1", "lease-b"), upstream_password("key-2", "lease-a")})
        == 3
    )
    assert len(one) == 43 and one.isascii()
    with pytest.raises(ValueError):
        upstream_password("", "lease-a")
    secret, verifier = new_session_secret()
    assert secret not in str(verifier) and str(verifier).startswith("SCRAM-SHA-256$4096:")


def test_an_end_learnt_at_login_is_kept_with_the_store_down_from_the_start() -> None:
    live, clock, watcher = watcher_with(OSError("store down"))
    connection = Connection()
    live.attach("a", connection)
    watcher.expect("a", NOW + timedelta(seconds=5))  # what the directory read at login
    assert watcher.check() == 0 and connection.reasons == []
    clock.now = NOW + timedelta(seconds=6)
    assert watcher.check_clock() == 1  # the clock's own pass, no store needed
    assert connection.reasons == ["the session expired"]


def test_a_verifier_counts_only_bound_to_its_lease_under_the_key() -> None:
    from dbaccess.gateway.credentials import bind_verifier, bound_verifier

    _, verifier = new_session_secret()
    end = NOW + timedelta(hours=1)
    stored = bind_verifier("key", verifier, "gw_alice_1", "vault", "readonly", end)
    assert bound_verifier("key", stored, "gw_alice_1", "vault", "readonly", end) == verifier
    # moved to another role, user, target or end, under another key, or replaced: refused
    for args in [
        ("key", stored, "gw_alice_1", "vault", "readwrite", end),
        ("key", stored, "gw_bob_1", "vault", "readonly", end),
        ("key", stored, "gw_alice_1", "demo", "readonly", end),
        ("key", stored, "gw_alice_1", "vault", "readonly", end + timedelta(seconds=1)),
        ("other", stored, "gw_alice_1", "vault", "readonly", end),
        ("key", str(new_session_secret()[1]) + stored[stored.index("#") :], "gw_alice_1",
         "vault", "readonly", end),
        ("key", str(verifier), "gw_alice_1", "vault", "readonly", end),
    ]:  # fmt: skip
        assert bound_verifier(*args) is None
    # the same end in another time zone is the same end
    other_zone = end.astimezone(timezone(timedelta(hours=5)))
    assert bound_verifier("key", stored, "gw_alice_1", "vault", "readonly", other_zone)


def test_a_renewal_binds_the_verifier_to_the_new_end_and_launders_nothing() -> None:
    from dbaccess.gateway.credentials import bind_verifier, bound_verifier, rebind_verifier

    _, verifier = new_session_secret()
    end, later = NOW + timedelta(hours=1), NOW + timedelta(hours=2)
    stored = bind_verifier("key", verifier, "gw_alice_1", "vault", "readonly", end)
    again = rebind_verifier("key", stored, "gw_alice_1", "vault", "readonly", end, later)
    assert again is not None
    assert bound_verifier("key", again, "gw_alice_1", "vault", "readonly", later) == verifier
    assert bound_verifier("key", again, "gw_alice_1", "vault", "readonly", end) is None
    # a verifier the broker did not bind (or not to this end) is not bound anew
    planted = str(new_session_secret()[1]) + "#forged"
    assert rebind_verifier("key", planted, "gw_alice_1", "vault", "readonly", end, later) is None
    assert rebind_verifier("key", stored, "gw_alice_1", "vault", "readonly", later, later) is None


def test_an_unbound_lease_is_ended_with_its_reason() -> None:
    live, _clock, watcher = watcher_with({"a": (UNBOUND, NOW + timedelta(days=7), None)})
    connection = Connection()
    live.attach("a", connection)
    assert watcher.check_store() == 1
    assert connection.reasons == ["the session's record was changed outside the broker"]
