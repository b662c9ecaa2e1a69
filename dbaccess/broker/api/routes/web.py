"""Approvals from a browser (issue 16.2, first slice): plain HTML forms under /web/ over
the same Approvals service as the API (its rules: no self-approval, approver groups,
expiry, already decided). No JavaScript; the CSS is a file of its own, so the
Content-Security-Policy allows no inline script or style. Every text goes through Jinja2
with autoescape on. The caller is a signed, HttpOnly, SameSite=Lax cookie holding an
identity the broker verified (``WebSessions.issue``); every POST carries a CSRF token bound
to that cookie."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from typing import Any
from urllib.parse import parse_qs

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import DictLoader, Environment, select_autoescape
from pydantic import ValidationError

from dbaccess.broker.api.deps import origin, service
from dbaccess.broker.identity import Principal
from dbaccess.broker.services import refusals
from dbaccess.wire import RequestDecision, ReviewClose

router = APIRouter()

COOKIE = "dbaccess_web"
SESSION_SECONDS = 8 * 3600
MAX_FORM_BYTES = 16 * 1024

SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


class WebSessions:
    """Signs and reads the session cookie. The key lives in this process only: a restart
    signs everyone out (the slice's limit; several workers need a shared key)."""

    def __init__(self, key: bytes | None = None) -> None:
        self.key = key or secrets.token_bytes(32)

    def _mac(self, data: bytes) -> str:
        return hmac.new(self.key, data, hashlib.sha256).hexdigest()

    def issue(self, who: Principal, now: float | None = None) -> str:
        body = {
            "sub": who.subject,
            "email": who.email,
            "name": who.name,
            "groups": sorted(who.groups),
            "email_verified": who.email_verified,
            "exp": int((now or time.time()) + SESSION_SECONDS),
            "sid": secrets.token_hex(16),
        }
        data = base64.urlsafe_b64encode(json.dumps(body).encode())
        return f"{data.decode()}.{self._mac(data)}"

    def read(self, cookie: str | None, now: float | None = None) -> tuple[Principal, str] | None:
        """The principal and session id a valid, unexpired cookie holds; else None."""
        if not cookie or len(cookie) > 8192 or "." not in cookie:
            return None
        data, mac = cookie.rsplit(".", 1)
        if not hmac.compare_digest(mac, self._mac(data.encode())):
            return None
        try:
            body = json.loads(base64.urlsafe_b64decode(data.encode()))
        except ValueError:
            return None
        if body["exp"] < (now or time.time()):
            return None
        who = Principal(
            subject=body["sub"],
            email=body["email"],
            name=body["name"],
            groups=frozenset(body["groups"]),
            email_verified=body["email_verified"],
        )
        return who, str(body["sid"])

    def csrf(self, sid: str) -> str:
        return self._mac(f"csrf:{sid}".encode())


TEMPLATES = {
    "base.html": """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{% block title %}dbaccess approvals{% endblock %}</title>
<link rel="stylesheet" href="/web/static/web.css"></head>
<body><header><a href="/web/">dbaccess approvals</a>{% if who %}
<span class="who">{{ who.email or who.subject }}</span>{% endif %}</header>
<nav><a href="/web/">Requests</a> <a href="/web/reviews/">Reviews</a></nav>
<main>{% block main %}{% endblock %}</main></body></html>""",
    "message.html": """{% extends "base.html" %}{% block main %}
<h1>{{ heading }}</h1><p class="message">{{ message }}</p>
{% if hint %}<p class="hint">{{ hint }}</p>{% endif %}
<p><a href="/web/">Back to the requests</a></p>{% endblock %}""",
    "list.html": """{% extends "base.html" %}{% block main %}
<h1>Requests you can act on</h1>
{% if not requests %}<p>Nothing waits for you.</p>{% else %}<ul class="requests">
{% for r in requests %}<li><a href="/web/requests/{{ r.id }}">{{ r.email or r.subject }}:
{{ r.role }} on {{ r.target }}</a><span class="reason">{{ r.reason }}</span></li>
{% endfor %}</ul>{% endif %}{% endblock %}""",
    "request.html": """{% extends "base.html" %}{% block main %}
<h1>Request {{ r.id[:8] }}</h1>
<dl class="request">
<dt>Who</dt><dd>{{ r.email or r.subject }}</dd>
<dt>What</dt><dd>{{ r.role }} on {{ r.target }}</dd>
<dt>Why</dt><dd>{{ r.reason }}{% if r.ticket %} ({{ r.ticket }}){% endif %}</dd>
<dt>Duration</dt><dd>{{ duration }}</dd>
<dt>Rule</dt><dd>{{ r.rule }}</dd>
<dt>State</dt><dd class="state">{{ r.state }}</dd>
<dt>Approvals</dt><dd>{{ r.approvals | length }} of {{ r.approvals_required }}
from {{ r.approver_groups | join(", ") }}</dd>
{% if r.deny_reason %}<dt>Denied</dt><dd>{{ r.denied_by }}: {{ r.deny_reason }}</dd>{% endif %}
<dt>Expires</dt><dd>{{ r.expires_at.strftime("%Y-%m-%d %H:%M UTC") }}</dd>
</dl>
{% if r.can_approve and r.state == "pending" %}
<form method="post" action="/web/requests/{{ r.id }}/approve">
<input type="hidden" name="csrf" value="{{ csrf }}">
<button type="submit" name="decision" value="approve">Approve</button></form>
<form method="post" action="/web/requests/{{ r.id }}/deny">
<input type="hidden" name="csrf" value="{{ csrf }}">
<label for="reason">Reason for denying</label>
<textarea id="reason" name="reason" maxlength="1000" required></textarea>
<button type="submit" name="decision" value="deny">Deny</button></form>
{% endif %}{% endblock %}""",
    "reviews.html": """{% extends "base.html" %}{% block main %}
<h1>Break-glass sessions to review</h1>
{% if not reviews %}<p>No review is open.</p>{% endif %}
{% for r in reviews %}<section class="review" id="review-{{ r.id }}">
<h2>{{ r.email or r.subject }}: {{ r.role }} on {{ r.target }}</h2>
<dl class="request">
<dt>Incident</dt><dd>{{ r.incident or "none" }}{% if r.drill %} (drill){% endif %}</dd>
<dt>Why</dt><dd>{{ r.reason or "" }}</dd>
<dt>Database user</dt><dd>{{ r.db_user }}</dd>
<dt>Opened</dt><dd>{{ r.created_at.strftime("%Y-%m-%d %H:%M UTC") }}</dd>
<dt>Session</dt><dd>{{ r.state }}</dd>
</dl>
<form method="post" action="/web/reviews/{{ r.id }}/close">
<input type="hidden" name="csrf" value="{{ csrf }}">
<label for="note-{{ r.id }}">Review note</label>
<textarea id="note-{{ r.id }}" name="note" maxlength="2000" required></textarea>
<button type="submit">Close the review</button></form></section>
{% endfor %}{% endblock %}""",
}

CSS = """body{font-family:system-ui,sans-serif;margin:0;color:#1b1b1b;background:#fafafa}
header{display:flex;flex-wrap:wrap;justify-content:space-between;gap:.5rem;
padding:.75rem 1rem;background:#23395d;color:#fff}
header a{color:#fff;font-weight:bold;text-decoration:none}
nav{padding:.5rem 1rem;display:flex;gap:1rem}
main{max-width:44rem;margin:0 auto;padding:1rem;overflow-wrap:anywhere}
dl.request{display:grid;grid-template-columns:max-content 1fr;gap:.4rem 1rem}
dt{font-weight:bold}dd{margin:0;white-space:pre-wrap}
form{margin:1rem 0}textarea{display:block;width:100%;box-sizing:border-box;min-height:4rem}
button{padding:.5rem 1.25rem;font-size:1rem;margin-top:.5rem}
ul.requests{padding:0;list-style:none}ul.requests li{padding:.5rem 0;border-bottom:1px solid #ddd}
.reason{display:block;color:#555}.message{font-size:1.1rem}
"""

_env = Environment(
    loader=DictLoader(TEMPLATES),
    autoescape=select_autoescape(default=True, default_for_string=True),
)


def sessions(request: Request) -> WebSessions:
    return request.app.state.web_sessions  # type: ignore[no-any-return]


def page(name: str, status: int = 200, **values: Any) -> HTMLResponse:
    return HTMLResponse(
        _env.get_template(name).render(**values), status_code=status, headers=SECURITY_HEADERS
    )


def message(
    who: Principal | None, heading: str, text: str, hint: str | None, status: int
) -> HTMLResponse:
    return page("message.html", status, who=who, heading=heading, message=text, hint=hint)


REFUSAL_STATUS: dict[type[refusals.Refusal], int] = {
    refusals.Invalid: 400,
    refusals.Malformed: 400,
    refusals.Unauthenticated: 401,
    refusals.Denied: 403,
    refusals.NotFound: 404,
    refusals.Conflict: 409,
}


def refused(who: Principal, exc: refusals.Refusal) -> HTMLResponse:
    status = next((s for t, s in REFUSAL_STATUS.items() if isinstance(exc, t)), 503)
    return message(who, "Not done", exc.message, exc.hint, status)


def signed_in(request: Request) -> tuple[Principal, str] | None:
    return sessions(request).read(request.cookies.get(COOKIE))


MAX_ID = 36  # a whole UUID (api/deps.py AnId); longer is no id, said on a page


def no_such(who: Principal, what: str) -> HTMLResponse:
    return message(who, "Not found", f"There is no such {what}.", None, 404)


def not_signed_in() -> HTMLResponse:
    return message(None, "Sign in first", "This page needs you to sign in.", None, 401)


def duration(seconds: int) -> str:
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if rest else f"{hours}h"


@router.get("/web/static/web.css", include_in_schema=False)
def stylesheet() -> Response:
    return Response(CSS, media_type="text/css", headers=SECURITY_HEADERS)


@router.get("/web/", include_in_schema=False)
def requests_page(request: Request) -> HTMLResponse:
    seen = signed_in(request)
    if seen is None:
        return not_signed_in()
    who, _ = seen
    listed = service(request).approvals.visible_to(who, mine=False)
    waiting = [r for r in listed if r.can_approve and r.state == "pending"]
    return page("list.html", who=who, requests=waiting)


@router.get("/web/requests/{request_id}", include_in_schema=False)
def request_page(request_id: str, request: Request) -> HTMLResponse:
    seen = signed_in(request)
    if seen is None:
        return not_signed_in()
    who, sid = seen
    if len(request_id) > MAX_ID:
        return no_such(who, "request")
    try:
        info = service(request).approvals.get(who, request_id)
    except refusals.Refusal as exc:
        return refused(who, exc)
    return page(
        "request.html",
        who=who,
        r=info,
        csrf=sessions(request).csrf(sid),
        duration=duration(info.duration_seconds),
    )


async def form(request: Request) -> dict[str, str] | None:
    """The urlencoded form a POST carries (first value of each field); None if unreadable."""
    if request.headers.get("content-type", "").split(";")[0].strip() != (
        "application/x-www-form-urlencoded"
    ):
        return None
    raw = await request.body()
    if len(raw) > MAX_FORM_BYTES:
        return None
    try:
        fields = parse_qs(raw.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
    except UnicodeDecodeError:
        return None
    return {k: v[0] for k, v in fields.items()}


@router.post("/web/requests/{request_id}/{decision}", include_in_schema=False)
async def decide(request_id: str, decision: str, request: Request) -> Response:
    seen = signed_in(request)
    if seen is None:
        return not_signed_in()
    who, sid = seen
    if len(request_id) > MAX_ID:
        return no_such(who, "request")
    fields = await form(request)
    if fields is None:
        return message(who, "Not done", "The form could not be read.", None, 400)
    expected = sessions(request).csrf(sid)
    if not hmac.compare_digest(fields.get("csrf", "").encode(), expected.encode()):
        return message(
            who, "Not done", "The form is stale or came from elsewhere.", "Reload the page.", 403
        )
    approvals = service(request).approvals
    try:
        # The store is blocking I/O: off the event loop.
        if decision == "approve":
            await run_in_threadpool(approvals.approve, who, request_id, origin(request))
        elif decision == "deny":
            try:  # the API's own body model: the same length and character rules
                body = RequestDecision(reason=fields.get("reason") or None)
            except ValidationError as exc:
                text = "; ".join(str(e["msg"]) for e in exc.errors())
                return message(who, "Not done", f"reason: {text}", None, 400)
            await run_in_threadpool(approvals.deny, who, request_id, body.reason, origin(request))
        else:
            return message(who, "Not done", "No such decision.", None, 404)
    except refusals.Refusal as exc:
        return refused(who, exc)
    return RedirectResponse(
        f"/web/requests/{request_id}", status_code=303, headers=SECURITY_HEADERS
    )


@router.get("/web/reviews/", include_in_schema=False)
def reviews_page(request: Request) -> HTMLResponse:
    seen = signed_in(request)
    if seen is None:
        return not_signed_in()
    who, sid = seen
    try:
        open_reviews = service(request).breakglass.open_reviews(who)
    except refusals.Refusal as exc:  # not a reviewer: the service's own refusal
        return refused(who, exc)
    return page("reviews.html", who=who, reviews=open_reviews, csrf=sessions(request).csrf(sid))


@router.post("/web/reviews/{session_id}/close", include_in_schema=False)
async def close_review(session_id: str, request: Request) -> Response:
    seen = signed_in(request)
    if seen is None:
        return not_signed_in()
    who, sid = seen
    if len(session_id) > MAX_ID:
        return no_such(who, "break-glass session")
    fields = await form(request)
    if fields is None:
        return message(who, "Not done", "The form could not be read.", None, 400)
    if not hmac.compare_digest(
        fields.get("csrf", "").encode(), sessions(request).csrf(sid).encode()
    ):
        return message(
            who, "Not done", "The form is stale or came from elsewhere.", "Reload the page.", 403
        )
    try:  # the API's own body model: a note is needed, with the same character rules
        body = ReviewClose(note=fields.get("note", "").strip())
    except ValidationError as exc:
        text = "; ".join(str(e["msg"]) for e in exc.errors())
        return message(who, "Not done", f"note: {text}", None, 400)
    try:
        closed = await run_in_threadpool(
            service(request).breakglass.close_review, who, session_id, body.note, origin(request)
        )
    except refusals.Refusal as exc:
        return refused(who, exc)
    return message(
        who,
        "Review closed",
        f"The review of {closed.email or closed.subject}'s session on "
        f"{closed.target} is closed: {closed.review_note}",
        None,
        200,
    )
