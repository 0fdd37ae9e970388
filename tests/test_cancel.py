"""Cancelling running tasks: the worker hears of it at once and stops the run."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import psycopg
from support.waiting import wait_until

from pgqueue import AsyncTask, TaskManager, current_task

started = threading.Event()
stopped: dict[str, float] = {}


@AsyncTask(queue="cancel")
async def sleeper(seconds: float) -> str:
    started.set()
    try:
        await asyncio.sleep(seconds)
    except asyncio.CancelledError:
        stopped["async"] = time.monotonic()
        raise
    return "slept"


@AsyncTask(queue="cancel")
def polite(seconds: float) -> str:
    started.set()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if current_task().cancelled:
            stopped["sync"] = time.monotonic()
            return "stopped early"
        time.sleep(0.02)
    return "finished"


@AsyncTask(queue="cancel")
def quick() -> str:
    return "quick"


def status_of(db: psycopg.Connection[Any], task_id: Any) -> str:
    return db.execute(
        "SELECT status::text FROM pgqueue.tasks WHERE id = %s", (task_id,)
    ).fetchone()[0]


def test_cancelling_a_running_async_task_stops_it_at_once(tm: TaskManager, start_worker, db):
    started.clear()
    # A lease of 60 s: the heartbeat (every 20 s) cannot be what stops the run.
    start_worker(queues=["cancel"], concurrency=1, lease_seconds=60)
    task_id = sleeper.delay(seconds=30)
    assert started.wait(10)
    asked = time.monotonic()
    assert tm.cancel(task_id)
    wait_until(lambda: "async" in stopped, timeout=5)
    assert stopped["async"] - asked < 2
    assert status_of(db, task_id) == "CANCELLED"
    # Its slot is free: with concurrency 1 the next task runs now, and the cancelled one
    # stays CANCELLED (its run reported nothing).
    follower = quick.delay()
    assert tm.wait(follower, timeout=5) == "quick"
    assert status_of(db, task_id) == "CANCELLED"
    row = db.execute(
        "SELECT result, finished_at IS NOT NULL FROM pgqueue.tasks WHERE id = %s", (task_id,)
    ).fetchone()
    assert row == (None, True)


def test_a_running_sync_task_sees_the_flag(tm: TaskManager, start_worker, db):
    started.clear()
    start_worker(queues=["cancel"], concurrency=1, lease_seconds=60)
    task_id = polite.delay(seconds=30)
    assert started.wait(10)
    asked = time.monotonic()
    assert tm.cancel(task_id)
    wait_until(lambda: "sync" in stopped, timeout=5)
    assert stopped["sync"] - asked < 2
    assert status_of(db, task_id) == "CANCELLED"
    # Its return value is refused: the task stays CANCELLED without a result.
    assert tm.wait(quick.delay(), timeout=5) == "quick"
    assert (
        db.execute("SELECT result FROM pgqueue.tasks WHERE id = %s", (task_id,)).fetchone()[0]
        is None
    )


def test_cancel_from_another_worker_process_side(tm: TaskManager, start_worker, db):
    """Two workers: only the one running the task stops; the other keeps working."""
    started.clear()
    stopped.clear()
    start_worker(queues=["cancel"], concurrency=1, lease_seconds=60)
    start_worker(queues=["cancel"], concurrency=1, lease_seconds=60)
    task_id = sleeper.delay(seconds=30)
    assert started.wait(10)
    assert tm.cancel(task_id)
    wait_until(lambda: "async" in stopped, timeout=5)
    ids = tm.queue_tasks(quick, [{} for _ in range(4)])
    assert [tm.wait(i, timeout=5) for i in ids] == ["quick"] * 4
    assert not tm.cancel(task_id)  # already cancelled
