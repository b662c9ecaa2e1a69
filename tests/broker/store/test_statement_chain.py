"""Statement records in the store: chained per session across batches and gateways,
tampering and deleted newest records caught at their seq, the seal written once into the
audit trail, records after the seal kept and flagged — on SQLite and a PostgreSQL store."""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from dbaccess.broker import reaper
from dbaccess.broker.cli import app
from dbaccess.broker.services.context import BrokerContext
from dbaccess.broker.services.sessions import SessionService
from dbaccess.broker.settings import load_settings
from dbaccess.broker.store import (
    Lease,
    Store,
    StoreUnavailable,
    statement_blocks,
    statement_heads,
)
from dbaccess.broker.store.audit_chain import GENESIS, raw_records, verify
from dbaccess.broker.store.statement_chain import RECORD_FIELDS
from dbaccess.gateway.records import BatchingWriter, StatementRecord
from dbaccess.gateway.store_sink import StoreSink
from dbaccess.sandbox.stack import Stack

NOW = datetime(2026, 12, 2, 12, 0, 0, 250000, tzinfo=UTC)


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'store.db'}"
    else:
        stack: Stack = request.getfixturevalue("stack")
        pg = stack.postgres
        database = f"store_{uuid.uuid4().hex[:8]}"
        with pg.connect() as admin:
            admin.execute(f'CREATE DATABASE "{database}"')
        url = (
            f"postgresql+psycopg://{pg.admin_user}:{pg.admin_password}@127.0.0.1:"
            f"{pg.port}/{database}"
        )
    opened = Store(url)
    yield opened
    opened.close()


def open_lease(store: Store, subject: str = "alice") -> Lease:
    lease = store.open_lease(
        now=NOW, subject=subject, email=None, target="demo", role="readonly",
        engine="postgres", db_user=f"dba_{uuid.uuid4().hex[:10]}", rule="dev",
        reason="look", ticket=None, expires_at=NOW + timedelta(hours=1), source="127.0.0.1",
    )  # fmt: skip
    return store.activate(lease, NOW)


def record(lease: Lease, n: int, **changes: object) -> StatementRecord:
    values: dict[str, object] = dict(
        lease_id=lease.id, person=lease.subject, target=lease.target, role=lease.role,
        kind="query", sql=f"SELECT {n}", params_policy="none", params=None,
        started=NOW + timedelta(seconds=n, microseconds=n), duration=0.000125 * n,
        rows=n, bytes_out=100 + n, bytes_in=0, sqlstate=None, status="completed",
        connection=1,
    )  # fmt: skip
    values.update(changes)
    return StatementRecord(**values)  # type: ignore[arg-type]


def end(store: Store, lease: Lease, at: datetime) -> None:
    """The lease revoked at ``at`` (as the reaper leaves it)."""
    with store.engine.begin() as conn:
        conn.execute(
            sa.update(
                sa.table("leases", sa.column("id"), sa.column("state"), sa.column("revoked_at"))
            )
            .where(sa.column("id") == lease.id)
            .values(state="revoked", revoked_at=at.replace(tzinfo=None))
        )


