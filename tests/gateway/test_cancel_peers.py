"""The processes on one address hand each other cancels (gateway/cancel_peers.py): a tag
reaches the slot it is sent to, and a datagram from another local user is dropped."""

from __future__ import annotations

import asyncio
import os
import pwd
import socket

import pytest

from dbaccess.gateway.cancel_peers import SLOTS, TAG_SIZE, CancelPeers


def _pair() -> tuple[CancelPeers, CancelPeers, list[bytes], asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    got: list[bytes] = []
    a = CancelPeers("k" * 40, ("127.0.0.1", 1), got.append)
    b = CancelPeers("k" * 40, ("127.0.0.1", 1), lambda tag: None)
    assert a.open(loop) and b.open(loop)
    assert a.slot != b.slot  # a taken slot is not taken twice
    return a, b, got, loop


def _settle(loop: asyncio.AbstractEventLoop) -> None:
    loop.run_until_complete(asyncio.sleep(0.05))


def test_a_key_of_another_slot_reaches_that_slot_as_its_tag() -> None:
    a, b, got, loop = _pair()
    try:
        pid = a.new_pid_field()
        assert pid > 0 and pid % SLOTS == a.slot
        b.send(pid, 12345)  # b was given a's key
        _settle(loop)
        assert got == [a.tag(pid, 12345)] and len(got[0]) == TAG_SIZE
        a.send(pid, 12345)  # its own slot: nothing to hand on
        _settle(loop)
        assert len(got) == 1
    finally:
        a.close(), b.close(), loop.close()


@pytest.mark.skipif(os.geteuid() != 0 and not os.environ.get("CI"), reason="setuid needs root")
def test_a_datagram_from_another_user_is_dropped() -> None:
    a, b, got, loop = _pair()
    try:
        tag = a.tag(a.new_pid_field(), 7)
        name = f"\0dbaccess-gateway-cancel/127.0.0.1:1/{a.slot}"
        child = os.fork()
        if child == 0:  # another local user sends a well-formed tag
            try:
                os.setuid(pwd.getpwnam("nobody").pw_uid)
                with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as theirs:
                    theirs.sendto(tag, name)
            finally:
                os._exit(0)
        os.waitpid(child, 0)
        _settle(loop)
        assert got == []
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as ours:
            ours.sendto(tag, name)
        _settle(loop)
        assert got == [tag]
    finally:
        a.close(), b.close(), loop.close()
