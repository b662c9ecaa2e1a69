"""The fast exec path reads argv as the typer command does, and gives way to the full CLI
whenever it cannot be sure — before anything happens at the broker."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import typer.main

from dbaccess.cli import fast_exec
from dbaccess.cli.app import app
from dbaccess.cli.fast_exec import EXEC_FLAGS, EXEC_VALUES, GLOBAL_ENV, GLOBAL_FLAGS, GLOBAL_VALUES
from dbaccess.client import stdlib_broker
from dbaccess.client.auth import token_store
from dbaccess.client.auth.token_store import StoredLogin
from dbaccess.wire import SessionGranted

ROOT = typer.main.get_command(app)
EXEC = ROOT.commands["exec"]  # type: ignore[attr-defined]
# Global options the fast path leaves to typer on purpose (help, tracebacks, completion).
LEFT_TO_TYPER = {"--debug", "--version", "--install-completion", "--show-completion"}


def test_exec_options_are_the_typer_commands_options() -> None:
    typer_options = {
        opt: bool(getattr(p, "is_flag", False))
        for p in EXEC.params
        if p.param_type_name == "option"
        for opt in p.opts
    }
    fast = {**{o: False for o in EXEC_VALUES}, **{o: True for o in EXEC_FLAGS}}
    assert fast == typer_options
    # both places name the same fields of the invocation
    by_name = {p.opts[0]: p.name for p in EXEC.params if p.param_type_name == "option"}
    assert {EXEC_VALUES.get(o) or EXEC_FLAGS[o] for o in by_name} == {
        "request" if n == "request_id" else n for n in by_name.values()
    }
    arguments = [p.name for p in EXEC.params if p.param_type_name == "argument"]
    assert arguments == ["target", "command"]


def test_global_options_and_their_environment_twins_match_typer() -> None:
    known = {**{o: False for o in GLOBAL_VALUES}, **{o: True for o in GLOBAL_FLAGS}}
    typer_options = {
        opt: bool(getattr(p, "is_flag", False))
        for p in ROOT.params
        for opt in p.opts
        if opt not in LEFT_TO_TYPER
    }
    assert known == typer_options
    envvars = {p.opts[0]: p.envvar for p in ROOT.params if p.envvar}
    field_of = {**GLOBAL_VALUES, **GLOBAL_FLAGS, "--debug": "debug"}
    assert envvars == {opt: GLOBAL_ENV[field_of[opt]] for opt in envvars}
    assert set(envvars.values()) == set(GLOBAL_ENV.values())


def test_reads_the_common_invocation() -> None:
    found = fast_exec.parse(
        [
            "--profile",
            "prod",
            "--json",
            "exec",
            "demo",
            "-r",
            "readonly",
            "--duration=30m",
            "--reason",
            "nightly dump",
            "--no-wait",
            "--",
            "pg_dump",
            "-Fc",
            "--",
            "x",
        ],
        {},
    )
    assert found is not None
    assert (found.profile, found.json, found.no_input) == ("prod", True, False)
    assert (found.target, found.role, found.duration, found.reason) == (
        "demo",
        "readonly",
        "30m",
        "nightly dump",
    )
    assert found.no_wait and found.request is None and found.ticket is None
    assert found.command == ("pg_dump", "-Fc", "--", "x")


def test_environment_twins_apply_and_flags_win() -> None:
    found = fast_exec.parse(
        ["exec", "demo", "--role", "r", "--", "true"],
        {"DBACCESS_PROFILE": "ci", "DBACCESS_JSON": "yes", "DBACCESS_NO_INPUT": "1"},
    )
    assert found is not None
    assert (found.profile, found.json, found.no_input) == ("ci", True, True)
    found = fast_exec.parse(
        ["--profile", "other", "exec", "demo", "--role", "r", "--", "true"],
        {"DBACCESS_PROFILE": "ci", "DBACCESS_JSON": "off"},
    )
    assert found is not None and (found.profile, found.json) == ("other", False)


def test_the_timeout_is_read_by_flag_or_variable() -> None:
    argv = ["exec", "demo", "--role", "r", "--", "true"]
    found = fast_exec.parse(["--timeout", "2.5", *argv], {"DBACCESS_TIMEOUT": "9"})
    assert found is not None and found.timeout == "2.5"
    found = fast_exec.parse(argv, {"DBACCESS_TIMEOUT": "9"})
    assert found is not None and found.timeout == "9"


@pytest.mark.parametrize(
    "argv, environ",
    [
        (["exec", "--help"], {}),
        (["--debug", "exec", "demo", "--role", "r", "--", "true"], {}),
        (["exec", "demo", "--role", "r", "--", "true"], {"DBACCESS_DEBUG": "1"}),
        (["exec", "demo", "--role", "r", "--", "true"], {"DBACCESS_JSON": "maybe"}),
        (["exec", "demo", "--role", "r", "true"], {}),  # no "--": typer's rules
        (["exec", "demo", "--", "true"], {}),  # no role: typer's error
        (["exec", "demo", "--role", "r", "--"], {}),  # no command
        (["exec", "--role", "r", "--", "true"], {}),  # no target
        (["exec", "demo", "other", "--role", "r", "--", "true"], {}),
        (["exec", "demo", "--role", "r", "--bogus", "--", "true"], {}),
        (["exec", "demo", "-rreadonly", "--", "true"], {}),
        (["exec", "demo", "--json", "--role", "r", "--", "true"], {}),  # a global after exec
        (["exec", "demo", "--role", "--", "true"], {}),
        (["--profile", "exec"], {}),
        (["--version", "exec", "demo", "--role", "r", "--", "true"], {}),
        (["sessions"], {}),
        (["--timeout", "0", "exec", "demo", "--role", "r", "--", "true"], {}),  # typer's error
        (["exec", "demo", "--role", "r", "--", "true"], {"DBACCESS_TIMEOUT": "soon"}),
    ],
)
def test_anything_unusual_is_left_to_typer(argv: list[str], environ: dict[str, str]) -> None:
    assert fast_exec.parse(argv, environ) is None


def _login(expires_in: float) -> StoredLogin:
    return StoredLogin(
        issuer="https://idp",
        client_id="c",
        scopes=["openid"],
        id_token="t",
        refresh_token="r",
        expires_at=time.time() + expires_in,
        subject="alice",
    )


@pytest.fixture
def script(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> pytest.MonkeyPatch:
    """A script's environment: no terminal, a broker nobody must call."""
    monkeypatch.setenv("DBACCESS_CONFIG_DIR", str(tmp_path))
    monkeypatch.setenv("DBACCESS_RUNTIME_DIR", f"{tmp_path}/run")
    monkeypatch.setenv("DBACCESS_BROKER", "http://127.0.0.1:9")
    for name in (
        "DBACCESS_SESSION",
        "DBACCESS_FAST_EXEC",
        "HTTP_PROXY",
        "http_proxy",
        "HTTPS_PROXY",
        "https_proxy",
        "ALL_PROXY",
        "all_proxy",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr("sys.stdin.isatty", lambda: False)

    def no_call(*_: object, **__: object) -> None:
        raise AssertionError("the broker was called")

    monkeypatch.setattr(stdlib_broker.StdlibBroker, "call", no_call)
    return monkeypatch


ARGV = ["exec", "demo", "--role", "readonly", "--", "true"]


@pytest.mark.parametrize("stored", [None, _login(30)], ids=["no login", "token to refresh"])
def test_a_login_it_cannot_use_goes_to_the_full_cli_before_any_call(
    script: pytest.MonkeyPatch, stored: StoredLogin | None
) -> None:
    script.setattr(token_store, "read_from_secret_service", lambda _: stored)
    assert fast_exec.run(ARGV) is None


@pytest.mark.parametrize(
    "variable, value",
    [
        ("DBACCESS_FAST_EXEC", "0"),
        ("DBACCESS_FAST_EXEC", "False"),
        ("DBACCESS_SESSION", "s-1"),
        ("https_proxy", "http://p:3128"),
        ("Https_Proxy", "http://p:3128"),
        ("ALL_PROXY", "socks5://p:1080"),
    ],
)
def test_switches_that_send_it_to_the_full_cli(
    script: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    script.setattr(token_store, "read_from_secret_service", lambda _: _login(3600))
    script.setenv(variable, value)
    assert fast_exec.run(ARGV) is None


def test_a_terminal_on_stdin_goes_to_the_full_cli_unless_no_input(
    script: pytest.MonkeyPatch,
) -> None:
    script.setattr(token_store, "read_from_secret_service", lambda _: None)
    script.setattr("sys.stdin.isatty", lambda: True)
    called: list[str] = []

    def run_here(found: fast_exec.Invocation, *_: object) -> int:
        called.append(found.target)
        return 0

    script.setattr(fast_exec, "_run", run_here)
    assert fast_exec.run(ARGV) is None and called == []
    assert fast_exec.run(["--no-input", *ARGV]) == 0 and called == ["demo"]


@pytest.mark.parametrize(
    "variable, value",
    [
        ("PYTHON_KEYRING_BACKEND", "keyrings.alt.file.PlaintextKeyring"),
        ("KEYRING_PROPERTY_PREFERRED_COLLECTION", "/org/freedesktop/secrets/collection/work"),
        ("XDG_CURRENT_DESKTOP", "KDE"),
    ],
)
def test_a_keyring_that_may_look_elsewhere_is_not_bypassed(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setattr(token_store, "sys", type("Linux", (), {"platform": "linux"}))
    monkeypatch.delenv("PYTHON_KEYRING_BACKEND", raising=False)
    monkeypatch.setenv(variable, value)
    assert token_store._keyring_configured()
    assert token_store.read_from_secret_service("default") is None


def test_no_keyring_settings_means_secret_service(
    monkeypatch: pytest.MonkeyPatch, tmp_path: object
) -> None:
    for name in [n for n in os.environ if n.startswith("KEYRING_PROPERTY_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", "keyring.backends.SecretService.Keyring")
    monkeypatch.setenv("XDG_CURRENT_DESKTOP", "GNOME")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    assert not token_store._keyring_configured()


def test_a_token_that_is_not_a_jwt_goes_to_the_full_cli(script: pytest.MonkeyPatch) -> None:
    odd = StoredLogin(
        issuer="https://idp",
        client_id="c",
        scopes=["openid"],
        id_token="a.b.c\r\nX-Injected: 1",
        refresh_token=None,
        expires_at=time.time() + 3600,
        subject="alice",
    )
    script.setattr(token_store, "read_from_secret_service", lambda _: odd)
    assert fast_exec.run(ARGV) is None


def test_the_reply_it_reads_is_the_broker_model() -> None:
    granted = SessionGranted(
        id="s-1",
        target="demo",
        role="readonly",
        engine="postgres",
        db_user="dba_alice_1",
        state="active",
        created_at=datetime(2026, 12, 1, 9, tzinfo=UTC),
        expires_at=datetime(2026, 12, 1, 10, tzinfo=UTC),
        host="db",
        port=5432,
        database="demo",
        sslmode="require",
        password="s3cret",  # type: ignore[arg-type]
    )
    reply = stdlib_broker.GrantedReply.from_reply(granted.model_dump(mode="json"))
    for name in stdlib_broker.GrantedReply.__dataclass_fields__:
        assert name in SessionGranted.model_fields
        ours, theirs = getattr(reply, name), getattr(granted, name)
        if name == "password":
            assert ours.get_secret_value() == theirs.get_secret_value() == "s3cret"
        else:
            assert ours == theirs
    assert "s3cret" not in repr(reply)


def test_one_exec_reads_config_toml_once(script: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The profile (its name, broker, token storage) and the hints' profile come from one
    reading of config.toml, passed down (it was read three times, four after an error)."""
    script.delenv("DBACCESS_BROKER")
    (tmp_path / "config.toml").write_text(
        'current = "work"\n[profiles.work]\nbroker = "http://127.0.0.1:9"\n'
    )
    jwt_like = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJhbGljZSJ9."
    script.setattr(
        token_store,
        "read_from_secret_service",
        lambda _: StoredLogin(
            issuer="https://idp",
            client_id="c",
            scopes=["openid"],
            id_token=jwt_like,
            refresh_token=None,
            expires_at=time.time() + 3600,
            subject="alice",
        ),
    )
    granted = {
        "id": "s-1",
        "target": "demo",
        "role": "readonly",
        "engine": "postgres",
        "db_user": "dba_alice_1",
        "host": "127.0.0.1",
        "port": 5432,
        "database": "demo",
        "expires_at": datetime.now(UTC).isoformat(),
        "password": "pw",
    }
    calls: list[str] = []

    def broker(_: object, method: str, path: str, body: object = None) -> tuple[int, object]:
        calls.append(f"{method} {path}")
        return (201, granted) if method == "POST" else (200, {"state": "revoked"})

    script.setattr(stdlib_broker.StdlibBroker, "call", broker)
    reads: list[Path] = []
    read_text = Path.read_text

    def counted(path: Path, *args: Any, **kwargs: Any) -> str:
        if path.name == "config.toml":
            reads.append(path)
        return read_text(path, *args, **kwargs)

    script.setattr(Path, "read_text", counted)
    assert fast_exec.run(["exec", "demo", "--role", "readonly", "--", "true"]) == 0
    assert calls == ["POST /v1/sessions", "DELETE /v1/sessions/s-1"]
    assert reads == [tmp_path / "config.toml"]
