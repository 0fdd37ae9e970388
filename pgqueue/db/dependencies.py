"""Workflows from the producer's side: the first status of tasks queued with parents, and the
rows of their edges (pgqueue.task_dependencies).

Queueing tasks with `depends_on` runs in one transaction: the parents named that exist
already are locked `FOR SHARE` (in id order, as completions lock them) and read, then the
tasks and their edges are written (COPY). The lock orders this transaction with any that
finishes one of those parents: a completion that commits first is read here (the parent
counts as done); one that waits for this commit reads the new edges afterwards, in the
statement that releases the children (sql/functions.sql, release_children).

>>> plan = plan_workflow(new_tasks, {parent_id: "COMPLETED"})
>>> plan.first_status(new_tasks[0])
'PENDING'
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from pgqueue.errors import InvalidTaskOption, PgQueueError
from pgqueue.records import NewTask

#: The most `parent_results()` returns, counted as the results' stored size in the task
#: table (JSON, compressed when large): 64 MiB, about a million small results. Above it,
#: the call raises and names the bound; read the parents' records instead.
MAX_PARENT_RESULTS_BYTES = 64 * 1024 * 1024

#: Statuses of a parent that fail it for a child with on_parent_failure "cancel".
_FAILED = frozenset({"FAILED", "CANCELLED"})
#: COPY text's NULL.
_NULL = "\\N"
#: Ids shown in an error before "and N more".
_SHOWN_IDS = 5


def external_parents(tasks: Sequence[NewTask]) -> list[uuid.UUID]:
    """The parents named that are not queued in this batch, in id order (the lock order)."""
    # Keyed by the ids' integers: hashing a UUID is a Python call, an int's is not, and a
    # chord of 10,000 hashes its ids many times over.
    batch = {task.id.int for task in tasks}
    outside = {
        parent.int: parent
        for task in tasks
        for parent in task.depends_on
        if parent.int not in batch
    }
    return sorted(outside.values(), key=lambda parent: parent.bytes)


@dataclasses.dataclass(slots=True)
class _First:
    status: str
    parents_left: int
    cancelled_by: uuid.UUID | None = None
    error: str | None = None


#: The first status of every task without parents (never changed once made).
_READY = _First("PENDING", 0)


class WorkflowPlan:
    """Each new task's first status: PENDING (no parent left), WAITING, or CANCELLED (a
    parent already FAILED or CANCELLED, and it said on_parent_failure "cancel")."""

    def __init__(self, first: dict[int, _First]) -> None:
        self._first = first  # by the integer of the task's id

    def first_status(self, task: NewTask) -> str:
        return self._first[task.id.int].status

    def copy_suffix(self, task: NewTask, now: str) -> str:
        """The extra COPY fields of `copy_workflow_tasks` for one task (after run_at)."""
        first = self._first[task.id.int]
        cancelled = first.status == "CANCELLED"
        return (
            f"{first.status}\t{first.parents_left}\t{task.on_parent_failure}\t"
            f"{first.cancelled_by or _NULL}\t{first.error or _NULL}\t"
            f"{now if cancelled else _NULL}"
        )


def plan_workflow(tasks: Sequence[NewTask], parent_status: Mapping[uuid.UUID, str]) -> WorkflowPlan:
    """The first status of each task, from the statuses of the existing parents (read under
    their lock) and of the batch's own; refuses missing parents and cycles (ValueError)."""
    missing = [parent for parent in external_parents(tasks) if parent not in parent_status]
    if missing:
        raise InvalidTaskOption(f"depends_on names tasks that do not exist: {_ids(missing)}")
    # Integers of the ids as keys throughout (see external_parents).
    existing = {parent.int: status for parent, status in parent_status.items()}
    first: dict[int, _First] = {}
    for task in _topological(tasks):
        if not task.depends_on:
            # Most of a chord: one shared record, not one per task.
            first[task.id.int] = _READY
            continue
        left, failed_by = 0, None
        for parent in task.depends_on:
            known = first.get(parent.int)
            status = known.status if known is not None else existing[parent.int]
            if status == "COMPLETED" or (status in _FAILED and task.on_parent_failure == "run"):
                continue
            left += 1
            if status in _FAILED and failed_by is None:
                failed_by = (parent, status)
        if failed_by is not None:
            parent, status = failed_by
            error = f"cancelled: parent task {parent} ended {status}"
            first[task.id.int] = _First("CANCELLED", left, parent, error)
        else:
            first[task.id.int] = _First("WAITING" if left else "PENDING", left)
    return WorkflowPlan(first)


