"""TaskManager: queue_task/queue_tasks and their options, records, cancel and retry, the async
twins, enqueue inside the caller's transaction (psycopg and SQLAlchemy), bulk COPY, refused
input that writes nothing, and pools that survive terminated connections."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from pgqueue import AsyncTask, TaskStatus
from pgqueue.db.migrations import sqlalchemy_url
from pgqueue.errors import (
    InvalidTaskArguments,
    InvalidTaskOption,
    PgQueueError,
    TaskNotFound,
)
from pgqueue.settings import Settings
from pgqueue.task_manager import TaskManager


@AsyncTask(queue="emails", priority=2, max_retries=4)
async def send_email(to: str, subject: str = "Hello") -> str:
    return to


@AsyncTask
def add(x: int, y: int = 0) -> int:
    return x + y


def rows(db: psycopg.Connection[Any], where: str = "true") -> list[dict[str, Any]]:
    with db.cursor(row_factory=dict_row) as cursor:
        return cursor.execute(
            "SELECT *, status::text AS status_text, "
            "extract(epoch FROM run_at - created_at)::float AS wait "
            f"FROM pgqueue.tasks WHERE {where} ORDER BY id"
        ).fetchall()


def count(db: psycopg.Connection[Any]) -> int:
    return db.execute("SELECT count(*) FROM pgqueue.tasks").fetchone()[0]  # type: ignore[index]


@pytest.fixture
def engine(dsn: str) -> Iterator[Engine]:
    engine = create_engine(sqlalchemy_url(dsn))
    yield engine
    engine.dispose()


# -- queue_task ----------------------------------------------------------------------------


def test_queue_task_writes_every_option(tm: TaskManager, db: psycopg.Connection[Any]) -> None:
    task_id = tm.queue_task(
        task=send_email,
        queue="priority mail",
        priority=5,
        max_retries=3,
        delay=datetime.timedelta(hours=1),
        to="a@example.com",
        subject="Hello",
    )
    assert isinstance(task_id, uuid.UUID) and task_id.version == 7
    [row] = rows(db)
    assert row["id"] == task_id and row["name"] == "test_task_manager.send_email"
    assert (row["queue"], row["priority"], row["max_retries"]) == ("priority mail", 5, 3)
    assert row["kwargs"] == {"to": "a@example.com", "subject": "Hello"}
    assert row["wait"] == pytest.approx(3600, abs=0.01)
    assert row["status_text"] == "PENDING"


def test_queue_task_by_name_needs_no_import(tm: TaskManager, db: psycopg.Connection[Any]) -> None:
    when = datetime.datetime(2031, 3, 1, 9, tzinfo=datetime.UTC)
    task_id = tm.queue_task(task="billing.remind", schedule_at=when, user_id=123)
    [row] = rows(db)
    assert (row["id"], row["name"], row["run_at"]) == (task_id, "billing.remind", when)
    assert (row["queue"], row["priority"], row["max_retries"]) == ("default", 0, 3)
    with pytest.raises(TypeError, match=r"queued by name.*keyword arguments"):
        tm.queue_task("billing.remind", 123)
    # A registered name uses the decorator's options and checks the arguments.
    tm.queue_task("test_task_manager.send_email", to="b@x")
    assert rows(db, "kwargs->>'to' = 'b@x'")[0]["queue"] == "emails"
    with pytest.raises(TypeError, match="unexpected keyword argument 'nope'"):
        tm.queue_task("test_task_manager.send_email", to="b@x", nope=1)


def test_settings_defaults_apply(settings: Settings, db: psycopg.Connection[Any]) -> None:
    custom = dataclasses.replace(
        settings, defaults=dataclasses.replace(settings.defaults, queue="q2", max_retries=9)
    )
    manager = TaskManager(settings=custom)
    try:
        manager.queue_task(add, x=1)
    finally:
        manager.close()
    [row] = rows(db)
    assert (row["queue"], row["priority"], row["max_retries"]) == ("q2", 0, 9)


def test_task_manager_from_dsn(dsn: str, db: psycopg.Connection[Any]) -> None:
    manager = TaskManager(dsn=dsn)
    try:
        task_id = manager.queue_task(add, 1, 2)
        task = manager.get_task(str(task_id))
    finally:
        manager.close()
    assert task is not None and task.kwargs == {"x": 1, "y": 2}


def test_queue_names_reach_sql_only_as_parameters(
    tm: TaskManager, db: psycopg.Connection[Any]
) -> None:
    hostile = "x'; DROP TABLE pgqueue.tasks; --"
    task_id = tm.queue_task(add, x=1, queue=hostile)
    tm.queue_task(hostile, queue='"; DELETE FROM pgqueue.tasks; --')
    tm.queue_tasks(add, [{"x": 1}, {"x": 2}], queue=hostile)
    assert count(db) == 4
    task = tm.get_task(task_id)
    assert task is not None and task.queue == hostile
    assert {row["name"] for row in rows(db)} == {"test_task_manager.add", hostile}


# -- records, cancel, retry ----------------------------------------------------------------


def test_get_cancel_retry(tm: TaskManager, db: psycopg.Connection[Any]) -> None:
    task_id = tm.queue_task(send_email, to="a@x")
    task = tm.get_task(task_id)
    assert task is not None
    assert (task.id, task.status, task.queue, task.priority) == (
        task_id,
        TaskStatus.PENDING,
        "emails",
        2,
    )
    assert task.attempts == 0 and task.max_retries == 4 and task.kwargs == {"to": "a@x"}
    assert task.created_at is not None and task.run_at >= task.created_at
    assert (task.started_at, task.finished_at, task.result, task.error) == (None, None, None, None)
    assert tm.get_task(str(task_id)) == task
    assert tm.get_task(uuid.uuid4()) is None
    with pytest.raises(TaskNotFound, match="'not-a-uuid' is not a task id"):
        tm.get_task("not-a-uuid")

    assert tm.retry(task_id) is False  # only FAILED or CANCELLED tasks are retried
    assert tm.cancel(task_id) is True
    assert tm.cancel(task_id) is False
    cancelled = tm.get_task(task_id)
    assert cancelled is not None and cancelled.status is TaskStatus.CANCELLED
    assert cancelled.finished_at is not None
    assert tm.retry(str(task_id)) is True
    again = tm.get_task(task_id)
    assert again is not None and again.status is TaskStatus.PENDING and again.finished_at is None
    assert tm.cancel(uuid.uuid4()) is False


def test_async_twins(tm: TaskManager, db: psycopg.Connection[Any]) -> None:
    async def main() -> tuple[uuid.UUID, list[uuid.UUID]]:
        one = await tm.aqueue_task(send_email, to="a@x", priority=9, delay=60)
        many = await tm.aqueue_tasks(add, [{"x": i} for i in range(50)], queue="bulk")
        task = await tm.aget_task(one)
        assert task is not None and task.priority == 9 and task.status is TaskStatus.PENDING
        assert await tm.aget_task(uuid.uuid4()) is None
        assert await tm.acancel(one) is True
        assert await tm.acancel(one) is False
        assert await tm.aretry(one) is True
        assert await tm.aretry(one) is False
        return one, many

    one, many = asyncio.run(main())
    assert count(db) == 51
    [row] = rows(db, f"id = '{one}'")
    assert row["status_text"] == "PENDING" and row["queue"] == "emails"
    bulk = rows(db, "queue = 'bulk'")
    assert [row["id"] for row in bulk] == many  # UUIDv7: ids sort in creation order
    assert [row["kwargs"]["x"] for row in bulk] == list(range(50))
    # A second event loop gets a pool of its own.
    assert asyncio.run(tm.aget_task(one)) is not None


# -- bulk ----------------------------------------------------------------------------------


def test_queue_tasks_10000_rows_one_notification(
    tm: TaskManager, db: psycopg.Connection[Any], dsn: str
) -> None:
    with psycopg.connect(dsn, autocommit=True) as listener:
        listener.execute('LISTEN "pgqueue.tasks"')
        started = time.perf_counter()
        ids = tm.queue_tasks(add, ({"x": i, "y": -i} for i in range(10_000)), priority=1, delay=30)
        elapsed = time.perf_counter() - started
        db.execute("SELECT pg_notify('pgqueue.tasks', 'end-of-test')")
        payloads = []
        for notify in listener.notifies(timeout=10):
            if notify.payload == "end-of-test":
                break
            payloads.append(notify.payload)
    assert payloads == ["default"]
    assert len(ids) == len(set(ids)) == 10_000
    summary = db.execute(
        "SELECT count(*), count(DISTINCT run_at), min(priority), max(priority), "
        "sum((kwargs->>'x')::int + (kwargs->>'y')::int), "
        "bool_and(run_at - created_at BETWEEN interval '29.99 s' AND interval '30.01 s') "
        "FROM pgqueue.tasks"
    ).fetchone()
    assert summary == (10_000, 1, 1, 1, 0, True)
    by_id = dict(db.execute("SELECT id, (kwargs->>'x')::int FROM pgqueue.tasks").fetchall())
    assert [by_id[task_id] for task_id in ids] == list(range(10_000))
    print(f"queue_tasks: 10,000 rows in {elapsed:.3f}s ({10_000 / elapsed:,.0f} rows/s)")
    assert elapsed < 10


def test_queue_tasks_bad_row_writes_nothing(tm: TaskManager, db: psycopg.Connection[Any]) -> None:
    good = [{"x": i} for i in range(10)]
    with pytest.raises(TypeError, match=r"row 5: argument 'x' of .*add: type is not JSON"):
        tm.queue_tasks(add, [*good[:5], {"x": set}, *good[5:]])
    with pytest.raises(TypeError, match=r"row 3: .*unexpected keyword argument 'z'"):
        tm.queue_tasks(add, [*good[:3], {"x": 1, "z": 2}])
    with pytest.raises(TypeError, match="row 1 of queue_tasks is a list"):
        tm.queue_tasks(add, [{"x": 1}, [1, 2]])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="queue name is empty"):
        tm.queue_tasks(add, good, queue="")
    assert count(db) == 0
    assert tm.queue_tasks(add, []) == []


# -- refused input -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        ({"x": object()}, InvalidTaskArguments, "argument 'x' of test_task_manager.add"),
        ({"x": 1, "w": 2}, InvalidTaskArguments, "unexpected keyword argument 'w'"),
        (
            {"x": 1, "delay": 5, "schedule_at": datetime.datetime(2030, 1, 1)},
            InvalidTaskOption,
            "either delay or schedule_at, not both",
        ),
        ({"x": 1, "delay": -1}, InvalidTaskOption, "delay must be a finite number of seconds"),
        ({"x": 1, "queue": ""}, InvalidTaskOption, "queue name is empty"),
        ({"x": 1, "queue": "q" * 129}, InvalidTaskOption, "129 characters long; the limit is 128"),
        ({"x": 1, "priority": 32768}, InvalidTaskOption, "outside the allowed range"),
        ({"x": 1, "priority": -32769}, InvalidTaskOption, "outside the allowed range"),
        ({"x": 1, "max_retries": -1}, InvalidTaskOption, "max_retries must be 0 or more"),
        ({"x": "\x00"}, InvalidTaskOption, "argument 'x'.*NUL"),
        ({"x": "a" * 2_000_000}, InvalidTaskOption, "over the limit of 1048576"),
    ],
)
def test_refused_input_raises_and_writes_nothing(
    tm: TaskManager,
    db: psycopg.Connection[Any],
    kwargs: dict[str, Any],
    error: type[Exception],
    words: str,
) -> None:
    builtin = TypeError if error is InvalidTaskArguments else ValueError
    with pytest.raises(builtin, match=words) as caught:
        tm.queue_task(add, **kwargs)
    assert isinstance(caught.value, error) and isinstance(caught.value, PgQueueError)
    with pytest.raises(builtin, match=words):
        asyncio.run(tm.aqueue_task(add, **kwargs))
    assert count(db) == 0


def test_bad_task_references(tm: TaskManager, db: psycopg.Connection[Any]) -> None:
    with pytest.raises(TypeError, match="decorated with @AsyncTask or a task name"):
        tm.queue_task(print)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="task name '' must be 1 to 1024"):
        tm.queue_task("")
    with pytest.raises(ValueError, match="must be 1 to 1024"):
        tm.queue_task("n" * 1025)
    assert count(db) == 0


# -- in the caller's transaction -----------------------------------------------------------


@pytest.mark.parametrize("outcome", ["commit", "rollback"])
def test_psycopg_connection_transaction(
    tm: TaskManager, db: psycopg.Connection[Any], dsn: str, outcome: str
) -> None:
    with psycopg.connect(dsn) as conn:
        conn.execute("CREATE TABLE orders (id int)")
        conn.execute("INSERT INTO orders VALUES (1)")
        one = add.delay(x=1, connection=conn)
        many = tm.queue_tasks(add, [{"x": 2}, {"x": 3}], connection=conn)
        assert count(db) == 0, "uncommitted rows must be invisible to workers"
        getattr(conn, outcome)()
    expected = {one, *many} if outcome == "commit" else set()
    assert {row["id"] for row in rows(db)} == expected


@pytest.mark.parametrize("outcome", ["commit", "rollback"])
def test_psycopg_async_connection_transaction(
    tm: TaskManager, db: psycopg.Connection[Any], dsn: str, outcome: str
) -> None:
    async def main() -> set[uuid.UUID]:
        async with await psycopg.AsyncConnection.connect(dsn) as conn:
            one = await add.adelay(x=1, connection=conn)
            many = await tm.aqueue_tasks(add, [{"x": 2}, {"x": 3}], connection=conn)
            assert count(db) == 0
            await getattr(conn, outcome)()
        return {one, *many}

    ids = asyncio.run(main())
    assert {row["id"] for row in rows(db)} == (ids if outcome == "commit" else set())


@pytest.mark.parametrize("outcome", ["commit", "rollback"])
def test_sqlalchemy_session_transaction(
    tm: TaskManager, db: psycopg.Connection[Any], engine: Engine, outcome: str
) -> None:
    with Session(engine) as session:
        session.execute(text("CREATE TABLE orders (id int)"))
        one = add.delay(x=1, connection=session)
        many = tm.queue_tasks(add, [{"x": 2}, {"x": 3}], connection=session)
        assert count(db) == 0
        getattr(session, outcome)()
    expected = {one, *many} if outcome == "commit" else set()
    assert {row["id"] for row in rows(db)} == expected
    orders = db.execute("SELECT to_regclass('public.orders') IS NOT NULL").fetchone()
    assert orders == (outcome == "commit",)


@pytest.mark.parametrize("outcome", ["commit", "rollback"])
def test_sqlalchemy_connection_transaction(
    tm: TaskManager, db: psycopg.Connection[Any], engine: Engine, outcome: str
) -> None:
    with engine.connect() as connection:
        transaction = connection.begin()
        one = tm.queue_task(add, x=1, connection=connection)
        many = tm.queue_tasks(add, [{"x": 2}, {"x": 3}], connection=connection)
        assert count(db) == 0
        getattr(transaction, outcome)()
    expected = {one, *many} if outcome == "commit" else set()
    assert {row["id"] for row in rows(db)} == expected


def test_sqlalchemy_async_session_transaction(
    tm: TaskManager, db: psycopg.Connection[Any], dsn: str
) -> None:
    pytest.importorskip("greenlet", reason="SQLAlchemy asyncio needs greenlet")
    from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

    async def main() -> uuid.UUID:
        engine = create_async_engine(sqlalchemy_url(dsn))
        try:
            async with AsyncSession(engine) as session:
                kept = await add.adelay(x=1, connection=session)
                await session.commit()
            async with AsyncSession(engine) as session:
                await add.adelay(x=2, connection=session)
                await session.rollback()
        finally:
            await engine.dispose()
        return kept

    kept = asyncio.run(main())
    assert [row["id"] for row in rows(db)] == [kept]


def test_refused_input_leaves_the_callers_transaction_usable(
    tm: TaskManager, db: psycopg.Connection[Any], dsn: str
) -> None:
    with psycopg.connect(dsn) as conn:
        with pytest.raises(TypeError):
            add.delay(x=object(), connection=conn)
        add.delay(x=1, connection=conn)
        conn.commit()
    assert count(db) == 1


# -- outliving the database's connections --------------------------------------------------


def terminate_other_backends(db: psycopg.Connection[Any]) -> int:
    """Kill every other session of the test database, as a restart would; wait until gone."""
    return db.execute(
        "SELECT count(pg_terminate_backend(pid, 5000)) FROM pg_stat_activity "
        "WHERE datname = current_database() AND pid <> pg_backend_pid()"
    ).fetchone()[0]  # type: ignore[index]


@contextlib.contextmanager
def several_pooled_connections(tm: TaskManager, how_many: int) -> Iterator[None]:
    """Make the pool hold `how_many` idle connections (as after a burst of callers)."""
    pool = tm.store.database.pool()
    with contextlib.ExitStack() as stack:
        for _ in range(how_many):
            stack.enter_context(pool.connection())
    yield


def test_task_manager_outlives_terminated_connections(
    tm: TaskManager, db: psycopg.Connection[Any]
) -> None:
    first = tm.queue_task(add, x=1)
    with several_pooled_connections(tm, 3):
        pass
    assert terminate_other_backends(db) >= 3
    second = tm.queue_task(add, x=2)
    assert terminate_other_backends(db) >= 1
    assert tm.get_task(first) is not None
    terminate_other_backends(db)
    assert tm.queue_tasks(add, [{"x": 3}, {"x": 4}])
    terminate_other_backends(db)
    assert tm.cancel(second) is True
    terminate_other_backends(db)
    assert tm.retry(second) is True
    assert count(db) == 4


def test_async_task_manager_outlives_terminated_connections(
    tm: TaskManager, db: psycopg.Connection[Any]
) -> None:
    async def main() -> None:
        first = await tm.aqueue_task(add, x=1)
        pool = await tm.store.database.async_pool()
        async with contextlib.AsyncExitStack() as stack:
            for _ in range(3):
                await stack.enter_async_context(pool.connection())
        assert terminate_other_backends(db) >= 3
        await tm.aqueue_task(add, x=2)
        terminate_other_backends(db)
        assert await tm.aget_task(first) is not None
        terminate_other_backends(db)
        assert await tm.acancel(first) is True

    asyncio.run(main())
    assert count(db) == 2


ASYNCIO_RUN_SCRIPT = """
import asyncio, sys, uuid
import psycopg
from pgqueue.task_manager import TaskManager

