"""The operations commands against the real PostgreSQL: `status`, `workers`, `tasks`,
`enqueue`, `queue`. Each is checked for content in its table and its --json output, and
user mistakes for one readable line with a non-zero exit."""

from __future__ import annotations

import datetime
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import operations_tasks
import psycopg
import pytest
from click.testing import CliRunner, Result
from support.paths import ROOT
from support.waiting import wait_until

from pgqueue.cli import main
from pgqueue.settings import get_settings

Run = Callable[..., Result]


@pytest.fixture
def cli(dsn: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Run]:
    """cli(*args, input=None, code=0) -> the click Result of `pgqueue *args` on the test DB."""
    monkeypatch.setenv("PGQUEUE_DSN", dsn)
    get_settings.cache_clear()
    runner = CliRunner()

    def run(*args: str, input: str | None = None, code: int | None = 0) -> Result:
        result = runner.invoke(main, list(args), input=input)
        # Tasks' own tracebacks are data on stdout; pgqueue's errors never show one.
        assert "Traceback" not in result.stderr, result.stderr
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception
        if code is not None:
            assert result.exit_code == code, result.output
        return result

    yield run
    get_settings.cache_clear()


def as_json(result: Result) -> Any:
    return json.loads(result.stdout)


def one_line_error(result: Result) -> str:
    """The single `Error: ...` line a user mistake prints, with a non-zero exit."""
    assert result.exit_code != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ")
    return lines[0]


def short_id(task_id: str) -> str:
    """The id as tables show it: its last 8 hex digits."""
    return task_id[-8:]


def task_status(db: psycopg.Connection[Any], task_id: str) -> tuple[str, int] | None:
    row = db.execute(
        "SELECT status::text, attempts FROM pgqueue.tasks WHERE id = %s", [task_id]
    ).fetchone()
    return None if row is None else (row[0], row[1])


@pytest.fixture(autouse=True)
def _closed_gate() -> Iterator[None]:
    operations_tasks.GATE.clear()
    yield
    operations_tasks.GATE.set()


def test_a_task_queued_failed_and_retried_shows_up_where_it_should(
    cli: Run, db: psycopg.Connection[Any], start_worker: Any
) -> None:
    queued = cli(
        "enqueue", "operations_tasks.explode", "--queue", "ops", "--kwargs", '{"message": "kaput"}'
    )
    task_id = queued.stdout.strip()
    assert task_status(db, task_id) == ("PENDING", 0)

    # Queued: a due task of queue ops, in the table and the JSON.
    ops = next(q for q in as_json(cli("status", "--json"))["queues"] if q["queue"] == "ops")
    assert (ops["pending"], ops["due"], ops["failed"], ops["paused"]) == (1, 1, 0, False)
    assert ops["oldest_pending_seconds"] >= 0
    table = cli("status").stdout
    assert "1 queue, 0 live workers" in table
    ops_line = next(line for line in table.splitlines() if line.startswith("ops "))
    assert "paused" not in ops_line
    listed = as_json(cli("tasks", "list", "--status", "pending", "--json"))
    assert [(t["id"], t["name"], t["kwargs"]) for t in listed] == [
        (task_id, "operations_tasks.explode", {"message": "kaput"})
    ]

    # Failed (max_retries=0): counted as failed, listed with its error, shown with traceback.
    worker = start_worker(queues=["ops"])
    wait_until(lambda: task_status(db, task_id) == ("FAILED", 1))
    ops = next(q for q in as_json(cli("status", "--json"))["queues"] if q["queue"] == "ops")
    assert (ops["pending"], ops["due"], ops["failed"], ops["failed_last_minute"]) == (0, 0, 1, 1)
    failed_table = cli("tasks", "list", "--status", "failed").stdout
    row = next(line for line in failed_table.splitlines() if short_id(task_id) in line)
    assert "ValueError: kaput" in row and "1/1" in row
    assert "1 of 1 FAILED tasks" in failed_table
    assert cli("tasks", "list", "--status", "PENDING", "--json").stdout.strip() == "[]"
    shown = as_json(cli("tasks", "show", task_id, "--json"))
    assert (shown["status"], shown["attempts"], shown["kwargs"]) == (
        "FAILED",
        1,
        {"message": "kaput"},
    )
    assert shown["error"].startswith("ValueError: kaput")
    assert "Traceback (most recent call last)" in shown["error"]
    assert shown["ran_seconds"] is not None and shown["ran_seconds"] >= 0
    assert shown["waited_seconds"] is not None
    page = cli("tasks", "show", task_id).stdout
    for expected in ("FAILED", "1 of 1", '{"message": "kaput"}', "Traceback", "raise ValueError"):
        assert expected in page, expected

    # Retried: back to PENDING, run again by the worker, failed again on attempt 2.
    assert cli("tasks", "retry", task_id).stdout.strip() == f"retried {task_id}"
    wait_until(lambda: task_status(db, task_id) == ("FAILED", 2))
    assert as_json(cli("tasks", "show", task_id, "--json"))["attempts"] == 2
    worker.stop()

    retried = as_json(cli("tasks", "retry", "--failed", "--queue", "ops", "--json"))
    assert retried == {"retried": [task_id], "refused": []}
    assert task_status(db, task_id) == ("PENDING", 2)
    assert cli("tasks", "retry", "--failed").stdout.strip() == "no task retried"
    listed = as_json(cli("tasks", "list", "--queue", "ops", "--json"))
    assert [(t["id"], t["status"]) for t in listed] == [(task_id, "PENDING")]

    assert cli("tasks", "cancel", task_id).stdout.strip() == f"cancelled {task_id}"
    assert task_status(db, task_id) == ("CANCELLED", 2)
    refused = cli("tasks", "cancel", task_id, "--json", code=1)
    assert as_json(refused)["refused"] == [
        {
            "id": task_id,
            "status": "CANCELLED",
            "reason": "it is CANCELLED; only PENDING, RETRYING or RUNNING tasks can be cancelled",
        }
    ]


