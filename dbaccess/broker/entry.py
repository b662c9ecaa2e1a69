"""``dbaccess-broker``'s entry point: says what to install when the ``[broker]`` extra is
missing (a CLI-only install). Imports nothing beyond the standard library until the broker's
own CLI, so it runs where the extra's packages are absent."""

from __future__ import annotations

import sys

# The top-level modules of the [broker] extra (pyproject.toml) and what they pull in; a
# CLI-only install lacks them, and the broker imports them lazily, inside its commands.
BROKER_MODULES = frozenset(
    {
        "fastapi",
        "starlette",
        "uvicorn",
        "httptools",
        "uvloop",
        "sqlalchemy",
        "alembic",
        "mako",
        "jwt",
        "cryptography",
        "psycopg",
        "psycopg_pool",
        "psycopg_binary",
        "pymysql",
        "prometheus_client",
        "pgparse",
        "orjson",
        "icalendar",
        "recurring_ical_events",
        "pagerduty",
        "jinja2",
        "markupsafe",
        "matplotlib",
    }
)
BROKER_INSTALL = "pip install 'dbaccess[broker]'"


def missing_extra(exc: ModuleNotFoundError) -> str | None:
    """The [broker] extra's module whose absence ``exc`` reports, or None for any other
    missing module (a bug, whose traceback is kept)."""
    missing = (exc.name or "").partition(".")[0]
    return missing if missing in BROKER_MODULES else None


def broker_main() -> None:
    from dbaccess.errors import ExitCode

    if sys.argv[1:] == ["--version"]:
        from dbaccess import __version__

        print(f"dbaccess-broker {__version__}")
        return
    try:
        from dbaccess.broker.cli import main as broker_cli

        broker_cli()
    except ModuleNotFoundError as exc:
        missing = missing_extra(exc)
        if missing is None:
            raise  # a bug, not a missing extra: keep the traceback
        print(
            f"error: dbaccess-broker needs the broker's dependencies ({missing} is not installed)",
            file=sys.stderr,
        )
        print(f"hint: {BROKER_INSTALL}", file=sys.stderr)
        sys.exit(int(ExitCode.CONFIG))
