"""Typed task arguments: parameters annotated with pydantic models or dataclasses are checked
at .delay() time (a clear error naming the field) and rebuilt as those types in the worker.

>>> class Order(pydantic.BaseModel):
...     id: int
...     lines: list[str]
>>> @AsyncTask()
... def ship(order: Order) -> None:
...     assert isinstance(order, Order)       # in the worker too
>>> ship.delay(order=Order(id=1, lines=["book"]))   # or order={"id": 1, "lines": ["book"]}
"""

from __future__ import annotations

import dataclasses
import inspect
import sys
import types
import typing
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from pgqueue.errors import InvalidTaskArguments

if TYPE_CHECKING:  # imported when a task has a structured parameter, not before
    import pydantic

#: Errors listed in one message at most; the rest are counted.
MAX_LISTED_ERRORS = 3


def _is_structured(annotation: Any) -> bool:
    """A pydantic model or a dataclass, alone or inside Optional/Union/list/dict/..."""
    if isinstance(annotation, type):
        # No pydantic imported yet means no class can be a pydantic model.
        model = getattr(sys.modules.get("pydantic"), "BaseModel", None)
        return dataclasses.is_dataclass(annotation) or (
            model is not None and issubclass(annotation, model)
        )
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _is_structured(typing.get_args(annotation)[0])
    if origin is not None or isinstance(annotation, types.UnionType):
        return any(_is_structured(argument) for argument in typing.get_args(annotation))
    return False


def _annotations(fn: Callable[..., Any], signature: inspect.Signature) -> dict[str, Any]:
    try:
        return typing.get_type_hints(fn, include_extras=True)
    except Exception:  # a name only the function's local scope knows: use what is resolved
        return {
            name: parameter.annotation
            for name, parameter in signature.parameters.items()
            if not isinstance(parameter.annotation, str)
        }


def describe(error: pydantic.ValidationError) -> str:
    """The fields at fault, each with pydantic's reason: "field 'address.zip': ..."."""
    problems = []
    for item in error.errors()[:MAX_LISTED_ERRORS]:
        location = ".".join(str(part) for part in item["loc"])
        where = f"field {location!r}" if location else "value"
        problems.append(f"{where}: {item['msg']}")
    more = error.error_count() - MAX_LISTED_ERRORS
    if more > 0:
        problems.append(f"and {more} more")
    return "; ".join(problems)


class TypedArguments:
    """The structured parameters of one task, each with the pydantic adapter of its type."""

    def __init__(self, task_name: str, annotations: dict[str, Any]) -> None:
        import pydantic

        self.task_name = task_name
        self.annotations = annotations
        self.adapters = {name: pydantic.TypeAdapter(hint) for name, hint in annotations.items()}

    @classmethod
    def of(
        cls, task_name: str, fn: Callable[..., Any], signature: inspect.Signature
    ) -> TypedArguments | None:
        """The typed parameters of `fn`, or None when it has none (no cost at .delay())."""
        hints = _annotations(fn, signature)
        typed = {
            name: hints[name]
            for name in signature.parameters
            if name in hints and _is_structured(hints[name])
        }
        return cls(task_name, typed) if typed else None

    def validate(self, arguments: dict[str, Any]) -> dict[str, Any]:
        """Check the typed arguments of a .delay() call; they are stored as their JSON form."""
        import pydantic

        checked = dict(arguments)
        for name, adapter in self.adapters.items():
            if name not in checked:
                continue
            try:
                value = adapter.validate_python(checked[name])
            except pydantic.ValidationError as error:
                raise InvalidTaskArguments(
                    f"argument {name!r} of {self.task_name} is not a valid "
                    f"{_type_name(self.annotations[name])}: {describe(error)}"
                ) from None
            checked[name] = adapter.dump_python(value, mode="json")
        return checked

    def problem(self, kwargs: Mapping[str, Any]) -> str | None:
        """Why stored arguments cannot be rebuilt as the annotated types, or None."""
        import pydantic

        for name, adapter in self.adapters.items():
            if name in kwargs:
                try:
                    adapter.validate_python(kwargs[name])
                except pydantic.ValidationError as error:
                    return f"argument {name!r}: {describe(error)}"
        return None

    def decode(self, kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """The stored arguments rebuilt as the annotated types (in the worker)."""
        decoded = dict(kwargs)
        for name, adapter in self.adapters.items():
            if name in decoded:
                decoded[name] = adapter.validate_python(decoded[name])
        return decoded


def _type_name(annotation: Any) -> str:
    return getattr(annotation, "__name__", None) or str(annotation)
