"""The reaper: revokes due leases, one thread per target, so a target that is down,
stopped or slow delays only its own revocations, never another target's.

Each target's thread drains its due leases in a pipeline: while one batch's users are
being dropped (on the target's own revocation workers), the next batch is claimed and the
previous one's outcomes are written, so the store's work overlaps the database's. When
the target stops answering, the thread pings it every second and no longer waits for a
timeout per lease: a due lease is marked and its failure recorded at once (then retried
on the usual backoff); the first answer makes the leases that failed meanwhile due at
once, whatever backoff they had reached.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future

from dbaccess.broker import rotation
from dbaccess.broker.engines import EngineError
from dbaccess.broker.outages import Outage
from dbaccess.broker.services.revocation import Outcome
from dbaccess.broker.services.sessions import SessionService
from dbaccess.errors import DbaccessError

log = logging.getLogger("dbaccess.broker.reaper")

BATCH = 1000  # leases claimed per store transaction (a batch drops in ~0.3 s)
PING_EVERY = 1.0  # how often a target that does not answer is tried again
# How often the statement records of ended gateway sessions are sealed into the audit
# trail: a seal waits out a grace period anyway (store/statement_chain.py), so seconds more
# change nothing, and an idle store is not queried every pass.
SEAL_EVERY = 5.0


class Reaper:
    def __init__(self, service: SessionService, interval: float, reconcile_interval: float) -> None:
        self._service = service
        self._interval = interval
        self._reconcile_interval = reconcile_interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dbaccess-reaper", daemon=True)
        self._targets: dict[str, TargetReaper] = {}

    def start(self) -> None:
        self._sync_targets()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        # A thread in a database call leaves it within CALL_TIMEOUT; don't wait longer.
        deadline = time.monotonic() + 15
        for worker in self._targets.values():
            worker.join(max(0.0, deadline - time.monotonic()))

    def _sync_targets(self) -> None:
        """A thread for every engine (a reload may add targets; an engine of a removed
        target is kept, so its leases are still revoked)."""
        for name in list(self._service.ctx.engines):
            worker = self._targets.get(name)
            if worker is None or not worker.is_alive():
                worker = self._targets[name] = TargetReaper(
                    self._service, name, self._interval, self._reconcile_interval, self._stop
                )
                worker.start()

    def _rotate_due_credentials(self) -> None:
        """Rotate every target's provisioner password that is due (each target's thread
        does its own after reconciling; this is the same for all at once)."""
        for name in self._service.ctx.settings.targets:
            TargetReaper(
                self._service, name, self._interval, self._reconcile_interval, self._stop
            )._rotate_if_due()

    def _run(self) -> None:
        outage = Outage(
            log, "the reaper's pass (requests' expiry, leases of removed targets)", self._interval
        )
        sealing = Outage(log, "sealing the statement records of ended sessions", SEAL_EVERY)
        next_seal = 0.0
        while not self._stop.is_set():
            if time.monotonic() >= next_seal:
                next_seal = time.monotonic() + SEAL_EVERY
                self._seal_statements(sealing)
            try:
                self._sync_targets()
                # Leases of a target no engine serves (never configured here): they fail
                # with a clear error and back off, instead of being nobody's.
                self._service.revocation.reap(
                    limit=100, not_targets=list(self._service.ctx.engines)
                )
                self._service.approvals.expire()
                self._service.breakglass.announce_overdue_drill()
            except Exception as exc:  # never let one bad pass kill the clock
                outage.failed(exc)  # one line while it lasts, not a traceback a pass
            else:
                outage.passed()
                self._service.ctx.metrics.reaper_last_pass.set_to_current_time()
            self._stop.wait(self._interval)

    def _seal_statements(self, outage: Outage) -> None:
        try:
            sealed = self._service.statements.seal()
        except Exception as exc:  # its own outage: revocation goes on meanwhile
            outage.failed(exc)
            return
        outage.passed()
        if sealed:
            log.info("sealed the statement records of ended sessions", extra={"sessions": sealed})


def _outcomes(drops: list[Future[list[Outcome]]]) -> list[Outcome]:
    return [outcome for drop in drops for outcome in drop.result()]


class TargetReaper:
    """Revocation, reconciliation and credential rotation of one target."""

    def __init__(
        self,
        service: SessionService,
        name: str,
        interval: float,
        reconcile_interval: float,
        stop: threading.Event,
    ) -> None:
        self._ctx = service.ctx
        self._revocation = service.revocation
        self.name = name
        self._interval = interval
        self._reconcile_interval = reconcile_interval
        self._next_reconcile = 0.0  # at start-up, then every reconcile_interval
        self._stop = stop
        self.unreachable = False
        self._warned = False
        self._thread = threading.Thread(
            target=self._run, name=f"dbaccess-reaper-{name}", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        outage = Outage(
            log, f"revoking the leases of target {self.name}", self._interval, target=self.name
        )
        while not self._stop.is_set():
            engine = self._ctx.engines.get(self.name)
            if engine is None:
                return
            try:
                if self.unreachable or engine.troubled:
                    self._check_answers()
                # Even while the target does not answer: due leases are marked and their
                # failure recorded (without waiting for a timeout each), so the audit trail
                # says when each should have gone and why it has not yet.
                self.drain()
                if not self.unreachable and time.monotonic() >= self._next_reconcile:
                    self._revocation.reconcile(self.name)
                    self._next_reconcile = time.monotonic() + self._reconcile_interval
                    self._rotate_if_due()
            except Exception as exc:  # never let one bad pass kill the clock
                outage.failed(exc)  # the store down, say: one line, not one a pass
            else:
                outage.passed()
            self._stop.wait(min(self._interval, PING_EVERY) if self.unreachable else self._interval)

    def _check_answers(self) -> None:
        engine = self._ctx.engines[self.name]
        self.unreachable = True  # until it answers: its leases fail fast meanwhile
        try:
            engine.ping()
        except EngineError as exc:
            if not self._warned:
                log.warning(
                    "target does not answer; its revocations wait until it does",
                    extra={"target": self.name, "error": str(exc)},
                )
                self._warned = True
            return
        retried = self._ctx.store.retry_now(self.name, self._ctx.clock())
        log.info(
            "target answers again; retrying its revocations now",
            extra={"target": self.name, "leases": retried},
        )
        self.unreachable = self._warned = False
        self._next_reconcile = 0.0  # a user made by a call cut off meanwhile goes too

    def drain(self) -> int:
        """Revoke every lease of this target that is due; returns how many were dropped."""
        revocation = self._revocation
        dropped = 0
        previous: list[Future[list[Outcome]]] = []
        while True:
            claimed = revocation.claim_due(BATCH, target=self.name)
            running = revocation.start_drops(claimed, skip_troubled=True)
            if previous:
                dropped += revocation.settle(_outcomes(previous))
            previous = running
            engine = self._ctx.engines.get(self.name)
            if engine is not None and engine.troubled:
                self.unreachable = True  # pinged before the next batch is claimed
            if not claimed or self.unreachable or self._stop.is_set():
                break
        if previous:
            dropped += revocation.settle(_outcomes(previous))
        return dropped

    def _rotate_if_due(self) -> None:
        target = self._ctx.settings.targets.get(self.name)
        if target is None or target.rotate_every is None:
            return
        if rotation.due(target, target.rotate_every):
            try:
                # due again under the lock: another worker may have rotated it just now
                if rotation.rotate(self.name, target, only_if_due=target.rotate_every):
                    log.info("rotated the provisioner password", extra={"target": self.name})
            except DbaccessError as exc:
                log.error(
                    "rotating the provisioner password failed",
                    extra={"target": self.name, "error": exc.message},
                )
            except OSError as exc:  # the file's directory read-only (ProtectSystem=strict)
                log.error(
                    "rotating the provisioner password failed",
                    extra={"target": self.name, "error": f"{exc.strerror}: {exc.filename}"},
                )
