"""A webhook receiver for the sandbox and the tests: it keeps every JSON body POSTed to it
(in memory and as JSON lines in ``path``), standing in for a chat channel or a SIEM."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


class WebhookSink:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.events: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
                length = int(self.headers.get("Content-Length") or 0)
                try:
                    body = json.loads(self.rfile.read(length))
                except ValueError:
                    self.send_response(400)
                    self.end_headers()
                    return
                sink._keep(body)
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:  # quiet
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/hook"

    def start(self) -> WebhookSink:
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread.is_alive():  # shutdown() would wait forever for a loop never run
            self._server.shutdown()
        self._server.server_close()

    def _keep(self, body: dict[str, Any]) -> None:
        with self._lock:
            self.events.append(body)
            with self.path.open("a") as file:
                file.write(json.dumps(body) + "\n")

    def wait_for(self, predicate: Any, timeout: float = 10) -> dict[str, Any]:
        """The first event (received so far or within ``timeout``) matching ``predicate``."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                found = next((e for e in self.events if predicate(e)), None)
            if found is not None:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"no such webhook event; got {self.events}")
            time.sleep(0.05)
