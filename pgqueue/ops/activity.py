"""The overview's recent activity: what finished in the last hour, per queue (the queue
table) and per minute (the chart), from one scan of the finished tasks; minutes that closed
a while ago are read once and kept, so a page view reads only the last minute or two.

>>> recent = RecentActivity(window_seconds=3600, bucket_seconds=60)   # one per process
>>> window = board.recent(recent)        # board: a DashboardQueries (ops/dashboard.py)
>>> window.per_queue["emails"].completed, [b["completed"] for b in window.buckets][-3:]
(1250, [20, 22, 7])
"""

from __future__ import annotations

import dataclasses
import datetime
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

#: Buckets start at multiples of the bucket size from this instant (date_bin's origin in SQL).
ORIGIN = datetime.datetime(2000, 1, 1, tzinfo=datetime.UTC)
#: A bucket is kept once it ended this long ago: a task's finished_at is its finishing
#: transaction's start, so a transaction shorter than this is counted before it is kept.
SETTLE_SECONDS = 60.0

#: Rows of `dashboard_recent_activity` finished since a moment, bucketed by a size in seconds.
ReadRows = Callable[[datetime.datetime, float], Iterable[Mapping[str, Any]]]


@dataclasses.dataclass
class QueueActivity:
    """One queue's finished tasks over the window; `wait_seconds` sums the waits between
    run_at and start of the `waits` tasks that started."""

    completed: int = 0
    failed: int = 0
    wait_seconds: float = 0.0
    waits: int = 0

    @property
    def avg_wait_seconds(self) -> float | None:
        return self.wait_seconds / self.waits if self.waits else None

    def add(self, other: QueueActivity) -> None:
        self.completed += other.completed
        self.failed += other.failed
        self.wait_seconds += other.wait_seconds
        self.waits += other.waits


@dataclasses.dataclass(frozen=True)
class ActivityWindow:
    """The window's totals per queue, and per bucket oldest first (every bucket present,
    as dicts `bucket`, `completed`, `failed` for the chart)."""

    per_queue: dict[str, QueueActivity]
    buckets: list[dict[str, Any]]


class RecentActivity:
    """The last `window_seconds` in whole buckets of `bucket_seconds` (the current one and
    as many before it as the window holds). Thread-safe; one per dashboard process.

    Buckets that ended SETTLE_SECONDS ago are kept as read: a task finished in such a
    minute and later retried or deleted still counts there (it did finish then).
    """

    def __init__(
        self,
        window_seconds: float = 3600,
        bucket_seconds: float = 60,
        settle_seconds: float = SETTLE_SECONDS,
    ) -> None:
        if bucket_seconds <= 0 or window_seconds < bucket_seconds:
            raise ValueError(
                f"bucket_seconds must be > 0 and <= window_seconds, not {bucket_seconds!r} "
                f"(window_seconds {window_seconds!r})"
            )
        self.step = datetime.timedelta(seconds=bucket_seconds)
        self.count = int(window_seconds // bucket_seconds) + 1
        self.settle = datetime.timedelta(seconds=settle_seconds)
        self._lock = threading.Lock()
        self._kept: dict[datetime.datetime, dict[str, QueueActivity]] = {}

    def read(self, now: datetime.datetime, read_rows: ReadRows) -> ActivityWindow:
        """The window ending at the database's `now`; `read_rows` reads the buckets not kept."""
        last = ORIGIN + ((now - ORIGIN) // self.step) * self.step
        buckets = [last - self.step * (self.count - 1 - index) for index in range(self.count)]
        with self._lock:
            self._kept = {b: found for b, found in self._kept.items() if b >= buckets[0]}
            kept = dict(self._kept)
        since = next((bucket for bucket in buckets if bucket not in kept), last)
        fresh: dict[datetime.datetime, dict[str, QueueActivity]] = {
            bucket: {} for bucket in buckets if bucket >= since
        }
        for row in read_rows(since, self.step.total_seconds()):
            per_queue = fresh.get(row["bucket"])
            if per_queue is not None:
                per_queue[row["queue"]] = QueueActivity(
                    completed=row["completed"],
                    failed=row["failed"],
                    wait_seconds=row["wait_seconds"],
                    waits=row["waits"],
                )
        settled = {b: found for b, found in fresh.items() if b + self.step <= now - self.settle}
        with self._lock:
            self._kept.update(settled)
        every = {**kept, **fresh}
        totals: dict[str, QueueActivity] = {}
        chart = []
        for bucket in buckets:
            found = every.get(bucket, {})
            for queue, activity in found.items():
                totals.setdefault(queue, QueueActivity()).add(activity)
            chart.append(
                {
                    "bucket": bucket,
                    "completed": sum(activity.completed for activity in found.values()),
                    "failed": sum(activity.failed for activity in found.values()),
                }
            )
        return ActivityWindow(totals, chart)