def test_tasks_list_filters_by_name_and_limit(cli: Run) -> None:
    ids = [
        cli("enqueue", "app.a", "--unchecked", "--queue", "q1").stdout.strip(),
        cli("enqueue", "app.b", "--unchecked", "--queue", "q1").stdout.strip(),
        cli("enqueue", "app.a", "--unchecked", "--queue", "q2").stdout.strip(),
    ]
    by_name = as_json(cli("tasks", "list", "--name", "app.a", "--json"))
    assert [t["id"] for t in by_name] == [ids[2], ids[0]]  # newest first
    assert [t["id"] for t in as_json(cli("tasks", "list", "--limit", "1", "--json"))] == [ids[2]]
    q1 = cli("tasks", "list", "--queue", "q1").stdout
    assert short_id(ids[0]) in q1 and short_id(ids[1]) in q1 and short_id(ids[2]) not in q1
    assert "2 of 2 tasks in queue 'q1'" in q1


def test_workers_lists_the_live_workers(cli: Run, start_worker: Any) -> None:
    assert as_json(cli("workers", "--json")) == []
    worker = start_worker(queues=["ops", "mail"], concurrency=3)
    worker_id = worker.manager.worker_id
    rows = wait_until(lambda: as_json(cli("workers", "--json")))
    assert len(rows) == 1
    row = rows[0]
    assert (row["id"], row["pid"], row["queues"], row["concurrency"], row["tasks_running"]) == (
        worker_id,
        os.getpid(),
        ["ops", "mail"],
        3,
        0,
    )
    assert row["heartbeat_age_seconds"] < 30
    datetime.datetime.fromisoformat(row["started_at"])
    table = cli("workers").stdout
    assert "1 live worker" in table
    line = next(line for line in table.splitlines() if worker_id in line)
    assert "ops,mail" in line and "0/3" in line and "ago" in line
    worker.stop()
    assert as_json(cli("workers", "--json")) == []


