"""Approvals from a browser: the /web/ pages over the same service as the API, with real
tokens from the suite's identity provider and its real PostgreSQL target. The session
cookie is issued here from a verified token, as the sign-in does (the sign-in itself:
test_web_sign_in.py; in a real browser: tests/e2e/test_web_browser.py)."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from dbaccess.broker.api.routes.web import COOKIE
from dbaccess.sandbox.idp import device_tokens
from dbaccess.sandbox.stack import Stack

pytestmark = pytest.mark.integration

HOSTILE = "<script>alert('x')</script> \"quoted\" &"
CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)


@pytest.fixture
def api(web_api: TestClient) -> TestClient:
    return web_api


def bearer(stack: Stack, login: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {device_tokens(stack.idp, login)['id_token']}"}


def sign_in(api: TestClient, stack: Stack, login: str) -> None:
    token = device_tokens(stack.idp, login)["id_token"]
    app = api.app
    who = app.state.verifier.verify(token)  # type: ignore[attr-defined]
    api.cookies.set(COOKIE, app.state.web_sessions.issue(who))  # type: ignore[attr-defined]


def pending(api: TestClient, stack: Stack, login: str, reason: str, target: str = "demo") -> str:
    made = api.post(
        "/v1/sessions",
        headers=bearer(stack, login),
        json={"target": target, "role": "readwrite", "reason": reason},
    )
    assert made.status_code == 202, made.text
    return str(made.json()["id"])


def csrf(html: str) -> str:
    found = re.search(r'name="csrf" value="([A-Za-z0-9_-]+)"', html)
    assert found, html
    return found.group(1)


def test_a_lead_approves_and_denies_from_the_page_with_every_text_escaped(
    api: TestClient, stack: Stack
) -> None:
    first = pending(api, stack, "alice", HOSTILE)
    second = pending(api, stack, "alice", "second one", "shop")

    for cookie in (None, "forged.0000", "e30.AAAA"):  # none, or one not signed by the broker
        if cookie is not None:
            api.cookies.set(COOKIE, cookie)
        away = api.get("/web/", follow_redirects=False)
        assert away.status_code == 303  # to the sign-in, and back here after it
        assert away.headers["location"] == "/web/sign-in?next=/web/"
        posted = api.post(f"/web/requests/{first}/approve", data={"csrf": "x"})
        assert posted.status_code == 401 and "nothing was done" in posted.text
    sign_in(api, stack, "erin")

    listing = api.get("/web/")
    assert listing.status_code == 200
    assert listing.headers["content-security-policy"] == CSP
    assert listing.headers["x-content-type-options"] == "nosniff"
    assert listing.headers["referrer-policy"] == "no-referrer"
    assert f"/web/requests/{first}" in listing.text and "<script>" not in listing.text
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &#34;quoted&#34; &amp;" in (
        listing.text
    )

    detail = api.get(f"/web/requests/{first}")
    assert detail.status_code == 200 and "<script>" not in detail.text
    assert "readwrite on demo" in detail.text and "alice@example.com" in detail.text
    token = csrf(detail.text)

    # Without the CSRF token, or with another one: refused, nothing changed.
    for fields in ({"decision": "approve"}, {"csrf": "0" * 64}):
        stale = api.post(f"/web/requests/{first}/approve", data=fields, follow_redirects=False)
        assert stale.status_code == 403 and "stale" in stale.text
    assert (
        api.get(f"/v1/requests/{first}", headers=bearer(stack, "frank")).json()["approvals"] == []
    )

    done = api.post(f"/web/requests/{first}/approve", data={"csrf": token}, follow_redirects=False)
    assert done.status_code == 303, done.text
    seen = api.get(f"/v1/requests/{first}", headers=bearer(stack, "frank")).json()
    assert [a["by"] for a in seen["approvals"]] == ["erin"] and seen["state"] == "pending"

    again = api.post(f"/web/requests/{first}/approve", data={"csrf": token})
    assert again.status_code == 409  # already approved by erin: the service's conflict

    no_reason = api.post(f"/web/requests/{second}/deny", data={"csrf": token, "reason": " "})
    assert no_reason.status_code == 400 and "denial needs a reason" in no_reason.text
    control = api.post(
        f"/web/requests/{second}/deny", data={"csrf": token, "reason": "red \x1b[31m"}
    )
    assert control.status_code == 400 and "control" in control.text  # as the API: refused
    denied = api.post(f"/web/requests/{second}/deny", data={"csrf": token, "reason": HOSTILE})
    assert denied.status_code == 200 and "<script>" not in denied.text  # the redirect, followed
    assert "denied" in denied.text
    assert (
        api.get(f"/v1/requests/{second}", headers=bearer(stack, "frank")).json()["deny_reason"]
        == HOSTILE.strip()
    )


def test_the_same_refusals_as_the_api(api: TestClient, stack: Stack) -> None:
    own = pending(api, stack, "erin", "my own")
    sign_in(api, stack, "erin")
    detail = api.get(f"/web/requests/{own}")
    assert detail.status_code == 200 and "Approve</button>" not in detail.text
    refused = api.post(f"/web/requests/{own}/approve", data={"csrf": csrf_of(api, stack)})
    assert refused.status_code == 403, refused.text
    assert "Not done" in refused.text

    assert api.get("/web/requests/not-a-request").status_code == 404
    long = api.get("/web/requests/" + "x" * 200)
    assert long.status_code == 404 and "There is no such request." in long.text
    bad = api.post(f"/web/requests/{own}/explode", data={"csrf": "x"})
    assert bad.status_code in (403, 404)
    css = api.get("/web/static/web.css")
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")


def csrf_of(api: TestClient, stack: Stack) -> str:
    """A valid CSRF token for the signed-in session: from a page that shows forms."""
    other = pending(api, stack, "alice", "for a token")
    return csrf(api.get(f"/web/requests/{other}").text)


def test_a_reviewer_closes_a_break_glass_review_with_a_note(api: TestClient, stack: Stack) -> None:
    opened = api.post(
        "/v1/breakglass",
        headers=bearer(stack, "carol"),
        json={"target": "demo", "incident": "INC-7", "reason": HOSTILE},
    )
    assert opened.status_code == 201, opened.text
    session = opened.json()["id"]
    api.delete(f"/v1/sessions/{session}", headers=bearer(stack, "carol"))

    sign_in(api, stack, "alice")
    assert api.get("/web/reviews/").status_code == 403  # not a reviewer: the service says so

    sign_in(api, stack, "dave")
    reviews = api.get("/web/reviews/")
    assert reviews.status_code == 200 and "INC-7" in reviews.text
    assert "<script>" not in reviews.text and "&lt;script&gt;" in reviews.text
    token = csrf(reviews.text)
    empty = api.post(f"/web/reviews/{session}/close", data={"csrf": token, "note": "  "})
    assert empty.status_code == 400
    forged = api.post(f"/web/reviews/{session}/close", data={"csrf": "1", "note": "fine"})
    assert forged.status_code == 403
    closed = api.post(
        f"/web/reviews/{session}/close", data={"csrf": token, "note": "checked <b>ok</b>"}
    )
    assert closed.status_code == 200, closed.text
    assert "Review closed" in closed.text and "checked &lt;b&gt;ok&lt;/b&gt;" in closed.text
    assert session not in api.get("/web/reviews/").text
    left = api.get("/v1/reviews", headers=bearer(stack, "dave")).json()
    assert all(r["id"] != session for r in left)
