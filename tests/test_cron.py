"""Recurring tasks: schedules, one task per occurrence however many workers race, catch-up."""

from __future__ import annotations

import asyncio
import datetime
import inspect
import itertools
import json
import signal
import threading
from typing import Any
from zoneinfo import ZoneInfo

import feature_tasks
import psycopg
import pytest
from click.testing import CliRunner
from support.waiting import wait_until

from pgqueue import AsyncTask, TaskManager
from pgqueue.cli import main
from pgqueue.db.cron import Enqueue, queue_due_occurrences
from pgqueue.errors import TaskDefinitionError
from pgqueue.settings import get_settings
from pgqueue.tasks.schedule import CronSchedule

UTC = datetime.UTC


def occurrences(db: psycopg.Connection[Any], name: str) -> list[datetime.datetime]:
    rows = db.execute(
        "SELECT run_at FROM pgqueue.tasks WHERE name = %s ORDER BY run_at", (name,)
    ).fetchall()
    return [row[0] for row in rows]


def queue_due(
    dsn: str,
    tm: TaskManager,
    task: Any,
    now: datetime.datetime | None,
    enqueue: Enqueue | None = None,
) -> list[Any]:
    """One pass of a worker's scheduler, through `tm`'s broker unless `enqueue` is given."""

    async def run() -> list[Any]:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            queries = tm.store.database.queries
            return await queue_due_occurrences(
                conn,
                queries,
                task,
                tm.settings.defaults,
                now,
                enqueue=enqueue or tm.broker.aenqueue,
            )

    return asyncio.run(run())


def test_schedule_is_checked_at_definition():
    def define(**options: Any) -> None:
        AsyncTask(**options)(lambda: None)

    with pytest.raises(TaskDefinitionError, match="five-field cron expression"):
        define(cron="0 9 * *")
    with pytest.raises(TaskDefinitionError, match="five-field cron expression"):
        define(cron="0 0 9 * * *")  # six fields (seconds) are refused
    with pytest.raises(TaskDefinitionError, match="five-field cron expression"):
        define(cron="61 9 * * *")
    with pytest.raises(TaskDefinitionError, match="IANA time zone"):
        define(cron="0 9 * * *", timezone="Mars/Olympus")
    with pytest.raises(TaskDefinitionError, match="go with cron"):
        define(timezone="Europe/Paris")
    with pytest.raises(TaskDefinitionError, match="cron_catchup must be a finite number"):
        define(cron="0 9 * * *", cron_catchup=-1)
    with pytest.raises(TaskDefinitionError, match="requires user_id"):
        AsyncTask(cron="0 9 * * *")(lambda user_id: None)


def test_occurrences_follow_the_time_zone_across_summer_time():
    paris = CronSchedule("0 9 * * *", "Europe/Paris")
    saturday_noon = datetime.datetime(2026, 3, 28, 12, tzinfo=ZoneInfo("Europe/Paris"))
    found = paris.occurrences(saturday_noon, saturday_noon + datetime.timedelta(days=2))
    # 09:00 in Paris is 08:00 UTC before the change of the night of 28-29 March, 07:00 after.
    assert [moment.astimezone(UTC).hour for moment in found] == [7, 7]
    assert [moment.day for moment in found] == [29, 30]
    start = datetime.datetime(2026, 1, 1, tzinfo=UTC)
    assert CronSchedule("*/15 * * * *").occurrences(start, start.replace(hour=1)) == [
        start.replace(minute=15),
        start.replace(minute=30),
        start.replace(minute=45),
        start.replace(hour=1),
    ]


