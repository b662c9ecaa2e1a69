"""Guardrails before execution (engine-neutral): which statement classes a session may run,
and the limits on what it may take out.

An engine's classifier turns one client message into the set of classes of the statements
it holds; ``decide`` is pure (no I/O) and names the rule that refused it, which the protocol
server puts in its error message and in the statement record.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum


class StatementClass(StrEnum):
    READ = "read"
    WRITE = "write"
    DDL = "ddl"
    DCL = "dcl"  # grants, roles, and changing the current role (SET ROLE ...)
    COPY_OUT = "copy_out"
    COPY_IN = "copy_in"
    UNTRUSTED = "untrusted"  # code in an untrusted language, or a program on the server
    # settings that change how the server reads the text (standard_conforming_strings,
    # backslash_quote, a client-only client_encoding): after one, the gateway's parser and
    # the server's could read the same string differently, so classes could be hidden
    PARSER_SETTINGS = "parser_settings"
    # transaction control, SET/SHOW, LISTEN/NOTIFY, cursors' FETCH/CLOSE ...: always
    # allowed, or no client could even start (they all send BEGIN, SET, DISCARD)
    SESSION = "session"


ALL_CLASSES = frozenset(StatementClass)
UNPARSED_RULE = "statements.unparsed"
ROWS_RULE = "limits.rows_per_result"
BYTES_RULE = "limits.bytes_per_session"
IDLE_RULE = "limits.idle_timeout"


def class_rule(cls: StatementClass) -> str:
    return f"statements.{cls.value}"


@dataclass(frozen=True)
class Policy:
    """What a role template allows through the gateway; the default allows everything."""

    allowed: frozenset[StatementClass] = field(default=ALL_CLASSES)
    max_rows_per_result: int | None = None
    max_bytes_per_session: int | None = None
    idle_timeout: float | None = None  # seconds without a client message while idle

    @property
    def restricts_statements(self) -> bool:
        # only then is a statement parsed at all (the hot path of an unrestricted role)
        return not ALL_CLASSES <= (self.allowed | {StatementClass.SESSION})


ALLOW_ALL = Policy()


@dataclass(frozen=True)
class Refusal:
    rule: str
    message: str
    sqlstate: str = "42501"  # insufficient_privilege


def decide(policy: Policy, role: str, classes: Iterable[StatementClass] | None) -> Refusal | None:
    """None when every statement of the message is allowed; ``classes`` None means the text
    did not parse (refused: what we cannot classify, we do not forward)."""
    if classes is None:
        return Refusal(
            UNPARSED_RULE,
            f"dbaccess gateway: the statement does not parse, so its class cannot be "
            f"checked for role {role} (rule {UNPARSED_RULE})",
            "42601",  # syntax_error
        )
    for cls in sorted(classes):  # sorted: the same message for the same statement
        if cls is not StatementClass.SESSION and cls not in policy.allowed:
            rule = class_rule(cls)
            return Refusal(
                rule,
                f"dbaccess gateway: statement class {cls.value} is not allowed for role "
                f"{role} (rule {rule})",
            )
    return None
