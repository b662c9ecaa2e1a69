"""Dev mode (issue 16, point 1): ``python -m dbaccess.sandbox --dev`` keeps the stack
running until Ctrl-C, and other terminals that source its env file are the demo people —
the user guide's approval and break-glass walkthroughs, followed with their commands."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.doc_examples import ROOT as REPO
from tests.doc_examples import Block, blocks

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


class DevMode:
    def __init__(self, process: subprocess.Popen[str], lines: list[str]) -> None:
        self.process = process
        self.lines = lines
        text = "\n".join(lines)
        found = re.search(r"source (\S+/env)$", text, re.M)
        assert found, text
        self.env_file = Path(found[1])
        broker = re.search(r"broker +(http://127\.0\.0\.1:(\d+))", text)
        assert broker, text
        self.broker_port = int(broker[2])

    def start_in_shell(self, command: str) -> subprocess.Popen[str]:
        """``command`` started in a new terminal's shell (see ``shell``), stdin at its end."""
        home = self.env_file.parent / "terminal-home"
        home.mkdir(exist_ok=True)
        return subprocess.Popen(
            ["bash", "-c", f"source {self.env_file}; {command}"],
            env={"PATH": os.environ["PATH"], "HOME": str(home), "LANG": "C.UTF-8"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            stdin=subprocess.DEVNULL,
        )

    def shell(self, script: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
        """``script`` in a new bash that sourced the env file, as a second terminal would:
        nothing of the test's environment but PATH and a home of its own."""
        home = self.env_file.parent / "terminal-home"
        home.mkdir(exist_ok=True)
        return subprocess.run(
            ["bash", "-c", f"set -e; source {self.env_file}; {script}"],
            env={"PATH": os.environ["PATH"], "HOME": str(home), "LANG": "C.UTF-8"},
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )


@pytest.fixture(scope="module")
def dev_mode() -> Iterator[DevMode]:
    process = subprocess.Popen(
        [sys.executable, "-m", "dbaccess.sandbox", "--dev"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        cwd=ROOT,
    )
    # dev mode speaks on stderr, as the tour does; a thread reads it so that a buffered
    # line is never waited for
    said: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(target=lambda: [said.put(x) for x in process.stderr or ()])
    reader.start()
    lines: list[str] = []
    deadline = time.monotonic() + 180
    try:
        while not lines or not lines[-1].startswith("sandbox: ready"):
            try:
                lines.append(said.get(timeout=max(deadline - time.monotonic(), 0.1)).rstrip())
            except queue.Empty:
                raise AssertionError("dev mode not ready:\n" + "\n".join(lines)) from None
        yield DevMode(process, lines)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        reader.join(10)
        assert process.stderr is not None
        process.stderr.close()


def test_it_says_where_everything_is(dev_mode: DevMode) -> None:
    text = "\n".join(dev_mode.lines)
    for what in ("broker", "approvals", "identity", "PostgreSQL", "gateway", "MariaDB", "webhooks"):
        assert re.search(rf"^sandbox: {what} ", text, re.M), text
    for login in ("alice", "bob", "carol", "dave", "erin", "frank"):
        assert f"--profile sandbox-{login}" in text
    # the directory lets the servers' service user through, no one list or change it
    assert dev_mode.env_file.parent.stat().st_mode & 0o066 == 0
    assert dev_mode.env_file.stat().st_mode & 0o777 == 0o600


def test_an_approval_by_two_other_people_from_other_terminals(dev_mode: DevMode) -> None:
    asked = dev_mode.shell(
        "dbaccess --profile sandbox-alice --no-input connect demo --role readwrite "
        "--reason 'fix order 7' --no-wait || test $? -eq 6"
    )
    assert asked.returncode == 0, asked.stderr
    request = re.search(r"request ([0-9a-f-]{36})", asked.stderr)
    assert request, asked.stderr
    # alice cannot approve her own; the two leads can, one each
    own = dev_mode.shell(f"dbaccess --profile sandbox-alice --no-input approve {request[1]}")
    assert own.returncode != 0
    approved = dev_mode.shell(
        f"dbaccess --profile sandbox-erin --no-input approve {request[1]} && "
        f"dbaccess --profile sandbox-frank --no-input approve {request[1]}"
    )
    assert approved.returncode == 0, approved.stderr
    used = dev_mode.shell(
        f"dbaccess --profile sandbox-alice connect demo --role readwrite --request {request[1]}"
        " -- -At -c 'select current_user'"
    )
    assert used.returncode == 0, used.stderr
    assert used.stdout.strip().startswith("dba_alice_")


def test_break_glass_then_a_review_by_an_auditor(dev_mode: DevMode) -> None:
    broke = dev_mode.shell(
        "dbaccess --profile sandbox-carol --no-input breakglass demo --incident INC-7 "
        "--reason 'orders stuck' -- -At -c 'select current_user'"
    )
    assert broke.returncode == 0, broke.stderr
    assert broke.stdout.strip().startswith("dba_carol_")
    review = dev_mode.shell("dbaccess --profile sandbox-dave review INC-7")
    assert review.returncode == 0, review.stderr
    assert "INC-7" in review.stdout and "carol" in review.stdout


def test_a_bare_dbaccess_is_alice_and_each_profile_its_person(dev_mode: DevMode) -> None:
    whoami = dev_mode.shell("dbaccess whoami; dbaccess --profile sandbox-bob whoami")
    assert whoami.returncode == 0, whoami.stderr
    first, _, second = whoami.stdout.partition("bob@")
    assert "alice@example.com" in first and second.startswith("example.com")


def blocks_run_here() -> list[Block]:
    """The user guide's blocks marked to run in this file."""
    return [
        block
        for block in blocks(REPO / "docs" / "user-guide.md")
        if block.marker == ("runs", "tests/sandbox/test_dev_mode.py")
    ]


def walkthrough_blocks() -> list[Block]:
    """docs/user-guide.md, "Trying it with several people": the dev mode's start and what
    it prints, then the two-terminal walkthrough."""
    found = [b for b in blocks_run_here() if "dbaccess.sandbox --dev" in "\n".join(b.lines)]
    found += [
        b for b in blocks_run_here() if b.prompts()[:1] and b.prompts()[0].startswith("source")
    ]
    assert len(found) == 2, found
    return found


def test_the_user_guides_creds_script_runs_as_written(dev_mode: DevMode) -> None:
    """The script lines of "Tools that cannot be wrapped: creds", as alice: each
    session's variables reach the client, and each session is revoked by the script."""
    (script,) = [b for b in blocks_run_here() if "dbaccess creds" in "\n".join(b.lines)]
    ran = dev_mode.shell("\n".join(script.lines))
    assert ran.returncode == 0, ran.stdout + ran.stderr
    left = dev_mode.shell("dbaccess --json sessions")
    assert left.returncode == 0, left.stderr
    assert json.loads(left.stdout)["data"] == []  # both revoked


def test_it_starts_and_prints_what_the_user_guide_shows(dev_mode: DevMode) -> None:
    start, _ = walkthrough_blocks()
    assert start.prompts() == [".venv/bin/python -m dbaccess.sandbox --dev"]  # the fixture's
    shown = [line for line in start.lines[1:] if line.startswith("sandbox: ")]
    printed = dev_mode.lines
    for line in shown:  # the same lines, but for ports, paths and the ones left out (...)
        assert any(loose(line).fullmatch(p) for p in printed), (line, printed)


def loose(line: str) -> re.Pattern[str]:
    """``line`` with its numbers (ports), the run's directory and runs of spaces as
    wildcards."""
    pieces = []
    for part in re.split(r"(/tmp/dbaccess-sandbox-[a-z0-9_]+|[0-9]+| +)", line):
        if part.startswith("/tmp/dbaccess-sandbox-"):
            pieces.append(r"\S+")
        elif part.isdigit():
            pieces.append("[0-9]+")
        elif part and not part.strip():
            pieces.append(" +")
        else:
            pieces.append(re.escape(part))
    return re.compile("".join(pieces))


def test_the_user_guides_walkthrough_runs_as_written(dev_mode: DevMode) -> None:
    """Each command at the block's prompt, in order, in a shell that sourced the env file
    (the path the guide shows is this run's); a command that waits (alice's, for her
    approvers) goes on, as in its own terminal, and must end well once the rest ran. The
    request id the guide abbreviates (3f0c…) is the one the commands printed."""
    _, walk = walkthrough_blocks()
    prompts = walk.prompts()
    assert prompts[0].startswith("source ") and prompts[0].endswith("/env")
    said: list[str] = []
    waiting: list[tuple[str, subprocess.Popen[str], threading.Thread, list[str]]] = []
    try:
        for command in prompts[1:]:
            if "…" in command:
                ids = re.findall(r"request ([0-9a-f-]{36})", "".join(said))
                assert ids, said
                command = re.sub(r"[0-9a-f]+…", ids[-1], command)
            process = dev_mode.start_in_shell(command)
            output: list[str] = []
            reader = threading.Thread(target=lambda p=process, o=output: o.extend(p.stderr or ()))
            reader.start()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                time.sleep(1)  # it waits: it has said what it waits for
                said.extend(output)
                waiting.append((command, process, reader, output))
                continue
            reader.join(10)
            assert process.stderr is not None
            process.stderr.close()
            said.extend(output)
            assert process.returncode == 0, (command, "".join(output))
        for command, process, _, output in waiting:
            assert process.wait(timeout=90) == 0, (command, "".join(output))
    finally:
        for _, process, reader, _ in waiting:
            if process.poll() is None:
                process.kill()
                process.wait()
            reader.join(10)
            assert process.stderr is not None
            process.stderr.close()


def test_ctrl_c_stops_everything_and_removes_the_directory(dev_mode: DevMode) -> None:
    workdir = dev_mode.env_file.parent
    dev_mode.process.send_signal(signal.SIGINT)
    assert dev_mode.process.wait(timeout=60) == 128 + signal.SIGINT
    assert not workdir.exists()
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", dev_mode.broker_port)) != 0
