"""Task records and statuses as stored in the task table, new tasks and run outcomes."""

from __future__ import annotations

import dataclasses
import enum
import os
import socket
import struct
import threading
import time
import uuid
from datetime import datetime
from typing import Any

from pgqueue.version import __version__


class TaskStatus(enum.StrEnum):
    """A task's place in its life; the same names as the SQL type `task_status`.

    PENDING -> RUNNING -> COMPLETED
                       -> RETRYING -> RUNNING ... -> FAILED (retries spent)
    PENDING / RETRYING / RUNNING / WAITING -> CANCELLED (TaskManager.cancel)
    FAILED / CANCELLED -> PENDING (TaskManager.retry)
    WAITING -> PENDING (its last parent COMPLETED, in that same transaction)
    WAITING -> CANCELLED (a parent FAILED or CANCELLED) -> WAITING (that parent retried)
    """

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    RETRYING = "RETRYING"
    CANCELLED = "CANCELLED"
    #: Queued with parents (`depends_on`, chain, chord) not all COMPLETED yet.
    WAITING = "WAITING"

    @property
    def is_finished(self) -> bool:
        return self in (TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED)


# Not frozen: a frozen __init__ costs 2.8 us against 0.3 us, dataclasses.replace 4 us, where
# a worker spends 25-35 us of CPU per task and makes a record per claimed task. Records
# are written only before they are shared: by the broker completing a claimed record it
# has not handed out yet (RabbitMQ: attempts and lease token, once the start is recorded),
# and by the worker moving a task claimed ahead's `started_at` to when its run begins, on
# the event loop before the run exists (a heartbeat meanwhile reads only its id and lease
# token). Once a run has it, a record is only read.
@dataclasses.dataclass(slots=True)
class Task:
    """One row of the task table.

    >>> task = tm.get_task(task_id)
    >>> task.status, task.attempts, task.result
    (<TaskStatus.COMPLETED: 'COMPLETED'>, 1, {'status': 'sent'})
    """

    id: uuid.UUID
    name: str
    queue: str
    priority: int
    status: TaskStatus
    kwargs: dict[str, Any]
    attempts: int
    max_retries: int
    run_at: datetime
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    result: Any = None
    error: str | None = None
    worker_id: str | None = None
    lease_expires_at: datetime | None = None
    lease_token: int = 0
    unique_key: str | None = None
    #: The OpenTelemetry carrier stored at .delay() ({"traceparent": ...}), or None.
    trace_context: dict[str, str] | None = None
    #: Limit keys it holds while running (`limits=[...]`), or None. Not read by the claim:
    #: None on the records a worker claims.
    limit_keys: list[str] | None = None
    #: Its fair-share key (`fair_key=...`), or None (also on claimed records).
    fair_key: str | None = None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Task:
        """Build a record from a dict row; columns added by later migrations are ignored."""
        known = {name: row[name] for name in _FIELD_NAMES if name in row}
        known["status"] = TaskStatus(known["status"])
        return cls(**known)


_FIELD_NAMES = tuple(field.name for field in dataclasses.fields(Task))


class TaskEventKind(enum.StrEnum):
    """The events of a task's history (`pgqueue.task_events.event`), each written by the
    statement that makes the change it names."""

    ENQUEUED = "enqueued"  # queued (one row, COPY, unique, cron, a RabbitMQ record)
    STARTED = "started"  # a run began (worker_id: the worker running it)
    COMPLETED = "completed"
    FAILED = "failed"  # a run failed (error: that attempt's), or the task ended FAILED
    RETRY_SCHEDULED = "retry_scheduled"  # due again at details["run_at"]
    RESCUED = "rescued"  # its worker's lease expired (worker_id: the lost worker)
    CANCELLED = "cancelled"
    RETRIED = "retried"  # put back by an operator (`tm.retry`, `pgqueue tasks retry`)
    RELEASED = "released"  # given back unstarted, at shutdown, or unknown to its worker
    READY = "ready"  # WAITING -> PENDING: its last parent settled (details["parent"])
    WAITING = "waiting"  # CANCELLED by a parent -> WAITING again: that parent was retried


@dataclasses.dataclass(frozen=True, slots=True)
class TaskEvent:
    """One change of a task's state, as `tm.history(task_id)` returns it (oldest first).

    >>> [(e.event, e.attempt, e.worker_id) for e in tm.history(task_id)]
    [('enqueued', 0, None), ('started', 1, 'host:1234:ab12'), ('completed', 1, 'host:1234:ab12')]

    `event` is one of TaskEventKind's values; `attempt` is the task's attempt count after
    the change; `error` is set on `failed` (that attempt's error), `rescued` and `released`
    (unknown task); `details` holds the rest (`run_at` of `retry_scheduled`, the previous
    `status` of `cancelled`, ...).
    """

    task_id: uuid.UUID
    id: int
    at: datetime
    event: str
    attempt: int
    worker_id: str | None = None
    error: str | None = None
    details: dict[str, Any] | None = None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> TaskEvent:
        return cls(**row)


