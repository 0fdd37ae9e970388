"""The web dashboard's reads: queues at a glance, throughput, pages of tasks, failures by
error, what workers run, a task's timeline; each stays fast with millions of tasks.

The SQL is in `db/sql/dashboard.sql`; the actions (retry, cancel, pause) are Admin's own.

>>> with DashboardQueries.connect(dsn) as board:
...     page = board.tasks_page(TaskFilter(status=TaskStatus.FAILED))
...     print([task.id for task in page.tasks], page.next_cursor)
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import uuid
from collections.abc import Mapping
from typing import Any

from pgqueue.db.store import parse_task_id
from pgqueue.errors import InvalidTaskOption
from pgqueue.ops.activity import ActivityWindow, RecentActivity
from pgqueue.ops.admin import Admin, parse_status
from pgqueue.records import Task, TaskStatus
from pgqueue.tasks.options import check_queue

#: Counts up to this many matching tasks are exact; past it they are the planner's estimate.
EXACT_COUNT_LIMIT = 100_000
#: A page of the task list filtered by queue, name or arguments reads at most this many
#: tasks of the index its status picks (unfiltered, it reads just the page).
PAGE_SCAN_LIMIT = 10_000
#: Failures are grouped by error over this many of the latest FAILED tasks.
FAILURE_SCAN_LIMIT = 10_000
#: Statuses whose tasks an operator may run again (tm.retry).
RETRYABLE = (TaskStatus.FAILED, TaskStatus.CANCELLED)


@dataclasses.dataclass(frozen=True)
class TaskFilter:
    """The filters of the task list; None means "any".

    `contains` is a JSON object the task's arguments must contain (`kwargs @> contains`).

    >>> TaskFilter.parse({"status": "failed", "q": '{"user_id": 42}'}).contains
    {'user_id': 42}
    """

    status: TaskStatus | None = None
    queue: str | None = None
    name: str | None = None
    contains: dict[str, Any] | None = None

    @classmethod
    def parse(cls, params: Mapping[str, str]) -> TaskFilter:
        """From query parameters `status`, `queue`, `name`, `q` (empty ones are ignored);
        a wrong one raises InvalidTaskOption naming the parameter."""
        status = (params.get("status") or "").strip()
        queue = params.get("queue") or ""
        name = (params.get("name") or "").strip()
        text = (params.get("q") or "").strip()
        return cls(
            status=parse_status(status) if status else None,
            queue=check_queue(queue) if queue else None,
            name=name or None,
            contains=parse_contains(text) if text else None,
        )

    @property
    def is_empty(self) -> bool:
        return self == TaskFilter()

    def params(self) -> dict[str, Any]:
        """The bound parameters of the dashboard's task queries."""
        return {
            "status": None if self.status is None else self.status.value,
            "queue": self.queue,
            "name": self.name,
            "contains": None if self.contains is None else json.dumps(self.contains),
        }

    def query(self) -> dict[str, str]:
        """These filters as query parameters again (for links)."""
        found = {
            "status": None if self.status is None else self.status.value.lower(),
            "queue": self.queue,
            "name": self.name,
            "q": None if self.contains is None else json.dumps(self.contains),
        }
        return {key: value for key, value in found.items() if value}


def parse_contains(text: str) -> dict[str, Any]:
    """The `q` filter: a JSON object; anything else is a clear error."""
    try:
        value = json.loads(text)
    except ValueError as error:
        raise InvalidTaskOption(
            f'q must be a JSON object such as {{"user_id": 42}}, not {text!r} ({error})'
        ) from None
    if not isinstance(value, dict):
        raise InvalidTaskOption(
            f'q must be a JSON object such as {{"user_id": 42}}, not {type(value).__name__} '
            f"{text!r}"
        )
    return value


@dataclasses.dataclass(frozen=True)
class TaskPage:
    """One page of tasks, newest first.

    `next_cursor` is the `before` of the next page (None: no more). When `window_ended` is
    true the page read its whole window (PAGE_SCAN_LIMIT tasks) without filling up: older
    matches may follow from `next_cursor`.
    """

    tasks: list[Task]
    next_cursor: uuid.UUID | None
    window_ended: bool


@dataclasses.dataclass(frozen=True)
class Count:
    """How many tasks match: exact, or the planner's estimate (exact is False)."""

    value: int
    exact: bool


