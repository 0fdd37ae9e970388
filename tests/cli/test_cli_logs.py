"""A worker's logs as a person and a log collector use them: `--log-format json` (one JSON
object per line, naming the task), a task FAILED for good logged once at ERROR with its
traceback (an option, on by default), the metrics server on 127.0.0.1 unless told."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import worker_tasks
from support.paths import worker_pythonpath
from support.waiting import wait_until

from pgqueue import TaskManager


def status(db: psycopg.Connection[Any], task_id: object) -> str:
    row = db.execute("SELECT status::text FROM pgqueue.tasks WHERE id = %s", [task_id]).fetchone()
    return "" if row is None else str(row[0])


def test_json_lines_name_the_task_and_a_final_failure_carries_its_traceback_once(
    dsn: str, tm: TaskManager, db: psycopg.Connection[Any], tmp_path: Path
) -> None:
    stderr = tmp_path / "worker.err"
    env = {
        "PATH": "/usr/bin:/bin",
        "PGQUEUE_DSN": dsn,
        "PYTHONPATH": worker_pythonpath(),
        "PYTHONUNBUFFERED": "1",
    }
    command = [sys.executable, "-m", "pgqueue", "--log-format", "json", "worker"]
    with stderr.open("wb") as sink:
        process = subprocess.Popen(
            [*command, "--import", "worker_tasks", "--metrics-port", "0"],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=sink,
        )
        try:
            ok = worker_tasks.record.delay(label="fine")
            bad = worker_tasks.always_fails.delay(message="nope", max_retries=1)  # 2 attempts
            wait_until(lambda: status(db, ok) == "COMPLETED" and status(db, bad) == "FAILED")
            wait_until(lambda: " is FAILED" in stderr.read_text())
        finally:
            process.terminate()
            assert process.wait(30) == 0
    lines = [json.loads(line) for line in stderr.read_text().splitlines()]  # every one JSON
    for line in lines:
        assert {"time", "level", "logger", "message"} <= set(line), line
        assert line["time"].endswith("+00:00")

    about_bad = [line for line in lines if line.get("task_id") == str(bad)]
    assert all(
        (line["task"], line["queue"]) == ("worker_tasks.always_fails", "default")
        for line in about_bad
    )
    assert [line["attempt"] for line in about_bad if " started " in line["message"]] == [1, 2]
    failures = [line for line in about_bad if " failed after " in line["message"]]
    assert [(line["level"], line["attempt"]) for line in failures] == [
        ("WARNING", 1),
        ("WARNING", 2),
    ]
    assert all("exc" not in line for line in failures)  # a failed attempt: one line
    [final] = [line for line in lines if "exc" in line]  # the traceback, once
    assert final["level"] == "ERROR" and final["task_id"] == str(bad)
    assert final["message"].endswith("worker_tasks.always_fails is FAILED: ValueError: nope")
    assert final["exc"].startswith("Traceback (most recent call last):")
    assert "raise ValueError(message)" in final["exc"]
    assert final["exc"].endswith("ValueError: nope")

    assert any(line.get("task_id") == str(ok) for line in lines)
    serving = [line["message"] for line in lines if line["logger"] == "pgqueue.metrics"]
    assert serving and serving[0].startswith("serving Prometheus metrics on http://127.0.0.1:")


def test_final_failure_traceback_in_text_and_the_option_that_turns_it_off(
    spawn_worker: Any, tm: TaskManager, db: psycopg.Connection[Any]
) -> None:
    shown = spawn_worker("--import", "worker_tasks")
    first = worker_tasks.always_fails.delay(message="first", max_retries=0)
    wait_until(lambda: f"{first} worker_tasks.always_fails is FAILED" in shown.output)
    shown.signal(signal.SIGTERM)
    assert shown.wait() == 0
    text = shown.output
    assert text.count("Traceback (most recent call last):") == 1
    after = text.split(f"{first} worker_tasks.always_fails is FAILED: ValueError: first\n", 1)[1]
    assert after.startswith("Traceback (most recent call last):")

    env = {"PGQUEUE_LOG_FAILURE_TRACEBACKS": "true"}
    quiet = spawn_worker("--import", "worker_tasks", "--no-log-tracebacks", env=env)
    second = worker_tasks.always_fails.delay(message="second", max_retries=0)
    wait_until(lambda: f"{second} worker_tasks.always_fails is FAILED" in quiet.output)
    quiet.signal(signal.SIGTERM)
    assert quiet.wait() == 0
    assert "ERROR pgqueue.outcomes: task" in quiet.output
    assert "Traceback" not in quiet.output

    off = spawn_worker("--import", "worker_tasks", env={"PGQUEUE_LOG_FAILURE_TRACEBACKS": "0"})
    third = worker_tasks.always_fails.delay(message="third", max_retries=0)
    wait_until(lambda: f"{third} worker_tasks.always_fails is FAILED" in off.output)
    off.signal(signal.SIGTERM)
    assert off.wait() == 0
    assert "Traceback" not in off.output
