"""WorkerManager against the real PostgreSQL: order, timing, retries, concurrency, leases.

Most behaviours run twice: with an in-process WorkerManager and with a `pgqueue worker`
subprocess, since both are how users run workers.
"""

from __future__ import annotations

import datetime
import os
import re
import signal
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import worker_tasks
from support.database import statuses
from support.waiting import wait_until

from pgqueue import TaskManager, TaskStatus, WorkerManager
from pgqueue.brokers import get_broker

WorkerLauncher = Callable[..., Any]


@pytest.fixture(params=["in_process", "subprocess"])
def launch(request: pytest.FixtureRequest, start_worker: Any, spawn_worker: Any) -> Iterator[Any]:
    """launch(queues=[...], concurrency=N, interval=S, lease_seconds=L): a running worker."""

    def start(
        queues: list[str] | None = None,
        concurrency: int = 1,
        interval: float = 30.0,
        lease_seconds: float | None = None,
    ) -> Any:
        queues = queues or ["default"]
        if request.param == "in_process":
            overrides = {"lease_seconds": lease_seconds} if lease_seconds else {}
            return start_worker(
                queues=queues, concurrency=concurrency, polling_interval=interval, **overrides
            )
        env = {"PGQUEUE_LEASE_SECONDS": str(lease_seconds)} if lease_seconds else {}
        process = spawn_worker(
            "--queues",
            ",".join(queues),
            "--concurrent",
            str(concurrency),
            "--interval",
            str(interval),
            "--import",
            "worker_tasks",
            env=env,
        )
        wait_until(lambda: " started: queues=" in process.output or process.process.poll())
        assert process.process.poll() is None, process.output
        return process

    yield start


def rows(db: psycopg.Connection[Any], where: str = "true") -> list[dict[str, Any]]:
    cursor = db.cursor(row_factory=psycopg.rows.dict_row)
    return cursor.execute(f"SELECT * FROM pgqueue.tasks WHERE {where} ORDER BY id").fetchall()


def task_row(db: psycopg.Connection[Any], task_id: uuid.UUID) -> dict[str, Any]:
    cursor = db.cursor(row_factory=psycopg.rows.dict_row)
    row = cursor.execute("SELECT * FROM pgqueue.tasks WHERE id = %s", (task_id,)).fetchone()
    assert row is not None
    return row


def finished(db: psycopg.Connection[Any], *ids: uuid.UUID) -> bool:
    found = db.execute(
        "SELECT count(*) FROM pgqueue.tasks WHERE id = ANY(%s)"
        " AND status IN ('COMPLETED', 'FAILED', 'CANCELLED')",
        (list(ids),),
    ).fetchone()
    return found is not None and found[0] == len(ids)


def spans(db: psycopg.Connection[Any], ids: list[uuid.UUID]) -> list[tuple[float, float]]:
    return [(task_row(db, i)["result"]["started"], task_row(db, i)["result"]["ended"]) for i in ids]


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    points = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    running = best = 0
    for _, step in points:
        running += step
        best = max(best, running)
    return best


# -- order and timing --------------------------------------------------------------------


def test_priority_order_with_one_slot(launch: Any, tm: TaskManager, db: Any) -> None:
    priorities = [1, 10, -5, 5, 10, 0, 7]
    ids = [
        worker_tasks.record.delay(priority=p, label=f"p{p}#{n}") for n, p in enumerate(priorities)
    ]
    launch(concurrency=1)
    wait_until(lambda: finished(db, *ids))
    ran = db.execute(
        "SELECT priority, kwargs->>'label' FROM pgqueue.tasks ORDER BY started_at"
    ).fetchall()
    # Equal priority keeps queueing order (run_at, then the time-ordered id).
    assert [label for _, label in ran] == [
        "p10#1",
        "p10#4",
        "p7#6",
        "p5#3",
        "p1#0",
        "p0#5",
        "p-5#2",
    ]
    started = [task_row(db, i)["result"]["started"] for i in ids]
    by_priority = sorted(zip(priorities, started, strict=True), key=lambda pair: pair[1])
    assert [p for p, _ in by_priority] == [10, 10, 7, 5, 1, 0, -5]


def test_new_task_wakes_idle_worker_at_once(launch: Any, tm: TaskManager, db: Any) -> None:
    launch(interval=30)
    # Give the LISTEN connection the time it needs, then measure a few wake-ups.
    warm_up = worker_tasks.record.delay(label="warm-up")
    wait_until(lambda: finished(db, warm_up))
    for n in range(5):
        task_id = worker_tasks.record.delay(label=f"n{n}")
        wait_until(lambda task_id=task_id: finished(db, task_id), timeout=5)
        row = task_row(db, task_id)
        assert row["status"] == TaskStatus.COMPLETED
        assert (row["started_at"] - row["created_at"]).total_seconds() < 1.0


