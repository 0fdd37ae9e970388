"""TaskManager: queue tasks, read their records, cancel and retry them."""

from __future__ import annotations

import datetime
import threading
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from pgqueue import results
from pgqueue.brokers import get_broker
from pgqueue.brokers.base import Broker
from pgqueue.db.database import Database, database_from_settings
from pgqueue.db.store import TaskStore
from pgqueue.errors import InvalidTaskArguments, InvalidTaskOption
from pgqueue.payload import encode_kwargs
from pgqueue.records import NewTask, Task, new_task_id, new_task_ids
from pgqueue.settings import Settings, get_settings, load_settings
from pgqueue.tasks import definition, registry
from pgqueue.tasks.definition import TaskFunction, UniqueKey, derive_unique_key
from pgqueue.tasks.options import MAX_TASK_NAME_LENGTH, Delay, TaskOptions, Timing

TaskRef = TaskFunction[Any] | str


class TaskManager:
    """Queue tasks and look after them.

    >>> tm = TaskManager()                                  # from settings
    >>> tm = TaskManager(dsn="postgresql://app@db/app")
    >>> task_id = tm.queue_task(task=send_email, queue="emails", to="a@example.com")
    >>> tm.get_task(task_id).status
    <TaskStatus.PENDING: 'PENDING'>
    """

    def __init__(
        self,
        dsn: str | None = None,
        *,
        broker: Broker | None = None,
        settings: Settings | None = None,
    ) -> None:
        self.settings = settings or (load_settings(dsn=dsn) if dsn else get_settings())
        self._broker = broker
        self._store: TaskStore | None = None
        self._lock = threading.Lock()

    # -- plumbing, opened at first use -------------------------------------------------

    @property
    def broker(self) -> Broker:
        with self._lock:
            if self._broker is None:
                self._broker = get_broker(self.settings)
            return self._broker

    @property
    def store(self) -> TaskStore:
        with self._lock:
            if self._store is None:
                database = getattr(self._broker, "database", None)
                if not isinstance(database, Database):
                    database = database_from_settings(self.settings)
                self._store = TaskStore(database)
            return self._store

    def close(self) -> None:
        """Close the connection pools (a later call opens them again)."""
        for database in {
            getattr(self._broker, "database", None),
            getattr(self._store, "database", None),
        }:
            if isinstance(database, Database):
                database.close()

    # -- queueing ----------------------------------------------------------------------

    def queue_task(
        self,
        task: TaskRef,
        *args: Any,
        connection: Any = None,
        delay: Delay | None = None,
        schedule_at: datetime.datetime | None = None,
        priority: int | None = None,
        queue: str | None = None,
        max_retries: int | None = None,
        unique_key: UniqueKey | None = None,
        **kwargs: Any,
    ) -> uuid.UUID:
        """Queue one run of `task` (a decorated function or its name); returns its id.

        With `unique_key` (a string, or a callable that takes the arguments as a dict), while
        an unfinished task holds the key this returns that task's id and queues nothing.
        """
        function, name = _resolve(task)
        options = self._options(function, queue, priority, max_retries, delay, schedule_at)
        new_task = self._new_task(function, name, options, args, kwargs, unique_key)
        if new_task.unique_key is not None:
            return self._unique_broker().enqueue_unique([new_task], connection)[0]
        self.broker.enqueue([new_task], connection)
        return new_task.id

    async def aqueue_task(
        self,
        task: TaskRef,
        *args: Any,
        connection: Any = None,
        delay: Delay | None = None,
        schedule_at: datetime.datetime | None = None,
        priority: int | None = None,
        queue: str | None = None,
        max_retries: int | None = None,
        unique_key: UniqueKey | None = None,
        **kwargs: Any,
    ) -> uuid.UUID:
        function, name = _resolve(task)
        options = self._options(function, queue, priority, max_retries, delay, schedule_at)
        new_task = self._new_task(function, name, options, args, kwargs, unique_key)
        if new_task.unique_key is not None:
            return (await self._unique_broker().aenqueue_unique([new_task], connection))[0]
        await self.broker.aenqueue([new_task], connection)
        return new_task.id

    def queue_tasks(
        self,
        task: TaskRef,
        rows: Iterable[Mapping[str, Any]],
        *,
        connection: Any = None,
        delay: Delay | None = None,
        schedule_at: datetime.datetime | None = None,
        priority: int | None = None,
        queue: str | None = None,
        max_retries: int | None = None,
        unique_key: UniqueKey | None = None,
    ) -> list[uuid.UUID]:
        """Queue many runs of one task in one transaction (COPY); returns their ids.

        >>> ids = tm.queue_tasks(send_email, [{"to": "a@x"}, {"to": "b@x"}], priority=1)

        With `unique_key`, each row whose key an unfinished task (or an earlier row) holds
        gets that task's id instead of a new task.
        """
        new_tasks = self._new_tasks(
            task, rows, queue, priority, max_retries, delay, schedule_at, unique_key
        )
        if any(new_task.unique_key is not None for new_task in new_tasks):
            return self._unique_broker().enqueue_unique(new_tasks, connection)
        if new_tasks:
            self.broker.enqueue(new_tasks, connection)
        return [new_task.id for new_task in new_tasks]

    async def aqueue_tasks(
        self,
        task: TaskRef,
        rows: Iterable[Mapping[str, Any]],
        *,
        connection: Any = None,
        delay: Delay | None = None,
        schedule_at: datetime.datetime | None = None,
        priority: int | None = None,
        queue: str | None = None,
        max_retries: int | None = None,
        unique_key: UniqueKey | None = None,
    ) -> list[uuid.UUID]:
        new_tasks = self._new_tasks(
            task, rows, queue, priority, max_retries, delay, schedule_at, unique_key
        )
        if any(new_task.unique_key is not None for new_task in new_tasks):
            return await self._unique_broker().aenqueue_unique(new_tasks, connection)
        if new_tasks:
            await self.broker.aenqueue(new_tasks, connection)
        return [new_task.id for new_task in new_tasks]

    def _unique_broker(self) -> Any:
        broker = self.broker
        if not hasattr(broker, "enqueue_unique"):
            raise InvalidTaskOption(
                "unique_key needs the database broker (PGQUEUE_BROKER=database): the "
                "uniqueness is a unique index of the task table"
            )
        return broker

    def _options(
        self,
        function: TaskFunction[Any] | None,
        queue: str | None,
        priority: int | None,
        max_retries: int | None,
        delay: Delay | None,
        schedule_at: datetime.datetime | None,
    ) -> TaskOptions:
        """The call's options over the decorator's over the settings' defaults."""
        options = TaskOptions.resolve(
            function,
            self.settings.defaults,
            queue=queue,
            priority=priority,
            max_retries=max_retries,
            delay=delay,
            schedule_at=schedule_at,
        )
        return options

    def _new_task(
        self,
        function: TaskFunction[Any] | None,
        name: str,
        options: TaskOptions,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        unique_key: UniqueKey | None = None,
        task_id: uuid.UUID | None = None,
    ) -> NewTask:
        if function is not None:
            if args or function.typed_arguments is not None or function.kwargs_problem(kwargs):
                kwargs = function.bind_kwargs(args, kwargs)
            # else: keyword arguments the signature takes as they are (a set check, the
            # worker's own): binding them would only reorder them, at 5 us a row in bulk.

        elif args:
            raise InvalidTaskArguments(
                f"{name} is queued by name, so its signature is unknown here: "
                "pass keyword arguments"
            )
        if unique_key is None and function is not None:
            unique_key = function.unique_key
        timing: Timing = options.timing
        return NewTask(
            id=task_id or new_task_id(),
            name=name,
            queue=options.queue,
            priority=options.priority,
            max_retries=options.max_retries,
            kwargs_json=encode_kwargs(name, kwargs, self.settings.max_payload_bytes),
            delay=timing.delay,
            schedule_at=timing.schedule_at,
            unique_key=None if unique_key is None else derive_unique_key(name, unique_key, kwargs),
        )

    def _new_tasks(
        self,
        task: TaskRef,
        rows: Iterable[Mapping[str, Any]],
        queue: str | None,
        priority: int | None,
        max_retries: int | None,
        delay: Delay | None,
        schedule_at: datetime.datetime | None,
        unique_key: UniqueKey | None = None,
    ) -> list[NewTask]:
        function, name = _resolve(task)
        options = self._options(function, queue, priority, max_retries, delay, schedule_at)
        new_tasks = []
        rows = rows if isinstance(rows, Sequence) else list(rows)
        ids = new_task_ids(len(rows))
        # Rows whose stored arguments need no binding, typing or key: built right here, not
        # through _new_task, since bulk queueing is bound by this loop (2 us a row saved).
        plain_check = (
            function.kwargs_problem
            if function is not None
            and function.typed_arguments is None
            and unique_key is None
            and function.unique_key is None
            else None
        )
        timing = options.timing
        max_bytes = self.settings.max_payload_bytes
        for index, row in enumerate(rows):
            if type(row) is not dict and not isinstance(row, Mapping):  # dict: no ABC check
                raise InvalidTaskArguments(
                    f"row {index} of queue_tasks is a {type(row).__name__}; "
                    "give a dict of arguments"
                )
            try:
                if plain_check is not None and plain_check(row) is None:
                    new_tasks.append(
                        NewTask(
                            ids[index],
                            name,
                            options.queue,
                            options.priority,
                            options.max_retries,
                            encode_kwargs(name, row, max_bytes),
                            timing.delay,
                            timing.schedule_at,
                        )
                    )
                    continue
                new_tasks.append(
                    self._new_task(
                        function, name, options, (), dict(row), unique_key, task_id=ids[index]
                    )
                )
            except (InvalidTaskArguments, InvalidTaskOption) as error:
                raise type(error)(f"row {index}: {error}") from error
        return new_tasks

    # -- records -----------------------------------------------------------------------

    def get_task(self, task_id: uuid.UUID | str) -> Task | None:
        """The task's record, or None if no task has that id (or it was cleaned up)."""
        return self.store.get(task_id)

    async def aget_task(self, task_id: uuid.UUID | str) -> Task | None:
        return await self.store.aget(task_id)

    def cancel(self, task_id: uuid.UUID | str) -> bool:
        """Cancel a task that has not finished; True if it is now CANCELLED."""
        return self.store.cancel(task_id)

    async def acancel(self, task_id: uuid.UUID | str) -> bool:
        return await self.store.acancel(task_id)

    def retry(self, task_id: uuid.UUID | str) -> bool:
        """Run a FAILED or CANCELLED task once more, now; True if it was put back."""
        retried = self.store.retry(task_id)
        if retried:
            self.broker.resubmit(uuid.UUID(str(task_id)))
        return retried

    def wait(self, task_id: uuid.UUID | str, timeout: float | None = None) -> Any:
        """Block until the task finishes (woken by a notification, not polling); its result.

        Raises TaskFailed (with `.task` and `.error`) if it failed, TaskCancelled if it was
        cancelled, WaitTimeout (a TimeoutError) after `timeout` seconds (None: no limit).

        >>> tm.wait(send_email.delay(to="a@example.com"), timeout=10)
        """
        return results.wait(self.store.database, task_id, timeout)

    async def await_result(self, task_id: uuid.UUID | str, timeout: float | None = None) -> Any:
        """The async twin of `wait`: `result = await tm.await_result(task_id, timeout=10)`."""
        return await results.await_result(self.store.database, task_id, timeout)

    async def aretry(self, task_id: uuid.UUID | str) -> bool:
        retried = await self.store.aretry(task_id)
        if retried:
            self.broker.resubmit(uuid.UUID(str(task_id)))
        return retried


def _resolve(task: TaskRef) -> tuple[TaskFunction[Any] | None, str]:
    """A decorated function, or a task name (looked up among registered tasks)."""
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


_default: TaskManager | None = None
_default_lock = threading.Lock()


def default_task_manager() -> TaskManager:
    """The TaskManager that .delay() uses, built from settings at first use."""
    global _default
    with _default_lock:
        if _default is None:
            _default = TaskManager()
        return _default


def set_default_task_manager(manager: TaskManager | None) -> None:
    """Make .delay() use `manager` (None: build one from settings again at next use)."""
    global _default
    with _default_lock:
        _default = manager


definition.use_default_producer(default_task_manager)
