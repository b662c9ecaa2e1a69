"""Crash injection for the revocation guarantees' tests.

``DBACCESS_BROKER_FAILPOINT=name`` makes the broker SIGKILL itself when it reaches the
point of that name — the only honest way to prove that a crash between two steps leaves
nothing behind. Unset (always, in production) it costs one dict lookup.
"""

from __future__ import annotations

import os
import signal

ENV = "DBACCESS_BROKER_FAILPOINT"
POINTS = frozenset(
    {
        "issue.after_lease",  # lease written, user not created yet
        "issue.after_create",  # user created, lease not active yet
        "revoke.after_mark",  # lease marked revoking, user still there
        "revoke.after_drop",  # user dropped, lease not marked revoked yet
    }
)


def failpoint(name: str) -> None:
    assert name in POINTS, name
    if os.environ.get(ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
