"""Break-glass and approvals end to end: the real CLI as separate processes, the real
broker, PostgreSQL, MariaDB, identity provider and webhook receiver."""

from __future__ import annotations

import json
import re
import secrets
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from dbaccess.broker.store import Store, approval_requests
from dbaccess.broker.store.audit_chain import raw_records, verify
from dbaccess.errors import ExitCode
from tests.terminal import own_terminal, read_until

from .conftest import DBACCESS, Cli

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def people(cli: Cli) -> Cli:
    """carol (on call), dave (auditor), erin and frank (leads) logged in, one profile each."""
    for person in ("carol", "dave", "erin", "frank"):
        result = cli.login(person, profile=person)
        assert result.returncode == 0, result.stderr
    return cli


def as_(cli: Cli, person: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return cli.run("--profile", person, "--no-input", *args, timeout=timeout)


def data(result: subprocess.CompletedProcess[str]) -> object:
    assert result.returncode == 0, result.stderr + result.stdout
    return json.loads(result.stdout)["data"]


def flat(text: str) -> str:
    """Messages as one line (rich wraps them at the terminal width)."""
    return " ".join(text.split())


def marker() -> str:
    return f"bg_marker_{secrets.token_hex(4)}"


def server_audit_log(cli: Cli) -> str:
    found = list(cli.stack.mariadb.workdir.rglob("server_audit.log"))
    return "".join(path.read_text(errors="replace") for path in found)


def test_breakglass_needs_a_target_and_a_reason_without_a_terminal(people: Cli) -> None:
    ambiguous = as_(people, "carol", "breakglass", "--incident", "INC-123", "--reason", "x")
    assert ambiguous.returncode == 2, ambiguous.stderr
    assert "break-glass covers several targets: demo, shop" in flat(ambiguous.stderr)
    # the hint names carol's profile, so it can be copied as it is
    assert "dbaccess --profile carol breakglass demo --incident" in flat(ambiguous.stderr)
    no_reason = as_(people, "carol", "breakglass", "demo", "--incident", "INC-123")
    assert no_reason.returncode == 2 and "break-glass needs a reason" in flat(no_reason.stderr)
    not_oncall = people.run(
        "--no-input", "breakglass", "demo", "--incident", "INC-1", "--reason", "curious"
    )
    assert not_oncall.returncode == 5 and "break-glass is for members of oncall" in flat(
        not_oncall.stderr
    )


def test_breakglass_on_postgres_is_logged_notified_and_reviewed(people: Cli) -> None:
    added = people.run(
        "profiles",
        "add",
        "carol",
        "--broker",
        people.stack.broker_url,
        "--breakglass-target",
        "demo",
    )
    assert added.returncode == 0, added.stderr
    loud, quiet = marker(), marker()
    incident = f"INC-{secrets.randbelow(10**6)}"  # this test's own webhook event and review
    # Exactly the 3 a.m. command (plus --reason, which a terminal would have asked for).
    result = as_(
        people,
        "carol",
        "breakglass",
        "--incident",
        incident,
        "--reason",
        "orders stuck",
        "--",
        "-c",
        f"select '{loud}'",
    )
    assert result.returncode == 0, result.stderr
    assert f"BREAK-GLASS session for incident {incident}" in flat(result.stderr)
    normal = people.run(
        "--no-input", "connect", "demo", "--role", "readonly", "--", "-c", f"select '{quiet}'"
    )
    assert normal.returncode == 0, normal.stderr
    log = people.stack.postgres.log_path.read_text(errors="replace")
    statement = next(line for line in log.splitlines() if loud in line)
    assert "statement:" in statement and "dba_carol_" in statement
    assert quiet not in log  # only the break-glass user's statements are logged

    hook = people.stack.webhooks.wait_for(
        lambda e: (
            e["event"] == "breakglass.opened"
            and e["incident"] == incident
            and e["target"] == "demo"
        )
    )
    assert "carol" in hook["text"] and "orders stuck" in hook["text"]

    reviews = data(as_(people, "dave", "--json", "review"))
    assert isinstance(reviews, list)
    review = next(r for r in reviews if r["incident"] == incident)
    own = as_(people, "carol", "review", review["id"], "--note", "all good")
    assert own.returncode == 5 and "cannot close its review" in flat(own.stderr)
    closed = data(
        as_(people, "dave", "--json", "review", review["id"], "--note", "restarted the stuck job")
    )
    assert isinstance(closed, dict) and closed["reviewed_by"] == "dave"
    left = data(as_(people, "dave", "--json", "review"))
    assert review["id"] not in [r["id"] for r in left]  # type: ignore[union-attr]


def test_breakglass_on_mariadb_is_logged_by_the_server(people: Cli) -> None:
    loud = marker()
    result = as_(
        people,
        "carol",
        "breakglass",
        "shop",
        "--incident",
        "INC-124",
        "--reason",
        "stock table locked",
        "--drill",
        "--",
        "-e",
        f"select '{loud}'",
    )
    assert result.returncode == 0, result.stderr
    assert "BREAK-GLASS DRILL" in flat(result.stderr)
    quiet = marker()
    normal = people.run(
        "--no-input", "connect", "shop", "--role", "readonly", "--", "-e", f"select '{quiet}'"
    )
    assert normal.returncode == 0, normal.stderr
    log = server_audit_log(people)
    line = next(line for line in log.splitlines() if loud in line)
    assert ",dba_carol_" in line and ",QUERY," in line
    assert quiet not in log  # only break-glass users are logged
    with people.stack.mariadb.connect() as admin, admin.cursor() as cur:
        cur.execute("SELECT @@GLOBAL.server_audit_incl_users")
        listed = str(cur.fetchone()[0])
    assert "dba_carol_" not in listed  # the session ended: its user left the list
    assert listed  # never empty (empty would log everyone)
    people.stack.webhooks.wait_for(
        lambda e: e["event"] == "breakglass.drill" and e["incident"] == "INC-124"
    )


def _request_id(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == ExitCode.APPROVAL_PENDING, result.stderr + result.stdout
    # connect/exec leave stdout to the child: their envelope is the last line on stderr
    assert result.stdout == ""
    error = json.loads(result.stderr.splitlines()[-1])["error"]
    assert error["code"] == "approval_pending"
    found = re.search(r"request ([0-9a-f-]{36})", error["message"])
    assert found, error
    return found.group(1)


def test_two_person_approval_with_a_waiting_client(people: Cli) -> None:
    reason = f"fix order 7 ({marker()})"  # tells this request's webhook event apart
    waiting = subprocess.Popen(
        [
            *DBACCESS,
            "--no-input",
            "exec",
            "demo",
            "--role",
            "readwrite",
            "--reason",
            reason,
            "--",
            "psql",
            "-qAt",
            "-c",
            "update orders set total = total where id = 1 returning current_user",
        ],
        env=people.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    hook = people.stack.webhooks.wait_for(
        lambda e: e["event"] == "request.created" and e["reason"] == reason, timeout=30
    )
    request_id = hook["request_id"]
    listed = data(as_(people, "erin", "--json", "requests"))
    assert request_id in [r["id"] for r in listed]  # type: ignore[union-attr]
    assert data(as_(people, "erin", "--json", "approve", request_id))["state"] == "pending"  # type: ignore[index]
    assert data(as_(people, "frank", "--json", "approve", request_id))["state"] == "approved"  # type: ignore[index]
    out, err = waiting.communicate(timeout=60)
    assert waiting.returncode == 0, err
    assert out.strip().startswith("dba_alice_")  # the update ran as alice's own user
    again = people.run(
        "--no-input",
        "--json",
        "exec",
        "demo",
        "--role",
        "readwrite",
        "--request",
        request_id,
        "--",
        "true",
    )
    assert again.returncode == 5 and "was already used" in again.stderr  # one session only


def test_no_wait_self_approval_and_denial(people: Cli) -> None:
    pending = as_(
        people,
        "erin",
        "--json",
        "connect",
        "demo",
        "--role",
        "readwrite",
        "--reason",
        "backfill",
        "--no-wait",
    )
    request_id = _request_id(pending)
    own = as_(people, "erin", "approve", request_id)
    assert own.returncode == 5 and "nobody approves or denies their own request" in flat(own.stderr)
    denied = as_(people, "frank", "deny", request_id, "--reason", "use the replica")
    assert denied.returncode == 0, denied.stderr
    use = as_(people, "erin", "connect", "demo", "--role", "readwrite", "--request", request_id)
    assert use.returncode == 5
    assert f"request {request_id} was denied by frank: use the replica" in flat(use.stderr)


def test_an_expired_request_cannot_be_approved_or_used(people: Cli) -> None:
    request_id = _request_id(
        people.run(
            "--no-input",
            "--json",
            "connect",
            "shop",
            "--role",
            "readwrite",
            "--reason",
            "price fix",
            "--no-wait",
        )
    )
    # An hour passes (request_ttl): move the deadline instead of waiting for it.
    store = people.store()
    try:
        _expire_and_check(people, store, request_id)
    finally:
        store.close()


def _expire_and_check(people: Cli, store: Store, request_id: str) -> None:
    with store.engine.begin() as conn:
        conn.execute(
            sa.update(approval_requests)
            .where(approval_requests.c.id == request_id)
            .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
    late = as_(people, "erin", "approve", request_id)
    assert late.returncode == 5 and "expired" in late.stderr
    use = people.run(
        "--no-input", "connect", "shop", "--role", "readwrite", "--request", request_id
    )
    assert use.returncode == 5 and f"request {request_id} expired at" in flat(use.stderr)
    people.stack.webhooks.wait_for(
        lambda e: e["event"] == "request.expired" and e["request_id"] == request_id
    )
    assert verify(raw_records(store)).ok
    time.sleep(0)  # (the reaper may also have expired it: either way, once)
    expired = [
        r
        for r in raw_records(store)
        if r.event == "request.expired" and json.loads(r.detail)["request_id"] == request_id
    ]
    assert len(expired) == 1


def test_audit_verify_fails_after_tampering_with_the_real_store(
    people: Cli, tmp_path: Path
) -> None:
    db = people.stack.broker_config.parent / "broker.db"
    copy = tmp_path / "broker.db"
    copy.write_bytes(db.read_bytes())  # tamper with a copy: the live broker keeps its trail
    for suffix in ("-wal", "-shm"):
        if Path(f"{db}{suffix}").exists():
            Path(f"{copy}{suffix}").write_bytes(Path(f"{db}{suffix}").read_bytes())
    broker = [str(Path(DBACCESS[0]).with_name("dbaccess-broker"))]
    config = tmp_path / "broker.toml"
    config.write_text(
        people.stack.broker_config.read_text().replace(
            'store = "sqlite:///broker.db"', f'store = "sqlite:///{copy}"'
        )
    )
    env = {**people.env}
    ok = subprocess.run(
        [*broker, "audit", "verify", "--config", str(config)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ok.returncode == 0, ok.stderr + ok.stdout
    engine = sa.create_engine(f"sqlite:///{copy}")
    with engine.begin() as conn:  # an insider hides who approved a request
        seq = conn.execute(
            sa.text("SELECT seq FROM audit WHERE event = 'request.approved' ORDER BY seq LIMIT 1")
        ).scalar_one()
        conn.execute(sa.text("UPDATE audit SET subject = 'nobody' WHERE seq = :s"), {"s": seq})
    engine.dispose()
    bad = subprocess.run(
        [*broker, "audit", "verify", "--config", str(config)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode != 0
    assert f"BROKEN at record #{seq}" in bad.stderr


def _on_a_terminal(people: Cli, *args: str) -> tuple[int, subprocess.Popen[bytes]]:
    import os
    import pty
    import sys

    controller, terminal = pty.openpty()

    process = subprocess.Popen(
        [sys.executable, "-m", "dbaccess", *args],
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
        env={**people.env, "TERM": "dumb", "COLUMNS": "200", "PAGER": "cat", "PSQL_PAGER": "cat"},
        preexec_fn=own_terminal,
    )
    os.close(terminal)
    return controller, process


def test_on_a_terminal_breakglass_asks_for_the_reason_and_the_target(people: Cli) -> None:
    import os

    assert people.login("carol", profile="carol-tty").returncode == 0
    loud = marker()
    terminal, process = _on_a_terminal(
        people,
        "--profile",
        "carol-tty",
        "breakglass",
        "--incident",
        "INC-77",
        "--drill",
        "--",
        "-c",
        f"select '{loud}'",
    )
    try:
        read_until(terminal, r"Reason \(what are you about to do\?\):")
        os.write(terminal, b"rehearsing the runbook\n")
        choices = read_until(terminal, r"which target")
        assert "1. demo" in choices and "2. shop" in choices
        os.write(terminal, b"1\n")
        shown = read_until(terminal, r"session revoked")
        assert "BREAK-GLASS DRILL" in shown and loud in shown
        assert process.wait(timeout=30) == 0
    finally:
        process.kill()
        os.close(terminal)
    people.stack.webhooks.wait_for(
        lambda e: e["event"] == "breakglass.drill" and e["reason"] == "rehearsing the runbook"
    )


def test_on_a_terminal_connect_asks_for_a_reason_and_waits_for_approvers(people: Cli) -> None:
    import os

    reason = f"pty {marker()}"
    terminal, process = _on_a_terminal(
        people, "connect", "demo", "--role", "readwrite", "--", "-c", "select current_user"
    )
    try:
        read_until(terminal, r"Reason:")
        os.write(terminal, reason.encode() + b"\n")
        waiting = read_until(terminal, r"approvers run: dbaccess approve [0-9a-f-]{36}")
        request_id = re.search(r"request ([0-9a-f-]{36})", waiting)
        assert request_id, waiting
        for approver in ("erin", "frank"):
            assert as_(people, approver, "approve", request_id.group(1)).returncode == 0
        shown = read_until(terminal, r"session revoked", timeout=30)
        assert "dba_alice_" in shown
        assert process.wait(timeout=30) == 0
    finally:
        process.kill()
        os.close(terminal)
