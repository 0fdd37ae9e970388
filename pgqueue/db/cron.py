"""Recurring tasks: a task's cron schedule, and the scheduler loop each worker runs.

Every worker that imports a task declared `@AsyncTask(cron="0 9 * * *", timezone=...)`
queues its occurrences; the primary key (name, scheduled_at) of `pgqueue.cron_runs` lets
exactly one of them queue each occurrence, however many run. Occurrences missed while no
worker ran are caught up if they fall within the task's catch-up window (`cron_catchup`,
one hour by default); older ones are skipped, not replayed. Each occurrence's run_at is
its scheduled time.

The broker in use delivers each occurrence: the worker claims it in cron_runs and hands the
task to `Broker.aenqueue` inside that same transaction (the database broker writes its row,
the RabbitMQ broker its record and an outbox row, which the relay publishes after the
commit). A worker that dies before the commit leaves nothing claimed; after it, the
occurrence is delivered whatever happens to that worker.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import psycopg

from pgqueue.db.database import UNAVAILABLE
from pgqueue.loops import BackgroundLoop, Backoff
from pgqueue.records import NewTask, new_task_id
from pgqueue.tasks.options import TaskOptions

if TYPE_CHECKING:
    from pgqueue.db.database import Database
    from pgqueue.settings import TaskDefaults
    from pgqueue.tasks.definition import TaskFunction

log = logging.getLogger("pgqueue.cron")

#: The scheduler looks again at least this often (a clock step, a database that was away).
MAX_SLEEP_SECONDS = 60.0
#: Occurrences of cron_runs kept beyond the catch-up window (the latest is always kept).
RUNS_RETAINED_BEYOND_WINDOW = datetime.timedelta(days=1)

#: Queues tasks inside the transaction of the connection given: `Broker.aenqueue` (or
#: `TaskStore.ainsert`, the task table only, for the test mode).
Enqueue = Callable[[Sequence[NewTask], Any], Awaitable[None]]


def cron_tasks(tasks: Sequence[TaskFunction[Any]]) -> list[TaskFunction[Any]]:
    return [task for task in tasks if task.schedule is not None]


async def queue_due_occurrences(
    conn: psycopg.AsyncConnection[Any],
    queries: dict[str, str],
    task: TaskFunction[Any],
    defaults: TaskDefaults,
    now: datetime.datetime | None = None,
    *,
    enqueue: Enqueue,
) -> list[uuid.UUID]:
    """Record the task's schedule and queue its occurrences due by `now` (default: the
    database clock) that no worker queued yet, within the catch-up window; their ids.
    `conn` is in autocommit mode: each occurrence commits on its own, its claim in
    cron_runs together with what `enqueue` writes."""
    schedule = task.schedule
    assert schedule is not None, f"{task.name} has no cron schedule"
    options = TaskOptions.resolve(task, defaults)
    queue = options.queue
    queued = []
    cursor = await conn.execute(
        queries["cron_record_schedule"],
        {
            "name": task.name,
            "cron": schedule.expression,
            "timezone": schedule.timezone,
            "queue": queue,
            "catchup_seconds": schedule.catchup_seconds,
        },
    )
    row = await cursor.fetchone()
    assert row is not None
    first_seen_at, db_now, last_scheduled_at = row
    now = db_now if now is None else now
    window_start = now - datetime.timedelta(seconds=schedule.catchup_seconds)
    after = max(last_scheduled_at or first_seen_at, window_start)
    for moment in schedule.occurrences(after, now):
        occurrence = NewTask(
            id=new_task_id(),
            name=task.name,
            queue=queue,
            priority=options.priority,
            max_retries=options.max_retries,
            kwargs_json="{}",
            schedule_at=moment,
        )
        async with conn.transaction():
            cursor = await conn.execute(
                queries["cron_claim_occurrence"],
                {"name": task.name, "scheduled_at": moment, "task_id": occurrence.id},
            )
            if await cursor.fetchone() is None:
                continue  # another worker queued it
            await enqueue([occurrence], conn)
        queued.append(occurrence.id)
        log.info("cron: queued %s for %s (task %s)", task.name, moment, occurrence.id)
    await conn.execute(
        queries["cron_prune_runs"],
        {"name": task.name, "before": window_start - RUNS_RETAINED_BEYOND_WINDOW},
    )
    return queued


class CronScheduler(BackgroundLoop):
    """The loop a worker runs for the cron tasks it imported: sleep until the next
    occurrence, queue it through `enqueue` (its broker's `aenqueue`) unless another worker
    did, repeat."""

    name = "pgqueue-cron"

    def __init__(
        self,
        database: Database,
        tasks: Sequence[TaskFunction[Any]],
        defaults: TaskDefaults,
        enqueue: Enqueue,
    ) -> None:
        super().__init__()
        self._database = database
        self._tasks = cron_tasks(tasks)
        self._defaults = defaults
        self._enqueue = enqueue

    def start(self) -> None:
        if self._tasks:
            super().start()

    async def _run(self) -> None:
        backoff = Backoff(first=0.5, most=MAX_SLEEP_SECONDS)
        while True:
            try:
                async with self._database.async_connection() as conn:
                    for task in self._tasks:
                        await queue_due_occurrences(
                            conn,
                            self._database.queries,
                            task,
                            self._defaults,
                            enqueue=self._enqueue,
                        )
                backoff.reset()
            except UNAVAILABLE as error:
                await backoff.pause(log, "cron: database unavailable (%s)", error)
                continue
            except Exception:  # a bug must not end the schedules of a running worker
                log.exception("cron: scheduling failed; trying again in %.0fs", MAX_SLEEP_SECONDS)
                await asyncio.sleep(MAX_SLEEP_SECONDS)
                continue
            await asyncio.sleep(self._seconds_until_next())

    def _seconds_until_next(self) -> float:
        now = datetime.datetime.now(datetime.UTC)
        following = min(
            task.schedule.next_after(now) for task in self._tasks if task.schedule is not None
        )
        # A little past the occurrence, so that the database clock has reached it too.
        return min(max((following - now).total_seconds() + 0.05, 0.05), MAX_SLEEP_SECONDS)
