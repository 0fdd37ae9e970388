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
import dataclasses
import datetime
import inspect
import logging
import math
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import psycopg
from psycopg_pool import PoolTimeout

from pgqueue.background import BackgroundLoop, Backoff
from pgqueue.errors import DatabaseUnavailable, TaskDefinitionError
from pgqueue.records import NewTask, new_task_id

if TYPE_CHECKING:
    from pgqueue.async_task import TaskFunction
    from pgqueue.database import Database
    from pgqueue.settings import TaskDefaults

log = logging.getLogger("pgqueue.cron")

DEFAULT_CATCHUP_SECONDS = 3600.0
#: The scheduler looks again at least this often (a clock step, a database that was away).
MAX_SLEEP_SECONDS = 60.0
#: Occurrences of cron_runs kept beyond the catch-up window (the latest is always kept).
RUNS_RETAINED_BEYOND_WINDOW = datetime.timedelta(days=1)

#: Queues tasks inside the transaction of the connection given: `Broker.aenqueue` (or
#: `TaskStore.ainsert`, the task table only, for the test mode).
Enqueue = Callable[[Sequence[NewTask], Any], Awaitable[None]]


@dataclasses.dataclass(frozen=True, slots=True)
class CronSchedule:
    """A five-field cron expression in a time zone, with its catch-up window."""

    expression: str
    timezone: str = "UTC"
    catchup_seconds: float = DEFAULT_CATCHUP_SECONDS

    @classmethod
    def checked(
        cls,
        task_name: str,
        signature: inspect.Signature,
        cron: Any,
        timezone: Any,
        catchup: Any,
    ) -> CronSchedule | None:
        """The schedule of a task's decorator options; a clear error at definition time."""
        if cron is None:
            if timezone is not None or catchup is not None:
                raise TaskDefinitionError(
                    f"task {task_name}: timezone and cron_catchup go with cron=..."
                )
            return None
        from croniter import croniter  # imported by cron tasks only: workers stay small

        if not isinstance(cron, str) or len(cron.split()) != 5 or not croniter.is_valid(cron):
            raise TaskDefinitionError(
                f"task {task_name}: cron {cron!r} is not a five-field cron expression "
                "(minute hour day-of-month month day-of-week), such as '0 9 * * *'"
            )
        zone = "UTC" if timezone is None else timezone
        try:
            ZoneInfo(zone)
        except (ZoneInfoNotFoundError, ValueError, TypeError):
            raise TaskDefinitionError(
                f"task {task_name}: timezone {timezone!r} is not an IANA time zone name, "
                "such as 'Europe/Paris' or 'UTC'"
            ) from None
        required = [
            name
            for name, parameter in signature.parameters.items()
            if parameter.default is inspect.Parameter.empty
            and parameter.kind not in (parameter.VAR_KEYWORD, parameter.VAR_POSITIONAL)
        ]
        if required:
            raise TaskDefinitionError(
                f"task {task_name}: a cron task is queued without arguments, but it requires "
                f"{', '.join(required)}; give them defaults"
            )
        return cls(" ".join(cron.split()), zone, _catchup_seconds(task_name, catchup))

    def occurrences(
        self, after: datetime.datetime, until: datetime.datetime
    ) -> list[datetime.datetime]:
        """The occurrences in (after, until], oldest first."""
        found = []
        moment = self.next_after(after)
        while moment <= until:
            found.append(moment)
            moment = self.next_after(moment)
        return found

    def next_after(self, moment: datetime.datetime) -> datetime.datetime:
        """The first occurrence strictly after `moment` (aware, in the schedule's zone)."""
        from croniter import croniter

        start = moment.astimezone(ZoneInfo(self.timezone))
        following: datetime.datetime = croniter(self.expression, start).get_next(datetime.datetime)
        return following


def _catchup_seconds(task_name: str, catchup: Any) -> float:
    if catchup is None:
        return DEFAULT_CATCHUP_SECONDS
    if isinstance(catchup, datetime.timedelta):
        seconds = catchup.total_seconds()
    elif isinstance(catchup, int | float) and not isinstance(catchup, bool):
        seconds = float(catchup)
    else:
        raise TaskDefinitionError(
            f"task {task_name}: cron_catchup must be seconds or a timedelta, not {catchup!r}"
        )
    if not math.isfinite(seconds) or seconds < 0:
        raise TaskDefinitionError(f"task {task_name}: cron_catchup must be >= 0, not {catchup!r}")
    return seconds


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
    queue = task.queue or defaults.queue
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
            priority=task.priority if task.priority is not None else defaults.priority,
            max_retries=task.max_retries if task.max_retries is not None else defaults.max_retries,
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
            except (psycopg.OperationalError, PoolTimeout, DatabaseUnavailable) as error:
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
