"""The RabbitMQ broker beyond the shared contract: redelivery, delays, outbox, dead letters,
faults. Runs against the real RabbitMQ (127.0.0.1:5672, or PGQUEUE_TEST_RABBITMQ_URL)."""

from __future__ import annotations

import asyncio
import collections
import datetime
import functools
import itertools
import logging
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import aio_pika
import psycopg
import pytest
from broker_tasks import calls, cron_record, failures_left, flaky, forget_runs, nap, record
from support.database import asyncpg_url, statuses
from support.producer import default_task_manager
from support.waiting import wait_until

from pgqueue.brokers.rabbitmq import outbox
from pgqueue.brokers.rabbitmq.messages import (
    ATTEMPTS_HEADER,
    ERROR_HEADER,
    UNKNOWN_GIVE_BACKS_HEADER,
)
from pgqueue.brokers.rabbitmq.status_writer import (
    decide_untracked,
    follow_ups,
    retry_backoff,
    unknown_task_backoff,
)
from pgqueue.brokers.rabbitmq.topology import MAX_QUEUE_NAME_BYTES, Topology, broker_priority
from pgqueue.db.claim import claimed_task
from pgqueue.db.cron import queue_due_occurrences
from pgqueue.db.outcomes import Written, write_outcomes
from pgqueue.db.queries import queries
from pgqueue.errors import BrokerUnavailable
from pgqueue.records import Outcome, OutcomeKind, TaskStatus
from pgqueue.settings import Settings, load_settings
from pgqueue.task_manager import TaskManager

pytestmark = pytest.mark.rabbitmq


@pytest.fixture
def rtm(rabbitmq_settings: Settings) -> Iterator[TaskManager]:
    forget_runs()
    with default_task_manager(rabbitmq_settings) as manager:
        yield manager


@pytest.fixture
def rworker(start_worker: Callable[..., Any], rabbitmq_settings: Settings) -> Callable[..., Any]:
    return functools.partial(start_worker, worker_settings=rabbitmq_settings)


def worker_env(settings: Settings) -> dict[str, str]:
    return {
        "PGQUEUE_BROKER": "rabbitmq",
        "PGQUEUE_RABBITMQ_URL": settings.rabbitmq_url or "",
        "PGQUEUE_RABBITMQ_PREFIX": settings.rabbitmq_prefix,
    }


def message_counts(settings: Settings, *names: str) -> dict[str, int]:
    async def count() -> dict[str, int]:
        connection = await aio_pika.connect(settings.rabbitmq_connection_url())
        async with connection:
            channel = await connection.channel()
            result = {}
            for name in names:
                queue = await channel.declare_queue(name, passive=True)
                result[name] = queue.declaration_result.message_count or 0
            return result

    return asyncio.run(count())


def dead_letters(settings: Settings, queue: str) -> list[aio_pika.abc.AbstractIncomingMessage]:
    """The messages of a dead-letter queue (looked at, then put back)."""

    async def peek() -> list[aio_pika.abc.AbstractIncomingMessage]:
        connection = await aio_pika.connect(settings.rabbitmq_connection_url())
        async with connection:
            channel = await connection.channel()
            dlq = await channel.declare_queue(
                Topology(settings.rabbitmq_prefix).dead(queue), passive=True
            )
            seen = []
            while (message := await dlq.get(no_ack=False, fail=False)) is not None:
                seen.append(message)
            for message in seen:
                await message.nack(requeue=True)
            return seen

    return asyncio.run(peek())


# -- names and mappings ----------------------------------------------------------------


def test_priorities_keep_their_order_from_0_to_10() -> None:
    mapped = [broker_priority(p) for p in range(0, 11)]
    assert mapped == sorted(set(mapped)) and len(mapped) == 11
    assert broker_priority(-32768) == broker_priority(-1) == 0 < broker_priority(0)
    assert broker_priority(11) == broker_priority(32767) == 12 > broker_priority(10)