def test_a_chain_continues_across_batches_and_gateways(store: Store) -> None:
    alice, bob = open_lease(store), open_lease(store, "bob")
    first, second = StoreSink(store, "gw-a"), StoreSink(store, "gw-b")
    writer = BatchingWriter(first, max_batch=3, max_delay=0.01)
    for n in range(1, 8):
        writer.add(record(alice, n))
        if n % 2:
            writer.add(record(bob, n, kind="execute", params_policy="full", params=("1", None)))
    assert writer.flush()
    writer.close()
    second.write([record(alice, 8, status="refused", sqlstate="42501", rows=None)])
    second.write([record(bob, 9, kind="copy", bytes_in=4096)])

    page, more = store.statement_page(alice.id, after=0, limit=5)
    assert [r.seq for r in page] == [1, 2, 3, 4, 5] and more == 5
    rest, more = store.statement_page(alice.id, after=5, limit=5)
    assert [r.seq for r in rest] == [6, 7, 8] and more is None
    assert [r.sql for r in page + rest] == [f"SELECT {n}" for n in range(1, 9)]
    assert rest[-1].gateway == "gw-b" and page[0].gateway == "gw-a"
    assert rest[-1].status == "refused" and rest[-1].rows is None
    assert page[0].started == NOW + timedelta(seconds=1, microseconds=1)
    # stored in blocks (a batch's records of one session), each linked to the one before
    blocks = list({r.block.first_seq: r.block for r in page + rest}.values())
    assert len(blocks) > 2 and blocks[0].prev_hash == GENESIS
    assert all(b.prev_hash == a.hash for a, b in zip(blocks, blocks[1:], strict=False))
    assert [b.first_seq for b in blocks[1:]] == [a.last_seq + 1 for a in blocks[:-1]]
    bobs, _ = store.statement_page(bob.id)
    assert [r.seq for r in bobs] == [1, 2, 3, 4, 5]
    assert bobs[0].param_values() == ["1", None] and bobs[-1].bytes_in == 4096
    for lease, count in ((alice, 8), (bob, 5)):
        verdict = store.verify_statements(lease.id)
        assert verdict.ok and verdict.records == count == verdict.expected
        head = store.statement_head(lease.id)
        assert head is not None and head.count == count and head.sealed_at is None
    assert [v.lease_id for v in store.verify_all_statements()] == sorted([alice.id, bob.id])
    assert all(v.ok for v in store.verify_all_statements())


@pytest.mark.parametrize(
    "change",
    [
        "records = replace(records, 'SELECT 3', 'SELECT 1; DROP TABLE x')",
        "records = replace(records, ',3,103,', ',0,103,')",  # rows 3 -> 0
        "records = replace(records, '\"completed\"', '\"refused\"')",
        "gateway = 'elsewhere'",
        "subject = 'mallory'",
        "last_seq = 3",
    ],
)
def test_an_edited_record_is_caught_at_its_block(store: Store, change: str) -> None:
    lease = open_lease(store)
    sink = StoreSink(store, "gw-a")
    sink.write([record(lease, n) for n in (1, 2)])
    sink.write([record(lease, n) for n in (3, 4)])  # the block of records 3-4
    sink.write([record(lease, 5)])
    assert store.verify_statements(lease.id).ok
    with store.engine.begin() as conn:
        changed = conn.execute(
            sa.text(f"UPDATE statement_blocks SET {change} WHERE lease_id = :id AND first_seq = 3"),
            {"id": lease.id},
        )
        assert changed.rowcount == 1
    verdict = store.verify_statements(lease.id)
    assert not verdict.ok and verdict.first_bad == 3, verdict
    assert "edited" in (verdict.problem or "")


def test_a_deleted_record_or_newest_record_is_caught(store: Store) -> None:
    lease = open_lease(store)
    sink = StoreSink(store, "gw-a")
    for n in range(1, 6):
        sink.write([record(lease, n)])  # a block each
    blocks = statement_blocks.c
    with store.engine.begin() as conn:
        conn.execute(
            sa.delete(statement_blocks).where(blocks.lease_id == lease.id, blocks.first_seq == 5)
        )
    verdict = store.verify_statements(lease.id)
    assert verdict.first_bad == 5 and "newest records were deleted" in (verdict.problem or "")
    assert verdict.records == 4 and verdict.expected == 5
    with store.engine.begin() as conn:
        conn.execute(
            sa.delete(statement_blocks).where(blocks.lease_id == lease.id, blocks.first_seq == 2)
        )
    verdict = store.verify_statements(lease.id)
    assert verdict.first_bad == 2 and "missing" in (verdict.problem or "")


