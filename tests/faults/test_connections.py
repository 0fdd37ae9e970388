"""Lost database connections: pg_terminate_backend on each kind, and cuts via a proxy."""

from __future__ import annotations

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
    wait_for_worker_ready,
)
from support.proxy import Proxy, via_proxy
from support.waiting import wait_until

from pgqueue.task_manager import TaskManager

# application_name of each kind of worker connection (the main pool has none of its own;
# the pool helper sets PGAPPNAME=pgqueue-worker for it).
KINDS = {
    "listener": ["pgqueue-listener"],
    "main pool (claims, heartbeats, maintenance)": ["pgqueue-worker"],
    "completer": ["pgqueue-completer"],
    "transactional tasks": ["pgqueue-task"],
    "all at once": ["pgqueue-listener", "pgqueue-worker", "pgqueue-completer", "pgqueue-task"],
}


def _terminate(db: psycopg.Connection[Any], names: list[str]) -> int:
    rows = db.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        " WHERE datname = current_database() AND application_name = ANY(%s)",
        (names,),
    ).fetchall()
    return len(rows)


def _batch(tm: TaskManager, start: int, sleep: float) -> tuple[list[Any], list[Any]]:
    effects = tm.queue_tasks(
        fault_tasks.effect, [{"n": start + i, "sleep": sleep} for i in range(4)], max_retries=10
    )
    quick = tm.queue_tasks(fault_tasks.quick, [{"n": start + i} for i in range(4)])
    return effects, quick


@pytest.mark.parametrize("kind", list(KINDS))
def test_pg_terminate_backend_on_each_worker_connection(
    fault_db: psycopg.Connection[Any], faults_tm: TaskManager, pool: WorkerPool, kind: str
) -> None:
    """Connections of one kind are terminated while tasks run: the worker reconnects by
    itself, every effect happens once, and tasks queued afterwards run too."""
    worker = pool.spawn(concurrency=8, lease=2.0, interval=1.0)
    warm_effects, warm_quick = _batch(faults_tm, 0, 0.0)
    wait_until(lambda: all_finished(fault_db, warm_effects + warm_quick), timeout=30)
    running_effects, running_quick = _batch(faults_tm, 100, 1.0)
    wait_until(lambda: execution_count(fault_db) >= len(warm_effects + warm_quick) + 4)
    names = KINDS[kind]
    assert _terminate(fault_db, names) >= 1, f"no {kind} connection to terminate"
    later_effects, later_quick = _batch(faults_tm, 200, 0.0)
    every = running_effects + running_quick + later_effects + later_quick
    wait_until(lambda: all_finished(fault_db, every), timeout=40)
    assert_exactly_once(fault_db, warm_effects + running_effects + later_effects)
    quick_done = fault_db.execute(
        "SELECT count(*) FROM pgqueue.tasks WHERE id = ANY(%s) AND status = 'COMPLETED'",
        (running_quick + later_quick,),
    ).fetchone()
    assert quick_done == (8,)
    assert worker.process.poll() is None, "the worker exited"
    wait_for_worker_ready(fault_db)  # the LISTEN connection is back


def test_cut_shorter_than_the_lease(
    fault_db: psycopg.Connection[Any], faults_tm: TaskManager, pool: WorkerPool, proxy: Proxy
) -> None:
    """A 1 s network cut (lease 4 s) while tasks run: the worker reconnects with back-off
    and finishes everything, each effect once."""
    worker = pool.spawn(concurrency=4, lease=4.0, via_dsn=via_proxy(pool.dsn, proxy.port))
    ids = faults_tm.queue_tasks(
        fault_tasks.effect, [{"n": i, "sleep": 0.3} for i in range(40)], max_retries=10
    )
    wait_until(lambda: execution_count(fault_db) >= 4)
    proxy.cut()
    time.sleep(1.0)  # the fault itself: how long the network stays down
    proxy.restore()
    wait_until(lambda: all_finished(fault_db, ids), timeout=60)
    assert_exactly_once(fault_db, ids)
    assert worker.process.poll() is None
    assert (
        "database unavailable" in worker.output
        or "lease lost" in worker.output
        or ("cannot record" in worker.output)
    )


def test_cut_longer_than_the_lease(
    fault_db: psycopg.Connection[Any], faults_tm: TaskManager, pool: WorkerPool, proxy: Proxy
) -> None:
    """A worker cut off for three leases: a worker on a direct connection rescues and
    finishes its tasks; the cut worker's late writes are refused; after the network is
    back it resumes claiming on its own; every effect happens once."""
    cut_off = pool.spawn(concurrency=4, lease=1.5, via_dsn=via_proxy(pool.dsn, proxy.port))
    wait_for_worker_ready(fault_db)
    ids = faults_tm.queue_tasks(
        fault_tasks.effect, [{"n": i, "sleep": 2.0} for i in range(4)], max_retries=10
    )
    wait_until(lambda: execution_count(fault_db) >= 4, timeout=30)
    proxy.cut()
    try:
        pool.spawn(concurrency=4, lease=1.5)
        wait_until(lambda: all_finished(fault_db, ids), timeout=30)
    finally:
        proxy.restore()
    assert_exactly_once(fault_db, ids)
    effect_pids = {row[0] for row in fault_db.execute("SELECT pid FROM effects").fetchall()}
    assert cut_off.process.pid not in effect_pids
    wait_until(lambda: "lease lost" in cut_off.output, timeout=30)
    # Back on the network, the cut worker claims again by itself.
    more = faults_tm.queue_tasks(fault_tasks.effect, [{"n": i} for i in range(100, 140)])
    wait_until(lambda: all_finished(fault_db, more), timeout=30)
    assert_exactly_once(fault_db, ids + more)
    assert cut_off.process.poll() is None
    wait_until(
        lambda: (
            (
                fault_db.execute(
                    "SELECT count(*) FROM executions WHERE pid = %s AND attempt = 1"
                    " AND task_id <> ALL(%s)",
                    (cut_off.process.pid, ids),
                ).fetchone()
                or (0,)
            )[0]
            > 0
            or _more_work_for(faults_tm, fault_db, cut_off.process.pid)
        ),
        timeout=30,
    )


def _more_work_for(tm: TaskManager, db: psycopg.Connection[Any], pid: int) -> bool:
    """Queue a little more until the reconnected worker takes some of it."""
    ids = tm.queue_tasks(fault_tasks.effect, [{"n": i, "sleep": 0.2} for i in range(8)])
    wait_until(lambda: all_finished(db, ids), timeout=30)
    row = db.execute(
        "SELECT count(*) FROM effects WHERE pid = %s AND task_id = ANY(%s)", (pid, ids)
    ).fetchone()
    return bool(row and row[0])
