"""The reaper: a background thread that revokes due leases every ``reaper_interval``."""

from __future__ import annotations

import logging
import threading
import time

from dbaccess.broker import rotation
from dbaccess.broker.sessions import SessionService
from dbaccess.errors import DbaccessError

log = logging.getLogger("dbaccess.broker.reaper")


class Reaper:
    def __init__(self, service: SessionService, interval: float, reconcile_interval: float) -> None:
        self._service = service
        self._interval = interval
        self._reconcile_interval = reconcile_interval
        self._next_reconcile = 0.0  # at start-up, then every reconcile_interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dbaccess-reaper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _rotate_due_credentials(self) -> None:
        for name, target in self._service.settings.targets.items():
            if target.rotate_every is not None and rotation.due(target, target.rotate_every):
                try:
                    rotation.rotate(name, target)
                    log.info("rotated the provisioner password", extra={"target": name})
                except DbaccessError as exc:
                    log.error("rotating the provisioner password failed",
                              extra={"target": name, "error": exc.message})

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                # Drain in batches so a storm of expiries is handled without a long pause.
                while self._service.reap(limit=100) == 100 and not self._stop.is_set():
                    pass
                self._service.approvals.expire()
                if time.monotonic() >= self._next_reconcile:
                    self._service.reconcile()
                    self._next_reconcile = time.monotonic() + self._reconcile_interval
                    self._rotate_due_credentials()
            except Exception:  # never let one bad pass kill the clock
                log.exception("reaper pass failed")
            self._stop.wait(self._interval)