def test_long_queue_names_are_hashed_never_truncated() -> None:
    topology = Topology("pgqueue")
    assert topology.main("emails") == "pgqueue.q.emails"
    long_a, long_b = "😀" * 127 + "a", "😀" * 127 + "b"  # 510 bytes each in UTF-8
    names = {topology.main(long_a), topology.main(long_b), topology.dead(long_a)}
    assert len(names) == 3
    assert all(len(name.encode()) <= MAX_QUEUE_NAME_BYTES for name in names)


def test_python_backoff_matches_the_sql_function(db: psycopg.Connection[Any]) -> None:
    for attempts in (1, 2, 3, 5):
        base = 2 ** (attempts - 1)
        python = [retry_backoff(attempts) for _ in range(200)]
        sql = [
            row[0]
            for row in db.execute(
                "SELECT EXTRACT(epoch FROM pgqueue.retry_backoff(%s))::float8 "
                "FROM generate_series(1, 200)",
                (attempts,),
            )
        ]
        for sample in (python, sql):
            assert 0.75 * base <= min(sample) and max(sample) <= 1.25 * base
            assert max(sample) - min(sample) > 0.25 * base  # the jitter is there


def test_without_records_python_decides_what_the_records_decide(
    dsn: str, db: psycopg.Connection[Any]
) -> None:
    """The status writer's two homes of the same decisions, the SQL (with records) and
    decide_untracked (without): the same follow-up for every outcome kind."""
    for label in ("done", "retry", "spent", "snooze", "released", "unknown"):
        db.execute(
            "INSERT INTO pgqueue.tasks (name, queue, kwargs, max_retries) "
            "VALUES ('tests.noop', 'decide', jsonb_build_object('label', %s::text), 1)",
            (label,),
        )
    rows = db.execute(
        queries()["claim_tasks"],
        {"queues": ["decide"], "limit": 10, "worker_id": "w", "lease_seconds": 30}
        | {"start_now": None, "now": None},
    )
    tasks = {task.kwargs["label"]: task for task in map(claimed_task, rows)}
    batch = [
        Outcome(tasks["done"], OutcomeKind.COMPLETED),
        Outcome(tasks["retry"], OutcomeKind.FAILED, error="Boom"),
        Outcome(tasks["spent"], OutcomeKind.FAILED, error="Boom", retryable=False),
        Outcome(tasks["snooze"], OutcomeKind.RESCHEDULED, delay=60, refund_attempt=True),
        Outcome(tasks["released"], OutcomeKind.RELEASED),
        Outcome(tasks["unknown"], OutcomeKind.UNKNOWN),
    ]

    async def record() -> Written:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            return await write_outcomes(conn, queries(), batch, unknown_task_grace_seconds=60)

    now = time.time()
    tracked = follow_ups(batch, asyncio.run(record()))
    untracked = decide_untracked(batch, lambda task: {}, "w", unknown_task_grace_seconds=60)
    in_python = follow_ups(batch, untracked.written, untracked.headers)
    shape = [(f.action, f.attempts, f.error) for f in tracked]
    assert shape == [(f.action, f.attempts, f.error) for f in in_python]
    assert [f.action for f in tracked] == ["ack", "again", "dead", "again", "again", "again"]
    for sql, python in zip(tracked, in_python, strict=True):
        # Due at the same time but for the jitter (1 s +/-25% for the first retry or
        # give-back) and a busy machine: the minute of the snooze, at once for the release.
        assert abs(sql.run_at - python.run_at) <= 1.5 or sql.action != "again", sql
        assert sql.action != "again" or sql.run_at >= now - 1
    assert in_python[-1].headers is not None and tracked[-1].headers is None


def test_python_unknown_task_backoff_matches_the_sql_function(
    db: psycopg.Connection[Any],
) -> None:
    for give_backs in (1, 2, 4, 6, 20):
        base = min(2 ** (give_backs - 1), 30)
        python = [unknown_task_backoff(give_backs) for _ in range(200)]
        sql = [
            row[0]
            for row in db.execute(
                "SELECT EXTRACT(epoch FROM pgqueue.unknown_task_backoff(%s))::float8 "
                "FROM generate_series(1, 200)",
                (give_backs,),
            )
        ]
        for sample in (python, sql):
            assert 0.75 * base <= min(sample) and max(sample) <= 1.25 * base
            assert max(sample) - min(sample) > 0.25 * base


