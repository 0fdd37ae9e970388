"""Bad input: refused before any SQL by the producer, by CHECK constraints in the table,
and, for rows the worker cannot decode, FAILED at the first claim while the worker goes on."""

from __future__ import annotations

from typing import Any

import fault_tasks
import psycopg
import pytest
from support.faults import WorkerPool, all_finished, task_row
from support.waiting import wait_until

from pgqueue.errors import InvalidTaskOption
from pgqueue.settings import load_settings
from pgqueue.task_manager import TaskManager

UNREACHABLE = "postgresql://postgres@127.0.0.1:1/nowhere?connect_timeout=1"

INJECTION_SHAPED = [
    "x'; DROP TABLE pgqueue.tasks; --",
    'say "hi"',
    "%s",
    "%(id)s",
    "$1",
    "\\'",
    "队列-é-🚀",
    "q" * 128,
]


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"n": 1, "kill": "x" * 200}, "PGQUEUE_MAX_PAYLOAD_BYTES"),
        ({"n": 1, "kill": "nul\x00here"}, "NUL"),
        ({"n": 1, "kill": "lone \ud800 surrogate"}, "surrogate"),
    ],
)
def test_producer_refuses_before_any_sql(kwargs: dict[str, Any], words: str) -> None:
    """The database is unreachable, so a DatabaseUnavailable would mean SQL was tried:
    the refusal comes first, names the problem and the argument."""
    manager = TaskManager(settings=load_settings(dsn=UNREACHABLE, max_payload_bytes=100))
    with pytest.raises(InvalidTaskOption, match=words) as refused:
        manager.queue_task(fault_tasks.effect, **kwargs)
    if words != "PGQUEUE_MAX_PAYLOAD_BYTES":
        assert "'kill'" in str(refused.value)


@pytest.mark.parametrize("queue", ["", "q" * 129, "a\x00b", "tab\there", "new\nline", "\ud800"])
def test_bad_queue_names_are_refused(
    fault_db: psycopg.Connection[Any], faults_tm: TaskManager, queue: str
) -> None:
    with pytest.raises(InvalidTaskOption, match="queue name"):
        faults_tm.queue_task(fault_tasks.quick, n=1, queue=queue)
    assert fault_db.execute("SELECT count(*) FROM pgqueue.tasks").fetchone() == (0,)


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("name", ""),
        ("name", "n" * 1025),
        ("queue", ""),
        ("queue", "q" * 129),
        ("queue", "bad\x01queue"),
        ("kwargs", "[1, 2]"),
        ("attempts", "-1"),
        ("max_retries", "-1"),
    ],
)
def test_check_constraints_refuse_rows_inserted_by_hand(
    fault_db: psycopg.Connection[Any], column: str, value: str
) -> None:
    row = {"name": "fault_tasks.quick", "queue": "faults", "kwargs": "{}"}
    row[column] = value
    columns = ", ".join(row)  # fixed identifiers of this test, never user input
    with pytest.raises(psycopg.errors.CheckViolation):
        fault_db.execute(
            f"INSERT INTO pgqueue.tasks ({columns}) VALUES ({', '.join(['%s'] * len(row))})",
            list(row.values()),
        )
    assert fault_db.execute("SELECT count(*) FROM pgqueue.tasks").fetchone() == (0,)


def test_injection_shaped_names_are_only_data(
    fault_db: psycopg.Connection[Any], faults_tm: TaskManager, pool: WorkerPool
) -> None:
    """Queue and task names shaped like SQL, format strings, quotes, unicode and the
    longest allowed: stored verbatim, claimed and run; the table is intact."""
    ids = [
        faults_tm.queue_task(fault_tasks.quick, n=i, queue=queue)
        for i, queue in enumerate(INJECTION_SHAPED)
    ]
    by_name = faults_tm.queue_task("x'; DROP TABLE pgqueue.tasks; --", queue="faults")
    # A grace of 0: the name no worker knows fails at its first claim.
    pool.spawn(
        concurrency=4,
        queues=",".join([*INJECTION_SHAPED, "faults"]),
        extra_env={"PGQUEUE_UNKNOWN_TASK_GRACE_SECONDS": "0"},
    )
    wait_until(lambda: all_finished(fault_db, [*ids, by_name]), timeout=30)
    stored = fault_db.execute(
        "SELECT queue, status::text FROM pgqueue.tasks WHERE id = ANY(%s) ORDER BY result",
        (ids,),
    ).fetchall()
    assert stored == [(queue, "COMPLETED") for queue in INJECTION_SHAPED]
    unknown = task_row(fault_db, by_name)
    assert unknown["status"] == "FAILED" and "UnknownTask" in unknown["error"]
    assert "DROP TABLE" in unknown["error"]  # named back verbatim, never executed


def test_undecodable_row_fails_at_first_claim_and_the_worker_carries_on(
    fault_db: psycopg.Connection[Any], faults_tm: TaskManager, pool: WorkerPool
) -> None:
    """Rows inserted by hand whose kwargs the task cannot take: FAILED on the first claim
    with the reason, not retried (max_retries 5 notwithstanding); a good task then runs."""
    bad = [
        fault_db.execute(
            "INSERT INTO pgqueue.tasks (name, queue, kwargs, max_retries)"
            " VALUES ('fault_tasks.quick', 'faults', %s::jsonb, 5) RETURNING id",
            (kwargs,),
        ).fetchone()[0]  # type: ignore[index]
        for kwargs in ['{"wrong": 1}', "{}", '{"n": 1, "extra": true}']
    ]
    pool.spawn(concurrency=2)
    wait_until(lambda: all_finished(fault_db, bad), timeout=30)
    for task_id in bad:
        row = task_row(fault_db, task_id)
        assert (row["status"], row["attempts"]) == ("FAILED", 1)
        assert row["error"].startswith("InvalidTaskArguments:")
        assert "do not match its signature" in row["error"]
    assert fault_db.execute("SELECT count(*) FROM executions").fetchone() == (0,)
    good = faults_tm.queue_task(fault_tasks.quick, n=9)
    wait_until(lambda: all_finished(fault_db, [good]), timeout=20)
    assert task_row(fault_db, good)["status"] == "COMPLETED"
