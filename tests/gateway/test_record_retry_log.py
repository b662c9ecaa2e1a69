"""A store that fails every try (one a second while it is down) does not flood the gateway's
log: the first failure is logged at once, then one line per ``log_every`` with the count,
and one when records are written again. Nothing is lost or reordered meanwhile."""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Sequence
from datetime import UTC, datetime

import pytest

from dbaccess.gateway.records import BatchingWriter, MemorySink, StatementRecord

K = 40  # failed tries


class FailingSink(MemorySink):
    """Fails its first ``k`` writes."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.left = k
        self.lock = threading.Lock()

    def write(self, records: Sequence[StatementRecord]) -> None:
        with self.lock:
            if self.left:
                self.left -= 1
                raise ConnectionError("the store is unreachable")
        super().write(records)


def _record(seq: int) -> StatementRecord:
    return StatementRecord(
        lease_id="lease-1",
        person="alice@example.com",
        target="pg",
        role="readonly",
        kind="query",
        sql=f"select {seq}",
        params_policy="none",
        params=None,
        started=datetime.now(UTC),
        duration=0.001,
        rows=1,
        bytes_out=10,
        bytes_in=0,
        sqlstate=None,
        status="completed",
        connection=1,
    )


def _run(caplog: pytest.LogCaptureFixture, log_every: float) -> tuple[MemorySink, list[str]]:
    sink = FailingSink(K)
    caplog.set_level(logging.DEBUG, logger="dbaccess.gateway.records")
    writer = BatchingWriter(sink, max_delay=0.01, retry_delay=0.01, log_every=log_every)
    try:
        for seq in range(1, 6):
            writer.add(_record(seq))
        assert writer.flush(20), "not delivered once the store recovered"
    finally:
        writer.close()
    return sink, [r.getMessage() for r in caplog.records if r.name == "dbaccess.gateway.records"]


def test_an_outage_is_one_line_when_it_starts_and_one_when_it_ends(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sink, lines = _run(caplog, log_every=60)
    assert lines[0] == "statement records not written (ConnectionError), retrying every 0.01 s"
    assert re.fullmatch(
        rf"statement records are written again after \d+\.\d s and {K} failed tries", lines[1]
    )
    assert len(lines) == 2
    assert [r.sql for r in sink.for_lease("lease-1")] == [f"select {n}" for n in range(1, 6)]


def test_a_long_outage_gets_a_summary_line_per_interval_with_the_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    _, lines = _run(caplog, log_every=0.05)
    summaries = [
        int(m.group(1))
        for line in lines
        if (
            m := re.match(
                r"statement records still not written \(ConnectionError\): (\d+) more", line
            )
        )
    ]
    assert 1 <= len(summaries) < K // 2  # some, far fewer than the failures
    assert sum(summaries) <= K - 1  # the first one was logged by itself
    assert lines[0].startswith("statement records not written")
    assert lines[-1].endswith(f"and {K} failed tries")
    assert len(lines) == 2 + len(summaries)
