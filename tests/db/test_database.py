"""Connections (pgqueue/db/database.py): pgqueue's sessions read and write times in UTC."""

from __future__ import annotations

import asyncio
import datetime
from typing import Any

import psycopg
from psycopg import sql
from sample_tasks import echo

from pgqueue import TaskManager
from pgqueue.db.database import Database
from pgqueue.settings import load_settings

UTC = datetime.UTC


def set_server_zone(db: psycopg.Connection[Any], zone: str) -> None:
    """The TimeZone of every new session of the test database."""
    statement = sql.SQL("ALTER DATABASE {} SET TimeZone = {}")
    db.execute(statement.format(sql.Identifier(db.info.dbname), sql.Literal(zone)))


def test_times_come_back_in_utc_whatever_the_server_zone(
    dsn: str, db: psycopg.Connection[Any]
) -> None:
    set_server_zone(db, "America/New_York")
    database = Database(dsn)

    async def read_async() -> datetime.datetime:
        async with database.async_connection() as conn:
            cursor = await conn.execute("SELECT now()")
            row = await cursor.fetchone()
            assert row is not None
            return row[0]

    try:
        with database.connection() as conn:
            row = conn.execute("SELECT now()").fetchone()
            assert row is not None
            read = row[0]
        read_in_loop = asyncio.run(read_async())
    finally:
        database.close()
    for value in (read, read_in_loop):
        assert value.tzinfo is UTC
        assert abs(value - datetime.datetime.now(UTC)) < datetime.timedelta(seconds=30)
    # Only pgqueue's own sessions: another connection still has the server's zone.
    with psycopg.connect(dsn) as other:
        assert other.execute("SHOW TimeZone").fetchone() == ("America/New_York",)


def test_task_times_are_utc_and_the_same_instant(dsn: str, db: psycopg.Connection[Any]) -> None:
    set_server_zone(db, "Asia/Kolkata")
    manager = TaskManager(settings=load_settings(dsn=dsn))
    try:
        task_id = manager.queue_task(echo, value=1)
        task = manager.get_task(task_id)
    finally:
        manager.close()
    assert task is not None and task.run_at.tzinfo is UTC
    stored = db.execute("SELECT run_at FROM pgqueue.tasks WHERE id = %s", [task_id]).fetchone()
    assert stored is not None and stored[0] == task.run_at  # another zone, the same instant
