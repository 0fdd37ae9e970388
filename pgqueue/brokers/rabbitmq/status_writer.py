"""The RabbitMQ broker's task records: batched status writes, and what each outcome publishes.

With records (status tracking), the database decides what becomes of each outcome, through
the mapping every broker shares (db/outcomes.py). Without them there is no database to ask,
so `decide_untracked` takes the same decisions in Python, from the message: the one Python
copy of the SQL's decisions, kept equal to it by tests/brokers/test_rabbitmq.py. Either way the
decisions come as a `Written`, from which `follow_ups` says what to publish.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import math
import random
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from pgqueue.brokers.rabbitmq.connection import MAX_BACKOFF_SECONDS
from pgqueue.brokers.rabbitmq.messages import (
    UNKNOWN_GIVE_BACKS_HEADER,
    UNKNOWN_SINCE_HEADER,
    int_header,
)
from pgqueue.db.database import UNAVAILABLE, Database
from pgqueue.db.outcomes import Decision, Written, write_outcomes
from pgqueue.loops import Backoff, retrying
from pgqueue.records import Outcome, OutcomeKind, Task, TaskStatus

log = logging.getLogger("pgqueue.status_writer")


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
        """Run one statement; a worker waits out a database outage instead of dying (while
        stopping it gives up: the unacked deliveries come back anyway)."""

        async def run() -> list[tuple[Any, ...]]:
            async with self.database.async_connection() as conn:
                cursor = await conn.execute(query, params)
                return await cursor.fetchall() if cursor.description else []

        return await retrying(
            run,
            UNAVAILABLE,
            Backoff(first=0.1, most=MAX_BACKOFF_SECONDS),
            log,
            "database unavailable",
            give_up=self._interrupted,
        )

    async def record(self, batch: list[Outcome]) -> Written:
        """Record the outcomes (one transaction); what the database decided. Waits out a
        database outage."""

        async def write() -> Written:
            async with self.database.async_connection() as conn:
                return await write_outcomes(
                    conn, self._queries, batch, self._unknown_task_grace_seconds
                )

        return await retrying(
            write,
            UNAVAILABLE,
            Backoff(first=0.1, most=MAX_BACKOFF_SECONDS),
            log,
            "cannot record outcomes",
        )


def follow_ups(
    batch: Sequence[Outcome],
    written: Written,
    headers: Mapping[uuid.UUID, dict[str, Any]] | None = None,
) -> list[FollowUp]:
    """What each outcome publishes, from what the record (or decide_untracked) decided;
    `headers`: by task id, those its message carries beyond attempts, run-at and error."""
    now = time.time()
    result = []
    for outcome in batch:
        task, kind = outcome.task, outcome.kind
        decision = written.decisions.get(task.id)
        extra = headers.get(task.id) if headers else None
        if kind is OutcomeKind.RELEASED:
            result.append(FollowUp(outcome, "again", task.attempts - 1, now))
        elif decision is None:  # completed; or refused: cancelled or taken over meanwhile
            result.append(FollowUp(outcome, "ack"))
        else:
            # A give-back, or a reschedule that says so, refunds the attempt it did not spend.
            refund = kind is OutcomeKind.UNKNOWN or (
                kind is OutcomeKind.RESCHEDULED and outcome.refund_attempt
            )
            attempts = task.attempts - 1 if refund else task.attempts
            if decision.status is TaskStatus.FAILED:
                error = decision.error if kind is OutcomeKind.UNKNOWN else outcome.error
                result.append(FollowUp(outcome, "dead", attempts, now, error or "", headers=extra))
            else:
                run_at = decision.run_at.timestamp()
                result.append(FollowUp(outcome, "again", attempts, run_at, headers=extra))
    return result


def retry_backoff(attempts: int) -> float:
    """The SQL function pgqueue.retry_backoff, for decide_untracked."""
    return min(2.0 ** (max(attempts, 1) - 1), 3600.0) * (0.75 + random.random() * 0.5)


def unknown_task_backoff(give_backs: int) -> float:
    """The SQL function pgqueue.unknown_task_backoff, for decide_untracked."""
    return min(2.0 ** (max(give_backs, 1) - 1), 30.0) * (0.75 + random.random() * 0.5)


@dataclasses.dataclass(slots=True)
class Untracked:
    """decide_untracked's decisions, and the give-back headers each UNKNOWN outcome's
    message carries from now on (the record it has not got)."""

    written: Written
    headers: dict[uuid.UUID, dict[str, Any]]


def decide_untracked(
    batch: Sequence[Outcome],
    delivered: Callable[[Task], dict[str, Any]],
    worker_id: str = "",
    unknown_task_grace_seconds: float = 3600.0,
) -> Untracked:
    """Without records the message carries everything: fail_task, reschedule_task and
    give_back_unknown_tasks decided in Python. `delivered(task)`: the headers of the
    delivery an outcome is about. Python, because there is no database to ask here."""
    now = time.time()
    decided = Untracked(Written(), {})
    for outcome in batch:
        task = outcome.task
        if outcome.kind is OutcomeKind.FAILED:
            retry = outcome.retryable and task.attempts <= task.max_retries
            status = TaskStatus.RETRYING if retry else TaskStatus.FAILED
            run_at = now + retry_backoff(task.attempts) if retry else now
            decided.written.decisions[task.id] = Decision(status, _moment(run_at))
        elif outcome.kind is OutcomeKind.RESCHEDULED:
            run_at = now + outcome.delay
            decided.written.decisions[task.id] = Decision(TaskStatus.RETRYING, _moment(run_at))
        elif outcome.kind is OutcomeKind.UNKNOWN:
            decision, headers = _give_back_untracked(
                task, delivered(task), worker_id, unknown_task_grace_seconds, now
            )
            decided.written.decisions[task.id] = decision
            decided.headers[task.id] = headers
    return decided


def _give_back_untracked(
    task: Task, delivered: dict[str, Any], worker_id: str, grace_seconds: float, now: float
) -> tuple[Decision, dict[str, Any]]:
    """give_back_unknown_tasks in Python, the message's headers standing for the record."""
    since = int_header(delivered, UNKNOWN_SINCE_HEADER) / 1000 or now
    give_backs = int_header(delivered, UNKNOWN_GIVE_BACKS_HEADER) + 1
    headers = {UNKNOWN_SINCE_HEADER: math.ceil(since * 1000), UNKNOWN_GIVE_BACKS_HEADER: give_backs}
    if now < since + grace_seconds:
        run_at = now + unknown_task_backoff(give_backs)
        return Decision(TaskStatus.PENDING, _moment(run_at)), headers
    times = "time" if give_backs == 1 else "times"
    error = (
        f"UnknownTask: no worker knew task name {task.name!r} for {now - since:.0f} s (given "
        f"back {give_backs} {times}, last by worker {worker_id}); start a worker that imports "
        "the module defining it (--import or PGQUEUE_IMPORTS), then `pgqueue tasks retry`"
    )
    return Decision(TaskStatus.FAILED, _moment(now), error), headers


def _moment(epoch: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(epoch, datetime.UTC)
