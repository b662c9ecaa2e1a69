"""The one table from a kind of refusal to its HTTP status, and the envelope it is sent in."""

from __future__ import annotations

import inspect

from fastapi import FastAPI
from fastapi.testclient import TestClient

from dbaccess.broker.api.errors import STATUS, install_handlers
from dbaccess.broker.services import refusals

KINDS = [
    kind
    for _, kind in inspect.getmembers(refusals, inspect.isclass)
    if issubclass(kind, refusals.Refusal) and kind is not refusals.Refusal
]


def test_every_kind_of_refusal_has_its_own_status() -> None:
    assert sorted(k.__name__ for k in KINDS) == sorted(k.__name__ for k in STATUS)
    assert len(set(STATUS.values())) == len(STATUS)
    assert all(400 <= status < 600 for status in STATUS.values())


def test_a_refusal_is_answered_with_its_status_and_the_envelope() -> None:
    app = FastAPI()
    install_handlers(app)

    @app.get("/refuse")
    def refuse() -> None:
        raise refusals.OverLimit("cap_reached", "one person may hold at most 2", "end one first")

    @app.get("/bare")
    def bare() -> None:
        raise refusals.NotFound("not_found", "no session 1234 of yours")

    with TestClient(app) as client:
        refused = client.get("/refuse")
        bare_reply = client.get("/bare")
    assert refused.status_code == 429
    assert refused.content == (
        b'{"error":{"code":"cap_reached","message":"one person may hold at most 2",'
        b'"hint":"end one first"}}'
    )
    assert bare_reply.status_code == 404
    assert bare_reply.json() == {
        "error": {"code": "not_found", "message": "no session 1234 of yours", "hint": None}
    }
