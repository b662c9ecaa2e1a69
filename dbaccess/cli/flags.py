"""How the global flags ``--json`` and ``--debug`` (and their twins ``DBACCESS_JSON``,
``DBACCESS_DEBUG``) are read: with click's boolean words, as typer reads them, in one
place for the full CLI and the fast exec path. Standard library only (the fast path
imports it); tests/cli/test_error_output.py keeps the words equal to typer's."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

# click's boolean words (BoolParamType), matched after strip() and lower()
TRUE_WORDS = ("1", "true", "t", "yes", "y", "on")
FALSE_WORDS = ("0", "false", "f", "no", "n", "off")


def boolean(raw: str | None) -> bool | None:
    """``raw`` (an environment variable's value) as click reads it: True, False (also
    unset or empty), or None for a word that is neither — typer's usage error."""
    word = (raw or "").strip().lower()
    if not word or word in FALSE_WORDS:
        return False
    return True if word in TRUE_WORDS else None


def json_before_typer(args: Sequence[str], environ: Mapping[str, str]) -> bool:
    """--json or DBACCESS_JSON, for an error found before typer has read the global options
    (a mistyped one): the invocation context starts with it, and typer's own reading
    replaces it once the options are parsed. What follows ``--`` is the child's."""
    args = list(args)
    if "--" in args:
        args = args[: args.index("--")]
    return "--json" in args or boolean(environ.get("DBACCESS_JSON")) is True
