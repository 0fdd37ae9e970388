"""The @AsyncTask decorator: declares a task, checks its options, and queues it with .delay()."""

from __future__ import annotations

import datetime
import functools
import inspect
import sys
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Generic, TypeVar, overload

from pgqueue.errors import InvalidTaskArguments, InvalidTaskOption, TaskDefinitionError
from pgqueue.tasks import call, registry
from pgqueue.tasks.call import UniqueKey
from pgqueue.tasks.options import (
    MAX_TASK_NAME_LENGTH,
    Delay,
    Timing,
    check_limit_keys,
    check_max_retries,
    check_priority,
    check_queue,
    check_timeout,
)
from pgqueue.tasks.queueing import (
    ConfiguredTask,
    P,
    checked_options,
    producer,
    warn_if_in_event_loop,
)
from pgqueue.tasks.schedule import CronSchedule
from pgqueue.tasks.typed_arguments import TypedArguments

# Imported here, not in .s(): a chord's header calls it thousands of times.
from pgqueue.tasks.workflow import Signature

R = TypeVar("R")

#: Keyword names that .delay() takes for itself, so no task may have them as parameters.
#: A new option also gets its own overload of .delay() and .adelay() (the typed call
#: styles) and a keyword of .options() / queueing.checked_options.
RESERVED_OPTIONS = frozenset(
    {
        "delay",
        "schedule_at",
        "priority",
        "queue",
        "max_retries",
        "connection",
        "unique_key",
        "depends_on",
        "on_parent_failure",
        "limits",
        "fair_key",
    }
)


