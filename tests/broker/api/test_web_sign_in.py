"""The web pages' sign-in ([web]): the authorization code flow with PKCE against the
suite's real identity provider (its "dbaccess-web" client), through the broker app; the
provider's own login and consent pages are walked as a person would
(``sign_in_at_provider``). A real browser does the same in tests/e2e/test_web_browser.py."""

from __future__ import annotations

import base64
import hashlib
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from fastapi.testclient import TestClient

from dbaccess.broker.api.routes.web import COOKIE, SIGN_IN_COOKIE
from dbaccess.broker.identity import InvalidToken
from dbaccess.broker.settings import Settings, load_settings
from dbaccess.broker.web_signin import (
    CookieSigner,
    Pending,
    ProviderUnreachable,
    SignIn,
    local_page,
    pending_cookie,
    read_pending,
)
from dbaccess.sandbox.idp import device_tokens, sign_in_at_provider
from dbaccess.sandbox.stack import Stack

pytestmark = pytest.mark.integration


@pytest.fixture
def api(web_api: TestClient) -> TestClient:
    return web_api


def start(api: TestClient, page: str) -> str:
    """Ask for ``page`` without a session and follow the broker to the provider: the
    authorization request's URL."""
    away = api.get(page, follow_redirects=False)
    assert away.status_code == 303, away.text
    assert away.headers["location"].startswith("/web/sign-in?next=")
    to_provider = api.get(away.headers["location"], follow_redirects=False)
    assert to_provider.status_code == 303, to_provider.text
    assert SIGN_IN_COOKIE in api.cookies
    return str(to_provider.headers["location"])


def back_to_broker(api: TestClient, redirect: str) -> object:
    """The provider's redirect to {public_url}/web/callback, delivered to the app."""
    parts = urlsplit(redirect)
    assert parts.path == "/web/callback", redirect
    return api.get(f"/web/callback?{parts.query}", follow_redirects=False)


def test_a_person_signs_in_and_comes_back_to_the_page_they_asked_for(
    api: TestClient, stack: Stack
) -> None:
    made = api.post(
        "/v1/sessions",
        headers={"Authorization": f"Bearer {device_tokens(stack.idp, 'alice')['id_token']}"},
        json={"target": "demo", "role": "readwrite", "reason": "a migration"},
    )
    assert made.status_code == 202, made.text
    page = f"/web/requests/{made.json()['id']}"

    authorize = start(api, page)
    query = parse_qs(urlsplit(authorize).query)
    assert authorize.startswith(stack.idp.issuer)
    assert query["client_id"] == ["dbaccess-web"] and query["response_type"] == ["code"]
    assert query["code_challenge_method"] == ["S256"]
    assert query["redirect_uri"] == [f"{stack.broker_url}/web/callback"]
    assert "openid" in query["scope"][0].split() and query["nonce"] and query["state"]

    callback = back_to_broker(api, sign_in_at_provider(authorize, "frank"))
    assert callback.status_code == 303, callback.text  # type: ignore[attr-defined]
    assert callback.headers["location"] == page  # type: ignore[attr-defined]
    cookie = next(
        c
        for c in callback.headers.get_list("set-cookie")  # type: ignore[attr-defined]
        if c.startswith(f"{COOKIE}=")
    )
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie and "Path=/web/" in cookie
    assert "Secure" not in cookie  # http on a loopback address; an https public_url sets it

    shown = api.get(page)
    assert shown.status_code == 200 and "frank@example.com" in shown.text
    # the sign-in is evidence too: who, from where, with which groups
    dave = {"Authorization": f"Bearer {device_tokens(stack.idp, 'dave')['id_token']}"}
    audited = api.get("/v1/audit", params={"type": "web.signed_in"}, headers=dave).json()
    assert [(r["subject"], r["detail"]["groups"]) for r in audited] == [("frank", ["leads"])]
    assert audited[0]["detail"]["email"] == "frank@example.com"
    assert audited[0]["detail"]["source"]
    assert "alice@example.com" in shown.text and "Approve</button>" in shown.text

    # The code was used once: the same redirect again is refused by the provider, and
    # the sign-in cookie was spent with it.
    api.cookies.delete(COOKIE)
    replay = api.get(f"/web/callback?{urlsplit(authorize).query}", follow_redirects=False)
    assert replay.status_code == 400 and "expired" in replay.text.lower()