def test_delayed_and_scheduled_tasks_start_on_time(launch: Any, tm: TaskManager, db: Any) -> None:
    launch(interval=30)
    now = db.execute("SELECT now()").fetchone()[0]
    late = worker_tasks.record.delay(delay=3.0, label="late")
    # Queued after `late` but due before it: the sleeping worker must notice.
    early = worker_tasks.record.delay(delay=datetime.timedelta(seconds=1.5), label="early")
    scheduled = worker_tasks.record.delay(
        schedule_at=now + datetime.timedelta(seconds=2.2), label="scheduled"
    )
    wait_until(lambda: finished(db, late, early, scheduled), timeout=10)
    for task_id in (early, scheduled, late):
        row = task_row(db, task_id)
        assert row["status"] == TaskStatus.COMPLETED
        lateness = (row["started_at"] - row["run_at"]).total_seconds()
        assert 0 <= lateness < 0.5, (row["kwargs"], lateness)
    ran = db.execute("SELECT kwargs->>'label' FROM pgqueue.tasks ORDER BY started_at")
    assert [label for (label,) in ran] == ["early", "scheduled", "late"]


# -- retries -------------------------------------------------------------------------------


def test_retry_then_success(launch: Any, tm: TaskManager, db: Any) -> None:
    launch(interval=30)
    task_id = worker_tasks.flaky.delay(failures=2)
    wait_until(lambda: finished(db, task_id), timeout=15)
    row = task_row(db, task_id)
    assert row["status"] == TaskStatus.COMPLETED
    assert row["attempts"] == 3
    assert row["result"] == {"attempt": 3}


def test_a_retry_wakes_the_worker_only_once_it_is_committed(
    start_worker: Any, tm: TaskManager, db: Any
) -> None:
    """The retry's commit is slowed by a deferred trigger of ours (it runs at COMMIT).
    The worker must not be woken
    before it: it would look for its next due task, see none, and sleep its whole
    polling interval (30 s here) instead of running the retry about a second later."""
    db.execute(
        """
        CREATE FUNCTION slow_commit() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN PERFORM pg_sleep(0.5); RETURN NEW; END $$;
        CREATE CONSTRAINT TRIGGER slow_commit AFTER UPDATE ON pgqueue.tasks
        DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
        WHEN (NEW.status = 'RETRYING') EXECUTE FUNCTION slow_commit();
        """
    )
    start_worker(concurrency=1, polling_interval=30)
    task_id = worker_tasks.flaky.delay(failures=1)
    wait_until(lambda: finished(db, task_id), timeout=10)
    row = task_row(db, task_id)
    assert (row["status"], row["attempts"]) == (TaskStatus.COMPLETED, 2)


def test_final_failure_stores_type_message_and_traceback(
    launch: Any, tm: TaskManager, db: Any
) -> None:
    launch(interval=30)
    task_id = worker_tasks.always_fails.delay(message="the disk is on fire")
    wait_until(lambda: finished(db, task_id), timeout=15)
    row = task_row(db, task_id)
    assert row["status"] == TaskStatus.FAILED
    assert row["attempts"] == 2  # max_retries=1: the first run and one retry
    assert row["error"].startswith("ValueError: the disk is on fire")
    assert "Traceback (most recent call last)" in row["error"]
    assert "in always_fails" in row["error"]
    assert row["finished_at"] is not None
    # The retry waited for its back-off (1 s +/- 25%) instead of running at once.
    assert (row["started_at"] - row["created_at"]).total_seconds() >= 0.7


# -- concurrency ---------------------------------------------------------------------------


def test_sync_tasks_run_in_parallel_threads(launch: Any, tm: TaskManager, db: Any) -> None:
    launch(concurrency=5)  # four sync tasks, and a free slot for the probe
    ids = [worker_tasks.sync_sleep.delay(seconds=1.0) for _ in range(4)]
    wait_until(
        lambda: db.execute(
            "SELECT count(*) = 4 FROM pgqueue.tasks WHERE status = 'RUNNING'"
        ).fetchone()[0],
        timeout=5,
    )
    # While four threads sleep, the event loop still runs an async task.
    probe = worker_tasks.record.delay(label="probe")
    wait_until(lambda: finished(db, *ids, probe), timeout=10)
    results = [task_row(db, i)["result"] for i in ids]
    assert len({r["thread"] for r in results}) == 4
    assert not any(r["main_thread"] for r in results)
    assert max_overlap(spans(db, ids)) == 4
    probe_started = task_row(db, probe)["result"]["started"]
    assert probe_started < min(end for _, end in spans(db, ids))


