"""Cleanup: one runner at a time (advisory lock), deleting in bounded batches."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg

from pgqueue.brokers.postgres.maintenance import CLEANUP_BATCH_SIZE, Maintenance
from pgqueue.db.database import Database


def _finished_rows(db: psycopg.Connection[Any], count: int) -> None:
    db.execute(
        "INSERT INTO pgqueue.tasks (name, status, finished_at)"
        " SELECT 'old', 'COMPLETED', now() - interval '2 days' FROM generate_series(1, %s)",
        (count,),
    )


def test_cleanup_runs_on_one_worker_at_a_time_in_batches(
    dsn: str, db: psycopg.Connection[Any]
) -> None:
    _finished_rows(db, 2 * CLEANUP_BATCH_SIZE + 500)
    # One batch deletes at most CLEANUP_BATCH_SIZE rows, however many are due.
    one_batch = db.execute(
        "SELECT pgqueue.cleanup_tasks(interval '1 day', %s)", (CLEANUP_BATCH_SIZE,)
    ).fetchone()
    assert one_batch == (CLEANUP_BATCH_SIZE,)
    # The batch took its tasks' events with them (each row has its "enqueued").
    events = "SELECT count(*) FROM pgqueue.task_events"
    assert db.execute(events).fetchone() == (CLEANUP_BATCH_SIZE + 500,)

    async def cleanup() -> int:
        database = Database(dsn)
        try:
            return await Maintenance(database, 30.0, None).cleanup(86400)
        finally:
            await database.aclose()

    # Another runner holds the maintenance lock: this one deletes nothing.
    holder = psycopg.connect(dsn, autocommit=True)
    try:
        locked = holder.execute("SELECT pg_try_advisory_lock(hashtext('pgqueue.maintenance'))")
        assert locked.fetchone() == (True,)
        assert asyncio.run(cleanup()) == 0
        assert db.execute("SELECT count(*) FROM pgqueue.tasks").fetchone() == (
            CLEANUP_BATCH_SIZE + 500,
        )
    finally:
        holder.close()  # a session lock ends with its session
    # Free again: the runner loops over batches until none is left.
    assert asyncio.run(cleanup()) == CLEANUP_BATCH_SIZE + 500
    assert db.execute("SELECT count(*) FROM pgqueue.tasks").fetchone() == (0,)
    assert db.execute(events).fetchone() == (0,)
