"""Workflow benchmark: ``python benchmarks/workflows.py [REPEATS] [chain|chord]`` (`make bench`
runs it).

Two comparisons (or the one named), each run REPEATS times (default 3) alternating, medians
printed, with an
in-process worker of concurrency 10 on a fresh database ``pgqueue_workflows``:

- chain: a chain of 1,000 steps (one transaction, each step released by the completion of
  the one before) against 1,000 tasks each queued by the previous one from inside its run;
- chord: 10,000 parents and a callback (one transaction) against the same 10,000 tasks
  queued alone (COPY); from queueing until the last task is COMPLETED, and the drain alone
  (from the commit of the queueing call until the last task is COMPLETED).
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from typing import Any

import psycopg

from pgqueue import AsyncTask, TaskManager, WorkerManager, chain, chord
from pgqueue.db import migrations
from pgqueue.settings import load_settings
from pgqueue.task_manager import set_default_task_manager

ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
DSN = "postgresql://postgres@127.0.0.1:5432/pgqueue_workflows"
QUEUE = "bench-workflows"
STEPS = 1_000
PARENTS = 10_000


@AsyncTask(queue=QUEUE)
async def step(n: int = 0) -> int:
    return n


@AsyncTask(queue=QUEUE)
async def relay(left: int) -> None:
    """The way without workflows: each run queues the next."""
    if left > 1:
        await relay.adelay(left=left - 1)


def fresh_database() -> None:
    with psycopg.connect(ADMIN, autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS pgqueue_workflows WITH (FORCE)")
        conn.execute("CREATE DATABASE pgqueue_workflows")
    migrations.upgrade(DSN)


def timed(queue: object, expected: int) -> tuple[float, float]:
    """Seconds from queueing (the `queue` callable) until `expected` tasks COMPLETED, and
    of those, the seconds the queueing call took."""
    with psycopg.connect(DSN, autocommit=True) as conn:
        conn.execute("TRUNCATE pgqueue.tasks, pgqueue.task_events, pgqueue.task_dependencies")

    async def run() -> tuple[float, float]:
        manager = WorkerManager(settings=load_settings(dsn=DSN))
        manager.set_queues([QUEUE])
        manager.set_concurrent_tasks(10)
        manager.set_polling_interval(1)
        worker = asyncio.create_task(manager.start())
        await asyncio.sleep(1.0)  # the worker is listening
        # One connection for the whole wait: a new one at every look costs the server a
        # backend's start, CPU the workers under test would be short of.
        watcher = await psycopg.AsyncConnection.connect(DSN, autocommit=True)
        started = time.perf_counter()
        await asyncio.to_thread(queue)  # type: ignore[arg-type]
        queued = time.perf_counter() - started
        while await _completed(watcher) < expected:
            await asyncio.sleep(0.01)
        elapsed = time.perf_counter() - started
        await watcher.close()
        manager.stop()
        await worker
        return elapsed, queued

    return asyncio.run(run())


async def _completed(conn: psycopg.AsyncConnection[Any]) -> int:
    cursor = await conn.execute("SELECT count(*) FROM pgqueue.tasks WHERE status = 'COMPLETED'")
    row = await cursor.fetchone()
    assert row is not None
    return int(row[0])


def main() -> None:
    repeats = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    only = sys.argv[2] if len(sys.argv) > 2 else ""
    fresh_database()
    tm = TaskManager(dsn=DSN)
    set_default_task_manager(tm)
    cases = {
        "chain of 1,000 (workflow)": (
            lambda: chain(*[step.s(n=i) for i in range(STEPS)]).delay(),
            STEPS,
        ),
        "1,000 queued by each other": (lambda: relay.delay(left=STEPS), STEPS),
        "chord of 10,000 + callback": (
            lambda: chord([step.s(n=i) for i in range(PARENTS)], step.s()).delay(),
            PARENTS + 1,
        ),
        "10,000 parents alone": (
            lambda: tm.queue_tasks(step, [{"n": i} for i in range(PARENTS)]),
            PARENTS,
        ),
    }
    if only:
        cases = {name: case for name, case in cases.items() if _comparison(name) == only}
    times: dict[str, list[float]] = {name: [] for name in cases}
    drains: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(repeats):
        for name, (queue, expected) in cases.items():
            elapsed, queued = timed(queue, expected)
            times[name].append(elapsed)
            drains[name].append(elapsed - queued)
    for name, values in times.items():
        rounded = ", ".join(f"{value:.2f}" for value in values)
        print(
            f"{name:30s} median {statistics.median(values):5.2f} s ({rounded}); "
            f"drain after the commit {statistics.median(drains[name]):5.3f} s"
        )
    if "chain of 1,000 (workflow)" in times:
        _print_chain(times)
    if "chord of 10,000 + callback" in times:
        _print_chord(times, "")
        _print_chord(drains, ", the drain alone")
    tm.close()


def _comparison(case: str) -> str:
    """Which comparison a case belongs to: the chain's (1,000 steps) or the chord's."""
    return "chain" if case.startswith(("chain", "1,000")) else "chord"


def _print_chain(times: dict[str, list[float]]) -> None:
    chain_gain = statistics.median(times["1,000 queued by each other"]) / statistics.median(
        times["chain of 1,000 (workflow)"]
    )
    print(f"chain: {chain_gain:.1f}x faster than tasks queueing the next (goal >= 5x)")


def _print_chord(times: dict[str, list[float]], what: str) -> None:
    chord_cost = statistics.median(times["chord of 10,000 + callback"]) / statistics.median(
        times["10,000 parents alone"]
    )
    print(f"chord: {100 * (chord_cost - 1):+.1f}% over the parents alone{what} (goal < 10%)")


if __name__ == "__main__":
    main()
