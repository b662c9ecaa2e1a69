"""The post-incident record of an incident (``GET /v1/incidents/{incident}/review``).

Everything the store knows of the incident's break-glass sessions, in one report: the
leases, their approvals, how and when each ended and when its credential was gone, the
statements the gateway recorded with whether their hash chain still verifies, and the
flags a reviewer should look at first. The incident's window runs from its first
break-glass session to the close of its last review; when ``[review] incidents`` names a
source, access before the incident opened there or after it was resolved is flagged too.
The report is data (IncidentReport), rendered as Markdown or HTML by review_report.py,
and its hash (``report_hash``) is what a closed review records.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime

from dbaccess.broker.identity import Principal
from dbaccess.broker.incidents import IncidentWindow, incident_window
from dbaccess.broker.services import refusals
from dbaccess.broker.services.context import BrokerContext
from dbaccess.broker.statement_logs import classes_of, read_log
from dbaccess.broker.store import Lease
from dbaccess.broker.store.audit_chain import raw_records, verify
from dbaccess.broker.store.statement_chain import StoredStatement
from dbaccess.wire import (
    IncidentReport,
    IncidentSource,
    ReviewFlag,
    ReviewSession,
    ReviewStatement,
)

# classes a reviewer looks at: schema changes, and changes of grants and roles
DDL_CLASSES = frozenset({"ddl", "dcl"})


def require_reviewer(ctx: BrokerContext, principal: Principal) -> None:
    """Reviews are for ``[breakglass] reviewer_groups`` (else the auditor groups)."""
    policy = ctx.settings.breakglass
    if policy is None:
        raise refusals.NotFound(
            "breakglass_disabled",
            "this broker has no break-glass policy",
            "an administrator can add a [breakglass] section to the broker's config",
        )
    reviewers = set(policy.reviewer_groups or ctx.settings.broker.auditor_groups)
    if not principal.groups & reviewers:
        raise refusals.Denied(
            "denied",
            "reviewing break-glass sessions needs a reviewer group",
            f"members of {', '.join(sorted(reviewers)) or '(none configured)'} review",
        )


def report_hash(report: IncidentReport) -> str:
    """SHA-256 of the report as canonical JSON (sorted keys, no spaces, UTF-8), without
    its ``generated_at``, so the same record hashes the same whenever it is built."""
    data = report.model_dump(mode="json", exclude={"generated_at", "hash"})
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class IncidentReviews:
    def __init__(self, ctx: BrokerContext) -> None:
        self.ctx = ctx

    def report(self, principal: Principal, incident: str) -> IncidentReport:
        require_reviewer(self.ctx, principal)
        return self.build(incident)

    def build(self, incident: str) -> IncidentReport:
        """The report, without asking who wants it (closing a review hashes it)."""
        store, settings = self.ctx.store, self.ctx.settings
        leases = store.incident_sessions(incident)
        if not leases:
            raise refusals.NotFound(
                "not_found",
                f"no break-glass session for incident {incident}",
                "dbaccess review lists the open reviews and their incidents; a "
                "session's review closes with: dbaccess review SESSION --note TEXT",
            )
        bulk_rows = settings.review.bulk_rows
        revoke_within = settings.review.revoke_within
        opened = min(lease.created_at for lease in leases)
        closes = [lease.reviewed_at for lease in leases]
        closed = None if None in closes else max(c for c in closes if c is not None)
        window, window_note = incident_window(settings, incident)
        now = self.ctx.clock()
        sessions: list[ReviewSession] = []
        flags: list[ReviewFlag] = []
        for lease in leases:
            ended = _ended_at(self.ctx, lease)
            records = store.session_statements(lease.id)
            statements = [_statement(lease, r) for r in records]
            recorded = lease.access == "gateway" or bool(records)
            source: str | None = "gateway" if recorded else None
            note: str | None = None
            chain_ok, problem = None, None
            if not recorded:
                statements, note, recorded = _logged(self.ctx, lease, ended or now)
                source = "database log" if recorded else None
            elif recorded:
                verdict = store.verify_statements(lease.id)
                chain_ok, problem = verdict.ok, verdict.problem
                if not verdict.ok:
                    flags.append(
                        ReviewFlag(
                            kind="broken_chain",
                            message=f"the statement records' hash chain does not verify "
                            f"from seq {verdict.first_bad}: {verdict.problem}",
                            session_id=lease.id,
                            seq=verdict.first_bad,
                        )
                    )
            flags += _session_flags(lease, ended, now, revoke_within.total_seconds())
            flags += _window_flags(lease, window)
            allowed = _allowed_classes(self.ctx, lease)
            for s in statements:
                flags += _statement_flags(lease, s, opened, closed, bulk_rows, allowed, window)
            sessions.append(
                ReviewSession(
                    id=lease.id,
                    subject=lease.subject,
                    email=lease.email,
                    target=lease.target,
                    role=lease.role,
                    db_user=lease.db_user,
                    reason=lease.reason,
                    drill=lease.drill,
                    state=lease.state,
                    access=lease.access,
                    created_at=lease.created_at,
                    expires_at=lease.expires_at,
                    ended_at=ended,
                    revoked_at=lease.revoked_at,
                    revoke_cause=lease.revoke_cause,
                    review_state=lease.review_state,
                    reviewed_by=lease.reviewed_by,
                    reviewed_at=lease.reviewed_at,
                    review_note=lease.review_note,
                    review_report_sha256=_recorded_hash(self.ctx, lease),
                    approvals=_approvals(self.ctx, lease),
                    statements=statements,
                    statements_recorded=recorded,
                    statements_from=source,
                    statements_note=note,
                    chain_ok=chain_ok,
                    chain_problem=problem,
                )
            )
        # the trail these leases' records are in: a break anywhere puts them all in doubt
        trail = verify(raw_records(store))
        if not trail.ok:
            flags.append(
                ReviewFlag(
                    kind="broken_chain",
                    message=f"the audit trail's hash chain does not verify at record "
                    f"{trail.first_bad}: {trail.problem}",
                )
            )
        report = IncidentReport(
            incident=incident,
            audit_chain_ok=trail.ok,
            generated_at=now,
            opened_at=opened,
            closed_at=closed,
            incident_source=None
            if window is None
            else IncidentSource(
                source=window.source,
                id=window.id,
                title=window.title,
                status=window.status,
                opened_at=window.opened,
                closed_at=window.closed,
                url=window.url,
            ),
            incident_source_note=window_note,
            sessions=sessions,
            flags=flags,
            bulk_rows=bulk_rows,
            revoke_within_seconds=revoke_within.total_seconds(),
        )
        return report.model_copy(update={"hash": report_hash(report)})


def _ended_at(ctx: BrokerContext, lease: Lease) -> datetime | None:
    """When the session ended: its first revocation asked for before the expiry (ended,
    revoked), else its expiry once passed; None while it runs."""
    asked = [
        r.at
        for r in ctx.store.audit_records(lease.id, event="session.revoke_requested")
        if r.at <= lease.expires_at
    ]
    if asked:
        return min(asked)
    return lease.expires_at if lease.expires_at <= ctx.clock() else None


def _recorded_hash(ctx: BrokerContext, lease: Lease) -> str | None:
    closes = ctx.store.audit_records(lease.id, event="review.closed")
    return None if not closes else closes[-1].detail.get("report_sha256")


def _approvals(ctx: BrokerContext, lease: Lease) -> list[dict[str, object]]:
    if lease.request_id is None:
        return []  # break-glass: no approval wait
    request = ctx.store.get_request(lease.request_id)
    return [] if request is None else list(request.approvals)


def _classes(lease: Lease, record: StoredStatement) -> list[str]:
    from dbaccess.broker.settings import gateway_speaks

    if not gateway_speaks(lease.engine):  # statement records come from a gateway only
        return ["unparsed"]
    from dbaccess.gateway.postgres.classify import classify

    found = classify(record.sql)
    return ["unparsed"] if found is None else sorted(str(c) for c in found)


def _statement(lease: Lease, r: StoredStatement) -> ReviewStatement:
    return ReviewStatement(
        seq=r.seq,
        started=r.started,
        duration=r.duration,
        sql=r.sql,
        classes=_classes(lease, r),
        rows=r.rows,
        status=r.status,
        sqlstate=r.sqlstate,
        rule=r.rule,
    )


def _logged(
    ctx: BrokerContext, lease: Lease, until: datetime
) -> tuple[list[ReviewStatement], str, bool]:
    """The statements the target's database logged for the session's user, a note (why
    there are none: no log configured, unreadable; or what they lack), and whether the
    log was read."""
    target = ctx.settings.targets.get(lease.target)
    log = None if target is None else target.statement_log
    if target is None or log is None:
        return [], "not recorded by a gateway, and the target names no statement_log", False
    try:
        found, more = read_log(
            target.engine, log.path, log.format, lease.db_user, lease.created_at, until
        )
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        return [], f"the database's log {log.path} could not be read: {why}", False
    statements = [
        ReviewStatement(
            seq=index,
            started=item.at,
            sql=item.sql,
            classes=classes_of(target.engine, item.sql),
            status=item.status,
            sqlstate=item.sqlstate,
        )
        for index, item in enumerate(found, 1)
    ]
    note = f"from the database's log {log.path}: no row counts or durations there"
    if more:
        note += f"; {more} more statement(s) not shown"
    return statements, note, True


def _allowed_classes(ctx: BrokerContext, lease: Lease) -> frozenset[str] | None:
    """The statement classes the break-glass role allows through the gateway (None: all)."""
    target = ctx.settings.targets.get(lease.target)
    role = None if target is None else target.roles.get(lease.role)
    if role is None or role.gateway is None or role.gateway.statements is None:
        return None
    return frozenset({"session", *role.gateway.statements})


def _session_flags(
    lease: Lease, ended: datetime | None, now: datetime, within: float
) -> list[ReviewFlag]:
    if ended is None:
        return []
    gone = lease.revoked_at
    late = (gone or now) - ended
    if late.total_seconds() <= within:
        return []
    when = "is still not revoked" if gone is None else "was revoked"
    return [
        ReviewFlag(
            kind="late_revocation",
            message=f"the credential {when} {late.total_seconds():.0f} s after the "
            f"session's end (more than {within:.0f} s)",
            session_id=lease.id,
        )
    ]


def _window_flags(lease: Lease, window: IncidentWindow | None) -> list[ReviewFlag]:
    """A session begun before the incident opened, or after it was resolved, at its
    source."""
    if window is None:
        return []
    at = f"{window.source} {window.id}"
    if lease.created_at < window.opened:
        why = f"the session began before the incident was opened at {at}"
        return [ReviewFlag(kind="before_incident", message=why, session_id=lease.id)]
    if window.closed is not None and lease.created_at > window.closed:
        why = f"the session began after the incident was resolved at {at}"
        return [ReviewFlag(kind="after_incident", message=why, session_id=lease.id)]
    return []


def _statement_flags(
    lease: Lease,
    s: ReviewStatement,
    opened: datetime,
    closed: datetime | None,
    bulk_rows: int,
    allowed: frozenset[str] | None,
    window: IncidentWindow | None = None,
) -> list[ReviewFlag]:
    flags = []

    def flag(kind: str, message: str) -> None:
        flags.append(ReviewFlag(kind=kind, message=message, session_id=lease.id, seq=s.seq))

    if s.started < opened:
        flag("before_incident", "statement before the incident's first break-glass session")
    elif window is not None and s.started < window.opened:
        flag("before_incident", f"statement before the incident was opened at {window.source}")
    if window is not None and window.closed is not None and s.started > window.closed:
        flag("after_incident", f"statement after the incident was resolved at {window.source}")
    if closed is not None and s.started > closed:
        flag("after_review", "statement after the incident's review was closed")
    if DDL_CLASSES & set(s.classes):
        flag("ddl", f"schema or privilege change ({', '.join(s.classes)})")
    if s.rows is not None and s.rows > bulk_rows:
        flag("bulk_read", f"{s.rows} rows (over {bulk_rows})")
    outside = [c for c in s.classes if allowed is not None and c not in allowed]
    if outside or s.status == "refused":
        why = f"refused by {s.rule}" if s.status == "refused" else ", ".join(outside)
        flag("outside_scope", f"outside the break-glass role's statements ({why})")
    return flags
