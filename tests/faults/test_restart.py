"""PostgreSQL restarts (-m fast, -m immediate) while producers and workers run."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import fault_tasks
import psycopg
import pytest
from support.cluster import restart_server
from support.faults import WorkerPool, all_finished, assert_exactly_once, wait_for_worker_ready
from support.waiting import wait_until

from pgqueue.errors import DatabaseUnavailable
from pgqueue.task_manager import TaskManager


class Producer(threading.Thread):
    """Queues tasks one by one; an id counts as committed only once queue_task returned."""

    def __init__(self, tm: TaskManager) -> None:
        super().__init__(daemon=True)
        self.tm = tm
        self.committed: list[uuid.UUID] = []
        self.refused = 0
        self.running = True

    def run(self) -> None:
        n = 0
        while self.running:
            try:
                self.committed.append(self.tm.queue_task(fault_tasks.effect, n=n, max_retries=10))
                n += 1
            except (DatabaseUnavailable, psycopg.OperationalError):
                self.refused += 1  # not committed as far as the producer knows; try again
                time.sleep(0.1)
            time.sleep(0.01)


def _connect_when_possible(dsn: str) -> psycopg.Connection[Any]:
    """Right after a restart every client of the shared server reconnects at once and
    may briefly exhaust max_connections: the test's own connection waits its turn."""
    deadline = time.monotonic() + 30
    while True:
        try:
            return psycopg.connect(dsn, autocommit=True, connect_timeout=5)
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_postgres_restart_while_producing_and_working(
    fault_db: psycopg.Connection[Any],
    faults_tm: TaskManager,
    pool: WorkerPool,
    server_guard: None,
    mode: str,
) -> None:
    """No enqueue that returned is lost, every effect happens once, and the workers
    resume by themselves (no worker exits; both LISTEN again)."""
    workers = [pool.spawn(concurrency=4, lease=2.0, interval=1.0) for _ in range(2)]
    wait_for_worker_ready(fault_db, count=2)
    booted = fault_db.execute("SELECT pg_postmaster_start_time()").fetchone()
    producer = Producer(faults_tm)
    producer.start()
    try:
        wait_until(lambda: len(producer.committed) >= 30, timeout=30)
        fault_db.close()
        restart_server(mode)
        before = len(producer.committed)
        wait_until(lambda: len(producer.committed) >= before + 30, timeout=60)
    finally:
        producer.running = False
        producer.join(30)
    with _connect_when_possible(pool.dsn) as db:
        assert db.execute("SELECT pg_postmaster_start_time()").fetchone() != booted
        wait_until(lambda: all_finished(db, producer.committed), timeout=90)
        assert_exactly_once(db, producer.committed)
        present = [row[0] for row in db.execute("SELECT id FROM pgqueue.tasks").fetchall()]
        assert_exactly_once(db, present)  # also the ones whose commit the producer missed
        wait_for_worker_ready(db, count=2)
    assert all(worker.process.poll() is None for worker in workers), "a worker exited"
