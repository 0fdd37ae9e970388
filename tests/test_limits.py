"""Limits and fair share (sql/limits.sql): the API, its errors, patterns, the keyed claim
through the test mode's clock, give-back of slots, the recount, and explain."""

from __future__ import annotations

import asyncio
import datetime
import uuid
from typing import Any

import psycopg
import pytest

from pgqueue import AsyncTask, Limit, Snooze, TaskManager, testing
from pgqueue.errors import InvalidTaskArguments, InvalidTaskOption


@AsyncTask(queue="limited", limits=["ses"])
def send(n: int) -> int:
    return n


@AsyncTask(queue="limited")
def plain(n: int) -> int:
    return n


@AsyncTask(queue="limited")
def snoozes(n: int) -> None:
    raise Snooze(3600)


def _usage(db: psycopg.Connection[Any]) -> dict[str, int]:
    rows = db.execute("SELECT key, running FROM pgqueue.limit_usage").fetchall()
    return {key: running for key, running in rows}


def _ran(tasks: list[Any]) -> list[int]:
    return [task.kwargs["n"] for task in tasks]


# -- the API -------------------------------------------------------------------------------


def test_set_limit_replaces_the_whole_definition(tm: TaskManager) -> None:
    tm.set_limit("ses", concurrency=10)
    tm.set_limit("api", rate=14, per=datetime.timedelta(seconds=1))
    tm.set_limit("ses", rate=5, per=60, burst=2)
    assert tm.limits() == [
        Limit("api", None, 14.0, 1.0, 14.0),
        Limit("ses", None, 5.0, 60.0, 2.0),
    ]
    assert tm.remove_limit("api") is True
    assert tm.remove_limit("api") is False
    assert [limit.name for limit in tm.limits()] == ["ses"]


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"concurrency": -1}, InvalidTaskOption, "concurrency must be 0 or more"),
        ({"concurrency": "3"}, InvalidTaskArguments, "concurrency must be an int"),
        ({"rate": 10}, InvalidTaskOption, "needs both rate= (starts) and per="),
        ({"per": 1}, InvalidTaskOption, "needs both rate= (starts) and per="),
        ({"rate": 0, "per": 1}, InvalidTaskOption, "rate must be a number above 0"),
        ({"rate": 1, "per": 0}, InvalidTaskOption, "per must be more than 0 seconds"),
        ({"rate": 1, "per": 1, "burst": 0.5}, InvalidTaskOption, "burst must be 1 or more"),
        ({}, InvalidTaskOption, "needs a concurrency, or a rate with per"),
    ],
)
def test_bad_limits_are_refused_at_the_call(
    tm: TaskManager, kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")):
        tm.set_limit("ses", **kwargs)
    assert tm.limits() == []


def test_bad_keys_are_refused_at_the_call(tm: TaskManager) -> None:
    with pytest.raises(InvalidTaskArguments, match="limits takes a list of keys"):
        send.delay(limits="ses", n=1)
    with pytest.raises(InvalidTaskArguments, match="limit key must be a string, not int"):
        send.delay(limits=[3], n=1)
    with pytest.raises(InvalidTaskOption, match="257 characters long; the limit is 256"):
        send.delay(limits=["k" * 257], n=1)
    with pytest.raises(InvalidTaskOption, match="fair_key is empty"):
        send.delay(fair_key="", n=1)
    with pytest.raises(InvalidTaskOption, match="at most 16 limit keys"):
        plain.delay(limits=[f"k{i}" for i in range(17)], n=1)
    with pytest.raises(InvalidTaskArguments, match="limit name must be a string"):
        tm.set_limit(7, concurrency=1)  # type: ignore[arg-type]
    with pytest.raises(InvalidTaskOption, match="weight must be above 0"):
        tm.set_fair_weight("limited", "acme", 0)


def test_keys_are_stored_from_the_decorator_the_call_and_options(
    tm: TaskManager, db: psycopg.Connection[Any]
) -> None:
    one = send.delay(limits=["tenant:acme", "ses"], fair_key="acme", n=1)
    two = send.options(limits=["x"], fair_key="b").delay(n=2)
    bulk = tm.queue_tasks(plain, [{"n": 3}, {"n": 4}], limits=['we"ird\\key', "y"], fair_key="c")
    single = tm.queue_task(plain, limits=["z"], n=5)
    rows = {
        row[0]: (row[1], row[2])
        for row in db.execute("SELECT id, limit_keys, fair_key FROM pgqueue.tasks")
    }
    assert rows[one] == (["ses", "tenant:acme"], "acme")
    assert rows[two] == (["ses", "x"], "b")
    assert rows[bulk[0]] == rows[bulk[1]] == (['we"ird\\key', "y"], "c")
    assert rows[single] == (["z"], None)
    task = tm.get_task(one)
    assert task is not None
    assert (task.limit_keys, task.fair_key) == (["ses", "tenant:acme"], "acme")


def test_async_twins(tm: TaskManager) -> None:
    async def use() -> uuid.UUID:
        await tm.aset_limit("ses", concurrency=2)
        await tm.aset_fair_weight("limited", "acme", 3)
        assert await tm.alimits() == [Limit("ses", 2)]
        assert await tm.aremove_limit("ses")
        return await tm.aqueue_task(send, fair_key="acme", n=1)

    assert isinstance(asyncio.run(use()), uuid.UUID)


# -- the claim, through the test mode ----------------------------------------------------


def test_concurrency_holds_back_without_spending_attempts(
    tm: TaskManager, db: psycopg.Connection[Any]
) -> None:
    tm.set_limit("ses", concurrency=0)
    held = send.delay(n=1)
    free = plain.delay(n=2)
    assert _ran(testing.drain(tm)) == [2]
    row = db.execute("SELECT status, attempts FROM pgqueue.tasks WHERE id = %s", (held,))
    assert row.fetchone() == ("PENDING", 0)
    tm.set_limit("ses", concurrency=1)
    assert _ran(testing.drain(tm)) == [1]
    assert _usage(db) == {"ses": 0}
    assert free


def test_a_pattern_gives_each_key_its_own_limit(
    tm: TaskManager, db: psycopg.Connection[Any]
) -> None:
    tm.set_limit("tenant:*", concurrency=1)
    tm.set_limit("tenant:big", concurrency=2)
    for n, key in enumerate(["tenant:a", "tenant:a", "tenant:b", "tenant:big", "tenant:big"]):
        plain.delay(limits=[key], n=n)

    # One claim of everything: each key admits as many as fit, the rest wait.
    async def claim() -> list[int]:
        async with await psycopg.AsyncConnection.connect(tm.store.database.dsn) as conn:
            cursor = await conn.execute(
                tm.store.database.queries["claim_keyed_tasks"],
                {
                    "queues": ["limited"],
                    "limit": 10,
                    "worker_id": "w",
                    "lease_seconds": 60.0,
                    "start_now": None,
                    "now": None,
                },
            )
            return [row[0] for row in await cursor.fetchall()]

    claimed = asyncio.run(claim())
    keys = [
        db.execute("SELECT limit_keys[1] FROM pgqueue.tasks WHERE id = %s", (i,)).fetchone()[0]  # type: ignore[index]
        for i in claimed
    ]
    assert sorted(keys) == ["tenant:a", "tenant:b", "tenant:big", "tenant:big"]
    assert _usage(db) == {"tenant:a": 1, "tenant:b": 1, "tenant:big": 2}
    # A crash: the RUNNING rows vanish without a give-back; the recount brings it back.
    db.execute("UPDATE pgqueue.tasks SET status = 'FAILED' WHERE status = 'RUNNING'")
    assert db.execute("SELECT pgqueue.recount_limit_usage()").fetchone() == (3,)
    assert _usage(db) == {"tenant:a": 0, "tenant:b": 0, "tenant:big": 0}
    tm.remove_limit("tenant:*")
    db.execute("SELECT pgqueue.recount_limit_usage()")
    assert _usage(db) == {"tenant:big": 0}  # a key without a limit and idle is forgotten


def test_rate_limit_follows_the_test_clock(tm: TaskManager) -> None:
    tm.set_limit("api", rate=2, per=1, burst=2)
    for n in range(5):
        plain.delay(limits=["api"], n=n)
    now = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=5)
    assert _ran(testing.drain(tm, now=now)) == [0, 1]
    assert _ran(testing.drain(tm, now=now)) == []
    assert _ran(testing.drain(tm, now=now + datetime.timedelta(seconds=0.5))) == [2]
    assert _ran(testing.drain(tm, now=now + datetime.timedelta(seconds=10))) == [3, 4]


