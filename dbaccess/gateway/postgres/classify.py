"""Statement classes of PostgreSQL SQL text, from the real grammar (libpg_query via pgparse).

The classes follow the parse tree's statement nodes, much as the server's own
``log_statement`` levels do (utility.c, GetCommandLogLevel), and then look inside for what
a top-level node hides: a data-modifying WITH, SELECT ... FOR UPDATE, SELECT INTO, COPY of a
query that writes, EXPLAIN ANALYZE, PREPARE, DECLARE CURSOR, set_config('role', ...), a
call of a built-in function that writes or reaches the server's files, and the SQL text a
built-in runs (query_to_xml('...')).

What the text alone cannot tell (the catalog can): what a user-defined function or
procedure does, and in which language an existing function is written. A SELECT that calls
a function that writes is a read here, unless the function is one of the built-ins known to
change state; the grants of the role template are what stop it. A CALL is a write. The
built-ins are known by name (pg_catalog's and the contrib extensions'); a test against the
real catalog keeps that knowledge complete.
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

# What the classifier knows of functions, by name (the last part of a possibly
# schema-qualified name: contrib extensions live in any schema). Kept complete by
# tests/gateway/test_guardrails.py: every volatile function of pg_catalog and of every
# contrib extension of the suite's PostgreSQL must be in exactly one of these sets, so a new
# server version's new function fails a test instead of passing as a read.
#
# Built-in functions that change state (data, the server, replication, locks others wait
# for): a SELECT calling one is a write.
WRITING_FUNCTIONS = frozenset(
    {"nextval", "setval", "pg_current_xact_id", "txid_current"}  # txid: assigns an xid
    # large objects: the write side; lo_open/loread/lo_get/lo_lseek only read (a write
    # needs lowrite, lo_put or lo_truncate)
    | {"lowrite", "lo_put", "lo_truncate", "lo_truncate64", "lo_from_bytea"}
    | {"lo_create", "lo_creat", "lo_unlink", "lo_import"}  # lo_import: a file, too
    | {"pg_terminate_backend", "pg_cancel_backend", "pg_log_backend_memory_contexts"}
    | {"pg_reload_conf", "pg_rotate_logfile", "pg_rotate_logfile_old", "pg_switch_wal"}
    | {"pg_create_restore_point", "pg_promote", "pg_wal_replay_pause", "pg_wal_replay_resume"}
    | {"pg_backup_start", "pg_backup_stop", "pg_start_backup", "pg_stop_backup"}  # <= 14
    | {"pg_import_system_collations", "pg_nextoid", "pg_extension_config_dump"}
    | {"pg_stop_making_pinned_objects"}
    # replication: slots consumed, advanced, copied; origins; WAL messages
    | {"pg_logical_emit_message", "pg_replication_slot_advance"}
    | {"pg_create_logical_replication_slot", "pg_create_physical_replication_slot"}
    | {"pg_copy_logical_replication_slot", "pg_copy_physical_replication_slot"}
    | {"pg_drop_replication_slot"}
    | {"pg_logical_slot_get_changes", "pg_logical_slot_get_binary_changes"}
    | {"pg_logical_slot_peek_changes", "pg_logical_slot_peek_binary_changes"}  # hold the slot
    # locks other sessions wait for (and their release, one family)
    | {"pg_advisory_lock", "pg_advisory_lock_shared", "pg_try_advisory_lock"}
    | {"pg_try_advisory_lock_shared", "pg_advisory_xact_lock", "pg_advisory_xact_lock_shared"}
    | {"pg_try_advisory_xact_lock", "pg_try_advisory_xact_lock_shared"}
    | {"pg_advisory_unlock", "pg_advisory_unlock_shared", "pg_advisory_unlock_all"}
    # statistics and index maintenance
    | {"brin_summarize_new_values", "brin_summarize_range", "brin_desummarize_range"}
    | {"gin_clean_pending_list"}
    # contrib: dblink connects and runs SQL elsewhere (the same server as another user,
    # too); pg_prewarm fills the buffer cache; pg_surgery, pg_visibility change relations
    | {"dblink", "dblink_exec", "dblink_connect", "dblink_open", "dblink_fetch"}
    | {"dblink_close", "dblink_send_query", "dblink_get_result", "dblink_cancel_query"}
    | {"dblink_disconnect", "dblink_get_notify", "dblink_is_busy"}
    | {"pg_prewarm", "autoprewarm_dump_now", "autoprewarm_start_worker"}
    | {"pg_stat_statements_reset", "heap_force_kill", "heap_force_freeze"}
    | {"pg_truncate_visibility_map"}
)
# Families of writing functions, by prefix, so that a new member is one too:
# binary_upgrade_* (pg_upgrade's oid and catalog setters), pg_replication_origin_*
# (create, drop, advance, set up, reset; but READ_ONLY_VOLATILE wins), pg_stat_reset*
WRITING_PREFIXES = ("binary_upgrade_", "pg_replication_origin_", "pg_stat_reset")
# Functions that read or write the server's files, or connect as the server's OS user:
# untrusted, the power of an untrusted language (and what PostgreSQL guards with
# pg_read_server_files / pg_write_server_files). A file written into the data directory
# (postgresql.auto.conf, then a reload) runs programs; one read gives keys and pg_hba.conf.
SERVER_FILE_FUNCTIONS = frozenset(
    {"pg_read_file", "pg_read_file_old", "pg_read_binary_file", "pg_stat_file", "pg_ls_dir"}
    | {"pg_ls_logdir", "pg_ls_waldir", "pg_ls_tmpdir", "pg_ls_archive_statusdir"}
    | {"pg_ls_logicalsnapdir", "pg_ls_logicalmapdir", "pg_ls_replslotdir"}
    | {"lo_import", "lo_export"}
    | {"pg_file_write", "pg_file_unlink", "pg_file_rename", "pg_file_sync", "pg_logdir_ls"}
    | {"dblink_connect_u"}  # the server's own credentials (.pgpass, peer, trust)
    # pg_walinspect: WAL records (every table's rows), pg_read_server_files in 15
    | {"pg_get_wal_record_info", "pg_get_wal_records_info", "pg_get_wal_stats"}
    | {"pg_get_wal_records_info_till_end_of_wal", "pg_get_wal_stats_till_end_of_wal"}
)
# Functions that run the SQL text of one argument (by SPI, read-only: a SELECT, but the
# SELECT may call any function above), by position: the text is classified in turn when it
# is a constant; otherwise it could be anything a function call can do (UNKNOWN_CALLS).
SQL_TEXT_FUNCTIONS: dict[str, tuple[int, ...]] = {
    "query_to_xml": (0,),
    "query_to_xmlschema": (0,),
    "query_to_xml_and_xmlschema": (0,),
    "ts_stat": (0,),
    "ts_rewrite": (1,),  # ts_rewrite(tsquery, text); the three-tsquery form runs none
    "crosstab": (0, 1),  # tablefunc: crosstab(source_sql, category_sql) runs both
}
# Functions that build SQL from their arguments (identifiers, a WHERE clause pasted in):
# what they run cannot be classified from the text
SQL_BUILDING_FUNCTIONS = frozenset({"connectby", "xpath_table"})
# What a call whose SQL the text does not show could do: a function can write, set the
# role, change the lexing, or read files (a read-only SPI query cannot run DDL)
UNKNOWN_CALLS = frozenset({C.WRITE, C.DCL, C.PARSER_SETTINGS, C.UNTRUSTED})
# Volatile built-ins (and ones not executable by PUBLIC) reviewed as not changing state:
# volatile because their answer changes, or because they read the moment's state
READ_ONLY_VOLATILE = frozenset(
    {"pg_config"}  # the build's paths and flags; not executable by PUBLIC
    | {"random", "setseed", "gen_random_uuid", "clock_timestamp", "timeofday"}
    | {"pg_sleep", "pg_sleep_for", "pg_sleep_until", "current_query", "currval", "lastval"}
    | {"lo_open", "lo_close", "loread", "lo_get", "lo_lseek", "lo_lseek64"}
    | {"lo_tell", "lo_tell64"}
    | {"cursor_to_xml", "cursor_to_xmlschema"}  # a cursor DECLAREd (and classified) before
    # the function form of NOTIFY, which is a session statement (always allowed)
    | {"pg_notify"}
    # sizes, statistics, locks, WAL positions, the server's control data
    | {"pg_database_size", "pg_relation_size", "pg_table_size", "pg_indexes_size"}
    | {"pg_total_relation_size", "pg_tablespace_size", "pg_sequence_last_value"}
    | {"pg_lock_status", "pg_blocking_pids", "pg_safe_snapshot_blocking_pids"}
    | {"pg_isolation_test_session_is_blocked", "pg_prepared_xact", "pg_get_multixact_members"}
    | {"pg_notification_queue_usage", "pg_stat_have_stats", "pg_stat_get_recovery_prefetch"}
    | {"pg_stat_get_xact_blocks_fetched", "pg_stat_get_xact_blocks_hit"}
    | {"pg_stat_get_xact_function_calls", "pg_stat_get_xact_function_self_time"}
    | {"pg_stat_get_xact_function_total_time", "pg_stat_get_xact_numscans"}
    | {"pg_stat_get_xact_tuples_deleted", "pg_stat_get_xact_tuples_fetched"}
    | {"pg_stat_get_xact_tuples_hot_updated", "pg_stat_get_xact_tuples_inserted"}
    | {"pg_stat_get_xact_tuples_returned", "pg_stat_get_xact_tuples_updated"}
    | {"pg_stat_clear_snapshot", "pg_stat_force_next_flush"}  # this backend's own
    | {"pg_current_wal_lsn", "pg_current_wal_insert_lsn", "pg_current_wal_flush_lsn"}
    | {"pg_last_wal_receive_lsn", "pg_last_wal_replay_lsn", "pg_last_xact_replay_timestamp"}
    | {"pg_is_in_recovery", "pg_is_wal_replay_paused", "pg_get_wal_replay_pause_state"}
    | {"pg_get_wal_resource_managers", "pg_last_committed_xact", "pg_xact_status"}
    | {"pg_xact_commit_timestamp", "pg_xact_commit_timestamp_origin", "txid_status"}
    | {"pg_control_checkpoint", "pg_control_init", "pg_control_recovery"}
    | {"pg_control_system", "pg_current_logfile", "pg_jit_available"}
    | {"pg_get_backend_memory_contexts", "pg_get_shmem_allocations", "pg_export_snapshot"}
    | {"pg_show_replication_origin_status", "pg_replication_origin_session_is_setup"}
    | {"pg_replication_origin_oid"}
    | {"pg_collation_actual_version", "pg_database_collation_actual_version"}
    | {"pg_partition_tree", "pg_partition_ancestors", "amvalidate", "currtid2"}
    # the parsed configuration, as the views pg_hba_file_rules, pg_ident_file_mappings and
    # pg_file_settings (whose text shows no function) give it anyway
    | {"pg_hba_file_rules", "pg_ident_file_mappings", "pg_show_all_file_settings"}
    | {"plpgsql_validator"}
    # contrib
    | {"dblink_error_message", "dblink_get_connections", "dblink_current_query"}
    | {"dblink_build_sql_insert", "dblink_build_sql_update", "dblink_build_sql_delete"}
    | {"dblink_get_pkey", "dblink_fdw_validator", "file_fdw_validator"}
    | {"postgres_fdw_validator", "postgres_fdw_get_connections"}
    | {"postgres_fdw_disconnect", "postgres_fdw_disconnect_all"}  # this session's cache
    | {"bt_index_check", "bt_index_parent_check", "verify_heapam"}  # amcheck
    | {"pg_old_snapshot_time_mapping", "pg_buffercache_pages", "pg_freespace"}
    | {"pg_stat_statements", "pg_stat_statements_info", "pgrowlocks", "xslt_process"}
    | {"pg_relpages", "pgstatginindex", "pgstathashindex", "pgstatindex", "pgstattuple"}
    | {"pgstattuple_approx", "pg_check_frozen", "pg_check_visible", "pg_visibility"}
    | {"pg_visibility_map", "pg_visibility_map_summary", "normal_rand", "set_limit"}
    | {"uuid_generate_v1", "uuid_generate_v1mc", "uuid_generate_v4", "gen_random_bytes"}
    | {"gen_salt", "pgp_pub_encrypt", "pgp_pub_encrypt_bytea", "pgp_sym_encrypt"}
    | {"pgp_sym_encrypt_bytea"}
    | {"ssl_cipher", "ssl_client_cert_present", "ssl_client_dn", "ssl_client_dn_field"}
    | {"ssl_client_serial", "ssl_extension_info", "ssl_is_used", "ssl_issuer_dn"}
    | {"ssl_issuer_field", "ssl_version"}
    # pageinspect: raw pages, superuser only
    | {"brin_metapage_info", "brin_page_items", "brin_page_type", "brin_revmap_data"}
    | {"bt_metap", "bt_page_items", "bt_page_stats", "gin_leafpage_items"}
    | {"gin_metapage_info", "gin_page_opaque_info", "gist_page_items", "gist_page_items_bytea"}
    | {"gist_page_opaque_info", "hash_bitmap_info", "hash_metapage_info", "hash_page_items"}
    | {"hash_page_stats", "hash_page_type"}
    | {"get_raw_page", "page_header", "page_checksum", "fsm_page_contents"}
    | {"heap_page_items", "heap_page_item_attrs", "heap_tuple_infomask_flags"}
    | {"tuple_data_split"}
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
MAX_CACHED_TEXT = 4096  # characters: the cache holds at most 2048 of these (8 MiB)
# Characters of one message's SQL the parser is given, on the event loop (a 200 KB
# statement took it 2 s and 100 MB): longer is not checked, so not run (rule
# statements.unparsed) for a role whose statements are checked. Drivers' statements and
# people's are far shorter; a bulk load is COPY, which is not parsed text.
MAX_CHECKED_TEXT = 64 * 1024


def classify(sql: str) -> frozenset[C] | None:
    """The classes of all the statements in ``sql``; None when they cannot be told (it
    does not parse, or it is too long or too deep to parse here)."""
    if len(sql) > MAX_CHECKED_TEXT:
        return None
    if len(sql) > MAX_CACHED_TEXT:
        return _parsed(sql)
    return _classify(sql)


@lru_cache(maxsize=MAX_CACHED)  # drivers send the same text again and again
def _classify(sql: str) -> frozenset[C] | None:
    return _parsed(sql)


def _parsed(sql: str) -> frozenset[C] | None:
    try:
        statements = pgparse.parse(sql)
    except pgparse.PGQueryError:
        return None
    except (RecursionError, ValueError, MemoryError):
        # "SELECT 1+1+…" a few hundred deep: the parse tree's JSON is too deep for the
        # decoder. Not an error of the connection's: the statement is refused as unparsed
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
        # a shell command, or a file read or written, as the server's OS user (what
        # pg_execute_server_program, pg_read_server_files, pg_write_server_files guard):
        # untrusted, as SERVER_FILE_FUNCTIONS are; STDIN/STDOUT have no filename
        if node.get("is_program") or "filename" in node:
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
            classes |= _call(value)
    return classes


def builtin_classes(name: str) -> frozenset[C] | None:
    """What calling the built-in ``name`` adds to a statement, whatever its arguments
    (empty: a read); None for a name the classifier does not know (a user's function)."""
    if name in READ_ONLY_VOLATILE:
        return frozenset()
    found: set[C] = set()
    if name in WRITING_FUNCTIONS or name.startswith(WRITING_PREFIXES):
        found.add(C.WRITE)
    if name in SERVER_FILE_FUNCTIONS:
        found.add(C.UNTRUSTED)
    if name in SQL_BUILDING_FUNCTIONS:
        found |= UNKNOWN_CALLS
    if found or name in SQL_TEXT_FUNCTIONS or name == "set_config":
        return frozenset(found)
    return None


def _call(call: dict[str, Any]) -> set[C]:
    function = _function_name(call)
    args = call.get("args", [])
    classes = set(builtin_classes(function) or ())
    if function == "set_config":
        setting = _constant(args[0]) if args else None
        if setting is None or setting.lower() in ROLE_SETTINGS:
            classes.add(C.DCL)  # set_config('role', ...) is SET ROLE
        elif setting.lower() in LEXICAL_SETTINGS | {"client_encoding"}:
            classes.add(C.PARSER_SETTINGS)
    elif function in SQL_TEXT_FUNCTIONS and not (function == "ts_rewrite" and len(args) != 2):
        for position in SQL_TEXT_FUNCTIONS[function]:
            classes |= _sql_argument(args[position] if position < len(args) else None)
    return classes


def _sql_argument(arg: dict[str, Any] | None) -> set[C]:
    """The classes of SQL text passed to a function that runs it."""
    if arg is None:
        return set()
    const = arg.get("A_Const")
    if const is not None and "sval" not in const:
        return set()  # a number or NULL: the overload that takes no SQL there, or nothing
    text = _constant(arg)
    inner = _classify(text) if text is not None else None
    # a parameter, an expression, a named argument, text that does not parse: unknown
    return set(UNKNOWN_CALLS) if inner is None else set(inner)


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
    """The last part of the name: built-ins are in pg_catalog, contrib's in any schema,
    and an unqualified name may reach either. The parser has already folded unquoted names
    to lower case; a quoted "LOWRITE" is another (user's) function for PostgreSQL, but is
    lower-cased here too: a look-alike of a writing built-in is refused (fail closed)."""
    names = call.get("funcname", [])
    last = names[-1] if names else {}
    return str(last.get("String", {}).get("sval", "")).lower()


def _constant(node: dict[str, Any]) -> str | None:
    const = node.get("A_Const")
    if const is None or "sval" not in const:
        return None
    return str(const["sval"].get("sval", ""))  # '' has no sval inside


def _defname(option: dict[str, Any]) -> str:
    return str(option.get("DefElem", {}).get("defname", ""))


def _untrusted(options: Any, default: str) -> bool:
    language = default
    for option in options:
        element = option.get("DefElem", {})
        if element.get("defname") == "language":
            language = str(element.get("arg", {}).get("String", {}).get("sval", "")).lower()
    return language not in TRUSTED_LANGUAGES


def deallocated_names(sql: str) -> list[str]:
    """The prepared statements the DEALLOCATE statements of ``sql`` name, as the server's
    parser reads them (quoting, case, comments and strings as PostgreSQL's lexer has them);
    none when it does not parse (then nothing is forgotten: a name kept too long only
    counts against the connection's prepared-text limit)."""
    if len(sql) > MAX_CHECKED_TEXT:
        return []
    try:
        statements = pgparse.parse(sql)
    except (pgparse.PGQueryError, RecursionError, ValueError, MemoryError):
        return []
    names: list[str] = []
    for raw in statements:
        node = raw["stmt"].get("DeallocateStmt")
        if isinstance(node, dict) and isinstance(node.get("name"), str):
            names.append(node["name"])
    return names
