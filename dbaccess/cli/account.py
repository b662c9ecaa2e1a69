"""``dbaccess whoami``, ``targets``, ``logout`` and ``version``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from dbaccess.cli.output import Globals, result_table, session_table, shown

if TYPE_CHECKING:
    from dbaccess.client.auth.token_store import StoredLogin


def whoami(ctx: typer.Context) -> None:
    """Who the broker thinks you are, your groups, token expiry and live sessions."""
    from dbaccess.client.context import logged_in
    from dbaccess.timestamps import human as human_time
    from dbaccess.timestamps import rfc3339

    g: Globals = ctx.obj
    with logged_in(g.profile, g.profiles) as (api, login):
        me = api.me()
        live = api.list_sessions()
    human = (
        f"[bold]{shown(me.email or me.subject)}[/] (subject {shown(me.subject)})\n"
        f"groups: {shown(', '.join(me.groups) or '(none)')}\n"
        f"token valid until {human_time(login.expires_at)} (refreshed automatically)"
    )
    g.data(
        {
            **me.model_dump(mode="json"),
            "token_expires_at": rfc3339(login.expires_at),
            "sessions": [s.model_dump(mode="json") for s in live],
        },
        human,
    )
    if live:
        g.result(session_table(live))


def targets(ctx: typer.Context) -> None:
    """What you may request: targets, roles, longest duration, reason/ticket/approval."""
    from datetime import timedelta

    from dbaccess.client import name_cache
    from dbaccess.client.context import logged_in
    from dbaccess.durations import format_duration
    from dbaccess.errors import DbaccessError
    from dbaccess.timestamps import human as human_time

    g: Globals = ctx.obj
    with logged_in(g.profile, g.profiles) as (api, _):
        allowed = api.targets()
    name_cache.remember_targets(g.profile, allowed)  # for completion of target names
    table = result_table("target", "engine", "role", "max", "default", "needs")
    for t in allowed:
        waived_now = t.on_call is not None and t.on_call.until is not None
        needs = [
            n
            for n, on in (
                ("reason", t.reason_required),
                (f"ticket {t.ticket_pattern}", bool(t.ticket_pattern)),
                (f"{t.approvals} approval(s)", bool(t.approvals) and not waived_now),
            )
            if on
        ]
        # where longer sessions land: "2 approval(s) over 2h"
        needs += [
            f"{tier.approvals} approval(s) over "
            f"{format_duration(timedelta(seconds=tier.longer_than_seconds))}"
            for tier in t.tiers
            if tier.longer_than_seconds is not None
            and tier.approvals > t.approvals
            and not waived_now  # the shift waives the tiers' approvals too
        ]
        if t.on_call is not None and t.on_call.until is not None:
            needs.append(f"no approval: you are on call until {human_time(t.on_call.until)}")
        elif t.on_call is not None:
            needs.append(f"none while on call in {t.on_call.source}")

        table.add_row(
            t.target,
            f"{t.engine} via gateway" if t.access == "gateway" else t.engine,
            t.role,
            format_duration(timedelta(seconds=t.max_duration_seconds)),
            format_duration(timedelta(seconds=t.default_duration_seconds)),
            ", ".join(needs) or "-",
        )
    g.data(
        [t.model_dump(mode="json") for t in allowed],
        table if allowed else "the policy grants you nothing yet",
    )
    if not g.json:  # the one who may break the glass hears of an overdue drill here
        try:
            with logged_in(g.profile, g.profiles) as (api, _):
                glass = api.breakglass_policy()
        except DbaccessError:  # an older broker, or one without break-glass: nothing to say
            return
        if glass.allowed and glass.drill_overdue and glass.drill_every_seconds:
            every = format_duration(timedelta(seconds=glass.drill_every_seconds))
            last = human_time(glass.last_drill) if glass.last_drill else "never"
            g.warn(
                f"a break-glass drill is overdue: one is due every {every}, the last was "
                f"{last}; practice with: dbaccess breakglass TARGET --incident ... --drill"
            )


def logout(
    ctx: typer.Context,
    revoke: Annotated[
        bool, typer.Option("--revoke", help="Also revoke your live sessions.")
    ] = False,
) -> None:
    """Forget your tokens (and with --revoke, end your live sessions first). The refresh
    token is also revoked at the identity provider, where it offers that (RFC 7009)."""
    from dbaccess.client.auth.token_store import delete_login, load_login

    g: Globals = ctx.obj
    revoked: list[str] = []
    if revoke:
        from dbaccess.client.context import logged_in

        with logged_in(g.profile, g.profiles) as (api, _):
            revoked = [api.revoke_session(s.id).id for s in api.list_sessions()]
    name = g.profile_name
    at_idp = _revoke_refresh_token(g, load_login(name, g.profiles))
    removed = delete_login(name, g.profiles)
    g.data(
        {
            "profile": name,
            "logged_out": removed,
            "revoked": revoked,
            "refresh_token_revoked": at_idp,
        },
        (f"logged out of profile {name}" if removed else f"profile {name} had no login")
        + (f"; revoked {len(revoked)} session(s)" if revoked else "")
        + ("; the identity provider revoked the refresh token" if at_idp else ""),
    )


def _revoke_refresh_token(g: Globals, login: StoredLogin | None) -> bool:
    """True when the provider revoked it. Entra ID offers no revocation for a public
    client's token; a provider that cannot be reached must not keep the local logout from
    happening (the refresh token then lives until it expires, as the warning says)."""
    if login is None or not login.refresh_token or login.kind == "entra":
        return False
    from dbaccess.client import context as api
    from dbaccess.client.auth.device_flow import DeviceFlow
    from dbaccess.errors import DbaccessError

    try:
        with api.http_client() as http:
            flow = DeviceFlow(login.issuer, login.client_id, login.scopes, http=http)
            return flow.revoke(login.refresh_token)
    except DbaccessError as exc:
        g.warn(
            f"the refresh token could not be revoked at the identity provider "
            f"({exc.message}); it stays valid there until it expires"
        )
        return False


def version(ctx: typer.Context) -> None:
    """Print the version."""
    import platform

    from dbaccess import __version__

    g: Globals = ctx.obj
    g.data(
        {"version": __version__, "python": platform.python_version()},
        f"dbaccess {__version__} (Python {platform.python_version()})",
    )
