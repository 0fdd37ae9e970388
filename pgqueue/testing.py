"""A test mode for your own tests: run queued tasks in-process, against the real database,
with a clock you set, so that delays, retries and cron need no sleeping.

`drain(tm, now=...)` claims every task due by `now` and runs it in this process (the same
executor a worker uses: events, Retry, Snooze, current_task(), typed arguments), records
the outcome through the same SQL functions, and goes on until nothing is due by `now`.
`now` is a time you choose: `timedelta(hours=1)` means "as if an hour had passed".
Nothing is rewritten in the database: `now` only decides which run_at count as due,
while the rows keep the times the real functions gave them (a retry's run_at is the
real clock plus its back-off, so a later `now` reaches it).

>>> from datetime import timedelta
>>> from pgqueue import testing
>>> task_id = send_email.delay(delay=3600, to="a@example.com")
>>> testing.drain(tm)                                  # nothing due yet
[]
>>> [t.status for t in testing.drain(tm, now=timedelta(hours=1))]
[<TaskStatus.COMPLETED: 'COMPLETED'>]

Limits and fair share hold here too (`tm.set_limit`, `tm.set_fair_weight`): the drain's
clock refills the token buckets, so `drain(tm, now=timedelta(seconds=1))` after a drain
that a rate limit stopped runs the next second's share.

`queue_cron(tm, now=...)` queues the occurrences of cron tasks due by `now` (within their
catch-up window), as a worker's scheduler would; drain then runs them.

`reset(tm)` clears what tests leave in the database (tasks, cron occurrences, paused
queues, ...), so that each test, and each run of the suite, starts as on a fresh database:

>>> @pytest.fixture
... def tm():
...     with TaskManager() as tm:
...         testing.reset(tm)
...         yield tm

Transactional tasks (`transactional=True`) need a real worker; drain fails them. A task
whose name this process has not registered ends FAILED (UnknownTask) at once: a drain has
no other worker that could know it.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import os
import uuid
from collections.abc import AsyncIterator, Coroutine, Sequence
from typing import Any

import psycopg
from psycopg.rows import dict_row

from pgqueue import events
from pgqueue.db.claim import claim_tasks
from pgqueue.db.cron import cron_tasks, queue_due_occurrences
from pgqueue.db.migrated import atranslated
from pgqueue.db.outcomes import write_outcomes
from pgqueue.errors import InvalidTaskOption, PgQueueError
from pgqueue.records import Task
from pgqueue.task_manager import TaskManager
from pgqueue.tasks import registry
from pgqueue.tasks.definition import TaskFunction
from pgqueue.worker.executor import Executor
from pgqueue.worker.threads import DaemonThreadPool

#: The clock: an absolute time (naive means UTC), or how far past the database's now().
Clock = datetime.datetime | datetime.timedelta | float | int | None
DEFAULT_MAX_RUNS = 10_000
#: A drain runs one task at a time with no heartbeat: a lease no run of a test outlasts.
TESTING_LEASE_SECONDS = 3600.0

_threads = DaemonThreadPool("pgqueue-testing")


def drain(
    tm: TaskManager,
    queues: Sequence[str] | None = None,
    *,
    now: Clock = None,
    max_runs: int = DEFAULT_MAX_RUNS,
) -> list[Task]:
    """Run the tasks due by `now` (of `queues`, default all) until none is due; the tasks
    that ran, as they are afterwards, in the order of their first run."""
    return _run(adrain(tm, queues, now=now, max_runs=max_runs), "adrain")


async def adrain(
    tm: TaskManager,
    queues: Sequence[str] | None = None,
    *,
    now: Clock = None,
    max_runs: int = DEFAULT_MAX_RUNS,
) -> list[Task]:
    """The async twin of `drain`, for async tests."""
    database = tm.store.database
    queries = database.queries
    executor = Executor(_threads, events.dispatcher)
    executor.parents = tm.broker  # current_task().parent_results()
    worker_id = f"pgqueue-testing:{os.getpid()}"
    order: dict[uuid.UUID, None] = {}
    async with _connection(tm) as conn:
        clock = await _clock(conn, queries, now)
        chosen = list(queues) if queues is not None else await _waiting_queues(conn, queries)
        runs = 0
        while task := await _claim_one(conn, queries, chosen, clock, worker_id):
            runs += 1
            if runs > max_runs:
                raise PgQueueError(
                    f"drain ran {max_runs} tasks and more are due by {clock}; does a task "
                    "keep rescheduling itself (Retry/Snooze with a short delay)?"
                )
            order.setdefault(task.id)
            outcome = await executor.run(task)
            if outcome is not None:
                # This process is the only worker of a drain: no other could know a name it
                # does not, and a give-back would come due again within the drain's clock.
                # An unknown task fails at once (no grace).
                await write_outcomes(conn, queries, [outcome], unknown_task_grace_seconds=0.0)
        cursor = conn.cursor(row_factory=dict_row)
        finished = []
        for task_id in order:
            await cursor.execute(queries["get_task"], {"id": task_id})
            row = await cursor.fetchone()
            if row is not None:
                finished.append(Task.from_row(row))
    return finished


def queue_cron(
    tm: TaskManager, *, now: Clock = None, tasks: Sequence[TaskFunction[Any]] | None = None
) -> list[uuid.UUID]:
    """Queue the occurrences due by `now` of cron tasks (default: every one this process
    registered), as a worker's scheduler does; their ids."""
    return _run(aqueue_cron(tm, now=now, tasks=tasks), "aqueue_cron")


