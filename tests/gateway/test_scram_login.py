"""The client side of the SCRAM-SHA-256 login that the gateway (towards the database) and
the tunnel (towards the gateway) share: against scramp's server side, the login ends only
after the server's proof, and every other way a server might answer is refused."""

from __future__ import annotations

import struct

import pytest
import scramp

from dbaccess.gateway.postgres import wire
from dbaccess.gateway.postgres.scram_login import LoginRefused, ScramLogin

MECHANISM = scramp.ScramMechanism("SCRAM-SHA-256")


def auth(code: int, data: bytes = b"") -> bytes:
    return struct.pack("!i", code) + data


class Server:
    """scramp's server side, speaking PostgreSQL's Authentication messages."""

    def __init__(self, password: str) -> None:
        info = MECHANISM.make_auth_info(password, iteration_count=4096)
        self.server = MECHANISM.make_server(lambda _user: info)

    def first(self, reply: bytes) -> bytes:
        # SASLInitialResponse: mechanism, length, client-first
        _name, offset = wire.read_cstring(reply[5:], 0)
        self.server.set_client_first(reply[5 + offset + 4 :].decode())
        return auth(11, self.server.get_server_first().encode())

    def final(self, reply: bytes) -> bytes:
        self.server.set_client_final(reply[5:].decode())
        return auth(12, self.server.get_server_final().encode())


def test_a_login_completes_only_after_the_servers_proof() -> None:
    server = Server("s3cret")
    login = ScramLogin("alice", "s3cret")
    first = login.answer(auth(10, b"SCRAM-SHA-256\0\0"))
    assert first is not None and first[:1] == b"p" and b"SCRAM-SHA-256\0" in first
    final = login.answer(server.first(first))
    assert final is not None and final[:1] == b"p"
    assert login.answer(server.final(final)) == b""  # the proof: nothing to send
    assert login.proven
    assert login.answer(auth(0)) is None  # and only now is the OK the end


def test_an_ok_without_the_servers_proof_is_refused() -> None:
    with pytest.raises(LoginRefused) as at_once:
        ScramLogin("alice", "s3cret").answer(auth(0))  # no authentication at all
    assert at_once.value.method is None
    login = ScramLogin("alice", "s3cret")
    login.answer(auth(10, b"SCRAM-SHA-256\0\0"))
    with pytest.raises(LoginRefused):  # half-way, then OK
        login.answer(auth(0))


@pytest.mark.parametrize("method", [3, 5, 7, 9, 2])  # cleartext, md5, GSS, SSPI, Kerberos
def test_other_methods_are_refused_and_the_password_never_sent(method: int) -> None:
    with pytest.raises(LoginRefused) as refused:
        ScramLogin("alice", "s3cret").answer(auth(method, b"salt"))
    assert refused.value.method == method
    assert "s3cret" not in str(refused.value)


def test_a_server_without_scram_sha_256_is_refused() -> None:
    with pytest.raises(wire.ProtocolError):
        ScramLogin("alice", "s3cret").answer(auth(10, b"SCRAM-SHA-256-PLUS\0\0"))


def test_a_server_that_does_not_know_the_password_fails_its_proof() -> None:
    impostor = Server("something else")  # e.g. a machine in the middle
    login = ScramLogin("alice", "s3cret")
    first = login.answer(auth(10, b"SCRAM-SHA-256\0\0"))
    assert first is not None
    final = login.answer(impostor.first(first))
    assert final is not None
    with pytest.raises(scramp.ScramException):
        impostor.final(final)  # the impostor cannot check the client's proof ...
    forged = auth(12, b"v=" + b"A" * 44)
    with pytest.raises(scramp.ScramException):
        login.answer(forged)  # ... and cannot make one the client accepts
    with pytest.raises(LoginRefused):
        login.answer(auth(0))


def test_messages_out_of_order_are_refused() -> None:
    with pytest.raises(LoginRefused):
        ScramLogin("alice", "s3cret").answer(auth(11, b"r=x,s=y,i=4096"))  # before SASL
    with pytest.raises(LoginRefused):
        ScramLogin("alice", "s3cret").answer(auth(12, b"v=xyz"))


@pytest.mark.parametrize("count", ["2000000000", "1000001", "99999999999999999999", "-1", ""])
def test_a_server_asking_for_too_many_iterations_is_refused_before_any_hash(count: str) -> None:
    # each iteration is a hash on the caller's thread (the gateway's event loop): two
    # billion of them would stop every other connection for minutes
    login = ScramLogin("alice", "secret")
    login.answer(auth(10, b"SCRAM-SHA-256\0\0"))
    with pytest.raises(wire.ProtocolError, match="SCRAM iterations"):
        login.answer(auth(11, f"r=abc,s=c2FsdA==,i={count}".encode()))


def test_the_usual_iteration_counts_log_in() -> None:
    server = Server("secret")
    login = ScramLogin("alice", "secret")
    reply = login.answer(auth(10, b"SCRAM-SHA-256\0\0"))
    assert reply is not None
    reply = login.answer(server.first(reply))  # 4096 iterations, PostgreSQL's default
    assert reply is not None
    assert login.answer(server.final(reply)) == b""
