"""The lifecycle functions of db/sql/functions.sql and the claim statement of
db/sql/queries.sql, called directly in SQL: order, exclusivity, back-off, fencing,
cancel/retry, cleanup, lease rescue, notifications and the claim's plan."""

from __future__ import annotations

import datetime
import re
import threading
import uuid
from collections.abc import Sequence
from typing import Any

import psycopg
import pytest

from pgqueue.db.claim import claimed_task
from pgqueue.db.migrations import schema_sql
from pgqueue.db.queries import Channel, queries
from pgqueue.records import Task


def add(
    db: psycopg.Connection[Any],
    *,
    queue: str = "default",
    priority: int = 0,
    run_at: str = "now()",
    max_retries: int = 3,
    task_id: uuid.UUID | None = None,
) -> uuid.UUID:
    """Insert one PENDING task; `run_at` is an SQL expression written by the test itself."""
    row = db.execute(
        f"INSERT INTO pgqueue.tasks (id, name, queue, priority, max_retries, run_at) "
        f"VALUES (%s, 'tests.noop', %s, %s, %s, {run_at}) RETURNING id",
        (task_id or uuid.uuid4(), queue, priority, max_retries),
    ).fetchone()
    assert row is not None
    return row[0]


def run_claim(
    db: psycopg.Connection[Any],
    queues: Sequence[str] = ("default",),
    limit: int = 10,
    *,
    worker_id: str = "worker-1",
    start_now: int | None = None,
    now: datetime.datetime | None = None,
) -> list[Task]:
    """The claim statement, with the parameters a worker (or the test mode: `now`) gives."""
    params = {
        "queues": list(queues),
        "limit": limit,
        "worker_id": worker_id,
        "lease_seconds": 30.0,
        "start_now": start_now,
        "now": now,
    }
    return [claimed_task(row) for row in db.execute(queries()["claim_tasks"], params)]


def claim(
    db: psycopg.Connection[Any], queues: Sequence[str] = ("default",), limit: int = 10
) -> list[tuple[uuid.UUID, int, int]]:
    return [(task.id, task.lease_token, task.attempts) for task in run_claim(db, queues, limit)]


def status_of(db: psycopg.Connection[Any], task_id: uuid.UUID) -> dict[str, Any]:
    with db.cursor(row_factory=psycopg.rows.dict_row) as cursor:
        row = cursor.execute(
            "SELECT *, status::text AS status_text FROM pgqueue.tasks WHERE id = %s", (task_id,)
        ).fetchone()
    assert row is not None
    return row


# -- claim ---------------------------------------------------------------------------------


def test_claim_order_is_priority_then_run_at_then_id(db: psycopg.Connection[Any]) -> None:
    low_old = add(db, priority=0, run_at="now() - interval '10 minutes'")
    high_new = add(db, priority=5, run_at="now() - interval '1 minute'")
    high_old = add(db, priority=5, run_at="now() - interval '5 minutes'")
    negative = add(db, priority=-3, run_at="now() - interval '1 hour'")
    same_time = "'2020-01-01T00:00:00Z'::timestamptz"
    tie_b = add(db, priority=1, run_at=same_time, task_id=uuid.UUID(int=2))
    tie_a = add(db, priority=1, run_at=same_time, task_id=uuid.UUID(int=1))
    other_queue = add(db, queue="urgent", priority=3, run_at="now() - interval '2 minutes'")
    add(db, priority=9, run_at="now() + interval '1 hour'")  # not due: never claimed
    add(db, queue="ignored", priority=9)  # a queue the claimer does not serve

    claimed = [row[0] for row in claim(db, ["default", "urgent"], limit=100)]

    assert claimed == [high_old, high_new, other_queue, tie_a, tie_b, low_old, negative]


def test_claim_respects_limit_and_marks_rows_running(db: psycopg.Connection[Any]) -> None:
    ids = [add(db, run_at=f"now() - interval '{60 - i} seconds'") for i in range(5)]
    first = claim(db, limit=2)
    assert [row[0] for row in first] == ids[:2]
    row = status_of(db, ids[0])
    assert row["status_text"] == "RUNNING"
    assert row["attempts"] == 1 and row["lease_token"] == 1 and row["worker_id"] == "worker-1"
    lease = db.execute(
        "SELECT extract(epoch FROM lease_expires_at - started_at) FROM pgqueue.tasks WHERE id = %s",
        (ids[0],),
    ).fetchone()
    assert lease is not None and float(lease[0]) == pytest.approx(30.0)
    assert [row[0] for row in claim(db, limit=10)] == ids[2:]
    assert claim(db) == []


