"""``dbaccess profiles``: named brokers (work, staging...) and which one is current."""

from __future__ import annotations

from typing import Annotated

import typer

from dbaccess.cli.output import Globals, announced

app = typer.Typer(
    help="List, add, choose and remove profiles.",
    no_args_is_help=False,
    invoke_without_command=True,
)


@app.callback()
@announced
def list_profiles(ctx: typer.Context) -> None:
    """List profiles (the current one is marked)."""
    if ctx.invoked_subcommand is not None:
        return
    g: Globals = ctx.obj
    file = g.profiles
    rows = [
        {"name": p.name, "broker": p.broker, "current": p.name == file.current}
        for p in sorted(file.profiles.values(), key=lambda p: p.name)
    ]
    human = (
        "\n".join(f"{'*' if r['current'] else ' '} {r['name']}  {r['broker'] or '-'}" for r in rows)
        or "no profiles yet: dbaccess login --broker URL"
    )
    g.data(rows, human)


@app.command("add")
@announced
def add(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Profile name.")],
    broker: Annotated[str, typer.Option("--broker", help="Broker URL.")],
    breakglass_target: Annotated[
        str | None,
        typer.Option("--breakglass-target", help="Target `dbaccess breakglass` uses by default."),
    ] = None,
) -> None:
    """Add (or change) a profile."""
    from dbaccess.client.config import Profile, check_broker_url, check_profile_name

    g: Globals = ctx.obj
    check_profile_name(name)
    file = g.profiles
    profile = file.profiles.get(name) or Profile(name)
    profile.broker = check_broker_url(broker)
    if breakglass_target is not None:
        profile.breakglass_target = breakglass_target or None
    file.profiles[name] = profile
    file.save()
    g.data(
        {"name": name, "broker": profile.broker, "breakglass_target": profile.breakglass_target},
        f"profile {name} → {profile.broker}; log in with: dbaccess --profile {name} login",
    )


@app.command("use")
@announced
def use(ctx: typer.Context, name: Annotated[str, typer.Argument(help="Profile name.")]) -> None:
    """Make a profile the current one."""
    from dbaccess.errors import NotFoundError

    g: Globals = ctx.obj
    file = g.profiles
    if name not in file.profiles:
        raise NotFoundError(
            f"there is no profile '{name}'", hint=f"dbaccess profiles add {name} --broker URL"
        )
    file.current = name
    file.save()
    g.data({"current": name}, f"now using profile {name}")


@app.command("remove")
@announced
def remove(ctx: typer.Context, name: Annotated[str, typer.Argument(help="Profile name.")]) -> None:
    """Remove a profile and its stored login."""
    from dbaccess.client.auth.token_store import delete_login
    from dbaccess.client.config import DEFAULT_PROFILE
    from dbaccess.errors import KeyringUnavailable, NotFoundError

    g: Globals = ctx.obj
    file = g.profiles
    if name not in file.profiles:
        raise NotFoundError(f"there is no profile '{name}'", hint="dbaccess profiles")
    try:
        delete_login(name, file)
    except KeyringUnavailable:
        pass  # no keyring, so no login was ever stored for it
    del file.profiles[name]
    if file.current == name:
        file.current = DEFAULT_PROFILE
    file.save()
    g.data({"removed": name}, f"removed profile {name} and its login")
