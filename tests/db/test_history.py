"""Task history: every lifecycle path writes exactly its events, in order, in the statement
that makes the change; fenced writes write none; the switch turns them off; cleanup and
purge take a task's events with it; a timeline is one index scan."""

from __future__ import annotations

import asyncio
import datetime
import uuid
from collections.abc import Sequence
from typing import Any

import psycopg
import pytest
from alembic import command
from sqlalchemy import create_engine

from pgqueue import AsyncTask, TaskManager
from pgqueue.db.claim import claimed_task
from pgqueue.db.migrations import alembic_config, sqlalchemy_url, upgrade
from pgqueue.db.outcomes import write_outcomes
from pgqueue.db.queries import queries
from pgqueue.errors import TaskNotFound
from pgqueue.ops.admin import Admin
from pgqueue.records import Outcome, OutcomeKind, Task, TaskEvent

Q = queries()


@AsyncTask(queue="history")
async def noted(label: str) -> str:
    return label


def add(db: psycopg.Connection[Any], label: str = "t", max_retries: int = 3) -> uuid.UUID:
    row = db.execute(
        "INSERT INTO pgqueue.tasks (name, queue, kwargs, max_retries) "
        "VALUES ('tests.noop', 'history', jsonb_build_object('label', %s::text), %s) "
        "RETURNING id",
        (label, max_retries),
    ).fetchone()
    assert row is not None
    return row[0]


def claim(
    db: psycopg.Connection[Any],
    limit: int = 10,
    *,
    worker: str = "w1",
    start_now: int | None = None,
) -> list[Task]:
    params = {
        "queues": ["history"],
        "limit": limit,
        "worker_id": worker,
        "lease_seconds": 30.0,
        "start_now": start_now,
        "now": None,
    }
    return [claimed_task(row) for row in db.execute(Q["claim_tasks"], params)]


def events(db: psycopg.Connection[Any], task_id: uuid.UUID) -> list[tuple[Any, ...]]:
    """(event, attempt, worker_id, error) of the task, oldest first."""
    return db.execute(
        "SELECT event, attempt, worker_id, error FROM pgqueue.task_events "
        "WHERE task_id = %s ORDER BY id",
        (task_id,),
    ).fetchall()


def names(db: psycopg.Connection[Any], task_id: uuid.UUID) -> list[str]:
    return [row[0] for row in events(db, task_id)]


def details(db: psycopg.Connection[Any], task_id: uuid.UUID, event: str) -> Any:
    row = db.execute(
        "SELECT details FROM pgqueue.task_events WHERE task_id = %s AND event = %s "
        "ORDER BY id DESC LIMIT 1",
        (task_id, event),
    ).fetchone()
    assert row is not None, f"no {event} event"
    return row[0]


def write(dsn: str, batch: Sequence[Outcome], grace: float = 60.0) -> Any:
    async def run() -> Any:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            return await write_outcomes(conn, Q, batch, unknown_task_grace_seconds=grace)

    return asyncio.run(run())


def expire_leases(db: psycopg.Connection[Any]) -> int:
    db.execute(
        "UPDATE pgqueue.tasks SET lease_expires_at = now() - interval '1 second' "
        "WHERE status = 'RUNNING'"
    )
    return int(db.execute(Q["rescue_expired_leases"]).fetchone()[0])  # type: ignore[index]


# -- enqueued -------------------------------------------------------------------------------


def test_every_way_of_queueing_writes_one_enqueued_event(tm: TaskManager, db: Any) -> None:
    one = tm.queue_task(noted, label="one")
    bulk = tm.queue_tasks(noted, [{"label": str(n)} for n in range(3)])  # COPY
    later = tm.queue_tasks(noted, [{"label": "a"}, {"label": "b"}], delay=3600)
    unique = tm.queue_task(noted, label="u", unique_key="k")
    assert tm.queue_task(noted, label="u", unique_key="k") == unique  # skipped: no row

    for task_id in [one, *bulk, *later, unique]:
        assert events(db, task_id) == [("enqueued", 0, None, None)]
    assert details(db, one, "enqueued") is None
    assert "run_at" in details(db, later[0], "enqueued")  # scheduled: when it is due
    assert db.execute("SELECT count(*) FROM pgqueue.task_events").fetchone()[0] == 7


