"""Revoking sessions: mark ``revoking`` -> lock, terminate, drop -> mark ``revoked``.

A caller's revocation, the reaper's batches of due leases (expired, interrupted, retries
whose time has come) and the reconciler (managed users without a live lease) all end here.
Leases are claimed for this replica in one store transaction, their users dropped a chunk
per database call on the target's own workers, and the outcomes recorded in one more. A
failure leaves the lease ``revoking`` with its error and a retry time (backoff), until the
user is gone.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime, timedelta

from dbaccess.broker.engines import EngineError
from dbaccess.broker.failpoints import failpoint
from dbaccess.broker.policy import breakglass_covers, rule_covers
from dbaccess.broker.services.context import BrokerContext
from dbaccess.broker.settings import Settings
from dbaccess.broker.store import Lease, due_cause

log = logging.getLogger("dbaccess.broker")

MAX_BACKOFF = timedelta(minutes=5)
REVOKE_CHUNK = 50  # users per revoke_users call: see postgres_bootstrap._revoke_users
CLAIM_TTL = timedelta(seconds=15)  # longer than one revocation takes (it gives up at ~5 s);
# a crashed replica's claims lapse after this, so a restarted broker resumes soon


# What one revocation attempt came to: the lease, the error (None: the user is gone) and,
# after an error, when to try again.
Outcome = tuple[Lease, str | None, datetime | None]


class Revocation:
    def __init__(self, ctx: BrokerContext) -> None:
        self.ctx = ctx
        # Revocation workers, per target (see start_drops).
        self._workers: dict[str, ThreadPoolExecutor] = {}
        self._workers_lock = threading.Lock()

    def withdraw(self, settings: Settings) -> int:
        """After a configuration reload: revoke the live sessions ``settings`` no longer
        grants (cause ``policy_withdrawn``). How many were revoked."""
        wanted = [
            (lease.id, "policy_withdrawn")
            for lease in self.ctx.store.live_leases()
            if lease.state != "revoking" and not still_granted(settings, lease)
        ]
        if wanted:
            log.warning("revoking %d session(s) the new configuration withdraws", len(wanted))
        return self.revoke_batch(wanted) if wanted else 0

    def reap(
        self, limit: int = 100, *, target: str | None = None, not_targets: Iterable[str] = ()
    ) -> int:
        """Revoke a batch of due leases (expired, interrupted, or a retry whose time has
        come); returns how many were due, so a storm is drained batch after batch. The
        reaper calls it per target (``target``), and for leases of targets no longer
        configured (``not_targets``: the configured ones)."""
        batch = self.due_revocations(limit, target=target, not_targets=not_targets)
        self.revoke_batch(batch)
        return len(batch)

    def due_revocations(
        self, limit: int, *, target: str | None = None, not_targets: Iterable[str] = ()
    ) -> list[tuple[str, str]]:
        """(lease id, cause) of up to ``limit`` leases due for revocation now."""
        now = self.ctx.clock()
        stale = now - self.ctx.settings.broker.creation_timeout
        return [
            (lease.id, due_cause(lease, now))
            for lease in self.ctx.store.due(
                now, stale, limit, target=target, not_targets=not_targets
            )
        ]

    def revoke_batch(
        self,
        wanted: list[tuple[str, str]],
        actor: str | None = None,
        origin: dict[str, str | None] | None = None,
        skip_troubled: bool = False,
    ) -> int:
        """Mark and claim the leases (one store transaction), drop their users a few at a
        time in parallel, then record every outcome (one more transaction). Leases another
        replica holds are left to it. Returns how many users were dropped."""
        claimed = self.claim(wanted, actor, origin)
        return self.settle(
            [
                outcome
                for drop in self.start_drops(claimed, skip_troubled=skip_troubled)
                for outcome in drop.result()
            ]
        )

    def claim_due(self, limit: int, *, target: str | None = None) -> list[Lease]:
        """Claim up to ``limit`` due leases of ``target`` in one store transaction."""
        now, ctx = self.ctx.clock(), self.ctx
        claimed = ctx.store.claim_due(
            now,
            now - ctx.settings.broker.creation_timeout,
            limit,
            ctx.replica,
            CLAIM_TTL,
            target=target,
        )
        if claimed:
            failpoint("revoke.after_mark")
        return claimed

    def claim(
        self,
        wanted: list[tuple[str, str]],
        actor: str | None = None,
        origin: dict[str, str | None] | None = None,
    ) -> list[Lease]:
        """Mark ``wanted`` revoking and claim them for this replica (one transaction)."""
        if not wanted:
            return []
        claimed = self.ctx.store.claim_for_revocation(
            wanted, self.ctx.clock(), self.ctx.replica, CLAIM_TTL, actor, origin
        )
        if claimed:
            failpoint("revoke.after_mark")
        return claimed

    def start_drops(
        self, claimed: list[Lease], *, skip_troubled: bool = False
    ) -> list[Future[list[Outcome]]]:
        """Drop the claimed leases' users on their targets' own workers, a chunk of users
        per database call (``revoke_users``), the chunks spread over the workers: a target
        that hangs holds only its own workers, never another target's revocations. With
        ``skip_troubled`` (the reaper), a chunk whose target stopped answering meanwhile
        is not tried: the rest of a batch would each wait for its timeout."""
        by_target: dict[str, list[Lease]] = {}
        for lease in claimed:
            by_target.setdefault(lease.target, []).append(lease)
        running: list[Future[list[Outcome]]] = []
        for target, group in by_target.items():
            workers = self.ctx.settings.broker.revoke_workers
            size = max(1, min(REVOKE_CHUNK, -(-len(group) // workers)))
            running += [
                self._workers_of(target).submit(
                    self._drop_users, group[i : i + size], skip_troubled
                )
                for i in range(0, len(group), size)
            ]
        return running

    def _workers_of(self, target: str) -> ThreadPoolExecutor:
        with self._workers_lock:
            workers = self._workers.get(target)
            if workers is None:
                workers = self._workers[target] = ThreadPoolExecutor(
                    self.ctx.settings.broker.revoke_workers,
                    thread_name_prefix=f"dbaccess-revoke-{target}",
                )
            return workers

    def settle(self, outcomes: list[Outcome]) -> int:
        """Record the outcomes (one transaction) and count them; returns how many users
        were dropped."""
        if not outcomes:
            return 0
        failpoint("revoke.after_drop")
        done = self.ctx.clock()
        self.ctx.store.settle_revocations(outcomes, done, self.ctx.replica)
        dropped = 0
        for lease, error, _ in outcomes:
            if error is not None:
                self.ctx.metrics.revoke_failures.labels(lease.target).inc()
                log.warning("revoking %s (lease %s) failed: %s", lease.db_user, lease.id, error)
                continue
            dropped += 1
            cause = lease.revoke_cause or "unknown"
            self.ctx.metrics.revoked.labels(lease.target, cause).inc()
            if cause == "expired":
                lag = (done - lease.expires_at).total_seconds()
                self.ctx.metrics.revocation_lag.labels(lease.target).observe(max(lag, 0.0))
        return dropped

    def _drop_users(self, chunk: list[Lease], skip_troubled: bool = False) -> list[Outcome]:
        """Drop the users of ``chunk`` (leases of one target): an outcome per lease."""
        target = chunk[0].target
        errors: dict[str, str | None]
        engine = self.ctx.engines.get(target)
        if engine is None:
            errors = dict.fromkeys(
                (lease.db_user for lease in chunk), f"target '{target}' is no longer configured"
            )
        elif skip_troubled and engine.troubled:
            errors = dict.fromkeys(
                (lease.db_user for lease in chunk),
                f"cannot connect to target '{target}' (it does not "
                "answer; tried again as soon as it does)",
            )
        else:
            try:
                errors = engine.revoke_users([lease.db_user for lease in chunk])
            except EngineError as exc:
                errors = dict.fromkeys((lease.db_user for lease in chunk), str(exc))
        now = self.ctx.clock()
        outcomes: list[Outcome] = []
        for lease in chunk:
            error = errors.get(lease.db_user, f"no outcome for {lease.db_user}")
            # A target that does not answer is retried as soon as it answers again (the
            # reaper pings it, then makes its failed leases due): this backoff is for
            # errors.
            retry_at = (
                None
                if error is None
                else now + min(timedelta(seconds=2 ** min(lease.attempts, 10)), MAX_BACKOFF)
            )
            outcomes.append((lease, error, retry_at))
        return outcomes

    def reconcile(self, target: str | None = None) -> int:
        """Revoke managed users that have no live lease (e.g. made by a crashed broker),
        on ``target`` or on every target.

        Users are listed before leases are read: a user is created only after its lease
        is written, so any listed user whose lease is live shows up in the second read.
        """
        revoked = 0
        for name, engine in list(self.ctx.engines.items()):
            if target is not None and name != target:
                continue
            try:
                present = engine.list_managed_users()
            except EngineError as exc:
                log.warning("reconciling target %s failed: %s", name, exc)
                continue
            live = self.ctx.store.live_users(name)
            for username in sorted(set(present) - live):
                try:
                    engine.revoke_user(username)
                except EngineError as exc:
                    log.warning("reconciler could not drop %s on %s: %s", username, name, exc)
                    continue
                self.ctx.store.record(
                    self.ctx.clock(),
                    "reconcile.revoked",
                    None,
                    {
                        "target": name,
                        "db_user": username,
                        "cause": "managed user without a live lease",
                    },
                )
                revoked += 1
        return revoked


def still_granted(settings: Settings, lease: Lease) -> bool:
    """Does ``settings`` still grant what ``lease`` was granted by? Its target and role
    must exist, and the rule (or break-glass) that granted it must still name them. Who
    the person is (their groups) is known only from their token: a rule that stops naming
    a group does not withdraw sessions already granted to its members."""
    target = settings.targets.get(lease.target)
    if target is None or lease.role not in target.roles:
        return False
    if lease.kind == "breakglass":
        return breakglass_covers(settings.breakglass, lease.target, lease.role)
    if lease.rule is None:
        return True
    rule = next((r for r in settings.rules if r.name == lease.rule), None)
    return rule is not None and rule_covers(rule, lease.target, lease.role)
