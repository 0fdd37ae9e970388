"""Workflows: depends_on, chain, group, chord; WAITING advancing in the transaction that
settles the last parent; failure cascades, retry revives; concurrency of parents and
producers (docs/features.md, "Workflows"). Real workers and SIGKILLs: faults/test_workflows.py.
"""

from __future__ import annotations

import itertools
import threading
import uuid
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
import workflow_tasks as w
from support.waiting import wait_until

from pgqueue import TaskManager, TaskStatus, chain, chord, group, testing
from pgqueue.db.dependencies import plan_workflow
from pgqueue.errors import InvalidTaskOption
from pgqueue.ops.admin import Admin
from pgqueue.records import NewTask

WAITING, PENDING = TaskStatus.WAITING, TaskStatus.PENDING


def status(tm: TaskManager, task_id: uuid.UUID) -> TaskStatus:
    task = tm.get_task(task_id)
    assert task is not None
    return task.status


def events(tm: TaskManager, task_id: uuid.UUID) -> list[str]:
    return [event.event for event in tm.history(task_id)]


def run_to_completion(db: psycopg.Connection[Any], task_ids: list[uuid.UUID]) -> None:
    """Claim these tasks (as a worker's claim marks them) and complete them through
    complete_tasks, in the current transaction of `db`."""
    rows = db.execute(
        "UPDATE pgqueue.tasks SET status = 'RUNNING', attempts = attempts + 1,"
        " lease_token = lease_token + 1, started_at = now() WHERE id = ANY(%s)"
        " RETURNING id, lease_token",
        (task_ids,),
    ).fetchall()
    assert len(rows) == len(task_ids)
    tokens = [row[1] for row in rows]
    done = db.execute(
        "SELECT pgqueue.complete_tasks(%s, %s, %s::jsonb[])",
        ([row[0] for row in rows], tokens, ["1"] * len(rows)),
    ).fetchall()
    assert len(done) == len(task_ids)


def test_a_dependent_waits_until_its_parent_completed(tm: TaskManager) -> None:
    parent = w.step.delay(n=1)
    child = w.step.delay(n=2, depends_on=[parent])
    assert status(tm, child) is WAITING
    ran = [task.id for task in testing.drain(tm)]
    assert ran == [parent, child]
    assert status(tm, child) is TaskStatus.COMPLETED
    assert events(tm, child) == ["enqueued", "ready", "started", "completed"]
    ready = tm.history(child)[1]
    assert ready.details == {"parent": str(parent)}


def test_a_parent_already_completed_counts_as_done(tm: TaskManager) -> None:
    parent = w.step.delay(n=1)
    testing.drain(tm)
    child = w.step.delay(n=2, depends_on=[str(parent)])
    assert status(tm, child) is PENDING


def test_chain_group_chord_return_ids_in_order_and_run_after_their_parents(
    tm: TaskManager,
) -> None:
    ids = chain(w.step.s(n=1), group(w.step.s(n=2), w.step.s(n=3)), w.collect.s()).delay()
    assert len(ids) == 4
    assert [status(tm, i) for i in ids] == [PENDING, WAITING, WAITING, WAITING]
    order = [task.id for task in testing.drain(tm)]
    assert order[0] == ids[0] and order[-1] == ids[3]
    collected = tm.get_task(ids[3])
    assert collected is not None
    assert collected.result == {str(ids[1]): 2, str(ids[2]): 3}


def test_a_chord_of_10000_releases_its_callback_once_with_every_result(
    tm: TaskManager, db: psycopg.Connection[Any]
) -> None:
    ids = chord([w.step.s(n=i) for i in range(10_000)], w.collect.s()).delay()
    callback = ids[-1]
    assert status(tm, callback) is WAITING
    run_to_completion(db, ids[:5_000])
    assert status(tm, callback) is WAITING
    run_to_completion(db, ids[5_000:-1])
    assert status(tm, callback) is PENDING
    assert events(tm, callback) == ["enqueued", "ready"]
    results = tm.broker.parent_results(callback)
    assert len(results) == 10_000 and set(results.values()) == {1}


