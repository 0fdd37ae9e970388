"""Queueing on asyncpg: a raw asyncpg connection (or one of its pool), and SQLAlchemy's
AsyncSession/AsyncConnection on postgresql+asyncpg, write in the caller's transaction
through the same named SQL blocks; a worker runs what they queued."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from support.database import asyncpg_url

from pgqueue import AsyncTask, TaskStatus
from pgqueue.db.drivers import numbered
from pgqueue.errors import InvalidTaskArguments
from pgqueue.task_manager import TaskManager

asyncpg = pytest.importorskip("asyncpg")


@AsyncTask
def multiply(x: int, y: int = 2) -> int:
    return x * y


def task_ids(db: psycopg.Connection[Any]) -> set[uuid.UUID]:
    return {row[0] for row in db.execute("SELECT id FROM pgqueue.tasks")}


def test_placeholders_are_numbered_once_per_name() -> None:
    assert numbered("SELECT %(a)s, %(b)s::int, %(a)s, 5 %% 2") == (
        "SELECT $1, $2::int, $1, 5 % 2",
        ("a", "b"),
    )
    assert numbered("SELECT %s, %s") == ("SELECT $1, $2", (0, 1))
    # Cached: the same text is translated once.
    assert numbered("SELECT %(a)s") is numbered("SELECT %(a)s")


@pytest.mark.parametrize("outcome", ["commit", "rollback"])
def test_asyncpg_connection_writes_in_the_callers_transaction(
    tm: TaskManager, db: psycopg.Connection[Any], dsn: str, outcome: str
) -> None:
    async def main() -> set[uuid.UUID]:
        conn = await asyncpg.connect(asyncpg_url(dsn))
        try:
            transaction = conn.transaction()
            await transaction.start()
            await conn.execute("CREATE TABLE orders (id int)")
            one = await multiply.adelay(x=1, connection=conn)
            later = await multiply.adelay(x=2, delay=3600, priority=5, connection=conn)
            many = await tm.aqueue_tasks(multiply, [{"x": 3}, {"x": 4}], connection=conn)
            scheduled = await tm.aqueue_tasks(multiply, [{"x": 5}], delay=60, connection=conn)
            unique = await multiply.adelay(x=6, unique_key="k", connection=conn)
            assert await multiply.adelay(x=7, unique_key="k", connection=conn) == unique
            assert task_ids(db) == set(), "uncommitted rows must be invisible to workers"
            await getattr(transaction, outcome)()
        finally:
            await conn.close()
        return {one, later, *many, *scheduled, unique}

    ids = asyncio.run(main())
    assert task_ids(db) == (ids if outcome == "commit" else set())
    orders = db.execute("SELECT to_regclass('public.orders') IS NOT NULL").fetchone()
    assert orders == (outcome == "commit",)
    if outcome == "commit":
        delayed = db.execute(
            "SELECT priority, run_at > now() + interval '50 minutes' FROM pgqueue.tasks "
            "WHERE kwargs = '{\"x\": 2}'"
        ).fetchone()
        assert delayed == (5, True)


def test_asyncpg_pool_connection(tm: TaskManager, db: psycopg.Connection[Any], dsn: str) -> None:
    async def main() -> uuid.UUID:
        async with (
            asyncpg.create_pool(asyncpg_url(dsn), min_size=1, max_size=1) as pool,
            pool.acquire() as conn,
            conn.transaction(),
        ):
            return await multiply.adelay(x=1, connection=conn)

    task_id = asyncio.run(main())
    assert task_ids(db) == {task_id}


@pytest.mark.parametrize("kind", ["session", "connection"])
@pytest.mark.parametrize("outcome", ["commit", "rollback"])
def test_sqlalchemy_on_asyncpg(
    tm: TaskManager, db: psycopg.Connection[Any], dsn: str, kind: str, outcome: str
) -> None:
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

    async def main() -> uuid.UUID:
        engine = create_async_engine(asyncpg_url(dsn, "postgresql+asyncpg"))
        try:
            if kind == "session":
                async with AsyncSession(engine) as session:
                    await session.execute(text("CREATE TABLE orders (id int)"))
                    task_id = await multiply.adelay(x=1, connection=session)
                    await getattr(session, outcome)()
            else:
                async with engine.connect() as connection:
                    await connection.execute(text("CREATE TABLE orders (id int)"))
                    task_id = await tm.aqueue_task(multiply, x=1, connection=connection)
                    await getattr(connection, outcome)()
        finally:
            await engine.dispose()
        return task_id

    task_id = asyncio.run(main())
    assert task_ids(db) == ({task_id} if outcome == "commit" else set())
    orders = db.execute("SELECT to_regclass('public.orders') IS NOT NULL").fetchone()
    assert orders == (outcome == "commit",)


def test_a_worker_runs_what_asyncpg_queued(
    tm: TaskManager, dsn: str, start_worker: Callable[..., Any]
) -> None:
    async def main() -> list[uuid.UUID]:
        conn = await asyncpg.connect(asyncpg_url(dsn))
        try:
            async with conn.transaction():
                one = await multiply.adelay(x=21, connection=conn)
                many = await tm.aqueue_tasks(multiply, [{"x": 1, "y": 5}], connection=conn)
        finally:
            await conn.close()
        return [one, *many]

    one, other = asyncio.run(main())
    start_worker()
    assert tm.wait(one, timeout=30) == 42
    assert tm.wait(other, timeout=30) == 5
    assert tm.get_task(one).status is TaskStatus.COMPLETED  # type: ignore[union-attr]


def test_a_sync_connection_in_async_code_is_refused_by_name(
    tm: TaskManager, dsn: str, db: psycopg.Connection[Any]
) -> None:
    async def main() -> None:
        with psycopg.connect(dsn) as conn:
            await multiply.adelay(x=1, connection=conn)

    with pytest.raises(InvalidTaskArguments, match=r"asyncpg Connection.*not Connection"):
        asyncio.run(main())
    assert task_ids(db) == set()
