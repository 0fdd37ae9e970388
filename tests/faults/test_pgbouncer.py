"""Workers and producers through a real PgBouncer in transaction pooling mode: wake-ups
through PGQUEUE_LISTEN_DSN or polling with one warning, pooled server connections reset
mid-run, a worker SIGKILLed. No task is lost; each takes effect once."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import fault_tasks
import psycopg
from psycopg.conninfo import conninfo_to_dict
from support.faults import (
    WorkerPool,
    all_finished,
    assert_exactly_once,
    execution_count,
    wait_for_worker_ready,
)
from support.pgbouncer import PgBouncer
from support.waiting import wait_until

from pgqueue.task_manager import TaskManager

FALLBACK_WARNING = "do not reach a LISTEN connection"


def _produce(tm: TaskManager, start: int, count: int, sleep: float = 0.0) -> list[Any]:
    """Tasks queued one per transaction from 4 threads (each statement runs more than the
    five times after which psycopg would prepare it, were it allowed to)."""
    ids: list[Any] = []
    lock = threading.Lock()

    def one_producer(offset: int) -> None:
        for i in range(offset, count, 4):
            task_id = tm.queue_task(fault_tasks.effect, n=start + i, sleep=sleep, max_retries=10)
            with lock:
                ids.append(task_id)

    threads = [threading.Thread(target=one_producer, args=(k,)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return ids


def _sleeping_workers(db: psycopg.Connection[Any]) -> int:
    row = db.execute("SELECT count(DISTINCT worker_id) FROM pgqueue.sleeping_workers").fetchone()
    return int(row[0]) if row else 0


def test_through_pgbouncer_with_a_listen_dsn_notifications_wake_the_worker(
    fault_db: psycopg.Connection[Any], pool: WorkerPool, pgbouncer: PgBouncer, dsn: str
) -> None:
    pooled = pgbouncer.dsn(dsn)
    # A 60 s polling interval: only a notification explains a start within seconds.
    worker = pool.spawn(
        concurrency=4, interval=60.0, via_dsn=pooled, extra_env={"PGQUEUE_LISTEN_DSN": dsn}
    )
    wait_for_worker_ready(fault_db)
    with TaskManager(dsn=pooled) as tm:
        ids = _produce(tm, 0, 40)
        bulk = tm.queue_tasks(fault_tasks.effect, [{"n": 100 + i} for i in range(40)])
        wait_until(lambda: all_finished(fault_db, ids + bulk), timeout=60)
        # Idle now, asleep on its direct LISTEN connection: a new task wakes it.
        wait_until(lambda: _sleeping_workers(fault_db) == 1)
        late = tm.queue_task(fault_tasks.effect, n=1000)
        wait_until(lambda: all_finished(fault_db, [late]), timeout=20)
    assert_exactly_once(fault_db, [*ids, *bulk, late])
    assert FALLBACK_WARNING not in worker.output
    assert "prepared statement" not in worker.output


def test_through_pgbouncer_alone_the_worker_polls_and_warns_once(
    fault_db: psycopg.Connection[Any], pool: WorkerPool, pgbouncer: PgBouncer, dsn: str
) -> None:
    pooled = pgbouncer.dsn(dsn)
    worker = pool.spawn(concurrency=4, interval=0.5, via_dsn=pooled)
    wait_until(lambda: FALLBACK_WARNING in worker.output, timeout=30)
    with TaskManager(dsn=pooled) as tm:
        ids = _produce(tm, 0, 40)
        wait_until(lambda: all_finished(fault_db, ids), timeout=60)
        late = tm.queue_task(fault_tasks.effect, n=1000)  # found by the next poll
        wait_until(lambda: all_finished(fault_db, [late]), timeout=20)
    assert_exactly_once(fault_db, [*ids, late])
    assert worker.output.count(FALLBACK_WARNING) == 1
    # Nobody could hear a NOTIFY, so the worker never asked producers to send one.
    assert _sleeping_workers(fault_db) == 0


def test_pooled_server_connections_reset_mid_run(
    fault_db: psycopg.Connection[Any], pool: WorkerPool, pgbouncer: PgBouncer, dsn: str
) -> None:
    """PgBouncer's server connections are terminated again and again while producers
    queue and the worker runs: every task completes, its effect written once."""
    pooled = pgbouncer.dsn(dsn)
    database = str(conninfo_to_dict(dsn)["dbname"])
    worker = pool.spawn(
        concurrency=8, lease=2.0, via_dsn=pooled, extra_env={"PGQUEUE_LISTEN_DSN": dsn}
    )
    wait_for_worker_ready(fault_db)
    stop = threading.Event()
    resets = 0

    def reset_server_connections() -> None:
        nonlocal resets
        with psycopg.connect(dsn, autocommit=True) as killer:
            while not stop.wait(0.3):
                for pid in pgbouncer.server_pids(database):
                    killer.execute("SELECT pg_terminate_backend(%s)", (pid,))
                    resets += 1

    resetter = threading.Thread(target=reset_server_connections, daemon=True)
    resetter.start()
    try:
        with TaskManager(dsn=pooled) as tm:
            ids: list[Any] = []
            for batch in range(6):
                ids += _retrying_produce(tm, batch * 40, 40, sleep=0.05)
                wait_until(_started(fault_db, len(ids) // 2), timeout=60)
    finally:
        stop.set()
        resetter.join(10)
    assert resets >= 3, f"only {resets} server connections were reset; that proved little"
    wait_until(lambda: all_finished(fault_db, ids), timeout=90)
    assert_exactly_once(fault_db, ids)
    assert worker.process.poll() is None, worker.output


def _started(db: psycopg.Connection[Any], count: int) -> Callable[[], bool]:
    return lambda: execution_count(db) >= count


def _retrying_produce(tm: TaskManager, start: int, count: int, sleep: float) -> list[Any]:
    """A producer whose connection was reset is told so (DatabaseUnavailable) and tries the
    task once more, as an application would: each id is a task that was committed."""
    ids: list[Any] = []
    for i in range(count):
        for attempt in range(5):
            try:
                ids.append(tm.queue_task(fault_tasks.effect, n=start + i, sleep=sleep))
                break
            except Exception:
                if attempt == 4:
                    raise
    return ids


def test_worker_sigkilled_behind_pgbouncer(
    fault_db: psycopg.Connection[Any], pool: WorkerPool, pgbouncer: PgBouncer, dsn: str
) -> None:
    """A worker dies mid-run; another one, through the same PgBouncer, rescues its tasks
    when the lease runs out: each effect once."""
    pooled = pgbouncer.dsn(dsn)
    listen = {"PGQUEUE_LISTEN_DSN": dsn}
    victim = pool.spawn(concurrency=4, lease=1.0, via_dsn=pooled, extra_env=listen)
    wait_for_worker_ready(fault_db)
    with TaskManager(dsn=pooled) as tm:
        ids = tm.queue_tasks(
            fault_tasks.effect, [{"n": i, "sleep": 0.5} for i in range(12)], max_retries=5
        )
        wait_until(lambda: execution_count(fault_db) >= 2, timeout=30)
        victim.kill()
        pool.spawn(concurrency=4, lease=1.0, via_dsn=pooled, extra_env=listen)
        wait_until(lambda: all_finished(fault_db, ids), timeout=60)
    assert_exactly_once(fault_db, ids)