def test_the_seal_is_written_once_and_late_records_are_flagged(store: Store) -> None:
    lease, live, unrecorded = open_lease(store), open_lease(store), open_lease(store)
    sink = StoreSink(store, "gw-a")
    sink.write([record(lease, n) for n in range(1, 4)])
    sink.write([record(live, 1)])
    end(store, lease, NOW + timedelta(minutes=1))
    end(store, unrecorded, NOW + timedelta(minutes=1))  # not a gateway lease: nothing to seal
    # Within the grace period the gateway's last batch may still be on its way.
    assert store.seal_statements(NOW + timedelta(minutes=1, seconds=5), grace=10) == 0
    sealed_at = NOW + timedelta(minutes=1, seconds=11)
    assert store.seal_statements(sealed_at, grace=10) == 1
    assert store.seal_statements(sealed_at + timedelta(minutes=1), grace=10) == 0  # once

    head = store.statement_head(lease.id)
    assert head is not None and head.sealed_at == sealed_at
    assert head.sealed_count == 3 and head.sealed_head == head.head
    events = store.audit_records(lease.id, event="session.statements_sealed")
    assert len(events) == 1
    assert events[0].detail == {"count": 3, "head": head.head, "target": "demo"}
    assert events[0].subject == "alice"
    assert store.statement_head(live.id).sealed_at is None  # type: ignore[union-attr]
    assert verify(raw_records(store)).ok

    sink.write([record(lease, 4), record(lease, 5)])  # late: kept, and shown as such
    page, _ = store.statement_page(lease.id)
    assert [r.seq for r in page] == [1, 2, 3, 4, 5]
    verdict = store.verify_statements(lease.id)
    assert verdict.ok and verdict.after_seal == 2 and verdict.sealed_count == 3
    assert verdict.records == verdict.expected == 5

    # Rewriting the sealed records and their hashes, head included, still disagrees with
    # the seal the audit trail holds.
    with store.engine.begin() as conn:
        conn.execute(sa.delete(statement_blocks).where(statement_blocks.c.lease_id == lease.id))
        conn.execute(sa.delete(statement_heads).where(statement_heads.c.lease_id == lease.id))
    sink.write([record(lease, n, sql="SELECT 'innocent'") for n in range(1, 4)])
    forged = store.statement_head(lease.id)
    assert forged is not None
    with store.engine.begin() as conn:
        conn.execute(
            sa.update(statement_heads)
            .where(statement_heads.c.lease_id == lease.id)
            .values(sealed_at=sealed_at, sealed_count=3, sealed_head=forged.head)
        )
    verdict = store.verify_statements(lease.id)
    assert not verdict.ok and "seal" in (verdict.problem or "")

    # Deleting a sealed session's records and head altogether: the seal remains.
    with store.engine.begin() as conn:
        conn.execute(sa.delete(statement_blocks).where(statement_blocks.c.lease_id == lease.id))
        conn.execute(sa.delete(statement_heads).where(statement_heads.c.lease_id == lease.id))
    verdict = store.verify_statements(lease.id)
    assert not verdict.ok and "sealed 3 record(s)" in (verdict.problem or "")
    [whole] = [v for v in store.verify_all_statements() if v.lease_id == lease.id]
    assert not whole.ok and whole.first_bad == 1


def test_a_gateway_session_without_records_is_sealed_with_none(store: Store) -> None:
    lease = open_lease(store)
    with store.engine.begin() as conn:
        conn.execute(
            sa.update(sa.table("leases", sa.column("id"), sa.column("access")))
            .where(sa.column("id") == lease.id)
            .values(access="gateway")
        )
    end(store, lease, NOW)
    assert store.seal_statements(NOW + timedelta(seconds=11)) == 1
    head = store.statement_head(lease.id)
    assert head is not None and head.sealed_count == 0 and head.count == 0
    verdict = store.verify_statements(lease.id)
    assert verdict.ok and verdict.records == 0 and verdict.sealed_count == 0


