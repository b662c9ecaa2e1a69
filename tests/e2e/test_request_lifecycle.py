"""A request's life as two people see it, end to end: the real CLI as separate processes
against the real broker, PostgreSQL, MariaDB, identity provider and webhook receiver.
Ctrl-C while waiting, asking again, resuming, withdrawing; ids by prefix; renewals that
never shorten; the audit filters; and denials that say what is allowed."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from typing import Any

import pytest

from tests.terminal import own_terminal, read_until

from .conftest import DBACCESS, Cli

pytestmark = pytest.mark.integration

_UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"


@pytest.fixture(scope="module")
def people(cli: Cli) -> Cli:
    """alice (the default profile) plus carol (on call), dave (auditor), erin and frank
    (leads), one profile each."""
    for person in ("carol", "dave", "erin", "frank"):
        result = cli.login(person, profile=person)
        assert result.returncode == 0, result.stderr
    return cli


def as_(cli: Cli, person: str, *args: str) -> subprocess.CompletedProcess[str]:
    return cli.run("--profile", person, "--no-input", *args)


def data(result: subprocess.CompletedProcess[str]) -> Any:
    assert result.returncode == 0, result.stderr + result.stdout
    return json.loads(result.stdout)["data"]


def flat(text: str) -> str:
    return " ".join(text.split())


def my_requests(cli: Cli) -> list[dict[str, Any]]:
    return data(cli.run("--json", "requests", "--mine"))  # type: ignore[no-any-return]


def test_ctrl_c_leaves_the_request_open_asking_again_reuses_it_and_resume_waits(
    people: Cli,
) -> None:
    reason = f"ctrl-c {id(people)}-{len(people.stack.webhooks.events)}"
    people.withdraw_open_requests()  # one left by another test would be reused here
    # Ctrl-C as a shell delivers it: SIGINT at its default disposition in the child (an
    # in-process test earlier in this pytest process may leave it ignored, and an ignored
    # SIGINT is inherited — Python then never raises KeyboardInterrupt).
    with subprocess.Popen(
        [
            *DBACCESS,
            "--no-input",
            "connect",
            "demo",
            "--role",
            "readwrite",
            "--reason",
            reason,
            "--",
            "-c",
            "select 1",
        ],
        env=people.env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    ) as waiting:
        try:
            hook = people.stack.webhooks.wait_for(
                lambda e: e["event"] == "request.created" and e["reason"] == reason, timeout=30
            )
            rid = hook["request_id"]
            waiting.send_signal(signal.SIGINT)  # the person presses Ctrl-C at the spinner
            _, err = waiting.communicate(timeout=30)
        finally:
            waiting.kill()
    assert waiting.returncode == 130, err
    assert f"error: stopped waiting; request {rid} stays pending" in flat(err)
    assert (
        f"hint: resume: dbaccess connect demo --role readwrite --request {rid}; or "
        f"withdraw it: dbaccess withdraw {rid}"
    ) in flat(err)
    assert "Traceback" not in err
    assert [r["state"] for r in my_requests(people) if r["id"] == rid] == ["pending"]

    # Asking again — even without the reason — gets the same request, not a second one.
    again = people.run(
        "--no-input", "--json", "connect", "demo", "--role", "readwrite", "--no-wait"
    )
    assert again.returncode == 6, again.stderr
    # connect leaves stdout to its client: the envelope is the last line on stderr
    assert json.loads(again.stderr.splitlines()[-1])["error"]["message"].startswith(
        f"request {rid} waits"
    )
    other = people.run(
        "--no-input",
        "connect",
        "demo",
        "--role",
        "readwrite",
        "--reason",
        "a different story",
        "--no-wait",
    )
    assert other.returncode == 5
    assert f"you already have request {rid} (pending) for readwrite on demo" in flat(other.stderr)
    assert f"or withdraw it first: dbaccess withdraw {rid}" in flat(other.stderr)

    # The resume command from the hint, with the id shortened, waits for the approvers.
    with people.popen(
        "--no-input",
        "connect",
        "demo",
        "--role",
        "readwrite",
        "--request",
        rid[:8],
        "--",
        "-Atc",
        "select current_user",
    ) as resumed:
        try:
            for lead in ("erin", "frank"):
                assert as_(people, lead, "approve", rid[:8]).returncode == 0
            out, err = resumed.communicate(timeout=60)
        finally:
            resumed.kill()
    assert resumed.returncode == 0, err
    assert out.strip().startswith("dba_alice_")
    assert not people.role_exists(out.strip())
    assert [r["state"] for r in my_requests(people) if r["id"] == rid] == ["used"]
    created = [
        e
        for e in people.stack.webhooks.events
        if e["event"] == "request.created" and e["reason"] == reason
    ]
    assert len(created) == 1  # one request for three asks


def test_the_requester_withdraws_by_prefix_and_the_approvers_are_told(people: Cli) -> None:
    pending = people.run(
        "--no-input",
        "--json",
        "connect",
        "shop",
        "--role",
        "readwrite",
        "--reason",
        "price fix I no longer need",
        "--no-wait",
    )
    assert pending.returncode == 6, pending.stderr
    rid = re.search(rf"request ({_UUID})", pending.stderr).group(1)  # type: ignore[union-attr]
    not_theirs = as_(people, "erin", "withdraw", rid)
    assert not_theirs.returncode == 5
    assert "only the requester withdraws a request" in flat(not_theirs.stderr)
    assert f"hint: to refuse it: dbaccess --profile erin deny {rid} --reason ..." in flat(
        not_theirs.stderr
    )
    short = people.run("--no-input", "withdraw", rid[:3])
    assert short.returncode == 2
    assert "too short to name a request: give at least 4 characters" in flat(short.stderr)

    done = people.run("--no-input", "withdraw", rid[:6])
    assert done.returncode == 0, done.stderr
    assert f"withdrew request {rid} for readwrite on shop" in flat(done.stdout)
    late = as_(people, "erin", "approve", rid)
    assert late.returncode == 5 and f"request {rid} is withdrawn, not pending" in flat(late.stderr)
    use = people.run("--no-input", "connect", "shop", "--role", "readwrite", "--request", rid)
    assert use.returncode == 5 and f"request {rid} was withdrawn" in flat(use.stderr)
    offered = data(as_(people, "erin", "--json", "requests"))
    assert rid not in [r["id"] for r in offered]
    people.stack.webhooks.wait_for(
        lambda e: e["event"] == "request.withdrawn" and e["request_id"] == rid
    )
    trail = data(as_(people, "dave", "--json", "audit", "--type", "request.withdrawn"))
    assert [r["detail"]["request_id"] for r in trail if r["detail"]["request_id"] == rid] == [rid]


def test_renew_keeps_the_later_end_unless_told_to_shorten(people: Cli) -> None:
    made = people.run(
        "--no-input",
        "creds",
        "demo",
        "--role",
        "readonly",
        "--reveal",
        "--format",
        "json",
        "--duration",
        "50m",
    )
    assert made.returncode == 0, made.stderr
    session = json.loads(made.stdout)["data"]
    sid, user = session["id"], session["db_user"]

    def valid_until() -> str:
        with people.stack.postgres.connect() as admin:
            row = admin.execute(
                "SELECT rolvaliduntil FROM pg_roles WHERE rolname = %s", (user,)
            ).fetchone()
        assert row is not None
        return str(row[0])

    before = valid_until()
    kept = people.run("--no-input", "renew", sid[:8], "--duration", "10m")
    assert kept.returncode == 0, kept.stderr
    assert f"unchanged: {user} is already valid until" in flat(kept.stdout)
    assert (
        f"hint: to end it earlier: dbaccess renew {sid} --duration 10m --shorten "
        f"(or now: dbaccess revoke {sid})"
    ) in flat(kept.stderr)
    assert valid_until() == before
    shortened = data(
        people.run("--no-input", "--json", "renew", sid[:8], "--duration", "10m", "--shorten")
    )
    assert shortened["changed"] is True and shortened["expires_at"] < session["expires_at"]
    assert valid_until() != before
    for odd, said in (
        ("abcd?x=1", "no session abcd?x=1 of yours"),
        ("%", "no session % of yours"),
        ("abcd/../x", "there is nothing at DELETE /v1/sessions/abcd/../x"),
    ):
        missed = people.run("--no-input", "revoke", odd)  # reaches the broker as typed
        assert missed.returncode == 11 and said in flat(missed.stderr), missed.stderr
    revoked = data(people.run("--json", "revoke", sid[:8]))
    assert revoked[0]["state"] == "revoked" and not people.role_exists(user)


def test_audit_by_email_and_an_unknown_type(people: Cli) -> None:
    by_email = data(
        as_(
            people,
            "dave",
            "--json",
            "audit",
            "--user",
            "alice@example.com",
            "--type",
            "session.granted",
        )
    )
    assert by_email and {r["subject"] for r in by_email} == {"alice"}
    assert {r["event"] for r in by_email} == {"session.granted"}
    wrong = as_(people, "dave", "audit", "--type", "session.grant")
    assert wrong.returncode == 2
    assert "'session.grant' is not an audit event type" in flat(wrong.stderr)
    assert "hint: one of: session.requested, session.granted," in flat(wrong.stderr)


def test_denials_say_what_is_allowed(people: Cli) -> None:
    nothing = as_(people, "frank", "connect", "demo", "--role", "readonly")
    assert nothing.returncode == 5
    assert "no rule of this broker grants you access to 'demo' or any other target" in flat(
        nothing.stderr
    )
    too_long = people.run("--no-input", "connect", "demo", "--role", "readonly", "--duration", "3h")
    assert too_long.returncode == 5
    assert "hint: ask for at most 1h: dbaccess connect demo --role readonly --duration 1h" in flat(
        too_long.stderr
    )
    incident = as_(
        people, "carol", "breakglass", "demo", "--incident", "outage-9", "--reason", "orders stuck"
    )
    assert incident.returncode == 5
    assert "give an id like INC-123" in flat(incident.stderr)
    assert "hint: dbaccess --profile carol breakglass demo --incident INC-123 --reason ..." in flat(
        incident.stderr
    )


def test_ctrl_c_at_the_spinner_on_a_terminal(people: Cli) -> None:
    """The keystroke itself: ^C typed on the terminal while the spinner turns."""
    import os
    import pty
    import sys

    controller, terminal = pty.openpty()

    reason = "pty ctrl-c"
    people.withdraw_open_requests()  # one left by another test would be reused here
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dbaccess",
            "connect",
            "shop",
            "--role",
            "readwrite",
            "--reason",
            reason,
        ],
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
        env={**people.env, "TERM": "dumb", "COLUMNS": "250"},
        preexec_fn=own_terminal,
    )
    os.close(terminal)
    try:
        read_until(controller, r"approvers run: dbaccess approve [0-9a-f-]{36}")
        time.sleep(0.5)  # into the wait's poll loop
        os.write(controller, b"\x03")
        shown = flat(read_until(controller, r"withdraw it: dbaccess withdraw [0-9a-f-]{36}"))
        assert process.wait(timeout=20) == 130
    finally:
        process.kill()
        process.wait()
        os.close(controller)
    rid = re.search(rf"request ({_UUID}) stays pending", shown)
    assert rid, shown
    assert f"resume: dbaccess connect shop --role readwrite --request {rid.group(1)}" in shown
    assert "Traceback" not in shown
    assert as_(people, "frank", "deny", rid.group(1)[:8], "--reason", "not now").returncode == 0


@pytest.mark.parametrize("fast", [True, False], ids=["fast-path", "full-cli"])
def test_a_reason_with_control_characters_is_refused_on_both_paths(people: Cli, fast: bool) -> None:
    extra = {} if fast else {"DBACCESS_FAST_EXEC": "0"}
    result = subprocess.run(
        [
            *DBACCESS,
            "--no-input",
            "exec",
            "demo",
            "--role",
            "readwrite",
            "--reason",
            "\x1b[2J\x1b[Happroved by security",
            "--no-wait",
            "--",
            "true",
        ],
        env={**people.env, **extra},
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 2, result.stderr
    assert "control or invisible formatting characters (found U+001B)" in result.stderr
    assert "\x1b" not in result.stderr


def test_an_approver_sees_a_reason_as_it_was_written(people: Cli) -> None:
    people.withdraw_open_requests()
    reason = "[/] [bold red]urgent[/] fix"  # once: MarkupError, a traceback for the approver
    asked = people.run(
        "--no-input", "connect", "demo", "--role", "readwrite", "--reason", reason, "--no-wait"
    )
    assert asked.returncode == 6, asked.stderr
    try:
        offered = as_(people, "erin", "requests")
        assert offered.returncode == 0, offered.stderr
        assert reason in offered.stdout
    finally:
        people.withdraw_open_requests()


# Written before the broker refused such text, or by a broker of another version.
HOSTILE = "\x1b[2J\x1b[H\x1b]0;pwned\x07\x1b]8;;https://evil.example\x07docs\x1b]8;;\x07 ok"


def on_a_pty(cli: Cli, *args: str) -> str:
    """What ``dbaccess ARGS`` shows on a real terminal, to its end."""
    import os
    import pty

    controller, terminal = pty.openpty()
    with subprocess.Popen(
        [*DBACCESS, *args],
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
        env={**cli.env, "TERM": "xterm", "COLUMNS": "250"},
        preexec_fn=own_terminal,
    ) as process:
        os.close(terminal)
        try:
            # raw, with rich's own styling: the hostile bytes must not be among them
            shown = read_until(controller, r"(?!)", 30, must=False, raw=True)
            assert process.wait(timeout=30) == 0, shown
        finally:
            process.kill()
            os.close(controller)
    return shown


def test_old_records_cannot_drive_the_approvers_or_auditors_terminal(people: Cli) -> None:
    import uuid
    from datetime import UTC, datetime, timedelta

    from dbaccess.broker.store import approval_requests

    now = datetime.now(UTC)
    store = people.store()
    request_id = str(uuid.uuid4())
    try:
        with store.engine.begin() as conn:
            conn.execute(
                approval_requests.insert().values(
                    id=request_id,
                    subject="alice",
                    email="alice@example.com",
                    target="shop",
                    role="readwrite",
                    duration_seconds=600,
                    reason=HOSTILE,
                    rule="dev-readwrite",
                    approvals_required=2,
                    approver_groups=json.dumps(["leads"]),
                    state="pending",
                    approvals="[]",
                    created_at=now,
                    expires_at=now + timedelta(hours=1),
                )
            )
        store.record(now, "session.denied", "alice", {"target": "demo", "reason": HOSTILE})
    finally:
        store.close()
    try:
        for person, command in (("erin", "requests"), ("dave", "audit")):
            shown = on_a_pty(people, "--profile", person, command)
            assert "\\x1b[2J" in shown and "\\x1b]0;pwned\\x07" in shown, shown
            for sequence in ("\x1b[2J", "\x1b[H", "\x1b]0;", "\x1b]8;", "\x07"):
                assert sequence not in shown, (person, sequence)
    finally:
        people.withdraw_open_requests()