class TaskFunction(Generic[R, P]):
    """A function declared with @AsyncTask. Calling it runs it inline; .delay() queues it.

    Typed by the function: `R` is what it returns, `P` its parameters, which a type
    checker holds calls, `.delay()` and `.adelay()` to (`TaskFunction[R]`: any parameters).

    >>> @AsyncTask
    ... def add(x: int, y: int) -> int: ...
    >>> reveal_type(add)                  # TaskFunction[int, [x: int, y: int]]
    >>> reveal_type(add.delay(x=1, y=2))  # uuid.UUID; add.delay(x="1") is a type error
    """

    def __init__(
        self,
        fn: Callable[P, R],
        *,
        queue: str | None,
        priority: int | None,
        max_retries: int | None,
        delay: Delay | None,
        schedule_at: datetime.datetime | None,
        timeout: float | None,
        transactional: bool = False,
        unique_key: UniqueKey | None = None,
        cron: str | None = None,
        timezone: str | None = None,
        cron_catchup: Delay | None = None,
        limits: Iterable[str] | None = None,
    ) -> None:
        self.fn = fn
        self.name = f"{_module_name(fn)}.{fn.__qualname__}"
        self.queue = check_queue(queue) if queue is not None else None
        self.priority = check_priority(priority) if priority is not None else None
        self.max_retries = check_max_retries(max_retries) if max_retries is not None else None
        self.timing = Timing.of(delay, schedule_at)
        self.has_timing = delay is not None or schedule_at is not None
        self.timeout = check_timeout(timeout)
        self.is_async = inspect.iscoroutinefunction(fn)
        self.transactional = _check_transactional(fn, transactional, self.is_async)
        self.signature = inspect.signature(fn)
        _refuse_reserved_parameters(self.name, self.signature)
        self.unique_key = _check_unique_key_spec(self.name, unique_key)
        #: Limit keys every run holds (`limits=[...]`; docs/features.md), or None.
        self.limits = check_limit_keys(limits)
        #: The cron schedule a worker queues this task on, or None.
        self.schedule = CronSchedule.checked(
            self.name, self.signature, cron, timezone, cron_catchup
        )
        #: Parameters annotated with pydantic models or dataclasses, or None.
        self.typed_arguments = TypedArguments.of(self.name, fn, self.signature)
        functools.update_wrapper(self, fn)
        registry.register(self)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<task {self.name}>"

    @functools.cached_property
    def _parameter_sets(self) -> tuple[frozenset[str], frozenset[str], bool]:
        """Names it accepts by keyword, names it requires, and whether it takes **kwargs."""
        accepted, required, open_ended = set(), set(), False
        for name, parameter in self.signature.parameters.items():
            if parameter.kind is inspect.Parameter.VAR_KEYWORD:
                open_ended = True
            elif parameter.kind in (
                inspect.Parameter.POSITIONAL_OR_KEYWORD,
                inspect.Parameter.KEYWORD_ONLY,
            ):
                accepted.add(name)
                if parameter.default is inspect.Parameter.empty:
                    required.add(name)
            elif parameter.kind is inspect.Parameter.POSITIONAL_ONLY and (
                parameter.default is inspect.Parameter.empty
            ):
                required.add(name)  # cannot be given by keyword: never satisfiable
        return frozenset(accepted), frozenset(required), open_ended

    def kwargs_problem(self, kwargs: Mapping[str, Any]) -> str | None:
        """Why stored arguments cannot be passed to the function, or None if they can.

        A set check on the worker's hot path; signature.bind only to word the refusal.
        """
        accepted, required, open_ended = self._parameter_sets
        keys = kwargs.keys()
        if required <= keys and (open_ended or keys <= accepted):
            return None
        try:
            self.signature.bind(**kwargs)
        except TypeError as error:
            return str(error)
        return None

    # The first signature of .delay() / .adelay() is the task's own: a type checker checks
    # every argument. A call that also gives an option matches one of the others, each
    # requiring one option (a ParamSpec takes no extra keywords): the option's type is
    # checked, the task's arguments are not; `.options(...).delay(...)` checks both.

    @overload
    def delay(self, *args: P.args, **kwargs: P.kwargs) -> uuid.UUID: ...
    @overload
    def delay(self, *args: Any, connection: Any, **kwargs: Any) -> uuid.UUID: ...
    @overload
    def delay(self, *args: Any, delay: Delay | None, **kwargs: Any) -> uuid.UUID: ...
    @overload
    def delay(
        self, *args: Any, schedule_at: datetime.datetime | None, **kwargs: Any
    ) -> uuid.UUID: ...
    @overload
    def delay(self, *args: Any, priority: int | None, **kwargs: Any) -> uuid.UUID: ...
    @overload
    def delay(self, *args: Any, queue: str | None, **kwargs: Any) -> uuid.UUID: ...
    @overload
    def delay(self, *args: Any, max_retries: int | None, **kwargs: Any) -> uuid.UUID: ...
    @overload
    def delay(self, *args: Any, unique_key: UniqueKey | None, **kwargs: Any) -> uuid.UUID: ...
    @overload
    def delay(
        self, *args: Any, depends_on: Iterable[uuid.UUID | str] | None, **kwargs: Any
    ) -> uuid.UUID: ...
    @overload
    def delay(self, *args: Any, on_parent_failure: str, **kwargs: Any) -> uuid.UUID: ...
    @overload
    def delay(self, *args: Any, limits: Iterable[str] | None, **kwargs: Any) -> uuid.UUID: ...
    @overload
    def delay(self, *args: Any, fair_key: str | None, **kwargs: Any) -> uuid.UUID: ...

    def delay(self, *args: Any, **kwargs: Any) -> uuid.UUID:
        """Queue a run of this task; returns its id. The option keywords (`connection`,
        `delay`, `schedule_at`, `priority`, `queue`, `max_retries`, `unique_key`,
        `depends_on`, `on_parent_failure`, `limits`, `fair_key`) go with the task's
        arguments, or first to
        `.options(...)`, which a type checker checks fully.

        >>> task_id = send_email.delay(to="a@example.com", subject="Hi")
        >>> task_id = send_email.delay(delay=3600, to="a@example.com", subject="Later")
        >>> task_id = send_email.delay(unique_key="welcome:42", to="a@example.com")
        >>> task_id = send_email.options(priority=9).delay(to="a@example.com", subject="Now")
        >>> later = send_email.delay(depends_on=[task_id], to="b@example.com")  # WAITING
        >>> task_id = send_email.delay(limits=["tenant:acme"], fair_key="acme", to="a@x")

        With `depends_on` (ids of queued tasks) it waits (WAITING) until every one of them
        is COMPLETED; if one ends FAILED or CANCELLED it is cancelled too, unless
        `on_parent_failure="run"`.

        Inside a running event loop it warns (EventLoopBlockingWarning, once per process):
        there `await send_email.adelay(...)` queues without holding the loop.
        """
        warn_if_in_event_loop(self.name, self.fn.__name__, stacklevel=2)
        return producer().queue_task(self, *args, **kwargs)

    @overload
    async def adelay(self, *args: P.args, **kwargs: P.kwargs) -> uuid.UUID: ...
    @overload
    async def adelay(self, *args: Any, connection: Any, **kwargs: Any) -> uuid.UUID: ...
    @overload
    async def adelay(self, *args: Any, delay: Delay | None, **kwargs: Any) -> uuid.UUID: ...
    @overload
    async def adelay(
        self, *args: Any, schedule_at: datetime.datetime | None, **kwargs: Any
    ) -> uuid.UUID: ...
    @overload
    async def adelay(self, *args: Any, priority: int | None, **kwargs: Any) -> uuid.UUID: ...
    @overload
    async def adelay(self, *args: Any, queue: str | None, **kwargs: Any) -> uuid.UUID: ...
    @overload
    async def adelay(self, *args: Any, max_retries: int | None, **kwargs: Any) -> uuid.UUID: ...
    @overload
    async def adelay(
        self, *args: Any, unique_key: UniqueKey | None, **kwargs: Any
    ) -> uuid.UUID: ...
    @overload
    async def adelay(
        self, *args: Any, depends_on: Iterable[uuid.UUID | str] | None, **kwargs: Any
    ) -> uuid.UUID: ...
    @overload
    async def adelay(self, *args: Any, on_parent_failure: str, **kwargs: Any) -> uuid.UUID: ...
    @overload
    async def adelay(
        self, *args: Any, limits: Iterable[str] | None, **kwargs: Any
    ) -> uuid.UUID: ...
    @overload
    async def adelay(self, *args: Any, fair_key: str | None, **kwargs: Any) -> uuid.UUID: ...

    async def adelay(self, *args: Any, **kwargs: Any) -> uuid.UUID:
        """Queue a run of this task from async code; returns its id (options as `.delay()`).

        >>> task_id = await send_email.adelay(to="a@example.com", subject="Hi")
        """
        return await producer().aqueue_task(self, *args, **kwargs)

    def options(
        self,
        *,
        connection: Any = None,
        delay: Delay | None = None,
        schedule_at: datetime.datetime | None = None,
        priority: int | None = None,
        queue: str | None = None,
        max_retries: int | None = None,
        unique_key: UniqueKey | None = None,
        depends_on: Iterable[uuid.UUID | str] | None = None,
        on_parent_failure: str | None = None,
        limits: Iterable[str] | None = None,
        fair_key: str | None = None,
    ) -> ConfiguredTask[P]:
        """This task with queueing options bound, checked now; its `.delay()` / `.adelay()`
        take the task's own arguments only, so a type checker checks the whole call.

        >>> task_id = send_email.options(delay=3600, priority=5).delay(to="a@example.com")
        >>> task_id = await send_email.options(connection=conn).adelay(to="b@example.com")
        """
        return ConfiguredTask(
            self,
            checked_options(
                self.name,
                connection=connection,
                delay=delay,
                schedule_at=schedule_at,
                priority=priority,
                queue=queue,
                max_retries=max_retries,
                unique_key=unique_key,
                depends_on=depends_on,
                on_parent_failure=on_parent_failure,
                limits=limits,
                fair_key=fair_key,
            ),
        )

    def s(
        self,
        *args: Any,
        delay: Delay | None = None,
        schedule_at: datetime.datetime | None = None,
        priority: int | None = None,
        queue: str | None = None,
        max_retries: int | None = None,
        depends_on: Iterable[uuid.UUID | str] | None = None,
        on_parent_failure: str = "cancel",
        limits: Iterable[str] | None = None,
        fair_key: str | None = None,
        **kwargs: Any,
    ) -> Signature:
        """A call of this task to queue later, as a step of chain, group or chord.

        >>> ids = chain(fetch.s(url="https://example.com"), parse.s()).delay()
        """
        return Signature(
            self,
            args,
            kwargs,
            queue=queue,
            priority=priority,
            max_retries=max_retries,
            delay=delay,
            schedule_at=schedule_at,
            depends_on=depends_on,
            on_parent_failure=on_parent_failure,
            limits=limits,
            fair_key=fair_key,
        )


