"""How the end of a run is written: the one Outcome -> SQL mapping, shared by the Postgres
completer, the RabbitMQ status writer and the test mode.

    COMPLETED    complete_started_tasks   batched   the ids it accepted
                 complete_and_hand_off    batched   and the children made ready, claimed
                                                    for the worker's free slots (HandOffOffer)
    FAILED       fail_task                one each  RETRYING after the back-off, or FAILED
    RESCHEDULED  reschedule_task          one each  RETRYING at the delay asked
    RELEASED     release_tasks            batched   PENDING, the attempt not counted
    UNKNOWN      give_back_unknown_tasks  batched   PENDING after its back-off, or FAILED

Every write is fenced by the task's lease token: the outcome of a run whose worker lost the
task (taken over, cancelled) changes nothing and comes back in `Written.lease_lost`. What
the database decided (status, run_at, error) comes back in `Written.decisions`; `report`
logs both the same way for every broker.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import psycopg

from pgqueue.db import arrays
from pgqueue.db.claim import claimed_task
from pgqueue.errors import first_line
from pgqueue.logs import log_with_traceback, task_fields
from pgqueue.records import Outcome, OutcomeKind, Task, TaskStatus

log = logging.getLogger("pgqueue.outcomes")

#: How a refused write is named in the log line that reports it.
_WRITE_NAMES = {
    OutcomeKind.COMPLETED: "completion",
    OutcomeKind.FAILED: "failure",
    OutcomeKind.RESCHEDULED: "reschedule",
    OutcomeKind.UNKNOWN: "give-back",
}


@dataclasses.dataclass(frozen=True, slots=True)
class Decision:
    """What became of a task whose run FAILED, was RESCHEDULED or was UNKNOWN: its new
    status, when it is due again, and for a task that ends FAILED unknown, its error."""

    status: TaskStatus
    run_at: datetime.datetime
    error: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class HandOffOffer:
    """The worker whose completions these are, and how many tasks it would start now: the
    children those completions make ready are claimed for it (`complete_and_hand_off`)."""

    worker_id: str
    queues: Sequence[str]
    slots: int
    lease_seconds: float


@dataclasses.dataclass(slots=True)
class Written:
    """What the database made of a batch of outcomes."""

    #: Outcomes refused because their worker no longer holds the task.
    lease_lost: list[Outcome] = dataclasses.field(default_factory=list)
    #: Tasks made ready by these completions and claimed for the worker (HandOffOffer).
    handed_off: list[Task] = dataclasses.field(default_factory=list)
    #: By task id, for the FAILED, RESCHEDULED and UNKNOWN outcomes accepted.
    decisions: dict[uuid.UUID, Decision] = dataclasses.field(default_factory=dict)

    @property
    def retries_scheduled(self) -> bool:
        """Whether a task goes back to RETRYING (a sleeping worker's timer may be late)."""
        return any(d.status is TaskStatus.RETRYING for d in self.decisions.values())

    @property
    def unknown_given_back(self) -> bool:
        """Whether a task whose name this worker does not know went back PENDING (only
        give_back_unknown_tasks decides PENDING)."""
        return any(d.status is TaskStatus.PENDING for d in self.decisions.values())


async def write_outcomes(
    conn: psycopg.AsyncConnection[Any],
    queries: dict[str, str],
    batch: Sequence[Outcome],
    unknown_task_grace_seconds: float,
    offer: HandOffOffer | None = None,
) -> Written:
    """Write `batch` on `conn` (autocommit): one statement when every outcome is a
    completion (the usual batch), else one transaction, so that a batch the database
    refuses leaves nothing written and can be written again one outcome at a time. With an
    `offer` of free slots, the children the completions make ready come back claimed."""
    written = Written()
    completed = [o for o in batch if o.kind is OutcomeKind.COMPLETED]
    if len(completed) == len(batch):
        await _complete(conn, queries, completed, offer, written)
        return written
    async with conn.transaction():
        if completed:
            await _complete(conn, queries, completed, offer, written)
        released = [o for o in batch if o.kind is OutcomeKind.RELEASED]
        if released:
            await _release(conn, queries, released)
        unknown = [o for o in batch if o.kind is OutcomeKind.UNKNOWN]
        if unknown:
            await _give_back_unknown(conn, queries, unknown, unknown_task_grace_seconds, written)
        for outcome in batch:
            if outcome.kind in (OutcomeKind.FAILED, OutcomeKind.RESCHEDULED):
                await _fail_or_reschedule(conn, queries, outcome, written)
    return written


def _fence(outcomes: Sequence[Outcome]) -> dict[str, Any]:
    return {
        "ids": [o.task.id for o in outcomes],
        "tokens": [o.task.lease_token for o in outcomes],
    }


def _completions(outcomes: Sequence[Outcome]) -> dict[str, str]:
    """The array parameters of a completion, as literals (db/arrays.py)."""
    return {
        "ids": arrays.uuids([o.task.id for o in outcomes]),
        "tokens": arrays.integers([o.task.lease_token for o in outcomes]),
        "results": arrays.texts([o.result_json for o in outcomes]),
        # A task claimed ahead started after its claim (the worker moves it on); None
        # keeps the start the database recorded.
        "started": arrays.timestamps([o.task.started_at for o in outcomes]),
    }


async def _complete(
    conn: psycopg.AsyncConnection[Any],
    queries: dict[str, str],
    outcomes: list[Outcome],
    offer: HandOffOffer | None,
    written: Written,
) -> None:
    if offer is None or offer.slots <= 0:
        written.lease_lost = await complete_outcomes(conn, queries, outcomes)
        return
    cursor = await conn.execute(
        queries["complete_and_hand_off"],
        {
            **_completions(outcomes),
            "worker_id": offer.worker_id,
            "queues": arrays.texts(offer.queues),
            "slots": offer.slots,
            "lease_seconds": offer.lease_seconds,
        },
    )
    accepted = set()
    for row in await cursor.fetchall():
        if row[0]:
            written.handed_off.append(claimed_task(row[1:]))
        else:
            accepted.add(row[1])
    if len(accepted) < len(outcomes):
        written.lease_lost = [o for o in outcomes if o.task.id not in accepted]


async def complete_outcomes(
    conn: psycopg.AsyncConnection[Any], queries: dict[str, str], outcomes: list[Outcome]
) -> list[Outcome]:
    """Write COMPLETED outcomes in one statement; those refused (lease lost)."""
    cursor = await conn.execute(queries["complete_started_tasks"], _completions(outcomes))
    accepted = {row[0] for row in await cursor.fetchall()}
    if len(accepted) == len(outcomes):
        return []
    return [o for o in outcomes if o.task.id not in accepted]


async def _release(
    conn: psycopg.AsyncConnection[Any], queries: dict[str, str], outcomes: list[Outcome]
) -> None:
    # Nothing to refuse here: a task that is not this worker's any more stays as it is.
    await conn.execute(queries["release_tasks"], _fence(outcomes))


async def _give_back_unknown(
    conn: psycopg.AsyncConnection[Any],
    queries: dict[str, str],
    outcomes: list[Outcome],
    grace_seconds: float,
    written: Written,
) -> None:
    cursor = await conn.execute(
        queries["give_back_unknown_tasks"],
        {**_fence(outcomes), "grace_seconds": grace_seconds},
    )
    for task_id, status, run_at, error in await cursor.fetchall():
        written.decisions[task_id] = Decision(TaskStatus(status), run_at, error)
    written.lease_lost += [o for o in outcomes if o.task.id not in written.decisions]


async def _fail_or_reschedule(
    conn: psycopg.AsyncConnection[Any], queries: dict[str, str], outcome: Outcome, written: Written
) -> None:
    """One statement per outcome: the back-off of each failure and the delay of each
    reschedule are the task's own."""
    task = outcome.task
    params: dict[str, Any] = {"id": task.id, "token": task.lease_token}
    if outcome.kind is OutcomeKind.FAILED:
        query = "fail_task"
        params |= {"error": outcome.error, "retryable": outcome.retryable}
    else:
        query = "reschedule_task"
        params |= {"delay": outcome.delay, "refund_attempt": outcome.refund_attempt}
    cursor = await conn.execute(queries[query], params)
    row = await cursor.fetchone()
    if row is None or row[0] is None:  # fail_task: no row; reschedule_task: a NULL
        written.lease_lost.append(outcome)
    elif outcome.kind is OutcomeKind.FAILED:  # (new status, new run_at)
        written.decisions[task.id] = Decision(TaskStatus(row[0]), row[1])
    else:  # the new run_at
        written.decisions[task.id] = Decision(TaskStatus.RETRYING, row[0])


def report(batch: Sequence[Outcome], written: Written, *, tracebacks: bool = True) -> None:
    """Log what the database decided: refused writes, retries, failures, give-backs. A
    task FAILED for good is an ERROR line, with the traceback of its last run (stored in
    its error) under it unless `tracebacks` is off (PGQUEUE_LOG_FAILURE_TRACEBACKS)."""
    if not written.lease_lost and not written.decisions:
        return  # completions, all accepted: nothing to say
    for outcome in written.lease_lost:
        log.warning(
            "lease lost: task %s %s (lease token %d) was taken over or cancelled; its %s "
            "was refused",
            outcome.task.id,
            outcome.task.name,
            outcome.task.lease_token,
            _WRITE_NAMES.get(outcome.kind, str(outcome.kind)),
        )
    unknown = []
    for outcome in batch:
        decision = written.decisions.get(outcome.task.id)
        if decision is None:
            continue
        if outcome.kind is OutcomeKind.UNKNOWN:
            unknown.append(outcome)
        elif outcome.kind is OutcomeKind.FAILED and decision.status is TaskStatus.RETRYING:
            log.info(
                "task %s %s will retry at %s", outcome.task.id, outcome.task.name, decision.run_at
            )
        elif outcome.kind is OutcomeKind.FAILED:
            log_with_traceback(
                log,
                logging.ERROR,
                _traceback(outcome.error) if tracebacks else None,
                "task %s %s is FAILED: %s",
                outcome.task.id,
                outcome.task.name,
                first_line(outcome.error, 300),
                fields=task_fields(outcome.task),
            )
    if unknown:
        _log_unknown(unknown, written.decisions)


def _traceback(error: str | None) -> str | None:
    """The traceback part of a stored error ("Type: message", a blank line, the traceback)."""
    _, blank, trace = (error or "").partition("\n\n")
    return trace.rstrip("\n") if blank and trace.strip() else None


def _log_unknown(outcomes: list[Outcome], decisions: Mapping[uuid.UUID, Decision]) -> None:
    """One line per batch, not per task: a backlog of unknown tasks is given back in
    thousands, and each comes back every few seconds until a worker that knows it runs it."""
    failed = [o for o in outcomes if decisions[o.task.id].status is TaskStatus.FAILED]
    given_back = [o for o in outcomes if decisions[o.task.id].status is not TaskStatus.FAILED]
    if given_back:
        names = sorted({o.task.name for o in given_back})
        log.warning(
            "gave back %d tasks whose names this worker has not registered (%s); a worker "
            "that imports their modules (--import, PGQUEUE_IMPORTS) will run them",
            len(given_back),
            ", ".join(repr(name) for name in names[:5])
            + (f" and {len(names) - 5} more" if len(names) > 5 else ""),
        )
    for outcome in failed:
        log.error(
            "task %s %s is FAILED: %s",
            outcome.task.id,
            outcome.task.name,
            decisions[outcome.task.id].error,
        )
