"""Limits and fair share against the claim before them, side by side, interleaved, in one
run: ``python benchmarks/limits_drain.py [--tasks N] [--rounds R] [--concurrency C]
[--base REF]``.

Each round drains N no-op tasks with an in-process worker (as inproc_drain.py does), once
per variant, in turn (A, B, C, D, A, B, C, D, ...), each in a fresh database and process:

- ``before``: the code at ``--base`` (default: BEFORE_LIMITS, the last commit of main
  before limits landed; exported with `git archive` into a temporary folder, put first on
  PYTHONPATH): the claim as it was.
- ``no-limit``: this code, no limit defined, tasks without keys (the prepared claim).
- ``keyed``: every task holds the key "bench", whose limit (concurrency 1,000,000) is
  never reached: the keyed claim (sql/limits.sql) takes every task.
- ``keyed+10k-idle``: as keyed, with 10,000 idle keys: a pattern limit with a state for
  10,000 keys and a fair-share pass for 10,000 fair keys, none with work waiting.

Prints the median throughput of each and its ratio to before, and the mean claim round
trip (the cost of a claim should not grow with idle keys). Figures: docs/performance.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
VARIANTS = ("before", "no-limit", "keyed", "keyed+10k-idle")
#: main just before the merge of limits (#18).
BEFORE_LIMITS = "60617e3"


def child(variant: str, n: int, concurrency: int) -> None:
    """One drain in this process; prints {"rate": tasks/s, "claim_ms": mean round trip}."""
    import psycopg

    from pgqueue import AsyncTask, TaskManager, WorkerManager
    from pgqueue.brokers.postgres import PostgresBroker
    from pgqueue.db import migrations
    from pgqueue.settings import load_settings

    name = "pgqueue_limits_" + variant.replace("+", "_").replace("-", "_")
    dsn = f"postgresql://postgres@127.0.0.1:5432/{name}"

    @AsyncTask(queue="probe")
    async def noop() -> None:
        return None

    with psycopg.connect(ADMIN, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {name}")
    migrations.upgrade(dsn)
    tm = TaskManager(dsn=dsn)
    if variant.startswith("keyed"):
        tm.set_limit("bench", concurrency=1_000_000)  # type: ignore[attr-defined]
        if variant.endswith("idle"):
            tm.set_limit("tenant:*", concurrency=5)  # type: ignore[attr-defined]
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute(
                    "INSERT INTO pgqueue.limit_usage (key, running)"
                    " SELECT 'tenant:' || i, 0 FROM generate_series(1, 10000) AS i"
                )
                conn.execute(
                    "INSERT INTO pgqueue.fair_passes (queue, key, pass)"
                    " SELECT 'probe', 'tenant:' || i, i FROM generate_series(1, 10000) AS i"
                )
        tm.queue_tasks(noop, [{}] * n, limits=["bench"])  # type: ignore[call-arg]
    else:
        tm.queue_tasks(noop, [{}] * n)
    tm.close()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")

    claims: list[float] = []
    claim = PostgresBroker._claim

    async def timed_claim(self: PostgresBroker, limit: int, start_now: int | None) -> list:  # type: ignore[type-arg]
        started = time.perf_counter()
        tasks = await claim(self, limit, start_now)
        claims.append(time.perf_counter() - started)
        return tasks

    PostgresBroker._claim = timed_claim  # type: ignore[method-assign]
    worker = WorkerManager(settings=load_settings(dsn=dsn))
    worker.set_queues(["probe"])
    worker.set_concurrent_tasks(concurrency)
    worker.set_polling_interval(30)

    def done() -> bool:
        with psycopg.connect(dsn, autocommit=True) as conn:
            row = conn.execute(
                "SELECT count(*) FROM pgqueue.tasks WHERE status = 'COMPLETED'"
            ).fetchone()
            return row is not None and row[0] >= n

    async def drain() -> float:
        wall = time.perf_counter()
        running = asyncio.create_task(worker.start())
        while not await asyncio.to_thread(done):
            await asyncio.sleep(0.02)
        wall = time.perf_counter() - wall
        worker.stop()
        await running
        return wall

    wall = asyncio.run(drain())
    with psycopg.connect(ADMIN, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    print(json.dumps({"rate": n / wall, "claim_ms": 1000 * statistics.mean(claims)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--child", choices=VARIANTS)
    parser.add_argument("--base", default=BEFORE_LIMITS, help="the code to compare with")
    args = parser.parse_args()
    if args.child:
        child(args.child, args.tasks, args.concurrency)
        return
    with tempfile.TemporaryDirectory(prefix="pgqueue-main-") as main_tree:
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", args.base], check=True, capture_output=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", main_tree], input=archive, check=True)
        results: dict[str, list[dict[str, float]]] = {variant: [] for variant in VARIANTS}
        for round_ in range(args.rounds):
            for variant in VARIANTS:
                env = dict(os.environ)
                if variant == "before":
                    env["PYTHONPATH"] = main_tree
                out = subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "--child",
                        variant,
                        "--tasks",
                        str(args.tasks),
                        "--concurrency",
                        str(args.concurrency),
                    ],
                    env=env,
                    cwd=main_tree if variant == "before" else ROOT,
                    check=True,
                    capture_output=True,
                    text=True,
                ).stdout
                results[variant].append(json.loads(out.strip().splitlines()[-1]))
                print(f"round {round_ + 1} {variant}: {results[variant][-1]}", flush=True)
    base = statistics.median(r["rate"] for r in results["before"])
    print(
        f"\n{args.tasks:,} no-op tasks, concurrency {args.concurrency}, medians of {args.rounds}:"
    )
    for variant in VARIANTS:
        rate = statistics.median(r["rate"] for r in results[variant])
        claim_ms = statistics.median(r["claim_ms"] for r in results[variant])
        print(
            f"  {variant:15} {rate:8,.0f} tasks/s  {100 * rate / base:5.1f}% of before  "
            f"claim {claim_ms:.2f} ms"
        )


if __name__ == "__main__":
    main()