def test_two_concurrent_claimers_never_get_the_same_task(
    db: psycopg.Connection[Any], dsn: str
) -> None:
    with db.cursor() as cursor:
        cursor.execute(
            "INSERT INTO pgqueue.tasks (name, priority) "
            "SELECT 'tests.noop', (i % 7)::smallint FROM generate_series(1, 2000) AS i"
        )
    results: dict[str, list[uuid.UUID]] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def claimer(name: str) -> None:
        mine: list[uuid.UUID] = []
        try:
            with psycopg.connect(dsn, autocommit=True) as conn:
                start.wait()
                while batch := run_claim(conn, ["default"], 7, worker_id=name):
                    mine.extend(task.id for task in batch)
        except BaseException as error:
            errors.append(error)
        results[name] = mine

    threads = [threading.Thread(target=claimer, args=(f"w{i}",)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors
    first, second = results["w0"], results["w1"]
    assert len(first) == len(set(first)) and len(second) == len(set(second))
    assert not set(first) & set(second)
    assert len(first) + len(second) == 2000
    assert first and second, "both claimers should have won some rows"
    counts = db.execute(
        "SELECT count(*) FILTER (WHERE status = 'RUNNING' AND attempts = 1 AND lease_token = 1), "
        "count(DISTINCT worker_id) FROM pgqueue.tasks"
    ).fetchone()
    assert counts == (2000, 2)


# -- complete, fail, back-off --------------------------------------------------------------


def test_complete_records_result(db: psycopg.Connection[Any]) -> None:
    task_id = add(db)
    [(claimed_id, token, _)] = claim(db)
    accepted = db.execute(
        "SELECT pgqueue.complete_tasks(%s, %s, %s::jsonb[])",
        ([claimed_id], [token], ['{"ok": true}']),
    ).fetchall()
    assert accepted == [(task_id,)]
    row = status_of(db, task_id)
    assert row["status_text"] == "COMPLETED"
    assert row["result"] == {"ok": True}
    assert row["finished_at"] is not None and row["lease_expires_at"] is None


def test_fail_backs_off_1_2_4_seconds_then_fails(db: psycopg.Connection[Any]) -> None:
    task_id = add(db, max_retries=3)
    for attempt in (1, 2, 3):
        [(_, token, attempts)] = claim(db)
        assert attempts == attempt
        status, wait = db.execute(
            "SELECT new_status::text, extract(epoch FROM new_run_at - now())::float "
            "FROM pgqueue.fail_task(%s, %s, %s)",
            (task_id, token, f"boom {attempt}"),
        ).fetchone()  # type: ignore[misc]
        base = 2 ** (attempt - 1)
        assert status == "RETRYING"
        assert 0.75 * base <= wait <= 1.25 * base, (attempt, wait)
        row = status_of(db, task_id)
        assert row["error"] == f"boom {attempt}" and row["finished_at"] is None
        assert claim(db) == [], "a retrying task must not run before its back-off"
        db.execute("UPDATE pgqueue.tasks SET run_at = now() WHERE id = %s", (task_id,))
    [(_, token, attempts)] = claim(db)
    assert attempts == 4
    final = db.execute(
        "SELECT new_status::text FROM pgqueue.fail_task(%s, %s, 'last')", (task_id, token)
    ).fetchone()
    assert final == ("FAILED",)
    row = status_of(db, task_id)
    assert row["status_text"] == "FAILED" and row["error"] == "last"
    assert row["finished_at"] is not None and row["attempts"] == 4
    assert claim(db) == []


def test_fail_not_retryable_fails_at_once(db: psycopg.Connection[Any]) -> None:
    task_id = add(db, max_retries=5)
    [(_, token, _)] = claim(db)
    row = db.execute(
        "SELECT new_status::text FROM pgqueue.fail_task(%s, %s, 'unknown task', false)",
        (task_id, token),
    ).fetchone()
    assert row == ("FAILED",)


def test_backoff_is_capped_at_one_hour(db: psycopg.Connection[Any]) -> None:
    seconds = [
        db.execute("SELECT extract(epoch FROM pgqueue.retry_backoff(40))::float").fetchone()[0]  # type: ignore[index]
        for _ in range(20)
    ]
    assert all(0.75 * 3600 <= value <= 1.25 * 3600 for value in seconds)


# -- fencing -------------------------------------------------------------------------------


def test_stale_lease_token_is_refused_everywhere(db: psycopg.Connection[Any]) -> None:
    task_id = add(db)
    [(_, old_token, _)] = claim(db)
    # The lease expires and another worker takes the task over: a new fencing token.
    db.execute(
        "UPDATE pgqueue.tasks SET lease_expires_at = now() - interval '1 second' WHERE id = %s",
        (task_id,),
    )
    assert db.execute("SELECT pgqueue.rescue_expired_leases()").fetchone() == (1,)
    [(_, new_token, _)] = claim(db)
    assert new_token == old_token + 1

    assert (
        db.execute(
            "SELECT pgqueue.complete_tasks(%s, %s, %s::jsonb[])",
            ([task_id], [old_token], ["1"]),
        ).fetchall()
        == []
    )
    assert (
        db.execute(
            "SELECT * FROM pgqueue.fail_task(%s, %s, 'late')", (task_id, old_token)
        ).fetchall()
        == []
    )
    assert (
        db.execute("SELECT pgqueue.extend_leases(%s, %s, 30)", ([task_id], [old_token])).fetchall()
        == []
    )
    assert db.execute(
        "SELECT pgqueue.reschedule_task(%s, %s, 5, false)", (task_id, old_token)
    ).fetchone() == (None,)
    row = status_of(db, task_id)
    assert row["status_text"] == "RUNNING" and row["error"] != "late"

    # The current holder's writes are accepted, and a finished task never changes again.
    assert db.execute(
        "SELECT pgqueue.extend_leases(%s, %s, 30)", ([task_id], [new_token])
    ).fetchall() == [(task_id,)]
    assert db.execute(
        "SELECT pgqueue.complete_tasks(%s, %s, %s::jsonb[])", ([task_id], [new_token], ["2"])
    ).fetchall() == [(task_id,)]
    assert (
        db.execute(
            "SELECT * FROM pgqueue.fail_task(%s, %s, 'after')", (task_id, new_token)
        ).fetchall()
        == []
    )
    row = status_of(db, task_id)
    assert row["status_text"] == "COMPLETED" and row["result"] == 2


# -- cancel and retry ----------------------------------------------------------------------


def test_cancel(db: psycopg.Connection[Any]) -> None:
    pending = add(db, run_at="now() + interval '1 hour'")
    running = add(db)
    [(_, token, _)] = claim(db)
    assert db.execute("SELECT pgqueue.cancel_task(%s)", (pending,)).fetchone() == (True,)
    assert db.execute("SELECT pgqueue.cancel_task(%s)", (running,)).fetchone() == (True,)
    assert status_of(db, pending)["status_text"] == "CANCELLED"
    assert status_of(db, running)["finished_at"] is not None
    # The worker of the cancelled run is refused; cancelling again reports False.
    assert (
        db.execute(
            "SELECT pgqueue.complete_tasks(%s, %s, %s::jsonb[])", ([running], [token], ["1"])
        ).fetchall()
        == []
    )
    assert db.execute("SELECT pgqueue.cancel_task(%s)", (running,)).fetchone() == (False,)
    assert db.execute("SELECT pgqueue.cancel_task(%s)", (uuid.uuid4(),)).fetchone() == (False,)
    assert status_of(db, running)["status_text"] == "CANCELLED"


def test_retry_puts_failed_task_back_now_keeping_attempts(db: psycopg.Connection[Any]) -> None:
    task_id = add(db, max_retries=0)
    [(_, token, _)] = claim(db)
    db.execute("SELECT * FROM pgqueue.fail_task(%s, %s, 'boom')", (task_id, token))
    assert db.execute("SELECT pgqueue.retry_task(%s)", (task_id,)).fetchone() == (True,)
    row = status_of(db, task_id)
    assert row["status_text"] == "PENDING" and row["finished_at"] is None
    assert row["attempts"] == 1
    assert db.execute("SELECT pgqueue.retry_task(%s)", (task_id,)).fetchone() == (False,)
    [(_, _, attempts)] = claim(db)
    assert attempts == 2


# -- cleanup and rescue --------------------------------------------------------------------


def test_cleanup_deletes_only_old_finished_rows_in_batches(db: psycopg.Connection[Any]) -> None:
    kept, doomed = [], []
    for status in ("COMPLETED", "FAILED", "CANCELLED"):
        doomed.append(add(db))
        db.execute(
            "UPDATE pgqueue.tasks SET status = %s::pgqueue.task_status, "
            "finished_at = now() - interval '8 days' WHERE id = %s",
            (status, doomed[-1]),
        )
        kept.append(add(db))
        db.execute(
            "UPDATE pgqueue.tasks SET status = %s::pgqueue.task_status, "
            "finished_at = now() - interval '6 days' WHERE id = %s",
            (status, kept[-1]),
        )
    for status in ("PENDING", "RETRYING", "RUNNING"):
        kept.append(add(db, run_at="now() - interval '30 days'"))
        db.execute(
            "UPDATE pgqueue.tasks SET status = %s::pgqueue.task_status, "
            "created_at = now() - interval '30 days' WHERE id = %s",
            (status, kept[-1]),
        )
    batches = [
        db.execute("SELECT pgqueue.cleanup_tasks(interval '7 days', 2)").fetchone()[0]  # type: ignore[index]
        for _ in range(3)
    ]
    assert batches == [2, 1, 0]
    remaining = {row[0] for row in db.execute("SELECT id FROM pgqueue.tasks").fetchall()}
    assert remaining == set(kept)


def test_rescue_counts_the_attempt_and_fails_when_retries_are_spent(
    db: psycopg.Connection[Any],
) -> None:
    retried = add(db, max_retries=1)
    lost = add(db, max_retries=0)
    alive = add(db, max_retries=0)
    claim(db)
    db.execute(
        "UPDATE pgqueue.tasks SET lease_expires_at = now() - interval '1 second' "
        "WHERE id = ANY(%s)",
        ([retried, lost],),
    )
    assert db.execute("SELECT pgqueue.rescue_expired_leases()").fetchone() == (2,)

    row = status_of(db, retried)
    assert row["status_text"] == "RETRYING" and row["attempts"] == 1
    assert row["error"].startswith("worker lost")
    row = status_of(db, lost)
    assert row["status_text"] == "FAILED" and row["finished_at"] is not None
    assert "worker lost" in row["error"] and "worker-1" in row["error"]
    assert status_of(db, alive)["status_text"] == "RUNNING"

    # The rescued task runs again as its second attempt; losing it once more spends it.
    [(task_id, _, attempts)] = claim(db)
    assert (task_id, attempts) == (retried, 2)
    db.execute(
        "UPDATE pgqueue.tasks SET lease_expires_at = now() - interval '1 second' WHERE id = %s",
        (retried,),
    )
    assert db.execute("SELECT pgqueue.rescue_expired_leases()").fetchone() == (1,)
    assert status_of(db, retried)["status_text"] == "FAILED"


def claim_starting(db: psycopg.Connection[Any], start_now: int) -> list[tuple[uuid.UUID, int]]:
    return [(task.id, task.lease_token) for task in run_claim(db, start_now=start_now)]


def expire_leases(db: psycopg.Connection[Any]) -> None:
    db.execute(
        "UPDATE pgqueue.tasks SET lease_expires_at = now() - interval '1 second' "
        "WHERE status = 'RUNNING'"
    )


def test_claim_marks_only_the_first_start_now_tasks_started(
    db: psycopg.Connection[Any],
) -> None:
    first, second, third = (add(db, priority=p) for p in (3, 2, 1))
    assert [row[0] for row in claim_starting(db, 1)] == [first, second, third]
    assert status_of(db, first)["started_at"] is not None
    assert status_of(db, second)["started_at"] is None  # claimed ahead, not started
    assert status_of(db, third)["started_at"] is None
    assert all(status_of(db, t)["attempts"] == 1 for t in (first, second, third))


def test_rescue_gives_back_tasks_claimed_ahead_that_never_started(
    db: psycopg.Connection[Any],
) -> None:
    """The lost worker had started `ran` and claimed `waiting` and `marked` ahead; its last
    heartbeat reported `marked` started. max_retries=0: one lost attempt fails a task."""
    ran, waiting, marked = (add(db, priority=p, max_retries=0) for p in (3, 2, 1))
    tokens = dict(claim_starting(db, 1))
    held = db.execute(
        "SELECT pgqueue.extend_leases(%s, %s, 30, ARRAY[NULL, now()]::timestamptz[])",
        ([waiting, marked], [tokens[waiting], tokens[marked]]),
    ).fetchall()
    assert len(held) == 2
    expire_leases(db)
    assert db.execute("SELECT pgqueue.rescue_expired_leases()").fetchone() == (3,)

    row = status_of(db, waiting)  # never ran: back in the queue, attempt given back
    assert (row["status_text"], row["attempts"], row["unstarted_rescues"]) == ("PENDING", 0, 1)
    assert row["worker_id"] is None and row["error"] is None and row["finished_at"] is None
    for lost in (ran, marked):  # these ran: the lost run counts, as before
        row = status_of(db, lost)
        assert (row["status_text"], row["attempts"]) == ("FAILED", 1)
        assert row["error"].startswith("worker lost")
    # The given-back task is claimed again, first attempt again.
    assert [(row[0], row[2]) for row in claim(db)] == [(waiting, 1)]


def test_unstarted_rescues_are_bounded(db: psycopg.Connection[Any]) -> None:
    """A task that kills its worker before its start is recorded looks unstarted: after
    three rescues that gave its attempt back, the next one counts, so it cannot loop."""
    task_id = add(db, max_retries=0)
    for rescues in (1, 2, 3):
        claim_starting(db, 0)
        expire_leases(db)
        db.execute("SELECT pgqueue.rescue_expired_leases()")
        row = status_of(db, task_id)
        assert (row["status_text"], row["unstarted_rescues"]) == ("PENDING", rescues)
    claim_starting(db, 0)
    expire_leases(db)
    db.execute("SELECT pgqueue.rescue_expired_leases()")
    row = status_of(db, task_id)
    assert (row["status_text"], row["attempts"]) == ("FAILED", 1)
    assert row["error"].startswith("worker lost")


def test_heartbeat_records_the_start_once_and_fenced(db: psycopg.Connection[Any]) -> None:
    task_id = add(db)
    [(_, token)] = claim_starting(db, 0)
    beat = "SELECT pgqueue.extend_leases(%s, %s, 30, ARRAY[%s]::timestamptz[])"
    assert db.execute(beat, ([task_id], [token + 1], "2026-01-01Z")).fetchall() == []
    assert status_of(db, task_id)["started_at"] is None
    assert db.execute(beat, ([task_id], [token], None)).fetchall() == [(task_id,)]
    assert status_of(db, task_id)["started_at"] is None  # still waiting in the buffer
    assert db.execute(beat, ([task_id], [token], "2026-01-02Z")).fetchall() == [(task_id,)]
    assert db.execute(beat, ([task_id], [token], "2026-01-03Z")).fetchall() == [(task_id,)]
    assert status_of(db, task_id)["started_at"].isoformat().startswith("2026-01-02")


# -- tasks whose name the claiming worker has not registered -------------------------------

GIVE_BACK = (
    "SELECT task_id, new_status::text, extract(epoch FROM new_run_at - now())::float, task_error "
    "FROM pgqueue.give_back_unknown_tasks(%s, %s, %s)"
)


def test_give_back_refunds_the_attempt_backs_off_and_names_the_worker(
    db: psycopg.Connection[Any], dsn: str
) -> None:
    task_id = add(db, max_retries=0)
    since = None
    with psycopg.connect(dsn, autocommit=True) as listener:
        listener.execute('LISTEN "pgqueue.tasks"')
        for give_back in (1, 2, 3, 4, 5, 6, 7):
            [(_, token, attempts)] = claim(db)
            assert attempts == 1  # every claim starts from a refunded attempt
            [(given, status, wait, error)] = db.execute(
                GIVE_BACK, ([task_id], [token], 3600.0)
            ).fetchall()
            base = min(2 ** (give_back - 1), 30)
            assert (given, status) == (task_id, "PENDING")
            assert 0.75 * base <= wait <= 1.25 * base, (give_back, wait)
            assert error.startswith("UnknownTask: worker worker-1 has no task named 'tests.noop'")
            row = status_of(db, task_id)
            assert row["attempts"] == 0 and row["started_at"] is None
            assert row["finished_at"] is None and row["lease_expires_at"] is None
            assert row["worker_id"] == "worker-1" and row["unknown_give_backs"] == give_back
            since = since or row["unknown_since"]
            assert row["unknown_since"] == since  # the grace runs from the first give-back
            assert (row["unknown_fails_at"] - since).total_seconds() == 3600
            assert claim(db) == [], "a task given back must not be claimed before its back-off"
            db.execute("UPDATE pgqueue.tasks SET run_at = now() WHERE id = %s", (task_id,))
        # Each give-back wakes the workers of the queue once (a knowing one may be idle).
        assert collect_notifications(listener, db) == ["default"] * 7


def test_give_back_is_fenced_and_fails_once_the_grace_is_over(
    db: psycopg.Connection[Any],
) -> None:
    task_id = add(db, max_retries=5)
    [(_, token, _)] = claim(db)
    assert db.execute(GIVE_BACK, ([task_id], [token + 1], 0.0)).fetchall() == []
    assert status_of(db, task_id)["status_text"] == "RUNNING"
    db.execute(GIVE_BACK, ([task_id], [token], 10.0))
    # Ten seconds after the first give-back, a worker that does not know the name claims it.
    db.execute(
        "UPDATE pgqueue.tasks SET run_at = now(), unknown_since = now() - interval '10 s' "
        "WHERE id = %s",
        (task_id,),
    )
    [(_, token, _)] = claim(db)
    [(_, status, _, error)] = db.execute(GIVE_BACK, ([task_id], [token], 10.0)).fetchall()
    assert status == "FAILED"
    assert error.startswith(
        "UnknownTask: no worker knew task name 'tests.noop' for 10 s (given back 2 times"
    )
    assert "last by worker worker-1" in error and "--import or PGQUEUE_IMPORTS" in error
    row = status_of(db, task_id)
    assert row["status_text"] == "FAILED" and row["attempts"] == 0
    assert row["finished_at"] is not None and row["lease_expires_at"] is None
    # A grace of 0 fails at the first claim, as an operator may choose.
    other = add(db)
    [(_, token, _)] = claim(db)
    assert db.execute(GIVE_BACK, ([other], [token], 0.0)).fetchall()[0][1] == "FAILED"
    # `pgqueue tasks retry` gives it a new life, and a new grace.
    assert db.execute("SELECT pgqueue.retry_task(%s)", (task_id,)).fetchone() == (True,)
    row = status_of(db, task_id)
    assert row["unknown_since"] is None and row["unknown_give_backs"] == 0


def test_a_knowing_worker_restarts_the_grace(db: psycopg.Connection[Any]) -> None:
    task_id = add(db, max_retries=3)
    [(_, token, _)] = claim(db)
    db.execute(GIVE_BACK, ([task_id], [token], 3600.0))
    db.execute("UPDATE pgqueue.tasks SET run_at = now() WHERE id = %s", (task_id,))
    [(_, token, attempts)] = claim(db)
    assert attempts == 1
    # A worker that knows the name ran it; it failed for a reason of its own.
    db.execute("SELECT * FROM pgqueue.fail_task(%s, %s, 'boom')", (task_id, token))
    row = status_of(db, task_id)
    assert row["status_text"] == "RETRYING" and row["attempts"] == 1
    assert row["unknown_since"] is None and row["unknown_give_backs"] == 0


# -- notifications -------------------------------------------------------------------------


def collect_notifications(
    listener: psycopg.Connection[Any], producer: psycopg.Connection[Any]
) -> list[str]:
    """Payloads received until a marker sent after everything the test did."""
    producer.execute("SELECT pg_notify('pgqueue.tasks', 'end-of-test')")
    payloads = []
    for notify in listener.notifies(timeout=10):
        if notify.payload == "end-of-test":
            return payloads
        payloads.append(notify.payload)
    raise AssertionError(f"marker notification not received; got {payloads}")


def sleep_on(db: psycopg.Connection[Any], *queues: str, worker_id: str = "w1") -> bool:
    """Announce a worker asleep on `queues`, as a worker does before it waits for NOTIFY."""
    row = db.execute(
        queries()["announce_sleep"], {"worker_id": worker_id, "queues": list(queues)}
    ).fetchone()
    assert row is not None
    return bool(row[0])


def test_other_sql_notifies_once_per_queue_for_copy(db: psycopg.Connection[Any], dsn: str) -> None:
    """Rows written by SQL of the app's own (here a COPY and INSERTs) wake sleeping workers
    through the insert trigger."""
    assert sleep_on(db, "alpha", "beta")
    with psycopg.connect(dsn, autocommit=True) as listener:
        listener.execute('LISTEN "pgqueue.tasks"')
        with (
            db.transaction(),
            db.cursor() as cursor,
            cursor.copy("COPY pgqueue.tasks (name, queue) FROM STDIN") as copy,
        ):
            for i in range(1000):
                copy.write_row(("tests.noop", "alpha" if i % 2 else "beta"))
        assert sorted(collect_notifications(listener, db)) == ["alpha", "beta"]

        # Statements in separate transactions notify once each.
        add(db, queue="alpha")
        add(db, queue="alpha")
        assert collect_notifications(listener, db) == ["alpha", "alpha"]
    assert db.execute("SELECT count(*) FROM pgqueue.tasks").fetchone() == (1002,)


def _insert_trigger_calls(db: psycopg.Connection[Any]) -> int:
    """Calls of the insert trigger's function counted by this session, not yet reported."""
    row = db.execute(
        "SELECT coalesce(pg_stat_get_xact_function_calls('pgqueue.notify_new_tasks'::regproc), 0)"
    ).fetchone()
    assert row is not None
    return int(row[0])


def _pgqueue_inserts(db: psycopg.Connection[Any], queue: str) -> None:
    """One row by each statement pgqueue's producers write with: insert_task,
    insert_unique_tasks, and a COPY followed by wake_copied_queues."""
    one = {"name": "tests.noop", "queue": queue, "priority": 0, "kwargs": "{}"}
    db.execute(
        queries()["insert_task"],
        {
            **one,
            "id": uuid.uuid4(),
            "max_retries": 3,
            "schedule_at": None,
            "delay": 0.0,
            "trace_context": None,
        },
    )
    db.execute(
        queries()["insert_unique_tasks"],
        {
            "ids": [uuid.uuid4()],
            "names": ["tests.noop"],
            "queues": [queue],
            "priorities": [0],
            "kwargs": ["{}"],
            "max_retries": [3],
            "schedule_ats": [None],
            "delays": [0.0],
            "unique_keys": [None],
            "limit_keys": [None],
            "fair_keys": [None],
            "trace_context": None,
        },
    )
    with db.cursor() as cursor:
        with cursor.copy(queries()["copy_tasks"]) as copy:
            copy.write_row((uuid.uuid4(), True, "tests.noop", queue, 0, "{}", 3))
        cursor.execute(queries()["wake_copied_queues"], {"queues": [queue]})


def test_pgqueue_inserts_wake_without_the_insert_trigger(
    db: psycopg.Connection[Any], dsn: str
) -> None:
    """pgqueue's producers look for a sleeping worker in their own statements: the row
    trigger, whose WHEN is false for their rows, is never called for them (it is for other
    SQL), and each statement notifies the queue while a worker sleeps there."""
    db.execute("SET track_functions = 'pl'")  # counts the trigger's calls
    assert sleep_on(db, "alpha")
    with psycopg.connect(dsn, autocommit=True) as listener:
        listener.execute('LISTEN "pgqueue.tasks"')
        for round_ in range(3):
            with db.transaction():
                # Counts not yet flushed include earlier transactions': compare.
                calls = _insert_trigger_calls(db)
                _pgqueue_inserts(db, "beta")  # nobody sleeps there: no NOTIFY
                _pgqueue_inserts(db, "alpha")
                assert _insert_trigger_calls(db) == calls
                add(db, queue="gamma")
                assert _insert_trigger_calls(db) == calls + 1
            assert collect_notifications(listener, db) == ["alpha"], round_
    rows = db.execute(
        "SELECT producer_wakes, count(*) FROM pgqueue.tasks GROUP BY 1 ORDER BY 1"
    ).fetchall()
    assert rows == [(False, 3), (True, 18)]


def test_each_pgqueue_statement_notifies_its_queue(db: psycopg.Connection[Any], dsn: str) -> None:
    """One statement at a time, in autocommit: every one notifies alone."""
    assert sleep_on(db, "alpha")
    with psycopg.connect(dsn, autocommit=True) as listener:
        listener.execute('LISTEN "pgqueue.tasks"')
        _pgqueue_inserts(db, "alpha")
        assert collect_notifications(listener, db) == ["alpha"] * 3


def test_other_sql_looks_once_per_queue_and_transaction(
    db: psycopg.Connection[Any], dsn: str
) -> None:
    """Rows of one queue written by other SQL in one transaction: the first looks (and
    notifies), the others of that queue find it done."""
    assert sleep_on(db, "alpha")
    with psycopg.connect(dsn, autocommit=True) as listener:
        listener.execute('LISTEN "pgqueue.tasks"')
        with db.transaction():
            add(db, queue="alpha")
            db.execute("DELETE FROM pgqueue.sleeping_workers")  # it would not be seen again
            add(db, queue="alpha")
            add(db, queue="beta")
        assert collect_notifications(listener, db) == ["alpha"]
        with db.transaction():  # a new transaction looks again: nobody sleeps now
            add(db, queue="alpha")
        assert collect_notifications(listener, db) == []


def test_inserts_notify_only_queues_with_a_sleeping_worker(
    db: psycopg.Connection[Any], dsn: str
) -> None:
    with psycopg.connect(dsn, autocommit=True) as listener:
        listener.execute('LISTEN "pgqueue.tasks"')
        add(db, queue="alpha")
        assert collect_notifications(listener, db) == []
        assert sleep_on(db, "alpha")
        add(db, queue="alpha")
        add(db, queue="beta")
        assert collect_notifications(listener, db) == ["alpha"]
        # Awake again: its producers stop paying for NOTIFY.
        db.execute(queries()["forget_sleep"], {"worker_id": "w1"})
        add(db, queue="alpha")
        assert collect_notifications(listener, db) == []


def test_repeatable_read_producers_always_notify(db: psycopg.Connection[Any], dsn: str) -> None:
    """Their snapshot may predate a worker's announcement, so they cannot rely on it."""
    with psycopg.connect(dsn, autocommit=True) as listener:
        listener.execute('LISTEN "pgqueue.tasks"')
        with psycopg.connect(dsn) as producer:
            producer.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            add(producer, queue="alpha")  # other SQL
            producer.commit()
            _pgqueue_inserts(producer, "beta")  # pgqueue's statements
            producer.commit()
        assert collect_notifications(listener, db) == ["alpha", "beta"]


def test_a_producer_in_flight_keeps_a_worker_from_sleeping(
    db: psycopg.Connection[Any], dsn: str
) -> None:
    """A producer that inserted before the announcement was visible notifies nobody; until
    it ends, announce_sleep says no (the worker looks again), then yes. The try is on the
    table's lock, which any writer of tasks holds: workers of other queues look again too."""
    for write in (
        lambda producer: add(producer, queue="alpha"),  # other SQL
        lambda producer: _pgqueue_inserts(producer, "alpha"),  # pgqueue's statements
    ):
        with psycopg.connect(dsn) as producer:
            write(producer)  # open: it saw no sleeper and will send nothing
            assert sleep_on(db, "alpha") is False
            assert sleep_on(db, "beta") is False
            producer.commit()
        assert sleep_on(db, "alpha") is True
        db.execute("DELETE FROM pgqueue.sleeping_workers")


def test_status_updates_do_not_notify(db: psycopg.Connection[Any], dsn: str) -> None:
    task_id = add(db)
    with psycopg.connect(dsn, autocommit=True) as listener:
        listener.execute('LISTEN "pgqueue.tasks"')
        [(_, token, _)] = claim(db)
        db.execute(
            "SELECT pgqueue.complete_tasks(%s, %s, %s::jsonb[])", ([task_id], [token], ["1"])
        )
        assert collect_notifications(listener, db) == []


def test_the_sql_sends_on_the_channels_python_listens_on() -> None:
    """Channel names are written once in Python (db/queries.py) and, in SQL function
    bodies, as literals: every pg_notify of the schema files names a Channel, and every
    Channel is sent on, in any schema."""
    for schema in ("pgqueue", "jobs"):
        sent = set(re.findall(r"pg_notify\('([^']+)'", schema_sql(schema)))
        assert sent == {channel.in_schema(schema) for channel in Channel}


# -- plan ----------------------------------------------------------------------------------


def claim_plan(db: psycopg.Connection[Any], now: str) -> str:
    """EXPLAIN of the claim as a worker's prepared statement runs it, generic plan (the one
    PostgreSQL keeps after five runs): no parameter value shapes it."""
    names: list[str] = []

    def placeholder(match: re.Match[str]) -> str:
        if match.group(1) not in names:
            names.append(match.group(1))
        return f"${names.index(match.group(1)) + 1}"

    statement = re.sub(r"%\((\w+)\)s", placeholder, queries()["claim_tasks"])
    db.execute(f"PREPARE claim_statement AS {statement}")
    values = {
        "queues": "ARRAY['q1', 'q2']",
        "limit": "10",
        "worker_id": "'w'",
        "lease_seconds": "30",
        "start_now": "2",
        "now": now,
    }
    db.execute("SET plan_cache_mode = force_generic_plan")
    try:
        arguments = ", ".join(values[name] for name in names)
        rows = db.execute(f"EXPLAIN EXECUTE claim_statement({arguments})").fetchall()
    finally:
        db.execute("RESET plan_cache_mode")
        db.execute("DEALLOCATE claim_statement")
    return "\n".join(row[0] for row in rows)


@pytest.mark.parametrize("now", ["NULL", "now() + interval '1 hour'"])
def test_claim_inner_scan_uses_the_runnable_index(db: psycopg.Connection[Any], now: str) -> None:
    """With the database clock (workers) or a clock given (the test mode), the same plan."""
    with db.cursor() as cursor:
        cursor.execute(
            "INSERT INTO pgqueue.tasks (name, status, finished_at) "
            "SELECT 'tests.noop', 'COMPLETED', now() FROM generate_series(1, 20000)"
        )
        cursor.execute(
            "INSERT INTO pgqueue.tasks (name, queue, priority) "
            "SELECT 'tests.noop', 'q' || (i % 5), (i % 3)::smallint "
            "FROM generate_series(1, 200) AS i"
        )
        cursor.execute("ANALYZE pgqueue.tasks")
    plan = claim_plan(db, now)
    assert "tasks_runnable_idx" in plan, plan
    assert "Seq Scan on tasks" not in plan, plan
    # The clock is an index condition of each queue's scan, not a filter applied after it.
    assert re.search(r"Index Cond: .*run_at <= COALESCE", plan), plan


def test_the_claim_takes_what_is_due_by_the_clock_it_is_given(
    db: psycopg.Connection[Any],
) -> None:
    """`now` decides which tasks are due (the test mode's clock); what the claim writes
    is the database's time."""
    soon = add(db, run_at="now() + interval '1 hour'")
    assert run_claim(db) == []
    in_two_hours = db.execute("SELECT now() + interval '2 hours'").fetchone()[0]  # type: ignore[index]
    [task] = run_claim(db, now=in_two_hours)
    assert task.id == soon
    row = status_of(db, soon)
    assert row["status_text"] == "RUNNING" and row["started_at"] < in_two_hours
    assert row["lease_expires_at"] < in_two_hours