async def aqueue_cron(
    tm: TaskManager, *, now: Clock = None, tasks: Sequence[TaskFunction[Any]] | None = None
) -> list[uuid.UUID]:
    """The async twin of `queue_cron`."""
    if tasks is None:
        tasks = [task for name in registry.registered_names() if (task := registry.lookup(name))]
    database = tm.store.database
    queued: list[uuid.UUID] = []
    async with _connection(tm) as conn:
        clock = await _clock(conn, database.queries, now)
        for task in cron_tasks(tasks):
            # The task table only, whatever the broker: drain runs what the table holds.
            queued += await queue_due_occurrences(
                conn,
                database.queries,
                task,
                tm.settings.defaults,
                now=clock,
                enqueue=tm.store.ainsert,
            )
    return queued


def reset(tm: TaskManager) -> None:
    """Clear pgqueue's tables of `tm`'s database as a test leaves them: every task (whatever
    its status), the cron occurrences queued and the schedules workers recorded (so that
    `queue_cron` queues an occurrence again), paused queues, result waiters and the RabbitMQ
    outbox. Worker rows stay; messages already in RabbitMQ are not touched.

    Refuses (PgQueueError) while a live worker serves the database: tests need a database
    no worker serves, and a test suite pointed at a live queue by mistake must not empty it.

    >>> testing.reset(tm)                  # at the start of each test (a fixture)
    >>> testing.drain(tm)
    []
    """
    _run(areset(tm), "areset")


async def areset(tm: TaskManager) -> None:
    """The async twin of `reset`, for async tests."""
    database = tm.store.database
    async with _connection(tm) as conn:
        cursor = conn.cursor(row_factory=dict_row)
        await cursor.execute(database.queries["live_workers"])
        workers = [row["id"] for row in await cursor.fetchall()]
        if workers:
            raise PgQueueError(
                f"testing.reset refuses to clear a database that {len(workers)} live "
                f"worker(s) serve ({', '.join(workers[:3])}): run tests against a database "
                "no worker serves"
            )
        async with conn.transaction():
            await conn.execute(database.queries["testing_reset"])


@contextlib.asynccontextmanager
async def _connection(tm: TaskManager) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    """A connection of the test mode's own, whose statements raise SchemaMissing (run
    `pgqueue migrate`) on a database without pgqueue's schema, as producers' do."""
    database = tm.store.database
    async with (
        atranslated(database.dsn, database.schema),
        await psycopg.AsyncConnection.connect(database.dsn, **database.connect_kwargs()) as conn,
    ):
        yield conn


def _run(coroutine: Coroutine[Any, Any, Any], async_twin: str) -> Any:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    coroutine.close()
    raise PgQueueError(f"an event loop is running here: use `await testing.{async_twin}(...)`")


async def _clock(
    conn: psycopg.AsyncConnection[Any], queries: dict[str, str], now: Clock
) -> datetime.datetime:
    if isinstance(now, datetime.datetime):
        return now if now.tzinfo is not None else now.replace(tzinfo=datetime.UTC)
    cursor = await conn.execute(queries["database_now"])
    row = await cursor.fetchone()
    assert row is not None
    database_now: datetime.datetime = row[0]
    if now is None:
        return database_now
    if isinstance(now, datetime.timedelta):
        return database_now + now
    if isinstance(now, int | float) and not isinstance(now, bool):
        return database_now + datetime.timedelta(seconds=now)
    raise InvalidTaskOption(
        f"now must be a datetime, a timedelta or seconds past the database's now, not {now!r}"
    )


async def _waiting_queues(conn: psycopg.AsyncConnection[Any], queries: dict[str, str]) -> list[str]:
    cursor = await conn.execute(queries["testing_all_queues"])
    return [row[0] for row in await cursor.fetchall()]


async def _claim_one(
    conn: psycopg.AsyncConnection[Any],
    queries: dict[str, str],
    queues: list[str],
    clock: datetime.datetime,
    worker_id: str,
) -> Task | None:
    """The workers' own claim, with the drain's clock deciding what is due (and refilling
    the token buckets of limits): the keyed claim when keyed rows wait (limits, fair share),
    so a test sees the order and the hold-backs a worker would."""
    cursor = await conn.execute(queries["keyed_tasks_waiting"], {"queues": queues})
    row = await cursor.fetchone()
    claimed = await claim_tasks(
        conn,
        queries,
        queues=queues,
        limit=1,
        worker_id=worker_id,
        lease_seconds=TESTING_LEASE_SECONDS,
        now=clock,
        keyed=bool(row and row[0]),
    )
    return claimed[0] if claimed else None
