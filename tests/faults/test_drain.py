"""SIGTERM: stop claiming, keep heartbeats going while draining, release at the timeout."""

from __future__ import annotations

import signal
from typing import Any

import fault_tasks
import psycopg
from support.faults import WorkerPool, assert_exactly_once, execution_count, task_row
from support.history import timeline
from support.waiting import wait_until

from pgqueue.task_manager import TaskManager


def test_sigterm_drains_with_heartbeats_and_claims_nothing_more(
    fault_db: psycopg.Connection[Any], faults_tm: TaskManager, pool: WorkerPool
) -> None:
    """Two 3 s tasks run under a 1 s lease when SIGTERM arrives: they finish on this
    worker (heartbeats kept their leases: one attempt, no rescue), nothing else is
    claimed after the signal, and the worker exits 0."""
    ids = faults_tm.queue_tasks(fault_tasks.effect, [{"n": i, "sleep": 3.0} for i in range(6)])
    worker = pool.spawn(concurrency=2, lease=1.0, grace=20)
    wait_until(lambda: execution_count(fault_db) == 2, timeout=30)
    worker.signal(signal.SIGTERM)
    assert worker.wait(30) == 0
    started = [
        row[0] for row in fault_db.execute("SELECT task_id FROM executions ORDER BY id").fetchall()
    ]
    assert len(started) == 2  # no claim after the signal
    assert_exactly_once(fault_db, started)
    for task_id in started:
        assert task_row(fault_db, task_id)["attempts"] == 1  # never rescued mid-drain
    untouched = fault_db.execute(
        "SELECT count(*) FROM pgqueue.tasks WHERE id = ANY(%s)"
        " AND status = 'PENDING' AND attempts = 0",
        ([i for i in ids if i not in started],),
    ).fetchone()
    assert untouched == (4,)
    assert "draining 2 running tasks" in worker.output


def test_drain_timeout_releases_what_still_runs(
    fault_db: psycopg.Connection[Any], faults_tm: TaskManager, pool: WorkerPool
) -> None:
    """A task still running when the drain times out goes back PENDING at once (attempt
    refunded, no effect), not left RUNNING until its lease expires; the next worker runs it."""
    task_id = faults_tm.queue_task(fault_tasks.effect, n=1, sleep=30.0)
    worker = pool.spawn(concurrency=1, lease=30.0, grace=1.0)
    wait_until(lambda: execution_count(fault_db) == 1, timeout=30)
    worker.signal(signal.SIGTERM)
    assert worker.wait(30) == 0
    row = task_row(fault_db, task_id)
    assert (row["status"], row["attempts"], row["worker_id"]) == ("PENDING", 0, None)
    assert fault_db.execute("SELECT count(*) FROM effects").fetchone() == (0,)
    released = timeline(fault_db, task_id)[-1]
    assert (released["event"], released["attempt"], released["details"]) == (
        "released",
        0,
        {"started": True},
    )
    assert "releasing task" in worker.output
