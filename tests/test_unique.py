"""Unique tasks: one unfinished task per key, under concurrency and in bulk."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import psycopg
import pytest
from support.database import statuses
from support.waiting import wait_until

from pgqueue import AsyncTask, TaskManager
from pgqueue.errors import InvalidTaskArguments, InvalidTaskOption, PgQueueError


@AsyncTask(queue="unique")
def refresh(user_id: int, note: str = "") -> int:
    return user_id


@AsyncTask(queue="unique", unique_key=lambda args: f"welcome:{args['user_id']}")
def welcome(user_id: int) -> int:
    return user_id


def holders(db: psycopg.Connection[Any], key: str) -> list[tuple[Any, str]]:
    return db.execute(
        "SELECT id, status::text FROM pgqueue.tasks WHERE unique_key = %s ORDER BY id", (key,)
    ).fetchall()


def test_a_waiting_key_returns_the_existing_task(tm: TaskManager, db: psycopg.Connection[Any]):
    first = refresh.delay(unique_key="refresh:1", user_id=1)
    second = refresh.delay(unique_key="refresh:1", user_id=1, note="again")
    other = refresh.delay(unique_key="refresh:2", user_id=2)
    plain = refresh.delay(user_id=1)
    assert second == first
    assert len({first, other, plain}) == 3
    assert holders(db, "refresh:1") == [(first, "PENDING")]
    assert db.execute("SELECT count(*) FROM pgqueue.tasks").fetchone()[0] == 3
    # The first call's arguments stay: the second changed nothing.
    assert tm.get_task(first).kwargs == {"user_id": 1}


def test_the_key_is_free_again_once_the_holder_finished(tm: TaskManager, start_worker):
    first = refresh.delay(unique_key="k", user_id=1)
    assert tm.queue_task(refresh, unique_key="k", user_id=1) == first
    worker = start_worker(queues=["unique"])
    wait_until(lambda: tm.get_task(first).status == "COMPLETED")
    worker.stop()
    second = refresh.delay(unique_key="k", user_id=1)
    assert second != first
    # A cancelled holder frees the key as well.
    assert tm.cancel(second)
    assert refresh.delay(unique_key="k", user_id=1) not in (first, second)


def test_a_running_or_retrying_holder_keeps_its_key(tm: TaskManager, db):
    first = refresh.delay(unique_key="k", user_id=1)
    for status in ("RUNNING", "RETRYING"):
        db.execute("UPDATE pgqueue.tasks SET status = %s WHERE id = %s", (status, first))
        assert refresh.delay(unique_key="k", user_id=1) == first
    assert statuses(db) == {"RETRYING": 1}


def test_decorator_key_derived_from_the_arguments(tm: TaskManager, db):
    a = welcome.delay(user_id=42)
    assert welcome.delay(user_id=42) == a
    assert welcome.delay(user_id=43) != a
    # The call's key wins over the decorator's.
    assert welcome.delay(user_id=42, unique_key="other") != a
    assert sorted(k for (k,) in db.execute("SELECT unique_key FROM pgqueue.tasks")) == [
        "other",
        "welcome:42",
        "welcome:43",
    ]


def test_many_concurrent_producers_get_one_task(tm: TaskManager, db):
    producers, rounds = 16, 5
    barrier = threading.Barrier(producers)
    results: list[Any] = []
    errors: list[BaseException] = []

    def produce() -> None:
        try:
            barrier.wait()
            for index in range(rounds):
                results.append((index, refresh.delay(unique_key=f"race:{index}", user_id=index)))
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=produce) for _ in range(producers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(results) == producers * rounds
    for index in range(rounds):
        ids = {task_id for i, task_id in results if i == index}
        assert len(ids) == 1, f"key race:{index} got {len(ids)} tasks"
        assert holders(db, f"race:{index}") == [(ids.pop(), "PENDING")]
    assert db.execute("SELECT count(*) FROM pgqueue.tasks").fetchone()[0] == rounds


def test_concurrent_async_producers(tm: TaskManager, db):
    async def produce() -> set[Any]:
        ids = await asyncio.gather(
            *(refresh.adelay(unique_key="async", user_id=n) for n in range(20))
        )
        return set(ids)

    ids = asyncio.run(produce())
    assert len(ids) == 1
    assert holders(db, "async") == [(ids.pop(), "PENDING")]


def test_bulk_with_one_key_for_every_row(tm: TaskManager, db):
    existing = refresh.delay(unique_key="k", user_id=0)
    ids = tm.queue_tasks(refresh, [{"user_id": n} for n in range(5)], unique_key="k")
    assert ids == [existing] * 5
    assert db.execute("SELECT count(*) FROM pgqueue.tasks").fetchone()[0] == 1


def test_bulk_with_derived_keys(tm: TaskManager, db):
    held = welcome.delay(user_id=2)
    rows = [{"user_id": n} for n in (1, 2, 3, 1, 3, 4)]
    ids = tm.queue_tasks(welcome, rows)
    assert ids[1] == held
    assert ids[0] == ids[3] and ids[2] == ids[4]
    assert len(set(ids)) == 4
    keys = dict(db.execute("SELECT id, unique_key FROM pgqueue.tasks").fetchall())
    assert keys[ids[0]] == "welcome:1" and keys[ids[5]] == "welcome:4"
    assert len(keys) == 4
    # A callable given to queue_tasks works the same.
    more = tm.queue_tasks(refresh, rows, unique_key=lambda a: f"r{a['user_id']}")
    assert len(set(more)) == 4


def test_bulk_from_concurrent_producers(tm: TaskManager, db):
    rows = [{"user_id": n} for n in range(200)]
    results: list[list[Any]] = []

    def produce() -> None:
        results.append(tm.queue_tasks(refresh, rows, unique_key=lambda a: f"b{a['user_id']}"))

    threads = [threading.Thread(target=produce) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 6 and all(ids == results[0] for ids in results)
    assert db.execute("SELECT count(*) FROM pgqueue.tasks").fetchone()[0] == 200


def test_in_the_callers_transaction(tm: TaskManager, dsn: str, db):
    with psycopg.connect(dsn) as conn:
        first = refresh.delay(unique_key="tx", user_id=1, connection=conn)
        assert refresh.delay(unique_key="tx", user_id=1, connection=conn) == first
        conn.rollback()
    assert db.execute("SELECT count(*) FROM pgqueue.tasks").fetchone()[0] == 0
    assert refresh.delay(unique_key="tx", user_id=1) != first


def test_retrying_a_failed_task_whose_key_is_held(tm: TaskManager, db):
    failed = refresh.delay(unique_key="k", user_id=1)
    db.execute("UPDATE pgqueue.tasks SET status = 'FAILED' WHERE id = %s", (failed,))
    holder = refresh.delay(unique_key="k", user_id=1)
    assert holder != failed
    # The retried task runs again, without the key that another task holds now.
    assert tm.retry(failed)
    assert dict(db.execute("SELECT id, unique_key FROM pgqueue.tasks").fetchall()) == {
        failed: None,
        holder: "k",
    }
    assert refresh.delay(unique_key="k", user_id=1) == holder


def test_bad_keys_are_refused(tm: TaskManager, db):
    with pytest.raises(InvalidTaskOption, match="unique_key"):
        refresh.delay(unique_key="", user_id=1)
    with pytest.raises(InvalidTaskArguments, match="must be a string"):
        refresh.delay(unique_key=lambda args: 42, user_id=1)
    with pytest.raises(PgQueueError, match="unique_key"):
        refresh.delay(unique_key="a\x00b", user_id=1)
    assert statuses(db) == {}