# -- delivery --------------------------------------------------------------------------


def test_long_queue_name_round_trip(rtm: TaskManager, rworker: Callable[..., Any]) -> None:
    queue = "ü" * 128  # 256 bytes: its RabbitMQ names are hashed
    task_id = rtm.queue_task(record, label="long", queue=queue)
    rworker(queues=[queue])
    wait_until(lambda: rtm.get_task(task_id).status is TaskStatus.COMPLETED)


def test_short_delay_is_not_blocked_by_a_long_one(
    rtm: TaskManager, rworker: Callable[..., Any]
) -> None:
    hour = record.delay(label="hour", delay=3600)
    queued = time.time()
    second = record.delay(label="second", delay=1)
    rworker()
    wait_until(lambda: rtm.get_task(second).status is TaskStatus.COMPLETED, timeout=10)
    ran = dict(calls)
    assert 1.0 <= ran["second"] - queued < 2.0
    assert rtm.get_task(hour).status is TaskStatus.PENDING
    assert "hour" not in ran


def test_killed_worker_messages_are_redelivered(
    rtm: TaskManager,
    rabbitmq_settings: Settings,
    spawn_worker: Callable[..., Any],
    rworker: Callable[..., Any],
) -> None:
    task_id = nap.delay(seconds=1.0)
    doomed = spawn_worker("--import", "broker_tasks", env=worker_env(rabbitmq_settings))
    wait_until(lambda: rtm.get_task(task_id).status is TaskStatus.RUNNING, timeout=20)
    doomed.kill()  # SIGKILL mid-task: the message was never acked
    rworker()
    wait_until(lambda: rtm.get_task(task_id).status is TaskStatus.COMPLETED, timeout=20)
    task = rtm.get_task(task_id)
    assert task.attempts == 2  # the lost run counts, as with the database broker
    assert task.result == 1.0
    history = rtm.history(task_id)
    assert [(e.event, e.attempt) for e in history] == [
        ("enqueued", 0),
        ("started", 1),
        ("rescued", 1),  # taken over at the redelivery: the lost worker's run
        ("started", 2),
        ("completed", 2),
    ]
    assert history[2].worker_id == history[1].worker_id != history[3].worker_id


def test_cancelled_task_is_not_run(rtm: TaskManager, rworker: Callable[..., Any]) -> None:
    cancelled = record.delay(label="cancelled")
    assert rtm.cancel(cancelled)
    kept = record.delay(label="kept")
    rworker(concurrency=1)
    wait_until(lambda: rtm.get_task(kept).status is TaskStatus.COMPLETED)
    assert [label for label, _ in calls] == ["kept"]
    assert rtm.get_task(cancelled).status is TaskStatus.CANCELLED
    assert [e.event for e in rtm.history(cancelled)] == ["enqueued", "cancelled"]
    assert [e.event for e in rtm.history(kept)] == ["enqueued", "started", "completed"]


def test_each_failed_attempt_is_in_the_history(
    rtm: TaskManager, rworker: Callable[..., Any]
) -> None:
    failures_left["history"] = 2
    task_id = flaky.delay(key="history")
    rworker()
    wait_until(lambda: rtm.get_task(task_id).status is TaskStatus.COMPLETED, timeout=30)
    history = rtm.history(task_id)
    assert [(e.event, e.attempt) for e in history] == [
        ("enqueued", 0),
        ("started", 1),
        ("failed", 1),
        ("retry_scheduled", 1),
        ("started", 2),
        ("failed", 2),
        ("retry_scheduled", 2),
        ("started", 3),
        ("completed", 3),
    ]
    errors = [e.error for e in history if e.event == "failed"]
    assert len(errors) == 2 and all(error and "history" in error for error in errors)


