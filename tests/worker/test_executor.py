"""The executor: one run of one task, from a claimed record to the outcome it reports."""

from __future__ import annotations

import asyncio
import datetime
import threading
import time
import uuid
from typing import Any

import pytest

from pgqueue import AsyncTask, Retry, Snooze, current_task
from pgqueue.events import EventDispatcher
from pgqueue.payload import encode_result
from pgqueue.records import OutcomeKind, Task, TaskStatus, new_task_id
from pgqueue.worker.executor import Executor
from pgqueue.worker.threads import DaemonThreadPool


@AsyncTask()
async def add(a: int, b: int) -> int:
    return a + b


@AsyncTask()
def where_am_i() -> dict[str, Any]:
    context = current_task()
    return {
        "thread": threading.current_thread().name,
        "main": threading.current_thread() is threading.main_thread(),
        "attempt": context.attempt,
        "id": str(context.id),
        "queue": context.queue,
    }


@AsyncTask()
async def broken(reason: str) -> None:
    raise KeyError(reason)


@AsyncTask(timeout=0.2)
async def too_slow() -> None:
    await asyncio.sleep(30)


@AsyncTask(timeout=0.2)
def too_slow_sync() -> None:
    time.sleep(1)


@AsyncTask()
async def raises_its_own_timeout() -> None:
    raise TimeoutError("the upstream API timed out")


@AsyncTask()
async def asks_for_retry() -> None:
    raise Retry(delay=12)


@AsyncTask()
async def snoozes() -> None:
    raise Snooze(7)


def claimed(name: str, attempts: int = 1, **kwargs: Any) -> Task:
    return Task(
        id=new_task_id(),
        name=name,
        queue="default",
        priority=0,
        status=TaskStatus.RUNNING,
        kwargs=kwargs,
        attempts=attempts,
        max_retries=3,
        run_at=datetime.datetime.now(datetime.UTC),
        lease_token=1,
    )


def run(task: Task, dispatcher: EventDispatcher | None = None) -> Any:
    executor = Executor(DaemonThreadPool(), dispatcher or EventDispatcher())
    return asyncio.run(executor.run(task))


def test_async_task_result_is_its_json() -> None:
    outcome = run(claimed(f"{__name__}.add", a=2, b=3))
    assert outcome.kind is OutcomeKind.COMPLETED
    assert outcome.result_json == encode_result(5)


def test_sync_task_runs_in_a_thread_with_its_context() -> None:
    task = claimed(f"{__name__}.where_am_i", attempts=2)
    outcome = run(task)
    assert outcome.kind is OutcomeKind.COMPLETED
    result = __import__("json").loads(outcome.result_json)
    assert result["main"] is False and result["thread"].startswith("pgqueue-sync")
    assert (result["attempt"], result["id"], result["queue"]) == (2, str(task.id), "default")


def test_failure_carries_type_message_and_traceback() -> None:
    outcome = run(claimed(f"{__name__}.broken", reason="no such user"))
    assert outcome.kind is OutcomeKind.FAILED and outcome.retryable
    first_line = outcome.error.splitlines()[0]
    assert first_line == "KeyError: 'no such user'"
    assert "Traceback (most recent call last)" in outcome.error
    assert "raise KeyError(reason)" in outcome.error


@pytest.mark.parametrize(
    "name",
    ["os.system", "subprocess.run", "builtins.eval", "no_such_module.task", "", "add"],
)
def test_unregistered_names_are_given_back_without_import(name: str) -> None:
    outcome = run(claimed(name, command="echo pwned"))
    # Not this worker's to fail: the broker gives it back for a worker that knows the name.
    assert outcome.kind is OutcomeKind.UNKNOWN
    assert outcome.error is None


def test_unregistered_module_is_never_imported() -> None:
    import sys

    name = f"pgqueue_never_imported_{uuid.uuid4().hex}"
    run(claimed(f"{name}.task"))
    assert name not in sys.modules


def test_timeout_fails_the_run_and_frees_the_slot() -> None:
    began = time.monotonic()
    outcome = run(claimed(f"{__name__}.too_slow"))
    assert time.monotonic() - began < 2
    assert outcome.kind is OutcomeKind.FAILED and outcome.retryable
    assert outcome.error.startswith("TaskTimeout: ")
    assert "timeout of 0.2 s" in outcome.error


def test_sync_timeout_returns_while_the_thread_goes_on() -> None:
    began = time.monotonic()
    outcome = run(claimed(f"{__name__}.too_slow_sync"))
    assert time.monotonic() - began < 0.9
    assert outcome.error.startswith("TaskTimeout: ")


def test_a_timeout_error_raised_by_the_task_is_its_own() -> None:
    outcome = run(claimed(f"{__name__}.raises_its_own_timeout"))
    assert outcome.error.startswith("TimeoutError: the upstream API timed out")


def test_retry_and_snooze_reschedule() -> None:
    retry = run(claimed(f"{__name__}.asks_for_retry"))
    assert (retry.kind, retry.delay, retry.refund_attempt) == (OutcomeKind.RESCHEDULED, 12, False)
    snooze = run(claimed(f"{__name__}.snoozes"))
    assert (snooze.kind, snooze.delay, snooze.refund_attempt) == (OutcomeKind.RESCHEDULED, 7, True)


def test_events_around_a_run() -> None:
    dispatcher = EventDispatcher()
    seen: list[tuple[str, dict[str, Any]]] = []
    for event in (
        "worker.task.before_execution",
        "worker.task.after_execution",
        "worker.task.execution_error",
    ):
        dispatcher.add_listener(event, lambda payload, event=event: seen.append((event, payload)))
    ok = claimed(f"{__name__}.add", a=1, b=1)
    bad = claimed(f"{__name__}.broken", reason="x")
    run(ok, dispatcher)
    run(bad, dispatcher)
    assert [event for event, _ in seen] == [
        "worker.task.before_execution",
        "worker.task.after_execution",
        "worker.task.before_execution",
        "worker.task.execution_error",
    ]
    assert seen[1][1] == {"task": ok, "result": 2}
    assert seen[3][1]["task"] is bad and isinstance(seen[3][1]["error"], KeyError)
