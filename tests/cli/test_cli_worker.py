"""`pgqueue worker [start]` as users run it: options, imports, logging, signals, exit codes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest
import worker_tasks
from support.paths import ROOT, worker_pythonpath
from support.waiting import wait_until

from pgqueue import TaskManager, TaskStatus

PGQUEUE = str(Path(sys.executable).with_name("pgqueue"))


def status(db: psycopg.Connection[Any], task_id: uuid.UUID) -> str:
    row = db.execute("SELECT status::text FROM pgqueue.tasks WHERE id = %s", (task_id,)).fetchone()
    assert row is not None
    return str(row[0])


def task_env(dsn: str, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "PGQUEUE_DSN": dsn,
        "PYTHONPATH": worker_pythonpath(),
        "PYTHONUNBUFFERED": "1",
        **extra,
    }


def started(worker: Any) -> None:
    wait_until(lambda: " started: queues=" in worker.output or worker.process.poll() is not None)
    assert worker.process.poll() is None, worker.output


def test_worker_alone_is_worker_start(dsn: str, tm: TaskManager, db: Any, tmp_path: Path) -> None:
    log = tmp_path / "worker.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [PGQUEUE, "worker", "--import", "worker_tasks"],
            env=task_env(dsn),
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            task_id = worker_tasks.record.delay(label="plain")
            wait_until(lambda: status(db, task_id) == "COMPLETED")
            process.send_signal(signal.SIGTERM)
            assert process.wait(20) == 0
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    assert "queues=default concurrency=10" in log.read_text()


def test_options_queues_concurrency_interval(spawn_worker: Any, tm: TaskManager, db: Any) -> None:
    worker = spawn_worker(
        "--queues", "emails, urgent", "--concurrent", "3", "--interval", "0.5",
        "--import", "worker_tasks",
    )  # fmt: skip
    started(worker)
    assert "queues=emails,urgent concurrency=3" in worker.output
    ids = [worker_tasks.async_sleep.delay(queue="urgent", seconds=0.6) for _ in range(6)]
    other = worker_tasks.record.delay(queue="default", label="not mine")
    wait_until(lambda: all(status(db, i) == "COMPLETED" for i in ids))
    starts = sorted(
        row[0]
        for row in db.execute(
            "SELECT started_at FROM pgqueue.tasks WHERE queue = 'urgent'"
        ).fetchall()
    )
    # Three at a time: the second three start only when the first three are done.
    assert (starts[2] - starts[0]).total_seconds() < 0.3
    assert (starts[3] - starts[0]).total_seconds() >= 0.55
    assert status(db, other) == "PENDING"


def test_task_log_lines_and_log_level(spawn_worker: Any, tm: TaskManager, db: Any) -> None:
    worker = spawn_worker("--import", "worker_tasks")
    ok = worker_tasks.record.delay(label="logged")
    bad = worker_tasks.always_fails.delay(message="nope", max_retries=0)
    wait_until(lambda: status(db, ok) == "COMPLETED" and status(db, bad) == "FAILED")
    output = worker.output
    assert f"task {ok} worker_tasks.record started (queue=default attempt=1)" in output
    assert f"task {ok} worker_tasks.record completed in " in output
    assert f"task {bad} worker_tasks.always_fails failed after " in output
    assert "(attempt 1 of 1): ValueError: nope" in output

    worker.signal(signal.SIGTERM)
    assert worker.wait() == 0
    quiet = spawn_worker("--import", "worker_tasks", env={"PGQUEUE_LOG_LEVEL": "WARNING"})
    quiet_id = worker_tasks.record.delay(label="quiet")
    wait_until(lambda: status(db, quiet_id) == "COMPLETED")
    assert str(quiet_id) not in quiet.output
    assert " INFO " not in quiet.output


def test_log_level_option(dsn: str, tm: TaskManager, db: Any, tmp_path: Path) -> None:
    process = subprocess.run(
        [PGQUEUE, "--log-level", "bogus", "worker"],
        env=task_env(dsn),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert process.returncode == 2
    assert "--log-level" in process.stderr and "Traceback" not in process.stderr


def test_current_directory_is_on_sys_path(
    dsn: str, tm: TaskManager, db: Any, tmp_path: Path
) -> None:
    (tmp_path / "project_tasks.py").write_text(
        "from pgqueue import AsyncTask\n\n\n"
        "@AsyncTask()\n"
        "def shout(word: str) -> str:\n"
        "    return word.upper()\n"
    )
    env = task_env(dsn)
    env["PYTHONPATH"] = str(ROOT)  # not the project folder: the CLI must add it
    log = tmp_path / "worker.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [PGQUEUE, "worker", "start", "--import", "project_tasks"],
            env=env,
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            task_id = tm.queue_task(task="project_tasks.shout", word="hello")
            wait_until(lambda: status(db, task_id) in ("COMPLETED", "FAILED") or process.poll())
            assert tm.get_task(task_id).result == "HELLO", log.read_text()  # type: ignore[union-attr]
            process.send_signal(signal.SIGINT)
            assert process.wait(20) == 0
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--import", "no_such_module_xyz"], "cannot import task module 'no_such_module_xyz'"),
        (["--concurrent", "0"], "--concurrent"),
        (["--interval", "0"], "--interval"),
        (["--queues", "bad\x01queue"], "queue"),
    ],
)
def test_user_mistakes_are_one_line(
    dsn: str, tmp_path: Path, args: list[str], expected: str
) -> None:
    process = subprocess.run(
        [PGQUEUE, "worker", "start", *args],
        env=task_env(dsn),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert process.returncode != 0
    assert expected in process.stderr
    assert "Traceback" not in process.stderr + process.stdout


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_drains_a_running_task_and_exits_0(
    spawn_worker: Any, tm: TaskManager, db: Any, tmp_path: Path, signum: int
) -> None:
    worker = spawn_worker("--import", "worker_tasks")
    release = tmp_path / "release"
    task_id = worker_tasks.wait_for_file.delay(path=str(release))
    wait_until(lambda: status(db, task_id) == "RUNNING")
    worker.signal(signum)
    wait_until(lambda: "draining 1 running tasks" in worker.output)
    queued_during_drain = worker_tasks.record.delay(label="late")
    release.touch()
    assert worker.wait() == 0, worker.output
    assert status(db, task_id) == "COMPLETED"
    assert status(db, queued_during_drain) == "PENDING"  # no claims after the signal
    assert "Traceback" not in worker.output


def test_grace_period_ends_by_releasing_the_task(
    spawn_worker: Any, tm: TaskManager, db: Any, tmp_path: Path
) -> None:
    worker = spawn_worker("--import", "worker_tasks", "--grace", "0.5")
    task_id = worker_tasks.wait_for_file.delay(path=str(tmp_path / "never"))
    wait_until(lambda: status(db, task_id) == "RUNNING")
    began = time.monotonic()
    worker.signal(signal.SIGTERM)
    assert worker.wait() == 0, worker.output
    assert time.monotonic() - began < 10
    task = tm.get_task(task_id)
    assert task is not None
    assert task.status == TaskStatus.PENDING and task.attempts == 0


def test_grace_from_the_environment(
    spawn_worker: Any, tm: TaskManager, db: Any, tmp_path: Path
) -> None:
    worker = spawn_worker("--import", "worker_tasks", env={"PGQUEUE_SHUTDOWN_GRACE_SECONDS": "0.2"})
    task_id = worker_tasks.wait_for_file.delay(path=str(tmp_path / "never"))
    wait_until(lambda: status(db, task_id) == "RUNNING")
    worker.signal(signal.SIGTERM)
    assert worker.wait(timeout=10) == 0
    assert status(db, task_id) == "PENDING"


def test_second_signal_stops_at_once(
    spawn_worker: Any, tm: TaskManager, db: Any, tmp_path: Path
) -> None:
    worker = spawn_worker("--import", "worker_tasks", "--concurrent", "2")
    async_id = worker_tasks.wait_for_file.delay(path=str(tmp_path / "never"))
    sync_id = worker_tasks.sync_sleep.delay(seconds=120)
    wait_until(lambda: status(db, async_id) == status(db, sync_id) == "RUNNING")
    worker.signal(signal.SIGTERM)
    wait_until(lambda: "draining 2 running tasks" in worker.output)
    began = time.monotonic()
    worker.signal(signal.SIGTERM)
    code = worker.wait(timeout=10)
    assert time.monotonic() - began < 5
    assert code != 0
    # Not released: a forced stop leaves them to lease expiry and another worker.
    assert status(db, async_id) == status(db, sync_id) == "RUNNING"