def test_without_status_tracking_tasks_run_without_records(
    rabbitmq_settings: Settings, start_worker: Callable[..., Any], db: Any
) -> None:
    untracked = load_settings(**{**rabbitmq_settings.to_dict(), "status_tracking": False})
    manager = TaskManager(settings=untracked)
    calls.clear()
    failures_left["u"] = 1
    try:
        ids = manager.queue_tasks(record, [{"label": f"u{i}"} for i in range(20)])
        flaky_id = manager.queue_task(flaky, key="u")
        start_worker(worker_settings=untracked)
        wait_until(lambda: len(calls) == 22)  # 20 + flaky twice (failed once, retried)
    finally:
        manager.close()
    assert sorted(label for label, _ in calls if label != "u") == sorted(f"u{i}" for i in range(20))
    assert statuses(db) == {}  # no record written anywhere
    assert len(ids) == 20 and flaky_id


def test_without_status_tracking_an_unknown_task_is_given_back_then_dead_lettered(
    rabbitmq_settings: Settings, start_worker: Callable[..., Any], db: Any
) -> None:
    """Without records the message carries the give-backs: delayed and redelivered with
    no attempt spent, and dead-lettered once the grace is over."""
    untracked = load_settings(
        **{
            **rabbitmq_settings.to_dict(),
            "status_tracking": False,
            "unknown_task_grace_seconds": 1.5,
        }
    )
    manager = TaskManager(settings=untracked)
    try:
        task_id = manager.queue_task("nowhere.missing_task")
        worker = start_worker(worker_settings=untracked)
        [dead] = wait_until(lambda: dead_letters(rabbitmq_settings, "default"), timeout=20)
    finally:
        manager.close()
    assert dead.message_id == str(task_id)
    headers = dead.headers or {}
    error = str(headers[ERROR_HEADER])
    assert error.startswith("UnknownTask: no worker knew task name 'nowhere.missing_task' for ")
    assert f"last by worker {worker.manager.worker_id}" in error
    # Given back at 0 s (and about 1 s, its back-off), dead once 1.5 s have passed.
    assert 2 <= headers[UNKNOWN_GIVE_BACKS_HEADER] <= 3, headers
    assert headers[ATTEMPTS_HEADER] == 0
    assert statuses(db) == {}


# -- the outbox ------------------------------------------------------------------------


def test_outbox_publishes_after_commit_and_nothing_on_rollback(
    rtm: TaskManager, rworker: Callable[..., Any], dsn: str, db: Any
) -> None:
    with psycopg.connect(dsn) as conn:
        rolled_back = rtm.queue_task(record, label="rolled back", connection=conn)
        conn.rollback()
        committed = rtm.queue_task(record, label="committed", connection=conn)
        assert db.execute("SELECT count(*) FROM pgqueue.outbox").fetchone()[0] == 0  # not yet
        conn.commit()
    assert db.execute("SELECT task_id FROM pgqueue.outbox").fetchall() == [(committed,)]
    rworker(concurrency=1)
    wait_until(lambda: rtm.get_task(committed).status is TaskStatus.COMPLETED)
    wait_until(lambda: db.execute("SELECT count(*) FROM pgqueue.outbox").fetchone()[0] == 0)
    assert rtm.get_task(rolled_back) is None
    assert [label for label, _ in calls] == ["committed"]


def test_outbox_on_an_asyncpg_connection(
    rtm: TaskManager, rworker: Callable[..., Any], dsn: str, db: Any
) -> None:
    asyncpg = pytest.importorskip("asyncpg")

    async def main() -> list[Any]:
        conn = await asyncpg.connect(asyncpg_url(dsn))
        try:
            async with conn.transaction():
                ids = await rtm.aqueue_tasks(
                    record, [{"label": "a1"}, {"label": "a2"}], connection=conn
                )
            transaction = conn.transaction()
            await transaction.start()
            await rtm.aqueue_task(record, label="rolled back", connection=conn)
            await transaction.rollback()
        finally:
            await conn.close()
        return ids

    ids = asyncio.run(main())
    assert sorted(row[0] for row in db.execute("SELECT task_id FROM pgqueue.outbox")) == sorted(ids)
    rworker(concurrency=2)
    wait_until(lambda: statuses(db) == {"COMPLETED": 2})
    assert sorted(label for label, _ in calls) == ["a1", "a2"]


