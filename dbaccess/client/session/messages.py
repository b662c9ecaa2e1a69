"""The lines a session prints on stderr, written once for every front end: the full CLI
(rich, which adds markup through a ``Markup``) and the fast exec path (plain text).
Standard library only."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from dbaccess.timestamps import human as human_time

if TYPE_CHECKING:  # types only: Protocol classes cost start-up

    class Markup(Protocol):
        """How a front end dresses the parts of a line (identity for plain text)."""

        def quote(self, text: str) -> str:
            """Text from people or the broker (a name, a group), shown as written."""
            ...

        def strong(self, text: str) -> str: ...

        def dim(self, text: str) -> str: ...


class Plain:
    """No markup: the fast exec path writes the lines as they are."""

    def quote(self, text: str) -> str:
        return text

    def strong(self, text: str) -> str:
        return text

    def dim(self, text: str) -> str:
        return text


PLAIN = Plain()

SESSION_ENDED = "dbaccess: session revoked, local files removed"
WAITING_FOR_APPROVAL = "waiting for approval (Ctrl-C stops waiting; the request stays open)"


def connected(granted: Any, m: Markup = PLAIN) -> str:
    through = (
        f" through the gateway {m.quote(f'{granted.host}:{granted.port}')}"
        if getattr(granted, "access", "direct") == "gateway"
        else ""
    )
    return (
        f"{m.dim('dbaccess:')} connected as {m.strong(m.quote(granted.db_user))} to "
        f"{m.quote(granted.target)} ({m.quote(granted.role)}){through}, valid until "
        f"{human_time(granted.expires_at)}"
    )


def breakglass_opened(granted: Any) -> str:
    """The warning of a break-glass session (plain: warnings are never markup)."""
    return (
        f"BREAK-GLASS{' DRILL' if getattr(granted, 'drill', False) else ''} session for "
        f"incident {granted.incident}: every statement is logged by the database, the "
        "on-call channel was notified, and the session will be reviewed"
    )


def needs_approval(request: Any, m: Markup = PLAIN) -> str:
    return (
        f"dbaccess: request {m.strong(m.quote(request.id))} needs "
        f"{request.approvals_required} approval(s) from "
        f"{m.quote(', '.join(request.approver_groups))}; approvers run: "
        f"dbaccess approve {m.quote(request.id)}"
    )


def session_ended(m: Markup = PLAIN) -> str:
    return m.dim(SESSION_ENDED)
