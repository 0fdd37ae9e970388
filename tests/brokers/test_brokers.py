"""The broker contract: the same behaviour on the database and RabbitMQ brokers, and
what each capability declared in `pgqueue/brokers/base.py` does where a broker has it
and where it has not."""

from __future__ import annotations

import asyncio
import functools
import re
import signal
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from broker_tasks import (
    calls,
    cron_record,
    failures_left,
    flaky,
    forget_runs,
    long_nap,
    nap,
    noted,
    record,
)
from support.database import statuses
from support.producer import default_task_manager
from support.waiting import wait_until

from pgqueue import events
from pgqueue.brokers import Broker, get_broker
from pgqueue.errors import InvalidTaskOption
from pgqueue.records import TaskStatus
from pgqueue.settings import Settings, load_settings
from pgqueue.task_manager import TaskManager


@pytest.fixture(params=["database", "rabbitmq"])
def broker_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def broker_settings(
    broker_name: str, settings: Settings, request: pytest.FixtureRequest
) -> Settings:
    if broker_name == "rabbitmq":
        return request.getfixturevalue("rabbitmq_settings")  # type: ignore[no-any-return]
    return settings


@pytest.fixture
def btm(broker_settings: Settings) -> Iterator[TaskManager]:
    """The TaskManager (and .delay()) of the broker under test."""
    forget_runs()
    with default_task_manager(broker_settings) as manager:
        yield manager


@pytest.fixture
def bworker(start_worker: Callable[..., Any], broker_settings: Settings) -> Callable[..., Any]:
    """start_worker on the broker under test."""
    return functools.partial(start_worker, worker_settings=broker_settings)


def started(db: psycopg.Connection[Any], ids: list[Any]) -> list[Any]:
    rows = db.execute(
        "SELECT id FROM pgqueue.tasks WHERE id = ANY(%s) ORDER BY started_at, id", (ids,)
    ).fetchall()
    return [row[0] for row in rows]


def test_higher_priority_starts_first(
    btm: TaskManager, bworker: Callable[..., Any], db: Any
) -> None:
    priorities = [0, 5, -3, 10, 1, 40, 7]
    ids = {p: btm.queue_task(record, label=f"p{p}", priority=p) for p in priorities}
    bworker(concurrency=1)
    wait_until(lambda: statuses(db).get("COMPLETED") == len(priorities))
    assert [label for label, _ in calls] == [f"p{p}" for p in sorted(priorities, reverse=True)]
    assert started(db, list(ids.values())) == [ids[p] for p in sorted(priorities, reverse=True)]


def test_delayed_task_waits_for_its_run_at(
    btm: TaskManager, bworker: Callable[..., Any], db: Any
) -> None:
    bworker(concurrency=2)
    queued = time.time()
    late = record.delay(label="late", delay=1.0)
    now = record.delay(label="now")
    wait_until(lambda: btm.get_task(late).status is TaskStatus.COMPLETED)
    task = btm.get_task(late)
    assert task.started_at >= task.run_at
    assert (task.started_at - task.run_at).total_seconds() < 1.0
    ran = dict(calls)
    assert ran["late"] - queued >= 1.0
    assert ran["now"] < ran["late"]
    assert btm.get_task(now).status is TaskStatus.COMPLETED


def test_failed_task_retries_with_backoff(btm: TaskManager, bworker: Callable[..., Any]) -> None:
    failures_left["k"] = 2
    task_id = flaky.delay(key="k")
    bworker(concurrency=2)
    wait_until(lambda: btm.get_task(task_id).status is TaskStatus.COMPLETED, timeout=20)
    task = btm.get_task(task_id)
    assert task.attempts == 3
    assert task.error is not None and "planned failure of k" in task.error
    times = [at for key, at in calls if key == "k"]
    assert len(times) == 3
    # retry_backoff: 1 s then 2 s, each +/-25%.
    assert 0.75 <= times[1] - times[0] <= 1.25 + 0.5
    assert 1.5 <= times[2] - times[1] <= 2.5 + 0.5


def test_retries_spent_end_failed(btm: TaskManager, bworker: Callable[..., Any]) -> None:
    failures_left["spent"] = 99
    task_id = flaky.delay(key="spent", max_retries=0)
    bworker()
    wait_until(lambda: btm.get_task(task_id).status is TaskStatus.FAILED)
    task = btm.get_task(task_id)
    assert task.attempts == 1
    assert "RuntimeError: planned failure of spent" in (task.error or "")


