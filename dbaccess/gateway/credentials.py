"""The two credentials of a gateway session, and why neither is ever stored.

- The **session secret** is what the client logs in to the gateway with. The broker makes
  it, hands it to the client once, and keeps only its SCRAM verifier (the lease's
  ``gateway_verifier``), which cannot log anyone in, bound by a MAC under the gateway key
  to the lease's user, target, role and expiry (``bind_verifier``): one written into the
  store by anyone but the broker is refused, and so is an expiry moved by anyone but the
  broker (a renewal binds it again).
- The **upstream password** is the session user's password in the database. It is derived,
  HMAC-SHA-256 of the lease id under the key the broker and every gateway share
  (``[gateway] key_env``/``key_file``): the broker sets it when it creates the user, a
  gateway recomputes it when the client arrives. The store, its backups and the client
  never hold it; without the key the store's lease ids are worth nothing.

A user name no session has is answered with a **mock salt** (``mock_salt``), also under
the key: the same from every gateway process and across restarts, like a real lease's.
"""

from __future__ import annotations

import base64
import hmac
import secrets
from datetime import datetime

from dbaccess.gateway.sessions import ScramVerifier

_CONTEXT = b"dbaccess gateway upstream password v1\x00"


def upstream_password(key: str, lease_id: str) -> str:
    """The session user's database password for ``lease_id``: 256 bits, URL-safe ASCII."""
    if not key:
        raise ValueError("the gateway key is empty")
    digest = hmac.digest(key.encode(), _CONTEXT + lease_id.encode(), "sha256")
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def new_session_secret() -> tuple[str, ScramVerifier]:
    """A fresh client secret (192 bits) and the verifier the store keeps instead."""
    secret = secrets.token_urlsafe(24)
    return secret, ScramVerifier.for_secret(secret)


_BINDING = b"dbaccess gateway lease binding v2\x00"


def _binding_mac(
    key: str, verifier: str, db_user: str, target: str, role: str, expires_at: datetime
) -> str:
    # the expiry as whole epoch seconds: the broker rounds it up to a second, and the form
    # does not depend on how a store gives back its time zone
    expiry = str(int(expires_at.timestamp()))
    fields = "\x00".join((db_user, target, role, expiry, verifier)).encode()
    digest = hmac.digest(key.encode(), _BINDING + fields, "sha256")
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def bind_verifier(
    key: str,
    verifier: ScramVerifier,
    db_user: str,
    target: str,
    role: str,
    expires_at: datetime,
) -> str:
    """What the lease keeps: the verifier and a MAC, under the gateway key, tying it to the
    session's user, target, role and expiry. Whoever can write the store cannot put a
    verifier of their own on someone's lease, move a lease to a role with fewer
    guardrails, or keep a session open past its end."""
    text = str(verifier)
    return f"{text}#{_binding_mac(key, text, db_user, target, role, expires_at)}"


def bound_verifier(
    key: str, stored: str, db_user: str, target: str, role: str, expires_at: datetime
) -> ScramVerifier | None:
    """The verifier ``stored`` holds, if its MAC matches this lease; else None."""
    text, sep, mac = stored.rpartition("#")
    expected = _binding_mac(key, text, db_user, target, role, expires_at)
    if not sep or not hmac.compare_digest(mac.encode(), expected.encode()):
        return None
    try:
        return ScramVerifier.parse(text)
    except ValueError:
        return None


def rebind_verifier(
    key: str,
    stored: str,
    db_user: str,
    target: str,
    role: str,
    expires_at: datetime,
    new_expires_at: datetime,
) -> str | None:
    """A renewal's binding: the same verifier bound to the new expiry, if ``stored`` is
    one the broker bound (a verifier edited into the store is not laundered); else None."""
    verifier = bound_verifier(key, stored, db_user, target, role, expires_at)
    if verifier is None:
        return None
    return bind_verifier(key, verifier, db_user, target, role, new_expires_at)


_MOCK_SALT = b"dbaccess gateway mock salt v1\x00"


def mock_salt(key: str, user: str) -> bytes:
    """The SCRAM salt shown for ``user`` when no session has that name: 16 bytes, like a
    real verifier's, and stable under the key. A salt random per process would tell a
    client that asks the processes behind one address (SO_REUSEPORT) in turn which names
    are real: a real one's salt comes from the store and never changes."""
    if not key:
        raise ValueError("the gateway key is empty")
    return hmac.digest(key.encode(), _MOCK_SALT + user.encode(), "sha256")[:16]
