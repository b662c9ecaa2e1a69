"""BrokerClient: the broker's HTTP API over an injectable ``httpx.Client``.

HTTP failures become DbaccessError subclasses carrying the broker's message and hint.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import httpx

from dbaccess.client import replies as broker_replies
from dbaccess.client.replies import error_from_reply, no_json, unreachable
from dbaccess.wire import (
    AuditEntry,
    BreakglassPolicy,
    DrillInfo,
    Identity,
    IncidentReport,
    InventoryReport,
    PublicConfig,
    RequestInfo,
    ReviewInfo,
    SessionGranted,
    SessionInfo,
    SessionRenew,
    SessionRenewed,
    StatementPage,
    TargetAccess,
)

if TYPE_CHECKING:
    from dbaccess.client.session.request import SessionRequest


class BrokerClient:
    def __init__(self, base_url: str, http: httpx.Client, token: str | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = http
        self._token = token

    def with_token(self, token: str) -> BrokerClient:
        return BrokerClient(self.base_url, self._http, token)

    def config(self) -> PublicConfig:
        return PublicConfig.model_validate(self._call("GET", "/v1/config"))

    def create_session(self, request: SessionRequest) -> SessionGranted | RequestInfo:
        """The session, or (rules needing approval) the pending request just opened."""
        body = self._call("POST", "/v1/sessions", json=request.to_wire())
        if "password" not in body:
            return RequestInfo.model_validate(body)
        return SessionGranted.model_validate(body)

    def breakglass_policy(self) -> BreakglassPolicy:
        return BreakglassPolicy.model_validate(self._call("GET", "/v1/breakglass"))

    def breakglass(self, request: SessionRequest) -> SessionGranted:
        body = self._call("POST", "/v1/breakglass", json=request.to_wire())
        return SessionGranted.model_validate(body)

    def requests(self, *, mine: bool = False) -> list[RequestInfo]:
        found = self._call("GET", "/v1/requests", params={"mine": "true" if mine else "false"})
        return [RequestInfo.model_validate(r) for r in found]

    def get_request(self, request_id: str) -> RequestInfo:
        return RequestInfo.model_validate(self._call("GET", f"/v1/requests/{_segment(request_id)}"))

    def approve(self, request_id: str) -> RequestInfo:
        return RequestInfo.model_validate(
            self._call("POST", f"/v1/requests/{_segment(request_id)}/approve", json={})
        )

    def deny(self, request_id: str, reason: str) -> RequestInfo:
        return RequestInfo.model_validate(
            self._call("POST", f"/v1/requests/{_segment(request_id)}/deny", json={"reason": reason})
        )

    def withdraw(self, request_id: str) -> RequestInfo:
        return RequestInfo.model_validate(
            self._call("POST", f"/v1/requests/{_segment(request_id)}/withdraw", json={})
        )

    def drills(self) -> list[DrillInfo]:
        return [DrillInfo.model_validate(r) for r in self._call("GET", "/v1/drills")]

    def reviews(self) -> list[ReviewInfo]:
        return [ReviewInfo.model_validate(r) for r in self._call("GET", "/v1/reviews")]

    def close_review(self, session_id: str, note: str) -> ReviewInfo:
        return ReviewInfo.model_validate(
            self._call("POST", f"/v1/reviews/{_segment(session_id)}/close", json={"note": note})
        )

    def incident_review(self, incident: str) -> IncidentReport:
        """The post-incident record of ``incident`` (reviewer groups)."""
        path = f"/v1/incidents/{_segment(incident)}/review"
        return IncidentReport.model_validate(self._call("GET", path))

    def incident_review_text(self, incident: str, fmt: str) -> str:
        """The same record rendered by the broker: ``fmt`` md or html."""
        path = f"/v1/incidents/{_segment(incident)}/review"
        return self._call_text("GET", path, params={"format": fmt})

    def list_sessions(self) -> list[SessionInfo]:
        return [SessionInfo.model_validate(s) for s in self._call("GET", "/v1/sessions")]

    def me(self) -> Identity:
        return Identity.model_validate(self._call("GET", "/v1/me"))

    def targets(self) -> list[TargetAccess]:
        return [TargetAccess.model_validate(t) for t in self._call("GET", "/v1/targets")]

    def renew_session(
        self, session_id: str, duration_seconds: int | None, *, shorten: bool = False
    ) -> SessionRenewed:
        body = SessionRenew(duration_seconds=duration_seconds, shorten=shorten)
        return SessionRenewed.model_validate(
            self._call(
                "POST",
                f"/v1/sessions/{_segment(session_id)}/renew",
                # Defaults left out: a broker from before "shorten" refuses unknown fields.
                json=body.model_dump(exclude_none=True, exclude_defaults=True),
            )
        )

    def audit(self, **filters: str | int | None) -> tuple[list[AuditEntry], str | None]:
        """A page of the trail, newest first, and the cursor of the next (older) page."""
        params = {k: v for k, v in filters.items() if v is not None}
        found, headers = self._call_with_headers("GET", "/v1/audit", params=params)
        return [AuditEntry.model_validate(r) for r in found], headers.get("x-next-cursor")

    def inventory(self, target: str | None = None) -> InventoryReport:
        """The standing accounts of the targets (auditors only)."""
        params = {} if target is None else {"target": target}
        return InventoryReport.model_validate(self._call("GET", "/v1/inventory", params=params))

    def statements(self, session_id: str, *, after: int = 0, limit: int = 100) -> StatementPage:
        """A page of a gateway session's statement records, oldest first, after seq
        ``after``; with the chain's verification and seal."""
        return StatementPage.model_validate(
            self._call(
                "GET",
                f"/v1/sessions/{_segment(session_id)}/statements",
                params={"after": after, "limit": limit},
            )
        )

    def revoke_session(self, session_id: str) -> SessionInfo:
        return SessionInfo.model_validate(
            self._call("DELETE", f"/v1/sessions/{_segment(session_id)}")
        )

    def revoke(self, session_id: str) -> str:
        """``revoke_session``, the session's new state only (``grant.SessionBroker``)."""
        return self.revoke_session(session_id).state

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        return self._call_with_headers(method, path, **kwargs)[0]

    def _call_text(self, method: str, path: str, **kwargs: Any) -> str:
        """A call whose answer is a document (Markdown, HTML), not JSON."""
        headers = broker_replies.request_headers()
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        try:
            with broker_replies.waiting(broker_replies.waiting_text(method, path)):
                response = self._http.request(
                    method, self.base_url + path, headers=headers, **kwargs
                )
        except httpx.HTTPError as exc:
            raise unreachable(self.base_url, exc) from None
        if response.is_success:
            return response.text
        raise error_from_reply(response.status_code, response.content)

    def _call_with_headers(
        self, method: str, path: str, **kwargs: Any
    ) -> tuple[Any, httpx.Headers]:
        headers = broker_replies.request_headers()
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        url = self.base_url + path
        try:
            with broker_replies.waiting(broker_replies.waiting_text(method, path)):
                # the timeout is the client's own (api.http_client: --timeout)
                response = self._http.request(method, url, headers=headers, **kwargs)
        except httpx.HTTPError as exc:
            raise unreachable(self.base_url, exc) from None
        if response.is_success:
            try:
                return response.json(), response.headers
            except ValueError:
                raise no_json(method, path) from None
        raise error_from_reply(response.status_code, response.content)


def _segment(given: str) -> str:
    """An id (or prefix) as typed, as one path segment: ``a/../b`` or ``a?b`` reach the
    broker as the id they are (and are refused there), never as another route."""
    return quote(given, safe="")
