"""Records how runs ended, in batches: one statement for many completions.

A flush starts as soon as the previous one returns, so at low load an outcome is
written at once and at high load many share one round trip. Completions are
written with synchronous_commit off (see brokers/postgres.py): a completion lost
in a server crash only means the task runs again, which at-least-once allows.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from pgqueue.brokers.base import log_unknown_given_back
from pgqueue.errors import DatabaseUnavailable
from pgqueue.loops import BackgroundLoop, Backoff, first_line
from pgqueue.payload import error_summary, storable_text
from pgqueue.records import Outcome, OutcomeKind

log = logging.getLogger("pgqueue.completer")

MAX_BACKOFF_SECONDS = 5.0
#: Errors that mean the database is away, not that it refused an outcome: try again.
UNAVAILABLE = (psycopg.OperationalError, PoolTimeout, DatabaseUnavailable)


class Completer(BackgroundLoop):
    """A buffer of outcomes and the background flush that writes them.

    One outcome the database refuses (a value it cannot store, a constraint) never holds
    back the others: the batch is written again one outcome at a time, and the refused
    one is recorded as a failure that says why, or dropped with a logged traceback (its
    lease then expires and the task runs again). While outcomes cannot be written at all
    (the database is away), `recording` is clear: the worker stops claiming meanwhile.
    """

    name = "pgqueue-completer"

    def __init__(
        self,
        pool: AsyncConnectionPool,
        queries: dict[str, str],
        on_retry_scheduled: Callable[[], None],
        unknown_task_grace_seconds: float = 3600.0,
    ) -> None:
        super().__init__()
        self._pool = pool
        self._queries = queries
        self._on_retry_scheduled = on_retry_scheduled
        self._unknown_task_grace_seconds = unknown_task_grace_seconds
        self._pending: list[Outcome] = []
        self._ready = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        #: Set while outcomes are written as they come; clear while writes fail.
        self.recording = asyncio.Event()
        self.recording.set()

    def add(self, outcome: Outcome) -> None:
        self._pending.append(outcome)
        self._idle.clear()
        self._ready.set()

    async def close(self, timeout: float) -> None:
        """Write what is buffered (up to `timeout` seconds), then stop."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            log.warning(
                "could not record %d outcomes before shutdown; their tasks will run again "
                "when their leases expire",
                len(self._pending),
            )
        await self.stop()

    async def _run(self) -> None:
        while True:
            if not self._pending:
                await self._ready.wait()
            self._ready.clear()
            batch, self._pending = self._pending, []
            await self._write_until_done(batch)
            if not self._pending:
                self._idle.set()

    def _crashed(self) -> None:
        self.recording.set()  # a new start tries again; a failing write clears it

    async def _write_until_done(self, batch: list[Outcome]) -> None:
        backoff = Backoff(first=0.1, most=MAX_BACKOFF_SECONDS)
        while True:
            try:
                await self._write(batch)
            except UNAVAILABLE as error:
                if self.recording.is_set():
                    log.error(
                        "cannot record outcomes (%s): this worker stops claiming until "
                        "the database accepts them again",
                        first_line(error),
                    )
                self.recording.clear()
                await backoff.pause(log, "cannot record %d outcomes", len(batch))
                continue
            except Exception as error:
                await self._write_one_by_one(batch, error)
            if not self.recording.is_set():
                log.warning("recording outcomes again; claiming resumes")
                self.recording.set()
            return

    async def _write_one_by_one(self, batch: list[Outcome], error: Exception) -> None:
        """The batch was refused: write each outcome alone, so that only the one the
        database refuses is left out, and record that one as a failure that says why."""
        if len(batch) == 1:
            await self._refused(batch[0], error)
            return
        for outcome in batch:
            await self._write_until_done([outcome])

    async def _refused(self, outcome: Outcome, error: Exception) -> None:
        log.error(
            "the database refused the %s outcome of task %s %s",
            outcome.kind,
            outcome.task.id,
            outcome.task.name,
            exc_info=error,
        )
        if outcome.kind not in (OutcomeKind.COMPLETED, OutcomeKind.FAILED):
            return  # a release or reschedule: the lease expires, the rescue takes it back
        failure = Outcome(
            outcome.task,
            OutcomeKind.FAILED,
            error=storable_text(
                f"OutcomeRefused: the database refused to record this run's {outcome.kind} "
                f"outcome: {error_summary(error)}"
            ),
            retryable=outcome.kind is OutcomeKind.FAILED and outcome.retryable,
        )
        try:
            await self._write([failure])
        except UNAVAILABLE:
            raise
        except Exception:
            log.exception(
                "could not record task %s %s as failed either; it runs again when its lease "
                "expires",
                outcome.task.id,
                outcome.task.name,
            )

    async def _write(self, batch: Sequence[Outcome]) -> None:
        completed = [o for o in batch if o.kind is OutcomeKind.COMPLETED]
        async with self._pool.connection() as conn:
            if len(completed) == len(batch):
                await self._complete(conn, completed)
                return
            retries = False
            async with conn.transaction():
                if completed:
                    await self._complete(conn, completed)
                await self._release(conn, [o for o in batch if o.kind is OutcomeKind.RELEASED])
                await self._give_back_unknown(
                    conn, [o for o in batch if o.kind is OutcomeKind.UNKNOWN]
                )
                for outcome in batch:
                    if outcome.kind is OutcomeKind.FAILED:
                        retries |= await self._fail(conn, outcome)
                    elif outcome.kind is OutcomeKind.RESCHEDULED:
                        retries |= await self._reschedule(conn, outcome)
            if retries:
                # After the commit, not before: woken earlier, the worker would look for its
                # next due task before the retry is visible, and sleep a polling interval.
                self._on_retry_scheduled()

    async def _complete(self, conn: psycopg.AsyncConnection[Any], outcomes: list[Outcome]) -> None:
        cursor = await conn.execute(
            self._queries["complete_started_tasks"],
            {
                "ids": [o.task.id for o in outcomes],
                "tokens": [o.task.lease_token for o in outcomes],
                "results": [o.result_json for o in outcomes],
                # A task claimed ahead started after its claim (worker.py moves it on).
                "started": [o.task.started_at for o in outcomes],
            },
        )
        accepted = {row[0] for row in await cursor.fetchall()}
        if len(accepted) != len(outcomes):
            for outcome in outcomes:
                if outcome.task.id not in accepted:
                    _lease_lost(outcome, "completion")

    async def _release(self, conn: psycopg.AsyncConnection[Any], outcomes: list[Outcome]) -> None:
        if outcomes:
            await conn.execute(
                self._queries["release_tasks"],
                {
                    "ids": [o.task.id for o in outcomes],
                    "tokens": [o.task.lease_token for o in outcomes],
                },
            )

    async def _give_back_unknown(
        self, conn: psycopg.AsyncConnection[Any], outcomes: list[Outcome]
    ) -> None:
        if outcomes:
            cursor = await conn.execute(
                self._queries["give_back_unknown_tasks"],
                {
                    "ids": [o.task.id for o in outcomes],
                    "tokens": [o.task.lease_token for o in outcomes],
                    "grace_seconds": self._unknown_task_grace_seconds,
                },
            )
            log_unknown_given_back(outcomes, await cursor.fetchall())

    async def _fail(self, conn: psycopg.AsyncConnection[Any], outcome: Outcome) -> bool:
        """Record a failure; True if the task will retry."""
        cursor = await conn.execute(
            self._queries["fail_task"],
            {
                "id": outcome.task.id,
                "token": outcome.task.lease_token,
                "error": outcome.error,
                "retryable": outcome.retryable,
            },
        )
        row = await cursor.fetchone()
        if row is None:
            _lease_lost(outcome, "failure")
            return False
        status, run_at = row
        if status == "RETRYING":
            log.info("task %s %s will retry at %s", outcome.task.id, outcome.task.name, run_at)
            return True
        log.error(
            "task %s %s is %s: %s",
            outcome.task.id,
            outcome.task.name,
            status,
            (outcome.error or "").strip().partition("\n")[0][:300],
        )
        return False

    async def _reschedule(self, conn: psycopg.AsyncConnection[Any], outcome: Outcome) -> bool:
        """Record a Retry/Snooze; True if the task will run again."""
        cursor = await conn.execute(
            self._queries["reschedule_task"],
            {
                "id": outcome.task.id,
                "token": outcome.task.lease_token,
                "delay": outcome.delay,
                "refund_attempt": outcome.refund_attempt,
            },
        )
        row = await cursor.fetchone()
        if row is None or row[0] is None:
            _lease_lost(outcome, "reschedule")
            return False
        return True


def _lease_lost(outcome: Outcome, what: str) -> None:
    log.warning(
        "lease lost: task %s %s (lease token %d) was taken over or cancelled; its %s was refused",
        outcome.task.id,
        outcome.task.name,
        outcome.task.lease_token,
        what,
    )
