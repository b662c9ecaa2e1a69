"""The web pages' session cookie (broker/web_signin.py): it holds the identity it was
issued for, expires, and any change to it (or another broker's key) makes it worthless."""

from __future__ import annotations

import time

import pytest

from dbaccess.broker import web_signin
from dbaccess.broker.identity import Principal
from dbaccess.broker.web_signin import WebSessions

ERIN = Principal("erin", "erin@example.com", "Erin <Lead>", frozenset({"dev", "leads"}), True)


def test_a_cookie_holds_its_identity_until_it_expires(monkeypatch: pytest.MonkeyPatch) -> None:
    web = WebSessions(b"key", seconds=3600)
    now = time.time()
    cookie = web.issue(ERIN)
    monkeypatch.setattr(web_signin.time, "time", lambda: now + 60)
    who, sid = web.read(cookie) or (None, "")
    assert who == ERIN and len(sid) == 32
    monkeypatch.setattr(web_signin.time, "time", lambda: now + 3601)
    assert web.read(cookie) is None
    assert web.csrf(sid) != web.csrf(sid[::-1])  # a token per session


def test_replicas_with_the_same_key_read_each_others_cookies() -> None:
    cookie = WebSessions(b"shared key").issue(ERIN)
    seen = WebSessions(b"shared key").read(cookie)
    assert seen is not None and seen[0] == ERIN
    assert WebSessions(b"another key").read(cookie) is None


def test_a_changed_or_foreign_cookie_is_no_session() -> None:
    web = WebSessions()
    cookie = web.issue(ERIN)
    data, mac = cookie.rsplit(".", 1)
    assert data.startswith("eyJ") and web.read("f" + data[1:] + "." + mac) is None
    assert web.read(cookie + "0") is None
    assert WebSessions().read(cookie) is None  # another key
    # a sign-in's cookie, signed with the same key, is no session (labels differ)
    assert web.read(web.signer.sign("sign-in", {"sub": "erin"}, 60)) is None
    for junk in (None, "", "no-dot", "x" * 9000, "....", "%%%.abc", "e30.e30"):
        assert web.read(junk) is None