def test_outbox_bulk_with_delay_inside_a_transaction(
    rtm: TaskManager, rworker: Callable[..., Any], dsn: str, db: Any
) -> None:
    rworker(concurrency=4)
    with psycopg.connect(dsn) as conn:
        queued = time.time()
        ids = rtm.queue_tasks(
            record, [{"label": f"b{i}"} for i in range(50)], connection=conn, delay=1
        )
    wait_until(lambda: statuses(db) == {"COMPLETED": 50})
    assert min(at for _, at in calls) - queued >= 1.0
    assert len(ids) == 50
    assert db.execute("SELECT count(*) FROM pgqueue.outbox").fetchone()[0] == 0


# -- cron ------------------------------------------------------------------------------


def missed_five_minutes(db: Any) -> None:
    """cron_record's schedule, known for ten minutes while no worker ran: the next scheduler
    pass queues the occurrences of the last five (its catch-up window), a minute apart."""
    db.execute(
        "INSERT INTO pgqueue.cron_schedules (name, cron, timezone, queue, catchup_seconds, "
        "first_seen_at) VALUES (%s, '* * * * *', 'UTC', 'cron-rabbitmq', 300, "
        "now() - interval '10 minutes')",
        (cron_record.name,),
    )


def cron_rows(db: Any) -> list[tuple[uuid.UUID, str, int, Any]]:
    """(id, status, attempts, run_at) of cron_record's tasks, oldest occurrence first."""
    return db.execute(
        "SELECT id, status::text, attempts, run_at FROM pgqueue.tasks WHERE name = %s "
        "ORDER BY run_at",
        (cron_record.name,),
    ).fetchall()


def assert_each_occurrence_ran_once(db: Any, ids: list[uuid.UUID]) -> None:
    wait_until(lambda: db.execute("SELECT count(*) FROM pgqueue.outbox").fetchone()[0] == 0)
    rows = {row[0]: row for row in cron_rows(db)}
    assert all(rows[task_id][1:3] == ("COMPLETED", 1) for task_id in ids), rows
    runs = collections.Counter(label for label, _ in calls)
    assert {task_id: runs[str(task_id)] for task_id in ids} == dict.fromkeys(ids, 1)
    claimed = db.execute(
        "SELECT task_id FROM pgqueue.cron_runs WHERE name = %s", (cron_record.name,)
    ).fetchall()
    assert sorted(row[0] for row in claimed) == sorted(rows)


def scheduler_pass(dsn: str, manager: TaskManager) -> list[uuid.UUID]:
    """One pass of a worker's scheduler through the manager's RabbitMQ broker, from a process
    that runs no outbox relay."""

    async def run() -> list[uuid.UUID]:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            return await queue_due_occurrences(
                conn,
                manager.store.database.queries,
                cron_record,
                manager.settings.defaults,
                enqueue=manager.broker.aenqueue,
            )

    return asyncio.run(run())


def test_cron_occurrences_run_once_on_two_rabbitmq_workers(
    rtm: TaskManager, rworker: Callable[..., Any], db: Any
) -> None:
    missed_five_minutes(db)
    rworker(queues=["cron-rabbitmq"])
    rworker(queues=["cron-rabbitmq"])  # both schedulers queue the same occurrences at once

    def all_completed() -> bool:
        rows = cron_rows(db)
        return len(rows) >= 5 and all(row[1] == "COMPLETED" for row in rows)

    wait_until(all_completed, timeout=20)
    rows = cron_rows(db)
    assert 5 <= len(rows) <= 6  # 6 if a minute turned while the workers started
    marks = [row[3] for row in rows]
    assert all(b - a == datetime.timedelta(minutes=1) for a, b in itertools.pairwise(marks))
    assert_each_occurrence_ran_once(db, [row[0] for row in rows])


