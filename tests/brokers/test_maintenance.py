"""Maintenance: cleanup of old finished tasks (one worker at a time) and lease rescue."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import pytest
import worker_tasks
from support.database import statuses
from support.waiting import wait_until
from support.workers import InProcessWorker

from pgqueue import TaskManager, WorkerManager
from pgqueue.brokers.postgres.maintenance import CLEANUP_BATCH_SIZE, Maintenance, rescue_interval
from pgqueue.db.database import database_from_settings
from pgqueue.settings import Settings

LOCK = "SELECT pg_try_advisory_lock(hashtext('pgqueue.maintenance'))"
UNLOCK = "SELECT pg_advisory_unlock(hashtext('pgqueue.maintenance'))"


def age(db: psycopg.Connection[Any], label: str, status: str, days: float) -> None:
    """Give the task labelled `label` a status and a finish (or start) `days` ago."""
    finished = status in ("COMPLETED", "FAILED", "CANCELLED")
    db.execute(
        "UPDATE pgqueue.tasks SET status = %(status)s::pgqueue.task_status,"
        " created_at = now() - %(days)s * interval '1 day',"
        " finished_at = CASE WHEN %(finished)s THEN now() - %(days)s * interval '1 day' END,"
        " started_at = CASE WHEN %(status)s = 'RUNNING' THEN now() END,"
        " lease_expires_at = CASE WHEN %(status)s = 'RUNNING' THEN now() + interval '1 hour' END"
        " WHERE kwargs->>'label' = %(label)s",
        {"status": status, "days": days, "finished": finished, "label": label},
    )


@pytest.fixture
def aged_tasks(tm: TaskManager, db: psycopg.Connection[Any]) -> set[str]:
    """One task per (status, age); returns the labels cleanup must delete (retain 7 days)."""
    doomed = set()
    for status in ("COMPLETED", "FAILED", "CANCELLED", "PENDING", "RUNNING", "RETRYING"):
        for days in (30, 8, 6, 0):
            label = f"{status}-{days}d"
            # A queue no worker of these tests watches: they must only clean, not run.
            worker_tasks.record.delay(queue="archive", label=label)
            age(db, label, status, days)
            if status in ("COMPLETED", "FAILED", "CANCELLED") and days > 7:
                doomed.add(label)
    return doomed


async def with_maintenance(settings: Settings, action: Any) -> Any:
    """Run `action(maintenance)` on one event loop, closing the pools after."""
    database = database_from_settings(settings)
    try:
        return await action(Maintenance(database, 30, None))
    finally:
        await database.aclose()


def labels(db: psycopg.Connection[Any]) -> set[str]:
    return {row[0] for row in db.execute("SELECT kwargs->>'label' FROM pgqueue.tasks")}


def test_worker_cleanup_deletes_only_old_finished_tasks(
    settings: Settings, aged_tasks: set[str], db: Any
) -> None:
    before = labels(db)
    manager = WorkerManager(settings=settings)
    manager.set_cleanup_config(interval_hours=1, retain_days=7)
    worker = InProcessWorker(manager).start()
    try:
        wait_until(lambda: len(labels(db)) == len(before) - len(aged_tasks))
    finally:
        worker.stop()
    assert labels(db) == before - aged_tasks


def test_cli_worker_cleanup_with_retain_days(
    spawn_worker: Any, aged_tasks: set[str], db: Any
) -> None:
    before = labels(db)
    worker = spawn_worker("--import", "sample_tasks", "--retain-days", "1", "--cleanup-hours", "24")
    doomed = {
        label
        for label in before
        if label.split("-")[0] in ("COMPLETED", "FAILED", "CANCELLED") and not label.endswith("-0d")
    }
    wait_until(lambda: labels(db) == before - doomed)
    wait_until(lambda: "cleanup deleted 9 finished tasks older than 1.0 days" in worker.output)


def test_cleanup_waits_for_the_advisory_lock(
    settings: Settings, aged_tasks: set[str], db: Any
) -> None:
    """While another worker holds the maintenance lock, cleanup deletes nothing."""

    async def cleanup(maintenance: Maintenance) -> int:
        return await maintenance.cleanup(7 * 86400)

    assert db.execute(LOCK).fetchone()[0]
    try:
        assert asyncio.run(with_maintenance(settings, cleanup)) == 0
        assert aged_tasks <= labels(db)
    finally:
        db.execute(UNLOCK)
    assert asyncio.run(with_maintenance(settings, cleanup)) == len(aged_tasks)
    assert not aged_tasks & labels(db)
    # And it gave the lock back.
    assert db.execute(LOCK).fetchone()[0]
    db.execute(UNLOCK)


def test_concurrent_cleanups_delete_each_row_once(
    settings: Settings, tm: TaskManager, db: Any
) -> None:
    total = 2 * CLEANUP_BATCH_SIZE + 500
    db.execute(
        "INSERT INTO pgqueue.tasks (name, status, finished_at)"
        " SELECT 'x.y', 'COMPLETED', now() - interval '30 days' FROM generate_series(1, %s)",
        (total,),
    )

    async def cleanup(maintenance: Maintenance) -> int:
        return await maintenance.cleanup(86400)

    async def several() -> list[int]:
        return await asyncio.gather(*(with_maintenance(settings, cleanup) for _ in range(3)))

    deleted = asyncio.run(several())
    assert statuses(db) == {}
    assert sum(deleted) == total


def test_rescue_puts_back_expired_leases(settings: Settings, tm: TaskManager, db: Any) -> None:
    alive = worker_tasks.record.delay(label="alive")
    lost = worker_tasks.record.delay(label="lost")
    spent = worker_tasks.record.delay(label="spent", max_retries=0)
    db.execute(
        "UPDATE pgqueue.tasks SET status = 'RUNNING', attempts = 1, worker_id = 'gone:1:x',"
        " started_at = now(),"  # runs that started (a claimed-ahead one would be given back)
        " lease_expires_at = now() + CASE WHEN id = %s THEN interval '1 hour'"
        " ELSE interval '-1 second' END",
        (alive,),
    )

    async def rescue(maintenance: Maintenance) -> int:
        return await maintenance.rescue()

    assert asyncio.run(with_maintenance(settings, rescue)) == 2
    by_id = {
        row[0]: row[1:]
        for row in db.execute("SELECT id, status::text, attempts, error FROM pgqueue.tasks")
    }
    assert by_id[alive][:2] == ("RUNNING", 1)
    assert by_id[lost][:2] == ("RETRYING", 1)  # the lost run counted; the next claim makes 2
    assert by_id[spent][:2] == ("FAILED", 1)
    assert "worker lost: worker gone:1:x stopped renewing its lease" in by_id[lost][2]
    assert asyncio.run(with_maintenance(settings, rescue)) == 0


def test_rescue_interval_follows_the_lease() -> None:
    assert rescue_interval(1) == 0.25
    assert rescue_interval(8) == 2
    assert rescue_interval(600) == 5