def _check_unique_key_spec(task_name: str, spec: Any) -> UniqueKey | None:
    if spec is None or callable(spec):
        return spec
    return call.derive_unique_key(task_name, spec, {})


def _module_name(fn: Callable[..., Any]) -> str:
    """The importable module of `fn`: under `python -m pkg.mod` that is pkg.mod, not __main__."""
    if fn.__module__ == "__main__":
        spec = getattr(sys.modules["__main__"], "__spec__", None)
        if spec is not None and spec.name:
            return str(spec.name).removesuffix(".__main__")
    return fn.__module__


def _check_transactional(fn: Callable[..., Any], transactional: Any, is_async: bool) -> bool:
    if not isinstance(transactional, bool):
        raise TaskDefinitionError(f"transactional must be True or False, not {transactional!r}")
    if transactional and not is_async:
        raise TaskDefinitionError(
            f"task {fn.__qualname__} is transactional=True but not async: the completing "
            "transaction is an async psycopg connection, so declare it with `async def`"
        )
    return transactional


def _refuse_reserved_parameters(name: str, signature: inspect.Signature) -> None:
    for parameter in signature.parameters:
        if parameter in RESERVED_OPTIONS:
            raise TaskDefinitionError(
                f"task {name} has a parameter named {parameter!r}, which .delay() reserves "
                f"for itself ({', '.join(sorted(RESERVED_OPTIONS))}); rename the parameter"
            )


