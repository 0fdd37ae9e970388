"""Leases and fencing: a stopped worker is taken over and refused; leases use now()."""

from __future__ import annotations

import signal
from typing import Any

import fault_tasks
import psycopg
from support.faults import WorkerPool, all_finished, assert_exactly_once, execution_count, task_row
from support.waiting import wait_until

from pgqueue.task_manager import TaskManager


def test_sigstop_past_the_lease_then_sigcont(
    fault_db: psycopg.Connection[Any], faults_tm: TaskManager, pool: WorkerPool
) -> None:
    """A worker frozen past its lease: another rescues and finishes the task; the stale
    one, resumed, is refused ("lease lost"), writes nothing, and keeps working."""
    task_id = faults_tm.queue_task(fault_tasks.effect, n=5, sleep=2.0)
    stale = pool.spawn(concurrency=1, lease=1.0)
    wait_until(lambda: execution_count(fault_db) == 1, timeout=30)
    stale.signal(signal.SIGSTOP)
    try:
        rescuer = pool.spawn(concurrency=1, lease=1.0)
        wait_until(lambda: all_finished(fault_db, [task_id]), timeout=30)
    finally:
        stale.signal(signal.SIGCONT)
    wait_until(lambda: "lease lost" in stale.output, timeout=15)
    assert_exactly_once(fault_db, [task_id])
    effect_pid = fault_db.execute("SELECT pid FROM effects").fetchone()
    assert effect_pid == (rescuer.process.pid,)
    row = task_row(fault_db, task_id)
    assert row["attempts"] == 2 and row["lease_token"] == 2
    # The stale worker is alive and runs new work.
    assert stale.process.poll() is None
    rescuer.kill()
    after = faults_tm.queue_task(fault_tasks.effect, n=6)
    wait_until(lambda: all_finished(fault_db, [after]), timeout=20)
    assert fault_db.execute("SELECT pid FROM effects WHERE task_id = %s", (after,)).fetchone() == (
        stale.process.pid,
    )


def test_lease_is_computed_from_the_database_clock(
    fault_db: psycopg.Connection[Any], faults_tm: TaskManager, pool: WorkerPool
) -> None:
    """started_at and lease_expires_at come from the same now() of the claim: exactly the
    lease apart, to the microsecond, so the worker's clock never enters into it."""
    task_id = faults_tm.queue_task(fault_tasks.effect, n=1, sleep=0.5)
    pool.spawn(concurrency=1, lease=30.0, extra_env={"TZ": "Pacific/Kiritimati"})
    wait_until(lambda: execution_count(fault_db) == 1, timeout=30)
    gap = fault_db.execute(
        "SELECT lease_expires_at - started_at FROM pgqueue.tasks WHERE id = %s", (task_id,)
    ).fetchone()
    assert gap is not None and gap[0].total_seconds() == 30.0
    wait_until(lambda: all_finished(fault_db, [task_id]), timeout=20)
    assert_exactly_once(fault_db, [task_id])