manager = TaskManager(dsn=sys.argv[1])
admin = psycopg.connect(sys.argv[1], autocommit=True)

async def main(i):
    await manager.aqueue_task("tests.script", i=i)
    # The pool starts reconnecting just as asyncio.run() tears the loop down.
    admin.execute(
        "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity "
        "WHERE datname = current_database() AND pid <> pg_backend_pid()"
    )
    await manager.aget_task(uuid.uuid4())

for i in range(3):
    asyncio.run(main(i))
print("done")
"""


def test_asyncio_run_returns_while_the_async_pool_reconnects(dsn: str) -> None:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("PGQUEUE_")}
    result = subprocess.run(
        [sys.executable, "-c", ASYNCIO_RUN_SCRIPT, dsn],
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "done"
    with psycopg.connect(dsn) as conn:
        assert count(conn) == 3


CONTEXT_MANAGED = """
import asyncio, sys
from pgqueue import TaskManager

with TaskManager(dsn=sys.argv[1]) as tm:
    print(tm.queue_task("elsewhere.sync_task", n=1))

async def main():
    async with TaskManager(dsn=sys.argv[1]) as tm:
        print(await tm.aqueue_task("elsewhere.async_task", n=2))

asyncio.run(main())
"""


def test_a_task_manager_closes_its_pools_at_the_end_of_a_with_block(dsn: str) -> None:
    """`with TaskManager()` / `async with TaskManager()`: queued, pools closed, and the
    process exits without "Exception ignored in: ConnectionPool.__del__"."""
    result = subprocess.run(
        [sys.executable, "-W", "error::ResourceWarning", "-c", CONTEXT_MANAGED, dsn],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "Exception ignored" not in result.stderr, result.stderr
    ids = [uuid.UUID(line) for line in result.stdout.split()]
    with psycopg.connect(dsn) as conn:
        names = conn.execute(
            "SELECT name FROM pgqueue.tasks WHERE id = ANY(%s) ORDER BY name", (ids,)
        ).fetchall()
    assert names == [("elsewhere.async_task",), ("elsewhere.sync_task",)]


NEVER_CLOSED = """
import asyncio, gc, sys
from pgqueue import TaskManager

