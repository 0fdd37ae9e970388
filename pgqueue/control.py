"""What a running task can use to steer itself: Retry, Snooze, and its own context."""

from __future__ import annotations

import contextvars
import dataclasses
import uuid
from typing import Any

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


def set_current_task(context: TaskContext) -> contextvars.Token[TaskContext]:
    return _current.set(context)


def reset_current_task(token: contextvars.Token[TaskContext]) -> None:
    _current.reset(token)
