"""How fast a chain step could be: ``python benchmarks/chain_floor.py [REPEATS]`` (`make bench`
runs it after workflows.py).

#19 asks a chain of 1,000 steps to finish 5x faster than the relay (1,000 tasks each queued
by the previous one from inside its run). A chain step has to commit the parent's
completion, with the child's release, before the child starts; so no design that keeps
that rule makes a step cheaper than one round trip that writes two rows, plus the
worker's own time around a task. This prints, on the machine at hand:

- the relay and the chain as `benchmarks/workflows.py` runs them (in-process worker of
  concurrency 10), per step, and the relay's step divided by 5: the goal's budget;
- `complete_and_hand_off` called in a loop over a chain of 1,000, as the worker's completer
  calls it (async psycopg, `synchronous_commit = off`, the child handed off to the caller):
  the step's statement alone; the chain's step minus this is the worker's share;
- the least a step can write: one statement that marks the parent COMPLETED and the child
  RUNNING by primary key (no history, no edges, no lease or limit checks), the same
  connection settings: a floor, not a candidate;
- a `SELECT 1`: the round trip alone.

The floor of a step is the least write plus the worker's share; where it exceeds the
budget, 5x cannot be reached by making the statement cheaper.
"""

from __future__ import annotations

import asyncio
import itertools
import statistics
import sys
import time
import uuid
from typing import Any

import psycopg
from workflows import DSN, QUEUE, STEPS, fresh_database, relay, step, timed

from pgqueue import TaskManager, chain
from pgqueue.task_manager import set_default_task_manager

#: Calls of each loop before the timed ones (plans made, caches warm).
WARM_UP = 50

_CLEAR = "TRUNCATE pgqueue.tasks, pgqueue.task_events, pgqueue.task_dependencies"
_START_FIRST = (
    "UPDATE pgqueue.tasks SET status = 'RUNNING', lease_token = 1, worker_id = 'floor', "
    "started_at = now(), lease_expires_at = now() + interval '1 hour' "
    "WHERE status = 'PENDING' RETURNING id"
)
_STEP = (
    "SELECT task_id, task_lease_token FROM pgqueue.complete_and_hand_off("
    "ARRAY[%s]::uuid[], ARRAY[%s]::integer[], ARRAY['1'::jsonb], NULL, 'floor', "
    "ARRAY[%s], 1, 30) WHERE handed_off"
)
_LEAST = (
    "UPDATE pgqueue.tasks SET status = CASE WHEN id = %s THEN 'COMPLETED' ELSE 'RUNNING' "
    "END::pgqueue.task_status WHERE id = ANY (ARRAY[%s, %s]::uuid[])"
)


def _queue_chain() -> list[uuid.UUID]:
    with psycopg.connect(DSN, autocommit=True) as conn:
        conn.execute(_CLEAR)
    return chain(*[step.s(n=i) for i in range(STEPS)]).delay()


async def _connect() -> psycopg.AsyncConnection[Any]:
    conn = await psycopg.AsyncConnection.connect(DSN, autocommit=True)
    await conn.execute("SET synchronous_commit = off")  # as the completer's connection
    return conn


async def _statement_per_step() -> float:
    """Milliseconds a call of complete_and_hand_off, each completing the task the call
    before handed off."""
    _queue_chain()
    conn = await _connect()
    cursor = await conn.execute(_START_FIRST)
    row = await cursor.fetchone()
    assert row is not None
    current, token = row[0], 1
    calls = 0
    started = 0.0
    while True:
        if calls == WARM_UP:
            started = time.perf_counter()
        cursor = await conn.execute(_STEP, (current, token, QUEUE))
        handed = await cursor.fetchone()
        if handed is None:
            break
        current, token = handed
        calls += 1
    elapsed = time.perf_counter() - started
    await conn.close()
    assert calls == STEPS - 1, f"the chain stopped after {calls} steps"
    return 1000 * elapsed / (calls - WARM_UP)


async def _least_write_per_step() -> float:
    """Milliseconds a step that only marks the parent COMPLETED and the child RUNNING."""
    ids = _queue_chain()
    conn = await _connect()
    started = 0.0
    for index, (parent, child) in enumerate(itertools.pairwise(ids)):
        if index == WARM_UP:
            started = time.perf_counter()
        await conn.execute(_LEAST, (parent, parent, child))
    elapsed = time.perf_counter() - started
    await conn.close()
    return 1000 * elapsed / (len(ids) - 1 - WARM_UP)


async def _round_trip() -> float:
    """Milliseconds a `SELECT 1`."""
    conn = await _connect()
    for _ in range(WARM_UP):
        await conn.execute("SELECT 1")
    started = time.perf_counter()
    for _ in range(STEPS):
        await conn.execute("SELECT 1")
    elapsed = time.perf_counter() - started
    await conn.close()
    return 1000 * elapsed / STEPS


def main() -> None:
    repeats = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    fresh_database()
    tm = TaskManager(dsn=DSN)
    set_default_task_manager(tm)
    samples: dict[str, list[float]] = {
        "relay": [],
        "chain": [],
        "statement": [],
        "least": [],
        "round trip": [],
    }
    for _ in range(repeats):  # interleaved, so that the machine's drift spreads over all
        samples["relay"].append(1000 * timed(lambda: relay.delay(left=STEPS), STEPS)[0] / STEPS)
        samples["chain"].append(
            1000
            * timed(lambda: chain(*[step.s(n=i) for i in range(STEPS)]).delay(), STEPS)[0]
            / STEPS
        )
        samples["statement"].append(asyncio.run(_statement_per_step()))
        samples["least"].append(asyncio.run(_least_write_per_step()))
        samples["round trip"].append(asyncio.run(_round_trip()))
    tm.close()
    median = {name: statistics.median(values) for name, values in samples.items()}
    budget = median["relay"] / 5
    worker = median["chain"] - median["statement"]
    floor = median["least"] + worker
    for label, name in (
        ("relay, a step", "relay"),
        ("chain, a step", "chain"),
        ("complete_and_hand_off alone", "statement"),
        ("least write (2 rows, 1 statement)", "least"),
        ("round trip (SELECT 1)", "round trip"),
    ):
        shown = ", ".join(f"{value:.3f}" for value in samples[name])
        print(f"{label:36s} median {median[name]:.3f} ms ({shown})")
    print(f"chain: {median['relay'] / median['chain']:.1f}x the relay (goal >= 5x)")
    print(f"budget for 5x: {budget:.3f} ms a step; the worker's share: {worker:.3f} ms")
    print(
        f"floor of a step (least write + the worker's share): {floor:.3f} ms, "
        f"{100 * floor / budget:.0f}% of the budget; the least write alone is "
        f"{100 * median['least'] / budget:.0f}% of it, complete_and_hand_off alone "
        f"{100 * median['statement'] / budget:.0f}%"
    )


if __name__ == "__main__":
    main()