# Not frozen: a frozen dataclass's __init__ costs 3.3 us against 1.1 us, one per row of a
# bulk queue_tasks call. Nothing mutates a NewTask once made.
@dataclasses.dataclass(slots=True)
class NewTask:
    """A task about to be queued: checked options and its arguments as JSON text."""

    id: uuid.UUID
    name: str
    queue: str
    priority: int
    max_retries: int
    kwargs_json: str
    delay: float = 0.0
    schedule_at: datetime | None = None
    #: While an unfinished task holds this key, queueing another returns that task's id.
    unique_key: str | None = None
    #: The OpenTelemetry carrier of the call as JSON text (pgqueue.telemetry), or None.
    trace_context: str | None = None
    #: Ids of the tasks it waits for (existing ones, or others queued with it): WAITING
    #: until every one is COMPLETED.
    depends_on: tuple[uuid.UUID, ...] = ()
    #: What a parent ending FAILED or CANCELLED does to it: "cancel" it, or let it "run".
    on_parent_failure: str = "cancel"
    #: Limit keys it holds while running (`limits=[...]`), or None: no limit applies.
    limit_keys: tuple[str, ...] | None = None
    #: Its fair-share key within its queue and priority (`fair_key=...`), or None.
    fair_key: str | None = None


class OutcomeKind(enum.StrEnum):
    """How a run ended, as the worker reports it to the broker."""

    COMPLETED = "completed"
    FAILED = "failed"  # retried while attempts remain (unless retryable is False)
    RESCHEDULED = "rescheduled"  # Retry/Snooze: back later, no failure recorded
    RELEASED = "released"  # shutdown: back to PENDING, the attempt not counted
    #: The worker has not registered the task's name: given back for a worker that has, the
    #: attempt not counted; FAILED once none has for the grace (give_back_unknown_tasks).
    UNKNOWN = "unknown"


@dataclasses.dataclass(frozen=True, slots=True)
class Outcome:
    """The end of one run of a task."""

    task: Task
    kind: OutcomeKind
    result_json: str = "null"
    error: str | None = None
    retryable: bool = True
    delay: float = 0.0
    refund_attempt: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class CleanupPolicy:
    """Delete finished tasks older than `retain_days`, every `interval_hours`."""

    interval_hours: float = 1.0
    retain_days: float = 7.0


@dataclasses.dataclass(frozen=True, slots=True)
class WorkerInfo:
    """What a worker tells its broker about itself beyond its id and queues (the worker
    registry shows it; `pgqueue tasks explain` reads which task names it can run)."""

    concurrency: int = 1
    task_names: tuple[str, ...] = ()
    version: str = __version__
    host: str = dataclasses.field(default_factory=socket.gethostname)
    pid: int = dataclasses.field(default_factory=os.getpid)


_id_lock = threading.Lock()
_last_id_time = (0, 0)  # (unix_ms, 12-bit sequence) of the last id made by this process
_VERSION_AND_VARIANT = (0x7 << 76) | (0b10 << 62)
_RANDOM_BITS = 0x3FFF_FFFF_FFFF_FFFF  # the 62 random bits after the variant
_SAFETY_UNKNOWN = uuid.SafeUUID.unknown  # an enum member lookup is a descriptor call in 3.11


def new_task_id() -> uuid.UUID:
    """A time-ordered UUID (version 7), so ids sort by creation and index inserts stay local.

    Within one millisecond the 12 bits after the timestamp count up (RFC 9562, method 1), so
    the ids of one process strictly increase: the rows of a bulk insert, which share their
    run_at and priority, are claimed in the order they were given.
    """
    return new_task_ids(1)[0]


def new_task_ids(count: int) -> list[uuid.UUID]:
    """`count` ids as new_task_id() makes them, in order: one lock and one read of the
    random source for the lot (bulk queueing)."""
    global _last_id_time
    if count <= 0:
        return []
    randoms = struct.unpack(f">{count}Q", os.urandom(8 * count))
    with _id_lock:
        unix_ms, sequence = time.time_ns() // 1_000_000, 0
        last_ms, last_sequence = _last_id_time
        if unix_ms <= last_ms:  # same millisecond, or the clock stepped back
            unix_ms, sequence = last_ms, last_sequence + 1
        # Reserve the whole range: each further 4,096 ids borrow the next millisecond.
        end = sequence + count - 1
        _last_id_time = (unix_ms + (end >> 12), end & 0xFFF)
    ids = []
    for offset, random_bits in enumerate(randoms, start=sequence):
        timestamp = (unix_ms + (offset >> 12)) & 0xFFFF_FFFF_FFFF
        value = (timestamp << 80) | ((offset & 0xFFF) << 64) | _VERSION_AND_VARIANT
        ids.append(_uuid_from_int(value | (random_bits & _RANDOM_BITS)))
    return ids


def _uuid_from_int(value: int) -> uuid.UUID:
    """uuid.UUID(int=value) without its argument checks, 1.5 us against 0.3 us: a bulk
    queue_tasks call makes one per row. `value` is a valid 128-bit version 7 UUID here;
    tests/test_records.py checks the result equals uuid.UUID(int=value)."""
    made = object.__new__(uuid.UUID)
    object.__setattr__(made, "int", value)
    object.__setattr__(made, "is_safe", _SAFETY_UNKNOWN)
    return made


@dataclasses.dataclass(frozen=True, slots=True)
class Limit:
    """A limit on a key, as `tm.limits()` returns it (`tm.set_limit` defines one).

    `name` is a key ("ses") or a pattern ending in "*" ("tenant:*": each key starting with
    "tenant:" has a limit of its own). `concurrency`: at most that many running at once
    (None: any). `rate` starts per `per` seconds, `burst` at most at once (None: no rate).
    """

    name: str
    concurrency: int | None = None
    rate: float | None = None
    per: float | None = None
    burst: float | None = None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Limit:
        return cls(row["name"], row["concurrency"], row["rate"], row["per"], row["burst"])
