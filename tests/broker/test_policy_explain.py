"""``dbaccess-broker policy explain`` answers "would this be granted, and why?"."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dbaccess.broker.cli import app
from dbaccess.errors import ExitCode

CONFIG = """
[identity]
issuer = "https://login.example.com/realms/acme"
client_id = "dbaccess-cli"

[targets.prod]
engine = "postgres"
host = "db"
port = 5432
database = "prod"
provisioner = { user = "p", password_env = "P" }
roles.readonly = { group_role = "ro" }
roles.readwrite = { group_role = "rw" }

[[rules]]
name = "dev-readonly"
groups = ["dev"]
targets = ["prod"]
roles = ["readonly"]
max_duration = "1h"

[[rules]]
name = "dba-readwrite"
groups = ["dba"]
targets = ["prod"]
roles = ["readwrite"]
max_duration = "4h"
ticket_pattern = "INC-[0-9]+"
"""


def explain(tmp_path: Path, *args: str) -> tuple[int, str]:
    config = tmp_path / "broker.toml"
    config.write_text(CONFIG)
    result = CliRunner().invoke(app, ["policy", "explain", "--config", str(config), *args])
    return result.exit_code, result.output


def test_grant_names_the_rule_and_duration(tmp_path: Path) -> None:
    code, out = explain(
        tmp_path,
        "--user",
        "alice@example.com",
        "--groups",
        "dev,qa",
        "--target",
        "prod",
        "--role",
        "readonly",
        "--duration",
        "30m",
    )
    assert code == 0
    assert out.splitlines() == [
        "GRANT: granted by rule 'dev-readonly'",
        "rule: dev-readonly",
        "duration: 30m",
    ]


def test_denials_say_why(tmp_path: Path) -> None:
    code, out = explain(
        tmp_path, "--user", "alice", "--groups", "dev", "--target", "prod", "--role", "readwrite"
    )
    assert code == ExitCode.DENIED
    assert "DENY: no rule grants role 'readwrite' on 'prod' to alice" in out
    code, out = explain(
        tmp_path, "--user", "bob", "--groups", "dba", "--target", "prod", "--role", "readwrite"
    )
    assert code == ExitCode.DENIED
    assert "requires a ticket matching INC-[0-9]+" in out
    assert "rule: dba-readwrite" in out
    code, out = explain(
        tmp_path,
        "--user",
        "bob",
        "--groups",
        "dba",
        "--target",
        "prod",
        "--role",
        "readwrite",
        "--ticket",
        "INC-42",
        "--duration",
        "5h",
    )
    assert code == ExitCode.DENIED and "allows at most 4h" in out


def test_a_bad_duration_is_the_usage_error_of_every_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from dbaccess.broker import cli as broker_cli

    config = tmp_path / "broker.toml"
    config.write_text(CONFIG)
    monkeypatch.setattr(
        sys,
        "argv",
        [
            "dbaccess-broker",
            "policy",
            "explain",
            "--config",
            str(config),
            "--user",
            "alice",
            "--target",
            "prod",
            "--role",
            "readonly",
            "--duration",
            "soon",
        ],
    )
    with pytest.raises(SystemExit) as exited:
        broker_cli.main()
    assert exited.value.code == ExitCode.USAGE
    # the words of dbaccess connect/exec/creds/renew/breakglass --duration soon
    assert capsys.readouterr().err.startswith(
        "error: --duration: 'soon' is not a duration; use e.g. 90s, 15m, 1h or 1h30m\n"
    )
