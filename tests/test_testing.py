"""The test mode (pgqueue.testing): delays, retries and cron driven by a clock, no sleeping."""

from __future__ import annotations

import asyncio
import collections
import datetime
import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pytest
from psycopg import sql
from support.database import statuses
from support.paths import ROOT
from support.waiting import wait_until

from pgqueue import AsyncTask, PgQueueError, Retry, Snooze, TaskManager, current_task, testing

calls: collections.Counter[str] = collections.Counter()


@AsyncTask(queue="testing")
def greet(name: str) -> str:
    return f"hello {name}"


@AsyncTask(queue="testing", max_retries=3)
def flaky(tag: str, failures: int) -> int:
    calls[tag] += 1
    if calls[tag] <= failures:
        raise ConnectionError(f"failure {calls[tag]}")
    return current_task().attempt


@AsyncTask(queue="testing")
async def patient(tag: str) -> str:
    calls[tag] += 1
    if calls[tag] == 1:
        raise Retry(delay=600)
    if calls[tag] == 2:
        raise Snooze(1200)
    return "done"


@AsyncTask(queue="testing")
def restless() -> None:
    raise Snooze(1)


@AsyncTask(queue="testing-cron", cron="0 9 * * *", timezone="Europe/Paris", cron_catchup=7200)
def morning_report() -> str:
    return "report"


def test_delays_run_only_once_the_clock_reaches_them(tm: TaskManager, db):
    task_id = greet.delay(delay=3600, name="later")
    now_id = greet.delay(name="now")
    ran = testing.drain(tm)
    assert [t.id for t in ran] == [now_id] and ran[0].result == "hello now"
    assert tm.get_task(task_id).status == "PENDING"
    assert testing.drain(tm, now=datetime.timedelta(minutes=59)) == []
    started = time.monotonic()
    [task] = testing.drain(tm, now=datetime.timedelta(hours=1))
    assert time.monotonic() - started < 2  # no waiting for the hour
    assert (task.id, task.status, task.result) == (task_id, "COMPLETED", "hello later")


def test_retries_with_backoff_without_waiting(tm: TaskManager, db):
    fails = flaky.delay(tag="always", failures=99)
    recovers = flaky.delay(tag="twice", failures=2)
    # At the real now, each runs once and waits for its back-off.
    testing.drain(tm)
    assert statuses(db) == {"RETRYING": 2}
    started = time.monotonic()
    ran = {t.id: t for t in testing.drain(tm, now=datetime.timedelta(minutes=5))}
    assert time.monotonic() - started < 3
    assert ran[fails].status == "FAILED" and ran[fails].attempts == 4
    assert "ConnectionError: failure 4" in (ran[fails].error or "")
    assert ran[recovers].status == "COMPLETED" and ran[recovers].result == 3
    assert calls["always"] == 4 and calls["twice"] == 3


def test_retry_and_snooze_follow_the_clock(tm: TaskManager):
    task_id = patient.delay(tag="patient")
    testing.drain(tm)
    assert tm.get_task(task_id).status == "RETRYING"  # Retry(delay=600)
    testing.drain(tm, now=datetime.timedelta(minutes=11))
    assert tm.get_task(task_id).status == "RETRYING"  # Snooze(1200) after that
    [task] = testing.drain(tm, now=datetime.timedelta(minutes=35))
    assert (task.status, task.result, task.attempts) == ("COMPLETED", "done", 2)


def test_only_the_queues_asked_for(tm: TaskManager):
    greet.delay(name="a")
    other = tm.queue_task(greet, queue="elsewhere", name="b")
    assert [t.name for t in testing.drain(tm, queues=["elsewhere"])] == [greet.name]
    assert tm.get_task(other).status == "COMPLETED"


def test_a_task_that_keeps_snoozing_is_reported(tm: TaskManager):
    restless.delay()
    with pytest.raises(PgQueueError, match="keep rescheduling itself"):
        testing.drain(tm, now=datetime.timedelta(hours=1), max_runs=20)


def test_cron_occurrences_with_the_clock(tm: TaskManager, db):
    paris = ZoneInfo("Europe/Paris")
    today = db.execute("SELECT now()").fetchone()[0].astimezone(paris).date()
    nine = datetime.datetime.combine(today + datetime.timedelta(days=1), datetime.time(9), paris)
    assert (
        testing.queue_cron(tm, now=nine - datetime.timedelta(minutes=1), tasks=[morning_report])
        == []
    )
    [task_id] = testing.queue_cron(
        tm, now=nine + datetime.timedelta(minutes=1), tasks=[morning_report]
    )
    assert tm.get_task(task_id).run_at == nine
    # Asked again for the same moment, nothing more is queued.
    assert (
        testing.queue_cron(tm, now=nine + datetime.timedelta(minutes=2), tasks=[morning_report])
        == []
    )
    [task] = testing.drain(tm, now=nine + datetime.timedelta(minutes=1))
    assert (task.id, task.result) == (task_id, "report")


def test_async_tests_use_adrain(tm: TaskManager):
    async def main() -> list[Any]:
        await greet.adelay(name="async", delay=60)
        with pytest.raises(PgQueueError, match="adrain"):
            testing.drain(tm)
        return await testing.adrain(tm, now=60)

    [task] = asyncio.run(main())
    assert task.result == "hello async"