# -- claim, start records, completion ----------------------------------------------------------


def test_a_run_writes_started_with_its_worker_then_completed(dsn: str, db: Any) -> None:
    task_id = add(db)
    [task] = claim(db, worker="worker-a")
    write(dsn, [Outcome(task, OutcomeKind.COMPLETED, result_json='"ok"')])
    assert events(db, task_id) == [
        ("enqueued", 0, None, None),
        ("started", 1, "worker-a", None),
        ("completed", 1, "worker-a", None),
    ]
    at = db.execute(
        "SELECT at FROM pgqueue.task_events WHERE task_id = %s AND event = 'started'", (task_id,)
    ).fetchone()[0]
    assert (
        at
        == db.execute("SELECT started_at FROM pgqueue.tasks WHERE id = %s", (task_id,)).fetchone()[
            0
        ]
    )


def test_tasks_claimed_ahead_start_when_their_start_is_recorded_once(dsn: str, db: Any) -> None:
    first, by_heartbeat, by_completion = add(db, "1"), add(db, "2"), add(db, "3")
    tasks = {t.id: t for t in claim(db, start_now=1)}
    assert names(db, first) == ["enqueued", "started"]
    assert names(db, by_heartbeat) == names(db, by_completion) == ["enqueued"]

    began = db.execute("SELECT now() + interval '1 second'").fetchone()[0]
    for task_id in (by_heartbeat, by_completion):
        tasks[task_id].started_at = began
    heartbeat = {
        "ids": [by_heartbeat, by_completion],
        "tokens": [tasks[by_heartbeat].lease_token, tasks[by_completion].lease_token],
        "lease_seconds": 30.0,
        "started": [began, None],  # the second still waits in the worker's buffer
    }
    db.execute(Q["extend_leases"], heartbeat)
    db.execute(Q["extend_leases"], {**heartbeat, "started": [began, None]})  # again: no event
    assert names(db, by_heartbeat) == ["enqueued", "started"]
    assert names(db, by_completion) == ["enqueued"]

    write(
        dsn,
        [Outcome(tasks[i], OutcomeKind.COMPLETED) for i in (first, by_heartbeat, by_completion)],
    )
    for task_id in (first, by_heartbeat, by_completion):
        assert names(db, task_id) == ["enqueued", "started", "completed"]
    at = db.execute(
        "SELECT at FROM pgqueue.task_events WHERE task_id = %s AND event = 'started'",
        (by_completion,),
    ).fetchone()[0]
    assert at == began  # when the run began, not when the completion was written


# -- failures, reschedules, give-backs ----------------------------------------------------------


def test_each_failed_attempt_keeps_its_error(dsn: str, db: Any) -> None:
    task_id = add(db, max_retries=1)
    [task] = claim(db)
    write(dsn, [Outcome(task, OutcomeKind.FAILED, error="ValueError: first")])
    db.execute("UPDATE pgqueue.tasks SET run_at = now() WHERE id = %s", (task_id,))
    [task] = claim(db, worker="w2")
    write(dsn, [Outcome(task, OutcomeKind.FAILED, error="ValueError: second")])
    assert events(db, task_id) == [
        ("enqueued", 0, None, None),
        ("started", 1, "w1", None),
        ("failed", 1, "w1", "ValueError: first"),
        ("retry_scheduled", 1, "w1", None),
        ("started", 2, "w2", None),
        ("failed", 2, "w2", "ValueError: second"),  # retries spent: no retry_scheduled
    ]
    failed_at = db.execute(
        "SELECT at FROM pgqueue.task_events WHERE task_id = %s AND event = 'failed' ORDER BY id",
        (task_id,),
    ).fetchone()[0]
    scheduled = datetime.datetime.fromisoformat(details(db, task_id, "retry_scheduled")["run_at"])
    assert scheduled - failed_at >= datetime.timedelta(seconds=0.75)  # retry_backoff(1)


