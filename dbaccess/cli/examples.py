"""The examples under every ``dbaccess`` command's ``--help``, kept here rather than in
each command's module: ``cli/app.py`` hangs them on with ``help_examples.attach_examples``
(shared with ``dbaccess-broker``, whose examples are ``broker/examples.py``), and
tests/test_help.py fails when a command has none."""

from __future__ import annotations

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
    "renew": ("dbaccess renew 3f9c --duration 30m", "dbaccess renew 3f9c --duration 10m --shorten"),
    "creds": (
        'eval "$(dbaccess creds prod --role readonly --reveal)"',
        "dbaccess creds prod -r readonly --reveal --format json",
    ),
    "tunnel": (
        "dbaccess tunnel vault --role readonly",
        'dbaccess tunnel vault -r readwrite --port 15433 --duration 1h --reason "JIRA-88"',
    ),
    "breakglass": (
        'dbaccess breakglass prod --incident INC-123 --reason "checkout down"',
        'dbaccess breakglass prod --incident INC-1 --reason "practice" --drill',
    ),
    "requests": ("dbaccess requests", "dbaccess requests --mine"),
    "approve": ("dbaccess approve 7b1e",),
    "deny": ('dbaccess deny 7b1e --reason "use the replica"',),
    "withdraw": ("dbaccess withdraw 7b1e",),
    "review": (
        "dbaccess review",
        "dbaccess review INC-123 --format html --output INC-123.html",
        'dbaccess review 3f9c --note "restarted the job"',
    ),
    "audit": (
        "dbaccess audit --since 2026-11-01 --target prod",
        "dbaccess --json audit",
        "dbaccess audit --statements 3f9c",
    ),
    "inventory": ("dbaccess inventory", "dbaccess inventory prod", "dbaccess --json inventory"),
    "version": ("dbaccess version",),
    "profiles": ("dbaccess profiles", "dbaccess profiles use staging"),
    "profiles add": ("dbaccess profiles add staging --broker https://dbaccess.staging.example",),
    "profiles use": ("dbaccess profiles use staging",),
    "profiles remove": ("dbaccess profiles remove staging",),
}
