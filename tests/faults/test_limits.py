"""Limits and fair share under load, with real worker processes (docs/features.md).

Each run of `fault_tasks.limited` logs its start and end in `executions` from its own
connection; the limits are checked on those rows (overlaps, order of starts) or on the
admissions the claim records (`tasks.started_at`, for the rate limit: see there).
"""

from __future__ import annotations

import datetime
import random
import time
import uuid
from collections import Counter
from typing import Any

import fault_tasks
import psycopg
from support.faults import WorkerPool, all_finished
from support.waiting import wait_until

from pgqueue.task_manager import TaskManager

WORKERS, SLOTS = 4, 20


def _runs(db: psycopg.Connection[Any]) -> list[tuple[datetime.datetime, datetime.datetime]]:
    """Each run's (start, end). A run whose worker was killed logged no end: its slot was
    held until the rescue of its task (the "rescued" event, recorded at the start of the
    rescue's transaction, which gives the slot back at its commit), so that stands for its
    end: never earlier than the death of the run."""
    rows = db.execute(
        "SELECT task_id, attempt, pid, kind, at FROM executions ORDER BY task_id, at"
    ).fetchall()
    rescues: dict[uuid.UUID, list[datetime.datetime]] = {}
    for task_id, at in db.execute(
        "SELECT task_id, at FROM pgqueue.task_events WHERE event = 'rescued' ORDER BY at"
    ).fetchall():
        rescues.setdefault(task_id, []).append(at)
    starts: dict[tuple[uuid.UUID, int, int], datetime.datetime] = {}
    ends: dict[tuple[uuid.UUID, int, int], datetime.datetime] = {}
    for task_id, attempt, pid, kind, at in rows:
        (starts if kind == "start" else ends)[(task_id, attempt, pid)] = at
    runs = []
    for key, start in starts.items():
        end = ends.get(key)
        if end is None:
            later = [at for at in rescues.get(key[0], []) if at > start]
            assert later, f"run {key} has no end and its task was never rescued"
            end = min(later)
        runs.append((start, end))
    return runs


def _most_overlapping(runs: list[tuple[datetime.datetime, datetime.datetime]]) -> int:
    # Ends sort before starts at the same instant: a slot given back can be taken at once.
    points = sorted([(s, 1) for s, _ in runs] + [(e, -1) for _, e in runs])
    most = current = 0
    for _, step in points:
        current += step
        most = max(most, current)
    return most


def test_concurrency_limit_across_workers_and_sigkills(
    fault_db: psycopg.Connection[Any], faults_tm: TaskManager, pool: WorkerPool
) -> None:
    """4 workers x 20 slots, a limit of 3 on the key all tasks hold: never more than 3 runs
    at once, though workers are SIGKILLed meanwhile; no slot leaked afterwards."""
    faults_tm.set_limit("ses", concurrency=3)
    ids = faults_tm.queue_tasks(
        fault_tasks.limited, [{"n": i, "sleep": 0.05} for i in range(150)], limits=["ses"]
    )
    for _ in range(WORKERS):
        pool.spawn(concurrency=SLOTS, lease=1.0)
    pool.supervise()
    rng = random.Random(18)
    kills = 0
    deadline = time.monotonic() + 120
    while not all_finished(fault_db, ids) and time.monotonic() < deadline:
        time.sleep(rng.uniform(0.5, 1.0))
        if kills < 4 and pool.kill_random(rng):
            kills += 1
    pool.stop_supervising()
    wait_until(lambda: all_finished(fault_db, ids), timeout=60)
    assert kills >= 3
    statuses = Counter(
        row[0] for row in fault_db.execute("SELECT status::text FROM pgqueue.tasks").fetchall()
    )
    assert statuses == {"COMPLETED": 150}
    runs = _runs(fault_db)
    assert len(runs) >= 150
    assert _most_overlapping(runs) == 3  # reached, never exceeded
    # Every slot came back: given back with each run, or recounted by maintenance.
    wait_until(
        lambda: (
            fault_db.execute("SELECT running FROM pgqueue.limit_usage WHERE key = 'ses'").fetchone()
            == (0,)
        ),
        timeout=30,
    )


