"""Errors: one renderer for every program, what the broker said printed as said (brackets
included, not taken for rich markup), tracebacks with --debug or its twin."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from dbaccess.cli.flags import FALSE_WORDS, TRUE_WORDS, boolean
from dbaccess.cli.output import Globals
from dbaccess.errors import DeniedError, ExitCode


def test_a_pattern_in_a_message_is_printed_as_is(capsys: pytest.CaptureFixture[str]) -> None:
    Globals().error(
        DeniedError(
            "incident id 'x' does not match [a-z]{3}-[0-9]+: give an id like abc-123",
            hint="dbaccess breakglass demo --incident [abc]-123",
        )
    )
    err = capsys.readouterr().err
    assert "does not match [a-z]{3}-[0-9]+: give an id like abc-123" in err
    assert "hint: dbaccess breakglass demo --incident [abc]-123" in err


# --- one renderer for the full CLI, the fast exec path and dbaccess-broker ---------------


def test_the_three_programs_print_an_error_alike(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from dbaccess.broker import cli as broker_cli
    from dbaccess.cli import fast_exec

    def error() -> DeniedError:
        return DeniedError("no rule lets you in as '\x1b[2Jadmin'", hint="dbaccess targets")

    Globals().error(error())
    full = capsys.readouterr().err
    fast_exec._report(error(), fast_exec.Invocation())
    fast = capsys.readouterr().err

    def refuse(**_: object) -> None:
        raise error()

    monkeypatch.setattr(broker_cli, "app", refuse)
    with pytest.raises(SystemExit) as exited:
        broker_cli.main()
    broker = capsys.readouterr().err
    assert exited.value.code == ExitCode.DENIED
    assert (
        full
        == fast
        == broker
        == ("error: no rule lets you in as '\\x1b[2Jadmin'\nhint: dbaccess targets\n")
    )
    Globals(json=True).error(error())
    as_json = capsys.readouterr().out
    fast_exec._report(error(), fast_exec.Invocation(json=True))
    assert capsys.readouterr().err == as_json
    assert json.loads(as_json) == {
        "error": {
            "code": "denied",
            "message": "no rule lets you in as '\x1b[2Jadmin'",
            "hint": "dbaccess targets",
        }
    }


# --- --debug and DBACCESS_DEBUG: click's words, read once --------------------------------

WORDS = [*TRUE_WORDS, *FALSE_WORDS, "ON", " on ", "Yes", "", "  ", "maybe", "2", "enable"]


@pytest.mark.parametrize("word", WORDS)
def test_the_boolean_words_are_typers(word: str) -> None:
    import typer
    from typer.testing import CliRunner

    probe = typer.Typer()

    @probe.command()
    def show(debug: bool = typer.Option(False, envvar="PROBE_DEBUG")) -> None:
        typer.echo(str(debug))

    result = CliRunner().invoke(probe, [], env={"PROBE_DEBUG": word})
    typers = {0: result.stdout.strip() == "True", 2: None}[result.exit_code]
    assert boolean(word) == typers


def dbaccess(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """The installed entry point (``python -m dbaccess``), no broker configured, no terminal."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("DBACCESS_DEBUG")}
    return subprocess.run(
        [sys.executable, "-m", "dbaccess", *args],
        env={**environ, **env},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )


NO_BROKER = "UsageError: no broker is configured for profile 'default'"


@pytest.mark.parametrize(
    "args",
    [("sessions",), ("exec", "demo", "--role", "r", "--", "true")],
    ids=["full CLI", "exec (fast path)"],
)
def test_debug_on_in_the_environment_is_debug(args: tuple[str, ...]) -> None:
    """DBACCESS_DEBUG=on is --debug, as typer reads it (it once printed the error instead:
    one catch site read typer's value, the other its own list of words)."""
    plain = dbaccess(*args)
    assert plain.returncode == ExitCode.USAGE
    assert plain.stderr.startswith("error: no broker is configured") and "Traceback" not in (
        plain.stderr
    )
    by_flag = dbaccess("--debug", *args)
    for variable in ("on", "1", "yes"):
        by_env = dbaccess(*args, DBACCESS_DEBUG=variable)
        assert by_env.returncode == by_flag.returncode == ExitCode.ERROR, by_env.stderr
        for result in (by_flag, by_env):
            assert NO_BROKER in result.stderr and "Traceback" in result.stderr, result.stderr
            assert "error: no broker" not in result.stderr
    assert dbaccess(*args, DBACCESS_DEBUG="off").stderr == plain.stderr
    if args[0] == "exec":
        from dbaccess.cli import fast_exec

        assert fast_exec.parse(list(args), {"DBACCESS_DEBUG": "on"}) is None  # the full CLI
