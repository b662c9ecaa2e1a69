"""An example under every command's ``--help``, kept here rather than in each command's
module: the wiring in ``cli/__init__`` hangs them on as typer epilogs, and
tests/test_help.py fails when a command has none."""

from __future__ import annotations

from typing import Any

# command path (as typed after "dbaccess") -> example invocations
EXAMPLES: dict[str, tuple[str, ...]] = {
    "": (
        "dbaccess login --broker https://dbaccess.example.com",
        'dbaccess connect prod --role readonly --reason "JIRA-88 slow query"',
    ),
    "login": (
        "dbaccess login --broker https://dbaccess.example.com",
        "dbaccess --profile staging login",
    ),
    "logout": ("dbaccess logout --revoke",),
    "whoami": ("dbaccess whoami", "dbaccess --json whoami"),
    "targets": ("dbaccess targets",),
    "connect": (
        'dbaccess connect prod --role readonly --reason "JIRA-88 slow query"',
        "dbaccess connect prod -r readonly -d 30m -- -c 'select count(*) from orders'",
    ),
    "exec": (
        "dbaccess exec prod --role readonly --no-input -- pg_dump --schema-only",
        "dbaccess exec shop -r readonly -- mariadb -e 'show tables'",
    ),
    "sessions": ("dbaccess sessions", "dbaccess --json sessions"),
    "revoke": ("dbaccess revoke 3f9c", "dbaccess revoke --all"),
    "renew": ("dbaccess renew 3f9c --duration 30m",
              "dbaccess renew 3f9c --duration 10m --shorten"),
    "creds": (
        "eval \"$(dbaccess creds prod --role readonly --reveal)\"",
        "dbaccess creds prod -r readonly --reveal --format json",
    ),
    "breakglass": (
        'dbaccess breakglass prod --incident INC-123 --reason "checkout down"',
        'dbaccess breakglass prod --incident INC-1 --reason "practice" --drill',
    ),
    "requests": ("dbaccess requests", "dbaccess requests --mine"),
    "approve": ("dbaccess approve 7b1e",),
    "deny": ('dbaccess deny 7b1e --reason "use the replica"',),
    "withdraw": ("dbaccess withdraw 7b1e",),
    "review": ("dbaccess review", 'dbaccess review 3f9c --note "restarted the job"'),
    "audit": ("dbaccess audit --since 2026-11-01 --target prod", "dbaccess --json audit"),
    "version": ("dbaccess version",),
    "profiles": ("dbaccess profiles", "dbaccess profiles use staging"),
    "profiles add": ("dbaccess profiles add staging --broker https://dbaccess.staging.example",),
    "profiles use": ("dbaccess profiles use staging",),
    "profiles remove": ("dbaccess profiles remove staging",),
}


def epilog(examples: tuple[str, ...]) -> str:
    # "\b" keeps click from re-wrapping the lines into one paragraph
    return "\b\nExamples:\n" + "\n".join(f"  {line}" for line in examples)


def attach_examples(app: Any, path: str = "") -> None:
    """Give every command (and group) registered on the typer ``app`` its epilog."""
    if not path and "" in EXAMPLES and not isinstance(app.info.epilog, str):
        app.info.epilog = epilog(EXAMPLES[""])
    for info in app.registered_commands:
        # typer names an unnamed command after its function, with dashes
        name = info.name or getattr(info.callback, "__name__", "").replace("_", "-")
        examples = EXAMPLES.get(f"{path} {name}".strip())
        if examples and info.epilog is None:
            info.epilog = epilog(examples)
    for group in app.registered_groups:
        name = f"{path} {group.name}".strip()
        examples = EXAMPLES.get(name)
        if examples and not isinstance(group.epilog, str):  # unset: typer's Default(None)
            group.epilog = epilog(examples)
        attach_examples(group.typer_instance, name)
