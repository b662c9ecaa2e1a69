"""The broker calls of a session over the standard library's http.client — the fast exec
path's transport (``grant.SessionBroker``), beside the httpx ``BrokerClient``.

It follows httpx's certificate rules, the same --timeout and spinner, and failures become
the same errors (``replies``). The common answer, a granted session, is read without
pydantic; the rare ones (a pending approval request, the targets, the break-glass policy)
are read with the wire models, imported only then.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

from dbaccess.errors import BrokerError, DbaccessError

if TYPE_CHECKING:
    from dbaccess.client.session.request import SessionRequest


class _Secret:
    def __init__(self, value: str) -> None:
        self._value = value

    def get_secret_value(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "_Secret('**********')"


@dataclass(frozen=True)
class GrantedReply:
    """The fields of ``wire.SessionGranted`` a session run needs (a test keeps them in
    step with the model)."""

    id: str
    target: str
    role: str
    engine: str
    db_user: str
    host: str
    port: int
    database: str
    expires_at: datetime
    password: _Secret = field(repr=False)
    sslmode: str | None = None
    access: str = "direct"
    ca_certificate: str | None = None
    kind: str = "session"
    incident: str | None = None
    drill: bool = False

    @classmethod
    def from_reply(cls, body: dict[str, Any], path: str = "/v1/sessions") -> GrantedReply:
        try:
            return cls(
                id=str(body["id"]),
                target=str(body["target"]),
                role=str(body["role"]),
                engine=str(body["engine"]),
                db_user=str(body["db_user"]),
                host=str(body["host"]),
                port=int(body["port"]),
                database=str(body["database"]),
                expires_at=datetime.fromisoformat(str(body["expires_at"])),
                password=_Secret(str(body["password"])),
                sslmode=body.get("sslmode"),
                access=str(body.get("access") or "direct"),
                ca_certificate=body.get("ca_certificate"),
                kind=str(body.get("kind") or "session"),
                incident=body.get("incident"),
                drill=bool(body.get("drill")),
            )
        except (KeyError, TypeError, ValueError):
            raise BrokerError(
                f"the broker's answer to POST {path} is not a session",
                hint="upgrade dbaccess, or the broker",
            ) from None


class StdlibBroker:
    """Broker calls over http.client, one connection each (the child may run for hours:
    no idle connection to outlive)."""

    def __init__(self, base_url: str, token: str) -> None:
        self.base_url = base_url.rstrip("/")
        self._token = token
        parts = urlsplit(self.base_url)  # a bad port raises ValueError here, before any call
        self._host = parts.hostname or ""
        self._port = parts.port
        self._prefix = parts.path
        self._tls = _tls_context() if parts.scheme == "https" else None

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
        import http.client

        from dbaccess.client import replies as broker_replies
        from dbaccess.client.replies import error_from_reply, no_json, request_headers, unreachable

        headers = {**request_headers(), "Authorization": f"Bearer {self._token}"}
        payload = None
        if body is not None:
            payload = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        connection: http.client.HTTPConnection
        timeout = broker_replies.timeout_seconds()
        if self._tls is not None:
            connection = http.client.HTTPSConnection(
                self._host, self._port, timeout=timeout, context=self._tls
            )
        else:
            connection = http.client.HTTPConnection(self._host, self._port, timeout=timeout)
        try:
            with _Spinner(broker_replies.waiting_text(method, path)):
                connection.request(method, self._prefix + path, body=payload, headers=headers)
                response = connection.getresponse()
                status, raw = response.status, response.read()
        except (OSError, http.client.HTTPException) as exc:
            raise unreachable(self.base_url, exc) from None
        finally:
            connection.close()
        if not 200 <= status < 300:
            raise error_from_reply(status, raw)
        try:
            return status, json.loads(raw)
        except ValueError:
            raise no_json(method, path) from None

    # --- grant.SessionBroker ---------------------------------------------------------

    def create_session(self, request: SessionRequest) -> Any:
        status, body = self.call("POST", "/v1/sessions", request.to_wire())
        if status == 202 and "password" not in body:
            return self._pending(body)
        return self._granted(body, "/v1/sessions")

    def breakglass(self, request: SessionRequest) -> GrantedReply:
        return self._granted(
            self.call("POST", "/v1/breakglass", request.to_wire())[1], "/v1/breakglass"
        )

    def get_request(self, request_id: str) -> Any:
        return self._pending(self.call("GET", f"/v1/requests/{quote(request_id, safe='')}")[1])

    def revoke(self, session_id: str) -> str:
        return str(
            self.call("DELETE", f"/v1/sessions/{quote(session_id, safe='')}")[1].get("state")
        )

    def targets(self) -> list[Any]:
        from dbaccess.wire import TargetAccess

        return [TargetAccess.model_validate(t) for t in self.call("GET", "/v1/targets")[1]]

    def breakglass_policy(self) -> Any:
        from dbaccess.wire import BreakglassPolicy

        return BreakglassPolicy.model_validate(self.call("GET", "/v1/breakglass")[1])

    def _pending(self, body: Any) -> Any:
        from dbaccess.wire import RequestInfo  # rare: a rule that needs approvers

        return RequestInfo.model_validate(body)

    def _granted(self, body: Any, path: str) -> GrantedReply:
        """The session in a 201 answer; if the answer cannot be read, the session it names
        is revoked before the error is reported."""
        try:
            return GrantedReply.from_reply(body, path)
        except BrokerError:
            if isinstance(body, dict) and isinstance(body.get("id"), str):
                try:
                    self.revoke(body["id"])
                except DbaccessError:
                    pass  # it expires on the broker's clock
            raise


def _tls_context() -> Any:
    """httpx's rule: SSL_CERT_FILE, else SSL_CERT_DIR, else certifi's bundle."""
    import ssl

    if os.environ.get("SSL_CERT_FILE"):
        return ssl.create_default_context(cafile=os.environ["SSL_CERT_FILE"])
    if os.environ.get("SSL_CERT_DIR"):
        return ssl.create_default_context(capath=os.environ["SSL_CERT_DIR"])
    import certifi

    return ssl.create_default_context(cafile=certifi.where())


class _Spinner:
    """The full CLI's spinner for a slow broker call, in plain ANSI on a terminal's
    stderr: frames after SLOW_CALL_SECONDS, the line wiped when the call ends."""

    FRAMES = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"

    def __init__(self, text: str) -> None:
        self._text = text
        self._done: Any = None
        self._thread: Any = None

    def __enter__(self) -> None:
        if not sys.stderr.isatty():
            return
        import threading

        self._done = threading.Event()
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        from dbaccess.client.replies import SLOW_CALL_SECONDS

        if self._done.wait(SLOW_CALL_SECONDS):
            return
        shown = False
        for tick in range(1_000_000):
            frame = self.FRAMES[tick % len(self.FRAMES)]
            sys.stderr.write(f"\r{frame} {self._text}")
            sys.stderr.flush()
            shown = True
            if self._done.wait(0.1):
                break
        if shown:
            sys.stderr.write("\r\x1b[2K")
            sys.stderr.flush()

    def __exit__(self, *exc: object) -> None:
        if self._thread is not None:
            self._done.set()
            self._thread.join()
