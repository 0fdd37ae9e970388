"""The broker contract: the same behaviour on the database and RabbitMQ brokers."""

from __future__ import annotations

import functools
import signal
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from broker_tasks import calls, failures_left, flaky, forget_runs, nap, record
from conftest import default_task_manager, statuses, wait_until

from pgqueue import events
from pgqueue.records import TaskStatus
from pgqueue.settings import Settings
from pgqueue.task_manager import TaskManager


@pytest.fixture(params=["database", "rabbitmq"])
def broker_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def broker_settings(
    broker_name: str, settings: Settings, request: pytest.FixtureRequest
) -> Settings:
    if broker_name == "rabbitmq":
        return request.getfixturevalue("rabbitmq_settings")  # type: ignore[no-any-return]
    return settings


@pytest.fixture
def btm(broker_settings: Settings) -> Iterator[TaskManager]:
    """The TaskManager (and .delay()) of the broker under test."""
    forget_runs()
    with default_task_manager(broker_settings) as manager:
        yield manager


@pytest.fixture
def bworker(start_worker: Callable[..., Any], broker_settings: Settings) -> Callable[..., Any]:
    """start_worker on the broker under test."""
    return functools.partial(start_worker, worker_settings=broker_settings)


def started(db: psycopg.Connection[Any], ids: list[Any]) -> list[Any]:
    rows = db.execute(
        "SELECT id FROM pgqueue.tasks WHERE id = ANY(%s) ORDER BY started_at, id", (ids,)
    ).fetchall()
    return [row[0] for row in rows]


def test_higher_priority_starts_first(
    btm: TaskManager, bworker: Callable[..., Any], db: Any
) -> None:
    priorities = [0, 5, -3, 10, 1, 40, 7]
    ids = {p: btm.queue_task(record, label=f"p{p}", priority=p) for p in priorities}
    bworker(concurrency=1)
    wait_until(lambda: statuses(db).get("COMPLETED") == len(priorities))
    assert [label for label, _ in calls] == [f"p{p}" for p in sorted(priorities, reverse=True)]
    assert started(db, list(ids.values())) == [ids[p] for p in sorted(priorities, reverse=True)]


def test_delayed_task_waits_for_its_run_at(
    btm: TaskManager, bworker: Callable[..., Any], db: Any
) -> None:
    bworker(concurrency=2)
    queued = time.time()
    late = record.delay(label="late", delay=1.0)
    now = record.delay(label="now")
    wait_until(lambda: btm.get_task(late).status is TaskStatus.COMPLETED)
    task = btm.get_task(late)
    assert task.started_at >= task.run_at
    assert (task.started_at - task.run_at).total_seconds() < 1.0
    ran = dict(calls)
    assert ran["late"] - queued >= 1.0
    assert ran["now"] < ran["late"]
    assert btm.get_task(now).status is TaskStatus.COMPLETED


def test_failed_task_retries_with_backoff(btm: TaskManager, bworker: Callable[..., Any]) -> None:
    failures_left["k"] = 2
    task_id = flaky.delay(key="k")
    bworker(concurrency=2)
    wait_until(lambda: btm.get_task(task_id).status is TaskStatus.COMPLETED, timeout=20)
    task = btm.get_task(task_id)
    assert task.attempts == 3
    assert task.error is not None and "planned failure of k" in task.error
    times = [at for key, at in calls if key == "k"]
    assert len(times) == 3
    # retry_backoff: 1 s then 2 s, each +/-25%.
    assert 0.75 <= times[1] - times[0] <= 1.25 + 0.5
    assert 1.5 <= times[2] - times[1] <= 2.5 + 0.5


def test_retries_spent_end_failed(btm: TaskManager, bworker: Callable[..., Any]) -> None:
    failures_left["spent"] = 99
    task_id = flaky.delay(key="spent", max_retries=0)
    bworker()
    wait_until(lambda: btm.get_task(task_id).status is TaskStatus.FAILED)
    task = btm.get_task(task_id)
    assert task.attempts == 1
    assert "RuntimeError: planned failure of spent" in (task.error or "")


def test_events_fire_around_runs(btm: TaskManager, bworker: Callable[..., Any]) -> None:
    seen: list[tuple[str, str]] = []
    listeners = {
        events.TASK_BEFORE_EXECUTION: lambda p: seen.append(("before", str(p["task"].id))),
        events.TASK_AFTER_EXECUTION: lambda p: seen.append(("after", repr(p["result"]))),
        events.TASK_EXECUTION_ERROR: lambda p: seen.append(("error", str(p["error"]))),
    }
    for name, listener in listeners.items():
        events.dispatcher.add_listener(name, listener)
    try:
        failures_left["ev"] = 1
        ok = record.delay(label="fine")
        bad = flaky.delay(key="ev", max_retries=0)
        bworker(concurrency=1)
        wait_until(lambda: btm.get_task(ok).status is TaskStatus.COMPLETED)
        wait_until(lambda: btm.get_task(bad).status is TaskStatus.FAILED)
    finally:
        for name, listener in listeners.items():
            events.dispatcher.remove_listener(name, listener)
    assert ("before", str(ok)) in seen and ("before", str(bad)) in seen
    assert ("after", "'fine'") in seen
    assert ("error", "planned failure of ev") in seen


def test_unknown_task_fails_without_retry(btm: TaskManager, bworker: Callable[..., Any]) -> None:
    task_id = btm.queue_task("nowhere.missing_task", max_retries=5, x=1)
    bworker()
    wait_until(lambda: btm.get_task(task_id).status is TaskStatus.FAILED)
    task = btm.get_task(task_id)
    assert task.attempts == 1
    assert "UnknownTask" in (task.error or "") and "nowhere.missing_task" in (task.error or "")


def test_sigterm_drains_running_task(
    btm: TaskManager,
    broker_settings: Settings,
    spawn_worker: Callable[..., Any],
    db: Any,
) -> None:
    task_id = nap.delay(seconds=1.5)
    worker = spawn_worker(
        "--import", "broker_tasks", "--queues", "default", env=worker_env(broker_settings)
    )
    wait_until(lambda: btm.get_task(task_id).status is TaskStatus.RUNNING, timeout=20)
    worker.signal(signal.SIGTERM)
    assert worker.wait(30) == 0, worker.output
    task = btm.get_task(task_id)
    assert task.status is TaskStatus.COMPLETED, worker.output
    assert task.result == 1.5 and task.attempts == 1
    assert statuses(db) == {"COMPLETED": 1}


def worker_env(settings: Settings) -> dict[str, str]:
    env = {"PGQUEUE_BROKER": settings.broker}
    if settings.broker == "rabbitmq":
        env["PGQUEUE_RABBITMQ_URL"] = settings.rabbitmq_url or ""
        env["PGQUEUE_RABBITMQ_PREFIX"] = settings.rabbitmq_prefix
    return env