def test_events_fire_around_runs(btm: TaskManager, bworker: Callable[..., Any]) -> None:
    seen: list[tuple[str, str]] = []
    listeners = {
        events.TASK_BEFORE_EXECUTION: lambda p: seen.append(("before", str(p["task"].id))),
        events.TASK_AFTER_EXECUTION: lambda p: seen.append(("after", repr(p["result"]))),
        events.TASK_EXECUTION_ERROR: lambda p: seen.append(("error", str(p["error"]))),
    }
    for name, listener in listeners.items():
        events.dispatcher.add_listener(name, listener)
    try:
        failures_left["ev"] = 1
        ok = record.delay(label="fine")
        bad = flaky.delay(key="ev", max_retries=0)
        bworker(concurrency=1)
        wait_until(lambda: btm.get_task(ok).status is TaskStatus.COMPLETED)
        wait_until(lambda: btm.get_task(bad).status is TaskStatus.FAILED)
    finally:
        for name, listener in listeners.items():
            events.dispatcher.remove_listener(name, listener)
    assert ("before", str(ok)) in seen and ("before", str(bad)) in seen
    assert ("after", "'fine'") in seen
    assert ("error", "planned failure of ev") in seen


def test_unknown_task_is_given_back_then_fails_after_the_grace(
    btm: TaskManager, bworker: Callable[..., Any], broker_settings: Settings, db: Any
) -> None:
    """A worker that has not registered a name never calls it and spends no attempt on it;
    it gives it back, and the task ends FAILED only once the grace is over."""
    task_id = btm.queue_task("nowhere.missing_task", max_retries=5, x=1)
    tiny_grace = load_settings(**{**broker_settings.to_dict(), "unknown_task_grace_seconds": 1})
    worker_id = bworker(worker_settings=tiny_grace).manager.worker_id
    given_back = wait_until(lambda: given_back_by(db, task_id, worker_id))
    assert given_back["status"] == "PENDING" and given_back["attempts"] == 0
    assert "'nowhere.missing_task'" in given_back["error"]
    wait_until(lambda: btm.get_task(task_id).status is TaskStatus.FAILED)
    task = btm.get_task(task_id)
    assert task.attempts == 0 and task.finished_at is not None
    assert (task.error or "").startswith(
        "UnknownTask: no worker knew task name 'nowhere.missing_task' for "
    )
    assert f"last by worker {worker_id}" in (task.error or "")
    # Claimed a few times over the grace (back-off 1 s, 2 s), not in a loop.
    assert 2 <= task.lease_token <= 4, task.lease_token


def given_back_by(db: Any, task_id: Any, worker_id: str) -> dict[str, Any] | None:
    """The task's row once `worker_id` gave it back (its error names that worker)."""
    row = db.execute(
        "SELECT status::text, attempts, error FROM pgqueue.tasks WHERE id = %s", (task_id,)
    ).fetchone()
    if row is None or f"UnknownTask: worker {worker_id} " not in (row[2] or ""):
        return None
    return {"status": row[0], "attempts": row[1], "error": row[2]}


def test_a_worker_that_knows_the_name_runs_what_another_gave_back(
    btm: TaskManager,
    broker_settings: Settings,
    spawn_worker: Callable[..., Any],
    db: Any,
) -> None:
    """A rolling deploy: the producer queues a new kind of task that the running worker (A)
    does not know; A gives it back, and the new worker (B), A still running, runs it."""
    task_id = btm.queue_task(record, label="new kind")
    env = worker_env(broker_settings)
    old = spawn_worker("--import", "sample_tasks", "--queues", "default", env=env)
    old_id = wait_until(lambda: started_worker_id(old))
    given_back = wait_until(lambda: given_back_by(db, task_id, old_id), timeout=20)
    assert given_back["status"] == "PENDING" and given_back["attempts"] == 0, old.output
    new = spawn_worker("--import", "broker_tasks", "--queues", "default", env=env)
    wait_until(lambda: started_worker_id(new))
    began = time.monotonic()
    # When the task comes due again (a back-off of about 1 s, doubling at each give-back),
    # both wake; A, which gave it back, yields its timer 0.25 s to workers that know the
    # name (UNKNOWN_YIELD_SECONDS on the database broker), so B wins the race as a rule.
    # Without the yield A won a run of races about one time in three: 7-33 s.
    wait_until(lambda: btm.get_task(task_id).status is TaskStatus.COMPLETED, timeout=75)
    took = time.monotonic() - began
    task = btm.get_task(task_id)
    assert task.attempts == 1 and task.result == "new kind"
    assert task.worker_id == started_worker_id(new), (task.worker_id, old.output, new.output)
    assert took < 12, took


