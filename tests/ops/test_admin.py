"""pgqueue/ops/admin.py and the views of db/sql/operations.sql against the real PostgreSQL:
what each view reports for tasks put in known states, and the admin calls (pause, resume,
retry, purge) that the CLI runs."""

from __future__ import annotations

import time
import uuid
from typing import Any

import psycopg
import pytest
from support.database import statuses

from pgqueue.db import migrations
from pgqueue.db.claim import claimed_task
from pgqueue.db.queries import queries
from pgqueue.errors import (
    ConfigurationError,
    DatabaseUnavailable,
    InvalidTaskOption,
    PgQueueError,
    TaskNotFound,
)
from pgqueue.ops.admin import PURGE_BATCH_SIZE, Admin, parse_status
from pgqueue.records import TaskStatus, new_task_id

VIEWS = ("status_counts", "queue_stats", "due_tasks", "recent_failures", "live_workers")


def add_task(
    db: psycopg.Connection[Any],
    *,
    queue: str = "default",
    name: str = "ops.task",
    status: str = "PENDING",
    run_at_offset: float = 0.0,
    finished_ago: float | None = None,
    created_ago: float = 0.0,
    error: str | None = None,
    priority: int = 0,
) -> uuid.UUID:
    """A row in a given state, its times relative to the database clock."""
    task_id = new_task_id()
    db.execute(
        "INSERT INTO pgqueue.tasks (id, name, queue, status, priority, run_at, created_at,"
        " started_at, finished_at, error, attempts)"
        " VALUES (%(id)s, %(name)s, %(queue)s, %(status)s::text::pgqueue.task_status,"
        "  %(priority)s,"
        "  now() + %(run_at)s * interval '1 second', now() - %(created)s * interval '1 second',"
        "  CASE WHEN %(status)s::text IN ('RUNNING', 'COMPLETED', 'FAILED', 'RETRYING')"
        "       THEN now() - interval '1 second' END,"
        "  now() - %(finished)s::float8 * interval '1 second', %(error)s,"
        "  CASE WHEN %(status)s::text = 'PENDING' THEN 0 ELSE 1 END)",
        {
            "id": task_id,
            "name": name,
            "queue": queue,
            "status": status,
            "priority": priority,
            "run_at": run_at_offset,
            "created": created_ago,
            "finished": finished_ago,
            "error": error,
        },
    )
    return task_id


@pytest.fixture
def admin(dsn: str) -> Any:
    with Admin.connect(dsn) as session:
        yield session


# -- parsing -------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["failed", "FAILED", "Failed", " failed "])
def test_status_names_are_case_insensitive(text: str) -> None:
    assert parse_status(text) is TaskStatus.FAILED


def test_unknown_status_names_the_choices() -> None:
    with pytest.raises(InvalidTaskOption, match=r"unknown status 'done': use one of pending, "):
        parse_status("done")


# -- the views -----------------------------------------------------------------------------


def test_every_view_is_documented_in_the_database(db: psycopg.Connection[Any]) -> None:
    for view in VIEWS:
        comment = db.execute(
            "SELECT obj_description(%s::regclass, 'pg_class')", [f"pgqueue.{view}"]
        ).fetchone()
        assert comment and comment[0] and len(comment[0]) > 30, view