def test_failure_cancels_the_subtree_and_retry_revives_it(tm: TaskManager) -> None:
    root = w.step.delay(n=0)
    failing = w.boom.delay(depends_on=[root])
    child = w.step.delay(n=1, depends_on=[failing])
    grandchild = w.step.delay(n=2, depends_on=[child, root])
    runs_anyway = w.step.delay(n=3, depends_on=[failing], on_parent_failure="run")
    bystander = w.step.delay(n=4, depends_on=[root])
    testing.drain(tm)
    assert status(tm, failing) is TaskStatus.FAILED
    for task_id, parent in ((child, failing), (grandchild, child)):
        task = tm.get_task(task_id)
        assert task is not None and task.status is TaskStatus.CANCELLED
        assert task.error == f"cancelled: parent task {parent} ended " + (
            "FAILED" if parent == failing else "CANCELLED"
        )
    assert status(tm, runs_anyway) is TaskStatus.COMPLETED
    assert status(tm, bystander) is TaskStatus.COMPLETED

    assert tm.retry(failing)
    assert [status(tm, i) for i in (failing, child, grandchild)] == [PENDING, WAITING, WAITING]
    assert events(tm, child)[-1] == "waiting"


def test_retry_revives_into_a_run_that_completes(tm: TaskManager) -> None:
    parent = w.step.delay(n=1)
    child = w.step.delay(n=2, depends_on=[parent])
    grandchild = w.step.delay(n=3, depends_on=[child])
    assert tm.cancel(parent)
    assert [status(tm, i) for i in (child, grandchild)] == [TaskStatus.CANCELLED] * 2
    assert tm.retry(parent)
    testing.drain(tm)
    assert [status(tm, i) for i in (parent, child, grandchild)] == [TaskStatus.COMPLETED] * 3


def test_a_child_of_two_failed_parents_stays_cancelled_until_both_are_retried(
    tm: TaskManager,
) -> None:
    first, second = w.step.delay(n=1), w.step.delay(n=2)
    child = w.step.delay(n=3, depends_on=[first, second])
    assert tm.cancel(first) and tm.cancel(second)
    assert tm.retry(first)
    task = tm.get_task(child)
    assert task is not None and task.status is TaskStatus.CANCELLED
    assert task.error == f"cancelled: parent task {second} ended CANCELLED"
    assert tm.retry(second)
    assert status(tm, child) is WAITING
    testing.drain(tm)
    assert status(tm, child) is TaskStatus.COMPLETED


def test_cancelling_a_waiting_member_cascades(tm: TaskManager) -> None:
    ids = chain(w.step.s(n=1), w.step.s(n=2), w.step.s(n=3)).delay()
    assert tm.cancel(ids[1])
    assert [status(tm, i) for i in ids] == [PENDING, TaskStatus.CANCELLED, TaskStatus.CANCELLED]


def test_a_parent_that_failed_already_cancels_a_new_dependent(tm: TaskManager) -> None:
    failing = w.boom.delay()
    testing.drain(tm)
    cancelled, runs = chain(w.step.s(depends_on=[failing]), w.step.s()).delay()
    assert status(tm, cancelled) is TaskStatus.CANCELLED
    assert status(tm, runs) is TaskStatus.CANCELLED
    alone = w.step.delay(depends_on=[failing], on_parent_failure="run")
    assert status(tm, alone) is PENDING


def test_missing_parents_and_cycles_are_refused(tm: TaskManager) -> None:
    missing = uuid.uuid4()
    with pytest.raises(ValueError, match=f"do not exist: {missing}"):
        w.step.delay(depends_on=[missing])
    with pytest.raises(ValueError, match="is not a task id"):
        w.step.delay(depends_on=["nope"])
    with pytest.raises(TypeError, match="list of task ids"):
        w.step.delay(depends_on=str(uuid.uuid4()))
    with pytest.raises(ValueError, match='"cancel" or "run"'):
        w.step.delay(on_parent_failure="ignore")
    a, b = uuid.uuid4(), uuid.uuid4()
    looped = [
        NewTask(a, "t", "q", 0, 0, "{}", depends_on=(b,)),
        NewTask(b, "t", "q", 0, 0, "{}", depends_on=(a,)),
    ]
    with pytest.raises(InvalidTaskOption, match="cycle"):
        plan_workflow(looped, {})
    assert testing.drain(tm) == []  # nothing was written


def test_a_workflow_exists_only_if_the_caller_commits(tm: TaskManager, dsn: str) -> None:
    with psycopg.connect(dsn) as conn:
        ids = chord([w.step.s(n=1)], w.collect.s()).delay(connection=conn)
        conn.rollback()
    assert [tm.get_task(i) for i in ids] == [None, None]


