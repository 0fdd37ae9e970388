"""What a running task can use to steer itself: Retry, Snooze, and its own context."""

from __future__ import annotations

import contextvars
import dataclasses
import uuid
from typing import Any, Protocol

from pgqueue.errors import PgQueueError


class Retry(Exception):
    """Raise in a task to run it again after `delay` seconds, without recording a failure.

    The run still counts as an attempt. `raise Retry(delay=30)`
    """

    def __init__(self, delay: float = 0.0) -> None:
        super().__init__(f"retry in {delay} s")
        self.delay = float(delay)


class Snooze(Exception):
    """Raise in a task to put it back for `seconds`, without using an attempt.

    `raise Snooze(60)`
    """

    def __init__(self, seconds: float) -> None:
        super().__init__(f"snooze {seconds} s")
        self.seconds = float(seconds)


class ParentResults(Protocol):
    """Where a run reads its parents' results: the worker's broker."""

    def parent_results(self, task_id: uuid.UUID) -> dict[uuid.UUID, Any]: ...

    async def aparent_results(self, task_id: uuid.UUID) -> dict[uuid.UUID, Any]: ...


@dataclasses.dataclass(frozen=True, slots=True)
class TaskContext:
    """The running task's id, attempt (1 for the first run) and queue.

    `connection` is set for tasks declared `@AsyncTask(transactional=True)`: an async
    psycopg connection in an open transaction, in which the worker also records the
    task COMPLETED. Write through it and do not commit or roll back: the writes and the
    completion commit together, or not at all (failure, timeout, lease lost).
    """

    id: uuid.UUID
    name: str
    queue: str
    attempt: int
    max_retries: int
    connection: Any = None
    #: Where parent_results() reads (the worker's broker); None outside a worker.
    parents: ParentResults | None = None

    def parent_results(self) -> dict[uuid.UUID, Any]:
        """{parent id: its result} of a task queued with parents (depends_on, chain, chord);
        None for a parent without a result (one that failed, for on_parent_failure="run").
        Bounded: up to 64 MiB of results (about a million small ones), else an error.

        >>> @AsyncTask()
        ... def total():
        ...     return sum(current_task().parent_results().values())

        A sync call: in an async task it holds the event loop for one query; there,
        `await current_task().aparent_results()` does not."""
        if self.parents is None:
            raise PgQueueError("parent_results() needs a worker on the database broker")
        return self.parents.parent_results(self.id)

    async def aparent_results(self) -> dict[uuid.UUID, Any]:
        """The async twin of parent_results()."""
        if self.parents is None:
            raise PgQueueError("parent_results() needs a worker on the database broker")
        return await self.parents.aparent_results(self.id)

    @property
    def cancelled(self) -> bool:
        """True once `tm.cancel(id)` asked this run to stop. An async task is cancelled
        outright; a sync task (a thread cannot be stopped) should check this and return."""
        return self.id in _cancelled

    def is_cancelled(self) -> bool:
        """The same as `cancelled`, as a call: `if current_task().is_cancelled(): return`."""
        return self.id in _cancelled


_current: contextvars.ContextVar[TaskContext] = contextvars.ContextVar("pgqueue_task")


def current_task() -> TaskContext:
    """The context of the task running in this coroutine or thread.

    >>> @AsyncTask()
    ... def report():
    ...     return {"attempt": current_task().attempt}
    """
    try:
        return _current.get()
    except LookupError:
        raise PgQueueError("current_task() is only available inside a running task") from None


#: Ids of runs asked to stop (few: cancels of running tasks are rare). Kept after the run
#: ends, since a sync thread may still be checking; the oldest are forgotten past the limit.
_cancelled: dict[uuid.UUID, None] = {}
MAX_REMEMBERED_CANCELS = 10_000


def request_cancel(task_id: uuid.UUID) -> None:
    """Mark a run as cancelled, for `TaskContext.cancelled` (the worker calls this)."""
    _cancelled[task_id] = None
    while len(_cancelled) > MAX_REMEMBERED_CANCELS:
        del _cancelled[next(iter(_cancelled))]


def set_current_task(context: TaskContext) -> contextvars.Token[TaskContext]:
    return _current.set(context)


def reset_current_task(token: contextvars.Token[TaskContext]) -> None:
    _current.reset(token)