def test_racing_schedulers_queue_each_occurrence_once(tm: TaskManager, dsn: str, db):
    task = feature_tasks.every_minute
    now = db.execute("SELECT now()").fetchone()[0] + datetime.timedelta(minutes=3)
    racers = 8
    barrier = threading.Barrier(racers)
    queued: list[Any] = []

    def race() -> None:
        barrier.wait()
        queued.extend(queue_due(dsn, tm, task, now))

    threads = [threading.Thread(target=race) for _ in range(racers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    marks = occurrences(db, task.name)
    # Three minute marks fall in (now - 3 min, now]: each was queued by exactly one racer.
    assert len(marks) == len(set(marks)) == len(queued) == 3
    assert all(mark.second == 0 and mark.microsecond == 0 for mark in marks)
    assert db.execute("SELECT count(*) FROM pgqueue.cron_runs").fetchone()[0] == 3


def test_an_occurrence_is_claimed_only_together_with_its_task(tm: TaskManager, dsn: str, db):
    task = feature_tasks.every_minute
    now = db.execute("SELECT now()").fetchone()[0] + datetime.timedelta(minutes=3)

    async def broker_fails_after_the_row(tasks: Any, connection: Any) -> None:
        await tm.store.ainsert(tasks, connection)
        raise RuntimeError("the broker refused the task")

    with pytest.raises(RuntimeError, match="refused"):
        queue_due(dsn, tm, task, now, enqueue=broker_fails_after_the_row)
    # The claim of the occurrence went with its row: both rolled back, nothing half-queued.
    assert db.execute("SELECT count(*) FROM pgqueue.cron_runs").fetchone()[0] == 0
    assert occurrences(db, task.name) == []
    queued = queue_due(dsn, tm, task, now)  # so the next pass queues it
    assert len(queued) == len(occurrences(db, task.name)) == 3
    claimed = db.execute("SELECT task_id FROM pgqueue.cron_runs").fetchall()
    assert sorted(row[0] for row in claimed) == sorted(queued)


def test_two_worker_processes_catch_up_once(tm: TaskManager, spawn_worker, db):
    task = feature_tasks.every_minute
    # The schedule was known for ten minutes, but no worker ran: with a catch-up window of
    # five minutes, only the occurrences of the last five are queued, each once.
    db.execute(
        "INSERT INTO pgqueue.cron_schedules (name, cron, timezone, queue, catchup_seconds, "
        "first_seen_at) VALUES (%s, '* * * * *', 'UTC', 'cron-race', 300, "
        "now() - interval '10 minutes')",
        (task.name,),
    )
    started = db.execute("SELECT now()").fetchone()[0]
    workers = [spawn_worker("--import", "feature_tasks", "--queues", "cron-race") for _ in range(2)]

    def completed() -> int:
        return db.execute(
            "SELECT count(*) FROM pgqueue.tasks WHERE name = %s AND status = 'COMPLETED'",
            (task.name,),
        ).fetchone()[0]

    wait_until(
        lambda: (
            db.execute("SELECT count(*) FROM pgqueue.live_workers").fetchone()[0] == 2
            and completed() >= 5
        ),
        timeout=30,
    )
    for worker in workers:
        worker.signal(signal.SIGTERM)
        assert worker.wait() == 0, worker.output
    marks = occurrences(db, task.name)
    assert len(marks) == len(set(marks)), marks
    assert 5 <= len(marks) <= 6  # 6 if a minute turned while the workers started
    assert marks[0] > started - datetime.timedelta(minutes=5)
    assert all((b - a) == datetime.timedelta(minutes=1) for a, b in itertools.pairwise(marks))
    assert completed() == len(marks)
    runs = db.execute("SELECT count(*) FROM pgqueue.cron_runs WHERE name = %s", (task.name,))
    assert runs.fetchone()[0] == len(marks)


def test_catch_up_after_downtime_is_bounded_by_the_window(tm: TaskManager, dsn: str, db):
    task = feature_tasks.hourly  # "0 * * * *", catch-up window of two hours
    now = db.execute("SELECT date_trunc('hour', now()) + interval '30 minutes'").fetchone()[0]
    db.execute(
        "INSERT INTO pgqueue.cron_schedules (name, cron, timezone, queue, catchup_seconds, "
        "first_seen_at) VALUES (%s, '0 * * * *', 'UTC', 'cron-hourly', 7200, %s)",
        (task.name, now - datetime.timedelta(days=5)),
    )
    # The last occurrence queued was five hours ago, and one from three days ago remains.
    for age in (datetime.timedelta(days=3), datetime.timedelta(hours=5, minutes=30)):
        db.execute(
            "INSERT INTO pgqueue.cron_runs (name, scheduled_at, task_id) "
            "VALUES (%s, %s, gen_random_uuid())",
            (task.name, now - age),
        )
    queued = queue_due(dsn, tm, task, now)
    hour = now - datetime.timedelta(minutes=30)
    assert occurrences(db, task.name) == [hour - datetime.timedelta(hours=1), hour]
    assert len(queued) == 2
    # Nothing more for the same moment; the next hour's occurrence comes at its time.
    assert queue_due(dsn, tm, task, now) == []
    assert len(queue_due(dsn, tm, task, now + datetime.timedelta(hours=1))) == 1
    # Occurrences older than the window (and a day more) are forgotten.
    kept = db.execute("SELECT min(scheduled_at) FROM pgqueue.cron_runs").fetchone()[0]
    assert kept > now - datetime.timedelta(days=2)


def test_a_worker_schedules_the_cron_tasks_of_its_queues(tm, start_worker, db):
    start_worker(queues=["elsewhere"])
    start_worker(queues=["cron-hourly"])
    wait_until(lambda: db.execute("SELECT count(*) FROM pgqueue.cron_schedules").fetchone()[0])
    names = [row[0] for row in db.execute("SELECT name FROM pgqueue.cron_schedules")]
    assert names == [feature_tasks.hourly.name]


def test_cron_list_shows_the_next_run(tm, dsn: str, db, monkeypatch: pytest.MonkeyPatch):
    queue_due(dsn, tm, feature_tasks.hourly, None)
    monkeypatch.setenv("PGQUEUE_DSN", dsn)
    get_settings.cache_clear()
    try:
        runner = CliRunner()
        result = runner.invoke(main, ["cron", "list", "--json"])
        assert result.exit_code == 0, result.output
        [row] = json.loads(result.stdout)
        now = db.execute("SELECT now()").fetchone()[0]
        expected = (now + datetime.timedelta(hours=1)).replace(minute=0, second=0, microsecond=0)
        assert row["name"] == feature_tasks.hourly.name and row["cron"] == "0 * * * *"
        assert datetime.datetime.fromisoformat(row["next_run_at"]) == expected
        text = runner.invoke(main, ["cron", "list"])
        assert text.exit_code == 0 and "0 * * * *" in text.stdout
    finally:
        get_settings.cache_clear()


def test_cron_tasks_take_no_required_arguments():
    assert inspect.signature(feature_tasks.every_minute.fn).parameters == {}
    assert feature_tasks.every_minute.schedule == CronSchedule("* * * * *", "UTC", 300.0)
