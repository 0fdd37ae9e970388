"""In-process drain probe: ``python benchmarks/inproc_drain.py N CONCURRENCY [on|off]``.

The third argument turns task history on (the default) or off for the drain.

Queues N no-op tasks (bulk) in a fresh database ``pgqueue_probe``, runs a WorkerManager in
this process until all are COMPLETED, and prints throughput, this process's CPU per task,
the claims (how many asked, got, mean round trip), the completion flushes and how busy the
whole machine was (worker and server: a drain that leaves cores idle waits on something
else than CPU). The quickest
way to see what a change to the worker's hot path does (docs/performance.md); the numbers
of record come from bench.sh, which runs the worker as a subprocess.
"""

from __future__ import annotations

import asyncio
import sys
import time

import psycopg

import pgqueue.brokers.postgres.completer as completer
from pgqueue import AsyncTask, TaskManager, WorkerManager
from pgqueue.brokers.postgres import PostgresBroker
from pgqueue.db import migrations
from pgqueue.settings import load_settings

ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
DSN = "postgresql://postgres@127.0.0.1:5432/pgqueue_probe"


@AsyncTask(queue="probe")
async def noop() -> None:
    return None


def machine_times() -> tuple[int, int]:
    """(busy, idle) clock ticks of all cores since boot, from /proc/stat."""
    with open("/proc/stat") as stat:
        user, nice, system, idle, iowait, *rest = map(int, stat.readline().split()[1:9])
    return user + nice + system + sum(rest), idle + iowait


def main() -> None:
    n, concurrency = int(sys.argv[1]), int(sys.argv[2])
    history = (sys.argv[3] if len(sys.argv) > 3 else "on") == "on"
    with psycopg.connect(ADMIN, autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS pgqueue_probe WITH (FORCE)")
        conn.execute("CREATE DATABASE pgqueue_probe")
    migrations.upgrade(DSN)
    with psycopg.connect(DSN, autocommit=True) as conn:
        conn.execute("SELECT pgqueue.set_history(%s)", (history,))
    TaskManager(dsn=DSN).queue_tasks(noop, [{}] * n)
    with psycopg.connect(DSN, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE pgqueue.tasks")

    claims: list[tuple[int, int, float]] = []
    flushes: list[tuple[int, float]] = []
    claim, write = PostgresBroker._claim, completer.Completer._write

    async def timed_claim(self: PostgresBroker, limit: int, start_now: int | None) -> list:  # type: ignore[type-arg]
        started = time.perf_counter()
        tasks = await claim(self, limit, start_now)
        claims.append((limit, len(tasks), time.perf_counter() - started))
        return tasks

    async def timed_write(self: completer.Completer, batch: list) -> None:  # type: ignore[type-arg]
        started = time.perf_counter()
        await write(self, batch)
        flushes.append((len(batch), time.perf_counter() - started))

    PostgresBroker._claim = timed_claim  # type: ignore[method-assign]
    completer.Completer._write = timed_write  # type: ignore[method-assign]
    worker = WorkerManager(settings=load_settings(dsn=DSN))
    worker.set_queues(["probe"])
    worker.set_concurrent_tasks(concurrency)
    worker.set_polling_interval(30)

    async def drain() -> None:
        wall, cpu, machine = time.perf_counter(), time.process_time(), machine_times()
        running = asyncio.create_task(worker.start())
        while sum(size for size, _ in flushes) < n:
            await asyncio.sleep(0.005)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        (busy_after, idle_after), (busy_before, idle_before) = machine_times(), machine
        busy, idle = busy_after - busy_before, idle_after - idle_before
        worker.stop()
        await running
        asked = sum(a for a, _, _ in claims) / len(claims)
        got = sum(g for _, g, _ in claims) / len(claims)
        claim_ms = 1000 * sum(s for _, _, s in claims) / len(claims)
        flush_rows = sum(size for size, _ in flushes) / len(flushes)
        flush_ms = 1000 * sum(s for _, s in flushes) / len(flushes)
        print(
            f"c={concurrency} history {'on' if history else 'off'}: {n / wall:,.0f} tasks/s in {wall:.2f} s, CPU {cpu / n * 1e6:.0f} "
            f"us/task; {len(claims)} claims asked {asked:.0f} got {got:.0f} in {claim_ms:.2f} "
            f"ms; {len(flushes)} flushes of {flush_rows:.0f} in {flush_ms:.2f} ms; machine "
            f"busy {100 * busy / max(busy + idle, 1):.0f}% (worker, server and all)"
        )

    asyncio.run(drain())
    with psycopg.connect(ADMIN, autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS pgqueue_probe WITH (FORCE)")


if __name__ == "__main__":
    main()