def test_async_tasks_overlap_up_to_concurrency(launch: Any, tm: TaskManager, db: Any) -> None:
    launch(concurrency=5)
    ids = [worker_tasks.async_sleep.delay(seconds=0.8) for _ in range(5)]
    wait_until(lambda: finished(db, *ids), timeout=10)
    assert max_overlap(spans(db, ids)) == 5
    # All five were claimed together, not one by one.
    first, last = db.execute(
        "SELECT min(started_at), max(started_at) FROM pgqueue.tasks"
    ).fetchone()
    assert (last - first).total_seconds() < 0.5


def test_concurrency_is_a_ceiling(start_worker: Any, tm: TaskManager, db: Any) -> None:
    start_worker(concurrency=2)
    ids = [worker_tasks.async_sleep.delay(seconds=0.3) for _ in range(6)]
    wait_until(lambda: finished(db, *ids), timeout=10)
    assert max_overlap(spans(db, ids)) == 2


# -- safety --------------------------------------------------------------------------------


def test_unknown_task_names_are_never_called_and_the_worker_carries_on(
    launch: Any, tm: TaskManager, db: Any, tmp_path: Path
) -> None:
    launch()
    marker = tmp_path / "pwned"
    evil = tm.queue_task(task="os.system", command=f"touch {marker}")
    missing = tm.queue_task(task="no_such_module.tasks.run")
    # Given back for a worker that knows the name (none here): not failed, no attempt spent.
    wait_until(lambda: all(task_row(db, i)["error"] for i in (evil, missing)))
    for task_id, name in ((evil, "os.system"), (missing, "no_such_module.tasks.run")):
        row = task_row(db, task_id)
        assert row["status"] == TaskStatus.PENDING
        assert row["attempts"] == 0
        assert "UnknownTask" in row["error"] and repr(name) in row["error"]
        assert "--import" in row["error"]
    assert not marker.exists()
    after = worker_tasks.record.delay(label="after")
    wait_until(lambda: finished(db, after))
    assert task_row(db, after)["status"] == TaskStatus.COMPLETED


def test_worker_runs_only_its_queues(start_worker: Any, tm: TaskManager, db: Any) -> None:
    start_worker(queues=["emails", "urgent"])
    mine = [worker_tasks.record.delay(queue=q, label=q) for q in ("emails", "urgent")]
    other = worker_tasks.record.delay(queue="reports", label="reports")
    wait_until(lambda: finished(db, *mine))
    assert task_row(db, other)["status"] == TaskStatus.PENDING


# -- leases --------------------------------------------------------------------------------


def test_heartbeat_keeps_a_long_task_beyond_its_lease(
    launch: Any, tm: TaskManager, db: Any
) -> None:
    launch(lease_seconds=1)
    task_id = worker_tasks.async_sleep.delay(seconds=2.5)
    wait_until(lambda: finished(db, task_id), timeout=10)
    row = task_row(db, task_id)
    assert row["status"] == TaskStatus.COMPLETED
    assert row["attempts"] == 1  # never rescued while its worker was alive
    assert row["error"] is None


def test_cancelled_running_task_is_stopped_and_stays_cancelled(
    start_worker: Any, tm: TaskManager, db: Any, tmp_path: Path
) -> None:
    start_worker(lease_seconds=0.6)
    release = tmp_path / "release"
    task_id = worker_tasks.wait_for_file.delay(path=str(release))
    wait_until(lambda: task_row(db, task_id)["status"] == TaskStatus.RUNNING)
    assert tm.cancel(task_id)
    after = worker_tasks.record.delay(label="after")
    # concurrency=4: `after` runs while the cancelled run is still being noticed.
    wait_until(lambda: finished(db, after))
    release.touch()
    probe = worker_tasks.record.delay(label="probe")
    wait_until(lambda: finished(db, probe))
    row = task_row(db, task_id)
    assert row["status"] == TaskStatus.CANCELLED
    assert row["result"] is None


def test_killed_worker_task_is_finished_by_another_after_lease_expiry(
    spawn_worker: Any, tm: TaskManager, db: Any
) -> None:
    env = {"PGQUEUE_LEASE_SECONDS": "1.5"}
    first = spawn_worker("--import", "worker_tasks", "--interval", "30", env=env)
    task_id = worker_tasks.slow_first_attempt.delay(seconds=600)
    wait_until(lambda: task_row(db, task_id)["status"] == TaskStatus.RUNNING)
    held = task_row(db, task_id)
    assert f":{first.process.pid}:" in held["worker_id"]
    os.kill(first.process.pid, signal.SIGKILL)
    first.wait()
    second = spawn_worker("--import", "worker_tasks", "--interval", "30", env=env)
    wait_until(lambda: finished(db, task_id), timeout=20)
    row = task_row(db, task_id)
    assert row["status"] == TaskStatus.COMPLETED
    assert row["attempts"] == 2
    assert f":{second.process.pid}:" in row["worker_id"]
    assert "worker lost" in row["error"]
    # Not taken over before the dead worker's lease ran out.
    assert row["started_at"] >= held["lease_expires_at"]


