"""Approvals from a browser (``[web]``): plain HTML forms under /web/ over the same
services as the API (their rules: no self-approval, approver groups, expiry, already
decided). Sign-in is the identity provider's authorization code flow with PKCE
(broker/web_signin.py); the browser then holds a signed, HttpOnly, SameSite=Lax session
cookie, and every POST carries a CSRF token bound to it. No JavaScript; the CSS is a file
of its own, so the Content-Security-Policy allows no inline script or style. Every text
goes through Jinja2 with autoescape on."""

from __future__ import annotations

import dataclasses
import hmac
import logging
import re
from typing import Any
from urllib.parse import parse_qs, quote

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import DictLoader, Environment, select_autoescape
from pydantic import ValidationError

from dbaccess.broker.api.deps import context, origin, service
from dbaccess.broker.identity import Principal
from dbaccess.broker.services import refusals
from dbaccess.broker.store import StoreUnavailable
from dbaccess.broker.web_signin import (
    ProviderUnreachable,
    SignIn,
    SignInFailed,
    WebSessions,
    pending_cookie,
    read_pending,
)
from dbaccess.text import printable
from dbaccess.wire import RequestDecision, ReviewClose

log = logging.getLogger("dbaccess.broker.web")

router = APIRouter()

COOKIE = "dbaccess_web"
SIGN_IN_COOKIE = "dbaccess_web_sign_in"
MAX_FORM_BYTES = 16 * 1024
# Browsers keep a cookie of up to 4096 bytes, name and attributes included (RFC 6265 5.3
# at its least); a longer one is dropped without a word, and the sign-in would loop.
MAX_SESSION_COOKIE = 3900

SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