def test_queue_pause_and_resume_against_a_running_worker(
    cli: Run, db: psycopg.Connection[Any], spawn_worker: Any, tmp_path: Path
) -> None:
    # Polling every 60 s: only NOTIFY can wake this worker within the test's waits.
    worker = spawn_worker(
        "--queues", "ops,other", "--import", "operations_tasks", "--interval", "60"
    )
    wait_until(lambda: as_json(cli("workers", "--json")))
    release = tmp_path / "release"
    running = cli(
        "enqueue", "operations_tasks.wait_for_file", "--kwargs", json.dumps({"path": str(release)})
    ).stdout.strip()
    wait_until(lambda: task_status(db, running) == ("RUNNING", 1))

    assert "paused queue 'ops'" in cli("queue", "pause", "ops").stdout
    assert as_json(cli("queue", "pause", "ops", "--json"))["changed"] is False
    waiting = cli("enqueue", "operations_tasks.echo", "--kwargs", '{"value": 1}').stdout.strip()
    other = cli("enqueue", "operations_tasks.echo", "--queue", "other").stdout.strip()
    # The worker claimed from "other" after the ops task was queued: it skipped ops.
    wait_until(lambda: task_status(db, other) == ("COMPLETED", 1))
    assert task_status(db, waiting) == ("PENDING", 0)
    ops = next(q for q in as_json(cli("status", "--json"))["queues"] if q["queue"] == "ops")
    assert (ops["paused"], ops["due"], ops["running"]) == (True, 1, 1)
    assert "ops (paused)" in cli("status").stdout

    # A paused queue's running task finishes; the worker stays up.
    release.touch()
    wait_until(lambda: task_status(db, running) == ("COMPLETED", 1))
    assert task_status(db, waiting) == ("PENDING", 0)
    assert len(as_json(cli("workers", "--json"))) == 1

    assert cli("queue", "resume", "ops").stdout.strip() == "resumed queue 'ops'"
    wait_until(lambda: task_status(db, waiting) == ("COMPLETED", 1), timeout=10)
    assert as_json(cli("queue", "resume", "ops", "--json"))["changed"] is False
    worker.signal(signal.SIGTERM)
    assert worker.wait() == 0


