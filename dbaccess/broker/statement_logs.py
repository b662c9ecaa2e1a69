"""What the database logged for a session user, for incident reviews of targets that do
not use the gateway (``statement_log`` of a target: docs/policies.md, "Incident reviews").

Break-glass users get every statement logged by the server itself (PostgreSQL's
``log_statement``, MariaDB's ``server_audit`` plugin). Where the broker can read that log,
a review shows those statements as it shows a gateway's records; each engine reads its
own formats (``engines/<engine>/statement_log.py``). Reading is bounded: only lines of
the session's user in its time window are kept, at most ``MAX_STATEMENTS`` of them, and a
file is read once, as a stream. Logs have no row counts: the review says so.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from importlib import import_module
from importlib.util import find_spec
from pathlib import Path
from types import ModuleType

MAX_STATEMENTS = 10_000  # per session; the rest are counted, not kept
MAX_STATEMENT_TEXT = 64 * 1024  # characters of one statement kept
# clocks differ a little between the broker and the database's log
SLACK = timedelta(seconds=60)


@dataclass(frozen=True)
class LoggedStatement:
    at: datetime  # UTC
    user: str
    sql: str
    status: str = "logged"  # or "failed", "failed (error 1146)": the server said so
    sqlstate: str | None = None  # the error's SQLSTATE, where the log gives one


def _module(engine: str) -> ModuleType | None:
    name = f"dbaccess.broker.engines.{engine}.statement_log"
    try:
        found = find_spec(name)
    except ModuleNotFoundError:
        return None
    return None if found is None else import_module(name)


def log_formats(engine: str) -> tuple[str, ...]:
    """The log formats the broker reads for ``engine`` (none: it reads no log of it)."""
    module = _module(engine)
    return () if module is None else tuple(module.FORMATS)


def read_log(
    engine: str, path: Path, fmt: str, user: str, since: datetime, until: datetime
) -> tuple[list[LoggedStatement], int]:
    """The statements ``user`` ran between ``since`` and ``until`` (with SLACK) by the
    log, oldest first, and how many more there were past MAX_STATEMENTS. OSError when the
    file cannot be read; lines that do not parse are skipped."""
    module = _module(engine)
    assert module is not None and fmt in module.FORMATS
    kept: list[LoggedStatement] = []
    more = 0
    with path.open("r", encoding="utf-8", errors="replace", newline="") as lines:
        found: Iterable[LoggedStatement] = module.read(lines, fmt, user)
        for statement in found:
            if not since - SLACK <= statement.at <= until + SLACK:
                continue
            if len(kept) >= MAX_STATEMENTS:
                more += 1
                continue
            kept.append(statement)
    kept.sort(key=lambda statement: statement.at)
    return kept, more


def classes_of(engine: str, sql: str) -> list[str]:
    """The statement classes of a logged statement, by the engine's reader."""
    module = _module(engine)
    return ["unparsed"] if module is None else list(module.classes(sql))