def test_snooze_and_cancel_give_slots_back(tm: TaskManager, db: psycopg.Connection[Any]) -> None:
    tm.set_limit("ses", concurrency=1)
    tm.queue_task(snoozes, limits=["ses"], n=1)
    testing.drain(tm)
    assert _usage(db) == {"ses": 0}
    running = plain.delay(limits=["ses"], n=2)
    db.execute("SELECT * FROM pgqueue.claim_keyed_tasks(ARRAY['limited'], 5, 'w', 60.0)").fetchall()
    assert _usage(db) == {"ses": 1}
    assert tm.cancel(running)
    assert _usage(db) == {"ses": 0}


def test_fair_keys_take_turns_by_weight(tm: TaskManager) -> None:
    tm.queue_tasks(plain, [{"n": 100 + i} for i in range(8)], fair_key="a")
    tm.queue_tasks(plain, [{"n": 200 + i} for i in range(4)], fair_key="b")
    tm.set_fair_weight("limited", "a", 3)
    order = ["a" if n < 200 else "b" for n in _ran(testing.drain(tm))]
    # Weight 3 against 1: three of a for each of b while both wait.
    assert order[:8] == ["a", "b", "a", "a", "a", "b", "a", "a"]
    assert order.count("b") == 4


def test_priority_comes_before_fair_turns(tm: TaskManager) -> None:
    tm.queue_tasks(plain, [{"n": i} for i in range(3)], fair_key="a")
    tm.queue_task(plain, fair_key="b", priority=5, n=10)
    tm.queue_task(plain, priority=9, n=20)
    assert _ran(testing.drain(tm)) == [20, 10, 0, 1, 2]


