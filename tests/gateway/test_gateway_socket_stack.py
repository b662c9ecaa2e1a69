"""A whole stack whose gateway reaches its target by PostgreSQL's Unix socket
(``gateway_socket``): the broker provisions over TCP, the gateway's sessions go by the
socket, and the session users have no TCP path into the database at all."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from dbaccess.sandbox.secret_service import SecretService
from dbaccess.sandbox.stack import Stack
from tests.e2e.conftest import Cli, logged_in_cli

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def socket_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with Stack(
        tmp_path_factory.mktemp("gwsock"), reconcile_interval="1h", gateway=True,
        gateway_socket=True,
    ) as stack:  # fmt: skip
        yield stack


def test_exec_through_a_gateway_that_reaches_the_database_by_its_socket(
    socket_stack: Stack, secret_service: SecretService
) -> None:
    cli: Cli = logged_in_cli(socket_stack, secret_service)
    result = cli.run(
        "exec", "vault", "--role", "readonly", "--",
        "psql", "-At", "-c", "select current_user, count(*) from orders",
        "-c", "select client_addr is null from pg_stat_activity where pid = pg_backend_pid()",
        "-c", "select count(*) from pg_stat_activity where usename = current_user"
        " and client_addr is not null",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    who, by_socket, over_tcp = result.stdout.splitlines()
    user, count = who.split("|")
    assert user.startswith("gw_alice_") and count == "3"
    assert (by_socket, over_tcp) == ("t", "0")  # the database saw a Unix-socket client
    assert not cli.role_exists(user)  # and exec's session is revoked when psql exits