def test_hostile_text_is_stored_as_given(store: Store) -> None:
    lease = open_lease(store)
    sql = "SELECT '\x1b[2J\x1b]0;pwned\x07' -- \u202e ✓ 'quote' \\ \"dq\""
    StoreSink(store, "gw-a").write(
        [record(lease, 1, sql=sql, params_policy="full", params=("\x1b[31m", "é"))]
    )
    page, _ = store.statement_page(lease.id)
    assert page[0].sql == sql and page[0].param_values() == ["\x1b[31m", "é"]
    assert store.verify_statements(lease.id).ok


def test_a_nul_in_the_sql_does_not_stop_the_records(store: Store) -> None:
    # PostgreSQL keeps no NUL in text: a batch it refused would be retried for ever,
    # holding back every later record of that gateway.
    lease = open_lease(store)
    StoreSink(store, "gw-a").write(
        [
            record(lease, 1, sql="SELECT 1\x00; DROP TABLE t", params_policy="full",
                   params=("a\x00b",)),
            record(lease, 2),
        ]
    )  # fmt: skip
    page, _ = store.statement_page(lease.id)
    assert [r.sql for r in page] == ["SELECT 1\ufffd; DROP TABLE t", "SELECT 2"]
    assert page[0].param_values() == ["a\x00b"]
    assert store.verify_statements(lease.id).ok


CONFIG = """
[broker]
store = "sqlite:///broker.db"
[identity]
issuer = "https://login.example.com/realms/acme"
client_id = "dbaccess-cli"
[targets.demo]
engine = "postgres"
host = "db"
port = 5432
database = "demo"
provisioner = { user = "p", password_env = "P" }
roles.readonly = { group_role = "ro" }
"""


def test_export_ships_the_records_and_verify_checks_them(tmp_path: Path) -> None:
    config = tmp_path / "broker.toml"
    config.write_text(CONFIG)
    store = Store(f"sqlite:///{tmp_path / 'broker.db'}")
    lease = open_lease(store)
    StoreSink(store, "gw-a").write(
        [record(lease, n, params_policy="full", params=(str(n), None)) for n in range(1, 3)]
        # text outside ASCII is stored as UTF-8, not escaped: the rebuild must say so too
        + [
            record(
                lease, 3, sql="SELECT 'crème ✓ \u202e'", params_policy="full", params=("é\n", None)
            )
        ]  # fmt: skip
    )
    end(store, lease, NOW)
    assert store.seal_statements(NOW + timedelta(seconds=11)) == 1

    exported = CliRunner().invoke(app, ["audit", "export", "--config", str(config)])
    assert exported.exit_code == 0, exported.output
    lines = [json.loads(line) for line in exported.output.splitlines()]
    audit_lines = [line for line in lines if line["type"] == "audit"]
    statement_lines = [line for line in lines if line["type"] == "statement"]
    assert [line["event"] for line in audit_lines][-1] == "session.statements_sealed"
    assert [line["seq"] for line in statement_lines] == [1, 2, 3]
    first = statement_lines[0]
    assert first["lease_id"] == lease.id and first["sql"] == "SELECT 1"
    assert first["params"] == ["1", None] and first["gateway"] == "gw-a"
    assert first["started"] == (NOW + timedelta(seconds=1, microseconds=1)).isoformat()
    assert all(line["block"] == [1, 3] for line in statement_lines)  # written together
    # An export is checkable on its own: each block's records text rebuilt from its lines
    # (RECORD_FIELDS, compact JSON), its hash recomputed, the last one the sealed head.
    prev = "0" * 64
    by_block: dict[tuple[int, int], list[dict[str, object]]] = {}
    for line in statement_lines:
        by_block.setdefault(tuple(line["block"]), []).append(line)
    for (first_seq, last_seq), lines_of in by_block.items():
        assert [line["seq"] for line in lines_of] == list(range(first_seq, last_seq + 1))
        text = json.dumps([[line[f] for f in RECORD_FIELDS] for line in lines_of],
                          separators=(",", ":"), ensure_ascii=False)  # fmt: skip
        one = lines_of[0]
        header = json.dumps(
            [prev, one["lease_id"], first_seq, last_seq, one["subject"], one["target"],
             one["role"], one["gateway"], one["written_at"]],
            separators=(",", ":"),
        )  # fmt: skip
        assert hashlib.sha256(f"{header}\n{text}".encode()).hexdigest() == one["hash"]
        assert one["prev_hash"] == prev
        prev = str(one["hash"])
    assert audit_lines[-1]["detail"]["head"] == prev

    later = CliRunner().invoke(
        app, ["audit", "export", "--config", str(config), "--since", "2999-01-01"]
    )
    assert later.exit_code == 0 and later.output == ""

    intact = CliRunner().invoke(app, ["audit", "verify", "--config", str(config)])
    assert intact.exit_code == 0, intact.output
    assert "statement records intact: 3 record(s) of 1 session(s)" in intact.output
    with store.engine.begin() as conn:
        conn.execute(
            sa.text(
                "UPDATE statement_blocks SET records = replace(records, 'SELECT 1', 'SELECT 2')"
                " WHERE first_seq = 1 AND lease_id = :id"
            ),
            {"id": lease.id},
        )
    broken = CliRunner().invoke(app, ["audit", "verify", "--config", str(config)])
    assert broken.exit_code == 1
    assert "audit trail intact" in broken.output
    assert f"statement records of session {lease.id} BROKEN at record #1" in broken.output
    store.close()


