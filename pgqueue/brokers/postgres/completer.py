"""Records how runs ended, in batches: one statement for many completions.

A flush starts as soon as the previous one returns, so at low load an outcome is
written at once and at high load many share one round trip. What each outcome writes is
db/outcomes.py's. Completions are written with synchronous_commit off (see broker.py): a
completion lost in a server crash only means the task runs again, which at-least-once allows.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

from psycopg_pool import AsyncConnectionPool

from pgqueue.db.database import UNAVAILABLE
from pgqueue.db.outcomes import HandOffOffer, report, write_outcomes
from pgqueue.errors import first_line
from pgqueue.loops import BackgroundLoop, Backoff
from pgqueue.payload import error_summary
from pgqueue.records import Outcome, OutcomeKind, Task

log = logging.getLogger("pgqueue.completer")

MAX_BACKOFF_SECONDS = 5.0


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
        *,
        log_failure_tracebacks: bool = True,
        offer: Callable[[], HandOffOffer | None] | None = None,
        take: Callable[[list[Task]], None] | None = None,
        on_unknown_given_back: Callable[[], None] | None = None,
    ) -> None:
        super().__init__()
        self._on_unknown_given_back = on_unknown_given_back
        #: The worker's free slots at each write, and where the tasks its completions make
        #: ready go, claimed for it (the broker's hand-off, brokers/base.py).
        self._offer = offer
        self._take = take
        self._log_failure_tracebacks = log_failure_tracebacks
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
            error=(
                f"OutcomeRefused: the database refused to record this run's {outcome.kind} "
                f"outcome: {error_summary(error)}"  # storable already
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
        offer = self._offer() if self._offer is not None else None
        async with self._pool.connection() as conn:
            written = await write_outcomes(
                conn, self._queries, batch, self._unknown_task_grace_seconds, offer
            )
        if written.handed_off and self._take is not None:
            self._take(written.handed_off)
        report(batch, written, tracebacks=self._log_failure_tracebacks)
        if written.unknown_given_back and self._on_unknown_given_back is not None:
            self._on_unknown_given_back()
        if written.retries_scheduled:
            # After the commit, not before: woken earlier, the worker would look for its
            # next due task before the retry is visible, and sleep a polling interval.
            self._on_retry_scheduled()
