"""TLS from the gateway to the database, as the target's ``sslmode`` says, with libpq's
meanings (https://www.postgresql.org/docs/current/libpq-ssl.html), so a target reads the
same whether the broker or the gateway connects to it:

- ``disable``: plain TCP.
- ``allow``: plain TCP. libpq tries plain first and retries in TLS only when the server
  refuses it; the gateway does not retry (a database that admits only TLS wants
  ``prefer`` or stronger).
- ``prefer``: SSLRequest; TLS when the server offers it, unverified; plain TCP on 'N'.
- ``require``: SSLRequest; TLS or nothing, unverified, unless ``sslrootcert`` names a CA,
  when it is ``verify-ca`` (as libpq does with a root certificate file).
- ``verify-ca``: TLS or nothing, the certificate must chain to ``sslrootcert`` (default:
  the system's trust store); ``verify-full``: and name the target's host.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

from dbaccess.errors import ConfigError


@dataclass(frozen=True)
class UpstreamTls:
    context: ssl.SSLContext | None  # None: plain TCP, no SSLRequest
    required: bool  # False: plain TCP when the server answers 'N' (prefer)


PLAIN = UpstreamTls(None, False)


def upstream_tls(sslmode: str, cafile: Path | None, what: str) -> UpstreamTls:
    """The TLS a connection to the target ``what`` uses; ConfigError for a CA file that
    cannot be read."""
    if sslmode in ("disable", "allow"):
        return PLAIN
    verify = sslmode in ("verify-ca", "verify-full") or (sslmode == "require" and cafile)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if verify:
        try:
            if cafile is None:
                context.load_default_certs(ssl.Purpose.SERVER_AUTH)
            else:
                context.load_verify_locations(cafile=str(cafile))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"{what}: cannot read sslrootcert {cafile}: {exc}",
                hint="sslrootcert names a PEM file of the CA that signed the database's "
                "certificate",
            ) from None
        context.check_hostname = sslmode == "verify-full"
        context.verify_mode = ssl.CERT_REQUIRED
    else:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return UpstreamTls(context, required=sslmode != "prefer")


def tls_failure(exc: OSError) -> str:
    """What a failed handshake to the database says, for the client's 08006: the
    verification's reason, OpenSSL's, or the socket's (no secret: none was sent yet)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate verify failed ({exc.verify_message})"
    if isinstance(exc, ssl.SSLError):
        return str(exc.reason or exc.strerror or type(exc).__name__)
    return exc.strerror or str(exc) or type(exc).__name__
