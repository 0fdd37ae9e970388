"""Claim-ahead (pgqueue/worker/manager.py): a worker with short runs claims tasks beyond its free
slots and holds them in a buffer; held tasks are RUNNING under its lease, never run twice,
and go back to the queue (PENDING, attempt not counted) when not started in time, at
shutdown, or never run when cancelled meanwhile."""

from __future__ import annotations

import datetime
import threading
import time
import uuid
from typing import Any

import psycopg
import pytest
from support.waiting import wait_until

from pgqueue import AsyncTask, TaskManager
from pgqueue.worker import manager as worker_module

QUEUE = "ahead"
ran: list[str] = []
gate = threading.Event()
second_gate = threading.Event()


@AsyncTask(queue=QUEUE)
def quick(label: str) -> str:
    ran.append(label)
    return label


@AsyncTask(queue=QUEUE, priority=10)
def blocker() -> None:
    ran.append("blocker")
    assert gate.wait(30), "the test never opened the gate"


@AsyncTask(queue=QUEUE)
def waiter(label: str) -> None:
    ran.append(label)
    assert second_gate.wait(30), "the test never opened the second gate"


@AsyncTask(queue=QUEUE)
def slow(label: str) -> None:
    time.sleep(0.1)
    ran.append(label)


@pytest.fixture(autouse=True)
def _reset() -> Any:
    ran.clear()
    gate.clear()
    second_gate.clear()
    yield
    gate.set()  # never leave a worker thread blocked
    second_gate.set()


def rows(db: Any, ids: list[uuid.UUID]) -> list[tuple[str, int, str | None]]:
    return db.execute(
        "SELECT status::text, attempts, worker_id FROM pgqueue.tasks WHERE id = ANY(%s)",
        (ids,),
    ).fetchall()


def buffer_behind_a_blocker(
    tm: TaskManager,
    db: Any,
    start_worker: Any,
    held_task: Any = quick,
    count: int = 5,
    **options: Any,
) -> tuple[Any, list[Any]]:
    """A worker (1 slot) whose runs proved short, now running `blocker` with `count` tasks
    (labels q0, q1, ...) claimed ahead and held: returns the worker and their ids.

    They are queued in one transaction with the blocker, so one claim takes them all while
    runs are short; the blocker then turns out long. (Once a run is long, the worker
    claims nothing ahead: test_tasks_queued_behind_long_runs_go_to_an_idle_worker.)"""
    worker = start_worker(queues=[QUEUE], concurrency=1, **options)
    warm = quick.delay(label="warm")
    wait_until(lambda: rows(db, [warm])[0][0] == "COMPLETED")
    with psycopg.connect(tm.settings.dsn) as conn:
        blocker.delay(connection=conn)
        held = tm.queue_tasks(
            held_task, [{"label": f"q{n}"} for n in range(count)], connection=conn
        )
    wait_until(lambda: "blocker" in ran)
    # The slot is busy, so these are claimed only because the worker claims ahead.
    wait_until(lambda: all(row[0] == "RUNNING" and row[1] == 1 for row in rows(db, held)))
    assert {row[2] for row in rows(db, held)} == {worker.manager.worker_id}
    return worker, held


