"""One call of a task, made ready to queue: which task it names, its arguments bound to the
function's signature and validated (typed arguments rebuilt), encoded as JSON within the
size limit, and its unique key derived. `.delay()`, `TaskManager.queue_task(s)` and their
async twins all queue through here, so a call's arguments make one trip.

>>> function, name = resolve_task(send_email)          # pgqueue.tasks.definition
>>> new = build_task(function, name, options, (), {"to": "a@x"}, None, max_payload_bytes)
"""

from __future__ import annotations

import inspect
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from pgqueue.errors import InvalidTaskArguments, InvalidTaskOption
from pgqueue.payload import encode_kwargs
from pgqueue.records import NewTask, new_task_id, new_task_ids
from pgqueue.tasks.options import TaskOptions

if TYPE_CHECKING:
    from pgqueue.tasks.definition import TaskFunction

#: A unique key: a string, or a callable that derives it from the task's arguments (a dict).
UniqueKey = str | Callable[[dict[str, Any]], str]
MAX_UNIQUE_KEY_LENGTH = 1024


def build_task(
    function: TaskFunction[Any] | None,
    name: str,
    options: TaskOptions,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    unique_key: UniqueKey | None,
    max_payload_bytes: int,
    task_id: uuid.UUID | None = None,
    depends_on: tuple[uuid.UUID, ...] = (),
    on_parent_failure: str = "cancel",
) -> NewTask:
    """The row of one call: arguments bound, validated and encoded; its unique key; the
    parents it waits for (checked ids: `check_depends_on`)."""
    if function is not None:
        if args or function.typed_arguments is not None or function.kwargs_problem(kwargs):
            kwargs = bind_arguments(function, args, kwargs)
        # else: keyword arguments the signature takes as they are (a set check, the
        # worker's own): binding them would only reorder them, at 5 us a row in bulk.
    elif args:
        raise InvalidTaskArguments(
            f"{name} is queued by name, so its signature is unknown here: pass keyword arguments"
        )
    if unique_key is None and function is not None:
        unique_key = function.unique_key
    timing = options.timing
    return NewTask(
        id=task_id or new_task_id(),
        name=name,
        queue=options.queue,
        priority=options.priority,
        max_retries=options.max_retries,
        kwargs_json=encode_kwargs(name, kwargs, max_payload_bytes),
        delay=timing.delay,
        schedule_at=timing.schedule_at,
        unique_key=None if unique_key is None else derive_unique_key(name, unique_key, kwargs),
        depends_on=depends_on,
        on_parent_failure=on_parent_failure,
    )


def plain_kwargs_check(
    function: TaskFunction[Any] | None,
) -> Callable[[Mapping[str, Any]], str | None] | None:
    """How to tell the calls of `function` that `plain_task` may build (its kwargs_problem:
    None for keyword arguments the signature takes as they are), or None when none may
    (typed arguments, a unique key derived from them, or a task queued by name)."""
    if function is None or function.typed_arguments is not None:
        return None
    if function.unique_key is not None:
        return None
    return function.kwargs_problem


def plain_task(
    task_id: uuid.UUID,
    name: str,
    options: TaskOptions,
    kwargs: Mapping[str, Any],
    max_payload_bytes: int,
    depends_on: tuple[uuid.UUID, ...] = (),
    on_parent_failure: str = "cancel",
) -> NewTask:
    """build_task for keyword arguments that need no binding, typing or key (see
    plain_kwargs_check): bulk queueing and workflows are bound by this loop, 2 us a row."""
    timing = options.timing
    return NewTask(
        task_id,
        name,
        options.queue,
        options.priority,
        options.max_retries,
        encode_kwargs(name, kwargs, max_payload_bytes),
        timing.delay,
        timing.schedule_at,
        depends_on=depends_on,
        on_parent_failure=on_parent_failure,
    )


