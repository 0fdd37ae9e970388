"""PgQueueBackend: Django's tasks queued as pgqueue tasks, on Django's own connection.

A Django task (`@task` of `django.tasks` or `django_tasks`) whose backend is this one is
registered as a pgqueue task of the same name (`module.qualname`) when Django validates it,
which it does as the decorator runs: a worker that imports the module (`pgqueue_worker`
imports every installed app's `tasks` module) can run it; nothing else. The stored
arguments are `{"args": [...], "kwargs": {...}}`.
"""

from __future__ import annotations

import datetime
import functools
import inspect
import uuid
from collections.abc import Callable
from typing import Any

from django.db import close_old_connections, connections
from django.utils.module_loading import import_string

from pgqueue.contrib.django.api import (
    BaseTaskBackend,
    ResultDoesNotExist,
    Task,
    TaskContext,
    TaskError,
    TaskResult,
    TaskResultStatus,
    set_field,
    task_backends,
)
from pgqueue.errors import TaskNotFound
from pgqueue.records import Task as TaskRecord
from pgqueue.records import TaskStatus
from pgqueue.settings import Settings, load_settings
from pgqueue.task_manager import TaskManager
from pgqueue.tasks import registry
from pgqueue.tasks.context import current_task
from pgqueue.tasks.definition import TaskFunction

#: pgqueue's statuses as Django's: waiting to run (again) is READY; CANCELLED is FAILED,
#: the status Django has for a task that was "unable to start".
STATUSES = {
    TaskStatus.PENDING: TaskResultStatus.READY,
    TaskStatus.RETRYING: TaskResultStatus.READY,
    TaskStatus.RUNNING: TaskResultStatus.RUNNING,
    TaskStatus.COMPLETED: TaskResultStatus.SUCCESSFUL,
    TaskStatus.FAILED: TaskResultStatus.FAILED,
    TaskStatus.CANCELLED: TaskResultStatus.FAILED,
}

#: Django tasks registered in this process, by their pgqueue name.
_django_tasks: dict[str, Any] = {}

#: libpq keywords among a Django connection's parameters (the rest are psycopg objects).
_NOT_LIBPQ = frozenset({"prepare_threshold", "cursor_factory", "context", "autocommit"})


def dsn_of(alias: str) -> str:
    """A libpq DSN of Django's database `alias` (its NAME, USER, HOST, PORT, OPTIONS)."""
    import psycopg

    connection = connections[alias]
    if connection.vendor != "postgresql":
        raise ValueError(
            f"pgqueue needs PostgreSQL: Django's database {alias!r} is {connection.vendor}"
        )
    params = {
        key: value
        for key, value in connection.get_connection_params().items()
        if key not in _NOT_LIBPQ and isinstance(value, str | int) and value != ""
    }
    return psycopg.conninfo.make_conninfo("", **params)


def backends_on(alias: str) -> list[PgQueueBackend]:
    """The PgQueueBackends of TASKS that write on Django's database `alias`."""
    from django.conf import settings

    found = []
    for name in getattr(settings, "TASKS", {}):
        backend = task_backends[name]
        if isinstance(backend, PgQueueBackend) and backend.database == alias:
            found.append(backend)
    return found


