"""Workflows before they are queued: signatures (`task.s(...)`) and the chain, group and chord
that arrange them. No I/O here: `.delay()` hands the steps, each with the steps it waits
for, to the producer, which queues the whole workflow in one transaction.

>>> ids = chain(fetch.s(url=u), parse.s(path=p), store.s()).delay()   # each after the one before
>>> ids = group(resize.s(size=64), resize.s(size=128)).delay()        # side by side
>>> ids = chord([resize.s(size=s) for s in sizes], notify.s()).delay() # notify after them all

Workflows nest: `chain(fetch.s(), group(a.s(), b.s()), report.s())` runs `a` and `b` after
`fetch`, and `report` after both. `.delay()` returns the ids in the order of the
signatures as written (a chord's callback last).
"""

from __future__ import annotations

import abc
import dataclasses
import datetime
import uuid
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from pgqueue.errors import InvalidTaskArguments, InvalidTaskOption
from pgqueue.tasks.call import check_depends_on
from pgqueue.tasks.options import (
    Delay,
    check_fair_key,
    check_limit_keys,
    check_on_parent_failure,
)

if TYPE_CHECKING:
    from pgqueue.tasks.definition import TaskFunction


class WorkflowProducer(Protocol):
    """What a workflow's `.delay()` queues through: the default TaskManager."""

    def queue_workflow(self, steps: Sequence[Step], connection: Any = None) -> list[uuid.UUID]: ...

    async def aqueue_workflow(
        self, steps: Sequence[Step], connection: Any = None
    ) -> list[uuid.UUID]: ...


@dataclasses.dataclass(frozen=True, slots=True)
class Step:
    """One task of a workflow: its signature and the earlier steps it waits for (indexes)."""

    signature: Signature
    after: tuple[int, ...] = ()


@dataclasses.dataclass(frozen=True, slots=True)
class _Shape:
    """A workflow flattened: its steps, those that wait for nothing inside it (heads) and
    those nothing inside it waits for (tails)."""

    steps: tuple[Step, ...]
    heads: tuple[int, ...]
    tails: tuple[int, ...]


class Workflow(abc.ABC):
    """A chain, group or chord: `.delay()` queues all its tasks in one transaction (the
    caller's own with `connection=`) and returns their ids in the order written."""

    @abc.abstractmethod
    def _shape(self) -> _Shape: ...

    def steps(self) -> list[Step]:
        """The tasks to queue, each after the ones it waits for."""
        return list(self._shape().steps)

    def delay(self, connection: Any = None) -> list[uuid.UUID]:
        """Queue the workflow; the ids of its tasks, in the order written.

        >>> first, second = chain(fetch.s(url=u), parse.s()).delay()
        """
        from pgqueue.tasks.queueing import workflow_producer

        return workflow_producer().queue_workflow(self.steps(), connection)

    async def adelay(self, connection: Any = None) -> list[uuid.UUID]:
        """Queue the workflow from async code."""
        from pgqueue.tasks.queueing import workflow_producer

        return await workflow_producer().aqueue_workflow(self.steps(), connection)


