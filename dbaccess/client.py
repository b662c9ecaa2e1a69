"""BrokerClient: the broker's HTTP API over an injectable ``httpx.Client``.

HTTP failures become DbaccessError subclasses carrying the broker's message and hint.
"""

from __future__ import annotations

from typing import Any

import httpx

from dbaccess.errors import (
    AuthError,
    BrokerError,
    BrokerUnreachable,
    DbaccessError,
    DeniedError,
    NotFoundError,
    UsageError,
)
from dbaccess.models import (
    AuditEntry,
    Identity,
    PublicConfig,
    SessionCreate,
    SessionGranted,
    SessionInfo,
    SessionRenew,
    TargetAccess,
)

_BY_STATUS: dict[int, type[DbaccessError]] = {
    400: UsageError,
    401: AuthError,
    403: DeniedError,
    404: NotFoundError,
    422: UsageError,
}


class BrokerClient:
    def __init__(self, base_url: str, http: httpx.Client, token: str | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = http
        self._token = token

    def with_token(self, token: str) -> BrokerClient:
        return BrokerClient(self.base_url, self._http, token)

    def config(self) -> PublicConfig:
        return PublicConfig.model_validate(self._call("GET", "/v1/config"))

    def create_session(self, request: SessionCreate) -> SessionGranted:
        body = self._call("POST", "/v1/sessions", json=request.model_dump(exclude_none=True))
        return SessionGranted.model_validate(body)

    def list_sessions(self) -> list[SessionInfo]:
        return [SessionInfo.model_validate(s) for s in self._call("GET", "/v1/sessions")]

    def me(self) -> Identity:
        return Identity.model_validate(self._call("GET", "/v1/me"))

    def targets(self) -> list[TargetAccess]:
        return [TargetAccess.model_validate(t) for t in self._call("GET", "/v1/targets")]

    def renew_session(self, session_id: str, duration_seconds: int | None) -> SessionInfo:
        body = SessionRenew(duration_seconds=duration_seconds)
        return SessionInfo.model_validate(
            self._call(
                "POST", f"/v1/sessions/{session_id}/renew", json=body.model_dump(exclude_none=True)
            )
        )

    def audit(self, **filters: str | int | None) -> list[AuditEntry]:
        params = {k: v for k, v in filters.items() if v is not None}
        return [AuditEntry.model_validate(r) for r in self._call("GET", "/v1/audit", params=params)]

    def revoke_session(self, session_id: str) -> SessionInfo:
        return SessionInfo.model_validate(self._call("DELETE", f"/v1/sessions/{session_id}"))

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        headers = {"Accept": "application/json"}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        url = self.base_url + path
        try:
            response = self._http.request(method, url, headers=headers, **kwargs)
        except httpx.HTTPError as exc:
            raise BrokerUnreachable(
                f"cannot reach the broker at {self.base_url}: {exc}",
                hint="check the URL with: dbaccess login --broker URL",
            ) from None
        if response.is_success:
            try:
                return response.json()
            except ValueError:
                raise BrokerError(f"the broker answered {method} {path} with no JSON") from None
        raise _error_from(response)


def _error_from(response: httpx.Response) -> DbaccessError:
    message = f"the broker answered {response.status_code}"
    hint = None
    try:
        detail = response.json().get("error") or {}
        message = detail.get("message") or message
        hint = detail.get("hint")
    except (ValueError, AttributeError):
        pass
    kind = _BY_STATUS.get(response.status_code, BrokerError)
    if kind is AuthError and hint is None:
        hint = "dbaccess login"
    return kind(message, hint=hint)
