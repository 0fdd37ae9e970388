"""The @AsyncTask decorator: declares a task, checks its options, and queues it with .delay()."""

from __future__ import annotations

import datetime
import functools
import inspect
from collections.abc import Callable
from typing import Any, Generic, TypeVar, overload

from pgqueue import registry
from pgqueue.errors import InvalidTaskArguments, TaskDefinitionError
from pgqueue.options import (
    Delay,
    Timing,
    check_max_retries,
    check_priority,
    check_queue,
    check_timeout,
)

R = TypeVar("R")

#: Keyword names that .delay() takes for itself, so no task may have them as parameters.
RESERVED_OPTIONS = frozenset(
    {"delay", "schedule_at", "priority", "queue", "max_retries", "connection", "unique_key"}
)


class TaskFunction(Generic[R]):
    """A function declared with @AsyncTask. Calling it runs it inline; .delay() queues it."""

    def __init__(
        self,
        fn: Callable[..., R],
        *,
        queue: str | None,
        priority: int | None,
        max_retries: int | None,
        delay: Delay | None,
        schedule_at: datetime.datetime | None,
        timeout: float | None,
    ) -> None:
        self.fn = fn
        self.name = f"{fn.__module__}.{fn.__qualname__}"
        self.queue = check_queue(queue) if queue is not None else None
        self.priority = check_priority(priority) if priority is not None else None
        self.max_retries = check_max_retries(max_retries) if max_retries is not None else None
        self.timing = Timing.of(delay, schedule_at)
        self.has_timing = delay is not None or schedule_at is not None
        self.timeout = check_timeout(timeout)
        self.is_async = inspect.iscoroutinefunction(fn)
        self.signature = inspect.signature(fn)
        _refuse_reserved_parameters(self.name, self.signature)
        functools.update_wrapper(self, fn)
        registry.register(self)

    def __call__(self, *args: Any, **kwargs: Any) -> R:
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<task {self.name}>"

    def bind_kwargs(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        """Arguments as a keyword dict, refused as a call of the function would refuse them."""
        try:
            bound = self.signature.bind(*args, **kwargs)
        except TypeError as error:
            raise InvalidTaskArguments(f"{self.name}: {error}") from None
        arguments: dict[str, Any] = {}
        for name, value in bound.arguments.items():
            kind = self.signature.parameters[name].kind
            if kind is inspect.Parameter.VAR_KEYWORD:
                arguments.update(value)
            elif kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.POSITIONAL_ONLY):
                raise InvalidTaskArguments(
                    f"{self.name}: parameter {name!r} is positional-only or *args, which a "
                    "queued task cannot store; make it a keyword parameter"
                )
            else:
                arguments[name] = value
        return arguments

    def delay(
        self,
        *args: Any,
        connection: Any = None,
        delay: Delay | None = None,
        schedule_at: datetime.datetime | None = None,
        priority: int | None = None,
        queue: str | None = None,
        max_retries: int | None = None,
        **kwargs: Any,
    ) -> Any:
        """Queue a run of this task; returns its id.

        >>> task_id = send_email.delay(to="a@example.com", subject="Hi")
        >>> task_id = send_email.delay(delay=3600, to="a@example.com", subject="Later")
        """
        from pgqueue.task_manager import default_task_manager

        return default_task_manager().queue_task(
            self,
            *args,
            connection=connection,
            delay=delay,
            schedule_at=schedule_at,
            priority=priority,
            queue=queue,
            max_retries=max_retries,
            **kwargs,
        )

    async def adelay(
        self,
        *args: Any,
        connection: Any = None,
        delay: Delay | None = None,
        schedule_at: datetime.datetime | None = None,
        priority: int | None = None,
        queue: str | None = None,
        max_retries: int | None = None,
        **kwargs: Any,
    ) -> Any:
        """Queue a run of this task from async code; returns its id."""
        from pgqueue.task_manager import default_task_manager

        return await default_task_manager().aqueue_task(
            self,
            *args,
            connection=connection,
            delay=delay,
            schedule_at=schedule_at,
            priority=priority,
            queue=queue,
            max_retries=max_retries,
            **kwargs,
        )


def _refuse_reserved_parameters(name: str, signature: inspect.Signature) -> None:
    for parameter in signature.parameters:
        if parameter in RESERVED_OPTIONS:
            raise TaskDefinitionError(
                f"task {name} has a parameter named {parameter!r}, which .delay() reserves "
                f"for itself ({', '.join(sorted(RESERVED_OPTIONS))}); rename the parameter"
            )


@overload
def AsyncTask(fn: Callable[..., R], /) -> TaskFunction[R]: ...


@overload
def AsyncTask(
    *,
    queue: str | None = None,
    priority: int | None = None,
    max_retries: int | None = None,
    delay: Delay | None = None,
    schedule_at: datetime.datetime | None = None,
    timeout: float | None = None,
) -> Callable[[Callable[..., R]], TaskFunction[R]]: ...


def AsyncTask(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    queue: str | None = None,
    priority: int | None = None,
    max_retries: int | None = None,
    delay: Delay | None = None,
    schedule_at: datetime.datetime | None = None,
    timeout: float | None = None,
) -> Any:
    """Declare a background task; its options are checked here, at definition time.

    >>> @AsyncTask(queue="emails", priority=0, max_retries=3)
    ... async def send_email(to: str, subject: str, body: str):
    ...     return {"status": "sent", "recipient": to}
    >>> task_id = send_email.delay(to="a@example.com", subject="Hi", body="...")
    """

    def decorate(function: Callable[..., R]) -> TaskFunction[R]:
        if not callable(function):
            raise TaskDefinitionError(f"@AsyncTask decorates a function, not {function!r}")
        return TaskFunction(
            function,
            queue=queue,
            priority=priority,
            max_retries=max_retries,
            delay=delay,
            schedule_at=schedule_at,
            timeout=timeout,
        )

    return decorate(fn) if fn is not None else decorate