def test_two_parents_completing_at_once_release_the_child_exactly_once(
    tm: TaskManager, dsn: str
) -> None:
    first, second = w.step.delay(n=1), w.step.delay(n=2)
    child = w.step.delay(depends_on=[first, second])
    with psycopg.connect(dsn) as one, psycopg.connect(dsn) as two:
        run_to_completion(one, [first])  # not committed: holds the child's row
        other = threading.Thread(target=lambda: (run_to_completion(two, [second]), two.commit()))
        other.start()
        wait_until(lambda: _waiting_for_a_lock(dsn))
        one.commit()
        other.join(timeout=30)
    assert status(tm, child) is PENDING
    assert events(tm, child).count("ready") == 1


def test_a_parent_completing_while_a_producer_adds_a_child_releases_it(
    tm: TaskManager, dsn: str
) -> None:
    parent = w.step.delay(n=1)
    with psycopg.connect(dsn) as producer, psycopg.connect(dsn) as completer:
        child = w.step.delay(depends_on=[parent], connection=producer)  # parent locked
        other = threading.Thread(
            target=lambda: (run_to_completion(completer, [parent]), completer.commit())
        )
        other.start()
        wait_until(lambda: _waiting_for_a_lock(dsn))
        producer.commit()
        other.join(timeout=30)
    assert status(tm, parent) is TaskStatus.COMPLETED
    assert status(tm, child) is PENDING


def test_cleanup_keeps_a_parent_while_a_child_has_not_finished(
    tm: TaskManager, db: psycopg.Connection[Any]
) -> None:
    parent = w.step.delay(n=1)
    child = w.step.delay(depends_on=[parent], delay=3600)
    testing.drain(tm)
    db.execute("UPDATE pgqueue.tasks SET finished_at = now() - interval '30 days'")
    db.execute("SELECT pgqueue.cleanup_tasks(interval '1 day', 100)")
    assert tm.get_task(parent) is not None
    testing.drain(tm, now=7200)
    db.execute("UPDATE pgqueue.tasks SET finished_at = now() - interval '30 days'")
    db.execute("SELECT pgqueue.cleanup_tasks(interval '1 day', 100)")
    assert tm.get_task(parent) is None and tm.get_task(child) is None
    row = db.execute("SELECT count(*) FROM pgqueue.task_dependencies").fetchone()
    assert row == (0,)


def test_parent_results_in_an_async_task_and_in_a_worker(
    tm: TaskManager, start_worker: Callable[..., Any]
) -> None:
    ids = chord([w.step.s(n=i) for i in range(3)], w.acollect.s()).delay()
    start_worker(queues=[w.QUEUE])
    assert tm.wait(ids[-1], timeout=30) == 3


def _waiting_for_a_lock(dsn: str) -> bool:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND wait_event_type = 'Lock'"
        ).fetchone()
    return bool(row and row[0])


def test_a_worker_cancels_the_subtree_of_a_parent_failing_after_retries_and_retry_revives(
    tm: TaskManager, start_worker: Callable[..., Any]
) -> None:
    parent = w.fails_three_times.delay()
    child, grandchild = chain(w.step.s(n=1, depends_on=[parent]), w.step.s(n=2)).delay()
    sibling = w.step.delay(n=3, depends_on=[parent], on_parent_failure="run")
    start_worker(queues=[w.QUEUE], polling_interval=0.5)
    wait_until(lambda: status(tm, grandchild) is TaskStatus.CANCELLED, timeout=60)
    assert status(tm, parent) is TaskStatus.FAILED
    assert status(tm, child) is TaskStatus.CANCELLED
    wait_until(lambda: status(tm, sibling) is TaskStatus.COMPLETED, timeout=30)
    assert tm.retry(parent)
    assert tm.wait(grandchild, timeout=60) == 2
    assert status(tm, parent) is TaskStatus.COMPLETED


