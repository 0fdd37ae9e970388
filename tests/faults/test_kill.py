"""SIGKILL of workers: at random under load, at the worst instants, and by a poison task."""

from __future__ import annotations

import random
import time
from typing import Any

import fault_tasks
import psycopg
import pytest
from support.faults import (
    WorkerPool,
    all_finished,
    assert_exactly_once,
    execution_count,
    task_row,
    wait_for_worker_ready,
)
from support.history import assert_history_exact, events_of
from support.waiting import wait_until

from pgqueue.task_manager import TaskManager

STORM_TASKS = 3000  # scaled down from "thousands" to fit CI's two cores


def test_sigkill_storm_every_effect_exactly_once(
    fault_db: psycopg.Connection[Any], faults_tm: TaskManager, pool: WorkerPool
) -> None:
    """Random workers SIGKILLed every ~0.7 s while 3,000 tasks run: each effect once."""
    # Runs of 50 ms: the storm lasts about 5 s on 32 slots, for 7 kills or so (with 20 ms
    # runs, faster completions ended it after 4).
    ids = faults_tm.queue_tasks(
        fault_tasks.effect,
        [{"n": i, "sleep": 0.05} for i in range(STORM_TASKS)],
        max_retries=20,
    )
    for _ in range(4):
        pool.spawn(concurrency=8, lease=2.0)
    pool.supervise()
    rng = random.Random(20240601)
    kills = 0
    deadline = time.monotonic() + 120
    while not all_finished(fault_db, ids) and time.monotonic() < deadline:
        time.sleep(rng.uniform(0.4, 1.0))
        if execution_count(fault_db) < STORM_TASKS * 0.9 and pool.kill_random(rng):
            kills += 1
    pool.stop_supervising()
    assert kills >= 5, f"only {kills} kills happened; the storm proved little"
    wait_until(lambda: all_finished(fault_db, ids), timeout=60)
    assert_exactly_once(fault_db, ids)  # and each task's history (support/history.py)
    # The kills interrupted runs: some tasks ran more than once, yet took effect once.
    rerun = fault_db.execute(
        "SELECT count(*) FROM (SELECT task_id FROM executions GROUP BY 1 HAVING count(*) > 1) r"
    ).fetchone()
    assert rerun is not None and rerun[0] > 0


@pytest.mark.parametrize("instant", ["before_effect", "after_effect", "after_commit"])
def test_sigkill_at_the_worst_instants(
    fault_db: psycopg.Connection[Any], faults_tm: TaskManager, pool: WorkerPool, instant: str
) -> None:
    """The worker dies before the effect, after it but before the commit, or after the
    commit: the effect exists exactly once, and after the commit the task is not rerun."""
    task_id = faults_tm.queue_task(fault_tasks.effect, n=7, kill=instant)
    pool.spawn(concurrency=2, lease=1.0)
    pool.supervise()
    wait_until(lambda: pool.respawned >= 1, timeout=30)  # the first worker really died
    wait_until(lambda: all_finished(fault_db, [task_id]), timeout=30)
    pool.stop_supervising()
    assert_exactly_once(fault_db, [task_id])
    row = task_row(fault_db, task_id)
    if instant == "after_commit":
        assert row["attempts"] == 1 and execution_count(fault_db) == 1
        assert events_of(fault_db, task_id) == ["enqueued", "started", "completed"]
    else:
        # The lost run counted as an attempt; the rescue ran it once more.
        assert row["attempts"] == 2 and execution_count(fault_db) == 2
        assert events_of(fault_db, task_id) == [
            "enqueued",
            "started",
            "rescued",
            "started",
            "completed",
        ]
    assert_history_exact(fault_db, [task_id])


def test_poison_task_ends_failed_worker_lost(
    fault_db: psycopg.Connection[Any], faults_tm: TaskManager, pool: WorkerPool
) -> None:
    """A task that os._exit()s its worker: each rescue counts an attempt; after the last
    it is FAILED with "worker lost", and the workers carry on with other tasks."""
    poison = faults_tm.queue_task(fault_tasks.exit_now, max_retries=1)
    pool.spawn(concurrency=2, lease=1.0)
    pool.supervise()
    wait_until(lambda: all_finished(fault_db, [poison]), timeout=40)
    row = task_row(fault_db, poison)
    assert row["status"] == "FAILED"
    assert row["error"].startswith("worker lost")
    assert row["attempts"] == 2 and execution_count(fault_db) == 2
    assert events_of(fault_db, poison) == [
        "enqueued",
        "started",
        "rescued",
        "started",
        "rescued",
        "failed",
    ]
    assert_history_exact(fault_db, [poison])
    healthy = faults_tm.queue_task(fault_tasks.effect, n=1)
    wait_until(lambda: all_finished(fault_db, [healthy]), timeout=20)
    assert_exactly_once(fault_db, [healthy])
    wait_for_worker_ready(fault_db)