def test_held_tasks_go_back_when_not_started_in_time(
    tm: TaskManager, db: Any, start_worker: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(worker_module, "BUFFER_HOLD_SECONDS", 0.5)
    worker, held = buffer_behind_a_blocker(tm, db, start_worker)
    # Given back while the blocker still runs: PENDING, attempt refunded, no owner.
    wait_until(lambda: rows(db, held) == [("PENDING", 0, None)] * 5, timeout=5)
    assert not any(label.startswith("q") for label in ran)
    gate.set()
    wait_until(lambda: all(row[0] == "COMPLETED" for row in rows(db, held)))
    assert sorted(row[1] for row in rows(db, held)) == [1] * 5  # each ran once
    assert sorted(label for label in ran if label.startswith("q")) == [f"q{n}" for n in range(5)]
    worker.stop()


def test_shutdown_gives_back_held_tasks_at_once(
    tm: TaskManager, db: Any, start_worker: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(worker_module, "BUFFER_HOLD_SECONDS", 60.0)
    worker, held = buffer_behind_a_blocker(tm, db, start_worker)
    worker.manager.stop()
    # Released before the drain waits for the blocker, so other workers can take them.
    wait_until(lambda: rows(db, held) == [("PENDING", 0, None)] * 5, timeout=5)
    gate.set()
    worker.stop()
    assert rows(db, held) == [("PENDING", 0, None)] * 5
    assert not any(label.startswith("q") for label in ran)


def test_a_held_task_cancelled_meanwhile_never_runs(
    tm: TaskManager, db: Any, start_worker: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(worker_module, "BUFFER_HOLD_SECONDS", 60.0)
    worker, held = buffer_behind_a_blocker(tm, db, start_worker)
    assert tm.cancel(held[2])
    gate.set()
    others = held[:2] + held[3:]
    wait_until(lambda: all(row[0] == "COMPLETED" for row in rows(db, others)))
    assert rows(db, [held[2]])[0][0] == "CANCELLED"
    assert "q2" not in ran
    worker.stop()


def test_started_at_is_when_a_held_task_really_started(
    tm: TaskManager, db: Any, start_worker: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(worker_module, "BUFFER_HOLD_SECONDS", 60.0)
    worker, held = buffer_behind_a_blocker(tm, db, start_worker)
    time.sleep(0.3)  # the held tasks wait in the buffer this long at least
    gate.set()
    wait_until(lambda: all(row[0] == "COMPLETED" for row in rows(db, held)))
    blocker_end, first_start = db.execute(
        "SELECT (SELECT finished_at FROM pgqueue.tasks WHERE name LIKE '%%blocker'),"
        " (SELECT min(started_at) FROM pgqueue.tasks WHERE id = ANY(%s))",
        (held,),
    ).fetchone()
    # Claimed before the gate opened, yet recorded as started after the blocker ended
    # (finished_at is written a little after the run ends, hence the margin).
    assert first_start > blocker_end - datetime.timedelta(milliseconds=50)
    worker.stop()


def test_the_start_of_a_held_task_is_recorded_while_it_runs(
    tm: TaskManager, db: Any, start_worker: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Held tasks are RUNNING with started_at NULL (not started: a rescue would give their
    attempt back); one that starts gets its started_at within START_RECORD_SECONDS (not at
    the next heartbeat, a third of a lease: 10 s here), before it ends."""
    monkeypatch.setattr(worker_module, "BUFFER_HOLD_SECONDS", 60.0)
    worker, (first, second) = buffer_behind_a_blocker(
        tm, db, start_worker, held_task=waiter, count=2, lease_seconds=30
    )

    def started(task_id: uuid.UUID) -> tuple[str, bool]:
        status, started_at = db.execute(
            "SELECT status::text, started_at FROM pgqueue.tasks WHERE id = %s", (task_id,)
        ).fetchone()
        return status, started_at is not None

    assert started(first) == started(second) == ("RUNNING", False)
    gate.set()  # the blocker ends; `first` starts and blocks; `second` stays held
    wait_until(lambda: "q0" in ran)
    began = time.monotonic()
    wait_until(lambda: started(first) == ("RUNNING", True), timeout=5)
    assert time.monotonic() - began < 1.0  # START_RECORD_SECONDS plus a round trip
    assert started(second) == ("RUNNING", False) and "q1" not in ran
    second_gate.set()
    wait_until(lambda: [row[0] for row in rows(db, [first, second])] == ["COMPLETED"] * 2)
    worker.stop()


def test_long_runs_are_not_claimed_ahead(tm: TaskManager, db: Any, start_worker: Any) -> None:
    ids = tm.queue_tasks(slow, [{"label": f"s{n}"} for n in range(8)])
    worker = start_worker(queues=[QUEUE], concurrency=2)
    most_running = 0
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        counts = dict(
            db.execute(
                "SELECT status::text, count(*) FROM pgqueue.tasks WHERE id = ANY(%s) GROUP BY 1",
                (ids,),
            ).fetchall()
        )
        most_running = max(most_running, counts.get("RUNNING", 0))
        if counts.get("COMPLETED") == len(ids):
            break
        time.sleep(0.01)
    assert counts.get("COMPLETED") == len(ids)
    # Runs of 100 ms: only free slots are claimed. The database may also show RUNNING a run
    # that ended but whose completion is still on its way (written in batches), never the
    # 8 tasks that claiming ahead (at least MIN_CLAIM_AHEAD) would hold.
    assert most_running <= 4
    worker.stop()


def test_tasks_queued_behind_long_runs_go_to_an_idle_worker(
    tm: TaskManager, db: Any, start_worker: Any
) -> None:
    """A worker whose slots are all taken by long runs claims nothing ahead, even though
    its past runs were short: tasks queued meanwhile run at once on an idle worker."""
    busy = start_worker(queues=[QUEUE], concurrency=2)
    warm = quick.delay(label="warm")
    wait_until(lambda: rows(db, [warm])[0][0] == "COMPLETED")
    long_runs = [blocker.delay(), blocker.delay()]
    wait_until(lambda: ran.count("blocker") == 2)
    time.sleep(0.2)  # the runs are now longer than a short run (CLAIM_AHEAD_MAX_RUN_SECONDS)
    short = tm.queue_tasks(quick, [{"label": f"s{n}"} for n in range(3)])
    idle = start_worker(queues=[QUEUE], concurrency=2)
    wait_until(lambda: all(row[0] == "COMPLETED" for row in rows(db, short)), timeout=5)
    assert {row[2] for row in rows(db, short)} == {idle.manager.worker_id}
    assert [row[0] for row in rows(db, long_runs)] == ["RUNNING"] * 2
    gate.set()
    wait_until(lambda: all(row[0] == "COMPLETED" for row in rows(db, long_runs)))
    assert {row[2] for row in rows(db, long_runs)} == {busy.manager.worker_id}