def test_queue_stats_counts_ages_and_throughput(admin: Admin, db: psycopg.Connection[Any]) -> None:
    add_task(db, queue="mail", run_at_offset=-60)  # due for a minute
    add_task(db, queue="mail", run_at_offset=-5)
    add_task(db, queue="mail", run_at_offset=3600)  # scheduled
    add_task(db, queue="mail", status="RETRYING", run_at_offset=-1, error="E: x")
    add_task(db, queue="mail", status="RUNNING")
    add_task(db, queue="mail", status="COMPLETED", finished_ago=10)
    add_task(db, queue="mail", status="COMPLETED", finished_ago=600)  # not in the last minute
    add_task(db, queue="mail", status="FAILED", finished_ago=5, error="E: y")
    add_task(db, queue="mail", status="CANCELLED", finished_ago=5)
    add_task(db, queue="sms", status="COMPLETED", finished_ago=1)
    admin.pause_queue("idle")  # paused, no task: still listed

    stats = {row["queue"]: row for row in admin.queue_stats()}
    assert list(stats) == ["idle", "mail", "sms"]
    mail = stats["mail"]
    assert {key: mail[key] for key in ("pending", "running", "retrying", "completed")} == {
        "pending": 3,
        "running": 1,
        "retrying": 1,
        "completed": 2,
    }
    assert (mail["failed"], mail["cancelled"], mail["total"]) == (1, 1, 9)
    assert (mail["due"], mail["scheduled"]) == (3, 1)
    assert mail["oldest_pending_seconds"] == pytest.approx(60, abs=5)
    assert (mail["completed_last_minute"], mail["failed_last_minute"]) == (1, 1)
    assert mail["paused"] is False
    assert stats["idle"]["paused"] is True
    assert stats["idle"]["total"] == 0 and stats["idle"]["oldest_pending_seconds"] is None
    assert stats["sms"]["oldest_pending_seconds"] is None

    assert [row["queue"] for row in admin.queue_stats(["sms", "nothing"])] == ["sms"]
    counts = dict(
        db.execute(
            "SELECT status::text, tasks FROM pgqueue.status_counts WHERE queue = 'mail'"
        ).fetchall()
    )
    assert counts == {
        "PENDING": 3,
        "RETRYING": 1,
        "RUNNING": 1,
        "COMPLETED": 2,
        "FAILED": 1,
        "CANCELLED": 1,
    }


def test_due_tasks_lists_only_runnable_due_tasks_longest_waiting_first(
    admin: Admin, db: psycopg.Connection[Any]
) -> None:
    newer = add_task(db, queue="a", run_at_offset=-10)
    older = add_task(db, queue="b", status="RETRYING", run_at_offset=-100)
    add_task(db, queue="a", run_at_offset=100)  # not due yet
    add_task(db, queue="a", status="RUNNING", run_at_offset=-500)  # started
    admin.pause_queue("b")
    due = admin.due_tasks()
    assert [row["id"] for row in due] == [older, newer]
    assert due[0]["paused"] is True and due[1]["paused"] is False
    assert due[0]["waiting_seconds"] == pytest.approx(100, abs=5)
    assert [row["id"] for row in admin.due_tasks(limit=1)] == [older]


def test_recent_failures_show_the_last_error_newest_first(
    admin: Admin, db: psycopg.Connection[Any]
) -> None:
    traceback_text = "ValueError: bad input\n\nTraceback (most recent call last):\n  ..."
    old = add_task(db, queue="a", status="FAILED", finished_ago=100, error=traceback_text)
    new = add_task(db, queue="b", status="FAILED", finished_ago=1, error="KeyError: 'k'")
    retrying = add_task(db, queue="a", status="RETRYING", run_at_offset=30, error="OSError: x")
    add_task(db, queue="a", status="RETRYING", run_at_offset=30)  # Snooze: no error
    add_task(db, queue="a", status="COMPLETED", finished_ago=1)
    rows = admin.failures()
    assert [row["id"] for row in rows] == [retrying, new, old]
    by_id = {row["id"]: row for row in rows}
    assert by_id[old]["last_error"] == "ValueError: bad input"
    assert by_id[old]["error"] == traceback_text
    assert by_id[retrying]["next_run_at"] is not None and by_id[new]["next_run_at"] is None
    assert [row["id"] for row in admin.failures(queue="a")] == [retrying, old]


def test_list_tasks_filters_newest_first(admin: Admin, db: psycopg.Connection[Any]) -> None:
    first = add_task(db, queue="a", name="x.one", status="FAILED", finished_ago=1)
    second = add_task(db, queue="a", name="x.two", status="FAILED", finished_ago=1)
    third = add_task(db, queue="b", name="x.one")
    assert [t.id for t in admin.list_tasks()] == [third, second, first]
    assert [t.id for t in admin.list_tasks(status="failed")] == [second, first]
    assert [t.id for t in admin.list_tasks(queue="b")] == [third]
    assert [t.id for t in admin.list_tasks(name="x.one")] == [third, first]
    assert [t.id for t in admin.list_tasks(name="x.one", status="FAILED", queue="a")] == [first]
    assert [t.id for t in admin.list_tasks(limit=1)] == [third]
    with pytest.raises(InvalidTaskOption, match="limit"):
        admin.list_tasks(limit=0)


