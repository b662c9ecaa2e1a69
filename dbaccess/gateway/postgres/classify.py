"""Statement classes of PostgreSQL SQL text, from the real grammar (libpg_query via pgparse).

The classes follow the parse tree's statement nodes, much as the server's own
``log_statement`` levels do (utility.c, GetCommandLogLevel), and then look inside for what
a top-level node hides: a data-modifying WITH, SELECT ... FOR UPDATE, SELECT INTO, COPY of a
query that writes, EXPLAIN ANALYZE, PREPARE, DECLARE CURSOR, set_config('role', ...).

What the text alone cannot tell (the catalog can): what a user-defined function or
procedure does, and in which language an existing function is written. A SELECT that calls
a function that writes is a read here, unless the function is one of the built-in ones that
change state; the grants of the role template are what stop it. A CALL is a write.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import lru_cache
from typing import Any

import pgparse

from dbaccess.gateway.guardrails import StatementClass as C

# Languages that PostgreSQL or their extension mark trusted (lanpltrusted); any other
# (plpython3u, plperlu, pltclu, c, internal, plsh ...) runs with the server's OS rights.
TRUSTED_LANGUAGES = frozenset(
    {"sql", "plpgsql", "plperl", "pltcl", "plv8", "pljs", "plrust", "pllua", "plprql"}
)

# Built-in functions that change state (or read the server's files); a SELECT calling one
# is not a read.
WRITING_FUNCTIONS = frozenset(
    {
        "nextval",
        "setval",
        "lo_import",
        "lo_export",
        "lo_unlink",
        "lo_create",
        "lo_creat",
        "lo_from_bytea",
        "lo_put",
        "lo_truncate",
        "pg_terminate_backend",
        "pg_cancel_backend",
        "pg_reload_conf",
        "pg_rotate_logfile",
        "pg_switch_wal",
        "pg_create_restore_point",
        "pg_logical_emit_message",
        "pg_create_logical_replication_slot",
        "pg_create_physical_replication_slot",
        "pg_drop_replication_slot",
        "pg_replication_origin_create",
        "pg_file_write",
        "pg_file_unlink",
        "pg_file_rename",
        "pg_read_file",
        "pg_read_binary_file",
        "pg_stat_reset",
        "dblink_exec",
        "dblink",
        "pg_advisory_lock",
        "pg_advisory_xact_lock",
    }
)
# GUCs whose change is a change of identity
ROLE_SETTINGS = frozenset({"role", "session_authorization"})
# GUCs that change how the server lexes string literals (see StatementClass.PARSER_SETTINGS)
LEXICAL_SETTINGS = frozenset({"standard_conforming_strings", "backslash_quote"})
# Encodings whose bytes the gateway's parser reads as the server does: every ASCII byte
# means itself (no multibyte character hides a backslash or a quote, as the client-only
# SJIS, BIG5, GBK, UHC, GB18030 and JOHAB can: https://www.postgresql.org/docs/current/
# multibyte.html). An allow-list, not a deny-list, so an alias we do not know is refused.
# Names as PostgreSQL compares them: lower case, letters and digits only.
SAFE_ENCODINGS = frozenset(
    {"utf8", "unicode", "sqlascii", "koi8", "koi8r", "koi8u", "mulecinternal"}
    | {"eucjp", "euccn", "euckr", "euctw", "eucjis2004"}
    | {f"latin{n}" for n in range(1, 11)}
    | {f"iso8859{n}" for n in range(1, 17)}
    | {f"{prefix}{n}" for prefix in ("win", "windows") for n in (866, 874, *range(1250, 1259))}
)
# The start-up parameters a session with statement checks may send, as PostgreSQL compares
# names (lower case, '-' as '_'). Anything else, ``options`` (``-c name=value`` for any
# setting: role, default_transaction_read_only, standard_conforming_strings...) above all,
# could change identity, lexing or limits before the first statement is checked.
STARTUP_ALLOWED = frozenset(
    {"user", "database", "application_name", "client_encoding", "datestyle", "timezone"}
    | {"extra_float_digits", "intervalstyle", "search_path"}
)

DCL_NODES = frozenset(
    {
        "GrantStmt",
        "GrantRoleStmt",
        "CreateRoleStmt",
        "AlterRoleStmt",
        "AlterRoleSetStmt",
        "DropRoleStmt",
        "AlterDefaultPrivilegesStmt",
        "ReassignOwnedStmt",
        "DropOwnedStmt",
        "AlterOwnerStmt",
        "AlterSystemStmt",
    }
)
WRITE_NODES = frozenset(
    {"InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt", "TruncateStmt", "CallStmt"}
)
WRITE_NODES_RUN = WRITE_NODES | {"RefreshMatViewStmt"}
SESSION_NODES = frozenset(
    {
        "TransactionStmt",
        "VariableShowStmt",
        "ListenStmt",
        "UnlistenStmt",
        "NotifyStmt",
        "DiscardStmt",  # DISCARD ALL goes back to the login user, never to another
        "DeallocateStmt",
        "FetchStmt",
        "ClosePortalStmt",
        "ExecuteStmt",  # its PREPARE was classified, under the same policy
        "ConstraintsSetStmt",
    }
)
MAX_CACHED = 2048


def classify(sql: str) -> frozenset[C] | None:
    """The classes of all the statements in ``sql``; None when it does not parse."""
    return _classify(sql)


@lru_cache(maxsize=MAX_CACHED)  # drivers send the same text again and again
def _classify(sql: str) -> frozenset[C] | None:
    try:
        statements = pgparse.parse(sql)
    except pgparse.PGQueryError:
        return None
    classes: set[C] = set()
    for raw in statements:
        ((name, node),) = raw["stmt"].items()
        classes |= _statement(name, node)
    return frozenset(classes) if classes else frozenset({C.SESSION})  # "" or ";"


def _statement(name: str, node: dict[str, Any]) -> set[C]:
    if name == "SelectStmt":
        classes = {C.READ}
        if "intoClause" in node:  # SELECT INTO creates a table
            classes |= {C.DDL, C.WRITE}
        return classes | _inner(node)
    if name in WRITE_NODES_RUN:
        return {C.WRITE} | _inner(node)
    if name == "CopyStmt":
        classes = {C.COPY_IN if node.get("is_from") else C.COPY_OUT}
        if node.get("is_program"):  # a shell command as the server's OS user
            classes.add(C.UNTRUSTED)
        return classes | _inner(node)
    if name == "ExplainStmt":
        options = {_defname(o) for o in node.get("options", ())}
        if "analyze" in options:  # runs the statement
            ((inner, body),) = node["query"].items()
            return _statement(inner, body)
        return {C.READ}
    if name in ("PrepareStmt", "DeclareCursorStmt"):
        ((inner, body),) = node["query"].items()
        return _statement(inner, body)
    if name == "VariableSetStmt":
        setting = str(node.get("name") or "").lower()  # names compare without case
        if setting in ROLE_SETTINGS:
            return {C.DCL}
        if setting in LEXICAL_SETTINGS:
            return {C.PARSER_SETTINGS}
        if setting == "client_encoding":
            args = node.get("args", [])
            value = _constant(args[0]) if args else "UTF8"  # RESET, DEFAULT: the login's
            if value is None or unsafe_encoding(value):
                return {C.PARSER_SETTINGS}
        return {C.SESSION} | _inner(node)
    if name == "LockStmt":
        # ACCESS SHARE is what pg_dump takes; stronger modes block writers
        return {C.READ} if node.get("mode") == 1 else {C.WRITE}
    if name in SESSION_NODES:
        return {C.SESSION}
    if name in DCL_NODES:
        return {C.DCL}
    if name == "DoStmt":
        # code that can run any statement (EXECUTE of a built string): all it could be
        classes = {C.WRITE, C.DDL, C.DCL}
        if _untrusted(node.get("args", ()), "plpgsql"):
            classes.add(C.UNTRUSTED)
        return classes
    if name == "CreateFunctionStmt":
        classes = {C.DDL}
        if _untrusted(node.get("options", ()), "sql"):
            classes.add(C.UNTRUSTED)
        return classes
    if name == "LoadStmt":  # a shared library into the server process
        return {C.UNTRUSTED}
    # CREATE/ALTER/DROP ..., COMMENT, SECURITY LABEL, VACUUM, REINDEX, CLUSTER, and any
    # node this list does not know yet: the class a read-only role does not have
    return {C.DDL} | _inner(node)


def _inner(node: dict[str, Any]) -> set[C]:
    """What a statement's subtrees add: writing CTEs, row locks, state-changing calls."""
    classes: set[C] = set()
    for key, value in _walk(node):
        if key in WRITE_NODES:
            classes.add(C.WRITE)
        elif key == "lockingClause":
            classes.add(C.WRITE)  # FOR UPDATE/SHARE locks rows; needs UPDATE privilege
        elif key == "FuncCall":
            function = _function_name(value)
            if function in WRITING_FUNCTIONS:
                classes.add(C.WRITE)
            elif function == "set_config":
                args = value.get("args", [])
                setting = _constant(args[0]) if args else None
                if setting is None or setting.lower() in ROLE_SETTINGS:
                    classes.add(C.DCL)  # set_config('role', ...) is SET ROLE
                elif setting.lower() in LEXICAL_SETTINGS | {"client_encoding"}:
                    classes.add(C.PARSER_SETTINGS)
    return classes


