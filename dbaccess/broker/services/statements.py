"""Reading a gateway session's statement records (``GET /v1/sessions/{id}/statements``),
and sealing the records of ended sessions (the reaper's loop).

The session's owner and auditors may read them; to anyone else a session is as unknown as
one that does not exist (the same 404), so its id's existence is not revealed either.
"""

from __future__ import annotations

from dbaccess.broker.identity import Principal
from dbaccess.broker.services import refusals
from dbaccess.broker.services.context import BrokerContext
from dbaccess.broker.services.ids import resolve_id
from dbaccess.broker.store import leases
from dbaccess.broker.store.statement_chain import SEAL_GRACE, StoredStatement
from dbaccess.wire import StatementEntry, StatementPage, StatementSeal, StatementVerification

PAGE_DEFAULT = 100
PAGE_MAX = 1000


class StatementRecords:
    def __init__(self, ctx: BrokerContext) -> None:
        self.ctx = ctx

    def _is_auditor(self, principal: Principal) -> bool:
        return bool(principal.groups & set(self.ctx.settings.broker.auditor_groups))

    def _visible(self, principal: Principal, lease_id: str) -> str:
        """The whole id of the session ``lease_id`` (or a unique prefix) names, among
        the caller's own sessions, or all of them for an auditor."""
        auditor = self._is_auditor(principal)
        return resolve_id(
            lease_id,
            lambda prefix: self.ctx.store.ids_starting_with(
                leases, prefix, *(() if auditor else (leases.c.subject == principal.subject,))
            ),
            noun="session",
            not_found=refusals.NotFound(
                "not_found",
                f"no session {lease_id} "
                + ("" if auditor else "of yours ")
                + "(statement records are shown to the session's owner and to auditors)",
                "dbaccess sessions lists your sessions",
            ),
            listing="dbaccess sessions lists them",
        )

    def page(
        self, principal: Principal, lease_id: str, *, after: int = 0, limit: int = PAGE_DEFAULT
    ) -> StatementPage:
        """Records with seq above ``after``, oldest first, with the chain's verification
        and its seal."""
        if not 1 <= limit <= PAGE_MAX:
            raise refusals.Invalid(
                "invalid_request", f"limit: {limit} is not between 1 and {PAGE_MAX}"
            )
        if after < 0:
            raise refusals.Invalid("invalid_request", f"after: {after} is below 0")
        found = self._visible(principal, lease_id)
        store = self.ctx.store
        records, more = store.statement_page(found, after=after, limit=limit)
        verdict = store.page_verdict(found, after=after)
        head = store.statement_head(found)
        seal = None
        if head is not None and head.sealed_at is not None:
            assert head.sealed_count is not None and head.sealed_head is not None
            seal = StatementSeal(at=head.sealed_at, count=head.sealed_count, head=head.sealed_head)
        return StatementPage(
            session_id=found,
            entries=[statement_entry(r) for r in records],
            next_after=more,
            head=head.head if head is not None and head.count else None,
            count=head.count if head is not None else 0,
            verification=StatementVerification(
                ok=verdict.ok,
                records=verdict.records,
                expected=verdict.expected,
                first_bad=verdict.first_bad,
                problem=verdict.problem,
                after_seal=verdict.after_seal,
            ),
            seal=seal,
        )

    def seal(self, grace: float = SEAL_GRACE) -> int:
        """Seal the records of every session that ended over ``grace`` seconds ago."""
        return self.ctx.store.seal_statements(self.ctx.clock(), grace)


def statement_entry(r: StoredStatement) -> StatementEntry:
    return StatementEntry(
        seq=r.seq,
        started=r.started,
        duration=r.duration,
        kind=r.kind,
        sql=r.sql,
        params_policy=r.params_policy,
        params=r.param_values(),
        rows=r.rows,
        bytes_out=r.bytes_out,
        bytes_in=r.bytes_in,
        sqlstate=r.sqlstate,
        status=r.status,
        rule=r.rule,
        connection=r.connection,
        gateway=r.gateway,
        written_at=r.written_at,
        block=(r.block.first_seq, r.block.last_seq),
        prev_hash=r.block.prev_hash,
        hash=r.block.hash,
    )