class Signature:
    """One call of a task, not queued yet: `send_email.s(to="a@x")`. Options as .delay()
    takes them (queue, priority, max_retries, delay, schedule_at), plus `depends_on` (ids of
    tasks queued before) and `on_parent_failure` ("cancel" or "run")."""

    def __init__(
        self,
        task: TaskFunction[Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        queue: str | None = None,
        priority: int | None = None,
        max_retries: int | None = None,
        delay: Delay | None = None,
        schedule_at: datetime.datetime | None = None,
        depends_on: Iterable[uuid.UUID | str] | None = None,
        on_parent_failure: str = "cancel",
        limits: Iterable[str] | None = None,
        fair_key: str | None = None,
    ) -> None:
        self.task = task
        self.args = args
        self.kwargs = kwargs
        self.queue = queue
        self.priority = priority
        self.max_retries = max_retries
        self.delay_seconds = delay
        self.schedule_at = schedule_at
        # The defaults skip their checks: a chord's header makes thousands of signatures
        # that give none of these options.
        self.depends_on = () if depends_on is None else check_depends_on(depends_on)
        self.on_parent_failure = on_parent_failure
        if on_parent_failure != "cancel":
            self.on_parent_failure = check_on_parent_failure(on_parent_failure)
        #: Limit keys (added to the task's own) and fair key of this call (limits.sql).
        self.limits = None if limits is None else check_limit_keys(limits)
        self.fair_key = None if fair_key is None else check_fair_key(fair_key)

    def __repr__(self) -> str:
        return f"{self.task.name}.s(**{self.kwargs!r})"

    def _shape(self) -> _Shape:
        return _Shape((Step(self),), (0,), (0,))

    def delay(self, connection: Any = None) -> uuid.UUID:
        """Queue this one call (with its depends_on); its id."""
        from pgqueue.tasks.queueing import workflow_producer

        return workflow_producer().queue_workflow([Step(self)], connection)[0]


Part = Workflow | Signature


def _shape_of(part: Any) -> _Shape:
    if isinstance(part, Workflow | Signature):
        return part._shape()
    raise InvalidTaskArguments(
        f"workflows are made of signatures (task.s(...)), chains, groups and chords, not "
        f"{type(part).__name__}"
    )


def _joined(shapes: Sequence[_Shape], link: bool) -> _Shape:
    """Shapes one after another (link: each part's heads wait for the previous tails)."""
    steps: list[Step] = []
    heads: list[int] = []
    tails: list[int] = []
    for index, shape in enumerate(shapes):
        offset = len(steps)
        before = tuple(tails) if link and index > 0 else ()
        head_set = set(shape.heads) if before else set()
        for position, step in enumerate(shape.steps):
            after = step.after
            if after and offset:
                after = tuple([offset + i for i in after])
            if position in head_set:
                after = before + after
            # A step that waits for nothing new is kept as it is: a group of thousands of
            # signatures is joined without a new object per step.
            steps.append(step if after is step.after else Step(step.signature, after))
        if not link or index == 0:
            heads.extend([offset + i for i in shape.heads])
        shifted_tails = [offset + i for i in shape.tails]
        if link:
            tails = shifted_tails
        else:
            tails.extend(shifted_tails)
    return _Shape(tuple(steps), tuple(heads), tuple(tails))


class chain(Workflow):
    """Tasks one after another: each waits for the one before (all of a group before).

    >>> fetched, parsed, stored = chain(fetch.s(url=u), parse.s(path=p), store.s()).delay()
    """

    def __init__(self, *parts: Part) -> None:
        if not parts:
            raise InvalidTaskOption("chain() needs at least one signature")
        self.parts = parts

    def _shape(self) -> _Shape:
        return _joined([_shape_of(part) for part in self.parts], link=True)


class group(Workflow):
    """Tasks side by side, none waiting for another; a chain or chord waits for them all.

    >>> ids = group(resize.s(size=64), resize.s(size=128)).delay()
    """

    def __init__(self, *parts: Part) -> None:
        if len(parts) == 1 and not isinstance(parts[0], Workflow | Signature):
            parts = tuple(parts[0])  # group([a.s(), b.s()]) as well as group(a.s(), b.s())
        if not parts:
            raise InvalidTaskOption("group() needs at least one signature")
        self.parts = parts

    def _shape(self) -> _Shape:
        signatures = [part for part in self.parts if isinstance(part, Signature)]
        if len(signatures) == len(self.parts):
            # Signatures alone (a chord's header of thousands): each its own head and tail,
            # one Step each, without a shape per signature to join.
            everyone = tuple(range(len(signatures)))
            return _Shape(tuple([Step(part) for part in signatures]), everyone, everyone)
        return _joined([_shape_of(part) for part in self.parts], link=False)


class chord(Workflow):
    """A group (the header) and a callback that runs once after every one of them completed;
    it reads their results with `current_task().parent_results()`.

    >>> ids = chord([resize.s(size=s) for s in (64, 128)], notify.s()).delay()
    >>> callback_id = ids[-1]
    """

    def __init__(self, header: Iterable[Part], callback: Part) -> None:
        self.header = group(*header) if not isinstance(header, group) else header
        self.callback = callback

    def _shape(self) -> _Shape:
        return _joined([self.header._shape(), _shape_of(self.callback)], link=True)
