"""Leases and audit records (SQLAlchemy Core; SQLite in WAL mode by default). The few
statements every issuance runs go to the driver's cursor directly (driver_sql.py).

Every committed transaction is on stable storage when ``commit`` returns (SQLite
``synchronous=FULL``; PostgreSQL never with ``synchronous_commit=off``): a password leaves
the broker only after its lease and audit records are, so a power cut cannot lose the
record of a session someone holds. A store that cannot be read or written raises
``StoreUnavailable`` (the API's 503), whatever the driver's error class.

A lease is written *before* its database user is created (state ``creating``), so a crash
at any step leaves a row the reaper can finish: it revokes every lease that is due,
including half-created ones. Audit records are appended in the same transaction as the
state change they describe, never updated, and each carries the hash of the previous one.
"""

from __future__ import annotations

from dbaccess.broker.store.audit_chain import GENESIS, AuditTrail, record_hash
from dbaccess.broker.store.database import WRITE_LOCK_KEY, Database, upgrade
from dbaccess.broker.store.identity_keys import IdentityKeys
from dbaccess.broker.store.leasing import Leasing, due_cause
from dbaccess.broker.store.outbox import Outbox
from dbaccess.broker.store.requests import Requests
from dbaccess.broker.store.reviews import Reviews
from dbaccess.broker.store.rows import (
    ApprovalRequest,
    AuditRecord,
    CapReached,
    Caps,
    Conflict,
    Lease,
    StoreUnavailable,
)
from dbaccess.broker.store.schema import (
    LIVE_STATES,
    UTCDateTime,
    approval_requests,
    audit,
    identity_keys,
    leases,
    metadata,
    notifications,
    statement_blocks,
    statement_edits,
    statement_heads,
    store_probe,
)
from dbaccess.broker.store.statement_chain import Statements


class Store(Reviews, Requests, Outbox, IdentityKeys, Statements):
    """The broker's state. Several broker processes may share one store (PostgreSQL, or
    SQLite on one host): writes are serialised by the database itself (``BEGIN IMMEDIATE``
    on SQLite, a transaction-scoped advisory lock on PostgreSQL), so the audit chain has
    one order, and leases are claimed before revocation so no two replicas revoke one.

    One class over one module per aggregate (leasing.py, requests.py, reviews.py,
    outbox.py, identity_keys.py, statement_chain.py), each built on audit_chain.py, built on
    database.py."""


__all__ = [
    "ApprovalRequest",
    "AuditRecord",
    "AuditTrail",
    "CapReached",
    "Caps",
    "Conflict",
    "Database",
    "GENESIS",
    "IdentityKeys",
    "LIVE_STATES",
    "Lease",
    "Leasing",
    "Outbox",
    "Requests",
    "Reviews",
    "Statements",
    "Store",
    "StoreUnavailable",
    "UTCDateTime",
    "WRITE_LOCK_KEY",
    "record_hash",
    "approval_requests",
    "audit",
    "due_cause",
    "identity_keys",
    "leases",
    "metadata",
    "notifications",
    "statement_blocks",
    "statement_edits",
    "statement_heads",
    "store_probe",
    "upgrade",
]
