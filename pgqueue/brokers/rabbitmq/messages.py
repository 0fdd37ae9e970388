"""The RabbitMQ broker's message format: a task as a JSON body plus attempt/run-at headers."""

from __future__ import annotations

import datetime
import json
import math
import time
import uuid
from typing import Any

import aio_pika
from aio_pika.abc import AbstractIncomingMessage

from pgqueue.brokers.rabbitmq import outbox
from pgqueue.brokers.rabbitmq.topology import broker_priority
from pgqueue.records import NewTask, Task, TaskStatus

ATTEMPTS_HEADER = "x-pgqueue-attempts"  # runs made before this delivery
# Epoch milliseconds, an integer: AMQP tables carry Python floats as 32-bit floats, which
# would round today's epoch seconds to 128 s.
RUN_AT_HEADER = "x-pgqueue-run-at-ms"  # never run before
ERROR_HEADER = "x-pgqueue-error"  # on dead-lettered messages
# Without status tracking the message remembers what the record would: since when (epoch ms)
# and how often workers that had not registered its name gave it back.
UNKNOWN_SINCE_HEADER = "x-pgqueue-unknown-since-ms"
UNKNOWN_GIVE_BACKS_HEADER = "x-pgqueue-unknown-give-backs"


def message_body(
    task_id: uuid.UUID, name: str, queue: str, priority: int, max_retries: int, kwargs_json: str
) -> bytes:
    """The JSON body; the arguments are copied as the producer encoded them."""
    head = json.dumps(
        {
            "id": str(task_id),
            "name": name,
            "queue": queue,
            "priority": priority,
            "max_retries": max_retries,
        },
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return (head[:-1] + ',"kwargs":' + kwargs_json + "}").encode()


def build_message(
    body: bytes,
    task_id: uuid.UUID | str,
    priority: int,
    attempts: int,
    run_at: float,
    error: str | None = None,
    extra_headers: dict[str, Any] | None = None,
) -> aio_pika.Message:
    headers: dict[str, Any] = {ATTEMPTS_HEADER: attempts, RUN_AT_HEADER: math.ceil(run_at * 1000)}
    if error is not None:
        headers[ERROR_HEADER] = error[:16384]
    if extra_headers:
        headers.update(extra_headers)
    return aio_pika.Message(
        body,
        message_id=str(task_id),
        priority=broker_priority(priority),
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        content_type="application/json",
        headers=headers,
    )


def new_message(task: NewTask, run_at: float) -> aio_pika.Message:
    body = message_body(
        task.id, task.name, task.queue, task.priority, task.max_retries, task.kwargs_json
    )
    return build_message(body, task.id, task.priority, 0, run_at)


def record_message(task: Task) -> aio_pika.Message:
    """A message rebuilt from a task record (TaskManager.retry)."""
    body = message_body(
        task.id, task.name, task.queue, task.priority, task.max_retries, json.dumps(task.kwargs)
    )
    return build_message(body, task.id, task.priority, task.attempts, time.time())


def int_header(headers: dict[str, Any], name: str) -> int:
    value = headers.get(name)
    return int(value) if isinstance(value, int | float | str) else 0


def unknown_headers(headers: dict[str, Any] | None) -> dict[str, Any]:
    """The give-back headers of a delivery, to carry over when it is published again."""
    carried = (UNKNOWN_SINCE_HEADER, UNKNOWN_GIVE_BACKS_HEADER)
    return {name: value for name, value in (headers or {}).items() if name in carried}


def decode(message: AbstractIncomingMessage) -> Task:
    """The task a delivery carries; attempts counts this run."""
    body = json.loads(message.body)
    headers = message.headers or {}
    run_at = int_header(headers, RUN_AT_HEADER) / 1000
    return Task(
        id=uuid.UUID(body["id"]),
        name=str(body["name"]),
        queue=str(body["queue"]),
        priority=int(body["priority"]),
        status=TaskStatus.RUNNING,
        kwargs=body["kwargs"],
        attempts=int_header(headers, ATTEMPTS_HEADER) + 1,
        max_retries=int(body["max_retries"]),
        run_at=datetime.datetime.fromtimestamp(run_at, datetime.UTC),
    )


def run_at_of(task: NewTask) -> float:
    if task.schedule_at is not None:
        return task.schedule_at.timestamp()
    return time.time() + task.delay


def outbox_row(task: NewTask) -> outbox.OutboxRow:
    return outbox.OutboxRow(
        task.id,
        task.queue,
        task.priority,
        message_body(
            task.id, task.name, task.queue, task.priority, task.max_retries, task.kwargs_json
        ).decode(),
        run_at_of(task),
    )