def test_rate_limit_every_window_within_burst_plus_rate(
    fault_db: psycopg.Connection[Any], faults_tm: TaskManager, pool: WorkerPool
) -> None:
    """rate 20/s, burst 20, over 10 s: starts in every window of length T stay within
    20 + 20 T. A start is the admission the claim records (tasks.started_at: the workers
    claim nothing ahead, so every claimed task starts at its claim), the instant the token
    was spent; a run's own start row follows it by a varying delay of the worker."""
    faults_tm.set_limit("api", rate=20, per=1, burst=20)
    ids = faults_tm.queue_tasks(fault_tasks.limited, [{"n": i} for i in range(220)], limits=["api"])
    for _ in range(WORKERS):
        pool.spawn(concurrency=SLOTS, lease=2.0, extra_args=("--prefetch", "0"))
    wait_until(lambda: all_finished(fault_db, ids), timeout=60)
    starts = sorted(
        row[0] for row in fault_db.execute("SELECT started_at FROM pgqueue.tasks").fetchall()
    )
    assert len(starts) == 220
    seconds = [(s - starts[0]).total_seconds() for s in starts]
    for i in range(len(seconds)):
        for j in range(i, len(seconds)):
            window = seconds[j] - seconds[i]
            assert j - i + 1 <= 20 + 20 * window + 1e-6, (i, j, window)
    # The bucket was the bound, not the workers: 200 starts beyond the burst took 10 s.
    assert 9.5 <= seconds[-1] <= 14.0


def _starts_by_key(db: psycopg.Connection[Any]) -> list[str]:
    """The fair key of each first start, in the order the runs began."""
    rows = db.execute(
        "SELECT t.fair_key FROM executions AS e JOIN pgqueue.tasks AS t ON t.id = e.task_id"
        " WHERE e.kind = 'start' AND e.attempt = 1 ORDER BY e.at, e.id"
    ).fetchall()
    return [row[0] for row in rows]


def test_a_small_tenant_is_not_starved_by_a_big_backlog(
    fault_db: psycopg.Connection[Any], faults_tm: TaskManager, pool: WorkerPool
) -> None:
    """2,000 tasks of tenant A queued before 20 of B: all 20 of B start before 10% of A's."""
    big = faults_tm.queue_tasks(fault_tasks.limited, [{"n": i} for i in range(2000)], fair_key="A")
    small = faults_tm.queue_tasks(fault_tasks.limited, [{"n": i} for i in range(20)], fair_key="B")
    for _ in range(WORKERS):
        pool.spawn(concurrency=SLOTS, lease=2.0)
    wait_until(lambda: all_finished(fault_db, big + small), timeout=120)
    order = _starts_by_key(fault_db)
    assert Counter(order) == {"A": 2000, "B": 20}
    last_b = max(i for i, key in enumerate(order) if key == "B")
    a_before = order[:last_b].count("A")
    assert a_before < 200, f"{a_before} of A started before the last of B"


def test_weights_give_their_share_of_starts(
    fault_db: psycopg.Connection[Any], faults_tm: TaskManager, pool: WorkerPool
) -> None:
    """Weights 3:1 give a 3:1 share of starts (within 20%) while both keys are backlogged."""
    faults_tm.set_fair_weight(fault_tasks.QUEUE, "heavy", 3)
    heavy = faults_tm.queue_tasks(
        fault_tasks.limited, [{"n": i} for i in range(900)], fair_key="heavy"
    )
    light = faults_tm.queue_tasks(
        fault_tasks.limited, [{"n": i} for i in range(900)], fair_key="light"
    )
    for _ in range(WORKERS):
        pool.spawn(concurrency=SLOTS, lease=2.0)
    wait_until(lambda: all_finished(fault_db, heavy + light), timeout=120)
    order = _starts_by_key(fault_db)
    # Both are backlogged until heavy's 900 are done (after about 1,200 starts): the
    # first 1,000 starts are well inside that.
    share = Counter(order[:1000])
    ratio = share["heavy"] / share["light"]
    assert 2.4 <= ratio <= 3.6, share
