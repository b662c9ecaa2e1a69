"""What every database client module of ``registry.CLIENTS`` works with and provides.
Types only: imported under ``TYPE_CHECKING`` (creating Protocol classes costs the fast
exec path's start-up for nothing at run time)."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from dbaccess.client.session.directory import SessionDir


class Secret(Protocol):
    def get_secret_value(self) -> str: ...


class Granted(Protocol):
    """What running a session needs from the broker's answer (``wire.SessionGranted``)."""

    @property
    def id(self) -> str: ...
    @property
    def engine(self) -> str: ...
    @property
    def db_user(self) -> str: ...
    @property
    def host(self) -> str: ...
    @property
    def port(self) -> int: ...
    @property
    def database(self) -> str: ...
    @property
    def sslmode(self) -> str | None: ...
    @property
    def ca_certificate(self) -> str | None: ...
    @property
    def expires_at(self) -> datetime: ...
    @property
    def password(self) -> Secret: ...


class DbClient(Protocol):
    """One engine's clients on this machine (a module: ``postgres``, ``mariadb``)."""

    # the variable naming the client to run (flag > variable > profile > default)
    VARIABLE: str
    # what ``creds`` adds after the export lines, when the engine's client needs more
    CREDS_HINT: str | None
    # the prefixes of the clients' own variables, kept out of every session's environment
    # (whatever its engine: the user's shell must not mix into it)
    SCRUBBED_PREFIXES: tuple[str, ...]
    # program name -> how to get it, for the programs people name most
    INSTALL_HINTS: dict[str, str]

    def find_default(self) -> str:
        """The engine's default client on PATH; LaunchError when it is not there."""
        ...

    def prepare(
        self, granted: Granted, directory: SessionDir, client: str, args: list[str]
    ) -> tuple[list[str], dict[str, str]]:
        """argv and environment for ``client``; the password only in a 0600 file."""
        ...

    def export_env(self, granted: Granted) -> dict[str, str]:
        """The variables for ``eval "$(dbaccess creds ...)"`` (the password among them)."""
        ...
