"""``dbaccess audit``: the audit trail, for members of an auditor group; with
``--statements SESSION``, the statements a gateway session ran (its owner or an auditor)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from dbaccess.cli.completion import complete_session
from dbaccess.cli.output import Globals, result_table

if TYPE_CHECKING:
    from dbaccess.wire import StatementPage

SQL_WIDTH = 60  # characters of SQL a table row shows (--json has all of it)


def audit(
    ctx: typer.Context,
    since: Annotated[
        str | None, typer.Option("--since", help="ISO date/time (UTC), e.g. 2026-11-01.")
    ] = None,
    user: Annotated[
        str | None, typer.Option("--user", help="The person: subject or email.")
    ] = None,
    target: Annotated[str | None, typer.Option("--target", help="Target name.")] = None,
    event_type: Annotated[
        str | None,
        typer.Option("--type", help="Event type, e.g. session.granted (the broker lists them)."),
    ] = None,
    limit: Annotated[
        int, typer.Option(min=1, max=1000, help="At most this many records (a page).")
    ] = 100,
    before: Annotated[
        str | None,
        typer.Option(
            "--before",
            help="Older records: the cursor a previous page printed after 'more:' "
            "(with the same filters).",
        ),
    ] = None,
    statements: Annotated[
        str | None,
        typer.Option(
            "--statements",
            metavar="SESSION",
            help="The statements a gateway session ran (its id or the start of it), oldest "
            "first, and whether their hash chain verifies. Its owner or an auditor.",
            autocompletion=complete_session,
        ),
    ] = None,
    after: Annotated[
        int | None,
        typer.Option(
            "--after",
            min=0,
            help="With --statements: the records after this number (a previous page "
            "printed it after 'more:').",
        ),
    ] = None,
) -> None:
    """Who got what, when, why, and what became of it, newest first (auditor groups only)."""
    import shlex
    from datetime import datetime

    from dbaccess.cli.output import emit_json, shown
    from dbaccess.client.context import logged_in
    from dbaccess.errors import UsageError, with_profile
    from dbaccess.timestamps import human as human_time

    g: Globals = ctx.obj
    if statements is not None:
        for flag, value in (
            ("--since", since),
            ("--user", user),
            ("--target", target),
            ("--type", event_type),
            ("--before", before),
        ):
            if value is not None:
                raise UsageError(
                    f"--statements and {flag} cannot be combined: --statements shows one "
                    "session's statements, the other options filter the audit trail"
                )
        show_statements(g, statements, after=after or 0, limit=limit)
        return
    if after is not None:
        raise UsageError("--after pages through --statements: give --statements SESSION too")
    if since is not None:
        try:
            datetime.fromisoformat(since)
        except ValueError:
            raise UsageError(f"--since: '{since}' is not an ISO date, e.g. 2026-11-01") from None
    with logged_in(g.profile, g.profiles) as (api, _):
        records, more = api.audit(
            since=since, user=user, target=target, type=event_type, limit=limit, before=before
        )
    if g.json:
        # "next": the cursor of the next (older) page, or null: the last page
        emit_json({"data": [r.model_dump(mode="json") for r in records], "next": more})
        return
    table = result_table("#", "when", "event", "who", "target", "user", "why / cause")
    for r in records:
        d = r.detail
        table.add_row(
            str(r.seq),
            human_time(r.at),
            r.event,
            r.subject or "-",
            str(d.get("target", "-")),
            str(d.get("db_user", "-")),
            str(d.get("reason") or d.get("cause") or d.get("explanation") or "-"),
        )
    g.result(table if records else "no audit records match")
    if more is not None:
        again = ["dbaccess", "audit"]
        for flag, value in (
            ("--since", since),
            ("--user", user),
            ("--target", target),
            ("--type", event_type),
        ):
            if value is not None:
                again += [flag, value]
        if limit != 100:
            again += ["--limit", str(limit)]
        again += ["--before", more]
        command = with_profile(shlex.join(again), g.hint_profile())
        g.info(f"more: {shown(command)}")


def show_statements(g: Globals, session: str, *, after: int, limit: int) -> None:
    """One page of a session's statement records: a table and the chain's verdict."""
    import shlex

    from dbaccess.cli.output import emit_json, shown
    from dbaccess.client.context import logged_in
    from dbaccess.errors import with_profile
    from dbaccess.text import one_line
    from dbaccess.timestamps import human as human_time

    with logged_in(g.profile, g.profiles) as (api, _):
        page = api.statements(session, after=after, limit=limit)
    if g.json:
        # "next": the number to pass as --after for the next page, or null: the last page
        emit_json({"data": page.model_dump(mode="json"), "next": page.next_after})
        return
    table = result_table("#", "started", "kind", "rows", "bytes", "duration", "result", "sql")
    for r in page.entries:
        table.add_row(
            str(r.seq),
            human_time(r.started),
            r.kind,
            "-" if r.rows is None else str(r.rows),
            f"{r.bytes_out}" + (f" in {r.bytes_in}" if r.bytes_in else ""),
            f"{r.duration * 1000:.1f} ms",
            statement_result(r.status, r.sqlstate, r.rule),
            one_line(r.sql, SQL_WIDTH),
        )
    if page.entries:
        g.result(table)
    elif page.verification.records:
        g.result(f"no statement records after #{after}")
    g.result(shown(chain_verdict(page)))
    if page.next_after is not None:
        again = ["dbaccess", "audit", "--statements", page.session_id]
        if limit != 100:
            again += ["--limit", str(limit)]
        again += ["--after", str(page.next_after)]
        command = with_profile(shlex.join(again), g.hint_profile())
        g.info(f"more: {shown(command)}")


def statement_result(status: str, sqlstate: str | None, rule: str | None) -> str:
    """ "ok", the server's SQLSTATE, or what else became of the statement."""
    if status == "completed":
        return sqlstate or "ok"
    shown = status + (f" {sqlstate}" if sqlstate else "")
    return shown + (f" ({rule})" if rule else "")


def chain_verdict(page: StatementPage) -> str:
    """One line: whether the records' hash chain verifies, and whether it is sealed."""
    v = page.verification
    if v.ok and v.records == 0 and page.seal is None:
        return (
            "no statement records: none went through the gateway yet (a session reached "
            "directly, not through the gateway, has none)"
        )
    if v.ok:
        line = f"chain verifies: {v.records} record(s)"
    else:
        line = f"chain BROKEN at record #{v.first_bad}: {v.problem}"
    if page.seal is None:
        return line + "; not sealed yet (the session has not ended, or ended moments ago)"
    line += f"; sealed into the audit trail with {page.seal.count} record(s)"
    if v.after_seal:
        line += f"; {v.after_seal} record(s) arrived after the seal"
    return line
