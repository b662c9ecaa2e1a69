"""The web pages against hostile and unlucky input, found by an attacker's review: a return
path that makes the regex engine backtrack forever, a state that is not ASCII, cookies a
sibling subdomain could plant, a person in hundreds of groups, an id in another letter
case, line breaks typed into a textarea, and old records with control characters."""

from __future__ import annotations

import subprocess
import sys
import uuid
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from fastapi.testclient import TestClient

from dbaccess.broker.api.app import create_app
from dbaccess.broker.api.routes.web import COOKIE, SIGN_IN_COOKIE, page
from dbaccess.broker.identity import Principal
from dbaccess.broker.settings import Settings, load_settings
from dbaccess.sandbox.idp import device_tokens
from dbaccess.sandbox.stack import PROVISIONER_ENV, Stack

from .test_web_pages import bearer, csrf, pending, sign_in

pytestmark = pytest.mark.integration


@pytest.fixture
def api(web_api: TestClient) -> TestClient:
    return web_api


def test_a_return_path_built_to_backtrack_is_refused_at_once() -> None:
    # "(?:[A-Za-z0-9_-]+/?)*" took time doubling with each letter before a refused
    # character, holding the GIL (the whole broker) for hours at 40 letters: run where a
    # hang is a failure, not a stuck suite
    code = (
        "from dbaccess.broker.web_signin import local_page\n"
        "for n in (30, 60, 190):\n"
        "    for tail in ('!', '/!', '%2F', '\\\\'):\n"
        "        assert local_page('/web/' + 'a' * n + tail) == '/web/'\n"
        "        assert local_page('/web/' + 'ab/' * (n // 3) + tail) == '/web/'\n"
        "assert local_page('/web/requests/abc') == '/web/requests/abc'\n"
        "assert local_page('/web/reviews/') == '/web/reviews/'\n"
        "print('ok')\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr


def test_a_state_that_is_not_ascii_is_a_refused_sign_in_not_an_error(api: TestClient) -> None:
    away = api.get("/web/sign-in?next=/web/", follow_redirects=False)
    assert away.status_code == 303 and SIGN_IN_COOKIE in api.cookies
    for state in ("é", "ステート", "\u202e"):
        answer = api.get("/web/callback", params={"state": state, "code": "x"})
        assert answer.status_code == 400, answer.text
        assert "state does not match" in answer.text
    assert COOKIE not in api.cookies


def _finish_as(api: TestClient, monkeypatch: pytest.MonkeyPatch, who: Principal) -> Any:
    """A sign-in started here whose provider vouched for ``who`` (the token exchange
    replaced: a real provider with hundreds of groups per person is not at hand)."""
    flow = api.app.state.web_sign_in  # type: ignore[attr-defined]
    monkeypatch.setattr(flow, "finish", lambda pending, code: who)
    away = api.get("/web/sign-in?next=/web/", follow_redirects=False)
    state = parse_qs(urlsplit(away.headers["location"]).query)["state"][0]
    return api.get("/web/callback", params={"state": state, "code": "x"}, follow_redirects=False)


def test_the_session_cookie_keeps_only_the_groups_the_config_names(
    api: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings: Settings = api.app.state.service.ctx.settings  # type: ignore[attr-defined]
    named = settings.named_groups()
    # every group list of the suite's config: rules, approvers, break-glass, reviewers
    assert {"dev", "dba", "leads", "oncall", "auditors"} <= named
    entra_like = {str(uuid.uuid4()) for _ in range(300)}  # ~52 bytes each in a cookie
    who = Principal("frank", "frank@example.com", "Frank", frozenset({"leads"} | entra_like))
    back = _finish_as(api, monkeypatch, who)
    assert back.status_code == 303, back.text
    cookie = api.cookies[COOKIE]
    assert len(cookie) < 1000
    seen = api.app.state.web_sessions.read(cookie)  # type: ignore[attr-defined]
    assert seen is not None and seen[0].groups == {"leads"}
    assert api.get("/web/").status_code == 200  # and the pages take it


def test_too_many_named_groups_for_a_cookie_is_said_not_looped(
    api: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    many = frozenset(str(uuid.uuid4()) for _ in range(300))
    monkeypatch.setattr(Settings, "named_groups", lambda self: many | {"leads"})
    back = _finish_as(api, monkeypatch, Principal("frank", None, None, many))
    assert back.status_code == 400 and "too many for a browser" in back.text
    assert "dbaccess approve" in back.text and COOKIE not in api.cookies


def test_on_https_the_cookies_have_the_host_prefix(
    stack: Stack, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(PROVISIONER_ENV, stack.provisioner_password)
    settings = load_settings(stack.broker_config)
    assert settings.web is not None
    settings = settings.model_copy(
        update={
            "broker": settings.broker.model_copy(
                update={"store": f"sqlite:///{tmp_path / 'broker.db'}"}
            ),
            "web": settings.web.model_copy(update={"public_url": "https://dbaccess.example.com"}),
        }
    )
    with TestClient(create_app(settings, run_reaper=False), base_url="https://testserver") as api:
        away = api.get("/web/sign-in?next=/web/", follow_redirects=False)
        assert away.status_code == 303
        cookie = away.headers["set-cookie"]
        assert cookie.startswith(f"__Host-{SIGN_IN_COOKIE}=")
        assert "Path=/;" in cookie and "Secure" in cookie and "Domain" not in cookie
        assert "HttpOnly" in cookie
        # a session cookie under the plain name (planted from a sibling domain, which
        # cannot set a __Host- one) signs no one in
        token = device_tokens(stack.idp, "frank")["id_token"]
        who = api.app.state.verifier.verify(token)  # type: ignore[attr-defined]
        api.cookies.set(COOKIE, api.app.state.web_sessions.issue(who))  # type: ignore[attr-defined]
        assert api.get("/web/", follow_redirects=False).status_code == 303
        api.cookies.set(f"__Host-{COOKIE}", api.app.state.web_sessions.issue(who))  # type: ignore[attr-defined]
        assert api.get("/web/", follow_redirects=False).status_code == 200


def test_a_decision_by_an_id_in_other_letters_goes_to_the_request_s_own_page(
    api: TestClient, stack: Stack
) -> None:
    made = pending(api, stack, "alice", "upper case")
    sign_in(api, stack, "frank")
    token = csrf(api.get(f"/web/requests/{made}").text)
    done = api.post(
        f"/web/requests/{made.upper()}/approve", data={"csrf": token}, follow_redirects=False
    )
    assert done.status_code == 303, done.text
    assert done.headers["location"] == f"/web/requests/{made}"


def test_line_breaks_typed_in_a_reason_are_spaces(api: TestClient, stack: Stack) -> None:
    made = pending(api, stack, "alice", "to deny")
    sign_in(api, stack, "frank")
    detail = api.get(f"/web/requests/{made}").text
    assert 'maxlength="500"' in detail  # the API's own limit for a reason
    denied = api.post(
        f"/web/requests/{made}/deny",
        data={"csrf": csrf(detail), "reason": "first line\r\nsecond line\r\n"},
    )
    assert denied.status_code == 200, denied.text
    seen = api.get(f"/v1/requests/{made}", headers=bearer(stack, "frank")).json()
    assert seen["state"] == "denied" and seen["deny_reason"] == "first line second line"


def test_a_page_shows_control_characters_as_escapes() -> None:
    # texts written before the input rules could hold them: shown, never obeyed
    shown = page(
        "message.html", heading="h", message="paid\u202e by \x1b[31mred", hint=None, who=None
    )
    body = bytes(shown.body).decode()
    assert "\u202e" not in body and "\x1b" not in body
    assert "paid\\u202e by \\x1b[31mred" in body