def test_the_reaper_seals_and_logs_a_failing_pass(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    config = tmp_path / "broker.toml"
    config.write_text(CONFIG)
    store = Store(f"sqlite:///{tmp_path / 'broker.db'}")
    lease = open_lease(store)
    StoreSink(store, "gw-a").write([record(lease, 1)])
    end(store, lease, NOW)
    service = SessionService(BrokerContext.build(load_settings(config), store, {}))
    failing = {"on": True}
    real_seal = store.seal_statements

    def seal(now: datetime, grace: float = 10.0) -> int:
        if failing["on"]:
            raise StoreUnavailable("the broker's state store failed: disk I/O error")
        return real_seal(now, grace)

    monkeypatch.setattr(store, "seal_statements", seal)
    monkeypatch.setattr(reaper, "SEAL_EVERY", 0.05)
    caplog.set_level(logging.INFO, logger="dbaccess.broker.reaper")
    running = reaper.Reaper(service, 0.02, 3600)
    running.start()
    try:
        deadline = time.monotonic() + 10
        while not any("sealing the statement" in r.getMessage() for r in caplog.records):
            assert time.monotonic() < deadline
            time.sleep(0.02)
        failing["on"] = False
        while getattr(store.statement_head(lease.id), "sealed_at", None) is None:
            assert time.monotonic() < deadline
            time.sleep(0.02)
    finally:
        running.stop()
    messages = [r.getMessage() for r in caplog.records]
    failed = [
        m
        for m in messages
        if m.startswith("sealing the statement records of ended sessions failed")
    ]
    assert len(failed) == 1 and "disk I/O error" in failed[0]  # one line, not one a pass
    assert any("sealing the statement records of ended sessions recovered" in m for m in messages)
    assert len(store.audit_records(lease.id, event="session.statements_sealed")) == 1
    store.close()


def test_verifying_while_a_gateway_writes_raises_no_false_alarm(store: Store) -> None:
    # The head, the rows and the seal are read in one snapshot: a batch landing between
    # reading the head and the rows must not look like rows inserted without the head.
    lease = open_lease(store)
    sink = StoreSink(store, "gw-a")
    done = threading.Event()

    def write() -> None:
        n = 0
        while not done.is_set():
            sink.write([record(lease, n + k) for k in range(1, 6)])
            n += 5

    writer = threading.Thread(target=write)
    writer.start()
    verdicts = []
    try:
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            verdicts.append(store.verify_statements(lease.id))
            # and a page's verdict, continuing the walk across the batches landing
            verdicts.append(store.page_verdict(lease.id, after=len(verdicts) % 3))
    finally:
        done.set()
        writer.join()
    assert verdicts and all(v.ok for v in verdicts), [v for v in verdicts if not v.ok][:1]
    assert max(v.records for v in verdicts) > 0


def hashes_computed(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The first seqs of the blocks whose hash is recomputed from here on."""
    from dbaccess.broker.store.statement_chain import StoredBlock

    seen: list[int] = []
    real = StoredBlock.computed_hash

    def counted(block: StoredBlock) -> str:
        seen.append(block.first_seq)
        return real(block)

    monkeypatch.setattr(StoredBlock, "computed_hash", counted)
    return seen


def write_blocks(store: Store, lease: Lease, blocks: int, start: int = 1) -> None:
    sink = StoreSink(store, "gw-a")
    for b in range(blocks):
        sink.write([record(lease, start + 3 * b + k) for k in range(3)])


@pytest.mark.parametrize(
    "edit",
    [
        "UPDATE statement_blocks SET records = replace(records, 'SELECT 2', 'SELECT 9') "
        "WHERE lease_id = :id AND first_seq = 1",
        "DELETE FROM statement_blocks WHERE lease_id = :id AND first_seq = 4",
        "UPDATE statement_blocks SET gateway = 'elsewhere' WHERE lease_id = :id AND first_seq = 7",
        "UPDATE statement_heads SET head = prev_head.hash FROM (SELECT hash FROM "
        "statement_blocks WHERE lease_id = :id AND first_seq = 25) AS prev_head "
        "WHERE lease_id = :id",
        # a block inserted reaching back into the part already walked, the head moved on
        "INSERT INTO statement_blocks (lease_id, first_seq, last_seq, subject, target, role, "
        "gateway, written_at, records, prev_hash, hash) SELECT lease_id, 35, 37, subject, "
        "target, role, gateway, written_at, records, prev_hash, hash FROM statement_blocks "
        "WHERE lease_id = :id AND first_seq = 34; "
        "UPDATE statement_heads SET count = 37 WHERE lease_id = :id",
    ],
)
def test_later_pages_check_only_new_blocks_and_still_see_any_edit(
    store: Store, monkeypatch: pytest.MonkeyPatch, edit: str
) -> None:
    lease = open_lease(store)
    write_blocks(store, lease, 10)  # records 1-30, blocks of 3
    first = store.page_verdict(lease.id, after=0)
    assert first.ok and first.records == 30
    computed = hashes_computed(monkeypatch)
    # a later page continues the walk: no block hashed again, only the new ones
    assert store.page_verdict(lease.id, after=10).ok
    write_blocks(store, lease, 2, start=31)
    later = store.page_verdict(lease.id, after=20)
    assert later.ok and later.records == later.expected == 36
    assert computed == [31, 34]
    # an edit to a block the reader has already seen, long before the page
    with store.engine.begin() as conn:
        for statement in edit.split("; "):
            conn.execute(sa.text(statement), {"id": lease.id})
    broken, walked = store.page_verdict(lease.id, after=30), store.verify_statements(lease.id)
    assert not broken.ok and broken.first_bad == walked.first_bad, (broken, walked)
    assert not store.page_verdict(lease.id, after=33).ok  # and stays reported


@pytest.mark.parametrize("bypass", ["drop", "disable", "retarget", "reset"])
def test_pages_walk_the_chain_again_when_edits_might_not_be_counted(
    store: Store, bypass: str
) -> None:
    lease = open_lease(store)
    write_blocks(store, lease, 4)
    assert store.page_verdict(lease.id, after=0).ok
    assert store.page_verdict(lease.id, after=3).ok
    postgres = store.dialect == "postgresql"
    with store.engine.begin() as conn:
        if bypass == "drop":
            conn.execute(
                sa.text(
                    "DROP TRIGGER statement_blocks_edited ON statement_blocks"
                    if postgres
                    else "DROP TRIGGER statement_blocks_updated"
                )
            )
        elif bypass == "disable" and postgres:
            conn.execute(sa.text("ALTER TABLE statement_blocks DISABLE TRIGGER ALL"))
        elif bypass == "retarget" and postgres:  # the same trigger, on INSERT only
            conn.execute(sa.text("DROP TRIGGER statement_blocks_edited ON statement_blocks"))
            conn.execute(
                sa.text(
                    "CREATE TRIGGER statement_blocks_edited AFTER INSERT ON statement_blocks "
                    "FOR EACH STATEMENT EXECUTE PROCEDURE statement_edits_count()"
                )
            )
        elif bypass == "retarget":
            conn.execute(sa.text("DROP TRIGGER statement_blocks_updated"))
            conn.execute(
                sa.text(
                    "CREATE TRIGGER statement_blocks_updated AFTER INSERT ON statement_blocks "
                    "BEGIN UPDATE statement_edits SET count = count + 1; END"
                )
            )
        elif bypass == "disable":  # SQLite cannot disable one: a trigger that counts nothing
            conn.execute(sa.text("DROP TRIGGER statement_blocks_updated"))
            conn.execute(
                sa.text(
                    "CREATE TRIGGER statement_blocks_updated AFTER UPDATE ON statement_blocks "
                    "BEGIN SELECT 1; END"
                )
            )
        conn.execute(
            sa.text(
                "UPDATE statement_blocks SET records = replace(records, 'SELECT 5', 'SELECT 6') "
                "WHERE lease_id = :id AND first_seq = 4"
            ),
            {"id": lease.id},
        )
        if bypass == "reset":  # the count put back as it was
            conn.execute(sa.text("UPDATE statement_edits SET count = count - 1"))
    verdict = store.page_verdict(lease.id, after=6)
    if bypass == "reset":
        # the count looks unchanged: the edit is caught when the walk is due again (the
        # first page of a listing, or VERIFIED_TTL later)
        assert verdict.ok
        assert store.page_verdict(lease.id, after=0).first_bad == 4
    else:
        assert not verdict.ok and verdict.first_bad == 4, verdict


def test_a_huge_statement_is_stored_capped_and_identifiable(store: Store) -> None:
    # 2 MB of SQL, a NUL in the part kept and control characters JSON writes in 6 bytes:
    # stored as its head and a marker (length, SHA-256 of the whole text), chain intact
    from dbaccess.gateway.store_sink import MAX_SQL_TEXT

    lease = open_lease(store)
    huge = "INSERT INTO t VALUES ('\x00" + "\x01" * (2 * 1024 * 1024) + "')"
    StoreSink(store, "gw-a").write([record(lease, 1, sql=huge), record(lease, 2)])
    page, _ = store.statement_page(lease.id)
    digest = hashlib.sha256(huge.encode()).hexdigest()
    assert page[0].sql == (
        huge[:MAX_SQL_TEXT].replace("\x00", "\ufffd")
        + f"\u2026 [truncated: {len(huge)} characters in all, sha256 {digest}]"
    )
    assert page[1].sql == "SELECT 2"
    assert store.verify_statements(lease.id).ok
    # the limit is the gateway's setting
    StoreSink(store, "gw-a", max_sql_text=1024).write([record(lease, 3, sql=huge)])
    last = store.statement_page(lease.id, after=2)[0][0]
    assert last.sql == huge[:1024].replace("\x00", "\ufffd") + page[0].sql[MAX_SQL_TEXT:]
