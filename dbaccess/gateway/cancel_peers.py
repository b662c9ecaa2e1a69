"""Cancels between gateway processes that share one listening address on one host
(SO_REUSEPORT): the kernel hands a client's CancelRequest, a connection of its own, to any
of them, most often not to the one serving the session it cancels (engine-neutral).

Each process binds a Unix datagram socket in Linux's abstract namespace, named after the
listening address and its pid, and puts its pid in the keys it issues. A process given a
key with another pid sends that process the key's tag: an HMAC of the key under the
gateway key, which every process behind the address shares. The owner looks the tag up
among the keys it issued and forwards the cancel; anything else is dropped, as the
database drops a wrong key, without an answer. The key itself never leaves the process
that issued it: whoever else binds a name or sends to one learns or forges nothing.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
import socket
import struct
from collections.abc import Callable

log = logging.getLogger(__name__)

TAG_SIZE = 16
_KEY = struct.Struct("!ii")


class CancelPeers:
    def __init__(self, key: str, address: tuple[str, int], deliver: Callable[[bytes], None]):
        self._key = hashlib.sha256(b"dbaccess gateway cancel\0" + key.encode()).digest()
        self._prefix = f"\0dbaccess-gateway-cancel/{address[0]}:{address[1]}/"
        self._deliver = deliver
        self._socket: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.pid = os.getpid()

    def open(self, loop: asyncio.AbstractEventLoop) -> bool:
        """Bind this process's name; False (logged) where that cannot be done: cancels
        then reach a session only through the process serving it."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            sock.bind(self._prefix + str(self.pid))
        except OSError as exc:  # not Linux, or the name taken
            sock.close()
            log.warning(
                "gateway: cancels from the other processes on this address cannot reach "
                "this one (%s)",
                exc.strerror or type(exc).__name__,
            )
            return False
        sock.setblocking(False)
        self._socket, self._loop = sock, loop
        loop.add_reader(sock.fileno(), self._readable)
        return True

    @property
    def active(self) -> bool:
        return self._socket is not None

    def tag(self, pid: int, secret: int) -> bytes:
        return hmac.digest(self._key, _KEY.pack(pid, secret), "sha256")[:TAG_SIZE]

    def send(self, pid: int, secret: int) -> None:
        """Hand a key issued by process ``pid`` on to it (fire and forget)."""
        if self._socket is None or pid == self.pid or pid <= 0:
            return
        try:
            self._socket.sendto(self.tag(pid, secret), self._prefix + str(pid))
        except OSError as exc:  # no such process on this address, or its queue full
            log.debug("gateway: cancel for process %d not handed on (%s)", pid, exc)

    def _readable(self) -> None:
        assert self._socket is not None
        while True:
            try:
                data = self._socket.recv(64)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            if len(data) == TAG_SIZE:
                self._deliver(data)

    def close(self) -> None:
        sock, self._socket = self._socket, None
        if sock is not None:
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(sock.fileno())
            sock.close()
