"""Cancels between gateway processes that share one listening address on one host
(SO_REUSEPORT): the kernel hands a client's CancelRequest, a connection of its own, to any
of them, most often not to the one serving the session it cancels (engine-neutral).

Each process takes a random slot (0-1023) and binds a Unix datagram socket in Linux's
abstract namespace named after the listening address and the slot. The low 10 bits of the
pid field of each key it issues are its slot; the other 21, and the 32 of the secret, are
random (53 random bits a key: a client that knows its own key learns the slot, nothing
that helps guess another's). A process given a key of another slot sends that slot the
key's tag: an HMAC of the key under the gateway key, which every process behind the
address shares. The owner looks the tag up among the keys it issued and forwards the
cancel; anything else is dropped, as the database drops a wrong key, without an answer.
The key itself never leaves the process that issued it, and a datagram from another
user id is dropped unread (abstract names have no file permissions to keep others out).
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import hmac
import logging
import os
import secrets
import socket
import struct
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

TAG_SIZE = 16
SLOT_BITS = 10
SLOTS = 1 << SLOT_BITS
MAX_READS = 64  # datagrams read per wake-up: a flood cannot hold the event loop
UNSENT_LOG_INTERVAL = 10.0  # seconds between warnings of hand-offs a full queue dropped
_KEY = struct.Struct("!ii")
_CREDENTIALS = struct.Struct("iII")  # struct ucred: pid, uid, gid


class CancelPeers:
    def __init__(self, key: str, address: tuple[str, int], deliver: Callable[[bytes], None]):
        self._key = hashlib.sha256(b"dbaccess gateway cancel\0" + key.encode()).digest()
        self._prefix = f"\0dbaccess-gateway-cancel/{address[0]}:{address[1]}/"
        self._deliver = deliver
        self._socket: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.slot = -1
        self._uid = os.getuid()  # the kernel stamps a sender's real uid
        self._unsent_logged = -UNSENT_LOG_INTERVAL

    def open(self, loop: asyncio.AbstractEventLoop) -> bool:
        """Bind a free slot's name; False (logged) where that cannot be done: cancels then
        reach a session only through the process serving it."""
        failure = "no free slot"
        for _ in range(4 * SLOTS // 64):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            slot = secrets.randbelow(SLOTS)
            try:
                # before the bind: no datagram queued without its sender's credentials
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
                sock.bind(self._prefix + str(slot))
            except OSError as exc:  # the slot taken (another process), or not Linux
                sock.close()
                failure = exc.strerror or type(exc).__name__
                if exc.errno == errno.EADDRINUSE:
                    continue
                break
            sock.setblocking(False)
            self._socket, self._loop, self.slot = sock, loop, slot
            loop.add_reader(sock.fileno(), self._readable)
            return True
        log.warning(
            "gateway: cancels from the other processes on this address cannot reach this one (%s)",
            failure,
        )
        return False

    def new_pid_field(self) -> int:
        """A key's pid field: random, with this process's slot in its low bits (> 0)."""
        while True:
            value = (secrets.randbits(31 - SLOT_BITS) << SLOT_BITS) | self.slot
            if value:
                return value

    def tag(self, pid: int, secret: int) -> bytes:
        return hmac.digest(self._key, _KEY.pack(pid, secret), "sha256")[:TAG_SIZE]

    def send(self, pid: int, secret: int) -> None:
        """Hand a key issued by another process on to it (fire and forget)."""
        slot = pid & (SLOTS - 1)
        if self._socket is None or slot == self.slot or pid <= 0:
            return
        try:
            self._socket.sendto(self.tag(pid, secret), self._prefix + str(slot))
        except OSError as exc:  # no process in that slot, or its queue full
            if exc.errno == errno.EAGAIN:  # a peer that is there but does not keep up
                now = time.monotonic()
                if now - self._unsent_logged >= UNSENT_LOG_INTERVAL:
                    self._unsent_logged = now
                    log.warning("gateway: a cancel for another process was dropped (%s)", exc)
            else:
                log.debug("gateway: cancel for slot %d not handed on (%s)", slot, exc)

    def _readable(self) -> None:
        sock = self._socket
        if sock is None:
            return
        for _ in range(MAX_READS):
            try:
                data, ancillary, _, _ = sock.recvmsg(64, socket.CMSG_SPACE(_CREDENTIALS.size))
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            if len(data) == TAG_SIZE and self._from_our_user(ancillary):
                self._deliver(data)

    def _from_our_user(self, ancillary: list[tuple[int, int, bytes]]) -> bool:
        for level, kind, value in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                if len(value) < _CREDENTIALS.size:
                    return False
                pid, uid, _ = _CREDENTIALS.unpack_from(value)
                # pid 0: a sender the kernel could not name (another namespace)
                return bool(pid) and uid == self._uid
        return False

    def close(self) -> None:
        sock, self._socket = self._socket, None
        if sock is not None:
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(sock.fileno())
            sock.close()
