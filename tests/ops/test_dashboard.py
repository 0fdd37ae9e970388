"""The dashboard's reads (ops/dashboard.py) and its live updates (web/live.py), on a real
database: bounded keyset windows, exact and estimated counts, index use, the watcher."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from support.waiting import wait_until

from pgqueue.db.queries import queries
from pgqueue.ops import dashboard
from pgqueue.ops.dashboard import DashboardQueries, TaskFilter
from pgqueue.records import TaskStatus
from pgqueue.task_manager import TaskManager

pytest.importorskip("starlette", reason="the live updates are part of pgqueue[web]")

from pgqueue.web.live import ChangeWatcher, change_events


@pytest.fixture
def board(dsn: str) -> Iterator[DashboardQueries]:
    with DashboardQueries.connect(dsn) as opened:
        yield opened


def test_a_page_reads_a_bounded_window_and_says_where_to_go_on(
    board: DashboardQueries, tm: TaskManager
) -> None:
    wanted = tm.queue_tasks("app.jobs.a", [{"n": n} for n in range(5)], queue="target")
    tm.queue_tasks("app.jobs.b", [{"n": n} for n in range(30)], queue="noise")
    filters = TaskFilter(queue="target")

    first = board.tasks_page(filters, limit=3, scan=10)
    assert first.tasks == [] and first.window_ended and first.next_cursor is not None
    found, cursor, pages = [], None, 0
    while True:
        page = board.tasks_page(filters, before=cursor, limit=3, scan=10)
        found += [task.id for task in page.tasks]
        pages += 1
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert found == sorted(wanted, reverse=True)
    assert pages >= 4  # the 30 newer noise tasks took three windows of 10


def test_counts_are_exact_up_to_the_limit_then_estimated(
    board: DashboardQueries, tm: TaskManager, db: psycopg.Connection[Any], monkeypatch: Any
) -> None:
    tm.queue_tasks("app.jobs.a", [{"n": n} for n in range(40)], queue="q")
    db.execute("ANALYZE pgqueue.tasks")
    assert board.count_matching(TaskFilter(queue="q")) == dashboard.Count(40, exact=True)

    monkeypatch.setattr(dashboard, "EXACT_COUNT_LIMIT", 10)
    estimated = board.count_matching(TaskFilter(name="app.jobs.a"))
    assert not estimated.exact and estimated.value > 10
    by_status = board.count_matching(TaskFilter(status=TaskStatus.PENDING))
    assert not by_status.exact
    assert board.count_matching(TaskFilter(status=TaskStatus.FAILED)) == dashboard.Count(0, True)


def test_failed_and_cancelled_filters_read_the_problem_index(
    board: DashboardQueries, tm: TaskManager, db: psycopg.Connection[Any]
) -> None:
    tm.queue_tasks("app.jobs.a", [{"n": n} for n in range(5000)])
    db.execute(  # most finished tasks completed, a few failed: as in a healthy queue
        "UPDATE pgqueue.tasks SET status = 'COMPLETED', finished_at = now() "
        "WHERE id IN (SELECT id FROM pgqueue.tasks ORDER BY id LIMIT 4000)"
    )
    db.execute(
        "UPDATE pgqueue.tasks SET status = 'FAILED', finished_at = now(), error = 'E: x' "
        "WHERE id IN (SELECT id FROM pgqueue.tasks ORDER BY id LIMIT 20)"
    )
    db.execute("VACUUM ANALYZE pgqueue.tasks")
    for query, params in [
        ("dashboard_tasks_page", {"before": None, "limit": 50, "scan": 20000}),
        ("dashboard_failure_groups", {"scan": 10000, "limit": 50}),
    ]:
        values = {**TaskFilter(status=TaskStatus.FAILED).params(), **params}
        plan = db.execute("EXPLAIN (FORMAT JSON) " + queries()[query], values).fetchone()
        assert plan is not None
        assert "tasks_problems_idx" in json.dumps(plan[0]), query


def test_the_watcher_counts_changes_listening_or_polling(dsn: str, tm: TaskManager) -> None:
    def connect() -> psycopg.Connection[Any]:
        return psycopg.connect(dsn, autocommit=True)

    class Polling(ChangeWatcher):
        def _listen(self, conn: psycopg.Connection[Any]) -> bool:
            return False  # as behind a pooler that refuses LISTEN

    for watcher in (ChangeWatcher(connect, "pgqueue"), Polling(connect, "pgqueue")):
        with watcher.subscription():
            wait_until(lambda w=watcher: w.version >= 1)
            before = watcher.version
            tm.queue_task(task="app.jobs.a")
            wait_until(lambda w=watcher, v=before: w.version > v)
        watcher.stop()
    assert ChangeWatcher(connect, "pgqueue").mode == "down"


def test_a_page_stream_sends_a_change_event_when_tasks_are_queued(
    dsn: str, tm: TaskManager
) -> None:
    watcher = ChangeWatcher(lambda: psycopg.connect(dsn, autocommit=True), "pgqueue")
    queued_at_version: list[int] = []

    async def read() -> list[str]:
        received: list[str] = []

        async def seen_the_queueing() -> bool:
            return any(
                message.startswith("event: change")
                and int(message.split("data: ")[1]) > queued_at_version[0]
                for message in received
            )

        async for message in change_events(watcher, seen_the_queueing, batch_seconds=0.1):
            received.append(message)
            if message.startswith("retry:"):
                while watcher.version < 1:  # connected
                    await asyncio.sleep(0.05)
                queued_at_version.append(watcher.version)
                threading.Thread(target=tm.queue_tasks, args=("app.jobs.a", [{}] * 50)).start()
        return received

    messages = asyncio.run(asyncio.wait_for(read(), timeout=30))
    watcher.stop()
    assert messages[0].startswith("retry:")
    assert all(message.startswith("event: change\ndata: ") for message in messages[1:])
