"""In-process wake-up probe: ``python benchmarks/inproc_wakeup.py [SAMPLES]``.

An idle WorkerManager (concurrency 10) in a thread; the producer queues one task at a
time and the task body records when it starts. Prints the p50/p99 latency from the
producer's commit to the task's start, and the p50 of the worker's claims (most of it).
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time

import psycopg

from pgqueue import AsyncTask, TaskManager, WorkerManager
from pgqueue.brokers.postgres import PostgresBroker
from pgqueue.db import migrations
from pgqueue.settings import load_settings

ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
DSN = "postgresql://postgres@127.0.0.1:5432/pgqueue_probe"
started: dict[int, float] = {}


@AsyncTask(queue="probe")
async def wake(i: int) -> None:
    started[i] = time.time()


def main() -> None:
    samples = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    with psycopg.connect(ADMIN, autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS pgqueue_probe WITH (FORCE)")
        conn.execute("CREATE DATABASE pgqueue_probe")
    migrations.upgrade(DSN)
    claims: list[float] = []
    claim = PostgresBroker._claim

    async def timed_claim(self: PostgresBroker, limit: int, start_now: int | None) -> list:  # type: ignore[type-arg]
        begun = time.perf_counter()
        tasks = await claim(self, limit, start_now)
        if tasks:
            claims.append(1000 * (time.perf_counter() - begun))
        return tasks

    PostgresBroker._claim = timed_claim  # type: ignore[method-assign]
    worker = WorkerManager(settings=load_settings(dsn=DSN))
    worker.set_queues(["probe"])
    worker.set_concurrent_tasks(10)
    worker.set_polling_interval(30)
    thread = threading.Thread(target=lambda: asyncio.run(worker.start()), daemon=True)
    thread.start()
    time.sleep(1)
    tm = TaskManager(dsn=DSN)
    latencies = []
    for i in range(samples + 5):
        tm.queue_task(wake, i=i)
        committed = time.time()
        while i not in started:
            time.sleep(0.0002)
        if i >= 5:  # warm-up
            latencies.append(1000 * (started[i] - committed))
        time.sleep(0.015)
    worker.stop()
    thread.join(10)
    latencies.sort()
    claims.sort()
    print(
        f"wake-up p50 {latencies[len(latencies) // 2]:.2f} ms, "
        f"p99 {latencies[int(len(latencies) * 0.99)]:.2f} ms; "
        f"claim p50 {claims[len(claims) // 2]:.2f} ms"
    )
    with psycopg.connect(ADMIN, autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS pgqueue_probe WITH (FORCE)")


if __name__ == "__main__":
    main()