def test_get_task_errors_name_the_id(admin: Admin) -> None:
    missing = uuid.uuid4()
    with pytest.raises(TaskNotFound, match=f"no task has id {missing}"):
        admin.get_task(missing)
    with pytest.raises(TaskNotFound, match="'12' is not a task id"):
        admin.get_task("12")


# -- steering ------------------------------------------------------------------------------


def claim(db: psycopg.Connection[Any], queues: list[str], schema: str = "pgqueue") -> list[str]:
    """The queues of what the workers' claim statement takes."""
    params = {"queues": queues, "limit": 10, "worker_id": "test-worker", "lease_seconds": 30}
    rows = db.execute(queries(schema)["claim_tasks"], {**params, "start_now": None, "now": None})
    return [claimed_task(row).queue for row in rows]


def test_paused_queues_are_not_claimed_until_resumed(
    admin: Admin, db: psycopg.Connection[Any], dsn: str
) -> None:
    add_task(db, queue="a")
    add_task(db, queue="b")
    assert admin.pause_queue("a") is True
    assert admin.pause_queue("a") is False  # already paused
    assert claim(db, ["a", "b"]) == ["b"]
    assert claim(db, ["a"]) == []
    # The idle wait ignores the paused queue's overdue task (it would spin otherwise).
    next_due = db.execute(
        "SELECT EXTRACT(epoch FROM min(run_at) - now()) FROM pgqueue.tasks"
        " WHERE queue = ANY(%s) AND status IN ('PENDING', 'RETRYING')"
        " AND queue <> ALL (ARRAY(SELECT queue FROM pgqueue.paused_queues))",
        [["a"]],
    ).fetchone()
    assert next_due == (None,)

    with psycopg.connect(dsn, autocommit=True) as listener:
        listener.execute('LISTEN "pgqueue.tasks"')
        assert admin.resume_queue("a") is True
        woken = [note.payload for note in listener.notifies(timeout=5, stop_after=1)]
    assert woken == ["a"], "resuming wakes the workers of the queue"
    assert admin.resume_queue("a") is False
    assert claim(db, ["a", "b"]) == ["a"]


def test_queue_names_are_checked(admin: Admin) -> None:
    with pytest.raises(InvalidTaskOption, match="queue name is empty"):
        admin.pause_queue("")


def test_retry_failed_puts_back_failed_tasks_of_one_queue_or_all(
    admin: Admin, db: psycopg.Connection[Any]
) -> None:
    a1 = add_task(db, queue="a", status="FAILED", finished_ago=1, error="E")
    a2 = add_task(db, queue="a", status="FAILED", finished_ago=1, error="E")
    b1 = add_task(db, queue="b", status="FAILED", finished_ago=1, error="E")
    cancelled = add_task(db, queue="a", status="CANCELLED", finished_ago=1)
    assert sorted(admin.retry_failed("a")) == sorted([a1, a2])
    assert admin.get_task(b1).status is TaskStatus.FAILED
    assert admin.get_task(cancelled).status is TaskStatus.CANCELLED
    retried = admin.get_task(a1)
    assert (retried.status, retried.finished_at, retried.attempts) == (TaskStatus.PENDING, None, 1)
    assert admin.retry_failed() == [b1]
    assert admin.retry_failed() == []
    assert admin.retry(cancelled) is True
    assert admin.retry(cancelled) is False  # PENDING now
    assert admin.cancel(cancelled) is True
    assert admin.cancel(cancelled) is False


def test_purge_deletes_one_status_older_than_the_age_in_batches(
    admin: Admin, db: psycopg.Connection[Any]
) -> None:
    old_failed = PURGE_BATCH_SIZE * 2 + 5
    db.execute(
        "INSERT INTO pgqueue.tasks (name, status, finished_at)"
        " SELECT 'bulk', 'FAILED', now() - interval '8 days' FROM generate_series(1, %s)",
        [old_failed],
    )
    recent_failed = add_task(db, status="FAILED", finished_ago=3600, error="E")
    old_completed = add_task(db, status="COMPLETED", finished_ago=9 * 86400)
    old_pending = add_task(db, status="PENDING", created_ago=9 * 86400)
    week = 7 * 86400
    assert admin.count_purgeable("failed", week) == old_failed
    assert admin.purge("failed", week) == old_failed
    assert statuses(db) == {"FAILED": 1, "COMPLETED": 1, "PENDING": 1}
    assert admin.get_task(recent_failed).status is TaskStatus.FAILED
    assert admin.purge("pending", week) == 1  # unfinished tasks age from created_at
    with pytest.raises(TaskNotFound):
        admin.get_task(old_pending)
    assert admin.get_task(old_completed).status is TaskStatus.COMPLETED
    with pytest.raises(InvalidTaskOption, match="RUNNING tasks cannot be purged"):
        admin.purge("running", 0)


