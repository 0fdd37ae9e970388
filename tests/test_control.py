"""Task control from inside a task: Retry, Snooze and current_task()."""

from __future__ import annotations

import collections
from typing import Any

import pytest
from support.waiting import wait_until

from pgqueue import AsyncTask, PgQueueError, Retry, Snooze, TaskManager, current_task

runs: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)


def _record(tag: str) -> int:
    context = current_task()
    runs[tag].append(
        {
            "id": context.id,
            "attempt": context.attempt,
            "queue": context.queue,
            "name": context.name,
            "max_retries": context.max_retries,
        }
    )
    return len(runs[tag])


@AsyncTask(queue="control", max_retries=0)
async def retry_twice(tag: str, wait: float) -> str:
    if _record(tag) <= 2:
        raise Retry(delay=wait)
    return "done"


@AsyncTask(queue="control", max_retries=0)
def snooze_twice(tag: str, seconds: float) -> str:
    if _record(tag) <= 2:
        raise Snooze(seconds)
    return "done"


@AsyncTask(queue="control", max_retries=1)
def retry_then_fail(tag: str) -> None:
    if _record(tag) == 1:
        raise Retry(delay=0)
    raise RuntimeError("real failure")


def row(db: Any, task_id: Any) -> dict[str, Any]:
    cursor = db.execute(
        "SELECT status::text, attempts, error, run_at, started_at, finished_at "
        "FROM pgqueue.tasks WHERE id = %s",
        (task_id,),
    )
    names = [column.name for column in cursor.description]
    return dict(zip(names, cursor.fetchone(), strict=True))


def test_retry_reschedules_without_recording_a_failure(tm: TaskManager, start_worker, db):
    task_id = retry_twice.delay(tag="retry", wait=0.4)
    start_worker(queues=["control"])
    wait_until(lambda: row(db, task_id)["status"] == "COMPLETED")
    final = row(db, task_id)
    # max_retries=0, yet two Retry did not fail it: no failure counted, no error recorded.
    assert final["error"] is None
    # Each run counts as an attempt: 3 runs, attempts 1, 2, 3 seen from inside.
    assert final["attempts"] == 3
    assert [r["attempt"] for r in runs["retry"]] == [1, 2, 3]
    assert {r["id"] for r in runs["retry"]} == {task_id}


def test_retry_sets_run_at_to_its_delay(tm: TaskManager, start_worker, db):
    task_id = retry_twice.delay(tag="retry-later", wait=30)
    worker = start_worker(queues=["control"])
    wait_until(lambda: row(db, task_id)["status"] == "RETRYING")
    worker.stop()
    state = row(db, task_id)
    waited = (state["run_at"] - state["started_at"]).total_seconds()
    assert 29 <= waited <= 31, waited
    assert state["attempts"] == 1 and state["error"] is None and state["finished_at"] is None


def test_snooze_does_not_use_an_attempt(tm: TaskManager, start_worker, db):
    task_id = snooze_twice.delay(tag="snooze", seconds=0.3)
    start_worker(queues=["control"])
    wait_until(lambda: row(db, task_id)["status"] == "COMPLETED")
    final = row(db, task_id)
    assert final["attempts"] == 1 and final["error"] is None
    # Every run is the first attempt, as the task sees it.
    assert [r["attempt"] for r in runs["snooze"]] == [1, 1, 1]


def test_snooze_sets_run_at_to_its_delay(tm: TaskManager, start_worker, db):
    task_id = snooze_twice.delay(tag="snooze-later", seconds=60)
    worker = start_worker(queues=["control"])
    wait_until(lambda: row(db, task_id)["status"] == "RETRYING")
    worker.stop()
    state = row(db, task_id)
    assert state["attempts"] == 0
    assert 59 <= (state["run_at"] - state["started_at"]).total_seconds() <= 61


def test_a_retry_counts_toward_the_attempts_a_failure_may_use(tm, start_worker, db):
    # max_retries=1 allows two attempts; the Retry used the first, so one real failure ends it.
    task_id = retry_then_fail.delay(tag="mixed")
    start_worker(queues=["control"])
    wait_until(lambda: row(db, task_id)["status"] == "FAILED")
    final = row(db, task_id)
    assert final["attempts"] == 2 and "RuntimeError: real failure" in final["error"]


def test_current_task_describes_the_run(tm: TaskManager, start_worker):
    task_id = snooze_twice.delay(tag="context", seconds=0)
    start_worker(queues=["control"])
    wait_until(lambda: len(runs["context"]) == 3)
    first = runs["context"][0]
    assert first == {
        "id": task_id,
        "attempt": 1,
        "queue": "control",
        "name": snooze_twice.name,
        "max_retries": 0,
    }


def test_current_task_outside_a_task():
    with pytest.raises(PgQueueError, match="only available inside a running task"):
        current_task()
