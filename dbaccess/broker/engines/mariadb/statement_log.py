"""MariaDB's statement log as incident reviews read it: the ``server_audit`` plugin's file
(``server_audit.log`` in the data directory by default), where the bootstrap has every
statement of a break-glass user logged (engines/mariadb/bootstrap.py).

A line is ``20261203 16:10:11,host,user,client,connection,query,QUERY,db,'text',retcode``:
the time in the server's time zone (UTC is assumed: run the server with TZ=UTC), the
statement's text quoted with backslash escapes, and its error number (0: none).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime

from dbaccess.broker.statement_logs import MAX_STATEMENT_TEXT, LoggedStatement

FORMATS = ("server_audit",)

_LINE = re.compile(
    r"^(\d{8} \d\d:\d\d:\d\d),[^,]*,(?P<user>[^,]*),[^,]*,\d+,\d+,QUERY,[^,]*,"
    r"'(?P<text>(?:[^'\\]|\\.)*)',(?P<code>-?\d+)\s*$",
    re.S,
)
_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", "0": "\0"}
_DDL = frozenset({"CREATE", "ALTER", "DROP", "RENAME", "TRUNCATE"})
_DCL = frozenset({"GRANT", "REVOKE"})
_WRITE = frozenset({"INSERT", "UPDATE", "DELETE", "REPLACE", "LOAD", "CALL"})
_READ = frozenset({"SELECT", "SHOW", "DESCRIBE", "DESC", "EXPLAIN", "WITH", "TABLE", "VALUES"})


def _unescape(text: str) -> str:
    return re.sub(r"\\(.)", lambda m: _ESCAPES.get(m[1], m[1]), text, flags=re.S)


def read(lines: Iterable[str], fmt: str, user: str) -> Iterator[LoggedStatement]:
    for line in lines:
        found = _LINE.match(line)
        if found is None or found["user"] != user:
            continue
        try:
            at = datetime.strptime(found[1], "%Y%m%d %H:%M:%S").replace(tzinfo=UTC)
        except ValueError:
            continue
        code = int(found["code"])
        yield LoggedStatement(
            at,
            user,
            _unescape(found["text"])[:MAX_STATEMENT_TEXT],
            "logged" if code == 0 else f"failed (error {code})",
        )


def classes(sql: str) -> list[str]:
    """By the statement's first keyword (MariaDB's grammar is not at hand here): enough
    for the review's flags — schema and privilege changes — not for guarding."""
    words = re.sub(r"/\*.*?\*/|--[^\n]*|#[^\n]*", " ", sql, flags=re.S).split()
    first = words[0].upper().rstrip(";") if words else ""
    if first in _DDL:
        second = words[1].upper() if len(words) > 1 else ""
        return ["dcl"] if second in ("USER", "ROLE") else ["ddl"]
    if first in _DCL or (first == "SET" and len(words) > 1 and words[1].upper() == "PASSWORD"):
        return ["dcl"]
    if first in _WRITE:
        return ["write"]
    if first in _READ:
        return ["read"]
    return ["unparsed"]
