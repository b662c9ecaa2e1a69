"""``dbaccess breakglass`` and ``dbaccess review``: emergency access and its aftermath."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from dbaccess.cli.completion import complete_target
from dbaccess.cli.options import Client, ClientArgs, Duration
from dbaccess.cli.output import Globals, result_table


def breakglass(
    ctx: typer.Context,
    target: Annotated[
        str | None,
        typer.Argument(
            help="Target; may be left out when the policy or profile implies it.",
            autocompletion=complete_target,
        ),
    ] = None,
    incident: Annotated[
        str, typer.Option("--incident", help="Incident id, e.g. INC-123 (policy's pattern).")
    ] = ...,  # type: ignore[assignment]
    reason: Annotated[
        str | None, typer.Option("--reason", help="What you are about to do (asked if left out).")
    ] = None,
    duration: Duration = None,
    drill: Annotated[
        bool, typer.Option("--drill", help="Rehearse: the whole path, recorded as a drill.")
    ] = False,
    client: Client = None,
    client_args: ClientArgs = None,
) -> None:
    """Emergency access with the policy's elevated role: no approval wait, but the on-call
    channel is notified at once, every statement is logged by the database, and the
    session is marked for a post-incident review by someone else."""
    from dbaccess.cli.connect import run_session
    from dbaccess.client.context import logged_in
    from dbaccess.client.session.grant import choose_breakglass_target
    from dbaccess.client.session.request import SessionRequest
    from dbaccess.durations import parse_duration_option
    from dbaccess.errors import UsageError

    g: Globals = ctx.obj
    g.child_owns_stdout = True  # even for errors: stdout is the client's
    if target is not None and target.startswith("-"):
        # `breakglass --incident X -- -c 'select 1'`: after --, click fills the optional
        # TARGET first; no target name starts with '-', so it is the client's.
        client_args, target = [target, *(client_args or [])], None
    wanted = parse_duration_option(duration)
    if not (reason and reason.strip()):
        if not g.can_prompt:
            raise UsageError(
                "break-glass needs a reason",
                hint=f"dbaccess breakglass --incident {incident} --reason 'what you will do'",
            )
        reason = g.ask("Reason (what are you about to do?):")
        if not reason.strip():
            raise UsageError("break-glass needs a reason; nothing was opened")
    stored = g.profiles.profiles.get(g.profile_name)
    chosen = target or (stored.breakglass_target if stored else None)
    if chosen is None:  # only then does the policy have to be asked
        with logged_in(g.profile, g.profiles) as (api, _):
            chosen = choose_breakglass_target(api, None, _chooser(g) if g.can_prompt else None)
    request = SessionRequest(
        target=chosen,
        role="breakglass",  # a label only: the broker gives the policy's elevated role
        incident=incident,
        reason=reason.strip(),
        duration=wanted,
        drill=drill,
        client=client,
        client_args=tuple(client_args or ()),
    )
    run_session(g, request.validate())


def _chooser(g: Globals) -> Callable[[list[str]], str]:
    from dbaccess.errors import UsageError

    def choose(choices: list[str]) -> str:
        for number, name in enumerate(choices, 1):
            g.console.print(f"  {number}. {name}")
        answer = g.ask("Break the glass on which target (number or name)?").strip()
        if answer.isdigit() and 1 <= int(answer) <= len(choices):
            return choices[int(answer) - 1]
        if answer in choices:
            return answer
        raise UsageError(f"'{answer}' is not one of: {', '.join(choices)}")

    return choose


def review(
    ctx: typer.Context,
    session_or_incident: Annotated[
        str | None,
        typer.Argument(
            metavar="SESSION|INCIDENT",
            help="With --note: the break-glass session to close the review of. "
            "Without: the incident (INC-123) to report on.",
        ),
    ] = None,
    note: Annotated[
        str | None, typer.Option("--note", help="Review outcome (needed to close one).")
    ] = None,
    drills: Annotated[
        bool,
        typer.Option("--drills", help="Everyone who broke the glass, and their last drill."),
    ] = False,
    fmt: Annotated[
        str | None,
        typer.Option("--format", metavar="md|json|html", help="The incident report's format (md)."),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", metavar="FILE", help="Write the report to FILE."),
    ] = None,
) -> None:
    """List open post-incident reviews; report on an incident (INC-123: its sessions,
    statements and flags, as md, json or html); or close a session's review with --note
    (reviewer groups; never the person who broke the glass); --drills: the last drill of
    each person."""
    from dbaccess.client.context import logged_in
    from dbaccess.errors import UsageError
    from dbaccess.timestamps import human as human_time

    g: Globals = ctx.obj
    reporting = fmt is not None or output is not None
    if reporting and (note is not None or drills):
        given = "--note" if note is not None else "--drills"
        raise UsageError(
            f"--format and --output are for an incident's report: give no {given} with them",
            hint="dbaccess review INC-123 --format html --output review.html",
        )
    if drills:
        if session_or_incident is not None or note is not None:
            raise UsageError("--drills lists drills: give no session and no --note with it")
        with logged_in(g.profile, g.profiles) as (api, _):
            people = api.drills()
        table = result_table("who", "last drill", "break-glass sessions", "overdue")
        for p in people:
            table.add_row(
                p.email or p.subject,
                human_time(p.last_drill) if p.last_drill else "never",
                str(p.breakglass_sessions),
                "yes" if p.overdue else "-",
            )
        g.data(
            [p.model_dump(mode="json") for p in people],
            table if people else "nobody has broken the glass yet",
        )
        return
    if session_or_incident is None:
        if reporting:
            raise UsageError(
                "a report needs the incident", hint="dbaccess review INC-123 --format html"
            )
        with logged_in(g.profile, g.profiles) as (api, _):
            reviews = api.reviews()
        table = result_table("session", "when", "who", "target", "role", "incident", "reason")
        for r in reviews:
            table.add_row(
                r.id,
                human_time(r.created_at),
                r.email or r.subject,
                r.target,
                r.role,
                (r.incident or "-") + (" (drill)" if r.drill else ""),
                r.reason or "-",
            )
        g.data(
            [r.model_dump(mode="json") for r in reviews], table if reviews else "no open reviews"
        )
        return
    if note is None:
        _report(g, session_or_incident, fmt or "md", output)
        return
    if not note.strip():
        raise UsageError(
            "closing a review needs a note",
            hint=f"dbaccess review {session_or_incident} --note 'what was done, and was it right'",
        )
    with logged_in(g.profile, g.profiles) as (api, _):
        closed = api.close_review(session_or_incident, note.strip())
    recorded = f"; report sha256 {closed.report_sha256}" if closed.report_sha256 else ""
    g.data(
        closed.model_dump(mode="json"),
        f"review of {closed.id} ({closed.incident}) closed{recorded}",
    )


def _report(g: Globals, incident: str, fmt: str, output: Path | None) -> None:
    """An incident's post-incident record: to FILE, or to stdout."""
    import json
    import os
    import sys

    from dbaccess.client.context import logged_in
    from dbaccess.errors import UsageError

    if fmt not in ("md", "json", "html"):
        raise UsageError(
            f"--format: '{fmt}' is not md, json or html",
            hint=f"dbaccess review {incident} --format md",
        )
    report = None
    with logged_in(g.profile, g.profiles) as (api, _):
        if fmt == "json":
            report = api.incident_review(incident).model_dump(mode="json")
            text = json.dumps(report, indent=2, ensure_ascii=False) + "\n"
        else:  # rendered by the broker, which has the templates and the plotting library
            text = api.incident_review_text(incident, fmt)
    if output is not None:
        try:
            # 0600 when made: the report holds production SQL and its parameters
            fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                out.write(text)
        except OSError as exc:
            raise UsageError(f"--output: cannot write {output}: {exc.strerror}") from None
        g.data(
            {"incident": incident, "format": fmt, "output": str(output)},
            f"review of {incident} written to {output}",
        )
    elif g.json:
        g.data(report if report is not None else {"format": fmt, "text": text})
    else:
        sys.stdout.write(text)
