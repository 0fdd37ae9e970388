"""`pgqueue tasks explain ID` and Admin.explain: what holds a task back, each reason."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner
from support.waiting import wait_until

from pgqueue import AsyncTask, TaskManager
from pgqueue.cli import main
from pgqueue.ops.admin import Admin
from pgqueue.settings import get_settings

gate = threading.Event()


@AsyncTask(queue="explain")
def noop() -> None:
    return None


@AsyncTask(queue="explain")
def blocker() -> None:
    gate.wait(10)


@pytest.fixture
def admin(dsn: str) -> Iterator[Admin]:
    with Admin.connect(dsn) as session:
        yield session


def codes(admin: Admin, task_id: Any) -> list[str]:
    return [reason["code"] for reason in admin.explain(task_id)["reasons"]]


def fake_worker(db: psycopg.Connection[Any], queues: list[str], names: list[str] | None) -> None:
    """A live worker row (a worker that registered and heartbeats, seen from SQL)."""
    db.execute("SELECT pgqueue.register_worker('fake', 'host', 1, %s, 2, 'test', 30)", (queues,))
    db.execute("UPDATE pgqueue.workers SET task_names = %s WHERE id = 'fake'", (names,))


def test_scheduled_later(tm: TaskManager, admin: Admin, db):
    fake_worker(db, ["explain"], None)
    task_id = noop.delay(delay=3600)
    reasons = admin.explain(task_id)["reasons"]
    assert [r["code"] for r in reasons] == ["scheduled"]
    assert "in 3600 s" in reasons[0]["message"] or "in 3599 s" in reasons[0]["message"]


def test_retrying_after_an_error(tm: TaskManager, admin: Admin, db):
    fake_worker(db, ["explain"], None)
    task_id = noop.delay()
    db.execute(
        "UPDATE pgqueue.tasks SET status = 'RETRYING', attempts = 1, run_at = now() + "
        "interval '5 minutes', error = E'ValueError: bad input\\n\\ntraceback' WHERE id = %s",
        (task_id,),
    )
    reasons = admin.explain(task_id)["reasons"]
    assert [r["code"] for r in reasons] == ["retrying"]
    assert "after error: ValueError: bad input (attempt 1 of 4 done)" in reasons[0]["message"]


def test_paused_queue_and_no_worker(tm: TaskManager, admin: Admin):
    task_id = noop.delay()
    assert codes(admin, task_id) == ["no_worker"]
    admin.pause_queue("explain")
    assert codes(admin, task_id) == ["paused", "no_worker"]


def test_no_live_worker_has_the_task_registered(tm: TaskManager, admin: Admin, db, start_worker):
    start_worker(queues=["explain"])
    wait_until(lambda: admin.live_workers())
    # Queued by name: no worker imported a module that defines it.
    task_id = tm.queue_task("nowhere.defined", queue="explain-unknown")
    assert codes(admin, task_id) == ["no_worker"]
    fake_worker(db, ["explain-unknown"], ["myapp.other_task"])
    assert codes(admin, task_id) == ["not_registered"]
    # A real worker registered its task names, this one's included.
    names = db.execute("SELECT task_names FROM pgqueue.workers WHERE id <> 'fake'").fetchone()[0]
    assert noop.name in names


def test_waiting_behind_higher_priority_tasks(tm: TaskManager, admin: Admin, db):
    fake_worker(db, ["explain"], [noop.name])
    tm.queue_tasks(noop, [{}, {}, {}], priority=5)
    earlier = noop.delay()
    task_id = noop.delay()
    noop.delay(priority=-1)  # behind it: not counted
    reasons = admin.explain(task_id)["reasons"]
    assert [r["code"] for r in reasons] == ["behind"]
    assert "behind 4 due tasks" in reasons[0]["message"]
    assert "(3 of higher priority)" in reasons[0]["message"]
    assert "capacity 2" in reasons[0]["message"]
    assert codes(admin, earlier) == ["behind"]


def test_ready_running_and_finished(tm: TaskManager, admin: Admin, db, start_worker):
    fake_worker(db, ["explain"], [noop.name])
    ready = noop.delay()
    assert codes(admin, ready) == ["ready"]
    db.execute("DELETE FROM pgqueue.workers")
    gate.clear()
    start_worker(queues=["explain"], concurrency=1)
    running = blocker.delay()
    wait_until(lambda: tm.get_task(running).status == "RUNNING")
    assert codes(admin, running) == ["running"]
    gate.set()
    tm.wait(running, timeout=10)
    assert codes(admin, running) == ["finished"]


def test_the_cli(tm: TaskManager, dsn: str, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("PGQUEUE_DSN", dsn)
    get_settings.cache_clear()
    try:
        task_id = noop.delay(delay=600)
        runner = CliRunner()
        result = runner.invoke(main, ["tasks", "explain", str(task_id)])
        assert result.exit_code == 0, result.output
        assert "scheduled for" in result.stdout and "no live worker listens" in result.stdout
        result = runner.invoke(main, ["tasks", "explain", str(task_id), "--json"])
        assert [r["code"] for r in json.loads(result.stdout)["reasons"]] == [
            "scheduled",
            "no_worker",
        ]
        result = runner.invoke(main, ["tasks", "explain", "not-an-id"])
        assert result.exit_code != 0
        assert result.stderr.strip().startswith("Error: ") and "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    finally:
        get_settings.cache_clear()


def test_given_back_by_a_worker_that_does_not_know_the_name(
    tm: TaskManager, admin: Admin, db, start_worker, dsn: str, monkeypatch: pytest.MonkeyPatch
):
    task_id = tm.queue_task("nowhere.new_kind", queue="explain-unknown")
    worker = start_worker(queues=["explain-unknown"])
    worker_id = worker.manager.worker_id
    wait_until(lambda: "unknown_name" in codes(admin, task_id))
    worker.stop()
    found = admin.explain(task_id)
    reason = found["reasons"][0]
    assert reason["code"] == "unknown_name"
    fails_at = db.execute(
        "SELECT unknown_since + interval '1 hour' FROM pgqueue.tasks WHERE id = %s", (task_id,)
    ).fetchone()[0]
    for words in (
        "given back once since ",
        f"last by worker {worker_id}, which has not registered task 'nowhere.new_kind'",
        "no attempt spent",
        "a worker that imports its module (--import) runs it",
        f"it ends FAILED at {fails_at} (in 3600 s)",
    ):
        assert words in reason["message"], (words, reason["message"])
    # The same through the command line.
    monkeypatch.setenv("PGQUEUE_DSN", dsn)
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(main, ["tasks", "explain", str(task_id)])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 0, result.output
    assert f"last by worker {worker_id}" in result.stdout
    # Once the grace is over it is FAILED, and explain gives the reason.
    db.execute(
        "UPDATE pgqueue.tasks SET run_at = now(), unknown_since = now() - interval '2 hours' "
        "WHERE id = %s",
        (task_id,),
    )
    start_worker(queues=["explain-unknown"])
    wait_until(lambda: tm.get_task(task_id).status == "FAILED")
    message = admin.explain(task_id)["reasons"][0]["message"]
    assert message.startswith(
        "it is FAILED (attempt 0 of 4): UnknownTask: no worker knew task name 'nowhere.new_kind'"
    ), message
