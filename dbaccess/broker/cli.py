"""``dbaccess-broker``: run the broker and check its configuration."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from dbaccess.broker.examples import EXAMPLES
from dbaccess.errors import ConfigError, DbaccessError, ExitCode, render
from dbaccess.help_examples import attach_examples

app = typer.Typer(
    help="The dbaccess broker: verifies SSO identities, applies policy, mints and revokes "
    "database users.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
    # plain help, as the dbaccess CLI's (and -h, inherited by every subcommand)
    rich_markup_mode=None,
    # --help first: click names the first one in "Try ... for help"
    context_settings={"help_option_names": ["--help", "-h"]},
)


def _version(value: bool) -> None:
    if value:
        from dbaccess import __version__

        typer.echo(f"dbaccess-broker {__version__}")
        raise typer.Exit()


@app.callback()
def broker_options(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """The dbaccess broker: verifies SSO identities, applies policy, mints and revokes
    database users."""


ConfigOption = Annotated[
    Path,
    typer.Option("--config", "-c", envvar="DBACCESS_BROKER_CONFIG", help="Broker TOML file."),
]


@app.command()
def serve(
    config: ConfigOption = Path("broker.toml"),
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8080,
    tls_cert: Annotated[
        Path | None, typer.Option("--tls-cert", help="PEM certificate (chain) to serve HTTPS.")
    ] = None,
    tls_key: Annotated[
        Path | None, typer.Option("--tls-key", help="PEM private key of --tls-cert.")
    ] = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
    workers: Annotated[
        int, typer.Option(min=1, max=64, help="Worker processes (they share the store).")
    ] = 1,
) -> None:
    """Serve the broker API (and run the reaper) until interrupted.

    SIGHUP re-reads the configuration: a valid file replaces the policy and targets and
    revokes the live sessions it no longer grants; an invalid one is refused and the
    running configuration stays.
    """
    import uvicorn

    from dbaccess.broker.api.app import create_app
    from dbaccess.broker.logs import log_config
    from dbaccess.broker.settings import load_settings
    from dbaccess.errors import UsageError

    if (tls_cert is None) != (tls_key is None):
        raise UsageError("--tls-cert and --tls-key go together", hint="pass both, or neither")
    for path in (tls_cert, tls_key):
        if path is not None and not path.is_file():
            raise UsageError(f"{path}: no such file")
    settings = load_settings(config, read_secrets=True)  # fail at start, not at a request
    if workers > 1:
        import os

        os.environ["DBACCESS_BROKER_CONFIG"] = str(config.resolve())
    uvicorn.run(
        "dbaccess.broker.api.app:app_from_env"
        if workers > 1
        else create_app(settings, config_path=config),
        factory=workers > 1,
        workers=workers,
        host=host,
        port=port,
        log_config=log_config(log_level.upper()),
        ssl_certfile=str(tls_cert) if tls_cert else None,
        ssl_keyfile=str(tls_key) if tls_key else None,
        # uvicorn would believe X-Forwarded-For from 127.0.0.1 (or $FORWARDED_ALLOW_IPS):
        # only the configured proxies may name the client the audit trail records.
        proxy_headers=bool(settings.broker.trusted_proxies),
        forwarded_allow_ips=",".join(settings.broker.trusted_proxies) or "",
    )


@app.command()
def gateway(
    config: ConfigOption = Path("broker.toml"),
    listen: Annotated[
        str | None,
        typer.Option(help="host:port to listen on, instead of [gateway] listen."),
    ] = None,
    name: Annotated[
        str | None,
        typer.Option(help="This gateway's name in statement records (default: host:pid)."),
    ] = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
) -> None:
    """Serve the gateway for the targets with access = "gateway" until interrupted.

    Clients log in with their session's gateway secret; the gateway connects as the
    session's database user, records every statement in the store, and ends a session's
    connections within a second of its revocation or expiry. Run one or more next to the
    databases, with the broker's configuration file and store.
    """
    import logging.config

    from dbaccess.broker.logs import log_config
    from dbaccess.broker.settings import load_settings, split_address
    from dbaccess.errors import UsageError
    from dbaccess.gateway import process
    from dbaccess.gateway.store_sink import MAX_GATEWAY_NAME, StoreSink

    settings = load_settings(config, read_secrets=True)
    if settings.gateway is None:
        raise ConfigError(
            f"{config}: there is no [gateway] section",
            hint="add one (listen, tls_cert_file, tls_key_file, key_file): docs/gateway.md",
        )
    max_sql_text = settings.gateway.max_sql_text  # read at start, as the listen address
    if listen is not None:
        try:
            split_address(listen)
        except ValueError as exc:
            raise UsageError(f"--listen: {exc}") from None
        settings = settings.model_copy(
            update={"gateway": settings.gateway.model_copy(update={"listen": listen})}
        )
    if name is not None and not 1 <= len(name) <= MAX_GATEWAY_NAME:
        raise UsageError(f"--name: 1 to {MAX_GATEWAY_NAME} characters")
    signed = name or process.default_name()
    logging.config.dictConfig(log_config(log_level.upper()))
    process.run(
        settings,
        lambda store: StoreSink(store, signed, max_sql_text=max_sql_text),
        signed,
        reload=lambda: load_settings(config, read_secrets=True),
    )


@app.command("check-config")
def check_config(
    config: ConfigOption = Path("broker.toml"),
    offline: Annotated[
        bool,
        typer.Option("--offline", help="Only validate the file; log in to no target."),
    ] = False,
) -> None:
    """Validate the configuration file, then log in to each target as its provisioner and
    check that it is bootstrapped (definer functions, group roles) and that MariaDB's
    server settings hold what expiry and logging rest on; warn when a read_only template's
    group role can write."""
    from dbaccess.broker.checks import (
        check_target,
        open_secret_files,
        read_only_warnings,
        server_settings,
        shared_servers,
        target_warnings,
    )
    from dbaccess.broker.settings import load_settings

    settings = load_settings(config, read_secrets=True)
    if settings.gateway is not None:  # the certificate and key load as a pair
        from dbaccess.gateway.process import server_tls

        try:
            server_tls(settings.gateway)
        except ConfigError as exc:
            raise ConfigError(f"{config}: {exc.message}", hint=exc.hint) from None
    for warning in [*shared_servers(settings), *open_secret_files(settings)]:
        typer.echo(f"warning: {config}: {warning}", err=True)
    if not offline:
        problems = [
            problem
            for name, target in settings.targets.items()
            if (problem := check_target(name, target, str(config))) is not None
        ]
        for name, target in settings.targets.items():
            if all(problem.target != name for problem in problems):
                for warning in [*read_only_warnings(name, target), *target_warnings(name, target)]:
                    typer.echo(f"warning: {config}: {warning}", err=True)
        server_problems, server_warnings = server_settings(settings, str(config))
        for warning in server_warnings:
            typer.echo(f"warning: {config}: {warning}", err=True)
        problems += server_problems
        for problem in problems:
            render(
                ConfigError(f"{config}: {problem.message}", hint=problem.hint),
                as_json=False,
                stream=sys.stderr,
            )
        if problems:
            raise typer.Exit(int(ExitCode.CONFIG))
        from dbaccess.broker.capacity import capacity_warnings

        for warning in capacity_warnings(settings):
            typer.echo(f"warning: {config}: {warning}", err=True)
    checked = "" if offline else ", each bootstrapped"
    typer.echo(
        f"{config}: ok ({len(settings.targets)} target(s){checked}, {len(settings.rules)} rule(s))"
    )


@app.command()
def bootstrap(
    target: Annotated[str, typer.Argument(help="Target name from the config file.")],
    config: ConfigOption = Path("broker.toml"),
    apply: Annotated[
        bool,
        typer.Option(
            "--apply",
            help="Run the SQL now, connecting with the DSN in $DBACCESS_ADMIN_DSN "
            "(a superuser in the target database); also sets the provisioner's password.",
        ),
    ] = False,
) -> None:
    """Print (or --apply) the one-time SQL that sets a target up for least privilege."""
    import os

    from dbaccess.broker.settings import load_settings
    from dbaccess.errors import ConfigError, UsageError

    settings = load_settings(config)
    section = settings.targets.get(target)
    if section is None:
        raise UsageError(
            f"{config}: there is no target '{target}'",
            hint=f"targets: {', '.join(sorted(settings.targets))}",
        )
    from dbaccess.broker.engines import ENGINES, engine_part

    if not apply:
        typer.echo(engine_part(section.engine, "bootstrap").render(target, section), nl=False)
        return
    dsn = os.environ.get("DBACCESS_ADMIN_DSN")
    if not dsn:
        raise ConfigError(
            "--apply needs an admin connection string in DBACCESS_ADMIN_DSN",
            hint="export DBACCESS_ADMIN_DSN="
            + " or ".join(engine_part(kind, "admin").ADMIN_DSN_EXAMPLE for kind in ENGINES),
        )
    password = section.provisioner.ensure_password()
    admin = engine_part(section.engine, "admin")
    for warning in admin.apply_bootstrap(target, section, dsn, password):
        typer.echo(warning, err=True)
    typer.echo(
        f"bootstrapped target '{target}': provisioner {section.provisioner.user} "
        "can now only call the dbaccess.* functions",
        err=True,
    )


@app.command("rotate-credential")
def rotate_credential(
    target: Annotated[str, typer.Argument(help="Target name from the config file.")],
    config: ConfigOption = Path("broker.toml"),
) -> None:
    """Give the target's provisioner a new random password (written to its password_file)."""
    from dbaccess.broker.rotation import rotate
    from dbaccess.broker.settings import load_settings
    from dbaccess.errors import UsageError

    settings = load_settings(config)
    section = settings.targets.get(target)
    if section is None:
        raise UsageError(
            f"{config}: there is no target '{target}'",
            hint=f"targets: {', '.join(sorted(settings.targets))}",
        )
    rotate(target, section)
    typer.echo(
        f"rotated the password of {section.provisioner.user} on '{target}' "
        f"(now in {section.provisioner.password_file})",
        err=True,
    )