def test_reschedule_release_and_unknown_task_give_back(dsn: str, db: Any) -> None:
    snooze, stop, unknown, spent, not_retryable = (add(db, str(n)) for n in range(5))
    tasks = {t.id: t for t in claim(db)}
    db.execute(
        "UPDATE pgqueue.tasks SET unknown_since = now() - interval '2 hours' WHERE id = %s",
        (spent,),
    )
    write(
        dsn,
        [
            Outcome(tasks[snooze], OutcomeKind.RESCHEDULED, delay=60, refund_attempt=True),
            Outcome(tasks[stop], OutcomeKind.RELEASED),
            Outcome(tasks[unknown], OutcomeKind.UNKNOWN),
            Outcome(tasks[spent], OutcomeKind.UNKNOWN),
            Outcome(tasks[not_retryable], OutcomeKind.FAILED, error="Fatal", retryable=False),
        ],
    )
    assert events(db, snooze)[1:] == [
        ("started", 1, "w1", None),
        ("retry_scheduled", 0, "w1", None),
    ]
    assert details(db, snooze, "retry_scheduled") | {"run_at": None} == {
        "run_at": None,
        "rescheduled": True,
        "attempt_refunded": True,
    }
    assert events(db, stop)[1:] == [("started", 1, "w1", None), ("released", 0, "w1", None)]
    assert details(db, stop, "released") == {"started": True}
    [(event, attempt, worker, error)] = events(db, unknown)[2:]
    assert (event, attempt, worker) == ("released", 0, "w1")
    assert error.startswith("UnknownTask: worker w1 has no task named 'tests.noop'")
    [(event, _, _, error)] = events(db, spent)[2:]
    assert event == "failed" and error.startswith("UnknownTask: no worker knew")
    assert events(db, not_retryable)[2:] == [("failed", 1, "w1", "Fatal")]
    assert details(db, not_retryable, "failed") == {"retryable": False}


def test_a_write_whose_lease_was_lost_writes_no_event(dsn: str, db: Any) -> None:
    task_id = add(db)
    [task] = claim(db)
    stale = Task(**{**{f: getattr(task, f) for f in task.__slots__}, "lease_token": 0})  # type: ignore[attr-defined]
    for kind in (OutcomeKind.COMPLETED, OutcomeKind.FAILED, OutcomeKind.RESCHEDULED):
        write(dsn, [Outcome(stale, kind, error="late")])
    write(dsn, [Outcome(stale, OutcomeKind.RELEASED), Outcome(stale, OutcomeKind.UNKNOWN)])
    db.execute(
        Q["extend_leases"],
        {"ids": [task_id], "tokens": [0], "lease_seconds": 30.0, "started": [None]},
    )
    assert names(db, task_id) == ["enqueued", "started"]


# -- rescue ---------------------------------------------------------------------------------


def test_rescue_of_a_lost_run_and_of_a_run_that_never_started(db: Any) -> None:
    ran, waited, last = add(db, "ran"), add(db, "waited"), add(db, "last", max_retries=0)
    claim(db, 2, worker="lost", start_now=1)  # "ran" starts, "waited" is claimed ahead
    claim(db, worker="lost")  # "last", its only attempt
    assert expire_leases(db) == 3

    [(event, attempt, worker, error)] = events(db, ran)[2:]
    assert (event, attempt, worker) == ("rescued", 1, "lost")
    assert error.startswith("worker lost: worker lost stopped renewing its lease")
    assert events(db, waited)[1:] == [("rescued", 0, "lost", None)]  # never ran: refunded
    assert details(db, waited, "rescued") == {"started": False}
    assert names(db, last) == ["enqueued", "started", "rescued", "failed"]
    assert events(db, last)[3][3].startswith("worker lost")


