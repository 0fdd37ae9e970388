"""Many workers, many no-op tasks, no faults: nothing runs twice, no deadlock."""

from __future__ import annotations

import os
import time
from typing import Any

import fault_tasks
import psycopg
import pytest
from support.faults import WorkerPool, all_finished, assert_exactly_once, execution_count
from support.waiting import wait_until

from pgqueue.task_manager import TaskManager

# 20,000 in CI (two cores, its time limit); PGQUEUE_FAULTS_LOAD_TASKS=50000 for the full run.
TASKS = int(os.environ.get("PGQUEUE_FAULTS_LOAD_TASKS", "20000"))


@pytest.mark.slow
def test_many_noop_tasks_many_workers(
    fault_db: psycopg.Connection[Any], faults_tm: TaskManager, pool: WorkerPool
) -> None:
    ids = faults_tm.queue_tasks(fault_tasks.effect, [{"n": i} for i in range(TASKS)])
    started = time.monotonic()
    # 4 x 8 slots: about 60 connections in all, within max_connections=100 of a server
    # that other test runs share (each slot of a transactional task holds a connection).
    for _ in range(4):
        pool.spawn(concurrency=8, lease=10.0)
    wait_until(lambda: all_finished(fault_db, ids), timeout=240, interval=0.5)
    elapsed = time.monotonic() - started
    unlogged = fault_db.execute(
        "SELECT t.id, t.status::text, t.attempts, t.error FROM pgqueue.tasks AS t"
        " WHERE NOT EXISTS (SELECT 1 FROM executions AS e WHERE e.task_id = t.id)"
    ).fetchall()
    assert unlogged == []
    assert execution_count(fault_db) == TASKS  # no task executed twice
    assert_exactly_once(fault_db, ids)
    deadlocks = fault_db.execute(
        "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()"
    ).fetchone()
    assert deadlocks == (0,)
    assert "deadlock" not in pool.outputs().lower()
    assert "lease lost" not in pool.outputs()
    print(f"{TASKS} tasks on 4 workers in {elapsed:.1f}s ({TASKS / elapsed:.0f}/s)")
