"""How a declared task is queued: through the default producer, with options bound by
`.options(...)` for a fully type-checked call, and a warning when a blocking `.delay()`
runs inside an event loop.

>>> send_email.options(priority=9, delay=60).delay(to="a@example.com")   # both checked
>>> await send_email.options(queue="bulk").adelay(to="b@example.com")
"""

from __future__ import annotations

import asyncio
import datetime
import uuid
import warnings
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Generic, Protocol, cast

from typing_extensions import ParamSpec

from pgqueue.errors import EventLoopBlockingWarning, InvalidTaskArguments
from pgqueue.tasks import call
from pgqueue.tasks.call import UniqueKey
from pgqueue.tasks.options import (
    Delay,
    Timing,
    check_fair_key,
    check_limit_keys,
    check_max_retries,
    check_on_parent_failure,
    check_priority,
    check_queue,
)

if TYPE_CHECKING:
    from pgqueue.tasks.definition import TaskFunction
    from pgqueue.tasks.workflow import WorkflowProducer

#: The task's parameters (`...`, any, for a task of unknown signature).
P = ParamSpec("P", default=...)


class Producer(Protocol):
    """What `.delay()` / `.adelay()` queue through: the default TaskManager."""

    def queue_task(self, task: Any, *args: Any, **options: Any) -> uuid.UUID: ...

    async def aqueue_task(self, task: Any, *args: Any, **options: Any) -> uuid.UUID: ...


#: Set by pgqueue.task_manager when it is imported (always, by `import pgqueue`): tasks
#: sit below the producer in the layers, so the producer registers itself here.
_default_producer: Callable[[], Producer] | None = None


def use_default_producer(get: Callable[[], Producer]) -> None:
    """Make `.delay()` queue through `get()` (pgqueue.task_manager calls it)."""
    global _default_producer
    _default_producer = get


def producer() -> Producer:
    assert _default_producer is not None, "import pgqueue first"
    return _default_producer()


def workflow_producer() -> WorkflowProducer:
    """What chain/group/chord `.delay()` queue through: the default producer."""
    return cast("WorkflowProducer", producer())


_warned_in_event_loop = False


def warn_if_in_event_loop(task_name: str, function_name: str, stacklevel: int) -> None:
    """Warn, once per process, that `.delay()` runs inside a running event loop: it holds
    the loop until the database answers. A thread without a running loop (a worker's sync
    task, `asyncio.to_thread`) is no concern. `stacklevel` counts from the caller of this."""
    global _warned_in_event_loop
    if _warned_in_event_loop:
        return
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    _warned_in_event_loop = True
    warnings.warn(
        f"{task_name}.delay() was called inside a running event loop: the loop waits until "
        f"the database answers; in async code use `await {function_name}.adelay(...)` "
        "(pgqueue gives this warning once per process)",
        EventLoopBlockingWarning,
        stacklevel=stacklevel + 1,
    )


def checked_options(
    task_name: str,
    *,
    connection: Any,
    delay: Delay | None,
    schedule_at: datetime.datetime | None,
    priority: int | None,
    queue: str | None,
    max_retries: int | None,
    unique_key: UniqueKey | None,
    depends_on: Iterable[uuid.UUID | str] | None = None,
    on_parent_failure: str | None = None,
    limits: Iterable[str] | None = None,
    fair_key: str | None = None,
) -> dict[str, Any]:
    """The options given (not None) to `.options()`, each checked now, where they are given."""
    if queue is not None:
        check_queue(queue)
    if priority is not None:
        check_priority(priority)
    if max_retries is not None:
        check_max_retries(max_retries)
    Timing.of(delay, schedule_at)
    if unique_key is not None and not callable(unique_key):
        call.derive_unique_key(task_name, unique_key, {})
    if on_parent_failure is not None:
        check_on_parent_failure(on_parent_failure)
    parents = call.check_depends_on(depends_on) or None
    given = {
        "connection": connection,
        "delay": delay,
        "schedule_at": schedule_at,
        "priority": priority,
        "queue": queue,
        "max_retries": max_retries,
        "unique_key": unique_key,
        "depends_on": parents,
        "on_parent_failure": on_parent_failure,
        "limits": check_limit_keys(limits),
        "fair_key": check_fair_key(fair_key),
    }
    return {name: value for name, value in given.items() if value is not None}


class ConfiguredTask(Generic[P]):
    """A task with queueing options bound (`task.options(...)`): its `.delay()` and
    `.adelay()` take exactly the task's own arguments, so a type checker checks them all.

    >>> later = send_email.options(delay=3600, priority=5)
    >>> task_id = later.delay(to="a@example.com")          # mypy checks `to`, and the options
    >>> task_id = await later.adelay(to="b@example.com")
    """

    def __init__(self, task: TaskFunction[Any, P], options: dict[str, Any]) -> None:
        self.task = task
        self.options = options

    def __repr__(self) -> str:
        given = ", ".join(f"{name}={value!r}" for name, value in self.options.items())
        return f"<task {self.task.name} with {given or 'no options'}>"

    def delay(self, *args: P.args, **kwargs: P.kwargs) -> uuid.UUID:
        """Queue a run of the task with these options; returns its id."""
        warn_if_in_event_loop(self.task.name, self.task.fn.__name__, stacklevel=2)
        return producer().queue_task(self.task, *args, **self._with_options(kwargs))

    async def adelay(self, *args: P.args, **kwargs: P.kwargs) -> uuid.UUID:
        """Queue a run of the task with these options from async code; returns its id."""
        return await producer().aqueue_task(self.task, *args, **self._with_options(kwargs))

    def _with_options(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        if twice := sorted(self.options.keys() & kwargs.keys()):
            raise InvalidTaskArguments(
                f"{', '.join(twice)} given to both .options() and .delay() of task "
                f"{self.task.name}; give each option once, to .options()"
            )
        return {**kwargs, **self.options}