def test_killed_worker_task_is_rescued_by_a_live_in_process_worker(
    spawn_worker: Any, start_worker: Any, tm: TaskManager, db: Any
) -> None:
    first = spawn_worker("--import", "worker_tasks", env={"PGQUEUE_LEASE_SECONDS": "1"})
    task_id = worker_tasks.slow_first_attempt.delay(seconds=600)
    wait_until(lambda: task_row(db, task_id)["status"] == TaskStatus.RUNNING)
    held = task_row(db, task_id)
    # The live worker watches other queues too; it is already running when the other dies.
    start_worker(queues=["other", "default"], lease_seconds=1)
    first.kill()
    wait_until(lambda: finished(db, task_id), timeout=20)
    row = task_row(db, task_id)
    assert row["status"] == TaskStatus.COMPLETED and row["attempts"] == 2
    assert row["started_at"] >= held["lease_expires_at"]


# -- shutdown -------------------------------------------------------------------------------


def test_stop_drains_a_running_task(
    start_worker: Any, tm: TaskManager, db: Any, tmp_path: Path
) -> None:
    worker = start_worker()
    release = tmp_path / "release"
    task_id = worker_tasks.wait_for_file.delay(path=str(release))
    wait_until(lambda: task_row(db, task_id)["status"] == TaskStatus.RUNNING)
    worker.manager.stop()
    wait_until(lambda: worker.manager.stopping)  # stop() is handed to the worker's loop
    queued_after_stop = worker_tasks.record.delay(label="not claimed")
    release.touch()
    worker.stop()
    assert task_row(db, task_id)["status"] == TaskStatus.COMPLETED
    assert task_row(db, queued_after_stop)["status"] == TaskStatus.PENDING


def test_tasks_still_running_after_the_grace_period_are_released(
    start_worker: Any, tm: TaskManager, db: Any, tmp_path: Path
) -> None:
    worker = start_worker(shutdown_grace_seconds=0.3)
    task_id = worker_tasks.wait_for_file.delay(path=str(tmp_path / "never"))
    wait_until(lambda: task_row(db, task_id)["status"] == TaskStatus.RUNNING)
    worker.stop()
    row = task_row(db, task_id)
    assert row["status"] == TaskStatus.PENDING
    assert row["attempts"] == 0  # a released run is not counted against the task
    assert row["worker_id"] is None and row["lease_expires_at"] is None
    assert statuses(db) == {"PENDING": 1}


# -- configuration ---------------------------------------------------------------------------


def test_configuration_setters_check_their_input(settings: Any) -> None:
    worker = WorkerManager(get_broker(settings), settings=settings)
    worker.set_queues(["default", "urgent", "emails"])
    worker.set_polling_interval(5)
    worker.set_concurrent_tasks(10)
    worker.set_cleanup_config(interval_hours=1, retain_days=7)
    assert worker.queues == ["default", "urgent", "emails"]
    assert (worker.polling_interval, worker.concurrency) == (5.0, 10)
    with pytest.raises(ValueError, match="non-empty list"):
        worker.set_queues("default")
    with pytest.raises(ValueError, match="more than 0"):
        worker.set_polling_interval(0)
    with pytest.raises(ValueError, match="whole number"):
        worker.set_concurrent_tasks(0)
    with pytest.raises(ValueError, match="whole number"):
        worker.set_concurrent_tasks(2.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="interval_hours"):
        worker.set_cleanup_config(interval_hours=0)
    with pytest.raises(ValueError):
        worker.set_queues([""])


@pytest.mark.parametrize("grace", [-1, float("nan"), "30", None, True])
def test_shutdown_grace_refuses_what_is_not_seconds(settings: Any, grace: Any) -> None:
    worker = WorkerManager(get_broker(settings), settings=settings)
    with pytest.raises(ValueError, match=rf"shutdown grace .* not {re.escape(repr(grace))}$"):
        worker.set_shutdown_grace(grace)
    assert worker.shutdown_grace_seconds == settings.shutdown_grace_seconds
    worker.set_shutdown_grace(0)
    worker.set_shutdown_grace(2)
    assert worker.shutdown_grace_seconds == 2.0
