"""What a client learns from a gateway before it proves anything: the SCRAM salt and
iteration count of the server-first message, by a raw socket (no client library hides it)."""

from __future__ import annotations

import base64
import secrets
import socket
import ssl
import struct

_INT32 = struct.Struct("!i")


def _read_message(sock: socket.socket) -> tuple[bytes, bytes]:
    head = _exactly(sock, 5)
    return head[:1], _exactly(sock, _INT32.unpack(head[1:])[0] - 4)


def _exactly(sock: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            raise ConnectionError(f"closed after {len(data)} of {count} bytes")
        data += chunk
    return data


def scram_first(
    port: int, user: str, database: str = "postgres", tls: ssl.SSLContext | None = None
) -> tuple[bytes, int]:
    """(salt, iterations) the gateway on 127.0.0.1:``port`` answers ``user`` with."""
    sock: socket.socket = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        if tls is not None:
            sock.sendall(_INT32.pack(8) + _INT32.pack(80877103))  # SSLRequest
            assert _exactly(sock, 1) == b"S"
            sock = tls.wrap_socket(sock, server_hostname="127.0.0.1")
        params = b"".join(k + b"\0" + v.encode() + b"\0" for k, v in
                          ((b"user", user), (b"database", database))) + b"\0"  # fmt: skip
        sock.sendall(_INT32.pack(8 + len(params)) + _INT32.pack(196608) + params)
        kind, body = _read_message(sock)
        assert kind == b"R" and _INT32.unpack(body[:4])[0] == 10, (kind, body)
        first = f"n,,n=,r={secrets.token_urlsafe(18)}".encode()
        payload = b"SCRAM-SHA-256\0" + _INT32.pack(len(first)) + first
        sock.sendall(b"p" + _INT32.pack(4 + len(payload)) + payload)
        kind, body = _read_message(sock)
        assert kind == b"R" and _INT32.unpack(body[:4])[0] == 11, (kind, body)
        fields = dict(item.split("=", 1) for item in body[4:].decode().split(","))
        return base64.b64decode(fields["s"]), int(fields["i"])
    finally:
        sock.close()