def test_explain_names_the_limit(tm: TaskManager, db: psycopg.Connection[Any]) -> None:
    from pgqueue.ops.admin import Admin

    tm.set_limit("tenant:*", concurrency=1)
    first = plain.delay(limits=["tenant:acme"], n=1)
    second = plain.delay(limits=["tenant:acme"], n=2)
    db.execute("SELECT * FROM pgqueue.claim_keyed_tasks(ARRAY['limited'], 1, 'w', 60.0)")
    with Admin.connect(tm.store.database.dsn) as admin:
        reasons = "\n".join(r["message"] for r in admin.explain(second)["reasons"])
    assert "limit 'tenant:acme' (tenant:*): 1 of 1 running" in reasons
    assert first


def test_the_rabbitmq_broker_refuses_limits(rabbitmq_settings: Any) -> None:
    with TaskManager(settings=rabbitmq_settings) as rtm:
        for call in (
            lambda: rtm.queue_task(plain, limits=["ses"], n=1),
            lambda: rtm.queue_task(plain, fair_key="acme", n=1),
            lambda: rtm.set_limit("ses", concurrency=1),
            lambda: rtm.set_fair_weight("limited", "acme", 2),
        ):
            with pytest.raises(InvalidTaskOption, match="need the database broker"):
                call()


def test_a_key_alone_gets_every_turn_and_banks_no_credit(tm: TaskManager) -> None:
    tm.queue_tasks(plain, [{"n": 100 + i} for i in range(6)], fair_key="a")
    assert len(testing.drain(tm)) == 6  # alone: every start is a's
    tm.queue_tasks(plain, [{"n": 200 + i} for i in range(4)], fair_key="b")
    tm.queue_tasks(plain, [{"n": 100 + i} for i in range(4)], fair_key="a")
    order = ["a" if n < 200 else "b" for n in _ran(testing.drain(tm))]
    # b was idle meanwhile: it starts at the current turn, not six turns behind.
    assert order == ["b", "a", "b", "a", "b", "a", "b", "a"]


def test_workflow_steps_hold_keys(tm: TaskManager, db: psycopg.Connection[Any]) -> None:
    from pgqueue import chain

    first, second = chain(send.s(n=1, fair_key="acme"), plain.s(n=2, limits=["x"])).delay()
    rows = {
        row[0]: (row[1], row[2])
        for row in db.execute("SELECT id, limit_keys, fair_key FROM pgqueue.tasks")
    }
    assert rows[first] == (["ses"], "acme")
    assert rows[second] == (["x"], None)
    assert plain.s(n=3, limits=["y"]).delay()
