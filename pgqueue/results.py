"""Waiting for a task's result: `tm.wait(id)` and `await tm.await_result(id)`.

A waiter LISTENs on the results channel and registers in `pgqueue.result_waiters`; the
statement-level trigger of sql/features.sql then notifies the ids of waited-for tasks
that finished. With nobody waiting, completions send nothing (one probe of an empty
table per statement). The waiter re-reads its task every RECHECK_SECONDS as a safety net
(a notification lost with a dropped connection, a task deleted by cleanup).

>>> task_id = send_email.delay(to="a@example.com")
>>> tm.wait(task_id, timeout=10)
{'status': 'sent', 'recipient': 'a@example.com'}
"""

from __future__ import annotations

import math
import time
import uuid
from typing import Any

import psycopg
from psycopg.rows import dict_row

from pgqueue.db.database import Database, unavailable
from pgqueue.db.migrated import atranslated, translated
from pgqueue.db.queries import Channel
from pgqueue.db.store import parse_task_id
from pgqueue.errors import (
    InvalidTaskOption,
    TaskCancelled,
    TaskFailed,
    TaskNotFound,
    WaitTimeout,
)
from pgqueue.records import Task, TaskStatus

RECHECK_SECONDS = 5.0


def outcome(task: Task) -> Any:
    """The result of a finished task, or its failure raised."""
    if task.status is TaskStatus.COMPLETED:
        return task.result
    if task.status is TaskStatus.CANCELLED:
        raise TaskCancelled(task)
    raise TaskFailed(task)


def _waiter_kwargs(database: Database) -> dict[str, Any]:
    """A waiter's connection: to where LISTEN works (PGQUEUE_LISTEN_DSN), never preparing
    (behind a pooler its statements would vanish between transactions)."""
    return {**database.connect_kwargs(), "prepare_threshold": None}


def _check_timeout(timeout: float | None) -> float:
    if timeout is None:
        return math.inf
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout >= 0:
        raise InvalidTaskOption(f"timeout must be seconds >= 0 or None, not {timeout!r}")
    return float(timeout)


class _Wait:
    """The state of one wait: which task, until when, and this waiter's registration."""

    def __init__(self, database: Database, task_id: Any, timeout: float | None) -> None:
        self.database = database
        self.task_id = parse_task_id(task_id)
        self.timeout = _check_timeout(timeout)
        self.deadline = time.monotonic() + self.timeout
        self.waiter_id = uuid.uuid4()
        self.queries = database.queries
        self.payload = str(self.task_id)

    def registration(self) -> dict[str, Any]:
        # The row outlives a recheck interval only if the waiter dies: it then expires.
        return {"id": self.waiter_id, "task_id": self.task_id, "timeout": 3 * RECHECK_SECONDS}

    def decide(self, row: dict[str, Any] | None) -> tuple[bool, Any, float]:
        """(done, task, seconds to wait for a notification)."""
        if row is None:
            raise TaskNotFound(f"no task has id {self.task_id} (never queued, or cleaned up)")
        task = Task.from_row(row)
        if task.status.is_finished:
            return True, task, 0.0
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise WaitTimeout(task, self.timeout)
        return False, task, min(remaining, RECHECK_SECONDS)


def wait(database: Database, task_id: Any, timeout: float | None = None) -> Any:
    """Block until the task finishes; its result, or TaskFailed / TaskCancelled /
    WaitTimeout / TaskNotFound."""
    state = _Wait(database, task_id, timeout)
    queries = state.queries
    try:
        conn = psycopg.connect(database.listen_dsn, **_waiter_kwargs(database))
    except psycopg.OperationalError as error:
        raise unavailable(database.dsn, error) from error
    with translated(database.dsn, database.schema), conn:
        conn.execute(Channel.RESULTS.listen(database.schema))
        try:
            while True:
                conn.execute(queries["register_result_waiter"], state.registration())
                row = conn.cursor(row_factory=dict_row).execute(
                    queries["get_task"], {"id": state.task_id}
                )
                done, task, seconds = state.decide(row.fetchone())
                if done:
                    return outcome(task)
                for note in conn.notifies(timeout=seconds):
                    if note.payload == state.payload:
                        break
        except psycopg.OperationalError as error:
            raise unavailable(database.dsn, error) from error
        finally:
            if not conn.closed and not conn.broken:
                conn.execute(queries["unregister_result_waiter"], {"id": state.waiter_id})


async def await_result(database: Database, task_id: Any, timeout: float | None = None) -> Any:
    """The async twin of `wait`."""
    state = _Wait(database, task_id, timeout)
    queries = state.queries
    try:
        conn = await psycopg.AsyncConnection.connect(
            database.listen_dsn, **_waiter_kwargs(database)
        )
    except psycopg.OperationalError as error:
        raise unavailable(database.dsn, error) from error
    async with atranslated(database.dsn, database.schema), conn:
        await conn.execute(Channel.RESULTS.listen(database.schema))
        try:
            while True:
                await conn.execute(queries["register_result_waiter"], state.registration())
                cursor = conn.cursor(row_factory=dict_row)
                await cursor.execute(queries["get_task"], {"id": state.task_id})
                done, task, seconds = state.decide(await cursor.fetchone())
                if done:
                    return outcome(task)
                async for note in conn.notifies(timeout=seconds):
                    if note.payload == state.payload:
                        break
        except psycopg.OperationalError as error:
            raise unavailable(database.dsn, error) from error
        finally:
            if not conn.closed and not conn.broken:
                await conn.execute(queries["unregister_result_waiter"], {"id": state.waiter_id})
