"""The database's Unix socket (``gateway_socket``), as the gateway trusts it. There is no
TLS on a Unix socket to prove who listens there, and a path proves little (a directory
made after a reboot, /tmp, a shared volume): whoever else put a socket there could relay
the session's SCRAM login to the real server and read every statement and result. So, as
libpq's ``requirepeer`` does, each connection is checked after it is made: the kernel's
word for the user the listening process runs as (SO_PEERCRED) must be the target's
``gateway_socket_owner``. Race-free, and indifferent to the directory's layout."""

from __future__ import annotations

import pwd
import socket
import struct
from typing import Any

_UCRED = struct.Struct("iII")  # struct ucred: pid, uid, gid


def owner_uid(owner: str) -> int:
    """A user name or a numeric uid, as the gateway's host knows it; KeyError if unknown."""
    if owner.isdigit():
        return int(owner)
    return pwd.getpwnam(owner).pw_uid


def not_served_by(sock: Any, uid: int) -> str | None:
    """Why the connected Unix socket ``sock`` is not served by ``uid``, or None."""
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    except (OSError, AttributeError) as exc:  # not Linux: no way to tell
        return f"the user serving the socket cannot be read ({type(exc).__name__})"
    peer = _UCRED.unpack(raw)[1]
    if peer != uid:
        return f"the socket is served by uid {peer}, not by the database's uid {uid}"
    return None
