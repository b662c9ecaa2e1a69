"""PostgreSQL's server log as incident reviews read it: ``jsonlog`` (PostgreSQL 15+) or
``csvlog``, the machine-readable destinations (``log_destination``, with
``logging_collector = on``). ``log_timezone = 'UTC'`` is assumed where a line's time has
no offset the reader knows.

A break-glass user's statements arrive as ``statement: ...`` (simple protocol) or
``execute NAME: ...`` (extended) messages, under ``log_statement = 'all'``; an error the
server logs for a session afterwards (its SQLSTATE) belongs to that session's last
statement. Bind parameters (the lines' ``detail``) are not kept: they may be secrets.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta, timezone

from dbaccess.broker.statement_logs import MAX_STATEMENT_TEXT, LoggedStatement

FORMATS = ("jsonlog", "csvlog")

_MESSAGE = re.compile(r"^(?:statement|execute [^:]*): (.*)$", re.S)
# csvlog's columns (PostgreSQL 14+), by name
_CSV = ("log_time", "user_name", "database_name", "process_id", "connection_from",
        "session_id", "session_line_num", "command_tag", "session_start_time",
        "virtual_transaction_id", "transaction_id", "error_severity", "sql_state_code",
        "message")  # fmt: skip
_ZONES = {"UTC": UTC, "GMT": UTC, "Z": UTC}


def _when(text: str) -> datetime | None:
    """``2026-12-03 16:10:11.123 UTC`` (or a numeric offset, ``+01``) as UTC."""
    stamp, _, zone = text.strip().rpartition(" ")
    try:
        moment = datetime.fromisoformat(stamp)
    except ValueError:
        return None
    tz = _ZONES.get(zone)
    if tz is None and re.fullmatch(r"[+-]\d{2}(:?\d{2})?", zone):
        sign = -1 if zone[0] == "-" else 1
        digits = zone[1:].replace(":", "")
        tz = timezone(sign * timedelta(hours=int(digits[:2]), minutes=int(digits[2:] or 0)))
    if tz is None:
        return None  # a zone name the reader cannot place (set log_timezone = 'UTC')
    return moment.replace(tzinfo=tz).astimezone(UTC)


def _entries(lines: Iterable[str], fmt: str) -> Iterator[dict[str, str]]:
    if fmt == "jsonlog":
        for line in lines:
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict):
                yield {k: str(v) for k, v in entry.items() if v is not None}
        return
    for row in csv.reader(lines):
        if len(row) >= len(_CSV):
            entry = dict(zip(_CSV, row, strict=False))
            yield {
                "timestamp": entry["log_time"],
                "user": entry["user_name"],
                "session_id": entry["session_id"],
                "error_severity": entry["error_severity"],
                "state_code": entry["sql_state_code"],
                "message": entry["message"],
            }


def read(lines: Iterable[str], fmt: str, user: str) -> Iterator[LoggedStatement]:
    last: dict[str, LoggedStatement] = {}  # per session: its statement not yet handed on
    for entry in _entries(lines, fmt):
        if entry.get("user") != user:
            continue
        session = entry.get("session_id", "")
        severity = entry.get("error_severity", "")
        if severity in ("ERROR", "FATAL") and session in last:
            done = last.pop(session)
            yield LoggedStatement(done.at, done.user, done.sql, "failed", entry.get("state_code"))
            continue
        found = _MESSAGE.match(entry.get("message", "")) if severity == "LOG" else None
        at = _when(entry.get("timestamp", ""))
        if found is None or at is None:
            continue
        if session in last:
            yield last.pop(session)
        last[session] = LoggedStatement(at, user, found[1][:MAX_STATEMENT_TEXT])
    yield from sorted(last.values(), key=lambda s: s.at)


def classes(sql: str) -> list[str]:
    """PostgreSQL's own grammar decides, as for the gateway's records."""
    from dbaccess.gateway.postgres.classify import classify

    found = classify(sql)
    return ["unparsed"] if found is None else sorted(str(c) for c in found)