@app.command()
def inventory(
    target: Annotated[
        str | None, typer.Argument(help="Only this target (default: every one).")
    ] = None,
    config: ConfigOption = Path("broker.toml"),
    as_json: Annotated[bool, typer.Option("--json", help="The inventory as JSON.")] = False,
    diff: Annotated[
        Path | None,
        typer.Option("--diff", help="An earlier --json inventory: say what appeared and went."),
    ] = None,
) -> None:
    """List every login account of the targets that is not a live dbaccess session user,
    with what makes it risky. Exit 12 when any is a finding (not the provisioner, not in
    [inventory] allow), 9 when a target could not be read."""
    import json
    from datetime import UTC, datetime

    from dbaccess.broker.engines import engine_for
    from dbaccess.broker.inventory import difference, live_users, take
    from dbaccess.broker.settings import load_settings
    from dbaccess.broker.store import Store

    settings = load_settings(config, read_secrets=True)
    if target is not None and target not in settings.targets:
        raise ConfigError(
            f"{config}: no target '{target}'",
            hint=f"one of: {', '.join(sorted(settings.targets))}",
        )
    previous = None
    if diff is not None:
        try:
            previous = json.loads(diff.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"cannot read {diff} as an inventory: {exc}",
                hint="pass a file written by: dbaccess-broker inventory --json",
            ) from None
    names = [target] if target is not None else sorted(settings.targets)
    store = Store(settings.broker.store_url())
    try:
        live = live_users(store.live_leases())
    finally:
        store.close()
    engines = {name: engine_for(name, settings.targets[name]) for name in names}
    try:
        taken = take(settings, engines, live, names)
    finally:
        for engine in engines.values():
            engine.close()
    document = taken.as_json(datetime.now(UTC))
    changes = None
    if previous is not None:
        try:
            changes = difference(previous, document)
        except ValueError as exc:
            raise ConfigError(
                f"{diff}: {exc}", hint="pass a file written by: dbaccess-broker inventory --json"
            ) from None
    if changes is not None:
        document["diff"] = {
            "appeared": changes.appeared,
            "went": changes.went,
            "changed": [{"before": b, "now": n} for b, n in changes.changed],
        }
    if as_json:
        typer.echo(json.dumps(document, indent=2, sort_keys=True))
    else:
        from dbaccess.inventory_view import report_lines

        for line in report_lines(document):
            typer.echo(line)
    for name, error in taken.errors.items():
        typer.echo(f"error: target '{name}' was not read: {error}", err=True)
    if taken.errors:
        raise typer.Exit(int(ExitCode.DATABASE_ERROR))
    if taken.findings:
        raise typer.Exit(int(ExitCode.FINDINGS))


