"""A worker waiting on LISTEN is woken by the commit of a producer that queued its task
before the worker announced itself asleep, and therefore sent no NOTIFY (revision 0004)."""

from __future__ import annotations

from typing import Any

import psycopg
import worker_tasks
from support.database import statuses
from support.waiting import wait_until

from pgqueue import TaskManager


def _announced(db: psycopg.Connection[Any]) -> bool:
    return db.execute("SELECT count(*) FROM pgqueue.sleeping_workers").fetchone() != (0,)


def _announced_since_last_start(db: psycopg.Connection[Any]) -> bool:
    row = db.execute(
        "SELECT EXISTS (SELECT FROM pgqueue.sleeping_workers AS s WHERE s.since > "
        "(SELECT coalesce(max(started_at), '-infinity') FROM pgqueue.tasks))"
    ).fetchone()
    return bool(row and row[0])


def test_a_producer_in_flight_at_the_announcement_is_not_missed(
    start_worker: Any, tm: TaskManager, db: psycopg.Connection[Any], dsn: str
) -> None:
    # A 60 s polling interval: only the announcement protocol explains a start in seconds.
    start_worker(polling_interval=60.0)
    wait_until(lambda: _announced(db))
    tm.queue_task(worker_tasks.record, label="wakes it")  # it is busy, then idle again
    wait_until(lambda: statuses(db) == {"COMPLETED": 1})
    with psycopg.connect(dsn) as producer:
        # Queued while the worker is running or announcing: the trigger may see nobody
        # asleep, and then sends nothing; its open transaction holds the wake lock.
        tm.queue_task(worker_tasks.record, label="in flight", connection=producer)
        wait_until(lambda: _announced(db))
        producer.commit()
    wait_until(lambda: statuses(db) == {"COMPLETED": 2}, timeout=20)


def test_a_sleeping_worker_is_woken_by_pgqueue_and_by_other_sql(
    start_worker: Any, tm: TaskManager, db: psycopg.Connection[Any]
) -> None:
    """Each way of writing tasks wakes a worker asleep on LISTEN: other SQL (the insert
    trigger), `.delay()` (one INSERT that looks itself) and `queue_tasks` (COPY, then one
    statement that looks)."""
    start_worker(polling_interval=60.0)
    writes = [
        lambda: db.execute(
            'INSERT INTO pgqueue.tasks (name, kwargs) VALUES (%s, \'{"label": "sql"}\')',
            (worker_tasks.record.name,),
        ),
        lambda: tm.queue_task(worker_tasks.record, label="delay"),
        lambda: tm.queue_tasks(worker_tasks.record, [{"label": "copy 1"}, {"label": "copy 2"}]),
    ]
    for done, write in zip((1, 2, 4), writes, strict=True):
        # Asleep again since the last run started: that run's wake-up forgot the old
        # announcement before the worker could make this one.
        wait_until(lambda: _announced_since_last_start(db))
        write()
        wait_until(lambda n=done: statuses(db) == {"COMPLETED": n}, timeout=20)
