"""The keyed claim alone against the number of idle keys: ``python benchmarks/limits_claim.py``.

For 0, 10,000 and 100,000 idle keys (a usage row and a fair-share pass each, nothing
waiting), a fresh database with 20,000 tasks holding the key "bench" (limit never reached);
then `claim_keyed_tasks` of 100 tasks, 40 times in a transaction rolled back each time (the
same rows each time, so only the idle keys differ), on one connection, so that the plpgsql
function's cached generic plans are the ones measured (from the sixth call on). Prints the
median and the fastest call. The claim must not grow with idle keys (#18); figures in
docs/performance.md.
"""

from __future__ import annotations

import statistics
import time

import psycopg

from pgqueue import AsyncTask, TaskManager
from pgqueue.db import migrations

ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
CLAIM = "SELECT * FROM pgqueue.claim_keyed_tasks(ARRAY['probe'], 100, 'bench', 60.0)"


@AsyncTask(queue="probe")
async def noop() -> None:
    return None


def measure(idle: int) -> list[float]:
    name = f"pgqueue_limits_claim_{idle}"
    dsn = f"postgresql://postgres@127.0.0.1:5432/{name}"
    with psycopg.connect(ADMIN, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {name}")
    try:
        migrations.upgrade(dsn)
        with TaskManager(dsn=dsn) as tm:
            tm.set_limit("bench", concurrency=1_000_000)
            tm.set_limit("tenant:*", concurrency=5)
            tm.queue_tasks(noop, [{}] * 20_000, limits=["bench"])
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO pgqueue.limit_usage (key, running)"
                " SELECT 'tenant:' || i, 0 FROM generate_series(1, %s) AS i",
                (idle,),
            )
            conn.execute(
                "INSERT INTO pgqueue.fair_passes (queue, key, pass)"
                " SELECT 'probe', 'tenant:' || i, i FROM generate_series(1, %s) AS i",
                (idle,),
            )
            conn.execute("VACUUM ANALYZE")
        times = []
        with psycopg.connect(dsn) as conn:
            for _ in range(40):
                started = time.perf_counter()
                conn.execute(CLAIM).fetchall()
                times.append(time.perf_counter() - started)
                conn.rollback()
        return times[5:]  # the generic plans
    finally:
        with psycopg.connect(ADMIN, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def main() -> None:
    print("idle keys   median ms   fastest ms  (claim_keyed_tasks of 100, 20,000 keyed rows)")
    for idle in (0, 10_000, 100_000):
        times = measure(idle)
        print(f"{idle:>9,}   {1000 * statistics.median(times):9.2f}   {1000 * min(times):10.2f}")


if __name__ == "__main__":
    main()
