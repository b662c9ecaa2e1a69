"""SCRAM-SHA-256 verifiers (RFC 5802/7677) as PostgreSQL stores them.

Computed here with hashlib rather than libpq's ``PQencryptPasswordConn``: the result is
the same (a test checks it against libpq), but ``hashlib.pbkdf2_hmac`` releases the GIL
during its 4,096 iterations, so concurrent session requests do not queue behind each other.
Session passwords are URL-safe ASCII, for which SASLprep changes nothing.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

ITERATIONS = 4096  # PostgreSQL's default (scram_iterations)


def scram_sha256_verifier(
    password: str, salt: bytes | None = None, iterations: int = ITERATIONS
) -> str:
    if not password.isascii():
        raise ValueError("only ASCII passwords (no SASLprep here)")
    salt = salt if salt is not None else os.urandom(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.digest(salted, b"Server Key", "sha256")

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"
