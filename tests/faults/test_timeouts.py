"""@AsyncTask(timeout=...): async runs are cancelled, sync overruns are abandoned."""

from __future__ import annotations

from typing import Any

import fault_tasks
import psycopg
from support.faults import WorkerPool, all_finished, assert_exactly_once, execution_count, task_row
from support.waiting import wait_until

from pgqueue.task_manager import TaskManager


def test_async_timeout_cancels_the_run(
    fault_db: psycopg.Connection[Any], faults_tm: TaskManager, pool: WorkerPool
) -> None:
    """A 5 s async task with a 0.5 s timeout: cancelled (it never reaches its end),
    FAILED with a TaskTimeout naming the limit, quickly."""
    task_id = faults_tm.queue_task(fault_tasks.slow_async, seconds=5.0, max_retries=0)
    pool.spawn(concurrency=1)
    wait_until(lambda: all_finished(fault_db, [task_id]), timeout=30)
    row = task_row(fault_db, task_id)
    assert row["status"] == "FAILED"
    assert row["error"].startswith("TaskTimeout:") and "timeout of 0.5 s" in row["error"]
    took = fault_db.execute(
        "SELECT EXTRACT(epoch FROM finished_at - started_at) FROM pgqueue.tasks WHERE id = %s",
        (task_id,),
    ).fetchone()
    assert took is not None and float(took[0]) < 3.0
    assert execution_count(fault_db, "end") == 0


def test_transactional_timeout_rolls_the_effect_back(
    fault_db: psycopg.Connection[Any], faults_tm: TaskManager, pool: WorkerPool
) -> None:
    """The first attempt writes its effect then overruns: cancelled, its transaction rolled
    back; the retry's effect is the only one."""
    task_id = faults_tm.queue_task(fault_tasks.effect_with_timeout, n=3, first_sleep=10.0)
    pool.spawn(concurrency=1)
    wait_until(lambda: all_finished(fault_db, [task_id]), timeout=30)
    assert_exactly_once(fault_db, [task_id])
    assert task_row(fault_db, task_id)["attempts"] == 2
    assert fault_db.execute("SELECT attempt FROM effects").fetchone() == (2,)


def test_sync_overrun_frees_its_slot_and_its_late_result_is_refused(
    fault_db: psycopg.Connection[Any], faults_tm: TaskManager, pool: WorkerPool
) -> None:
    """A sync task cannot be killed: after its 0.5 s timeout it is reported timed out and
    its slot freed (the retry and another task run on a one-slot worker while the thread
    still sleeps); when the thread returns, its result is not recorded."""
    overrun = faults_tm.queue_task(fault_tasks.slow_sync, first_sleep=4.0)
    pool.spawn(concurrency=1)
    wait_until(lambda: execution_count(fault_db) >= 1, timeout=30)
    other = faults_tm.queue_task(fault_tasks.quick, n=1)
    wait_until(lambda: all_finished(fault_db, [overrun, other]), timeout=30)
    # Both finished while the first thread still slept: the slot was freed.
    assert execution_count(fault_db, "end") == 0
    row = task_row(fault_db, overrun)
    assert (row["status"], row["result"], row["attempts"]) == ("COMPLETED", "second", 2)
    wait_until(lambda: execution_count(fault_db, "end") == 1, timeout=10)
    # The overrun attempt returned "first" by now; it changed nothing.
    after = task_row(fault_db, overrun)
    assert (after["status"], after["result"], after["lease_token"]) == ("COMPLETED", "second", 2)
    worker_log = pool.outputs()
    assert "TaskTimeout" in worker_log
