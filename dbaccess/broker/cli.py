"""``dbaccess-broker``: run the broker and check its configuration."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated

import typer

from dbaccess.errors import DbaccessError

app = typer.Typer(
    help="The dbaccess broker: verifies SSO identities, applies policy, mints and revokes "
    "database users.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
)

ConfigOption = Annotated[
    Path,
    typer.Option("--config", "-c", envvar="DBACCESS_BROKER_CONFIG", help="Broker TOML file."),
]


@app.command()
def serve(
    config: ConfigOption = Path("broker.toml"),
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8080,
) -> None:
    """Serve the broker API (and run the reaper) until interrupted."""
    import uvicorn

    from dbaccess.broker.app import create_app
    from dbaccess.broker.settings import load_settings

    settings = load_settings(config)
    for target in settings.targets.values():
        target.provisioner.read_password()  # fail at start, not at the first request
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    uvicorn.run(create_app(settings), host=host, port=port, log_level="info")


@app.command("check-config")
def check_config(config: ConfigOption = Path("broker.toml")) -> None:
    """Validate the configuration file and say what it defines."""
    from dbaccess.broker.settings import load_settings

    settings = load_settings(config)
    for target in settings.targets.values():
        target.provisioner.read_password()
    typer.echo(
        f"{config}: ok ({len(settings.targets)} target(s), {len(settings.rules)} rule(s))"
    )


def main() -> None:
    try:
        app()
    except DbaccessError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        if exc.hint:
            print(f"hint: {exc.hint}", file=sys.stderr)
        sys.exit(int(exc.exit_code))