def test_rabbitmq_cron_occurrence_is_in_the_outbox_of_its_claim(
    rtm: TaskManager, rworker: Callable[..., Any], dsn: str, db: Any
) -> None:
    """Schedulers that commit their occurrences and never publish (they exit, say): each
    occurrence has its record and one outbox row, and a worker's relay delivers it."""
    missed_five_minutes(db)
    racers = 8
    barrier = threading.Barrier(racers)
    queued: list[uuid.UUID] = []

    def race() -> None:
        barrier.wait()
        queued.extend(scheduler_pass(dsn, rtm))

    threads = [threading.Thread(target=race) for _ in range(racers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    rows = cron_rows(db)
    assert 5 <= len(rows) <= 6  # 6 if a minute turned while they raced
    assert sorted(queued) == sorted(row[0] for row in rows)  # each by exactly one racer
    assert all(row[1] == "PENDING" for row in rows)
    waiting = db.execute("SELECT task_id FROM pgqueue.outbox").fetchall()
    assert sorted(row[0] for row in waiting) == sorted(queued)
    rworker(queues=["cron-rabbitmq"])
    wait_until(lambda: all(rtm.get_task(i).status is TaskStatus.COMPLETED for i in queued), 20)
    assert_each_occurrence_ran_once(db, queued)


def test_a_cron_occurrence_wakes_the_relay(
    rtm: TaskManager,
    rworker: Callable[..., Any],
    dsn: str,
    db: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A relay that waited for its poll would take a minute: only its wake-up at the commit
    # of the occurrences delivers them within the wait below.
    monkeypatch.setattr(outbox, "POLL_SECONDS", 60.0)
    rworker(queues=["cron-rabbitmq"])  # its scheduler records the schedule: nothing missed
    wait_until(
        lambda: (
            db.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND application_name = 'pgqueue-outbox-relay' AND query LIKE 'LISTEN%%' "
                "AND state = 'idle'"
            ).fetchone()[0]
            and db.execute("SELECT count(*) FROM pgqueue.cron_schedules").fetchone()[0]
        )
    )
    db.execute("UPDATE pgqueue.cron_schedules SET first_seen_at = now() - interval '10 minutes'")
    queued = scheduler_pass(dsn, rtm)  # the worker's own scheduler sleeps till the minute
    ids = [row[0] for row in cron_rows(db)]  # its pass may have taken one if a minute turned
    assert set(queued) <= set(ids) and len(ids) in (5, 6)
    wait_until(lambda: all(rtm.get_task(i).status is TaskStatus.COMPLETED for i in ids), 20)
    assert_each_occurrence_ran_once(db, ids)


# -- dead letters ----------------------------------------------------------------------


def test_dead_letter_then_retry_from_the_dead_letter_queue(
    rtm: TaskManager, rworker: Callable[..., Any], rabbitmq_settings: Settings
) -> None:
    failures_left["dl"] = 1
    task_id = flaky.delay(key="dl", max_retries=0)
    rworker()
    wait_until(lambda: rtm.get_task(task_id).status is TaskStatus.FAILED)
    dead = wait_until(lambda: dead_letters(rabbitmq_settings, "default"))
    assert [m.message_id for m in dead] == [str(task_id)]
    assert "planned failure of dl" in str(dead[0].headers[ERROR_HEADER])

    assert rtm.retry(task_id)
    wait_until(lambda: rtm.get_task(task_id).status is TaskStatus.COMPLETED)
    assert rtm.get_task(task_id).attempts == 2
    assert dead_letters(rabbitmq_settings, "default") == []


# -- faults ----------------------------------------------------------------------------


def test_unreachable_broker_is_a_clear_error_and_writes_nothing(
    rabbitmq_settings: Settings, db: Any
) -> None:
    broken = load_settings(
        **{**rabbitmq_settings.to_dict(), "rabbitmq_url": "amqp://guest:guest@127.0.0.1:1/"}
    )
    manager = TaskManager(settings=broken)
    try:
        started = time.monotonic()
        with pytest.raises(BrokerUnavailable, match=r"cannot use RabbitMQ at amqp://guest@127"):
            manager.queue_task(record, label="lost?")
        assert time.monotonic() - started < 10
    finally:
        manager.close()
    assert statuses(db) == {}


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", *args], check=True, capture_output=True, timeout=60)


@pytest.fixture
def restartable_rabbitmq() -> Iterator[Callable[..., None]]:
    """rabbitmqctl stop_app/start_app; the server is started again whatever happens."""
    try:
        rabbitmqctl("status")
    except (OSError, subprocess.SubprocessError) as error:
        pytest.skip(f"rabbitmqctl cannot control the local RabbitMQ: {error}")
    yield rabbitmqctl
    rabbitmqctl("start_app")
    rabbitmqctl("await_startup")


@pytest.mark.slow
def test_broker_restart_mid_run_loses_no_task(
    rtm: TaskManager,
    rworker: Callable[..., Any],
    restartable_rabbitmq: Callable[..., None],
    db: Any,
) -> None:
    ids = rtm.queue_tasks(nap, [{"seconds": 0.05} for _ in range(300)])
    rworker(concurrency=4)
    wait_until(lambda: statuses(db).get("COMPLETED", 0) >= 30)
    restartable_rabbitmq("stop_app")
    assert statuses(db).get("COMPLETED", 0) < 300  # stopped mid-run
    with pytest.raises(BrokerUnavailable):
        rtm.queue_task(record, label="while down")
    restartable_rabbitmq("start_app")
    restartable_rabbitmq("await_startup")
    after = wait_until(lambda: _queue_when_up(rtm), timeout=30)
    wait_until(lambda: statuses(db) == {"COMPLETED": 301}, timeout=60)
    assert rtm.get_task(after).status is TaskStatus.COMPLETED
    assert len(ids) == 300


def _queue_when_up(manager: TaskManager) -> Any:
    try:
        return manager.queue_task(record, label="after restart")
    except BrokerUnavailable:
        return None


def test_sigterm_releases_unfinished_task_to_the_queue(
    rtm: TaskManager,
    rabbitmq_settings: Settings,
    spawn_worker: Callable[..., Any],
    rworker: Callable[..., Any],
) -> None:
    task_id = nap.delay(seconds=3)
    worker = spawn_worker(
        "--import", "broker_tasks", "--grace", "0.2", env=worker_env(rabbitmq_settings)
    )
    wait_until(lambda: rtm.get_task(task_id).status is TaskStatus.RUNNING, timeout=20)
    worker.signal(signal.SIGTERM)
    assert worker.wait(30) == 0, worker.output
    assert rtm.get_task(task_id).status is TaskStatus.PENDING
    rworker()
    wait_until(lambda: rtm.get_task(task_id).status is TaskStatus.COMPLETED, timeout=20)
    assert rtm.get_task(task_id).attempts == 1  # the released run was not counted


# -- paused queues -----------------------------------------------------------------------


def test_a_paused_queue_is_not_consumed_until_resumed(
    rtm: TaskManager,
    rworker: Callable[..., Any],
    db: psycopg.Connection[Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """`pgqueue queue pause` reaches RabbitMQ workers: paused at their start, or meanwhile."""
    caplog.set_level(logging.INFO, logger="pgqueue.rabbitmq.pauses")
    db.execute("SELECT pgqueue.pause_queue('held')")
    rworker(queues=["held", "default"])
    first = record.delay(label="first", queue="held")
    other = record.delay(label="other")
    wait_until(lambda: rtm.get_task(other).status is TaskStatus.COMPLETED)
    assert rtm.get_task(first).status is TaskStatus.PENDING

    db.execute("SELECT pgqueue.resume_queue('held')")
    wait_until(lambda: rtm.get_task(first).status is TaskStatus.COMPLETED)
    assert "queue held resumed: consuming it again" in caplog.text

    db.execute("SELECT pgqueue.pause_queue('held')")
    wait_until(lambda: "queue held paused: not consuming it" in caplog.text)
    second = record.delay(label="second", queue="held")
    later = record.delay(label="later")
    wait_until(lambda: rtm.get_task(later).status is TaskStatus.COMPLETED)
    assert rtm.get_task(second).status is TaskStatus.PENDING
    assert [label for label, _ in calls] == ["other", "first", "later"]
