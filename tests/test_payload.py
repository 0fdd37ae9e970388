"""JSON encoding of task arguments and results: extra types, refusals naming the argument,
the size limit, and the round trip through jsonb."""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import enum
import json
import uuid
from typing import Any

import psycopg
import pydantic
import pytest

from pgqueue.errors import InvalidTaskArguments, InvalidTaskOption, PgQueueError
from pgqueue.payload import dumps, encode_kwargs, encode_result
from pgqueue.task_manager import TaskManager


class Colour(enum.Enum):
    RED = "red"


class User(pydantic.BaseModel):
    name: str
    born: datetime.date


@dataclasses.dataclass
class Point:
    x: int
    y: int


def test_extra_types_are_encoded() -> None:
    value = {
        "when": datetime.datetime(2027, 1, 1, 9, 30, tzinfo=datetime.UTC),
        "day": datetime.date(2027, 1, 1),
        "id": uuid.UUID(int=7),
        "price": decimal.Decimal("10.50"),
        "colour": Colour.RED,
        "tags": ("a", "b"),
        "user": User(name="Ann", born=datetime.date(1990, 5, 1)),
        "point": Point(1, 2),
    }
    assert json.loads(dumps(value)) == {
        "when": "2027-01-01T09:30:00+00:00",
        "day": "2027-01-01",
        "id": "00000000-0000-0000-0000-000000000007",
        "price": "10.50",
        "colour": "red",
        "tags": ["a", "b"],
        "user": {"name": "Ann", "born": "1990-05-01"},
        "point": {"x": 1, "y": 2},
    }


def test_non_serialisable_argument_is_named() -> None:
    with pytest.raises(InvalidTaskArguments, match=r"argument 'callback' of t\.x: .*function") as e:
        encode_kwargs("t.x", {"ok": 1, "callback": lambda: None}, 1000)
    assert isinstance(e.value, TypeError) and isinstance(e.value, PgQueueError)
    with pytest.raises(TypeError, match=r"argument 'conn'.*object"):
        encode_kwargs("t.x", {"conn": object()}, 1000)


def test_nul_and_lone_surrogates_are_refused_naming_the_argument() -> None:
    with pytest.raises(InvalidTaskOption, match=r"argument 'text' of t\.x: contains a NUL"):
        encode_kwargs("t.x", {"text": "a\x00b"}, 1000)
    with pytest.raises(ValueError, match=r"argument 'text'.*lone surrogate"):
        encode_kwargs("t.x", {"text": "\ud800"}, 1000)
    with pytest.raises(ValueError, match=r"argument name.*NUL"):
        encode_kwargs("t.x", {"bad\x00name": 1}, 1000)
    with pytest.raises(ValueError, match=r"argument 'x'.*Out of range float"):
        encode_kwargs("t.x", {"x": float("nan")}, 1000)


def test_escaped_backslash_before_u0000_is_not_a_nul() -> None:
    text = "literal \\u0000 text"  # a backslash then 'u0000': six ordinary characters
    assert json.loads(encode_kwargs("t.x", {"s": text}, 1000)) == {"s": text}


def test_size_limit_counts_utf8_bytes() -> None:
    encode_kwargs("t.x", {"s": "é" * 10}, len('{"s":""}') + 20)
    with pytest.raises(InvalidTaskOption, match="29 bytes of JSON, over the limit of 28"):
        encode_kwargs("t.x", {"s": "é" * 10 + "x"}, 28)


def test_result_that_json_cannot_hold_is_kept_as_repr() -> None:
    assert json.loads(encode_result({"a": 1})) == {"a": 1}
    assert json.loads(encode_result(object()))["unserialisable_result"].startswith("<object")


def test_arguments_round_trip_through_the_table(
    tm: TaskManager, db: psycopg.Connection[Any]
) -> None:
    kwargs: dict[str, Any] = {
        "text": "  spaces, 'quotes', \"double\", ünïcödé 日本 \\ \n\t  ",
        "big": 2**53 + 1,
        "nested": {"list": [1, 2.5, None, True], "empty": {}},
        "when": datetime.datetime(2027, 1, 1, tzinfo=datetime.UTC),
    }
    task_id = tm.queue_task("tests.by_name", **kwargs)
    task = tm.get_task(task_id)
    assert task is not None
    assert task.kwargs == {**kwargs, "when": "2027-01-01T00:00:00+00:00"}
    stored = db.execute("SELECT kwargs->>'text' FROM pgqueue.tasks").fetchone()
    assert stored == (kwargs["text"],)
