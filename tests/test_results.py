"""Waiting for results: tm.wait / await tm.await_result, woken by NOTIFY."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import psycopg
import pytest
from support.waiting import wait_until

from pgqueue import AsyncTask, PgQueueError, TaskManager
from pgqueue.errors import TaskNotFound
from pgqueue.results import RECHECK_SECONDS, TaskCancelled, TaskFailed, WaitTimeout

release = threading.Event()


@AsyncTask(queue="results")
async def add(a: int, b: int) -> dict[str, int]:
    return {"sum": a + b}


@AsyncTask(queue="results")
def slow_add(a: int, b: int, seconds: float) -> int:
    time.sleep(seconds)
    return a + b


@AsyncTask(queue="results", max_retries=0)
def explode(message: str) -> None:
    raise ValueError(message)


@AsyncTask(queue="results")
def held() -> str:
    release.wait(10)
    return "released"


def test_wait_returns_the_result_when_woken(tm: TaskManager, start_worker, db):
    start_worker(queues=["results"])
    task_id = slow_add.delay(a=2, b=3, seconds=0.3)
    started = time.monotonic()
    assert tm.wait(task_id, timeout=20) == 5
    elapsed = time.monotonic() - started
    # Woken by the notification: well before the safety-net recheck would have looked.
    assert 0.3 <= elapsed < RECHECK_SECONDS - 1, elapsed
    assert db.execute("SELECT count(*) FROM pgqueue.result_waiters").fetchone()[0] == 0
    # A finished task answers at once; its str() id works too.
    assert tm.wait(str(task_id), timeout=0) == 5


def test_await_result(tm: TaskManager, start_worker):
    start_worker(queues=["results"])

    async def main() -> list[Any]:
        ids = [await add.adelay(a=n, b=1) for n in range(5)]
        return list(await asyncio.gather(*(tm.await_result(i, timeout=20) for i in ids)))

    assert asyncio.run(main()) == [{"sum": n + 1} for n in range(5)]


def test_failure_raises_with_the_tasks_error(tm: TaskManager, start_worker):
    start_worker(queues=["results"])
    task_id = explode.delay(message="boom 42")
    with pytest.raises(TaskFailed, match="boom 42") as raised:
        tm.wait(task_id, timeout=20)
    assert isinstance(raised.value, PgQueueError)
    assert raised.value.task.id == task_id
    assert raised.value.task.status == "FAILED"
    assert "ValueError: boom 42" in (raised.value.error or "")

    async def main() -> None:
        with pytest.raises(TaskFailed, match="boom 42"):
            await tm.await_result(task_id, timeout=5)

    asyncio.run(main())


def test_timeout_raises_a_timeout_error(tm: TaskManager, db):
    task_id = add.delay(a=1, b=1)  # no worker: it never runs
    started = time.monotonic()
    with pytest.raises(WaitTimeout, match=r"did not finish within 0\.3 s") as raised:
        tm.wait(task_id, timeout=0.3)
    assert 0.3 <= time.monotonic() - started < 2
    assert isinstance(raised.value, TimeoutError) and isinstance(raised.value, PgQueueError)
    assert raised.value.task.status == "PENDING"

    async def main() -> None:
        with pytest.raises(TimeoutError):
            await tm.await_result(task_id, timeout=0.2)

    asyncio.run(main())
    assert db.execute("SELECT count(*) FROM pgqueue.result_waiters").fetchone()[0] == 0


def test_cancel_wakes_the_waiter(tm: TaskManager):
    task_id = add.delay(a=1, b=1)
    threading.Timer(0.3, tm.cancel, args=(task_id,)).start()
    started = time.monotonic()
    with pytest.raises(TaskCancelled):
        tm.wait(task_id, timeout=20)
    assert time.monotonic() - started < RECHECK_SECONDS - 1


def test_unknown_task_and_bad_timeout(tm: TaskManager):
    with pytest.raises(TaskNotFound):
        tm.wait("0190f000-0000-7000-8000-000000000000", timeout=1)
    with pytest.raises(ValueError, match="timeout"):
        tm.wait(add.delay(a=1, b=1), timeout=-1)


def test_no_notification_when_nobody_waits(tm: TaskManager, start_worker, dsn: str):
    with psycopg.connect(dsn, autocommit=True) as listener:
        listener.execute('LISTEN "pgqueue.results"')
        start_worker(queues=["results"])
        ids = tm.queue_tasks(add, [{"a": n, "b": n} for n in range(20)])
        wait_until(lambda: all(tm.get_task(i).status == "COMPLETED" for i in ids))
        assert [n.payload for n in listener.notifies(timeout=0.3)] == []


def test_only_waited_for_tasks_are_announced(tm: TaskManager, start_worker, dsn: str):
    release.clear()
    waited = held.delay()
    with psycopg.connect(dsn, autocommit=True) as listener:
        listener.execute('LISTEN "pgqueue.results"')
        start_worker(queues=["results"], concurrency=4)
        waiter = threading.Thread(target=lambda: tm.wait(waited, timeout=20))
        waiter.start()
        others = tm.queue_tasks(add, [{"a": n, "b": 0} for n in range(10)])
        wait_until(lambda: all(tm.get_task(i).status == "COMPLETED" for i in others))
        release.set()
        waiter.join(20)
        payloads = {n.payload for n in listener.notifies(timeout=0.5)}
    assert payloads == {str(waited)}