TEMPLATES = {
    "base.html": """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{% block title %}dbaccess approvals{% endblock %}</title>
<link rel="stylesheet" href="/web/static/web.css"></head>
<body><header><a href="/web/">dbaccess approvals</a>{% if who %}
<span class="who">{{ who.verified_email or who.subject }}</span>{% if csrf %}
<form class="sign-out" method="post" action="/web/sign-out">
<input type="hidden" name="csrf" value="{{ csrf }}"><button type="submit">Sign out</button>
</form>{% endif %}{% endif %}</header>
<nav><a href="/web/">Requests</a> <a href="/web/reviews/">Reviews</a></nav>
<main>{% block main %}{% endblock %}</main></body></html>""",
    "message.html": """{% extends "base.html" %}{% block main %}
<h1>{{ heading }}</h1><p class="message">{{ message }}</p>
{% if hint %}<p class="hint">{{ hint }}</p>{% endif %}
{% if sign_in %}<p><a class="button" href="{{ sign_in }}">Sign in</a></p>
{% else %}<p><a href="/web/">Back to the requests</a></p>{% endif %}{% endblock %}""",
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
<dt>Approvals</dt><dd>{{ r.approvals | length }} of {{ r.approvals_required }} \
from {{ r.approver_groups | join(", ") }}</dd>
{% if r.deny_reason %}<dt>Denied</dt><dd>{{ r.denied_by }}: {{ r.deny_reason }}</dd>{% endif %}
<dt>Expires</dt><dd>{{ r.expires_at.strftime("%Y-%m-%d %H:%M UTC") }}</dd>
</dl>
{% if r.can_approve and r.state == "pending" %}
{% if r.approvals | selectattr("by", "equalto", who.subject) | list %}
<p class="approved">You approved this request.</p>{% else %}
<form method="post" action="/web/requests/{{ r.id }}/approve">
<input type="hidden" name="csrf" value="{{ csrf }}">
<button type="submit" name="decision" value="approve">Approve</button></form>{% endif %}
<form method="post" action="/web/requests/{{ r.id }}/deny">
<input type="hidden" name="csrf" value="{{ csrf }}">
<label for="reason">Reason for denying</label>
<textarea id="reason" name="reason" maxlength="500" required></textarea>
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
header form.sign-out{margin:0}header form.sign-out button{margin:0;padding:.2rem .6rem;
font-size:.9rem}a.button{display:inline-block;padding:.5rem 1.25rem;background:#23395d;
color:#fff;text-decoration:none;border-radius:.2rem}
"""


def _shown(value: Any) -> Any:
    # every text a page shows, as the CLI shows it: control and bidirectional-override
    # characters written as escapes (records from before the input rules may hold them),
    # then HTML-escaped by autoescape
    return printable(value) if isinstance(value, str) else value


_env = Environment(
    loader=DictLoader(TEMPLATES),
    autoescape=select_autoescape(default=True, default_for_string=True),
    finalize=_shown,
)
_BREAKS = re.compile(r"[\r\n\t]+")


def typed_text(value: str) -> str:
    """A textarea's text as one line: the line breaks a person types (sent as CR LF) are
    spaces, so that the API's rule against control characters does not refuse them."""
    return _BREAKS.sub(" ", value).strip()


def sessions(request: Request) -> WebSessions:
    return request.app.state.web_sessions  # type: ignore[no-any-return]


def sign_in_flow(request: Request) -> SignIn:
    return request.app.state.web_sign_in  # type: ignore[no-any-return]


def page(name: str, status: int = 200, **values: Any) -> HTMLResponse:
    return HTMLResponse(
        _env.get_template(name).render(**values), status_code=status, headers=SECURITY_HEADERS
    )


def message(
    who: Principal | None,
    heading: str,
    text: str,
    hint: str | None,
    status: int,
    *,
    sign_in: str | None = None,
) -> HTMLResponse:
    return page(
        "message.html", status, who=who, heading=heading, message=text, hint=hint, sign_in=sign_in
    )


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


def cookie_name(request: Request, name: str) -> str:
    """On https, ``name`` with the __Host- prefix: a browser takes such a cookie only from
    this very host, over TLS, for path / and with no Domain, so a sibling subdomain cannot
    plant its own sign-in or session cookie (a login CSRF). Plain http is loopback only."""
    return f"__Host-{name}" if sign_in_flow(request).web.secure else name


def cookie_path(request: Request) -> str:
    return "/" if sign_in_flow(request).web.secure else "/web/"


def signed_in(request: Request) -> tuple[Principal, str] | None:
    return sessions(request).read(request.cookies.get(cookie_name(request, COOKIE)))


MAX_ID = 36  # a whole UUID (api/deps.py AnId); longer is no id, said on a page
MAX_PARAM = 4096  # a provider's code or state; longer is no sign-in of ours


def no_such(who: Principal, what: str) -> HTMLResponse:
    return message(who, "Not found", f"There is no such {what}.", None, 404)


def sign_in_link(path: str) -> str:
    return "/web/sign-in?next=" + quote(path, safe="/")


def not_signed_in(request: Request) -> Response:
    """A page asked for without a session: a GET goes to the sign-in and comes back; a
    POST (a form from a session that has ended) is not done, with a link to sign in."""
    path = request.url.path
    if request.method == "GET":
        return RedirectResponse(sign_in_link(path), status_code=303, headers=SECURITY_HEADERS)
    return message(
        None,
        "Sign in first",
        "Your sign-in has ended, so nothing was done.",
        "Sign in again, then repeat what you were doing.",
        401,
        sign_in=sign_in_link("/web/"),
    )


def duration(seconds: int) -> str:
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if rest else f"{hours}h"


def _cookie(response: Response, request: Request, name: str, value: str, seconds: int) -> None:
    response.set_cookie(
        cookie_name(request, name),
        value,
        max_age=seconds,
        path=cookie_path(request),
        httponly=True,
        # Lax: sent on the provider's redirect back (a top-level GET), never on a POST
        # from another site
        samesite="lax",
        secure=sign_in_flow(request).web.secure,
    )


def _forget(response: Response, request: Request, name: str) -> None:
    web = sign_in_flow(request).web
    response.delete_cookie(
        cookie_name(request, name),
        path=cookie_path(request),
        secure=web.secure,
        httponly=True,
        samesite="lax",
    )


@router.get("/web/static/web.css", include_in_schema=False)
def stylesheet() -> Response:
    return Response(CSS, media_type="text/css", headers=SECURITY_HEADERS)


@router.get("/web/sign-in", include_in_schema=False)
async def sign_in(request: Request, next: str = "/web/") -> Response:  # noqa: A002
    try:  # the provider's discovery document may be fetched: off the event loop
        url, pending = await run_in_threadpool(sign_in_flow(request).begin, next[:MAX_PARAM])
    except ProviderUnreachable as exc:
        return message(None, "Cannot sign in now", str(exc), "Try again in a minute.", 503)
    response = RedirectResponse(url, status_code=303, headers=SECURITY_HEADERS)
    signer = sessions(request).signer
    _cookie(response, request, SIGN_IN_COOKIE, pending_cookie(signer, pending), 600)
    return response


@router.get("/web/callback", include_in_schema=False)
async def callback(
    request: Request,
    code: str = "",
    state: str = "",
    error: str = "",
    error_description: str = "",
) -> Response:
    pending = read_pending(
        sessions(request).signer, request.cookies.get(cookie_name(request, SIGN_IN_COOKIE))
    )
    again = sign_in_link(pending.next if pending else "/web/")
    if pending is None:
        return message(
            None,
            "Sign-in expired",
            "This sign-in was not started here, or took longer than 10 minutes.",
            None,
            400,
            sign_in=again,
        )
    if (
        not state
        or len(state) > MAX_PARAM
        # bytes: compare_digest raises on a str that is not ASCII
        or not hmac.compare_digest(state.encode(), pending.state.encode())
    ):
        return message(
            None, "Sign-in refused", "The sign-in's state does not match.", None, 400, sign_in=again
        )
    if error:
        said = (error_description or error)[:500]
        return message(
            None, "Not signed in", f"The identity provider said: {said}", None, 401, sign_in=again
        )
    if not code or len(code) > MAX_PARAM:
        return message(
            None, "Sign-in refused", "The provider sent no code.", None, 400, sign_in=again
        )
    try:
        who = await run_in_threadpool(sign_in_flow(request).finish, pending, code)
    except ProviderUnreachable as exc:
        return message(
            None, "Cannot sign in now", str(exc), "Try again in a minute.", 503, sign_in=again
        )
    except SignInFailed as exc:
        return message(None, "Not signed in", str(exc), None, 401, sign_in=again)
    # only the groups the config names go into the cookie: a decision turns on no other,
    # and a person in hundreds of groups (Entra) would make a cookie the browser drops
    named = context(request).settings.named_groups()
    who = dataclasses.replace(who, groups=who.groups & named)
    web_sessions = sessions(request)
    cookie = web_sessions.issue(who)
    if len(COOKIE) + len(cookie) > MAX_SESSION_COOKIE:
        return message(
            None,
            "Cannot sign in here",
            f"You are in {len(who.groups)} of the groups this broker's policy names, too "
            "many for a browser's cookie; nothing was done.",
            "Approve from the command line (dbaccess approve ID), or ask an administrator "
            "to name fewer groups.",
            400,
        )
    log.info("web sign-in: %s", who.verified_email or who.subject)
    await run_in_threadpool(_audit_sign_in, request, who)
    response = RedirectResponse(pending.next, status_code=303, headers=SECURITY_HEADERS)
    _cookie(response, request, COOKIE, cookie, int(web_sessions.seconds))
    _forget(response, request, SIGN_IN_COOKIE)
    return response


def _audit_sign_in(request: Request, who: Principal) -> None:
    """``web.signed_in``: who opened a browser session, from where, with which groups. The
    sign-in grants nothing by itself (each action is audited as the API's), so a store
    that cannot take the record now does not stop it; the failure is logged."""
    ctx = context(request)
    detail = {"email": who.verified_email, "groups": sorted(who.groups), **origin(request).detail()}
    try:
        ctx.store.record(ctx.clock(), "web.signed_in", who.subject, detail)
    except StoreUnavailable as exc:  # what any driver error becomes; it names no secret
        log.warning("web sign-in of %s not audited: %s", who.subject, exc)


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


async def checked_form(
    request: Request, who: Principal, sid: str
) -> tuple[dict[str, str] | None, Response | None]:
    """A POST's form once its CSRF token is this session's; else the page that says why."""
    fields = await form(request)
    if fields is None:
        return None, message(who, "Not done", "The form could not be read.", None, 400)
    expected = sessions(request).csrf(sid)
    if not hmac.compare_digest(fields.get("csrf", "").encode(), expected.encode()):
        return None, message(
            who, "Not done", "The form is stale or came from elsewhere.", "Reload the page.", 403
        )
    return fields, None


@router.post("/web/sign-out", include_in_schema=False)
async def sign_out(request: Request) -> Response:
    seen = signed_in(request)
    if seen is None:
        return not_signed_in(request)
    who, sid = seen
    _, refusal = await checked_form(request, who, sid)
    if refusal is not None:
        return refusal
    response = message(
        None,
        "Signed out",
        "You are signed out of the approval pages.",
        None,
        200,
        sign_in=sign_in_link("/web/"),
    )
    _forget(response, request, COOKIE)
    return response


@router.get("/web/", include_in_schema=False)
def requests_page(request: Request) -> Response:
    seen = signed_in(request)
    if seen is None:
        return not_signed_in(request)
    who, sid = seen
    listed = service(request).approvals.visible_to(who, mine=False)
    waiting = [r for r in listed if r.can_approve and r.state == "pending"]
    return page("list.html", who=who, requests=waiting, csrf=sessions(request).csrf(sid))


@router.get("/web/requests/{request_id}", include_in_schema=False)
def request_page(request_id: str, request: Request) -> Response:
    seen = signed_in(request)
    if seen is None:
        return not_signed_in(request)
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


@router.post("/web/requests/{request_id}/{decision}", include_in_schema=False)
async def decide(request_id: str, decision: str, request: Request) -> Response:
    seen = signed_in(request)
    if seen is None:
        return not_signed_in(request)
    who, sid = seen
    if len(request_id) > MAX_ID:
        return no_such(who, "request")
    fields, refusal = await checked_form(request, who, sid)
    if fields is None:
        return refusal or no_such(who, "form")
    approvals = service(request).approvals
    try:
        # The store is blocking I/O: off the event loop.
        if decision == "approve":
            info = await run_in_threadpool(approvals.approve, who, request_id, origin(request))
        elif decision == "deny":
            reason = typed_text(fields.get("reason", ""))
            if not reason:
                return message(who, "Not done", "A denial needs a reason.", None, 400)
            try:  # the API's own body model: the same length and character rules
                body = RequestDecision(reason=reason)
            except ValidationError as exc:
                text = "; ".join(str(e["msg"]) for e in exc.errors())
                return message(who, "Not done", f"reason: {text}", None, 400)
            info = await run_in_threadpool(
                approvals.deny, who, request_id, body.reason, origin(request)
            )
        else:
            return message(who, "Not done", "No such decision.", None, 404)
    except refusals.Refusal as exc:
        return refused(who, exc)
    # the request's own id, not the path's: the service also takes an id in other letter
    # case or with spaces around it, which are no address to send a browser to
    return RedirectResponse(f"/web/requests/{info.id}", status_code=303, headers=SECURITY_HEADERS)


@router.get("/web/reviews/", include_in_schema=False)
def reviews_page(request: Request) -> Response:
    seen = signed_in(request)
    if seen is None:
        return not_signed_in(request)
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
        return not_signed_in(request)
    who, sid = seen
    if len(session_id) > MAX_ID:
        return no_such(who, "break-glass session")
    fields, refusal = await checked_form(request, who, sid)
    if fields is None:
        return refusal or no_such(who, "form")
    try:  # the API's own body model: a note is needed, with the same character rules
        body = ReviewClose(note=typed_text(fields.get("note", "")))
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
