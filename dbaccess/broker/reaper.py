"""The reaper: a background thread that revokes due leases every ``reaper_interval``."""

from __future__ import annotations

import logging
import threading

from dbaccess.broker.sessions import SessionService

log = logging.getLogger("dbaccess.broker.reaper")


class Reaper:
    def __init__(self, service: SessionService, interval: float) -> None:
        self._service = service
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dbaccess-reaper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                # Drain in batches so a storm of expiries is handled without a long pause.
                while self._service.reap(limit=100) == 100 and not self._stop.is_set():
                    pass
            except Exception:  # never let one bad pass kill the clock
                log.exception("reaper pass failed")
            self._stop.wait(self._interval)