def started_worker_id(worker: Any) -> str | None:
    """The id a `pgqueue worker` subprocess logged when it started."""
    found = re.search(r"worker (\S+) started: queues=", worker.output)
    assert worker.process.poll() is None, worker.output
    return found.group(1) if found else None


def test_sigterm_drains_running_task(
    btm: TaskManager,
    broker_settings: Settings,
    spawn_worker: Callable[..., Any],
    db: Any,
) -> None:
    task_id = nap.delay(seconds=1.5)
    worker = spawn_worker(
        "--import", "broker_tasks", "--queues", "default", env=worker_env(broker_settings)
    )
    wait_until(lambda: btm.get_task(task_id).status is TaskStatus.RUNNING, timeout=20)
    worker.signal(signal.SIGTERM)
    assert worker.wait(30) == 0, worker.output
    task = btm.get_task(task_id)
    assert task.status is TaskStatus.COMPLETED, worker.output
    assert task.result == 1.5 and task.attempts == 1
    assert statuses(db) == {"COMPLETED": 1}


def worker_env(settings: Settings) -> dict[str, str]:
    env = {"PGQUEUE_BROKER": settings.broker}
    if settings.broker == "rabbitmq":
        env["PGQUEUE_RABBITMQ_URL"] = settings.rabbitmq_url or ""
        env["PGQUEUE_RABBITMQ_PREFIX"] = settings.rabbitmq_prefix
    return env


# -- declared capabilities ---------------------------------------------------------------


