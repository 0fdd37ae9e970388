"""The overview's last hour (ops/activity.py) on a real database: the queue table and the
chart count the same finished tasks from one scan; closed minutes are read once and kept."""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from pgqueue.ops.activity import RecentActivity
from pgqueue.ops.dashboard import DashboardQueries
from pgqueue.task_manager import TaskManager


@pytest.fixture
def board(dsn: str) -> Iterator[DashboardQueries]:
    with DashboardQueries.connect(dsn) as opened:
        yield opened


def finish(
    db: psycopg.Connection[Any],
    ids: list[Any],
    status: str,
    ago: str,
    waited: str | None = None,
) -> None:
    """Mark tasks finished `ago` (an interval) with `status`, started `waited` after run_at."""
    db.execute(
        "UPDATE pgqueue.tasks SET status = %s::pgqueue.task_status, "
        "finished_at = now() - %s::interval, "
        "started_at = run_at + %s::interval WHERE id = ANY(%s)",
        (status, ago, waited, ids),
    )


def test_the_queue_table_and_the_chart_count_the_same_finished_tasks(
    board: DashboardQueries, tm: TaskManager, db: psycopg.Connection[Any]
) -> None:
    emails = tm.queue_tasks("app.jobs.a", [{"n": n} for n in range(6)], queue="emails")
    reports = tm.queue_tasks("app.jobs.b", [{"n": n} for n in range(3)], queue="reports")
    finish(db, emails[:5], "COMPLETED", "5 minutes", waited="2 seconds")
    finish(db, emails[5:], "COMPLETED", "2 hours", waited="9 seconds")  # outside the hour
    finish(db, reports[:2], "FAILED", "30 minutes", waited="4 seconds")
    finish(db, reports[2:], "CANCELLED", "30 minutes")  # never started: no wait

    rows = {row["queue"]: row for row in board.queue_overview()}
    assert (rows["emails"]["completed_recent"], rows["emails"]["failed_recent"]) == (5, 0)
    assert rows["emails"]["avg_wait_seconds"] == pytest.approx(2.0)
    assert (rows["reports"]["completed_recent"], rows["reports"]["failed_recent"]) == (0, 2)
    assert rows["reports"]["avg_wait_seconds"] == pytest.approx(4.0)
    assert rows["reports"]["failed"] == 2 and rows["reports"]["cancelled"] == 1

    buckets = board.throughput()
    assert len(buckets) == 61
    assert [b["bucket"] for b in buckets] == sorted(b["bucket"] for b in buckets)
    assert sum(b["completed"] for b in buckets) == 5
    assert sum(b["failed"] for b in buckets) == 2
    (five_ago,) = [b for b in buckets if b["completed"]]
    assert five_ago["completed"] == 5 and five_ago["failed"] == 0


def test_closed_minutes_are_read_once_and_kept(
    board: DashboardQueries, tm: TaskManager, db: psycopg.Connection[Any]
) -> None:
    old = tm.queue_tasks("app.jobs.a", [{"n": n} for n in range(3)], queue="q")
    new = tm.queue_tasks("app.jobs.a", [{"n": n} for n in range(3, 5)], queue="q")
    finish(db, old, "COMPLETED", "10 minutes", waited="1 second")
    finish(db, new[:1], "COMPLETED", "0 seconds", waited="1 second")
    recent = RecentActivity(3600, 60)
    asked: list[datetime.datetime] = []

    def read_rows(since: datetime.datetime, bucket_seconds: float) -> list[dict[str, Any]]:
        asked.append(since)
        return board.recent_activity(since, bucket_seconds)

    def window_total() -> tuple[int, int]:
        now = board._value("database_now")
        kept = recent.read(now, read_rows)
        fresh = board.recent(RecentActivity(3600, 60))
        return kept.per_queue["q"].completed, fresh.per_queue["q"].completed

    assert window_total() == (4, 4)
    # The minute ten minutes ago changes after it was kept: the kept window still counts
    # what finished then; the minute still open is read again and sees the change.
    db.execute("DELETE FROM pgqueue.tasks WHERE id = ANY(%s)", (old[:1],))
    finish(db, new[1:], "COMPLETED", "0 seconds", waited="1 second")
    assert window_total() == (5, 4)
    first, second = asked
    assert second - first >= datetime.timedelta(minutes=58)  # only the last minute(s) again


def test_a_window_needs_buckets_that_fit_in_it() -> None:
    with pytest.raises(ValueError, match="bucket_seconds"):
        RecentActivity(window_seconds=30, bucket_seconds=60)
