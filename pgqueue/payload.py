"""JSON encoding of task arguments and results: the only format pgqueue stores (no pickle)."""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import enum
import json
import re
import traceback
import uuid
from collections.abc import Mapping
from typing import Any

from pgqueue.errors import InvalidTaskArguments, InvalidTaskOption, first_line


def _encode_extra(value: Any) -> Any:
    """Types json does not know but users pass every day."""
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    model_dump = getattr(value, "model_dump", None)
    if callable(model_dump):  # pydantic v2 models
        return model_dump(mode="json")
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


# JSON escapes NUL as \u0000; an even run of backslashes before it is an escaped backslash.
_ESCAPED_NUL = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")

_encoder = json.JSONEncoder(
    default=_encode_extra, ensure_ascii=False, allow_nan=False, separators=(",", ":")
)


def dumps(value: Any) -> str:
    """JSON text of a value, with pgqueue's extra types; raises TypeError/ValueError."""
    text = _encoder.encode(value)
    if "\\u0000" in text and _ESCAPED_NUL.search(text):
        raise ValueError("contains a NUL character, which PostgreSQL cannot store")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("contains a lone surrogate, which is not valid Unicode") from None
    return text


def encode_kwargs(task_name: str, kwargs: Mapping[str, Any], max_bytes: int) -> str:
    """The JSON of a task's arguments, or an error naming the argument that is wrong."""
    if not kwargs:  # no arguments, the common bulk case: nothing to encode or measure
        return "{}"
    try:
        text = dumps(kwargs if type(kwargs) is dict else dict(kwargs))
    except (TypeError, ValueError) as error:
        raise _argument_error(task_name, kwargs, error) from error
    size = len(text.encode("utf-8")) if not text.isascii() else len(text)
    if size > max_bytes:
        raise InvalidTaskOption(
            f"arguments of {task_name} are {size} bytes of JSON, over the limit of "
            f"{max_bytes} (PGQUEUE_MAX_PAYLOAD_BYTES); store large data elsewhere and pass a key"
        )
    return text


def _argument_error(
    task_name: str, kwargs: Mapping[str, Any], error: Exception
) -> InvalidTaskArguments | InvalidTaskOption:
    """Find which argument broke the encoding, to name it in the error."""
    for name, value in kwargs.items():
        try:
            dumps(value)
        except TypeError as err:
            return InvalidTaskArguments(f"argument {name!r} of {task_name}: {err}")
        except ValueError as err:
            return InvalidTaskOption(f"argument {name!r} of {task_name}: {err}")
        if "\x00" in name:
            return InvalidTaskOption(f"an argument name of {task_name} contains a NUL character")
    if isinstance(error, TypeError):
        return InvalidTaskArguments(f"arguments of {task_name}: {error}")
    return InvalidTaskOption(f"arguments of {task_name}: {error}")


def encode_result(value: Any) -> str:
    """JSON of a task's return value; a value JSON cannot hold is stored as its repr."""
    if value is None:  # most tasks return nothing: skip the encoder on the hot path
        return "null"
    try:
        return dumps(value)
    except (TypeError, ValueError):
        return dumps({"unserialisable_result": repr(value)[:1000]})


#: The most characters of an error pgqueue stores: its head (type and message) and its
#: tail (the traceback's last frames, where it was raised), cut in between with a marker.
MAX_ERROR_CHARS = 32_768
_ERROR_HEAD_CHARS = 8_192


def storable_text(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    """`text` as PostgreSQL can store it: NUL written as \\x00, lone surrogates as \\udcXX,
    and at most `limit` characters (the middle cut, with a marker saying how much)."""
    if len(text) > limit:
        head = min(_ERROR_HEAD_CHARS, limit // 4)
        marker = f"\n\n[... cut by pgqueue: this text had {len(text):,} characters ...]\n\n"
        tail = limit - head - len(marker)
        text = text[:head] + marker + text[-tail:]
    if "\x00" in text:
        text = text.replace("\x00", "\\x00")
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def error_message(error: BaseException) -> str:
    """`str(error)`, or a description when that raises (a user's broken __str__)."""
    try:
        return str(error)
    except Exception as broken:
        return f"<str() of this {type(error).__name__} raised {type(broken).__name__}>"


def error_text(error: BaseException) -> str:
    """What is stored for a failed run: "Type: message", a blank line and the traceback,
    storable and bounded (storable_text), whatever the exception holds."""
    try:
        trace = "".join(traceback.format_exception(error))
    except Exception as broken:  # a traceback that cannot be formatted still leaves the type
        trace = f"<the traceback could not be formatted: {type(broken).__name__}>"
    return storable_text(f"{type(error).__name__}: {error_message(error)}\n\n{trace}")


def error_summary(error: BaseException, limit: int = 300) -> str:
    """The first line of an error's message, storable and short: for log lines."""
    first = first_line(error_message(error), limit)
    return storable_text(f"{type(error).__name__}: {first}" if first else type(error).__name__)