mask_app = typer.Typer(help="Check the masked columns of role templates.", no_args_is_help=True)
app.add_typer(mask_app, name="mask")


@mask_app.command("verify")
def mask_verify(
    target: Annotated[str, typer.Argument(help="Target name from the config file.")],
    config: ConfigOption = Path("broker.toml"),
    role: Annotated[
        str | None,
        typer.Option("--role", help="Only this role template (default: every masked one)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="The probes as JSON.")] = False,
) -> None:
    """As a real short-lived session user of each masked role template, try the known
    bypasses of its masked columns (casts in errors, LIKE oracles, COPY, functions, joins,
    pg_stats) and report each; the user is dropped at the end. Exit 12 when one leaked."""
    import json

    from dbaccess.broker.engines import engine_for
    from dbaccess.broker.masking import masked_roles, report_lines, verify
    from dbaccess.broker.settings import load_settings
    from dbaccess.errors import DatabaseError

    settings = load_settings(config, read_secrets=True)
    section = settings.targets.get(target)
    if section is None:
        raise ConfigError(
            f"{config}: no target '{target}'",
            hint=f"one of: {', '.join(sorted(settings.targets))}",
        )
    roles = masked_roles(section)
    if role is not None and role not in roles:
        raise ConfigError(
            f"{config}: target '{target}' has no role template '{role}' with masked columns",
            hint=f"masked ones: {', '.join(roles) or '(none)'}",
        )
    engine = engine_for(target, section)
    from dbaccess.broker.engines import EngineError

    try:
        verdicts = [verify(target, section, name, engine) for name in ([role] if role else roles)]
    except EngineError as exc:
        raise DatabaseError(str(exc)) from None
    finally:
        engine.close()
    if as_json:
        typer.echo(json.dumps({"data": [v.as_json() for v in verdicts]}, indent=2))
    else:
        for verdict in verdicts:
            for line in report_lines(verdict):
                typer.echo(line)
    if any(v.leaks for v in verdicts):
        raise typer.Exit(int(ExitCode.FINDINGS))


audit_app = typer.Typer(help="Check and export the audit trail.", no_args_is_help=True)
app.add_typer(audit_app, name="audit")


@audit_app.command("verify")
def audit_verify(config: ConfigOption = Path("broker.toml")) -> None:
    """Check the hash chain; name the first record that was edited, deleted or reordered."""
    from dbaccess.broker.settings import load_settings
    from dbaccess.broker.store import Store
    from dbaccess.broker.store.audit_chain import raw_records, verify

    store = Store(load_settings(config).broker.store_url())
    try:
        verdict = verify(raw_records(store))
        chains = list(store.verify_all_statements())
    finally:
        store.close()
    broken = [c for c in chains if not c.ok]
    if verdict.ok:
        typer.echo(f"audit trail intact: {verdict.records} record(s)")
    else:
        typer.echo(
            f"audit trail BROKEN at record #{verdict.first_bad}: {verdict.problem}", err=True
        )
    if not broken:
        typer.echo(
            f"statement records intact: {sum(c.records for c in chains)} record(s) of "
            f"{len(chains)} session(s)"
        )
    for chain in broken:
        typer.echo(
            f"statement records of session {chain.lease_id} BROKEN at record "
            f"#{chain.first_bad}: {chain.problem}",
            err=True,
        )
    for chain in chains:
        if chain.after_seal:
            typer.echo(
                f"session {chain.lease_id}: {chain.after_seal} statement record(s) arrived "
                "after its seal"
            )
    if not verdict.ok or broken:
        raise typer.Exit(int(ExitCode.ERROR))


@audit_app.command("export")
def audit_export(
    config: ConfigOption = Path("broker.toml"),
    since: Annotated[
        str | None, typer.Option("--since", help="ISO date/time (UTC), e.g. 2026-11-01")
    ] = None,
) -> None:
    """Write the audit trail as JSON lines on stdout, for a SIEM; then the gateway's
    statement records, one line each, marked "type": "statement"."""
    from datetime import UTC, datetime

    from dbaccess.broker.settings import load_settings
    from dbaccess.broker.store import Store
    from dbaccess.broker.store.audit_chain import export_lines, raw_records
    from dbaccess.broker.store.statement_chain import statement_lines
    from dbaccess.errors import UsageError

    try:
        start = datetime.fromisoformat(since) if since else None
    except ValueError:
        raise UsageError(f"--since: '{since}' is not an ISO date, e.g. 2026-11-01") from None
    if start is not None and start.tzinfo is None:
        start = start.replace(tzinfo=UTC)
    store = Store(load_settings(config).broker.store_url())
    try:
        for line in export_lines(raw_records(store, start)):
            typer.echo(line)
        for line in statement_lines(store.export_blocks(start), start):
            typer.echo(line)
    finally:
        store.close()


policy_app = typer.Typer(help="Inspect the access policy.", no_args_is_help=True)
app.add_typer(policy_app, name="policy")


@policy_app.command("explain")
def policy_explain(
    user: Annotated[str, typer.Option("--user", help="Subject or email of the person.")],
    target: Annotated[str, typer.Option("--target")],
    role: Annotated[str, typer.Option("--role")],
    groups: Annotated[
        str, typer.Option("--groups", help="Comma-separated groups of the person.")
    ] = "",
    duration: Annotated[str | None, typer.Option("--duration", help="e.g. 30m")] = None,
    reason: Annotated[str | None, typer.Option("--reason")] = None,
    ticket: Annotated[str | None, typer.Option("--ticket")] = None,
    config: ConfigOption = Path("broker.toml"),
) -> None:
    """Say whether a request would be granted, and by which rule (changes nothing)."""
    from dbaccess.broker.identity import Principal
    from dbaccess.broker.policy import AccessRequest, decide
    from dbaccess.broker.settings import load_settings
    from dbaccess.durations import format_duration, parse_duration_option

    settings = load_settings(config)
    wanted = parse_duration_option(duration)
    who = Principal(
        subject=user,
        email=user if "@" in user else None,
        # as a token whose provider verified the email (identity.email_verified_claim):
        # unverified, a rule naming it would not match at the broker
        email_verified=True,
        name=None,
        groups=frozenset(g.strip() for g in groups.split(",") if g.strip()),
    )
    from datetime import UTC, datetime

    from dbaccess.broker.oncall import Schedules

    decision = decide(
        who,
        AccessRequest(target, role, wanted, reason, ticket),
        settings.rules,
        on_call=Schedules(settings.oncall).shift,  # the schedules as the broker reads them
        now=datetime.now(UTC),
    )
    verdict = "GRANT" if decision.allowed else "DENY"
    typer.echo(f"{verdict}: {decision.explanation}")
    typer.echo(f"rule: {decision.rule or '(none)'}")
    if decision.tier is not None:
        typer.echo(f"tier: {decision.tier}")
    if decision.on_call is not None:
        shift = decision.on_call
        typer.echo(
            f"on call: '{shift.source}' level {shift.level}, shift "
            f"{shift.start:%Y-%m-%d %H:%M} to {shift.end:%Y-%m-%d %H:%M} UTC"
            + (f" ({shift.summary})" if shift.summary else "")
        )
    if decision.duration is not None:
        typer.echo(f"duration: {format_duration(decision.duration)}")
    if decision.approvals_required:
        typer.echo(
            f"approvals: {decision.approvals_required} from {', '.join(decision.approver_groups)}"
        )
    if not decision.allowed:
        raise typer.Exit(int(ExitCode.DENIED))


attach_examples(app, EXAMPLES)


def main() -> None:
    try:
        app(prog_name="dbaccess-broker")  # also under python -m dbaccess.broker
    except DbaccessError as exc:
        render(exc, as_json=False, stream=sys.stderr)
        sys.exit(int(exc.exit_code))