# -- failures ------------------------------------------------------------------------------


def test_unreachable_database_fails_at_once_in_one_line() -> None:
    started = time.monotonic()
    with (
        pytest.raises(DatabaseUnavailable) as caught,
        Admin.connect("postgresql://postgres@127.0.0.1:1/nothing"),
    ):
        pass
    assert time.monotonic() - started < 5
    assert "127.0.0.1:1" in str(caught.value) and "\n" not in str(caught.value)


def test_a_database_without_the_schema_says_to_migrate(server_dsn: str) -> None:
    with (
        Admin.connect(server_dsn, schema="pgqueue_absent") as admin,
        pytest.raises(ConfigurationError, match="run `pgqueue migrate`"),
    ):
        admin.queue_stats()


def test_views_and_pause_follow_a_custom_schema(dsn: str) -> None:
    migrations.upgrade(dsn, schema="ops_custom")
    with Admin.connect(dsn, schema="ops_custom") as admin:
        admin.connection.execute("INSERT INTO ops_custom.tasks (name, queue) VALUES ('t', 'q')")
        admin.pause_queue("q")
        assert [(row["queue"], row["paused"], row["due"]) for row in admin.queue_stats()] == [
            ("q", True, 1)
        ]
        assert claim(admin.connection, ["q"], schema="ops_custom") == []
        # The default schema is untouched.
        assert admin.connection.execute("SELECT count(*) FROM pgqueue.tasks").fetchone() == (0,)


def test_admin_errors_are_pgqueue_errors() -> None:
    assert issubclass(DatabaseUnavailable, PgQueueError)
    assert issubclass(InvalidTaskOption, ValueError)


def test_count_tasks_is_exact_up_to_its_bound_then_an_estimate(
    admin: Admin, db: psycopg.Connection[Any]
) -> None:
    for _ in range(25):
        add_task(db, queue="many", status="FAILED")
    add_task(db, queue="many", status="PENDING")
    add_task(db, queue="other", status="FAILED")
    assert admin.count_tasks() == (27, True)
    assert admin.count_tasks(queue="many", status="failed") == (25, True)
    assert admin.count_tasks(queue="many", name="nobody") == (0, True)
    # Past the bound: the planner's estimate, never below the bound, said to be one.
    estimate, exact = admin.count_tasks(queue="many", exact_up_to=10)
    assert not exact and estimate >= 10


def test_find_task_id_takes_a_whole_id_or_a_unique_end(
    admin: Admin, db: psycopg.Connection[Any]
) -> None:
    first = uuid.UUID("01900000-0000-7000-8000-00001234abcd")
    second = uuid.UUID("01900000-0000-7000-8000-00011234abcd")
    for task_id in (first, second):
        db.execute("INSERT INTO pgqueue.tasks (id, name) VALUES (%s, 'ops.task')", [task_id])
    assert admin.find_task_id(str(first)) == first
    assert admin.find_task_id(first.hex.upper()) == first
    assert admin.find_task_id("01234ABCD") == first  # any case, any length from 6 digits
    assert admin.find_task_id("0011-234abcd") == second  # dashes as in the whole id
    with pytest.raises(TaskNotFound, match="more than one task id ends with 1234abcd"):
        admin.find_task_id("1234abcd")
    with pytest.raises(TaskNotFound, match="no task id ends with 999999"):
        admin.find_task_id("999999")
    with pytest.raises(TaskNotFound, match="'abcd' is too short for a task id"):
        admin.find_task_id("abcd")
    with pytest.raises(TaskNotFound, match="'xyz!' is not a task id"):
        admin.find_task_id("xyz!")