# -- operators ------------------------------------------------------------------------------


def test_cancel_retry_and_bulk_retry_by_an_operator(dsn: str, db: Any) -> None:
    pending, running, failed = add(db, "p"), add(db, "r"), add(db, "f", max_retries=0)
    tasks = {t.id: t for t in claim(db, limit=2)}
    assert set(tasks) == {pending, running}
    write(dsn, [Outcome(tasks[pending], OutcomeKind.RELEASED)])  # PENDING again
    assert db.execute(Q["cancel_task"], {"id": pending}).fetchone()[0]
    assert db.execute(Q["cancel_task"], {"id": running}).fetchone()[0]
    assert not db.execute(Q["cancel_task"], {"id": running}).fetchone()[0]  # no second event
    assert events(db, pending)[-1] == ("cancelled", 0, None, None)
    assert details(db, pending, "cancelled") == {"status": "PENDING"}
    assert events(db, running)[-1] == ("cancelled", 1, "w1", None)
    assert details(db, running, "cancelled") == {"status": "RUNNING"}

    assert db.execute(Q["retry_task"], {"id": running}).fetchone()[0]
    assert not db.execute(Q["retry_task"], {"id": running}).fetchone()[0]  # PENDING now
    assert events(db, running)[-1] == ("retried", 1, None, None)
    assert details(db, running, "retried") == {"status": "CANCELLED"}

    [task] = [t for t in claim(db) if t.id == failed]
    write(dsn, [Outcome(task, OutcomeKind.FAILED, error="Boom")])
    assert [row[0] for row in db.execute(Q["retry_failed_tasks"], {"queue": None})] == [failed]
    assert names(db, failed)[-2:] == ["failed", "retried"]
    assert details(db, failed, "retried") == {"status": "FAILED"}


def test_cleanup_purge_and_take_back_remove_the_events_with_their_tasks(dsn: str, db: Any) -> None:
    done, cancelled, kept, pending = add(db, "d"), add(db, "c"), add(db, "k"), add(db, "p")
    tasks = {t.id: t for t in claim(db, limit=3)}
    write(
        dsn,
        [Outcome(tasks[done], OutcomeKind.COMPLETED), Outcome(tasks[kept], OutcomeKind.COMPLETED)],
    )
    db.execute(Q["cancel_task"], {"id": cancelled})
    db.execute(
        "UPDATE pgqueue.tasks SET finished_at = now() - interval '10 days' WHERE id = ANY(%s)",
        ([done, cancelled],),
    )
    assert db.execute(Q["cleanup_tasks"], {"older_than": 86400, "batch_size": 1}).fetchone()[0] == 1
    assert (
        db.execute(Q["cleanup_tasks"], {"older_than": 86400, "batch_size": 10}).fetchone()[0] == 1
    )
    assert names(db, done) == names(db, cancelled) == []
    assert names(db, kept) == ["enqueued", "started", "completed"]

    with Admin.connect(dsn) as admin:
        assert admin.purge("completed", 0) == 1
    assert names(db, kept) == []
    db.execute(Q["delete_pending_tasks"], {"ids": [pending]})  # RabbitMQ's take-back
    assert db.execute("SELECT count(*) FROM pgqueue.task_events").fetchone()[0] == 0


# -- the switch -----------------------------------------------------------------------------


