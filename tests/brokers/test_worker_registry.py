"""The worker registry (pgqueue/brokers/postgres/presence.py): rows in pgqueue.workers
written by the database broker: registered at start, heartbeated with the running count,
removed on a clean exit, expired after three silent leases."""

from __future__ import annotations

import os
import signal
import socket
from typing import Any

import operations_tasks
import psycopg
import pytest
from support.waiting import wait_until

import pgqueue
from pgqueue import TaskManager


def worker_row(db: psycopg.Connection[Any], worker_id: str) -> dict[str, Any] | None:
    cursor = db.execute(
        "SELECT id, host, pid, queues, concurrency, version, tasks_running, lease_seconds,"
        " started_at, last_heartbeat FROM pgqueue.workers WHERE id = %s",
        [worker_id],
    )
    row = cursor.fetchone()
    if row is None:
        return None
    names = [column.name for column in cursor.description or []]
    return dict(zip(names, row, strict=True))


def live_ids(db: psycopg.Connection[Any]) -> set[str]:
    return {row[0] for row in db.execute("SELECT id FROM pgqueue.live_workers").fetchall()}


@pytest.fixture(autouse=True)
def _closed_gate() -> Any:
    operations_tasks.GATE.clear()
    yield
    operations_tasks.GATE.set()  # never leave a worker stuck on a gated task


def test_worker_registers_reports_running_tasks_and_unregisters(
    start_worker: Any, tm: TaskManager, db: psycopg.Connection[Any]
) -> None:
    worker = start_worker(queues=["ops", "other"], concurrency=3, lease_seconds=0.9)
    worker_id = worker.manager.worker_id
    row = wait_until(lambda: worker_row(db, worker_id))
    assert row["host"] == socket.gethostname()
    assert row["pid"] == os.getpid()
    assert row["queues"] == ["ops", "other"]
    assert row["concurrency"] == 3
    assert row["version"] == pgqueue.__version__
    assert row["lease_seconds"] == pytest.approx(0.9)
    assert row["tasks_running"] == 0
    assert worker_id in live_ids(db)

    operations_tasks.gated.delay()
    operations_tasks.gated.delay()
    # Heartbeats (every lease/3) carry the running count and move last_heartbeat on.
    busy = wait_until(lambda: (r := worker_row(db, worker_id)) and r["tasks_running"] == 2 and r)
    assert busy["last_heartbeat"] > row["last_heartbeat"]
    assert busy["started_at"] == row["started_at"]

    operations_tasks.GATE.set()
    wait_until(lambda: (r := worker_row(db, worker_id)) and r["tasks_running"] == 0)
    worker.stop()
    assert worker_row(db, worker_id) is None, "a clean exit removes the worker's row"


def test_a_worker_registers_again_when_its_row_vanished(
    start_worker: Any, db: psycopg.Connection[Any]
) -> None:
    worker = start_worker(queues=["ops"], lease_seconds=0.6)
    worker_id = worker.manager.worker_id
    first = wait_until(lambda: worker_row(db, worker_id))
    # As if another worker's maintenance expired it while this one could not reach the DB.
    db.execute("DELETE FROM pgqueue.workers WHERE id = %s", [worker_id])
    again = wait_until(lambda: worker_row(db, worker_id))
    assert again["started_at"] > first["started_at"]
    assert again["queues"] == ["ops"]


def test_stale_rows_leave_live_workers_and_running_workers_expire_them(
    start_worker: Any, db: psycopg.Connection[Any]
) -> None:
    db.execute(
        "INSERT INTO pgqueue.workers (id, host, pid, queues, concurrency, version,"
        " lease_seconds, started_at, last_heartbeat) VALUES"
        " ('ghost', 'gone-host', 1, '{ops}', 1, '0.0.1', 1, now() - interval '1 hour',"
        "  now() - interval '4 seconds'),"
        " ('recent', 'slow-host', 2, '{ops}', 1, '0.0.1', 10, now() - interval '1 hour',"
        "  now() - interval '4 seconds')"
    )
    # Three leases: 3 s for 'ghost' (gone), 30 s for 'recent' (still alive).
    assert live_ids(db) == {"recent"}
    worker = start_worker(queues=["ops"], lease_seconds=0.6)
    wait_until(lambda: worker_row(db, "ghost") is None)
    assert worker_row(db, "recent") is not None
    assert live_ids(db) == {"recent", worker.manager.worker_id}


def test_expire_stale_workers_counts_what_it_deleted(db: psycopg.Connection[Any]) -> None:
    db.execute(
        "INSERT INTO pgqueue.workers (id, host, pid, queues, concurrency, version,"
        " lease_seconds, last_heartbeat) VALUES"
        " ('a', 'h', 1, '{q}', 1, 'v', 1, now() - interval '5 seconds'),"
        " ('b', 'h', 2, '{q}', 1, 'v', 1, now() - interval '5 seconds'),"
        " ('c', 'h', 3, '{q}', 1, 'v', 1, now())"
    )
    assert db.execute("SELECT pgqueue.expire_stale_workers()").fetchone() == (2,)
    assert db.execute("SELECT array_agg(id) FROM pgqueue.workers").fetchone() == (["c"],)
    assert db.execute("SELECT pgqueue.unregister_worker('c')").fetchone() == (True,)
    assert db.execute("SELECT pgqueue.unregister_worker('c')").fetchone() == (False,)
    assert db.execute("SELECT pgqueue.worker_heartbeat('c', 0)").fetchone() == (False,)


def test_subprocess_worker_sigterm_removes_its_row_sigkill_leaves_it_to_expire(
    spawn_worker: Any, db: psycopg.Connection[Any]
) -> None:
    env = {"PGQUEUE_LEASE_SECONDS": "0.6"}
    clean = spawn_worker(
        "--import", "operations_tasks", "--queues", "ops", "--concurrent", "2", env=env
    )
    killed = spawn_worker("--import", "operations_tasks", "--queues", "ops", env=env)
    rows = wait_until(
        lambda: (
            (
                found := db.execute(
                    "SELECT pid, concurrency FROM pgqueue.live_workers ORDER BY pid"
                ).fetchall()
            )
            and len(found) == 2
            and found
        )
    )
    assert {pid for pid, _ in rows} == {clean.process.pid, killed.process.pid}
    assert dict(rows)[clean.process.pid] == 2

    clean.signal(signal.SIGTERM)
    assert clean.wait() == 0
    pids = db.execute("SELECT pid FROM pgqueue.workers").fetchall()
    assert pids == [(killed.process.pid,)], "SIGTERM: the worker deleted its own row"

    killed.kill()  # SIGKILL: no goodbye; the row stays until three leases (1.8 s) pass
    assert db.execute("SELECT count(*) FROM pgqueue.workers").fetchone() == (1,)
    wait_until(lambda: not live_ids(db), timeout=10)