def build_tasks(
    function: TaskFunction[Any] | None,
    name: str,
    options: TaskOptions,
    rows: Sequence[Mapping[str, Any]],
    unique_key: UniqueKey | None,
    max_payload_bytes: int,
) -> list[NewTask]:
    """The rows of a bulk call (keyword arguments only); an error names the row."""
    new_tasks = []
    ids = new_task_ids(len(rows))
    plain_check = plain_kwargs_check(function) if unique_key is None else None
    for index, row in enumerate(rows):
        if type(row) is not dict and not isinstance(row, Mapping):  # dict: no ABC check
            raise InvalidTaskArguments(
                f"row {index} of queue_tasks is a {type(row).__name__}; give a dict of arguments"
            )
        try:
            if plain_check is not None and plain_check(row) is None:
                new_tasks.append(plain_task(ids[index], name, options, row, max_payload_bytes))
                continue
            new_tasks.append(
                build_task(
                    function,
                    name,
                    options,
                    (),
                    dict(row),
                    unique_key,
                    max_payload_bytes,
                    task_id=ids[index],
                )
            )
        except (InvalidTaskArguments, InvalidTaskOption) as error:
            raise type(error)(f"row {index}: {error}") from error
    return new_tasks


def check_depends_on(depends_on: Any) -> tuple[uuid.UUID, ...]:
    """The parent ids of `depends_on=[...]` (UUIDs or their str()), each once, in order."""
    if depends_on is None:
        return ()
    if isinstance(depends_on, str | bytes | uuid.UUID) or not isinstance(
        depends_on, Sequence | set | frozenset
    ):
        raise InvalidTaskArguments(
            f"depends_on takes a list of task ids, not {type(depends_on).__name__}"
        )
    parents: dict[uuid.UUID, None] = {}
    for parent in depends_on:
        if isinstance(parent, uuid.UUID):
            parents[parent] = None
            continue
        if not isinstance(parent, str):
            raise InvalidTaskArguments(
                f"depends_on holds task ids (UUID or str), not {type(parent).__name__}"
            )
        try:
            parents[uuid.UUID(parent)] = None
        except ValueError:
            raise InvalidTaskOption(f"depends_on: {parent[:80]!r} is not a task id") from None
    return tuple(parents)


def bind_arguments(
    function: TaskFunction[Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> dict[str, Any]:
    """Arguments as a keyword dict, refused as a call of the function would refuse them;
    typed arguments (pydantic models, dataclasses) validated."""
    signature = function.signature
    try:
        bound = signature.bind(*args, **kwargs)
    except TypeError as error:
        raise InvalidTaskArguments(f"{function.name}: {error}") from None
    arguments: dict[str, Any] = {}
    for name, value in bound.arguments.items():
        kind = signature.parameters[name].kind
        if kind is inspect.Parameter.VAR_KEYWORD:
            arguments.update(value)
        elif kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.POSITIONAL_ONLY):
            raise InvalidTaskArguments(
                f"{function.name}: parameter {name!r} is positional-only or *args, which a "
                "queued task cannot store; make it a keyword parameter"
            )
        else:
            arguments[name] = value
    if function.typed_arguments is not None:
        return function.typed_arguments.validate(arguments)
    return arguments


def derive_unique_key(task_name: str, spec: UniqueKey, kwargs: dict[str, Any]) -> str:
    """The unique key of one call: `spec` itself, or what it returns for the arguments."""
    key = spec(dict(kwargs)) if callable(spec) else spec
    if not isinstance(key, str):
        raise InvalidTaskArguments(
            f"unique_key of {task_name} must be a string (or a callable returning one), "
            f"not {type(key).__name__}"
        )
    if not key or len(key) > MAX_UNIQUE_KEY_LENGTH or "\x00" in key:
        raise InvalidTaskOption(
            f"unique_key of {task_name} must be 1 to {MAX_UNIQUE_KEY_LENGTH} characters "
            f"without NUL, not {key[:80]!r}"
        )
    return key
