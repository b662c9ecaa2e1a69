"""The client side of a PostgreSQL login by SCRAM-SHA-256, one AuthenticationRequest at a
time: what the gateway does towards the database, and the tunnel towards the gateway.

Only SCRAM-SHA-256, and the server must prove it holds the verifier (its SASLFinal)
before its AuthenticationOk counts: a server that asks for the password in clear or as
md5 could keep it, and one that lets the client in without a proof may be anyone. The
exchange itself is scramp's; this module only says what to answer to which message.
"""

from __future__ import annotations

import struct

import scramp

from dbaccess.gateway.postgres import wire

_INT32 = struct.Struct("!i")
MECHANISM = "SCRAM-SHA-256"
# PostgreSQL's default is 4096 (scram_iterations); a million takes about a second
MAX_ITERATIONS = 1_000_000


def _iterations(server_first: str) -> int:
    for part in server_first.split(","):
        if part.startswith("i=") and part[2:].isdigit() and len(part) <= 12:
            return int(part[2:])
        if part.startswith("i="):
            return MAX_ITERATIONS + 1  # not a count we would compute
    return 0  # scramp refuses a message without one


class LoginRefused(Exception):
    """The server asked for something other than SCRAM-SHA-256 (``method`` is its code)
    or said OK without proving itself (``method`` None)."""

    def __init__(self, method: int | None) -> None:
        super().__init__(
            "the server let the client in without SCRAM-SHA-256"
            if method is None
            else f"the server asked for authentication method {method}"
        )
        self.method = method


class ScramLogin:
    """``answer`` each Authentication message's body; scramp.ScramException when the
    server's proof does not verify, wire.ProtocolError when it offers no SCRAM-SHA-256."""

    def __init__(self, user: str, password: str) -> None:
        self._user = user
        self._password = password
        self._client: scramp.ScramClient | None = None
        self.proven = False

    def answer(self, body: bytes) -> bytes | None:
        """What to send back (maybe nothing: b""); None once the login is complete."""
        code = wire.int32(body, 0)
        if code == 0:
            if not self.proven:
                raise LoginRefused(None)
            return None
        if code == 10 and self._client is None:
            if f"{MECHANISM}\0".encode() not in body[4:]:
                raise wire.ProtocolError(f"the server offers no {MECHANISM}")
            self._client = scramp.ScramClient([MECHANISM], self._user, self._password)
            first = self._client.get_client_first().encode()
            return wire.message(b"p", wire.cstring(MECHANISM) + _INT32.pack(len(first)) + first)
        if code == 11 and self._client is not None and not self.proven:
            server_first = body[4:].decode()
            iterations = _iterations(server_first)
            if iterations > MAX_ITERATIONS:
                # each is a hash: two billion would hold the caller for minutes
                raise wire.ProtocolError(
                    f"the server asks for {iterations} SCRAM iterations (at most "
                    f"{MAX_ITERATIONS} are done)"
                )
            self._client.set_server_first(server_first)
            return wire.message(b"p", self._client.get_client_final().encode())
        if code == 12 and self._client is not None and not self.proven:
            self._client.set_server_final(body[4:].decode())  # raises unless the proof holds
            self.proven = True
            return b""
        raise LoginRefused(code)