@overload
def AsyncTask(fn: Callable[P, R], /) -> TaskFunction[R, P]: ...


@overload
def AsyncTask(
    *,
    queue: str | None = None,
    priority: int | None = None,
    max_retries: int | None = None,
    delay: Delay | None = None,
    schedule_at: datetime.datetime | None = None,
    timeout: float | None = None,
    transactional: bool = False,
    unique_key: UniqueKey | None = None,
    cron: str | None = None,
    timezone: str | None = None,
    cron_catchup: Delay | None = None,
    limits: Iterable[str] | None = None,
) -> Callable[[Callable[P, R]], TaskFunction[R, P]]: ...


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
    transactional: bool = False,
    unique_key: UniqueKey | None = None,
    cron: str | None = None,
    timezone: str | None = None,
    cron_catchup: Delay | None = None,
    limits: Iterable[str] | None = None,
) -> Any:
    """Declare a background task; its options are checked here, at definition time.

    >>> @AsyncTask(queue="emails", priority=0, max_retries=3)
    ... async def send_email(to: str, subject: str, body: str):
    ...     return {"status": "sent", "recipient": to}
    >>> task_id = send_email.delay(to="a@example.com", subject="Hi", body="...")

    With `transactional=True` (async tasks, database broker) the task's writes and its
    COMPLETED status commit together or not at all, so its effect happens exactly once:

    >>> @AsyncTask(transactional=True)
    ... async def credit(account: int, cents: int):
    ...     conn = current_task().connection   # in an open transaction; do not commit
    ...     await conn.execute("UPDATE accounts SET cents = cents + %s WHERE id = %s",
    ...                        (cents, account))

    Beyond the seed (docs/features.md): `unique_key` (a string, or a callable taking the
    arguments as a dict) makes .delay() return the id of the unfinished task holding the key;
    `cron="0 9 * * *"` with `timezone="Europe/Paris"` has workers queue the task at each
    occurrence, catching up those missed within `cron_catchup` (default one hour).
    `limits=["ses"]`: every run holds those limit keys (`tm.set_limit`; database broker).
    """

    def decorate(function: Callable[..., Any]) -> TaskFunction[Any]:
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
            transactional=transactional,
            unique_key=unique_key,
            cron=cron,
            timezone=timezone,
            cron_catchup=cron_catchup,
            limits=limits,
        )

    return decorate(fn) if fn is not None else decorate


#: What producers accept as a task: the decorated function, or its registered name.
TaskRef = TaskFunction[Any] | str


def resolve_task(task: TaskRef) -> tuple[TaskFunction[Any] | None, str]:
    """A decorated function, or a task name (looked up among the registered tasks; a name
    this process does not know is queued as it is, with keyword arguments only)."""
    if isinstance(task, TaskFunction):
        return task, task.name
    if isinstance(task, str):
        if not task or len(task) > MAX_TASK_NAME_LENGTH or "\x00" in task:
            raise InvalidTaskOption(
                f"task name {task[:80]!r} must be 1 to {MAX_TASK_NAME_LENGTH} characters "
                "without NUL"
            )
        return registry.lookup(task), task
    raise InvalidTaskArguments(
        f"task must be a function decorated with @AsyncTask or a task name, not {task!r}"
    )
