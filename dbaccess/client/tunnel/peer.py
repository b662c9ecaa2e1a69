"""Who is at the other end of a loopback connection to the tunnel (Linux: /proc/net/tcp).

The local secret alone does not keep another user of the machine out: a GUI that is told
a port someone else took first (the tunnel was down, or started on another port) hands
its secret to that listener, and SCRAM without channel binding can be relayed. The socket
table names the user owning each end, so the tunnel serves its own user only.
"""

from __future__ import annotations

import ipaddress
import socket
from pathlib import Path

TABLES = {socket.AF_INET: Path("/proc/net/tcp"), socket.AF_INET6: Path("/proc/net/tcp6")}


def _address(text: str) -> tuple[str, int]:
    """``0100007F:3039`` (as /proc/net/tcp writes it: the address's 32-bit words in the
    machine's byte order, the port in hex) as ("127.0.0.1", 12345)."""
    hex_address, _, hex_port = text.partition(":")
    raw = bytes.fromhex(hex_address)
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    if socket.htonl(1) == 1:  # a big-endian machine writes them as they are
        words = raw
    address = ipaddress.ip_address(words)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return str(address), int(hex_port, 16)


def _normal(address: tuple[object, ...]) -> tuple[str, int]:
    host = ipaddress.ip_address(str(address[0]).split("%")[0])
    if isinstance(host, ipaddress.IPv6Address) and host.ipv4_mapped is not None:
        host = host.ipv4_mapped
    return str(host), int(str(address[1]))


NOT_FOUND = -1  # the tables were read and hold no such connection (it has gone already)


def peer_uid(sock: socket.socket) -> int | None:
    """The uid owning the client's end of ``sock`` (a connection accepted on loopback);
    NOT_FOUND when the table does not hold it; None where the system has no such table
    (not Linux: there, the local secret is all that keeps others out)."""
    try:
        ours = _normal(sock.getsockname())
        theirs = _normal(sock.getpeername())
    except (OSError, ValueError):
        return NOT_FOUND
    read = False
    for table in TABLES.values():
        try:
            lines = table.read_text().splitlines()[1:]
        except OSError:
            continue
        read = True
        for line in lines:
            fields = line.split()
            if len(fields) < 8:
                continue
            try:
                # the client's socket: its local address is our peer, its remote is us
                if _address(fields[1]) == theirs and _address(fields[2]) == ours:
                    return int(fields[7])
            except ValueError:
                continue
    return NOT_FOUND if read else None