def use_and_drop(n):
    tm = TaskManager(dsn=sys.argv[1])
    tm.get_task(tm.queue_task("elsewhere.sync_task", n=n))

async def use_async(tm, n):
    await tm.aget_task(await tm.aqueue_task("elsewhere.async_task", n=n))

for n in range(20):
    use_and_drop(n)
    gc.collect()
kept = TaskManager(dsn=sys.argv[1])        # still open at exit
for n in range(20):
    asyncio.run(use_async(kept, n))        # a new event loop, so a new async pool, each time
kept.get_task(kept.queue_task("elsewhere.sync_task", n=20))
print("done")
"""


def test_task_managers_never_closed_leave_no_noise(dsn: str) -> None:
    """TaskManagers dropped without close(), and one still open at exit, print nothing: no
    "Exception ignored in: ConnectionPool.__del__ ... cannot join current thread" (the
    garbage collector closing a pool in one of its own threads), no "error connecting in
    'pgqueue-async'" (a connection cancelled as asyncio.run() ends)."""
    for _ in range(3):
        result = subprocess.run(
            [sys.executable, "-W", "error::ResourceWarning", "-c", NEVER_CLOSED, dsn],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert (result.returncode, result.stdout.strip(), result.stderr) == (0, "done", "")
    with psycopg.connect(dsn) as conn:
        assert count(conn) == 3 * 41