def test_tasks_show_lists_parents_and_children_and_explain_says_what_it_waits_for(
    tm: TaskManager, dsn: str
) -> None:
    from click.testing import CliRunner

    from pgqueue.cli import main

    first, second, third = w.step.delay(n=1), w.step.delay(n=2), w.step.delay(n=3)
    testing.drain(tm, queues=[w.QUEUE])
    fourth = w.step.delay(n=4)
    fifth = w.step.delay(n=5)
    child = w.collect.delay(depends_on=[first, fourth, fifth])
    env = {"PGQUEUE_DSN": dsn}
    shown = CliRunner().invoke(main, ["tasks", "show", str(child)], env=env)
    assert shown.exit_code == 0, shown.output
    assert str(fourth) in shown.output and str(first) in shown.output
    parent = CliRunner().invoke(main, ["tasks", "show", str(first)], env=env)
    assert str(child) in parent.output
    explained = CliRunner().invoke(main, ["tasks", "explain", str(child)], env=env)
    assert "waiting for 2 of 3 parents:" in explained.output
    assert f"{fourth} workflow_tasks.step (PENDING)" in explained.output
    assert str(second) not in explained.output and str(third) not in explained.output


# -- hand-off: a completion gives the children it makes ready to its own worker ------------


def _event_at(db: psycopg.Connection[Any], task_id: uuid.UUID, event: str) -> Any:
    row = db.execute(
        "SELECT at, worker_id FROM pgqueue.task_events WHERE task_id = %s AND event = %s"
        " ORDER BY id DESC LIMIT 1",
        (task_id, event),
    ).fetchone()
    assert row is not None, (task_id, event)
    return row


def test_a_chain_step_starts_in_the_transaction_that_completes_the_one_before(
    tm: TaskManager, db: psycopg.Connection[Any], start_worker: Callable[..., Any]
) -> None:
    ids = chain(*[w.step.s(n=i) for i in range(20)]).delay()
    worker = start_worker(queues=[w.QUEUE], concurrency=4)
    assert tm.wait(ids[-1], timeout=30) == 19
    for parent, child in itertools.pairwise(ids):
        completed_at, _ = _event_at(db, parent, "completed")
        started_at, started_by = _event_at(db, child, "started")
        # now() is the transaction's start: the same instant means the same transaction.
        assert started_at == completed_at
        assert started_by == worker.manager.worker_id
        assert events(tm, child) == ["enqueued", "ready", "started", "completed"]
    tokens = db.execute(
        "SELECT DISTINCT lease_token, attempts FROM pgqueue.tasks WHERE id = ANY(%s)", (ids,)
    ).fetchall()
    assert tokens == [(1, 1)]  # each claimed once, run once


def test_a_child_the_worker_cannot_take_waits_for_a_claim_and_its_workers_are_woken(
    tm: TaskManager, db: psycopg.Connection[Any], start_worker: Callable[..., Any]
) -> None:
    admin = Admin(db)
    admin.pause_queue("paused")
    first, elsewhere, paused = chain(
        w.step.s(n=1), group(w.step.s(n=2, queue="elsewhere"), w.step.s(n=3, queue="paused"))
    ).delay()
    start_worker(queues=[w.QUEUE, "paused"], concurrency=4)
    tm.wait(first, timeout=30)
    wait_until(lambda: status(tm, elsewhere) is PENDING and status(tm, paused) is PENDING)
    # A worker of the other queue, asleep with a long polling interval, is woken at once.
    other = start_worker(queues=["elsewhere"], concurrency=1, polling_interval=600)
    assert tm.wait(elsewhere, timeout=30) == 2
    _, ran_by = _event_at(db, elsewhere, "started")
    assert ran_by == other.manager.worker_id
    assert status(tm, paused) is PENDING
    admin.resume_queue("paused")
    assert tm.wait(paused, timeout=30) == 3


def test_a_child_holding_a_limit_key_is_left_to_the_keyed_claim(
    tm: TaskManager, db: psycopg.Connection[Any], start_worker: Callable[..., Any]
) -> None:
    """A hand-off would start the child without asking its limits: a child that holds keys
    waits for the keyed claim, which counts it against them."""
    tm.set_limit("solo", concurrency=1)
    first, keyed = chain(w.step.s(n=1), w.step.s(n=2, limits=["solo"])).delay()
    start_worker(queues=[w.QUEUE], concurrency=4)
    assert tm.wait(keyed, timeout=30) == 2
    completed_at, _ = _event_at(db, first, "completed")
    started_at, _ = _event_at(db, keyed, "started")
    assert started_at > completed_at  # claimed by a statement of its own
    usage = db.execute("SELECT running FROM pgqueue.limit_usage WHERE key = 'solo'").fetchall()
    assert usage in ([], [(0,)])  # counted while it ran, given back with its completion