class PgQueueBackend(BaseTaskBackend):
    """Django's tasks, queued in pgqueue on Django's own database connection.

    >>> TASKS = {"default": {
    ...     "BACKEND": "pgqueue.contrib.django.PgQueueBackend",
    ...     "QUEUES": ["default", "emails"],
    ...     "OPTIONS": {"DATABASE": "default", "MAX_RETRIES": 0},
    ... }}
    >>> with transaction.atomic():
    ...     order = Order.objects.create(total=10)
    ...     result = send_receipt.enqueue(order.id)     # rolled back with the order
    >>> send_receipt.get_result(result.id).status
    <TaskResultStatus.SUCCESSFUL: 'SUCCESSFUL'>
    """

    supports_defer = True
    supports_async_task = True
    supports_get_result = True
    supports_priority = True

    def __init__(self, alias: str, params: dict[str, Any]) -> None:
        super().__init__(alias, params)
        options = dict(self.options)
        #: Django's database the tasks are written on (and pgqueue's tables live in).
        self.database: str = options.pop("DATABASE", "default")
        #: Django tasks have no retries: a task that raises is FAILED, unless this says.
        self.max_retries: int = options.pop("MAX_RETRIES", 0)
        if not isinstance(self.max_retries, int) or self.max_retries < 0:
            raise ValueError(
                f"TASKS[{alias!r}]['OPTIONS']['MAX_RETRIES'] must be an integer >= 0, "
                f"not {self.max_retries!r}"
            )
        if options:
            raise ValueError(
                f"TASKS[{alias!r}]['OPTIONS'] has unknown keys {sorted(options)}; "
                "pgqueue's backend takes DATABASE and MAX_RETRIES"
            )
        self._manager: TaskManager | None = None

    # -- pgqueue's side ----------------------------------------------------------------

    @functools.cached_property
    def settings(self) -> Settings:
        """pgqueue's settings, on the database of Django's `DATABASE` alias."""
        return load_settings(dsn=dsn_of(self.database))

    @property
    def manager(self) -> TaskManager:
        if self._manager is None:
            self._manager = TaskManager(settings=self.settings)
        return self._manager

    def validate_task(self, task: Any) -> None:
        """Django's checks; then the task is registered with pgqueue (this runs when the
        decorator makes the task, so importing its module registers it)."""
        super().validate_task(task)
        register(task)

    # -- Django's API ------------------------------------------------------------------

    def enqueue(self, task: Any, args: Any, kwargs: Any) -> Any:
        self.validate_task(task)
        connection = connections[self.database]
        connection.ensure_connection()
        task_id = self.manager.queue_task(
            registered_name(task),
            connection=connection.connection,  # Django's psycopg connection: its transaction
            queue=task.queue_name,
            priority=task.priority,
            schedule_at=task.run_after,
            max_retries=self.max_retries,
            args=list(args),
            kwargs=dict(kwargs),
        )
        return self._result(task, task_id, TaskResultStatus.READY, list(args), dict(kwargs))

    def get_result(self, result_id: str) -> Any:
        return self._from_record(result_id, self._record(result_id, self.manager.get_task))

    async def aget_result(self, result_id: str) -> Any:
        try:
            record = await self.manager.aget_task(result_id)
        except TaskNotFound:
            record = None
        return self._from_record(result_id, record)

    def _record(self, result_id: str, get: Callable[[str], TaskRecord | None]) -> Any:
        try:
            return get(result_id)
        except TaskNotFound:
            return None

    def _from_record(self, result_id: str, record: TaskRecord | None) -> Any:
        if record is None:
            raise ResultDoesNotExist(result_id)
        task = _django_task(record.name)
        stored = record.kwargs if isinstance(record.kwargs, dict) else {}
        result = self._result(
            task,
            record.id,
            STATUSES[record.status],
            list(stored.get("args", [])),
            dict(stored.get("kwargs", {})),
        )
        set_field(result, "enqueued_at", record.created_at)
        set_field(result, "started_at", record.started_at)
        set_field(result, "last_attempted_at", record.started_at)
        set_field(result, "finished_at", record.finished_at)
        set_field(result, "worker_ids", [record.worker_id or ""] * record.attempts)
        if record.status is TaskStatus.COMPLETED:
            set_field(result, "_return_value", record.result)
        if record.error and record.status is not TaskStatus.COMPLETED:
            result.errors.append(task_error(record.error))
        return result

    def _result(
        self, task: Any, task_id: uuid.UUID, status: Any, args: list[Any], kwargs: dict[str, Any]
    ) -> Any:
        return TaskResult(
            task=task,
            id=str(task_id),
            status=status,
            enqueued_at=None,
            started_at=None,
            finished_at=None,
            last_attempted_at=None,
            args=args,
            kwargs=kwargs,
            backend=self.alias,
            errors=[],
            worker_ids=[],
        )


def task_error(text: str) -> Any:
    """A Django TaskError from pgqueue's stored error ("Type: message", a blank line, the
    traceback, whose last line names the class with its module unless it is a builtin)."""
    lines = [line for line in text.splitlines() if line.strip()]
    last = lines[-1] if lines else text
    class_name = last.partition(":")[0].strip() or "Exception"
    if "." not in class_name:
        class_name = f"builtins.{class_name}"
    return TaskError(exception_class_path=class_name, traceback=text)


def registered_name(task: Any) -> str:
    """The pgqueue name of a Django task (registering it if it is not yet)."""
    return register(task).name


def register(task: Any) -> TaskFunction[Any]:
    """Register a Django task as a pgqueue task of its `module.qualname`, once."""
    func = task.func
    name = f"{func.__module__}.{func.__qualname__}"
    known = registry.lookup(name)
    previous = _django_tasks.get(name)
    if known is not None and previous is not None and previous.func is func:
        return known  # validated again (at .enqueue(), or made anew by .using())
    _django_tasks[name] = task
    return TaskFunction(
        _runner(task),
        queue=None,
        priority=None,
        max_retries=None,
        delay=None,
        schedule_at=None,
        timeout=None,
    )


def _runner(task: Any) -> Callable[..., Any]:
    """The function a pgqueue worker calls: Django's task with the stored args and kwargs
    (and its TaskContext when it takes one); sync ones around Django's connection upkeep."""
    func = task.func

    def context() -> tuple[Any, ...]:
        if not task.takes_context:
            return ()
        running = current_task()
        result = TaskResult(
            task=task,
            id=str(running.id),
            status=TaskResultStatus.RUNNING,
            enqueued_at=None,
            started_at=datetime.datetime.now(datetime.UTC),
            finished_at=None,
            last_attempted_at=datetime.datetime.now(datetime.UTC),
            args=[],
            kwargs={},
            backend=task.backend,
            errors=[],
            worker_ids=[""] * running.attempt,
        )
        return (TaskContext(task_result=result),)

    run: Callable[..., Any]
    if inspect.iscoroutinefunction(func):

        async def run_async(args: list[Any], kwargs: dict[str, Any]) -> Any:
            return await func(*context(), *args, **kwargs)

        run = run_async
    else:

        def run_sync(args: list[Any], kwargs: dict[str, Any]) -> Any:
            close_old_connections()  # as Django does around a request
            try:
                return func(*context(), *args, **kwargs)
            finally:
                close_old_connections()

        run = run_sync
    run.__module__ = func.__module__
    run.__qualname__ = func.__qualname__
    run.__name__ = func.__name__
    return run


def _django_task(name: str) -> Any:
    """The Django task of a stored name: registered here, or imported by its path (as
    Django's own database backend does) and checked to be a Django task."""
    task = _django_tasks.get(name)
    if task is None:
        try:
            task = import_string(name)
        except ImportError as error:
            raise ResultDoesNotExist(f"no Django task named {name!r}: {error}") from None
        if not isinstance(task, Task):
            raise ResultDoesNotExist(f"{name!r} is not a Django task")
    return task