def test_a_callback_that_is_not_this_browsers_sign_in_signs_no_one_in(
    api: TestClient, stack: Stack
) -> None:
    authorize = start(api, "/web/")
    redirect = sign_in_at_provider(authorize, "frank")
    code = parse_qs(urlsplit(redirect).query)["code"][0]

    wrong_state = api.get(f"/web/callback?code={code}&state=guessed", follow_redirects=False)
    assert wrong_state.status_code == 400 and "state" in wrong_state.text
    assert COOKIE not in api.cookies

    # Another browser (no sign-in cookie, or one the broker did not sign) gets nowhere.
    kept = api.cookies.get(SIGN_IN_COOKIE)
    api.cookies.delete(SIGN_IN_COOKIE)
    elsewhere = back_to_broker(api, redirect)
    assert elsewhere.status_code == 400  # type: ignore[attr-defined]
    api.cookies.set(SIGN_IN_COOKIE, "x" + str(kept), path="/web/")
    forged = back_to_broker(api, redirect)
    assert forged.status_code == 400  # type: ignore[attr-defined]
    assert COOKIE not in api.cookies

    # The code with a PKCE verifier other than the one its challenge was made from (a
    # sign-in cookie signed with the right key and the right state, but another
    # verifier): the provider refuses the exchange.
    signer = api.app.state.web_sessions.signer  # type: ignore[attr-defined]
    state = parse_qs(urlsplit(redirect).query)["state"][0]
    nonce = parse_qs(urlsplit(authorize).query)["nonce"][0]
    api.cookies.set(
        SIGN_IN_COOKIE,
        pending_cookie(signer, Pending(state, nonce, "v" * 64, "/web/")),
        path="/web/",
    )
    other_verifier = back_to_broker(api, redirect)
    assert other_verifier.status_code == 401  # type: ignore[attr-defined]
    assert "refused the sign-in" in other_verifier.text  # type: ignore[attr-defined]
    assert COOKIE not in api.cookies


def test_giving_up_at_the_provider_is_said_and_escaped(api: TestClient) -> None:
    authorize = start(api, "/web/")
    redirect = sign_in_at_provider(authorize, "frank", abort=True)
    assert "error=access_denied" in redirect
    page = back_to_broker(api, redirect)
    assert page.status_code == 401  # type: ignore[attr-defined]
    assert "End-User aborted interaction" in page.text  # type: ignore[attr-defined]

    fresh = start(api, "/web/")  # a new sign-in: the provider's error for it, hostile
    state = parse_qs(urlsplit(fresh).query)["state"][0]
    hostile = api.get(
        f"/web/callback?error=x&error_description=%3Cscript%3Ealert(1)%3C/script%3E&state={state}",
        follow_redirects=False,
    )
    assert hostile.status_code == 401
    assert "<script>" not in hostile.text and "&lt;script&gt;alert(1)" in hostile.text
    assert COOKIE not in api.cookies


def test_a_web_sign_in_token_is_no_api_bearer_token(api: TestClient, stack: Stack) -> None:
    """The web client's ID token names dbaccess-web as its audience: the API, which takes
    the CLI's logins, refuses it, and the web sign-in refuses the CLI's."""
    settings = stack_settings(stack)
    assert settings.web is not None
    flow = SignIn(settings.identity, settings.web)
    cli_token = device_tokens(stack.idp, "frank")["id_token"]
    with pytest.raises(InvalidToken, match="another audience"):
        flow.verifier.verify(cli_token)
    web_token = web_id_token(api, stack)
    refused = api.get("/v1/requests", headers={"Authorization": f"Bearer {web_token}"})
    assert refused.status_code == 401 and "audience" in refused.text


