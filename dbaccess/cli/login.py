"""``dbaccess login``: SSO device-code login against the broker's identity provider."""

from __future__ import annotations

from typing import Annotated

import typer

from dbaccess.cli.output import Globals, insecure_storage_notice, shown


def login(
    ctx: typer.Context,
    broker: Annotated[
        str | None,
        typer.Option(
            "--broker",
            envvar="DBACCESS_BROKER",
            help="Broker URL; saved in the profile for next time.",
        ),
    ] = None,
    insecure_storage: Annotated[
        bool,
        typer.Option(
            "--insecure-storage",
            help="No keyring here: keep tokens in a 0600 file (announced every time).",
        ),
    ] = False,
) -> None:
    """Log in through your organisation's SSO (device code: works over SSH)."""
    from rich.panel import Panel

    from dbaccess.client import context as api
    from dbaccess.client.auth.browser import open_in_browser
    from dbaccess.client.auth.device_flow import DeviceCode
    from dbaccess.client.auth.login import device_login
    from dbaccess.client.broker_api import BrokerClient
    from dbaccess.client.config import Profile, resolve_broker
    from dbaccess.timestamps import rfc3339

    g: Globals = ctx.obj
    name = g.profile_name
    url = resolve_broker(name, broker, profiles=g.profiles)

    def show_code(code: DeviceCode) -> None:
        link = code.verification_uri_complete or code.verification_uri
        if g.json or g.no_input:
            g.console.print(f"Open {code.verification_uri} and enter the code {code.user_code}")
            if g.json:
                g.data(
                    {
                        "verification_uri": code.verification_uri,
                        "verification_uri_complete": code.verification_uri_complete,
                        "user_code": code.user_code,
                        "expires_in": code.expires_in,
                    }
                )
            return
        g.console.print(
            Panel.fit(
                f"Open [bold]{link}[/]\nand confirm the code [bold cyan]{code.user_code}[/]",
                title="dbaccess login",
            )
        )
        if open_in_browser(link):
            g.console.print("[dim](opened in your browser)[/]")

    if insecure_storage:  # recorded first, so the tokens land in the file
        chosen = g.profiles.profiles.get(name) or Profile(name)
        chosen.insecure_storage = True
        chosen.broker = chosen.broker or url
        g.profiles.profiles[name] = chosen
        g.profiles.save()
        g.warn(insecure_storage_notice(name))
    with api.http_client() as http:
        config = BrokerClient(url, http).config()
        if g.json or g.no_input or not g.console.is_terminal:
            stored = device_login(name, config, http, show_code, profiles=g.profiles)
        else:
            with g.status("Waiting for you to approve the login…"):
                stored = device_login(name, config, http, show_code, profiles=g.profiles)

    profiles = g.profiles
    existing = profiles.profiles.get(name) or Profile(name)
    existing.broker = url
    profiles.profiles[name] = existing
    profiles.save()
    who = stored.email or stored.subject
    g.data(
        {
            "profile": name,
            "broker": url,
            "subject": stored.subject,
            "email": stored.email,
            "expires_at": rfc3339(stored.expires_at),
        },
        f"Logged in as [bold]{shown(who)}[/] (profile {name}, broker {shown(url)})",
    )
