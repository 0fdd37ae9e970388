"""Lifecycle events: payloads seen by listeners of a real worker; listeners never break it."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import worker_tasks
from support.waiting import wait_until

from pgqueue import Task, TaskManager, TaskStatus, events
from pgqueue.events import EventDispatcher, dispatcher

ALL_EVENTS = (
    events.TASK_BEFORE_EXECUTION,
    events.TASK_AFTER_EXECUTION,
    events.TASK_EXECUTION_ERROR,
    events.WORKER_STARTED,
    events.WORKER_STOPPED,
)


@pytest.fixture
def listen() -> Iterator[Callable[[str, Any], None]]:
    """listen(event, fn): add a listener to the global dispatcher, removed after the test."""
    added: list[tuple[str, Any]] = []

    def add(event: str, listener: Any) -> None:
        dispatcher.add_listener(event, listener)
        added.append((event, listener))

    yield add
    for event, listener in added:
        dispatcher.remove_listener(event, listener)


class Recorder:
    """Collects (event, payload) from any thread."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, Any]]] = []
        self._lock = threading.Lock()

    def sync_for(self, event: str) -> Callable[[dict[str, Any]], None]:
        def listener(payload: dict[str, Any]) -> None:
            with self._lock:
                self.seen.append((event, payload))

        return listener

    def async_for(self, event: str) -> Callable[[dict[str, Any]], Any]:
        async def listener(payload: dict[str, Any]) -> None:
            await asyncio.sleep(0)
            with self._lock:
                self.seen.append((event + "/async", payload))

        return listener

    def of(self, event: str) -> list[dict[str, Any]]:
        with self._lock:
            return [payload for name, payload in self.seen if name == event]


def test_payloads_of_a_real_worker(
    start_worker: Any, tm: TaskManager, listen: Any, db: Any
) -> None:
    recorder = Recorder()
    for event in ALL_EVENTS:
        listen(event, recorder.sync_for(event))
        listen(event, recorder.async_for(event))
    worker = start_worker(queues=["default", "emails"])
    ok = worker_tasks.record.delay(label="fine")
    bad = worker_tasks.always_fails.delay(message="kaput", max_retries=0)
    wait_until(lambda: len(recorder.of(events.TASK_AFTER_EXECUTION + "/async")) == 1)
    wait_until(lambda: len(recorder.of(events.TASK_EXECUTION_ERROR + "/async")) == 1)
    worker.stop()

    (started,) = recorder.of(events.WORKER_STARTED)
    assert started == {"worker_id": worker.manager.worker_id, "queues": ["default", "emails"]}
    assert recorder.of(events.WORKER_STOPPED) == [{"worker_id": worker.manager.worker_id}]
    assert recorder.of(events.WORKER_STOPPED + "/async") == recorder.of(events.WORKER_STOPPED)

    before = {p["task"].id: p for p in recorder.of(events.TASK_BEFORE_EXECUTION)}
    assert set(before) == {ok, bad}
    for payload in before.values():
        assert set(payload) == {"task"}
        task = payload["task"]
        assert isinstance(task, Task)
        assert task.status == TaskStatus.RUNNING and task.attempts == 1
    assert before[ok]["task"].kwargs == {"label": "fine"}
    assert before[ok]["task"].name == "worker_tasks.record"

    (after,) = recorder.of(events.TASK_AFTER_EXECUTION)
    assert set(after) == {"task", "result"}
    assert after["task"].id == ok
    assert after["result"]["label"] == "fine"
    assert after["result"] == tm.get_task(ok).result  # type: ignore[union-attr]

    (error,) = recorder.of(events.TASK_EXECUTION_ERROR)
    assert set(error) == {"task", "error"}
    assert error["task"].id == bad
    assert isinstance(error["error"], ValueError) and str(error["error"]) == "kaput"
    assert error["error"].__traceback__ is not None

    # Sync and async listeners both saw each event, in the order they were added.
    names = [name for name, _ in recorder.seen]
    assert names[:2] == [events.WORKER_STARTED, events.WORKER_STARTED + "/async"]
    assert names[-2:] == [events.WORKER_STOPPED, events.WORKER_STOPPED + "/async"]


def test_raising_listeners_never_break_the_worker(
    start_worker: Any,
    tm: TaskManager,
    listen: Any,
    db: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def sync_boom(payload: dict[str, Any]) -> None:
        raise RuntimeError("sync listener exploded")

    async def async_boom(payload: dict[str, Any]) -> None:
        raise RuntimeError("async listener exploded")

    recorder = Recorder()
    for event in ALL_EVENTS:
        listen(event, sync_boom)
        listen(event, async_boom)
        listen(event, recorder.sync_for(event))  # still called after the ones that raise
    caplog.set_level(logging.ERROR, logger="pgqueue.events")
    worker = start_worker()
    ok = worker_tasks.record.delay(label="still fine")
    bad = worker_tasks.always_fails.delay(message="expected", max_retries=0)
    wait_until(lambda: tm.get_task(ok).status == TaskStatus.COMPLETED)  # type: ignore[union-attr]
    wait_until(lambda: tm.get_task(bad).status == TaskStatus.FAILED)  # type: ignore[union-attr]
    worker.stop()
    assert tm.get_task(ok).result["label"] == "still fine"  # type: ignore[union-attr]
    assert "ValueError: expected" in tm.get_task(bad).error  # type: ignore[union-attr,operator]
    counts = {event: len(recorder.of(event)) for event in ALL_EVENTS}
    assert counts == {**dict.fromkeys(ALL_EVENTS, 1), events.TASK_BEFORE_EXECUTION: 2}
    messages = [r.getMessage() for r in caplog.records if r.name == "pgqueue.events"]
    assert sum("raised; the worker carries on" in m for m in messages) == 2 * sum(counts.values())
    assert any(
        r.exc_info and "async listener exploded" in str(r.exc_info[1]) for r in caplog.records
    )


def test_dispatcher_calls_sync_and_async_listeners() -> None:
    local = EventDispatcher()
    calls: list[str] = []

    async def async_listener(payload: dict[str, Any]) -> None:
        calls.append(f"async {payload['n']}")

    def sync_listener(payload: dict[str, Any]) -> None:
        calls.append(f"sync {payload['n']}")

    assert not local.has_listeners("custom")
    local.add_listener("custom", sync_listener)
    local.add_listener("custom", async_listener)
    assert local.has_listeners("custom")
    asyncio.run(local.dispatch("custom", {"n": 1}))
    local.remove_listener("custom", sync_listener)
    local.remove_listener("custom", sync_listener)  # removing twice is harmless
    asyncio.run(local.dispatch("custom", {"n": 2}))
    asyncio.run(local.dispatch("nobody.listens", {"n": 3}))
    assert calls == ["sync 1", "async 1", "async 2"]
