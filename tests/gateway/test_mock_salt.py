"""An unknown user name gets a SCRAM salt that looks like a real one and stays put: the same
from every gateway sharing the key (several processes behind one address, restarts), so
asking the processes in turn does not tell which names are real."""

from __future__ import annotations

import asyncio

from dbaccess.gateway.postgres.server import GatewayConfig, serve
from dbaccess.gateway.records import BatchingWriter, MemorySink
from dbaccess.gateway.sessions import GatewaySession, MemoryDirectory, ScramVerifier, Upstream
from tests.gateway.scram_probe import scram_first

KEY = "a gateway key shared by every process"


def _salts(keys: list[str | None], users: list[str]) -> list[list[tuple[bytes, int]]]:
    """For each gateway (one per key), what it answers each user with."""

    async def main() -> list[list[tuple[bytes, int]]]:
        directory = MemoryDirectory()
        directory.add(
            GatewaySession(
                lease_id="lease-real",
                person="alice@example.com",
                target="pg",
                role="readonly",
                user="alice_real",
                verifier=ScramVerifier.for_secret("s3cret-of-alice"),
                upstream=Upstream("127.0.0.1", 1, "postgres", "u", "p"),
            )
        )
        writer = BatchingWriter(MemorySink())
        gateways = [
            await serve(directory, writer, GatewayConfig(mock_salt_key=key)) for key in keys
        ]
        try:
            return [
                [await asyncio.to_thread(scram_first, gateway.address[1], user) for user in users]
                for gateway in gateways
            ]
        finally:
            for gateway in gateways:
                await gateway.close()
            writer.close()

    return asyncio.run(main())


def test_gateways_with_one_key_show_an_unknown_user_the_same_salt() -> None:
    first, second = _salts([KEY, KEY], ["mallory_guess", "eve_guess"])
    assert first == second  # another process, or the same one restarted
    assert first[0][0] != first[1][0]  # but not one salt for every name


def test_the_mock_salt_has_a_real_ones_shape_and_does_not_repeat_itself() -> None:
    [[real, mock, mock_again]] = _salts([KEY], ["alice_real", "mallory_guess", "mallory_guess"])
    assert len(mock[0]) == len(real[0]) == 16
    assert mock[1] == real[1] == 4096
    assert mock == mock_again


def test_another_key_gives_another_salt() -> None:
    first, second = _salts([KEY, "another gateway key"], ["mallory_guess"])
    assert first != second  # not guessable without the key
