"""The RabbitMQ broker's task records: batched status writes, and what each outcome publishes."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import math
import random
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import psycopg
from psycopg_pool import PoolTimeout

from pgqueue.brokers.base import log_unknown_given_back
from pgqueue.brokers.rabbitmq.connection import MAX_BACKOFF_SECONDS
from pgqueue.brokers.rabbitmq.messages import (
    UNKNOWN_GIVE_BACKS_HEADER,
    UNKNOWN_SINCE_HEADER,
    int_header,
)
from pgqueue.db.database import Database
from pgqueue.errors import DatabaseUnavailable
from pgqueue.records import Outcome, OutcomeKind, Task

log = logging.getLogger("pgqueue.status_writer")


def retry_backoff(attempts: int) -> float:
    """The SQL function pgqueue.retry_backoff in Python (used without status tracking)."""
    return min(2.0 ** (max(attempts, 1) - 1), 3600.0) * (0.75 + random.random() * 0.5)


def unknown_task_backoff(give_backs: int) -> float:
    """The SQL function pgqueue.unknown_task_backoff in Python (without status tracking)."""
    return min(2.0 ** (max(give_backs, 1) - 1), 30.0) * (0.75 + random.random() * 0.5)


@dataclasses.dataclass(slots=True)
class FollowUp:
    """What settling an outcome publishes: again later (`run_at`), dead-lettered, or nothing."""

    outcome: Outcome
    action: str  # "ack" | "again" | "dead"
    attempts: int = 0
    run_at: float = 0.0
    error: str | None = None
    done: bool = False
    headers: dict[str, Any] | None = None  # beyond attempts, run-at and error


class RecordWriter:
    """A worker's writes to the task table: runs started, outcomes, cancellations seen."""

    def __init__(
        self,
        database: Database,
        queries: dict[str, str],
        worker_id: str,
        interrupted: Callable[[], bool],
        unknown_task_grace_seconds: float = 3600.0,
    ) -> None:
        self.database = database
        self._queries = queries
        self._worker_id = worker_id
        self._interrupted = interrupted
        self._unknown_task_grace_seconds = unknown_task_grace_seconds

    async def start(self, tasks: Sequence[Task]) -> dict[uuid.UUID, tuple[int, int]]:
        """Mark deliveries RUNNING in one statement: {id: (attempts, lease_token)} of those
        still wanted (a finished, cancelled or retried task is absent)."""
        params = {
            "ids": [t.id for t in tasks],
            "names": [t.name for t in tasks],
            "queues": [t.queue for t in tasks],
            "priorities": [t.priority for t in tasks],
            "kwargs": [json.dumps(t.kwargs) for t in tasks],
            "max_retries": [t.max_retries for t in tasks],
            "run_ats": [t.run_at for t in tasks],
            "attempts": [t.attempts - 1 for t in tasks],
            "worker_id": self._worker_id,
        }
        rows = await self._with_database(self._queries["broker_start_tasks"], params)
        return {row[0]: (row[1], row[2]) for row in rows}

    async def held(self, tasks: Sequence[Task]) -> set[uuid.UUID]:
        """The ids of `tasks` whose records this worker still holds (not cancelled meanwhile)."""
        params = {"ids": [t.id for t in tasks], "tokens": [t.lease_token for t in tasks]}
        return {row[0] for row in await self._with_database(self._queries["held_tasks"], params)}

    async def _with_database(self, query: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        """Run one statement; a worker waits out a database outage instead of dying."""
        backoff = 0.1
        while True:
            try:
                async with self.database.async_connection() as conn:
                    cursor = await conn.execute(query, params)
                    return await cursor.fetchall() if cursor.description else []
            except (psycopg.OperationalError, PoolTimeout, DatabaseUnavailable) as error:
                if self._interrupted():  # stopping: the unacked deliveries come back anyway
                    raise
                log.warning("database unavailable (%s); retrying in %.1fs", error, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)

    async def record(self, batch: list[Outcome]) -> list[FollowUp]:
        """Record the outcomes (one transaction) and decide what each one publishes next; waits
        out a database outage."""
        backoff = 0.1
        while True:
            try:
                return await self._record(batch)
            except (psycopg.OperationalError, PoolTimeout, DatabaseUnavailable) as error:
                log.warning("cannot record outcomes (%s); retrying in %.1fs", error, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)

    async def _record(self, batch: list[Outcome]) -> list[FollowUp]:
        queries = self._queries
        follow_ups = []
        async with self.database.async_connection() as conn, conn.transaction():
            completed = [o for o in batch if o.kind is OutcomeKind.COMPLETED]
            if completed:
                await conn.execute(
                    queries["complete_tasks"],
                    {
                        "ids": [o.task.id for o in completed],
                        "tokens": [o.task.lease_token for o in completed],
                        "results": [o.result_json for o in completed],
                    },
                )
            given_back = await self._give_back_unknown(
                conn, [o for o in batch if o.kind is OutcomeKind.UNKNOWN]
            )
            for outcome in batch:
                task = outcome.task
                fence = {"id": task.id, "token": task.lease_token}
                if outcome.kind is OutcomeKind.COMPLETED:
                    follow_ups.append(FollowUp(outcome, "ack"))
                elif outcome.kind is OutcomeKind.FAILED:
                    cursor = await conn.execute(
                        queries["fail_task"],
                        {**fence, "error": outcome.error, "retryable": outcome.retryable},
                    )
                    row = await cursor.fetchone()
                    follow_ups.append(failed_follow_up(outcome, row))
                elif outcome.kind is OutcomeKind.RESCHEDULED:
                    params = {
                        **fence,
                        "delay": outcome.delay,
                        "refund_attempt": outcome.refund_attempt,
                    }
                    cursor = await conn.execute(queries["reschedule_task"], params)
                    row = await cursor.fetchone()
                    attempts = task.attempts - (1 if outcome.refund_attempt else 0)
                    follow_ups.append(
                        FollowUp(outcome, "ack")
                        if row is None or row[0] is None
                        else FollowUp(outcome, "again", attempts, row[0].timestamp())
                    )
                elif outcome.kind is OutcomeKind.UNKNOWN:
                    follow_ups.append(unknown_follow_up(outcome, given_back.get(task.id)))
                else:  # RELEASED
                    await conn.execute(
                        queries["release_tasks"], {"ids": [task.id], "tokens": [task.lease_token]}
                    )
                    follow_ups.append(FollowUp(outcome, "again", task.attempts - 1, time.time()))
        return follow_ups

    async def _give_back_unknown(
        self, conn: psycopg.AsyncConnection[Any], outcomes: list[Outcome]
    ) -> dict[uuid.UUID, tuple[Any, ...]]:
        """The record decides (sql/functions.sql): {id: (id, status, run_at, error)}."""
        if not outcomes:
            return {}
        cursor = await conn.execute(
            self._queries["give_back_unknown_tasks"],
            {
                "ids": [o.task.id for o in outcomes],
                "tokens": [o.task.lease_token for o in outcomes],
                "grace_seconds": self._unknown_task_grace_seconds,
            },
        )
        rows = await cursor.fetchall()
        log_unknown_given_back(outcomes, rows)
        return {row[0]: row for row in rows}


def unknown_follow_up(outcome: Outcome, row: tuple[Any, ...] | None) -> FollowUp:
    """From give_back_unknown_tasks' row: again at its run_at, the attempt not counted, or
    dead-lettered with its error once the grace is over."""
    if row is None:  # refused: cancelled or taken over meanwhile
        return FollowUp(outcome, "ack")
    _, status, run_at, error = row
    attempts = outcome.task.attempts - 1
    if status == "FAILED":
        return FollowUp(outcome, "dead", attempts, time.time(), error)
    return FollowUp(outcome, "again", attempts, run_at.timestamp())


def failed_follow_up(outcome: Outcome, row: tuple[Any, ...] | None) -> FollowUp:
    """From fail_task's (status, run_at): retry later, or dead-letter with the error."""
    if row is None:  # refused: cancelled or taken over meanwhile
        return FollowUp(outcome, "ack")
    status, run_at = row
    if status == "RETRYING":
        log.info("task %s %s will retry at %s", outcome.task.id, outcome.task.name, run_at)
        return FollowUp(outcome, "again", outcome.task.attempts, run_at.timestamp())
    return dead_follow_up(outcome)


def dead_follow_up(outcome: Outcome) -> FollowUp:
    log.error(
        "task %s %s is FAILED: %s",
        outcome.task.id,
        outcome.task.name,
        (outcome.error or "").splitlines()[0] if outcome.error else "",
    )
    return FollowUp(outcome, "dead", outcome.task.attempts, time.time(), outcome.error or "")


def decide_untracked(
    outcome: Outcome,
    delivered: dict[str, Any] | None = None,
    worker_id: str = "",
    unknown_task_grace_seconds: float = 3600.0,
) -> FollowUp:
    """Without records the message carries everything: the same decisions in Python.
    `delivered`: the headers of the delivery the outcome is about."""
    task = outcome.task
    if outcome.kind is OutcomeKind.UNKNOWN:
        return _give_back_untracked(outcome, delivered or {}, worker_id, unknown_task_grace_seconds)
    if outcome.kind is OutcomeKind.COMPLETED:
        return FollowUp(outcome, "ack")
    if outcome.kind is OutcomeKind.FAILED:
        if outcome.retryable and task.attempts <= task.max_retries:
            return FollowUp(
                outcome, "again", task.attempts, time.time() + retry_backoff(task.attempts)
            )
        return dead_follow_up(outcome)
    if outcome.kind is OutcomeKind.RESCHEDULED:
        attempts = task.attempts - (1 if outcome.refund_attempt else 0)
        return FollowUp(outcome, "again", attempts, time.time() + outcome.delay)
    return FollowUp(outcome, "again", task.attempts - 1, time.time())


def _give_back_untracked(
    outcome: Outcome, delivered: dict[str, Any], worker_id: str, grace_seconds: float
) -> FollowUp:
    """give_back_unknown_tasks in Python, the message's headers standing for the record."""
    task, now = outcome.task, time.time()
    since = int_header(delivered, UNKNOWN_SINCE_HEADER) / 1000 or now
    give_backs = int_header(delivered, UNKNOWN_GIVE_BACKS_HEADER) + 1
    headers = {UNKNOWN_SINCE_HEADER: math.ceil(since * 1000), UNKNOWN_GIVE_BACKS_HEADER: give_backs}
    if now < since + grace_seconds:
        run_at = now + unknown_task_backoff(give_backs)
        return FollowUp(outcome, "again", task.attempts - 1, run_at, headers=headers)
    times = "time" if give_backs == 1 else "times"
    error = (
        f"UnknownTask: no worker knew task name {task.name!r} for {now - since:.0f} s (given "
        f"back {give_backs} {times}, last by worker {worker_id}); start a worker that imports "
        "the module defining it (--import or PGQUEUE_IMPORTS), then `pgqueue tasks retry`"
    )
    return FollowUp(outcome, "dead", task.attempts - 1, now, error, headers=headers)


def log_untracked_give_backs(follow_ups: list[FollowUp]) -> None:
    """log_unknown_given_back for decisions taken without records."""
    unknown = [f for f in follow_ups if f.outcome.kind is OutcomeKind.UNKNOWN]
    if unknown:
        rows = [
            (f.outcome.task.id, "FAILED" if f.action == "dead" else "PENDING", f.run_at, f.error)
            for f in unknown
        ]
        log_unknown_given_back([f.outcome for f in unknown], rows)