def test_history_off_writes_no_event_on_any_path(dsn: str, db: Any) -> None:
    with Admin.connect(dsn) as admin:
        assert admin.history_enabled()
        assert admin.set_history(False) is True  # it was on
        assert not admin.history_enabled()
    done, failed, released, cancelled = (add(db, str(n)) for n in range(4))
    tasks = {t.id: t for t in claim(db, limit=3, start_now=2)}
    write(
        dsn,
        [
            Outcome(tasks[done], OutcomeKind.COMPLETED),
            Outcome(tasks[failed], OutcomeKind.FAILED, error="x"),
            Outcome(tasks[released], OutcomeKind.RELEASED),
        ],
    )
    db.execute(Q["cancel_task"], {"id": cancelled})
    db.execute(Q["retry_task"], {"id": cancelled})
    claim(db, limit=5)
    expire_leases(db)
    assert db.execute("SELECT count(*) FROM pgqueue.task_events").fetchone()[0] == 0

    with Admin.connect(dsn) as admin:
        assert admin.set_history(True) is False
    assert db.execute("SELECT pgqueue.history_enabled()").fetchone()[0] is True
    assert names(db, add(db)) == ["enqueued"]


def test_set_history_refuses_what_is_not_a_boolean(dsn: str) -> None:
    with Admin.connect(dsn) as admin, pytest.raises(Exception, match="True or False"):
        admin.set_history("off")  # type: ignore[arg-type]


# -- reading it -----------------------------------------------------------------------------


def test_tm_history_and_ahistory_return_the_events_oldest_first(
    tm: TaskManager, dsn: str, db: Any
) -> None:
    task_id = tm.queue_task(noted, label="x")
    [task] = claim(db, worker="w9")
    write(dsn, [Outcome(task, OutcomeKind.FAILED, error="E: one")])

    history = tm.history(task_id)
    assert [e.event for e in history] == ["enqueued", "started", "failed", "retry_scheduled"]
    assert all(isinstance(e, TaskEvent) and e.task_id == task_id for e in history)
    assert [e.id for e in history] == sorted(e.id for e in history)
    assert (history[1].attempt, history[1].worker_id, history[2].error) == (1, "w9", "E: one")
    assert "run_at" in (history[3].details or {})

    async def read() -> list[TaskEvent]:
        async with TaskManager(settings=tm.settings) as other:
            return await other.ahistory(str(task_id))

    assert asyncio.run(read()) == history
    assert tm.history(uuid.uuid4()) == []
    with pytest.raises(TaskNotFound, match="is not a task id"):
        tm.history("nope")


def test_a_timeline_is_one_index_scan(db: Any) -> None:
    db.execute(
        "INSERT INTO pgqueue.task_events (task_id, event, attempt) "
        "SELECT gen_random_uuid(), 'enqueued', 0 FROM generate_series(1, 20000)"
    )
    db.execute("ANALYZE pgqueue.task_events")
    statement = Q["task_history"].replace("%(id)s", "%s")
    plan = "\n".join(
        row[0] for row in db.execute(f"EXPLAIN {statement}", (uuid.uuid4(),)).fetchall()
    )
    assert "Index Scan using task_events_pkey" in plan, plan
    assert "Sort" not in plan, plan


def test_revision_0003_downgrades_to_the_functions_of_0002(empty_dsn: str) -> None:
    def bodies() -> dict[str, str]:
        with psycopg.connect(empty_dsn) as conn:
            rows = conn.execute(
                "SELECT p.proname, p.prosrc FROM pg_proc AS p"
                " JOIN pg_namespace AS n ON n.oid = p.pronamespace WHERE n.nspname = 'pgqueue'"
            ).fetchall()
        return dict(rows)

    upgrade(empty_dsn, revision="0002")
    before = bodies()
    upgrade(empty_dsn)
    # The completion's own statement: complete_tasks' before revision 0013, then
    # complete_and_hand_off's (complete_tasks calls it).
    assert "task_events" in bodies()["complete_and_hand_off"]
    engine = create_engine(sqlalchemy_url(empty_dsn))
    try:
        with engine.connect() as conn:
            command.downgrade(alembic_config(connection=conn), "0002")
            conn.commit()
    finally:
        engine.dispose()
    assert bodies() == before
    with psycopg.connect(empty_dsn) as conn:
        assert conn.execute("SELECT to_regclass('pgqueue.task_events')").fetchone() == (None,)
    upgrade(empty_dsn)  # and up again
    assert "task_events" in bodies()["complete_and_hand_off"]
