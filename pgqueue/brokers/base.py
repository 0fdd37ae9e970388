"""The broker contract: everything a worker and a producer may ask of a transport.

A broker subclasses `Broker`, implements its abstract methods and overrides the
capabilities it has; each default below is what a broker without that capability offers,
so this module is the whole contract. Implementations live beside it: `postgres/` (the
default: the task table is the queue) and `rabbitmq/`; `pgqueue.brokers.get_broker` is the
one place that names them.

- Producers: `enqueue` / `aenqueue` (in the caller's transaction when given its
  connection); `enqueue_unique` / `aenqueue_unique` for tasks with a unique key (default:
  refused); `resubmit` after `TaskManager.retry`.
- A worker: `open` (with its callbacks: `on_cancel`, and its `HandOff` for a broker that
  `hands_off`), then `schedule_cron` once; then
  `claim`, `finish`, `heartbeat` and `record_starts` while it runs; `wake` to end a pending
  claim; `close` ends everything `open` and `schedule_cron` started.
- Capabilities the worker reads: `claims_ahead` (may it claim beyond its free slots),
  `lease_seconds` (its heartbeat pace), `recording` / `until_recording` (claim nothing while
  outcomes cannot be recorded), `completion_transaction` (transactional tasks), `hands_off`
  (tasks its completions make ready come back to it, already claimed). Producers
  read `database` (where the task records are).

The contract suite, `tests/brokers/test_brokers.py`, runs against every broker.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any, Protocol

from pgqueue.errors import InvalidTaskOption, TransactionUnsupported
from pgqueue.records import NewTask, Outcome, Task

if TYPE_CHECKING:
    import uuid

    # A type only: at run time a broker's database is its own business (the worker,
    # which imports this module, must not import pgqueue.db).
    from pgqueue.db.database import Database
    from pgqueue.records import CleanupPolicy, WorkerInfo
    from pgqueue.settings import TaskDefaults
    from pgqueue.tasks.definition import TaskFunction

#: Why `enqueue_unique` is refused by a broker that cannot keep keys unique.
UNIQUE_KEYS_UNSUPPORTED = (
    "unique_key needs the database broker (PGQUEUE_BROKER=database): the uniqueness is a "
    "unique index of the task table"
)

#: Why tasks with parents (depends_on, chain, group, chord) are refused by a broker without them.
LIMITS_UNSUPPORTED = (
    "limits and fair_key need the database broker (PGQUEUE_BROKER=database): they are "
    "decided by the claim, in the task table; the RabbitMQ broker does not support them"
)

WORKFLOWS_UNSUPPORTED = (
    "depends_on, chain, group and chord need the database broker (PGQUEUE_BROKER=database): "
    "a task waits for its parents in the task table, and advances when they complete"
)

#: What a broker calls with the id of a task that `TaskManager.cancel` cancelled while this
#: worker held it: the worker stops the run (or drops the task from its claimed-ahead buffer).
CancelCallback = Callable[["uuid.UUID"], None]


class HandOff(Protocol):
    """What a worker offers a broker that `hands_off`: the tasks that its own completions
    make ready (a workflow's children) come straight back to it, claimed, for free slots."""

    def free_slots(self) -> int:
        """How many tasks the worker would start now (0: hand it nothing)."""

    def take(self, tasks: Sequence[Task]) -> None:
        """Tasks claimed for this worker (RUNNING under its lease, started) by the completion
        of their parents, as a claim returns them: start them, as if just claimed. Called
        from the event loop."""


class TaskTransaction(Protocol):
    """An open transaction a transactional task writes in (`Broker.completion_transaction`)."""

    #: The connection the task's code writes through (`current_task().connection`).
    connection: Any

    async def complete(self, result_json: str) -> None:
        """Record the task COMPLETED in this transaction, so that its writes and its status
        commit together; raise `LeaseLost` if the task is no longer this worker's."""


class Broker(abc.ABC):
    """A transport for tasks. The worker and the producer know only what is declared here."""

    # -- capabilities (class attributes a broker overrides) -----------------------------

    #: True: the worker may claim more tasks than it has free slots and hold them in a
    #: buffer (claimed tasks are this worker's, heartbeated with `claimed_ahead`, given back
    #: with a RELEASED outcome when not started in time). False: it claims for free slots.
    claims_ahead: bool = False

    #: How long a claimed task stays this worker's without a heartbeat; the worker sends one
    #: every third of it. None: the broker keeps no leases, and the worker heartbeats at a
    #: third of its settings' `lease_seconds` (the heartbeat still reports cancelled tasks).
    lease_seconds: float | None = None

    #: True: producers may queue tasks with parents (`NewTask.depends_on`), which wait
    #: (WAITING) until their parents complete, and runs may read their parents' results
    #: (`parent_results`). False: both refused with InvalidTaskOption.
    workflows: bool = False

    #: True: tasks may hold limit keys and fair keys (`NewTask.limit_keys`, `fair_key`),
    #: decided by the claim. False: refused with InvalidTaskOption (LIMITS_UNSUPPORTED).
    limits: bool = False
    #: True: a completion that makes tasks ready (a workflow's children, WAITING -> PENDING)
    #: claims those of the worker's queues for its free slots in the same transaction and
    #: gives them to its `HandOff` (`open(hand_off=...)`): a chain step costs no claim, nor a
    #: wake-up. False: `hand_off` is ignored; ready tasks wait for a claim like any other.
    hands_off: bool = False

    #: The database that holds the task records (statuses, results) this broker writes, or
    #: None if it keeps none. Producers read, cancel and retry tasks through it, on its pools.
    database: Database | None = None

    # -- producers ---------------------------------------------------------------------

    @abc.abstractmethod
    def enqueue(self, tasks: Sequence[NewTask], connection: Any = None) -> None:
        """Deliver new tasks; with `connection`, inside the caller's transaction."""

    @abc.abstractmethod
    async def aenqueue(self, tasks: Sequence[NewTask], connection: Any = None) -> None:
        """Deliver new tasks from async code."""

    def enqueue_unique(self, tasks: Sequence[NewTask], connection: Any = None) -> list[uuid.UUID]:
        """Deliver tasks that carry a `unique_key`: per task, its own id, or the id of the
        unfinished task (or earlier task of `tasks`) that holds its key, queueing nothing.

        Default: refused with InvalidTaskOption before anything is written (keeping keys
        unique takes a store that knows which keys unfinished tasks hold)."""
        raise InvalidTaskOption(UNIQUE_KEYS_UNSUPPORTED)

    async def aenqueue_unique(
        self, tasks: Sequence[NewTask], connection: Any = None
    ) -> list[uuid.UUID]:
        """`enqueue_unique` from async code."""
        raise InvalidTaskOption(UNIQUE_KEYS_UNSUPPORTED)

    def parent_results(self, task_id: uuid.UUID) -> dict[uuid.UUID, Any]:
        """{parent id: result} of a task queued with parents (`current_task().parent_results()`).

        Default: refused with InvalidTaskOption (no workflows on this broker)."""
        raise InvalidTaskOption(WORKFLOWS_UNSUPPORTED)

    async def aparent_results(self, task_id: uuid.UUID) -> dict[uuid.UUID, Any]:
        """`parent_results` from async code."""
        raise InvalidTaskOption(WORKFLOWS_UNSUPPORTED)

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
        *,
        on_cancel: CancelCallback | None = None,
        hand_off: HandOff | None = None,
    ) -> None:
        """Connect and subscribe to `queues`; start the broker's own upkeep (leases, cleanup).

        `worker` (concurrency, version, host, pid) is for the worker registry, if any. A
        broker that hears of cancels as they happen calls `on_cancel` with the task's id
        (from the event loop); the others report them through `heartbeat`. A broker that
        `hands_off` gives `hand_off` the tasks this worker's completions made ready.
        """

    async def schedule_cron(  # noqa: B027 - optional hook
        self, tasks: Sequence[TaskFunction[Any]], defaults: TaskDefaults
    ) -> None:
        """Queue the occurrences of these cron tasks as they come due, through this broker,
        until `close`; `defaults` fill the options their decorators leave out.

        Default: schedules nothing (deciding which of the workers queues an occurrence takes
        a shared database: `pgqueue.db.cron`)."""

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
        returns the ids of those this worker lost (taken over, or cancelled)."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Stop what `open` and `schedule_cron` started, flush what is buffered, disconnect."""

    def wake(self) -> None:  # noqa: B027 - optional hook
        """Make a pending `claim` return now (shutdown)."""

    async def forget(self, tasks: Sequence[Task]) -> None:  # noqa: B027 - optional hook
        """The worker stopped these runs, or dropped them claimed ahead, because their records
        are no longer its own (cancelled, or the lease lost): they report no outcome. A
        broker that holds something for each delivery lets it go (RabbitMQ acks it, or it
        would hold a prefetch slot until the connection closes); the database: nothing."""

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

    def completion_transaction(self, task: Task) -> AbstractAsyncContextManager[TaskTransaction]:
        """A transaction for a `transactional=True` task: the worker runs the task in it and
        calls `complete`; the body raising rolls everything back.

        Default: refused with TransactionUnsupported (the run ends FAILED)."""
        return refuse_transaction(task)


def refuse_transaction(task: Task) -> AbstractAsyncContextManager[TaskTransaction]:
    """What a broker without transactions (or a run without a broker) gives a
    transactional task: TransactionUnsupported, which ends its run FAILED."""
    raise TransactionUnsupported(
        f"{task.name} is transactional=True, which needs the database broker"
    )
