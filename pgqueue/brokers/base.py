"""The broker interface: how tasks travel from producers to workers, whatever the transport.

A worker drives any broker through five calls: `open`, `claim`, `finish`, `heartbeat`
and `close`; producers call `enqueue` / `aenqueue`. Implementations live beside this
module: `postgres/` (the default, the task table itself) and `rabbitmq/`.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pgqueue.records import NewTask, Outcome, Task

log = logging.getLogger("pgqueue.broker")

if TYPE_CHECKING:
    import uuid

    from pgqueue.records import CleanupPolicy, WorkerInfo


class Broker(abc.ABC):
    """A transport for tasks. The worker knows only these methods."""

    # -- producers ---------------------------------------------------------------------

    @abc.abstractmethod
    def enqueue(self, tasks: Sequence[NewTask], connection: Any = None) -> None:
        """Deliver new tasks; with `connection`, inside the caller's transaction."""

    @abc.abstractmethod
    async def aenqueue(self, tasks: Sequence[NewTask], connection: Any = None) -> None:
        """Deliver new tasks from async code."""

    def resubmit(self, task_id: uuid.UUID) -> None:  # noqa: B027 - optional hook
        """Deliver again a task whose record `retry` put back to PENDING (database: nothing)."""

    # -- workers -----------------------------------------------------------------------

    @abc.abstractmethod
    async def open(
        self,
        worker_id: str,
        queues: Sequence[str],
        cleanup: CleanupPolicy | None,
        worker: WorkerInfo | None = None,
    ) -> None:
        """Connect and subscribe to `queues`; start the broker's own upkeep (leases, cleanup).

        `worker` (concurrency, version, host, pid) is for the worker registry, if any.
        """

    @abc.abstractmethod
    async def claim(
        self, limit: int, wait_seconds: float, start_now: int | None = None
    ) -> list[Task]:
        """Up to `limit` tasks, waiting up to `wait_seconds` for the first one.

        The first `start_now` (None: all) start at once; the others wait in the worker's
        buffer (claimed ahead) until `heartbeat` reports them among the running.
        """

    @abc.abstractmethod
    async def finish(self, outcome: Outcome) -> None:
        """Record how a run ended; a worker that lost the task's lease is refused (logged)."""

    @abc.abstractmethod
    async def heartbeat(
        self, running: Sequence[Task], claimed_ahead: Sequence[Task] = ()
    ) -> set[uuid.UUID]:
        """Renew the leases of running tasks and of those claimed ahead (not started yet);
        returns the ids of those this worker lost."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Flush what is buffered and disconnect."""

    def wake(self) -> None:  # noqa: B027 - optional hook
        """Make a pending `claim` return now (shutdown)."""

    async def record_starts(self, tasks: Sequence[Task]) -> None:  # noqa: B027 - optional hook
        """Record that these tasks, claimed ahead (not started by their claim), started:
        a broker whose rescue tells unstarted tasks apart needs it (database: started_at)."""

    @property
    def recording(self) -> bool:
        """False while outcomes given to `finish` cannot be recorded: the worker claims
        nothing meanwhile (the broker logs why)."""
        return True

    async def until_recording(self) -> None:  # noqa: B027 - optional hook
        """Return once `recording` is True."""


def log_unknown_given_back(outcomes: Sequence[Outcome], rows: Sequence[tuple[Any, ...]]) -> None:
    """One line per batch, not per task: a backlog of unknown tasks is given back in
    thousands, and each comes back every few seconds until a worker that knows it runs it."""
    names = {o.task.id: o.task.name for o in outcomes}
    failed = [row for row in rows if row[1] == "FAILED"]
    given_back = sorted({names[row[0]] for row in rows if row[1] != "FAILED"})
    if given_back:
        log.warning(
            "gave back %d tasks whose names this worker has not registered (%s); a worker "
            "that imports their modules (--import, PGQUEUE_IMPORTS) will run them",
            len(rows) - len(failed),
            ", ".join(repr(name) for name in given_back[:5])
            + (f" and {len(given_back) - 5} more" if len(given_back) > 5 else ""),
        )
    for row in failed:
        log.error("task %s %s is FAILED: %s", row[0], names[row[0]], row[3])
