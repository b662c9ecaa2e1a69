"""The web pages' session cookie (api/routes/web.py): it holds the identity it was issued
for, expires, and any change to it (or another broker's key) makes it worthless."""

from __future__ import annotations

import time

from dbaccess.broker.api.routes.web import SESSION_SECONDS, WebSessions
from dbaccess.broker.identity import Principal

ERIN = Principal("erin", "erin@example.com", "Erin <Lead>", frozenset({"dev", "leads"}), True)


def test_a_cookie_holds_its_identity_until_it_expires() -> None:
    web = WebSessions()
    now = time.time()
    cookie = web.issue(ERIN, now)
    who, sid = web.read(cookie, now + 60) or (None, "")
    assert who == ERIN and len(sid) == 32
    assert web.read(cookie, now + SESSION_SECONDS + 1) is None
    assert web.csrf(sid) != web.csrf(sid[::-1])  # a token per session


def test_a_changed_or_foreign_cookie_is_no_session() -> None:
    web = WebSessions()
    cookie = web.issue(ERIN)
    data, mac = cookie.rsplit(".", 1)
    assert data.startswith("eyJ") and web.read("f" + data[1:] + "." + mac) is None
    assert web.read(cookie + "0") is None
    assert WebSessions().read(cookie) is None  # another key
    for junk in (None, "", "no-dot", "x" * 9000, "....", "%%%.abc"):
        assert web.read(junk) is None
