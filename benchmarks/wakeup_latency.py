"""Wake-up latency of an idle worker: from the commit of a queued task to its function starting.

    PGQUEUE_DSN=postgresql://postgres@127.0.0.1:5432/bench python benchmarks/wakeup_latency.py

Starts a `pgqueue worker` subprocess (polling interval 30 s, so only NOTIFY can explain a
fast start), then queues tasks one at a time: the producer notes time.time() when its
COMMIT returns, the task notes time.time() first thing in its body and returns it. Each
task is queued only after the previous one finished, so the worker is idle every time.
Prints the median and p99 over --tasks samples (the goal: p99 under 10 ms).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import psycopg

from pgqueue import AsyncTask

HERE = Path(__file__).resolve().parent
TASK_NAME = "wakeup_latency.stamp"


@AsyncTask(queue="wakeup-latency", max_retries=0)
async def stamp(n: int) -> float:
    """Returns when it started; nothing else, so the start is all that is measured."""
    return time.time()


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def start_worker(dsn: str, log_level: str) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "PGQUEUE_DSN": dsn,
        "PYTHONPATH": os.pathsep.join([str(HERE), str(HERE.parent)]),
    }
    return subprocess.Popen(
        [
            sys.executable, "-m", "pgqueue.cli", "--log-level", log_level,
            "worker", "start", "--queues", "wakeup-latency", "--interval", "30",
            "--concurrent", "10", "--import", "wakeup_latency",
        ],
        env=env,
    )  # fmt: skip


def measure(dsn: str, samples: int, warm_up: int) -> list[float]:
    from pgqueue import TaskManager

    manager = TaskManager(dsn=dsn)
    latencies = []
    with (
        psycopg.connect(dsn, autocommit=False) as producer,
        psycopg.connect(dsn, autocommit=True) as reader,
    ):
        for n in range(warm_up + samples):
            task_id = manager.queue_task(
                TASK_NAME, connection=producer, queue="wakeup-latency", n=n
            )
            producer.commit()
            committed = time.time()
            deadline = time.monotonic() + 35
            while True:
                row = reader.execute(
                    "SELECT status::text, result FROM pgqueue.tasks WHERE id = %s", (task_id,)
                ).fetchone()
                if row and row[0] == "COMPLETED":
                    break
                if (row and row[0] == "FAILED") or time.monotonic() > deadline:
                    raise SystemExit(f"task {n} did not complete: {row}")
                time.sleep(0.002)
            if n >= warm_up:
                latencies.append(float(row[1]) - committed)
            time.sleep(0.01)  # the worker is back to waiting before the next one
    manager.close()
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--warm-up", type=int, default=10)
    parser.add_argument("--log-level", default="WARNING", help="the worker's --log-level")
    args = parser.parse_args()
    dsn = os.environ.get("PGQUEUE_DSN")
    if not dsn:
        raise SystemExit("set PGQUEUE_DSN to the database to measure against")
    from pgqueue.db import migrations

    migrations.upgrade(dsn)
    worker = start_worker(dsn, args.log_level)
    try:
        latencies = measure(dsn, args.tasks, args.warm_up)
    finally:
        worker.terminate()
        worker.wait(30)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DELETE FROM pgqueue.tasks WHERE name = %s", (TASK_NAME,))
    ms = [value * 1000 for value in latencies]
    print(
        f"wake-up latency over {len(ms)} tasks (idle worker, polling interval 30 s): "
        f"median {statistics.median(ms):.2f} ms, p99 {percentile(ms, 0.99):.2f} ms, "
        f"max {max(ms):.2f} ms, min {min(ms):.2f} ms"
    )


if __name__ == "__main__":
    main()