def test_an_unregistered_name_fails_at_once_without_an_attempt(tm: TaskManager):
    # The drain is the only worker: a give-back would only come due again within its clock.
    task_id = tm.queue_task("nowhere.never_defined", queue="testing")
    [ran] = testing.drain(tm, ["testing"], now=datetime.timedelta(hours=2))
    assert ran.id == task_id and ran.status == "FAILED" and ran.attempts == 0
    assert (ran.error or "").startswith(
        "UnknownTask: no worker knew task name 'nowhere.never_defined' for 0 s (given back 1 time"
    )


# -- reset ---------------------------------------------------------------------------------

#: What reset keeps: the workers' own rows and the schema's revision.
KEPT_BY_RESET = {"workers", "alembic_version"}


def rows_per_table(db: psycopg.Connection[Any]) -> dict[str, int]:
    """{table: its row count} of every table of the pgqueue schema."""
    tables = db.execute(
        "SELECT table_name FROM information_schema.tables "
        "WHERE table_schema = 'pgqueue' AND table_type = 'BASE TABLE' ORDER BY 1"
    ).fetchall()
    query = sql.SQL("SELECT count(*) FROM pgqueue.{}")
    return {
        name: db.execute(query.format(sql.Identifier(name))).fetchone()[0] for (name,) in tables
    }


def test_reset_leaves_the_database_as_a_fresh_one(tm: TaskManager, db) -> None:
    """Every table but the workers' and the revision is empty afterwards (a table a later
    revision adds fails this until reset clears it or KEPT_BY_RESET names it), and a cron
    occurrence already queued is queued again."""
    nine = datetime.datetime(2030, 1, 7, 9, tzinfo=ZoneInfo("Europe/Paris"))
    [first] = testing.queue_cron(tm, now=nine, tasks=[morning_report])
    greet.delay(name="done")
    testing.drain(tm, ["testing"])
    greet.delay(name="later", delay=3600)
    db.execute("INSERT INTO pgqueue.paused_queues (queue) VALUES ('testing')")
    db.execute(
        "INSERT INTO pgqueue.result_waiters (id, task_id, expires_at) "
        "VALUES (%s, %s, now() + interval '1 hour')",
        (uuid.uuid4(), first),
    )
    db.execute(
        "INSERT INTO pgqueue.outbox (task_id, queue, priority, message, run_at) "
        "VALUES (%s, 'testing', 0, '{}', now())",
        (uuid.uuid4(),),
    )
    db.commit()
    before = rows_per_table(db)
    assert all(before[table] for table in ("tasks", "cron_runs", "cron_schedules")), before
    assert all(before[table] for table in ("paused_queues", "result_waiters", "outbox")), before

    testing.reset(tm)

    after = rows_per_table(db)
    assert {table: n for table, n in after.items() if n and table not in KEPT_BY_RESET} == {}
    assert after["alembic_version"] == 1
    [again] = testing.queue_cron(tm, now=nine, tasks=[morning_report])
    assert again != first


def test_reset_refuses_while_a_worker_serves_the_database(
    tm: TaskManager, db, start_worker: Any
) -> None:
    task_id = greet.delay(name="kept", delay=3600)
    worker = start_worker(queues=["testing"])
    wait_until(lambda: db.execute("SELECT count(*) FROM pgqueue.live_workers").fetchone()[0])
    with pytest.raises(PgQueueError, match="refuses to clear a database that 1 live worker"):
        testing.reset(tm)
    assert tm.get_task(task_id) is not None
    worker.stop()


def test_async_tests_use_areset(tm: TaskManager, db) -> None:
    async def main() -> None:
        await greet.adelay(name="async")
        with pytest.raises(PgQueueError, match=r"await testing\.areset"):
            testing.reset(tm)
        await testing.areset(tm)

    asyncio.run(main())
    assert statuses(db) == {}


def documented_file(page: Path, first_line: str) -> str:
    """The python block of `page` whose first line starts with `first_line`."""
    blocks = re.findall(r"```python\n(.*?)```", page.read_text(), re.DOTALL)
    [block] = [block for block in blocks if block.startswith(first_line)]
    return block


def test_the_documented_test_shop_passes_twice_under_w_error(dsn: str, tmp_path: Path) -> None:
    """docs/features.md's own test file, run as a user would (pytest -W error, PGQUEUE_DSN),
    passes, and passes again against the same database: no state left over, no warning
    about a pool closed at the wrong time."""
    page = ROOT / "docs" / "features.md"
    (tmp_path / "shop.py").write_text(documented_file(page, "# shop.py"))
    (tmp_path / "test_shop.py").write_text(documented_file(page, "# test_shop.py"))
    environment = {k: v for k, v in os.environ.items() if not k.startswith("PGQUEUE_")}
    pytest_options = ["-W", "error", "-p", "no:cacheprovider", "-p", "no:randomly", "-q"]
    for run in (1, 2):
        result = subprocess.run(
            [sys.executable, "-m", "pytest", *pytest_options, "test_shop.py"],
            cwd=tmp_path,
            env={**environment, "PGQUEUE_DSN": dsn},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, f"run {run}:\n{result.stdout[-3000:]}{result.stderr}"
        assert re.search(r"\b3 passed\b", result.stdout), result.stdout
