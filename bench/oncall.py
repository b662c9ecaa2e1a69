"""How long a decision takes when it asks an on-call schedule (issue budget: p95 <= 2 s,
the look-up included).

    python bench/oncall.py [--people 200] [--runs 50]

Set-up (not measured): an iCalendar file like a team's export, one weekly recurring
shift per person (RRULE, a time zone, a year of history before now), plus a one-off
override per person. Measured: ``policy.decide`` for a rule with ``oncall``, through
``Schedules.shift``: cold (a new look-up each time: the feed read, parsed and expanded, as
after max_age) and warm (the shifts around now cached with the feed); p50 and p95 of each,
and the p95's ratio to the 2 s budget.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import median, table  # noqa: E402
from dbaccess.broker.identity import Principal  # noqa: E402
from dbaccess.broker.oncall import Schedules  # noqa: E402
from dbaccess.broker.policy import AccessRequest, decide  # noqa: E402
from dbaccess.broker.settings import OncallSource, Rule  # noqa: E402

BUDGET = 2.0


def feed(people: int, now: datetime) -> str:
    start = (now - timedelta(days=365)).replace(hour=9, minute=0, second=0, microsecond=0)
    events = []
    for i in range(people):
        first = start + timedelta(days=7 * (i % people))
        events.append(
            f"BEGIN:VEVENT\r\nUID:p{i}@example.com\r\nDTSTAMP:20260101T000000Z\r\n"
            f"SUMMARY:On call - person {i}\r\n"
            f"DTSTART;TZID=Europe/Berlin:{first:%Y%m%dT%H%M%S}\r\nDURATION:P7D\r\n"
            f"RRULE:FREQ=WEEKLY;INTERVAL={people}\r\n"
            f"ATTENDEE:mailto:p{i}@example.com\r\nEND:VEVENT\r\n"
            f"BEGIN:VEVENT\r\nUID:o{i}@example.com\r\nDTSTAMP:20260101T000000Z\r\n"
            f"SUMMARY:Override {i}\r\nDTSTART:{first + timedelta(days=3):%Y%m%dT%H%M%SZ}\r\n"
            f"DTEND:{first + timedelta(days=3, hours=4):%Y%m%dT%H%M%SZ}\r\n"
            f"ATTENDEE:mailto:p{(i + 1) % people}@example.com\r\nEND:VEVENT\r\n"
        )
    return (
        "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//bench//EN\r\n"
        + "".join(events)
        + "END:VCALENDAR\r\n"
    )


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--people", type=int, default=200)
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args()
    now = datetime.now(UTC)
    rule = Rule.model_validate(
        {"name": "r", "groups": ["dev"], "targets": ["prod"], "roles": ["readonly"],
         "max_duration": "8h", "approvals": 1, "approver_groups": ["leads"],
         "oncall": {"source": "team"}}
    )  # fmt: skip
    want = AccessRequest("prod", "readonly", timedelta(hours=1))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "team.ics"
        path.write_text(feed(args.people, now))
        source = OncallSource.model_validate({"name": "team", "ics": str(path)})
        rows = []
        for label, fresh in (
            ("cold (read + parse + expand)", True),
            ("warm (shifts cached)", False),
        ):
            schedules = Schedules([source])
            took = []
            for run in range(args.runs):
                if fresh:
                    schedules = Schedules([source])
                who = Principal(
                    subject=f"p{run}", email=f"p{run % args.people}@example.com",
                    email_verified=True, name=None, groups=frozenset({"dev"}),
                )  # fmt: skip
                started = time.perf_counter()
                decide(who, want, [rule], schedules.shift, now)
                took.append(time.perf_counter() - started)
            rows.append(
                (label, f"{median(took) * 1000:.1f} ms", f"{p95(took) * 1000:.1f} ms",
                 f"{p95(took) / BUDGET:.3f}")
            )  # fmt: skip
    print(f"on-call decision, {args.people} people in the feed ({path.name}, "
          f"{len(feed(args.people, now)) // 1024} KiB), {args.runs} runs")  # fmt: skip
    print(table(("look-up", "p50", "p95", "p95 / 2 s budget"), rows))


if __name__ == "__main__":
    main()
