"""Running one granted session: its private directory, the client (or exec's command), and
the clean-up that always follows. Shared by ``connect``/``exec`` in the full CLI and by the
fast exec path, so it imports neither httpx nor pydantic: a session is anything shaped like
the broker's ``SessionGranted`` answer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from dbaccess.client.dbclients.programs import find_program
from dbaccess.client.dbclients.registry import ENGINES, client_for
from dbaccess.client.session.child import child_environment, ignore_cleanup_signals, run_child
from dbaccess.client.session.directory import SessionDir
from dbaccess.errors import DbaccessError
from dbaccess.timestamps import human as human_time

if TYPE_CHECKING:
    from dbaccess.client.dbclients.base import Granted

__all__ = ["ENGINES", "Launch", "find_client", "prepare_client", "run_granted"]


G = TypeVar("G", bound="Granted")


@dataclass(frozen=True)
class Launch:
    """Where the session came from and what to run in it."""

    profile: str
    broker: str
    client_args: tuple[str, ...] = ()
    command: tuple[str, ...] | None = None  # exec: this instead of the native client
    client: str | None = None  # the native client chosen by flag or profile


def run_granted(
    granted: G,
    launch: Launch,
    revoke: Callable[[str], str],
    on_granted: Callable[[G], None],
    on_warning: Callable[[str], None],
) -> int:
    """Run the client (or command) for ``granted``; return its exit code. Whatever happens,
    the session directory is wiped and ``revoke(session_id)`` (returning the session's new
    state) is called. Call inside ``cleanup_on_signals`` so SIGTERM/SIGHUP unwind here."""
    directory: SessionDir | None = None
    try:
        directory = SessionDir.create(granted.id, broker=launch.broker, profile=launch.profile)
        argv, env = prepare_client(
            granted, directory, list(launch.client_args), launch.command, launch.client
        )
        on_granted(granted)
        return run_child(argv, child_environment(env, granted.id))
    finally:
        # A second SIGTERM must not cut the clean-up short.
        ignore_cleanup_signals()
        if directory is not None:
            directory.remove()
        until = human_time(granted.expires_at)
        try:
            state = revoke(granted.id)
        except DbaccessError as exc:
            on_warning(
                f"could not revoke session {granted.id} ({exc.message}); it expires at {until}"
            )
        else:
            if state != "revoked":
                on_warning(
                    f"the broker could not drop {granted.db_user} yet; it keeps "
                    f"retrying, and the user expires at {until}"
                )


def find_client(engine: str, chosen: str | None = None) -> str:
    """The client to run for ``engine``: the one chosen (flag, variable, profile), else
    the engine's default. LaunchError when it is not there."""
    if chosen:
        return find_program(chosen)
    return client_for(engine).find_default()


def prepare_client(
    granted: Granted,
    directory: SessionDir,
    args: list[str],
    command: tuple[str, ...] | None = None,
    client: str | None = None,
) -> tuple[list[str], dict[str, str]]:
    """argv and environment for the session: the engine's native client with ``args``, or
    any ``command`` (exec) with the same credential files and variables prepared."""
    clients = client_for(granted.engine)  # raises: not supported by this version
    chosen = "" if command else find_client(granted.engine, client)
    argv, env = clients.prepare(granted, directory, chosen, args)
    return (list(command) if command else argv), env