def test_sigkill_gives_back_the_tasks_claimed_ahead(
    fault_db: psycopg.Connection[Any], faults_tm: TaskManager, pool: WorkerPool
) -> None:
    """A worker SIGKILLed while holding tasks claimed ahead of a free slot: they never ran,
    so they go back to the queue with their attempt given back and run once elsewhere,
    even with max_retries=0; the run it had started counts as an attempt, as always."""
    # A lease of 3 s: under load, a heartbeat late by a second must not lose the tasks early.
    victim = pool.spawn(concurrency=1, lease=3.0)
    warm = faults_tm.queue_task(fault_tasks.effect, n=0)  # a short run: it now claims ahead
    wait_until(lambda: all_finished(fault_db, [warm]), timeout=30)
    # One commit, so one claim takes them all (a worker claims nothing ahead of a run
    # already long): the blocker starts, the others wait in the buffer behind it.
    with psycopg.connect(fault_db.info.dsn) as conn:
        blocker = faults_tm.queue_task(
            fault_tasks.effect, n=1, sleep=60, max_retries=0, connection=conn
        )
        held = faults_tm.queue_tasks(
            fault_tasks.effect, [{"n": 10 + i} for i in range(5)], max_retries=0, connection=conn
        )
    wait_until(lambda: execution_count(fault_db) == 2, timeout=30)
    # The only slot is busy: these are RUNNING only because the worker claimed ahead.
    claimed_ahead = (
        "SELECT count(*) FROM pgqueue.tasks"
        " WHERE id = ANY(%s) AND status = 'RUNNING' AND started_at IS NULL"
    )
    wait_until(lambda: fault_db.execute(claimed_ahead, (held,)).fetchone() == (5,), timeout=30)
    victim.kill()

    pool.spawn(concurrency=4, lease=1.0)
    wait_until(lambda: all_finished(fault_db, [blocker, *held]), timeout=60)
    for task_id in held:
        row = task_row(fault_db, task_id)
        assert (row["status"], row["attempts"], row["error"]) == ("COMPLETED", 1, None)
    assert_exactly_once(fault_db, held)
    row = task_row(fault_db, blocker)
    assert (row["status"], row["attempts"]) == ("FAILED", 1)
    assert row["error"].startswith("worker lost")
    # Claimed ahead, never started: rescued as unstarted, then run once elsewhere.
    for task_id in held:
        assert events_of(fault_db, task_id) == ["enqueued", "rescued", "started", "completed"]
    assert events_of(fault_db, blocker) == ["enqueued", "started", "rescued", "failed"]
    assert_history_exact(fault_db, [blocker, *held])


def test_sigkill_just_after_a_held_task_started_counts_its_run(
    fault_db: psycopg.Connection[Any], faults_tm: TaskManager, pool: WorkerPool
) -> None:
    """A task claimed ahead whose run started a moment before its worker was SIGKILLed
    did run: its start is written within START_RECORD_SECONDS (not at the next heartbeat,
    seconds later), so the rescue counts the attempt and max_retries=0 means it ends
    FAILED, run once, instead of running twice."""
    victim = pool.spawn(concurrency=1, lease=9.0)  # a heartbeat every 3 s
    warm = faults_tm.queue_task(fault_tasks.effect, n=0)
    wait_until(lambda: all_finished(fault_db, [warm]), timeout=30)
    with psycopg.connect(fault_db.info.dsn) as conn:  # one claim: `held` waits behind `first`
        first = faults_tm.queue_task(fault_tasks.effect, n=1, sleep=0.3, connection=conn)
        held = faults_tm.queue_task(
            fault_tasks.effect, n=2, sleep=60, max_retries=0, connection=conn
        )
    wait_until(lambda: all_finished(fault_db, [first]), timeout=30)
    wait_until(lambda: execution_count(fault_db) == 3, timeout=30)  # `held` started
    began = time.monotonic()
    wait_until(lambda: task_started(fault_db, held), timeout=5, interval=0.01)
    assert time.monotonic() - began < 1.0
    victim.kill()

    pool.spawn(concurrency=2, lease=1.0)
    wait_until(lambda: all_finished(fault_db, [held]), timeout=60)
    row = task_row(fault_db, held)
    assert (row["status"], row["attempts"]) == ("FAILED", 1)
    assert row["error"].startswith("worker lost")
    assert execution_count(fault_db) == 3  # never run again


def task_started(db: psycopg.Connection[Any], task_id: Any) -> bool:
    row = db.execute("SELECT started_at FROM pgqueue.tasks WHERE id = %s", (task_id,)).fetchone()
    return row is not None and row[0] is not None