def unsafe_encoding(name: str) -> bool:
    """A client_encoding the gateway's parser (UTF-8) could read differently."""
    normal = "".join(ch for ch in name.lower() if ch.isalnum())
    return normal not in SAFE_ENCODINGS


def setting_name(name: str) -> str:
    """A setting's name as PostgreSQL compares it."""
    return name.lower().replace("-", "_")


def unsafe_startup(params: dict[str, str]) -> str | None:
    """The first start-up parameter a session with statement checks may not send: one
    outside ``STARTUP_ALLOWED`` (``options`` unless empty), or a client_encoding outside
    ``SAFE_ENCODINGS``."""
    for name, value in params.items():
        normal = setting_name(name)
        if normal == "options" and not value.strip():
            continue
        if normal not in STARTUP_ALLOWED:
            return name
        if normal == "client_encoding" and unsafe_encoding(value):
            return name
    return None


def _walk(value: Any) -> Iterator[tuple[str, Any]]:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key, sub in item.items():
                yield key, sub
                if isinstance(sub, dict | list):
                    stack.append(sub)
        elif isinstance(item, list):
            stack.extend(item)


def _function_name(call: dict[str, Any]) -> str:
    names = call.get("funcname", [])
    last = names[-1] if names else {}
    return str(last.get("String", {}).get("sval", "")).lower()


def _constant(node: dict[str, Any]) -> str | None:
    const = node.get("A_Const")
    if const is None or "sval" not in const:
        return None
    return str(const["sval"]["sval"])


def _defname(option: dict[str, Any]) -> str:
    return str(option.get("DefElem", {}).get("defname", ""))


def _untrusted(options: Any, default: str) -> bool:
    language = default
    for option in options:
        element = option.get("DefElem", {})
        if element.get("defname") == "language":
            language = str(element.get("arg", {}).get("String", {}).get("sval", "")).lower()
    return language not in TRUSTED_LANGUAGES
