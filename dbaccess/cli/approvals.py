"""``dbaccess requests``, ``approve`` and ``deny``: the approver's side of approvals; and
``withdraw``, the requester's way to take a request back."""

from __future__ import annotations

from typing import Annotated

import typer

from dbaccess.cli.output import Globals, result_table, shown

RequestArg = Annotated[
    str, typer.Argument(help="Request id or a unique prefix (see: dbaccess requests).")
]


def requests(
    ctx: typer.Context,
    mine: Annotated[
        bool, typer.Option("--mine", help="Your own requests instead of those you can decide.")
    ] = False,
) -> None:
    """Pending requests you can approve or deny (or, with --mine, your own)."""
    from dbaccess.client.context import logged_in
    from dbaccess.timestamps import human as human_time

    g: Globals = ctx.obj
    with logged_in(g.profile, g.profiles) as (api, _):
        found = api.requests(mine=mine)
    table = result_table(
        "id", "who", "target", "role", "for", "reason", "state", "approvals", "expires"
    )
    for r in found:
        table.add_row(
            r.id,
            r.email or r.subject,
            r.target,
            r.role,
            f"{r.duration_seconds // 60} min",
            r.reason,
            r.state,
            f"{len(r.approvals)}/{r.approvals_required}" + (f" (tier {r.tier})" if r.tier else ""),
            human_time(r.expires_at),
        )
    empty = "you have no requests" if mine else "nothing waits for your approval"
    g.data([r.model_dump(mode="json") for r in found], table if found else empty)


def approve(ctx: typer.Context, request_id: RequestArg) -> None:
    """Approve someone else's request (members of the rule's approver groups)."""
    from dbaccess.client.context import logged_in

    g: Globals = ctx.obj
    with logged_in(g.profile, g.profiles) as (api, _):
        r = api.approve(request_id)
    left = r.approvals_required - len(r.approvals)
    human = (
        f"approved; {shown(r.subject)}'s request is complete and can be used"
        if r.state == "approved"
        else f"approved; {left} more approval(s) needed"
    )
    g.data(r.model_dump(mode="json"), human)


def deny(
    ctx: typer.Context,
    request_id: RequestArg,
    reason: Annotated[str, typer.Option("--reason", help="Why (shown to the requester).")] = ...,  # type: ignore[assignment]
) -> None:
    """Deny someone else's request, with a reason."""
    from dbaccess.client.context import logged_in
    from dbaccess.errors import UsageError

    g: Globals = ctx.obj
    if not reason.strip():
        raise UsageError("a denial needs a reason", hint=f"dbaccess deny {request_id} --reason ...")
    with logged_in(g.profile, g.profiles) as (api, _):
        r = api.deny(request_id, reason.strip())
    g.data(
        r.model_dump(mode="json"),
        f"denied {shown(r.subject)}'s request for {shown(r.role)} on {shown(r.target)}",
    )


def withdraw(ctx: typer.Context, request_id: RequestArg) -> None:
    """Take back your own request (pending, or approved and unused): nobody can approve
    or use it any more."""
    from dbaccess.client.context import logged_in

    g: Globals = ctx.obj
    with logged_in(g.profile, g.profiles) as (api, _):
        r = api.withdraw(request_id)
    g.data(
        r.model_dump(mode="json"),
        f"withdrew request {r.id} for {r.role} on {r.target}; approvers were told",
    )
