"""The examples under every ``dbaccess-broker`` command's ``--help``: ``broker/cli.py``
hangs them on with ``help_examples.attach_examples`` (shared with ``dbaccess``), and
tests/test_help.py fails when a command has none."""

from __future__ import annotations

# command path (as typed after "dbaccess-broker") -> example invocations
EXAMPLES: dict[str, tuple[str, ...]] = {
    "": (
        "dbaccess-broker check-config --config /etc/dbaccess/broker.toml",
        "dbaccess-broker serve --config /etc/dbaccess/broker.toml --host 0.0.0.0",
    ),
    "serve": (
        "dbaccess-broker serve --config broker.toml --host 0.0.0.0 --port 8443 "
        "--tls-cert cert.pem --tls-key key.pem --workers 2",
    ),
    "gateway": (
        "dbaccess-broker gateway --config /etc/dbaccess/broker.toml",
        "dbaccess-broker gateway --config broker.toml --listen 0.0.0.0:6432 --name gw-1",
    ),
    "check-config": (
        "dbaccess-broker check-config --config broker.toml",
        "dbaccess-broker check-config --offline --config broker.toml",
    ),
    "bootstrap": (
        "dbaccess-broker bootstrap prod --config broker.toml > bootstrap-prod.sql",
        "DBACCESS_ADMIN_DSN='host=db1 user=postgres' dbaccess-broker bootstrap prod --apply",
    ),
    "rotate-credential": ("dbaccess-broker rotate-credential prod --config broker.toml",),
    "inventory": (
        "dbaccess-broker inventory --config broker.toml",
        "dbaccess-broker inventory prod --json > inventory.json",
        "dbaccess-broker inventory --diff inventory.json",
    ),
    "mask": ("dbaccess-broker mask verify prod --config broker.toml",),
    "mask verify": (
        "dbaccess-broker mask verify prod --config broker.toml",
        "dbaccess-broker mask verify prod --role analyst --json > mask-verify.json",
    ),
    "audit": ("dbaccess-broker audit verify", "dbaccess-broker audit export --since 2026-11-01"),
    "audit verify": ("dbaccess-broker audit verify --config broker.toml",),
    "audit export": ("dbaccess-broker audit export --since 2026-11-01 > audit.jsonl",),
    "policy": (
        "dbaccess-broker policy explain --user alice@example.com --groups dev "
        "--target prod --role readonly",
    ),
    "policy explain": (
        "dbaccess-broker policy explain --user alice@example.com --groups dev "
        "--target prod --role readwrite --duration 2h --reason 'JIRA-88'",
    ),
}