def test_a_worker_claims_ahead_only_where_the_broker_says_it_may(
    btm: TaskManager,
    bworker: Callable[..., Any],
    broker_name: str,
    db: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    broker_class = type(btm.broker)
    asked: list[tuple[int, int | None]] = []
    claim = broker_class.claim

    async def watched_claim(
        self: Broker, limit: int, wait_seconds: float, start_now: int | None = None
    ) -> list[Any]:
        asked.append((limit, start_now))
        return await claim(self, limit, wait_seconds, start_now)

    monkeypatch.setattr(broker_class, "claim", watched_claim)
    btm.queue_tasks(record, [{"label": str(n)} for n in range(300)])
    bworker(concurrency=2)
    wait_until(lambda: statuses(db) == {"COMPLETED": 300}, timeout=30)
    beyond_free_slots = [(limit, start) for limit, start in asked if limit != start]
    assert broker_class.claims_ahead is (broker_name == "database")
    if broker_class.claims_ahead:
        assert beyond_free_slots, asked  # short runs: it claimed for its buffer too
    else:
        assert not beyond_free_slots, asked
        assert max(limit for limit, _ in asked) <= 2


def test_completions_hand_ready_tasks_to_their_worker_only_where_the_broker_says_so(
    btm: TaskManager, broker_name: str
) -> None:
    """Hand-off comes with workflows (tests/test_workflows.py shows what it does); a broker
    without it is given no HandOff to call, and has no ready tasks to hand."""
    broker_class = type(btm.broker)
    assert broker_class.hands_off is (broker_name == "database")
    assert broker_class.hands_off is broker_class.workflows


def test_cancelling_a_running_task_stops_its_run(
    btm: TaskManager, bworker: Callable[..., Any], broker_settings: Settings, broker_name: str
) -> None:
    """The database broker tells the worker at once (`open(on_cancel=...)`): with a lease
    of 60 s no heartbeat comes in time. The RabbitMQ broker reports it at the next heartbeat
    (every third of the lease)."""
    notifies = broker_name == "database"
    lease = 60.0 if notifies else 3.0
    bworker(
        concurrency=1,
        worker_settings=load_settings(**{**broker_settings.to_dict(), "lease_seconds": lease}),
    )
    task_id = long_nap.delay(seconds=30)
    wait_until(lambda: any(label == "started" for label, _ in calls))
    asked = time.time()
    assert btm.cancel(task_id)
    stopped = wait_until(lambda: next((at for label, at in calls if label == "stopped"), None))
    assert stopped - asked < (2.0 if notifies else lease / 3 + 2.0)
    time.sleep(0.5)  # what a stopped run might wrongly record, it records by now
    task = btm.get_task(task_id)
    assert task.status is TaskStatus.CANCELLED and task.result is None


def test_a_cancelled_run_frees_its_slot(
    btm: TaskManager, bworker: Callable[..., Any], broker_settings: Settings
) -> None:
    """A run stopped because its task was cancelled reports no outcome, yet its slot is free
    at once: with RabbitMQ the worker lets its delivery go (`Broker.forget`), which would
    otherwise hold one of the channel's prefetch slots until the connection closes."""
    bworker(
        concurrency=1,
        worker_settings=load_settings(**{**broker_settings.to_dict(), "lease_seconds": 3}),
    )
    task_id = long_nap.delay(seconds=30)
    wait_until(lambda: any(label == "started" for label, _ in calls))
    assert btm.cancel(task_id)
    follower = record.delay(label="next")
    wait_until(lambda: btm.get_task(follower).status is TaskStatus.COMPLETED, timeout=5)


def test_transactional_tasks_run_where_the_broker_gives_transactions(
    btm: TaskManager, bworker: Callable[..., Any], broker_name: str, db: Any
) -> None:
    db.execute("CREATE TABLE notes (label text)")
    task_id = noted.delay(label="kept")
    bworker()
    wait_until(lambda: btm.get_task(task_id).status.is_finished)
    task = btm.get_task(task_id)
    notes = [row[0] for row in db.execute("SELECT label FROM notes")]
    if broker_name == "database":
        assert task.status is TaskStatus.COMPLETED and task.result == "kept"
        assert notes == ["kept"]
    else:  # the default completion_transaction refuses: the run fails, nothing is written
        assert task.status is TaskStatus.FAILED and task.attempts == 1
        assert "TransactionUnsupported" in (task.error or ""), task.error
        assert notes == []


def test_unique_keys_where_the_broker_keeps_them(
    btm: TaskManager, broker_name: str, db: Any
) -> None:
    if broker_name == "database":
        first = btm.queue_task(record, label="a", unique_key="only-one")
        assert btm.queue_task(record, label="b", unique_key="only-one") == first
        again = asyncio.run(btm.aqueue_task(record, label="c", unique_key="only-one"))
        assert again == first
        assert statuses(db) == {"PENDING": 1}
        return
    # The default enqueue_unique refuses before anything is written or published.
    with pytest.raises(InvalidTaskOption, match="unique_key needs the database broker"):
        btm.queue_task(record, label="a", unique_key="only-one")
    with pytest.raises(InvalidTaskOption, match="unique_key needs the database broker"):
        asyncio.run(btm.aqueue_task(record, label="a", unique_key="only-one"))
    assert statuses(db) == {}


def test_the_broker_queues_cron_occurrences_until_it_closes(
    broker_settings: Settings, db: Any
) -> None:
    """`schedule_cron` after `open`: both brokers have a database, so both schedule (the
    RabbitMQ one through its outbox); `close` stops the scheduler."""
    db.execute(  # known for ten minutes, none queued: five occurrences are due (catch-up)
        "INSERT INTO pgqueue.cron_schedules (name, cron, timezone, queue, catchup_seconds, "
        "first_seen_at) VALUES (%s, '* * * * *', 'UTC', 'cron-rabbitmq', 300, "
        "now() - interval '10 minutes')",
        (cron_record.name,),
    )

    def queued() -> int:
        query = "SELECT count(*) FROM pgqueue.tasks WHERE name = %s"
        return int(db.execute(query, (cron_record.name,)).fetchone()[0])

    async def scheduled_then_closed() -> list[str]:
        broker = get_broker(broker_settings)
        await broker.open("contract-cron", ["cron-rabbitmq"], None)
        await broker.schedule_cron([cron_record], broker_settings.defaults)
        deadline = time.monotonic() + 15
        while queued() < 5 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await broker.close()
        return [task.get_name() for task in asyncio.all_tasks()]

    still_running = asyncio.run(scheduled_then_closed())
    assert queued() in (5, 6)  # 6 if a minute turned meanwhile
    assert "pgqueue-cron" not in still_running
