"""A gateway session's statement records through ``GET /v1/sessions/{id}/statements`` and
``dbaccess audit --statements``: the owner and auditors read them, anyone else gets the
404 of an unknown id, bad parameters are a 422 with the error envelope, the chain's
verdict and seal are shown, and SQL a client sent never reaches the terminal raw — through
the broker in-process with real tokens and a real PostgreSQL target."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import jwt
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from dbaccess.broker.api.app import create_app
from dbaccess.broker.settings import load_settings
from dbaccess.broker.store import Store
from dbaccess.cli.app import app as cli
from dbaccess.client import context as cli_api
from dbaccess.client.auth.token_store import StoredLogin, save_login
from dbaccess.client.config import Profile, ProfileFile
from dbaccess.gateway.records import StatementRecord
from dbaccess.gateway.store_sink import StoreSink
from dbaccess.sandbox.stack import PROVISIONER_ENV, Stack
from tests.inprocess import Shared

pytestmark = pytest.mark.integration

HOSTILE = "SELECT 1 /* \x1b[2J[red]x[/]\x1b]0;owned\x07 */,\n  '\u202etxt.exe' -- " + "y" * 80


@dataclass
class Setup:
    api: TestClient
    store: Store
    session_id: str
    stack: Stack


def record(lease_id: str, n: int, **changes: object) -> StatementRecord:
    values: dict[str, object] = dict(
        lease_id=lease_id, person="alice", target="demo", role="readonly", kind="query",
        sql=f"SELECT {n}", params_policy="none", params=None,
        started=datetime.now(UTC), duration=0.0015, rows=n, bytes_out=64 + n, bytes_in=0,
        sqlstate=None, status="completed", connection=1,
    )  # fmt: skip
    values.update(changes)
    return StatementRecord(**values)  # type: ignore[arg-type]


@pytest.fixture
def setup(stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Setup]:
    """alice's session with 5 statement records (the 3rd hostile, the 4th refused),
    revoked and sealed, then one more record that came late."""
    monkeypatch.setenv(PROVISIONER_ENV, stack.provisioner_password)
    db = tmp_path / "broker.db"
    store = Store(f"sqlite:///{db}")
    settings = load_settings(stack.broker_config)
    settings = settings.model_copy(
        update={"broker": settings.broker.model_copy(update={"store": f"sqlite:///{db}"})}
    )
    from dbaccess.sandbox.idp import device_tokens

    alice = {"Authorization": f"Bearer {device_tokens(stack.idp, 'alice')['id_token']}"}
    with TestClient(create_app(settings, store=store, run_reaper=False)) as api:
        made = api.post("/v1/sessions", headers=alice, json={"target": "demo", "role": "readonly"})
        assert made.status_code == 201, made.text
        session_id = made.json()["id"]
        sink = StoreSink(store, "gw-1")
        sink.write([record(session_id, 1), record(session_id, 2)])
        sink.write(
            [
                record(session_id, 3, sql=HOSTILE),
                record(session_id, 4, status="refused", sqlstate="42501", rows=None),
                record(session_id, 5, kind="copy", bytes_in=2048),
            ]
        )
        assert api.delete(f"/v1/sessions/{session_id}", headers=alice).status_code == 200
        assert store.seal_statements(datetime.now(UTC) + timedelta(seconds=11)) == 1
        StoreSink(store, "gw-2").write([record(session_id, 6)])  # after the seal
        yield Setup(api, store, session_id, stack)
    store.close()


def bearer(tokens: dict[str, str], name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {tokens[name]}"}


def test_the_owner_and_an_auditor_read_the_records(setup: Setup, tokens: dict[str, str]) -> None:
    url = f"/v1/sessions/{setup.session_id}/statements"
    mine = setup.api.get(url, headers=bearer(tokens, "alice"))
    assert mine.status_code == 200, mine.text
    page = mine.json()
    assert page["session_id"] == setup.session_id and page["count"] == 6
    assert [e["seq"] for e in page["entries"]] == [1, 2, 3, 4, 5, 6]
    assert page["entries"][2]["sql"] == HOSTILE
    assert page["entries"][3]["status"] == "refused" and page["entries"][3]["rows"] is None
    assert page["entries"][4]["bytes_in"] == 2048
    assert [e["gateway"] for e in page["entries"]] == ["gw-1"] * 5 + ["gw-2"]
    assert page["next_after"] is None
    assert page["verification"] == {
        "ok": True, "records": 6, "expected": 6, "first_bad": None, "problem": None,
        "after_seal": 1,
    }  # fmt: skip
    assert page["seal"]["count"] == 5 and page["seal"]["head"] == page["entries"][4]["hash"]
    assert page["head"] == page["entries"][5]["hash"]

    # an auditor, by a prefix of the id, a page at a time
    audited = setup.api.get(
        f"/v1/sessions/{setup.session_id[:8]}/statements",
        params={"limit": 4},
        headers=bearer(tokens, "dave"),
    )
    assert audited.status_code == 200, audited.text
    assert [e["seq"] for e in audited.json()["entries"]] == [1, 2, 3, 4]
    assert audited.json()["next_after"] == 4
    rest = setup.api.get(
        url, params={"limit": 4, "after": 4}, headers=bearer(tokens, "dave")
    ).json()
    assert [e["seq"] for e in rest["entries"]] == [5, 6] and rest["next_after"] is None


def test_someone_else_gets_the_404_of_an_unknown_session(
    setup: Setup, tokens: dict[str, str]
) -> None:
    unknown = str(uuid.uuid4())
    for name in ("carol", "bob"):  # on-call; a DBA: neither owns it nor audits
        real = setup.api.get(
            f"/v1/sessions/{setup.session_id}/statements", headers=bearer(tokens, name)
        )
        none = setup.api.get(f"/v1/sessions/{unknown}/statements", headers=bearer(tokens, name))
        assert real.status_code == none.status_code == 404
        assert real.json()["error"]["message"].replace(setup.session_id, "ID") == (
            none.json()["error"]["message"].replace(unknown, "ID")
        )
        assert real.json()["error"]["code"] == "not_found"
    auditor = setup.api.get(f"/v1/sessions/{unknown}/statements", headers=bearer(tokens, "dave"))
    assert auditor.status_code == 404
    anonymous = setup.api.get(f"/v1/sessions/{setup.session_id}/statements")
    assert anonymous.status_code == 401


@pytest.mark.parametrize(
    "params",
    [
        {"limit": 0},
        {"limit": 1001},
        {"limit": -1},
        {"limit": "many"},
        {"after": -1},
        {"after": "x"},
        {"after": 2**63},
    ],
)
def test_bad_parameters_are_a_422_with_the_envelope(
    setup: Setup, tokens: dict[str, str], params: dict[str, object]
) -> None:
    answer = setup.api.get(
        f"/v1/sessions/{setup.session_id}/statements",
        params=params,
        headers=bearer(tokens, "alice"),
    )
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"]["code"] == "invalid_request"


def test_a_bad_id_is_a_4xx(setup: Setup, tokens: dict[str, str]) -> None:
    alice = bearer(tokens, "alice")
    assert (
        setup.api.get("/v1/sessions/" + "a" * 37 + "/statements", headers=alice).status_code == 422
    )
    assert setup.api.get("/v1/sessions/%1b%5b2J/statements", headers=alice).status_code == 404
    short = setup.api.get(f"/v1/sessions/{setup.session_id[:2]}/statements", headers=alice)
    assert short.status_code == 422 and "too short" in short.json()["error"]["message"]


def test_tampering_shows_in_the_page(setup: Setup, tokens: dict[str, str]) -> None:
    with setup.store.engine.begin() as conn:
        conn.execute(
            # record 2 is in the block of records 1-2: its rows (1 to 0) after its bytes_in
            sa.text(
                "UPDATE statement_blocks SET records = replace(records, ',2,66,0,', ',0,66,0,')"
                " WHERE lease_id = :id AND first_seq = 1"
            ),
            {"id": setup.session_id},
        )
    page = setup.api.get(
        f"/v1/sessions/{setup.session_id}/statements", headers=bearer(tokens, "dave")
    ).json()
    # located to the block: the first seq of the records written together with it
    assert page["verification"]["ok"] is False and page["verification"]["first_bad"] == 1
    assert "edited" in page["verification"]["problem"]


def login_cli(
    setup: Setup, tokens: dict[str, str], name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli_api, "http_client", lambda: Shared(setup.api))
    profiles = ProfileFile.load()
    profiles.profiles["default"] = Profile("default", "http://testserver")
    profiles.save()
    token = tokens[name]
    claims = jwt.decode(token, options={"verify_signature": False})
    save_login(
        "default",
        StoredLogin(
            issuer=setup.stack.idp.issuer,
            client_id=setup.stack.idp.client_id,
            scopes=["openid"],
            id_token=token,
            refresh_token=None,
            expires_at=claims["exp"],
            subject=name,
        ),
    )


def test_the_cli_shows_a_table_safely_and_the_verdict(
    setup: Setup, tokens: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    login_cli(setup, tokens, "alice", monkeypatch)
    human = CliRunner().invoke(
        cli, ["audit", "--statements", setup.session_id[:8]], prog_name="dbaccess"
    )
    assert human.exit_code == 0, human.output
    out = human.stdout
    assert "\x1b" not in out and "\x07" not in out and "\u202e" not in out
    assert "\\x1b[2J" in out and "\\u202e" in out  # shown, not obeyed
    assert "[red]x[/]" in out  # not rich markup either
    # one line, shortened: the newline a space, every escape whole, "…" at the end
    assert "SELECT 1 /* \\x1b[2J[red]x[/]\\x1b]0;owned\\x07 */, '\\u202etxt…" in out
    assert "yyy" not in out
    assert "SELECT 1" in out and "42501" in out and "copy" in out
    assert "chain verifies: 6 record(s)" in out
    assert "sealed into the audit trail with 5 record(s)" in out
    assert "1 record(s) arrived after the seal" in out
    assert "more:" not in human.stderr
    beyond = CliRunner().invoke(
        cli, ["audit", "--statements", setup.session_id, "--after", "6"], prog_name="dbaccess"
    )
    assert beyond.exit_code == 0 and beyond.stdout.startswith("no statement records after #6")

    paged = CliRunner().invoke(
        cli,
        ["audit", "--statements", setup.session_id, "--limit", "2"],
        prog_name="dbaccess",
    )
    assert paged.exit_code == 0, paged.output
    [more] = [line for line in paged.stderr.splitlines() if line.startswith("more: ")]
    assert more == f"more: dbaccess audit --statements {setup.session_id} --limit 2 --after 2"

    as_json = CliRunner().invoke(
        cli, ["--json", "audit", "--statements", setup.session_id], prog_name="dbaccess"
    )
    assert as_json.exit_code == 0, as_json.output
    assert "\x1b" not in as_json.stdout
    envelope = json.loads(as_json.stdout)
    assert envelope["next"] is None
    data = envelope["data"]
    assert data["entries"][2]["sql"] == HOSTILE and len(data["entries"]) == 6
    assert data["verification"]["ok"] is True and data["seal"]["count"] == 5


def test_the_cli_refuses_mixed_options_and_others(
    setup: Setup, tokens: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    login_cli(setup, tokens, "carol", monkeypatch)
    mixed = CliRunner().invoke(
        cli,
        ["audit", "--statements", setup.session_id, "--since", "2026-01-01"],
        prog_name="dbaccess",
    )
    assert mixed.exit_code == 2 and "--statements and --since" in mixed.output
    lone = CliRunner().invoke(cli, ["audit", "--after", "3"], prog_name="dbaccess")
    assert lone.exit_code == 2 and "--statements" in lone.output
    other = CliRunner().invoke(
        cli, ["--json", "audit", "--statements", setup.session_id], prog_name="dbaccess"
    )
    assert other.exit_code != 0
    assert json.loads(other.stdout)["error"]["code"] == "not_found"


def test_a_session_without_records_says_so(
    setup: Setup, tokens: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    alice = bearer(tokens, "alice")
    made = setup.api.post(
        "/v1/sessions", headers=alice, json={"target": "demo", "role": "readonly"}
    )
    assert made.status_code == 201, made.text
    other = made.json()["id"]
    try:
        page = setup.api.get(f"/v1/sessions/{other}/statements", headers=alice).json()
        assert page["entries"] == [] and page["count"] == 0 and page["head"] is None
        assert page["verification"]["ok"] is True and page["seal"] is None
        login_cli(setup, tokens, "alice", monkeypatch)
        human = CliRunner().invoke(cli, ["audit", "--statements", other], prog_name="dbaccess")
        assert human.exit_code == 0, human.output
        assert human.stdout.startswith("no statement records: none went through the gateway")
    finally:
        setup.api.delete(f"/v1/sessions/{other}", headers=alice)


def test_an_edit_before_the_page_shows_in_the_next_page(
    setup: Setup, tokens: dict[str, str]
) -> None:
    # later pages continue the chain the first page walked (paging stays O(n)); an edit
    # to a block already shown must still be reported by the next page
    url = f"/v1/sessions/{setup.session_id}/statements"
    first = setup.api.get(url, params={"limit": 2}, headers=bearer(tokens, "dave")).json()
    assert first["verification"]["ok"] is True and first["next_after"] == 2
    second = setup.api.get(
        url, params={"limit": 2, "after": 2}, headers=bearer(tokens, "dave")
    ).json()
    assert second["verification"]["ok"] is True and second["verification"]["after_seal"] == 1
    with setup.store.engine.begin() as conn:
        conn.execute(
            sa.text(
                "UPDATE statement_blocks SET records = replace(records, ',2,66,0,', ',0,66,0,')"
                " WHERE lease_id = :id AND first_seq = 1"
            ),
            {"id": setup.session_id},
        )
    third = setup.api.get(
        url, params={"limit": 2, "after": 4}, headers=bearer(tokens, "dave")
    ).json()
    assert [e["seq"] for e in third["entries"]] == [5, 6]
    assert third["verification"]["ok"] is False and third["verification"]["first_bad"] == 1
    assert "edited" in third["verification"]["problem"]
