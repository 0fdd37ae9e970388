"""Typed arguments: pydantic models and dataclasses checked at .delay(), rebuilt in the worker."""

from __future__ import annotations

import dataclasses
import datetime
import json
from typing import Any

import pydantic
import pytest
from support.database import statuses
from support.waiting import wait_until

from pgqueue import AsyncTask, TaskManager
from pgqueue.errors import InvalidTaskArguments
from pgqueue.records import new_task_id


class Address(pydantic.BaseModel):
    street: str
    zip: int


class Order(pydantic.BaseModel):
    id: int
    placed: datetime.datetime
    address: Address
    lines: list[str] = []


@dataclasses.dataclass
class Point:
    x: float
    y: float


@AsyncTask(queue="typed")
async def ship(order: Order, note: str = "") -> dict[str, Any]:
    assert isinstance(order, Order) and isinstance(order.address, Address)
    assert isinstance(order.placed, datetime.datetime)
    return {"type": type(order).__name__, "zip": order.address.zip, "lines": order.lines}


@AsyncTask(queue="typed")
def distance(a: Point, b: Point | None = None) -> dict[str, Any]:
    assert isinstance(a, Point)
    other = b or Point(0, 0)
    return {"types": [type(a).__name__, type(other).__name__], "dx": a.x - other.x}


@AsyncTask(queue="typed")
def plain(n: int) -> int:
    return n


def order() -> Order:
    return Order(
        id=7,
        placed=datetime.datetime(2026, 1, 2, 3, 4, tzinfo=datetime.UTC),
        address=Address(street="Main", zip=75001),
        lines=["book"],
    )


def test_a_model_round_trips(tm: TaskManager, start_worker, db):
    task_id = ship.delay(order=order(), note="hi")
    stored = db.execute("SELECT kwargs FROM pgqueue.tasks WHERE id = %s", (task_id,)).fetchone()[0]
    assert stored["order"]["address"] == {"street": "Main", "zip": 75001}
    start_worker(queues=["typed"])
    assert tm.wait(task_id, timeout=10) == {"type": "Order", "zip": 75001, "lines": ["book"]}


def test_a_dict_is_checked_and_accepted(tm: TaskManager, start_worker):
    task_id = ship.delay(
        order={"id": "8", "placed": "2026-01-02T03:04:00Z", "address": {"street": "S", "zip": "1"}}
    )
    start_worker(queues=["typed"])
    assert tm.wait(task_id, timeout=10) == {"type": "Order", "zip": 1, "lines": []}


def test_dataclasses_round_trip(tm: TaskManager, start_worker):
    first = distance.delay(a=Point(3, 4), b=Point(1, 1))
    second = distance.delay(a={"x": 2, "y": 0})
    start_worker(queues=["typed"])
    assert tm.wait(first, timeout=10) == {"types": ["Point", "Point"], "dx": 2.0}
    assert tm.wait(second, timeout=10) == {"types": ["Point", "Point"], "dx": 2.0}


def test_an_invalid_model_is_refused_naming_the_field(tm: TaskManager, db):
    bad = {"id": 1, "placed": "2026-01-02T03:04:00Z", "address": {"street": "S", "zip": "x"}}
    with pytest.raises(InvalidTaskArguments, match=r"argument 'order' .* field 'address.zip'"):
        ship.delay(order=bad)
    with pytest.raises(InvalidTaskArguments, match=r"field 'id'.*field 'placed'"):
        ship.delay(order={"address": {"street": "S", "zip": 1}})
    with pytest.raises(InvalidTaskArguments, match="field 'y'"):
        distance.delay(a={"x": 1})
    with pytest.raises(InvalidTaskArguments, match="argument 'order'"):
        tm.queue_tasks(ship, [{"order": order()}, {"order": bad}])
    assert statuses(db) == {}


def test_stored_arguments_that_no_longer_fit_fail_without_retry(tm, start_worker, db):
    task_id = new_task_id()
    db.execute(
        "INSERT INTO pgqueue.tasks (id, name, queue, kwargs) VALUES (%s, %s, 'typed', %s)",
        (task_id, ship.name, json.dumps({"order": {"id": "not a number"}})),
    )
    start_worker(queues=["typed"])
    wait_until(lambda: statuses(db) == {"FAILED": 1})
    attempts, error = db.execute(
        "SELECT attempts, error FROM pgqueue.tasks WHERE id = %s", (task_id,)
    ).fetchone()
    assert attempts == 1
    assert "InvalidTaskArguments" in error and "argument 'order': field 'id'" in error


def test_untyped_tasks_have_no_typed_arguments():
    assert plain.typed_arguments is None
    assert ship.typed_arguments is not None and set(ship.typed_arguments.adapters) == {"order"}