def test_status_watch_refreshes_until_interrupted(
    cli: Run, dsn: str, db: psycopg.Connection[Any], tmp_path: Path
) -> None:
    cli("enqueue", "app.first", "--unchecked", "--queue", "watched")
    out = tmp_path / "watch.out"
    env = {**os.environ, "PGQUEUE_DSN": dsn, "PYTHONPATH": str(ROOT)}
    with out.open("wb") as sink:
        watcher = subprocess.Popen(
            [sys.executable, "-m", "pgqueue.cli", "status", "--watch", "--interval", "0.2"],
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_until(lambda: "\nwatched " in out.read_text())
            cli("enqueue", "app.second", "--unchecked", "--queue", "watched")
            cli("enqueue", "app.third", "--unchecked", "--queue", "later")
            # A later refresh shows what changed after the watch started.
            wait_until(lambda: "\nlater " in out.read_text())
            watcher.send_signal(signal.SIGINT)
            assert watcher.wait(10) == 0
        finally:
            if watcher.poll() is None:
                watcher.kill()
    text = out.read_text()
    assert "Traceback" not in text
    # Each refresh has two rows of the queue: by status (Pending), by time (Due now).
    watched_rows = [line.split()[1] for line in text.splitlines() if line.startswith("watched ")]
    assert watched_rows[:2] == ["1", "1"] and watched_rows[-2:] == ["2", "2"]


def test_status_watch_json_prints_one_object_per_refresh(cli: Run, dsn: str) -> None:
    cli("enqueue", "app.first", "--unchecked", "--queue", "q")
    env = {**os.environ, "PGQUEUE_DSN": dsn, "PYTHONPATH": str(ROOT)}
    watcher = subprocess.Popen(
        [sys.executable, "-m", "pgqueue.cli", "status", "--watch", "--json", "--interval", "0.1"],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert watcher.stdout is not None
    try:
        lines = [json.loads(watcher.stdout.readline()) for _ in range(3)]
    finally:
        watcher.send_signal(signal.SIGINT)
        watcher.wait(10)
    assert [line["queues"][0]["queue"] for line in lines] == ["q", "q", "q"]
    assert lines[0]["at"] < lines[1]["at"] < lines[2]["at"]


def test_purge_asks_before_deleting_unless_yes(cli: Run, db: psycopg.Connection[Any]) -> None:
    db.execute(
        "INSERT INTO pgqueue.tasks (name, status, finished_at) VALUES"
        " ('old', 'FAILED', now() - interval '8 days'),"
        " ('old', 'FAILED', now() - interval '9 days'),"
        " ('new', 'FAILED', now() - interval '1 day')"
    )
    refused = cli("tasks", "purge", "--status", "failed", "--older-than", "7d", input="n\n", code=1)
    assert "Delete 2 FAILED tasks older than 7d?" in refused.output
    assert "Aborted" in refused.output
    assert db.execute("SELECT count(*) FROM pgqueue.tasks").fetchone() == (3,)

    agreed = cli("tasks", "purge", "--status", "failed", "--older-than", "7d", input="y\n")
    assert agreed.stdout.strip() == "deleted 2 FAILED tasks older than 7d"
    assert db.execute("SELECT array_agg(name) FROM pgqueue.tasks").fetchone() == (["new"],)

    quiet = cli("tasks", "purge", "-s", "FAILED", "--older-than", "12h", "--yes", "--json")
    assert as_json(quiet) == {"deleted": 1, "status": "FAILED", "older_than_seconds": 43200.0}
    assert db.execute("SELECT count(*) FROM pgqueue.tasks").fetchone() == (0,)


def test_enqueue_options_reach_the_row(cli: Run, db: psycopg.Connection[Any]) -> None:
    task_id = as_json(
        cli(
            "enqueue",
            "app.report",
            "--unchecked",
            "--queue",
            "reports",
            "--priority",
            "7",
            "--delay",
            "5m",
            "--max-retries",
            "2",
            "--kwargs",
            '{"day": "2026-01-01", "n": [1, 2]}',
            "--json",
        )
    )["id"]
    row = db.execute(
        "SELECT name, queue, priority, max_retries, kwargs,"
        " EXTRACT(epoch FROM run_at - created_at) FROM pgqueue.tasks WHERE id = %s",
        [task_id],
    ).fetchone()
    assert row is not None
    assert row[:5] == ("app.report", "reports", 7, 2, {"day": "2026-01-01", "n": [1, 2]})
    assert float(row[5]) == pytest.approx(300, abs=2)
    # With --import, the task's declared queue applies and its signature is checked.
    declared = cli("enqueue", "operations_tasks.echo", "--import", "operations_tasks")
    queue = db.execute(
        "SELECT queue FROM pgqueue.tasks WHERE id = %s", [declared.stdout.strip()]
    ).fetchone()
    assert queue == ("ops",)
    wrong = cli(
        "enqueue", "operations_tasks.echo", "--import", "operations_tasks",
        "--kwargs", '{"nope": 1}', code=1,
    )  # fmt: skip
    assert "nope" in one_line_error(wrong)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["tasks", "list", "--status", "done"], "unknown status 'done': use one of pending,"),
        (["tasks", "show", "not-an-id"], "'not-an-id' is not a task id"),
        (["tasks", "show", "00000000-0000-0000-0000-000000000000"], "no task has id"),
        (["tasks", "retry", "123"], "'123' is too short for a task id"),
        (["tasks", "cancel", "x", "00000000-0000-0000-0000-000000000000"], "'x' is not a task id"),
        (["tasks", "purge", "--status", "failed", "--older-than", "7x"], "'7x' is not a duration"),
        (["tasks", "purge", "--status", "running", "--older-than", "1d"], "RUNNING tasks cannot"),
        (["enqueue", "app.x", "--kwargs", "{nope"], "--kwargs is not valid JSON"),
        (["enqueue", "app.x", "--kwargs", "[1]"], "--kwargs must be a JSON object"),
        (["enqueue", "app.x", "--kwargs", '{"queue": "q"}'], "--kwargs cannot hold queue"),
        (["enqueue", "app.x", "--delay", "soon"], "'soon' is not a duration"),
        (["queue", "pause", ""], "queue name is empty"),
    ],
)
def test_user_mistakes_are_one_line(cli: Run, args: list[str], expected: str) -> None:
    assert expected in one_line_error(cli(*args, code=None))


def test_retry_of_a_task_that_did_not_fail_is_refused(cli: Run) -> None:
    task_id = cli("enqueue", "app.x", "--unchecked").stdout.strip()
    refused = cli("tasks", "retry", task_id, code=1)
    assert refused.stdout == ""
    assert refused.stderr.strip() == (
        f"not retried: {task_id}: it is PENDING; only FAILED or CANCELLED tasks can be retried"
    )
    missing = str(uuid.UUID(int=1))
    assert "no task has id" in cli("tasks", "retry", missing, code=1).stderr
    usage = cli("tasks", "retry", code=2)
    assert "give task ids or --failed" in usage.stderr


def test_an_unreachable_database_is_one_line(cli: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGQUEUE_DSN", "postgresql://postgres@127.0.0.1:1/nothing")
    get_settings.cache_clear()
    for args in (["status"], ["workers", "--json"], ["tasks", "list"], ["enqueue", "app.x"]):
        line = one_line_error(cli(*args, code=1))
        assert "cannot use PostgreSQL at postgresql://postgres@127.0.0.1:1/nothing" in line
