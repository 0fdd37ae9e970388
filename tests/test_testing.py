"""The test mode (pgqueue.testing): delays, retries and cron driven by a clock, no sleeping."""

from __future__ import annotations

import asyncio
import collections
import datetime
import time
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from support.database import statuses

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
