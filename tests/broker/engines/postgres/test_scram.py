import base64

import psycopg
import pytest

from dbaccess.broker.engines.postgres.scram import scram_sha256_verifier


def test_matches_libpq_for_the_same_salt() -> None:
    # libpq computes the verifier locally (no server needed for the algorithm)
    pgconn = psycopg.pq.PGconn.connect(b"")  # a dead connection object is enough
    theirs = pgconn.encrypt_password(b"s3cret-Pa55", b"dba_x_1", b"scram-sha-256").decode()
    header, keys = theirs.split("$", 1)[1].split("$")[0], theirs
    iterations, salt = header.split(":")
    ours = scram_sha256_verifier("s3cret-Pa55", base64.b64decode(salt), int(iterations))
    assert ours == keys


def test_fresh_salt_each_time() -> None:
    assert scram_sha256_verifier("pw") != scram_sha256_verifier("pw")


def test_refuses_what_it_cannot_normalise() -> None:
    with pytest.raises(ValueError):
        scram_sha256_verifier("pässword")
