"""TaskManager: queue tasks, read their records, cancel and retry them."""

from __future__ import annotations

import dataclasses
import datetime
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from pgqueue import results, telemetry
from pgqueue.brokers import get_broker
from pgqueue.brokers.base import LIMITS_UNSUPPORTED, WORKFLOWS_UNSUPPORTED, Broker
from pgqueue.db.database import Database, database_from_settings
from pgqueue.db.store import TaskStore
from pgqueue.errors import InvalidTaskOption
from pgqueue.records import Limit, NewTask, Task, TaskEvent, new_task_ids
from pgqueue.settings import Settings, get_settings, load_settings
from pgqueue.tasks import call, queueing
from pgqueue.tasks.call import UniqueKey
from pgqueue.tasks.definition import TaskFunction, TaskRef, resolve_task
from pgqueue.tasks.options import (
    Delay,
    TaskOptions,
    check_fair_key,
    check_key,
    check_limit,
    check_limit_keys,
    check_on_parent_failure,
    check_queue,
    check_weight,
    merge_limit_keys,
)
from pgqueue.tasks.workflow import Signature, Step


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
        # Through the broker, made first if need be: the records are where it writes them,
        # and one database (one pool) serves both.
        database = self.broker.database
        with self._lock:
            if self._store is None:
                self._store = TaskStore(database or database_from_settings(self.settings))
            return self._store

    def close(self) -> None:
        """Close the connection pools (a later call opens them again).

        >>> with TaskManager() as tm:       # closed at the end of the block
        ...     tm.queue_task(send_email, to="a@example.com")
        """
        for database in self._databases():
            database.close()

    async def aclose(self) -> None:
        """Close the pools of this event loop and the sync ones (`async with TaskManager()`)."""
        for database in self._databases():
            await database.aclose()
            database.close()

    def _databases(self) -> set[Database]:
        return {
            database
            for database in (
                self._broker.database if self._broker is not None else None,
                self._store.database if self._store is not None else None,
            )
            if database is not None
        }

    def __enter__(self) -> TaskManager:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    async def __aenter__(self) -> TaskManager:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

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
        depends_on: Iterable[uuid.UUID | str] | None = None,
        on_parent_failure: str = "cancel",
        limits: Iterable[str] | None = None,
        fair_key: str | None = None,
        **kwargs: Any,
    ) -> uuid.UUID:
        """Queue one run of `task` (a decorated function or its name); returns its id.

        With `unique_key` (a string, or a callable that takes the arguments as a dict), while
        an unfinished task holds the key this returns that task's id and queues nothing.

        With `depends_on` (ids of tasks queued before) it is WAITING until each of them is
        COMPLETED, then PENDING in the transaction of the last completion; a parent ending
        FAILED or CANCELLED cancels it, unless `on_parent_failure="run"`. An id that names
        no task raises ValueError.

        >>> fetched = tm.queue_task(fetch, url="https://example.com")
        >>> parsed = tm.queue_task(parse, depends_on=[fetched])

        With `limits` (keys, added to the task's own from `@AsyncTask(limits=...)`) it runs
        only while every limit set on them (`set_limit`) has room; with `fair_key`, keys of
        its queue and priority take turns (`set_fair_weight`). Database broker only.
        """
        new_task = self._build_task(
            task, args, kwargs, queue, priority, max_retries, delay, schedule_at, unique_key
        )
        new_task = self._with_parents([new_task], depends_on, on_parent_failure)[0]
        self._with_keys([new_task], task, limits, fair_key)
        with telemetry.sending([new_task]):
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
        depends_on: Iterable[uuid.UUID | str] | None = None,
        on_parent_failure: str = "cancel",
        limits: Iterable[str] | None = None,
        fair_key: str | None = None,
        **kwargs: Any,
    ) -> uuid.UUID:
        new_task = self._build_task(
            task, args, kwargs, queue, priority, max_retries, delay, schedule_at, unique_key
        )
        new_task = self._with_parents([new_task], depends_on, on_parent_failure)[0]
        self._with_keys([new_task], task, limits, fair_key)
        with telemetry.sending([new_task]):
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
        depends_on: Iterable[uuid.UUID | str] | None = None,
        on_parent_failure: str = "cancel",
        limits: Iterable[str] | None = None,
        fair_key: str | None = None,
    ) -> list[uuid.UUID]:
        """Queue many runs of one task in one transaction (COPY); returns their ids.

        >>> ids = tm.queue_tasks(send_email, [{"to": "a@x"}, {"to": "b@x"}], priority=1)

        With `unique_key`, each row whose key an unfinished task (or an earlier row) holds
        gets that task's id instead of a new task. With `depends_on`, every row waits for
        those tasks (see `queue_task`).
        """
        new_tasks = self._build_tasks(
            task, rows, queue, priority, max_retries, delay, schedule_at, unique_key
        )
        new_tasks = self._with_parents(new_tasks, depends_on, on_parent_failure)
        self._with_keys(new_tasks, task, limits, fair_key)
        with telemetry.sending(new_tasks):
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
        depends_on: Iterable[uuid.UUID | str] | None = None,
        on_parent_failure: str = "cancel",
        limits: Iterable[str] | None = None,
        fair_key: str | None = None,
    ) -> list[uuid.UUID]:
        new_tasks = self._build_tasks(
            task, rows, queue, priority, max_retries, delay, schedule_at, unique_key
        )
        new_tasks = self._with_parents(new_tasks, depends_on, on_parent_failure)
        self._with_keys(new_tasks, task, limits, fair_key)
        with telemetry.sending(new_tasks):
            if any(new_task.unique_key is not None for new_task in new_tasks):
                return await self._unique_broker().aenqueue_unique(new_tasks, connection)
            if new_tasks:
                await self.broker.aenqueue(new_tasks, connection)
        return [new_task.id for new_task in new_tasks]

    def queue_workflow(self, steps: Sequence[Step], connection: Any = None) -> list[uuid.UUID]:
        """Queue the steps of a workflow in one transaction (chain, group and chord
        `.delay()` call this); their ids, in order.

        >>> ids = tm.queue_workflow(chain(fetch.s(url=u), parse.s()).steps())
        """
        new_tasks = self._build_steps(steps)
        with telemetry.sending(new_tasks):
            self._workflow_broker().enqueue(new_tasks, connection)
        return [new_task.id for new_task in new_tasks]

    async def aqueue_workflow(
        self, steps: Sequence[Step], connection: Any = None
    ) -> list[uuid.UUID]:
        new_tasks = self._build_steps(steps)
        with telemetry.sending(new_tasks):
            await self._workflow_broker().aenqueue(new_tasks, connection)
        return [new_task.id for new_task in new_tasks]

    def _build_steps(self, steps: Sequence[Step]) -> list[NewTask]:
        ids = new_task_ids(len(steps))
        max_bytes = self.settings.max_payload_bytes
        # Steps of one task with the same options and keys (a chord's header, a long chain)
        # share what is resolved and checked once for them: resolving is most of a step's
        # cost in Python. Their rows are then built as queue_tasks builds its rows.
        resolved: dict[Any, _StepKind] = {}
        new_tasks = []
        for index, step in enumerate(steps):
            signature = step.signature
            kind = self._step_kind(signature, resolved)
            parents = signature.depends_on
            if step.after:
                parents = tuple([ids[i] for i in step.after]) + parents
            kwargs = signature.kwargs
            check = kind.plain_check
            # Tasks queued by name take their keyword arguments as given, as build_task does.
            plain = kind.function is None if check is None else check(kwargs) is None
            if plain and not signature.args:
                new_task = call.plain_task(
                    ids[index],
                    kind.name,
                    kind.options,
                    kwargs,
                    max_bytes,
                    parents,
                    signature.on_parent_failure,
                )
            else:
                new_task = call.build_task(
                    kind.function,
                    kind.name,
                    kind.options,
                    signature.args,
                    dict(kwargs),
                    None,
                    max_bytes,
                    task_id=ids[index],
                    depends_on=parents,
                    on_parent_failure=signature.on_parent_failure,
                )
            new_task.limit_keys, new_task.fair_key = kind.limit_keys, kind.fair_key
            new_tasks.append(new_task)
        return new_tasks

    def _step_kind(self, signature: Signature, resolved: dict[Any, _StepKind]) -> _StepKind:
        """The task, options and keys of a step, resolved and checked once per distinct
        task, options and keys."""
        key: Any = (
            signature.task,
            signature.queue,
            signature.priority,
            signature.max_retries,
            signature.delay_seconds,
            signature.schedule_at,
            signature.limits,
            signature.fair_key,
        )
        try:
            return resolved[key]
        except KeyError:
            pass
        except TypeError:  # an unhashable option value: resolved (and refused) as it is
            key = None
        function, name = resolve_task(signature.task)
        options = self._options(
            function,
            signature.queue,
            signature.priority,
            signature.max_retries,
            signature.delay_seconds,
            signature.schedule_at,
        )
        limit_keys, fair_key = self._keys(function, signature.limits, signature.fair_key)
        kind = _StepKind(
            function, name, options, call.plain_kwargs_check(function), limit_keys, fair_key
        )
        if key is not None:
            resolved[key] = kind
        return kind

    def _with_parents(
        self,
        new_tasks: list[NewTask],
        depends_on: Iterable[uuid.UUID | str] | None,
        on_parent_failure: str,
    ) -> list[NewTask]:
        """The tasks with their parents set (checked), if `depends_on` names any."""
        policy = check_on_parent_failure(on_parent_failure)
        parents = call.check_depends_on(depends_on)
        if not parents:
            return new_tasks
        if any(new_task.unique_key is not None for new_task in new_tasks):
            raise InvalidTaskOption("unique_key and depends_on cannot be used together")
        self._workflow_broker()
        for new_task in new_tasks:
            new_task.depends_on = parents
            new_task.on_parent_failure = policy
        return new_tasks

    def _with_keys(
        self,
        new_tasks: list[NewTask],
        task: TaskRef,
        limits: Iterable[str] | None,
        fair_key: str | None,
    ) -> None:
        """Set the limit keys (the task's own, then the call's) and the fair key, checked."""
        function = task if isinstance(task, TaskFunction) else resolve_task(task)[0]
        keys, fair = self._keys(function, limits, fair_key)
        if keys is None and fair is None:
            return
        for new_task in new_tasks:
            new_task.limit_keys = keys
            new_task.fair_key = fair

    def _keys(
        self, function: TaskFunction[Any] | None, limits: Iterable[str] | None, fair_key: str | None
    ) -> tuple[tuple[str, ...] | None, str | None]:
        """The limit keys (the task's own, then the call's) and the fair key, checked; this
        broker must support limits if there are any."""
        own = function.limits if function is not None else None
        keys = merge_limit_keys(own, check_limit_keys(limits))
        fair = check_fair_key(fair_key)
        if (keys is not None or fair is not None) and not self.broker.limits:
            raise InvalidTaskOption(LIMITS_UNSUPPORTED)
        return keys, fair

    def _workflow_broker(self) -> Broker:
        broker = self.broker
        if not broker.workflows:
            raise InvalidTaskOption(WORKFLOWS_UNSUPPORTED)
        return broker

    def _build_task(
        self,
        task: TaskRef,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        queue: str | None,
        priority: int | None,
        max_retries: int | None,
        delay: Delay | None,
        schedule_at: datetime.datetime | None,
        unique_key: UniqueKey | None,
    ) -> NewTask:
        function, name = resolve_task(task)
        options = self._options(function, queue, priority, max_retries, delay, schedule_at)
        return call.build_task(
            function, name, options, args, kwargs, unique_key, self.settings.max_payload_bytes
        )

    def _build_tasks(
        self,
        task: TaskRef,
        rows: Iterable[Mapping[str, Any]],
        queue: str | None,
        priority: int | None,
        max_retries: int | None,
        delay: Delay | None,
        schedule_at: datetime.datetime | None,
        unique_key: UniqueKey | None,
    ) -> list[NewTask]:
        function, name = resolve_task(task)
        options = self._options(function, queue, priority, max_retries, delay, schedule_at)
        rows = rows if isinstance(rows, Sequence) else list(rows)
        return call.build_tasks(
            function, name, options, rows, unique_key, self.settings.max_payload_bytes
        )

    def _unique_broker(self) -> Any:
        # A broker that cannot keep keys unique refuses in enqueue_unique (Broker's default).
        return self.broker

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

    # -- records -----------------------------------------------------------------------

    def get_task(self, task_id: uuid.UUID | str) -> Task | None:
        """The task's record, or None if no task has that id (or it was cleaned up)."""
        return self.store.get(task_id)

    async def aget_task(self, task_id: uuid.UUID | str) -> Task | None:
        return await self.store.aget(task_id)

    def history(self, task_id: uuid.UUID | str) -> list[TaskEvent]:
        """Every change of the task's state, oldest first (empty: no such task, cleaned up,
        or queued while history was off).

        >>> for event in tm.history(task_id):
        ...     print(event.at, event.event, event.attempt, event.worker_id, event.error)
        """
        return self.store.history(task_id)

    async def ahistory(self, task_id: uuid.UUID | str) -> list[TaskEvent]:
        """The async twin of `history`: `events = await tm.ahistory(task_id)`."""
        return await self.store.ahistory(task_id)

    def cancel(self, task_id: uuid.UUID | str) -> bool:
        """Cancel a task that has not finished; True if it is now CANCELLED. Its dependents
        that wait for it are cancelled too (recursively), unless on_parent_failure="run"."""
        return self.store.cancel(task_id)

    async def acancel(self, task_id: uuid.UUID | str) -> bool:
        return await self.store.acancel(task_id)

    def retry(self, task_id: uuid.UUID | str) -> bool:
        """Run a FAILED or CANCELLED task once more, now; True if it was put back. The
        dependents its failure or cancel cancelled wait for it again (WAITING)."""
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

    # -- limits and fair share (docs/features.md) ---------------------------------------

    def set_limit(
        self,
        name: str,
        *,
        concurrency: int | None = None,
        rate: float | None = None,
        per: float | datetime.timedelta | None = None,
        burst: float | None = None,
    ) -> Limit:
        """Define the limit of a key, or of a pattern ending in "*" (each matching key gets
        its own), replacing any earlier definition whole; across all workers at once.

        >>> tm.set_limit("ses", concurrency=10)              # at most 10 running at once
        >>> tm.set_limit("api", rate=14, per=1.0, burst=14)  # a token bucket, starts full
        >>> tm.set_limit("tenant:*", concurrency=3)          # "tenant:acme" has its own 3
        """
        row = self._limit_row(name, concurrency, rate, per, burst)
        self.store.database.fetch_one("set_limit", row)
        return Limit.from_row(row)

    async def aset_limit(
        self,
        name: str,
        *,
        concurrency: int | None = None,
        rate: float | None = None,
        per: float | datetime.timedelta | None = None,
        burst: float | None = None,
    ) -> Limit:
        row = self._limit_row(name, concurrency, rate, per, burst)
        await self.store.database.afetch_one("set_limit", row)
        return Limit.from_row(row)

    def remove_limit(self, name: str) -> bool:
        """Drop a limit; True if it existed. Its keys restrict nothing from then on."""
        self._limits_broker()
        return self.store.database.fetch_one("remove_limit", {"name": name}) is not None

    async def aremove_limit(self, name: str) -> bool:
        self._limits_broker()
        return await self.store.database.afetch_one("remove_limit", {"name": name}) is not None

    def limits(self) -> list[Limit]:
        """Every limit defined, by name."""
        return [Limit.from_row(row) for row in self.store.database.fetch_all("list_limits", {})]

    async def alimits(self) -> list[Limit]:
        rows = await self.store.database.afetch_all("list_limits", {})
        return [Limit.from_row(row) for row in rows]

    def set_fair_weight(self, queue: str, key: str, weight: float) -> None:
        """Give a fair key of a queue `weight` starts for every one of a weight-1 key
        (while both have work waiting). Keys without a weight have 1."""
        self._limits_broker()
        self.store.database.fetch_one("set_fair_weight", self._weight_row(queue, key, weight))

    async def aset_fair_weight(self, queue: str, key: str, weight: float) -> None:
        self._limits_broker()
        await self.store.database.afetch_one(
            "set_fair_weight", self._weight_row(queue, key, weight)
        )

    def _limits_broker(self) -> None:
        if not self.broker.limits:
            raise InvalidTaskOption(LIMITS_UNSUPPORTED)

    def _limit_row(
        self, name: str, concurrency: Any, rate: Any, per: Any, burst: Any
    ) -> dict[str, Any]:
        self._limits_broker()
        return check_limit(name, concurrency, rate, per, burst)

    @staticmethod
    def _weight_row(queue: str, key: str, weight: float) -> dict[str, Any]:
        return {
            "queue": check_queue(queue),
            "key": check_key(key, "fair key"),
            "weight": check_weight(weight),
        }


_default: TaskManager | None = None
_default_lock = threading.Lock()


@dataclasses.dataclass(frozen=True, slots=True)
class _StepKind:
    """What the workflow steps of one task with the same options and keys share."""

    function: TaskFunction[Any] | None
    name: str
    options: TaskOptions
    #: call.plain_kwargs_check of its task: which calls are built without build_task.
    plain_check: Callable[[Mapping[str, Any]], str | None] | None
    limit_keys: tuple[str, ...] | None
    fair_key: str | None


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


queueing.use_default_producer(default_task_manager)
