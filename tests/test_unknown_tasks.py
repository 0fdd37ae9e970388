"""Tasks whose name a worker has not registered: given back, never failed by that worker,
never hot-looped, and a worker with no task at all refuses to start (database broker; the
broker contract in brokers/test_brokers.py runs the same rule on both brokers)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from support.waiting import wait_until

from pgqueue import AsyncTask, TaskManager, WorkerManager
from pgqueue.errors import ConfigurationError
from pgqueue.settings import Settings
from pgqueue.tasks import registry

QUEUE = "unknown-backlog"


@AsyncTask(queue=QUEUE)
async def known(n: int) -> int:
    return n


def counts(db: psycopg.Connection[Any], name: str) -> dict[str, Any]:
    row = db.execute(
        "SELECT count(*) FILTER (WHERE status = 'COMPLETED'), "
        "count(*) FILTER (WHERE status = 'FAILED'), "
        "count(*) FILTER (WHERE attempts > 0), "
        "min(unknown_give_backs), max(unknown_give_backs), max(lease_token), "
        "count(*) FILTER (WHERE lease_token <> unknown_give_backs AND status <> 'RUNNING') "
        "FROM pgqueue.tasks WHERE name = %s",
        (name,),
    ).fetchone()
    assert row is not None
    keys = ("completed", "failed", "attempted", "min_give_backs", "max_give_backs")
    return dict(zip((*keys, "max_claims", "claims_not_given_back"), row, strict=True))


def test_a_backlog_of_unknown_tasks_neither_blocks_the_others_nor_loops(
    tm: TaskManager, start_worker: Callable[..., Any], db: psycopg.Connection[Any]
) -> None:
    """2,000 tasks of a name no worker knows, at a higher priority, ahead of 50 known ones:
    the known ones run at once, and the unknown ones are claimed a few times, backed off
    (1 s, 2 s, 4 s ...), not in a loop that would starve the queue."""
    unknown = "nowhere.new_kind"
    tm.queue_tasks(unknown, [{}] * 2000, queue=QUEUE, priority=10)
    tm.queue_tasks(known, [{"n": n} for n in range(50)])
    began = time.monotonic()
    start_worker(queues=[QUEUE], concurrency=4, polling_interval=5.0)
    wait_until(lambda: counts(db, known.name)["completed"] == 50, timeout=30)
    first_batch = time.monotonic() - began
    # While the backlog keeps coming due again, known tasks queued meanwhile start soon.
    late = []
    while counts(db, unknown)["min_give_backs"] < 3:  # 3 give-backs: at least 0.75 + 1.5 s
        late.append(known.delay(n=len(late)))
        time.sleep(0.1)  # a producer's pace, not a wait for a result
        assert time.monotonic() - began < 30, counts(db, unknown)
    elapsed = time.monotonic() - began
    seen = counts(db, unknown)
    wait_until(lambda: all(tm.get_task(task_id).status.is_finished for task_id in late))
    waits = [
        row[0]
        for row in db.execute(
            "SELECT extract(epoch FROM started_at - created_at)::float FROM pgqueue.tasks "
            "WHERE id = ANY(%s)",
            (late,),
        )
    ]
    assert first_batch < 5, first_batch
    assert len(waits) >= 20 and max(waits) < 1.0, sorted(waits)[-5:]
    assert seen["failed"] == 0 and seen["completed"] == 0 and seen["attempted"] == 0
    assert seen["claims_not_given_back"] == 0  # every claim of them was a give-back
    assert elapsed >= 2.25, elapsed
    # None was claimed much more often than the others: no task loops.
    assert seen["max_claims"] <= 5, seen


def test_a_worker_with_no_task_registered_refuses_to_start(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, db: psycopg.Connection[Any]
) -> None:
    monkeypatch.setattr(registry, "_tasks", {})
    manager = WorkerManager(settings=settings)
    with pytest.raises(ConfigurationError) as refused:
        asyncio.run(asyncio.wait_for(manager.start(), 20))
    assert "--import" in str(refused.value) and "PGQUEUE_IMPORTS" in str(refused.value)
    assert db.execute("SELECT count(*) FROM pgqueue.workers").fetchone() == (0,)
