"""One-row claim probe: ``python benchmarks/inproc_claim.py [IDLE_MS ...]``.

What a wake-up's claim costs: a task is queued, the connection stays idle IDLE_MS (as a
worker's does between wake-ups), then the worker's prepared claim takes the one row.
Prints the claim's p50 with the durable commit pgqueue uses and, for comparison only,
with ``synchronous_commit = off``, for each idle time (default 0 and 15 ms).
"""

from __future__ import annotations

import asyncio
import sys
import time

import psycopg

from pgqueue import AsyncTask, TaskManager
from pgqueue.db import migrations
from pgqueue.db.database import Database

ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
DSN = "postgresql://postgres@127.0.0.1:5432/pgqueue_probe"
SAMPLES = 100


@AsyncTask(queue="probe")
async def wake(i: int) -> None:
    return None


async def claim_p50(conn: psycopg.AsyncConnection[object], tm: TaskManager, idle: float) -> float:
    query = Database(DSN).queries["claim_tasks"]
    params = {"queues": ["probe"], "limit": 10, "worker_id": "probe", "lease_seconds": 30.0}
    times = []
    for i in range(SAMPLES):
        tm.queue_task(wake, i=i)
        time.sleep(idle)
        started = time.perf_counter()
        cursor = await conn.execute(query, {**params, "start_now": 10, "now": None}, prepare=True)
        assert len(await cursor.fetchall()) == 1
        times.append(1000 * (time.perf_counter() - started))
    return sorted(times)[SAMPLES // 2]


async def main() -> None:
    idles = [float(arg) for arg in sys.argv[1:]] or [0.0, 15.0]
    with psycopg.connect(ADMIN, autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS pgqueue_probe WITH (FORCE)")
        conn.execute("CREATE DATABASE pgqueue_probe")
    migrations.upgrade(DSN)
    tm = TaskManager(dsn=DSN)
    durable = await psycopg.AsyncConnection.connect(DSN, autocommit=True)
    asynchronous = await psycopg.AsyncConnection.connect(DSN, autocommit=True)
    await asynchronous.execute("SET synchronous_commit = off")
    for idle in idles:
        for _ in range(2):  # alternated, so drift on the machine hits both alike
            on = await claim_p50(durable, tm, idle / 1000)
            off = await claim_p50(asynchronous, tm, idle / 1000)
            print(f"idle {idle:g} ms: claim p50 {on:.2f} ms durable, {off:.2f} ms commit off")
    await durable.close()
    await asynchronous.close()
    tm.close()
    with psycopg.connect(ADMIN, autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS pgqueue_probe WITH (FORCE)")


if __name__ == "__main__":
    asyncio.run(main())