def stack_settings(stack: Stack) -> Settings:
    return load_settings(stack.broker_config)


def web_id_token(api: TestClient, stack: Stack) -> str:
    """An ID token of the web client, through the whole code flow (as the broker makes
    it, with its PKCE verifier)."""
    authorize = start(api, "/web/")
    redirect = sign_in_at_provider(authorize, "frank")
    code = parse_qs(urlsplit(redirect).query)["code"][0]
    flow: SignIn = api.app.state.web_sign_in  # type: ignore[attr-defined]
    signer = api.app.state.web_sessions.signer  # type: ignore[attr-defined]
    pending = read_pending(signer, api.cookies.get(SIGN_IN_COOKIE))
    assert pending is not None
    tokens = httpx.post(
        stack.idp.issuer + "/token",
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": flow.web.redirect_uri,
            "client_id": "dbaccess-web",
            "code_verifier": pending.verifier,
        },
    ).json()
    challenge = parse_qs(urlsplit(authorize).query)["code_challenge"][0]
    digest = hashlib.sha256(pending.verifier.encode()).digest()
    assert challenge == base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
    return str(tokens["id_token"])


@pytest.mark.parametrize(
    "asked",
    [
        "https://evil.example/",
        "//evil.example/web/",
        "/\\evil.example",
        "/web/\\\\evil.example",
        "/web//evil.example",
        "/web/%0d%0aSet-Cookie:x",
        "/web/%2f%2fevil.example",
        "/web/../api/",
        "/web/./",
        "/WEB/",
        "/web",
        "/web/requests/\u0430",  # a Cyrillic a
        "/web/" + "a" * 200,
        "/web/\r\nLocation: x",
        "/api/",
        "javascript:alert(1)",
        "",
    ],
)
def test_the_page_after_a_sign_in_is_always_one_of_ours(asked: str) -> None:
    assert local_page(asked) == "/web/"


def test_the_pages_a_sign_in_returns_to() -> None:
    for page in ("/web/", "/web/reviews/", "/web/requests/0b6f3c7e-1d2a-4c5b-9e8f-123456789abc"):
        assert local_page(page) == page


def test_a_provider_that_does_not_answer_is_a_page_that_says_so(stack: Stack) -> None:
    settings = stack_settings(stack)

    def down(url: str) -> dict[str, object]:
        raise ConnectionError(f"cannot fetch {url}: connection refused")

    assert settings.web is not None
    flow = SignIn(settings.identity, settings.web, http_get=down)
    with pytest.raises(ProviderUnreachable, match="did not answer"):
        flow.begin("/web/")
    signer = CookieSigner(b"k")
    assert signer.read("sign-in", signer.sign("session", {"a": 1}, 60)) is None  # labels
    assert signer.read("session", signer.sign("session", {"a": 1}, -1)) is None  # expired


def test_a_sign_in_the_store_cannot_record_still_signs_in_and_says_so(
    api: TestClient, stack: Stack, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # the sign-in grants nothing by itself: a store failing now leaves a log line, not a 500
    from dbaccess.broker.store import StoreUnavailable

    store = api.app.state.service.ctx.store  # type: ignore[attr-defined]

    def failing(*_: object, **__: object) -> None:
        raise StoreUnavailable("the broker's state store failed: disk I/O error")

    monkeypatch.setattr(store, "record", failing)
    callback = back_to_broker(api, sign_in_at_provider(start(api, "/web/"), "frank"))
    assert callback.status_code == 303, callback.text  # type: ignore[attr-defined]
    assert COOKIE in api.cookies
    assert "web sign-in of frank not audited: the broker's state store failed" in caplog.text