def _topological(tasks: Sequence[NewTask]) -> Sequence[NewTask]:
    """The batch with every task after its parents of the batch; a cycle is refused."""
    batch = {task.id.int for task in tasks}
    placed: set[int] = set()
    for task in tasks:
        for parent in task.depends_on:
            if parent.int in batch and parent.int not in placed:
                return _sorted(tasks, batch)
        placed.add(task.id.int)
    # Already in order: a workflow's steps each come after the steps they wait for.
    return tasks


def _sorted(tasks: Sequence[NewTask], batch: set[int]) -> list[NewTask]:
    """_topological for a batch out of order (Kahn's algorithm)."""
    waiting_on: dict[int, int] = {}
    children: dict[int, list[NewTask]] = {}
    for task in tasks:
        inside = 0
        for parent in task.depends_on:
            if parent.int in batch:
                inside += 1
                children.setdefault(parent.int, []).append(task)
        waiting_on[task.id.int] = inside
    ready = [task for task in tasks if waiting_on[task.id.int] == 0]
    ordered: list[NewTask] = []
    while ready:
        task = ready.pop()
        ordered.append(task)
        for child in children.get(task.id.int, ()):
            waiting_on[child.id.int] -= 1
            if waiting_on[child.id.int] == 0:
                ready.append(child)
    if len(ordered) < len(tasks):
        stuck = [task.id for task in tasks if waiting_on[task.id.int] > 0]
        raise InvalidTaskOption(
            f"depends_on makes a cycle: these tasks would wait for each other forever: "
            f"{_ids(stuck)}"
        )
    return ordered


#: Binary COPY: the signature and header extension, then per edge two fields of 16 bytes.
_BINARY_HEADER = b"PGCOPY\n\xff\r\n\x00" + bytes(8)
_EDGE_START = b"\x00\x02\x00\x00\x00\x10"  # 2 fields, the first of 16 bytes
_FIELD_16 = b"\x00\x00\x00\x10"
_BINARY_TRAILER = b"\xff\xff"


def edge_rows(tasks: Sequence[NewTask]) -> Iterator[bytes]:
    """The rows of `copy_task_dependencies` in COPY's binary format, in chunks: no text
    to parse for the server, and one join per child for the Python side (a chord's
    callback has all its parents in one)."""
    yield _BINARY_HEADER
    parts: list[bytes] = []
    count = 0
    for task in tasks:
        if not task.depends_on:
            continue
        tail = _FIELD_16 + task.id.bytes
        # Each row: its start, the parent, the child's field; joined without a row object.
        parts.append(_EDGE_START)
        parts.append((tail + _EDGE_START).join([parent.bytes for parent in task.depends_on]))
        parts.append(tail)
        count += len(task.depends_on)
        if count >= 2000:
            yield b"".join(parts)
            parts, count = [], 0
    parts.append(_BINARY_TRAILER)
    yield b"".join(parts)


def _ids(ids: Sequence[uuid.UUID]) -> str:
    shown = ", ".join(str(task_id) for task_id in ids[:_SHOWN_IDS])
    more = len(ids) - _SHOWN_IDS
    return shown + (f" and {more} more" if more > 0 else "")


def collect_parent_results(
    task_id: uuid.UUID, rows: Iterable[tuple[Any, ...]]
) -> dict[uuid.UUID, Any]:
    """{parent id: result} from the rows of `parent_results` (parent, result text, total
    stored size); refused above MAX_PARENT_RESULTS_BYTES."""
    results: dict[uuid.UUID, Any] = {}
    for parent, result, total in rows:
        if total is not None and total > MAX_PARENT_RESULTS_BYTES:
            raise PgQueueError(
                f"the results of the parents of task {task_id} take {total} bytes, over the "
                f"{MAX_PARENT_RESULTS_BYTES} that parent_results() returns; read them with "
                "tm.get_task(parent_id) instead"
            )
        results[parent] = None if result is None else json.loads(result)
    return results