class DashboardQueries(Admin):
    """Admin's calls plus the dashboard's reads, on one autocommit connection."""

    def queue_overview(
        self, since_seconds: float = 3600, recent: ActivityWindow | None = None
    ) -> list[dict[str, Any]]:
        """One row per queue that has unfinished, failed, cancelled or recent tasks, is
        paused, or a live worker serves: counts per status, latency, recent throughput.

        `completed_recent`/`failed_recent` and `avg_wait_seconds` cover the last
        `since_seconds` in whole minutes (or `recent`, a window read already); `failed` and
        `cancelled` count all the tasks in those statuses.
        """
        if recent is None:
            recent = self.recent(RecentActivity(since_seconds))
        rows: dict[str, dict[str, Any]] = {}

        def row(queue: str) -> dict[str, Any]:
            return rows.setdefault(queue, _empty_queue_row(queue))

        for found in self._rows("dashboard_active_counts"):
            row(found["queue"]).update(found)
        for found in self._rows("dashboard_problem_counts"):
            row(found["queue"]).update(found)
        for queue, activity in recent.per_queue.items():
            row(queue).update(
                completed_recent=activity.completed,
                failed_recent=activity.failed,
                avg_wait_seconds=activity.avg_wait_seconds,
            )
        for found in self._rows("dashboard_known_queues"):
            row(found["queue"])
        for found in self._rows("dashboard_paused_queues"):
            row(found["queue"]).update(paused=True, paused_at=found["paused_at"])
        return [rows[queue] for queue in sorted(rows)]

    def throughput(
        self, since_seconds: float = 3600, bucket_seconds: float = 60
    ) -> list[dict[str, Any]]:
        """Tasks completed and failed per bucket, oldest first, every bucket present."""
        return self.recent(RecentActivity(since_seconds, bucket_seconds)).buckets

    def recent(self, activity: RecentActivity) -> ActivityWindow:
        """What finished in `activity`'s window, per queue and per bucket (one scan, of the
        buckets it does not keep already)."""
        return activity.read(self._value("database_now"), self.recent_activity)

    def recent_activity(
        self, since: datetime.datetime, bucket_seconds: float
    ) -> list[dict[str, Any]]:
        """Per queue and bucket, the tasks finished since `since`: completed, failed, and
        the sum and number of their waits between run_at and start."""
        return self._rows(
            "dashboard_recent_activity", {"since": since, "bucket_seconds": bucket_seconds}
        )

    def tasks_page(
        self,
        filters: TaskFilter,
        before: Any = None,
        limit: int = 50,
        scan: int = PAGE_SCAN_LIMIT,
    ) -> TaskPage:
        """The newest tasks matching `filters` whose id is below `before` (keyset)."""
        if dataclasses.replace(filters, status=None).is_empty:
            scan = limit  # every task of the status index matches: the page is its first rows
        rows = self._rows(
            "dashboard_tasks_page",
            {
                **filters.params(),
                "before": None if before in (None, "") else parse_task_id(before),
                "limit": limit,
                "scan": scan,
            },
        )
        tasks = [Task.from_row(row) for row in rows if row["id"] is not None]
        scanned, last_scanned = rows[0]["scanned"], rows[0]["last_scanned_id"]
        if len(tasks) == limit:
            return TaskPage(tasks, tasks[-1].id, window_ended=False)
        window_ended = scanned == scan
        return TaskPage(tasks, last_scanned if window_ended else None, window_ended)

    def count_matching(self, filters: TaskFilter) -> Count:
        """How many tasks match: the planner's estimate past EXACT_COUNT_LIMIT, else exact
        where counting is cheap (a small table, or a status filter alone, which an index
        serves), else estimated too."""
        estimate = max(self._estimate_matching(filters), 0)
        if estimate > EXACT_COUNT_LIMIT:
            return Count(estimate, exact=False)
        only_status = (
            filters.status is not None and dataclasses.replace(filters, status=None).is_empty
        )
        if only_status or self.total_estimate() <= EXACT_COUNT_LIMIT:
            counted = int(
                self._value(
                    "dashboard_count_matching",
                    {**filters.params(), "cap": EXACT_COUNT_LIMIT + 1},
                )
            )
            if counted <= EXACT_COUNT_LIMIT:
                return Count(counted, exact=True)
        return Count(estimate, exact=False)

    def _estimate_matching(self, filters: TaskFilter) -> int:
        statement = "EXPLAIN (FORMAT JSON) " + self.queries["dashboard_tasks_matching"]
        with self.connection.cursor() as cursor:
            cursor.execute(statement, {**filters.params(), "cap": None})
            row = cursor.fetchone()
        assert row is not None
        return int(row[0][0]["Plan"]["Plan Rows"])

    def retry_matching(self, filters: TaskFilter) -> list[uuid.UUID]:
        """Retry every task the filters match, whose status (FAILED or CANCELLED) they name."""
        if filters.status not in RETRYABLE:
            raise InvalidTaskOption(
                "a bulk retry needs the filter status=failed or status=cancelled"
            )
        return [row["id"] for row in self._rows("dashboard_retry_matching", filters.params())]

    def failure_groups(
        self, scan: int = FAILURE_SCAN_LIMIT, limit: int = 50
    ) -> list[dict[str, Any]]:
        """The latest FAILED tasks grouped by error shape (type and message, numbers and
        quoted values blanked), the largest group first."""
        return self._rows("dashboard_failure_groups", {"scan": scan, "limit": limit})

    def running_tasks(self, limit: int = 1000) -> list[dict[str, Any]]:
        """The RUNNING tasks (id, name, queue, worker_id, started_at), the oldest first."""
        return self._rows("dashboard_running_tasks", {"limit": limit})

    def total_estimate(self) -> int:
        """The planner's estimate of all tasks (cheap at any size)."""
        return int(self._value("dashboard_table_estimate"))

    def fingerprint(self) -> tuple[Any, ...]:
        """A value that changes when tasks, workers or paused queues change (see the SQL)."""
        return tuple(self._rows("dashboard_fingerprint")[0].values())


def _empty_queue_row(queue: str) -> dict[str, Any]:
    return {
        "queue": queue,
        "paused": False,
        "paused_at": None,
        "pending": 0,
        "retrying": 0,
        "running": 0,
        "waiting": 0,
        "due": 0,
        "scheduled": 0,
        "oldest_due_seconds": None,
        "failed": 0,
        "cancelled": 0,
        "completed_recent": 0,
        "failed_recent": 0,
        "avg_wait_seconds": None,
    }
