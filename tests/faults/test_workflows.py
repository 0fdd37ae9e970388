"""Workflows run by real workers while they are SIGKILLed: every task starts after all its
parents completed, each effect once, none left WAITING; a chord's callback once, after the
last; producers building workflows concurrently deadlock nothing."""

from __future__ import annotations

import random
import threading
import time
import uuid
from typing import Any

import fault_tasks
import psycopg
from support.faults import WorkerPool, all_finished, assert_exactly_once
from support.waiting import wait_until

from pgqueue import chain, chord
from pgqueue.task_manager import TaskManager
from pgqueue.tasks.workflow import Step

DAG_TASKS = 500


def random_dag(rng: random.Random, size: int) -> list[Step]:
    """Fan-out (a few hubs many depend on) and fan-in (up to 4 parents each)."""
    steps = []
    for index in range(size):
        candidates = range(max(0, index - 60), index)
        parents: set[int] = set(rng.sample(candidates, min(len(candidates), rng.randint(0, 3))))
        if index > 10 and rng.random() < 0.3:
            parents.add(rng.randint(0, 4))  # the hubs
        steps.append(Step(fault_tasks.effect.s(n=index, sleep=0.01), tuple(sorted(parents))))
    return steps


def kill_until_finished(
    db: psycopg.Connection[Any], pool: WorkerPool, ids: list[uuid.UUID], seed: int
) -> int:
    rng = random.Random(seed)
    kills = 0
    deadline = time.monotonic() + 120
    while not all_finished(db, ids) and time.monotonic() < deadline:
        time.sleep(rng.uniform(0.5, 1.2))
        if pool.kill_random(rng):
            kills += 1
    pool.stop_supervising()
    wait_until(lambda: all_finished(db, ids), timeout=90)
    return kills


def assert_started_after_parents(db: psycopg.Connection[Any]) -> None:
    """No run of a task started before the transaction completing each parent wrote its
    effect (clock_timestamp(), before that commit): the parent was COMPLETED first."""
    early = db.execute(
        "SELECT e.task_id, d.parent_id FROM executions AS e"
        " JOIN pgqueue.task_dependencies AS d ON d.child_id = e.task_id"
        " LEFT JOIN effects AS p ON p.task_id = d.parent_id"
        " WHERE p.committed_at IS NULL OR e.at < p.committed_at LIMIT 5"
    ).fetchall()
    assert early == [], f"started before a parent completed: {early}"
    twice = db.execute(
        "SELECT task_id FROM pgqueue.task_events WHERE event = 'ready'"
        " GROUP BY task_id HAVING count(*) > 1"
    ).fetchall()
    assert twice == []


def test_random_dag_under_sigkills(
    fault_db: psycopg.Connection[Any], faults_tm: TaskManager, pool: WorkerPool
) -> None:
    ids = faults_tm.queue_workflow(random_dag(random.Random(19), DAG_TASKS))
    for _ in range(3):
        pool.spawn(concurrency=4, lease=2.0)
    pool.supervise()
    kills = kill_until_finished(fault_db, pool, ids, seed=1919)
    assert kills >= 3, f"only {kills} kills happened; the test proved little"
    assert_exactly_once(fault_db, ids)  # every one COMPLETED (none left WAITING), once
    assert_started_after_parents(fault_db)
    released = fault_db.execute(
        "SELECT count(DISTINCT task_id) FROM pgqueue.task_events WHERE event = 'ready'"
    ).fetchone()
    with_parents = fault_db.execute(
        "SELECT count(DISTINCT child_id) FROM pgqueue.task_dependencies"
    ).fetchone()
    assert released == with_parents


def test_chord_of_1000_callback_once_after_the_last(
    fault_db: psycopg.Connection[Any], faults_tm: TaskManager, pool: WorkerPool
) -> None:
    ids = faults_tm.queue_workflow(
        chord(
            [fault_tasks.effect.s(n=i, sleep=0.005) for i in range(1000)],
            fault_tasks.effect.s(n=-1),
        ).steps()
    )
    for _ in range(3):
        pool.spawn(concurrency=8, lease=2.0)
    pool.supervise()
    kill_until_finished(fault_db, pool, ids, seed=1000)
    assert_exactly_once(fault_db, ids)
    assert_started_after_parents(fault_db)
    callback_runs = fault_db.execute(
        "SELECT count(*) FROM executions WHERE task_id = %s", (ids[-1],)
    ).fetchone()
    assert callback_runs is not None and callback_runs[0] >= 1


def test_twenty_producers_build_workflows_concurrently(
    fault_db: psycopg.Connection[Any], faults_tm: TaskManager, pool: WorkerPool
) -> None:
    shared = [faults_tm.queue_task(fault_tasks.effect, n=-i - 1) for i in range(5)]
    ids: list[uuid.UUID] = list(shared)
    errors: list[BaseException] = []
    lock = threading.Lock()

    def produce(seed: int) -> None:
        rng = random.Random(seed)
        try:
            for round_ in range(5):
                parents = rng.sample(shared, 2)
                steps = chain(
                    fault_tasks.effect.s(n=seed * 1000 + round_ * 10, depends_on=parents),
                    chord(
                        [fault_tasks.effect.s(n=seed * 1000 + round_ * 10 + k) for k in (1, 2, 3)],
                        fault_tasks.effect.s(n=seed * 1000 + round_ * 10 + 4),
                    ),
                ).steps()
                made = faults_tm.queue_workflow(steps)
                with lock:
                    ids.extend(made)
        except BaseException as error:
            errors.append(error)

    for _ in range(2):
        pool.spawn(concurrency=8, lease=5.0)
    producers = [threading.Thread(target=produce, args=(seed,)) for seed in range(1, 21)]
    for thread in producers:
        thread.start()
    for thread in producers:
        thread.join(timeout=120)
    assert errors == []
    assert len(ids) == 5 + 20 * 5 * 5
    wait_until(lambda: all_finished(fault_db, ids), timeout=120)
    assert_exactly_once(fault_db, ids)
    assert_started_after_parents(fault_db)
