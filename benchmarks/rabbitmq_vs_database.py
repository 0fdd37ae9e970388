"""Drain throughput: N no-op tasks through the RabbitMQ broker and the database broker.

Both runs in one process, one after the other, same machine, same worker settings:
queue N tasks with queue_tasks (not timed as drain), then start one in-process worker
and time from its start until every task is COMPLETED in the task table.

    .venv/bin/python benchmarks/rabbitmq_vs_database.py [--tasks 20000] [--concurrency 50]

Needs PostgreSQL (BENCH_ADMIN_DSN, default postgres@127.0.0.1:5432) and RabbitMQ
(BENCH_RABBITMQ_URL, default guest@127.0.0.1:5672).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import threading
import time
import uuid

import psycopg

from pgqueue import AsyncTask
from pgqueue.db import migrations
from pgqueue.settings import Settings, load_settings
from pgqueue.task_manager import TaskManager
from pgqueue.worker import WorkerManager

ADMIN_DSN = os.environ.get("BENCH_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
RABBITMQ_URL = os.environ.get("BENCH_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/")


@AsyncTask(queue="bench")
async def noop() -> None:
    return None


def fresh_database() -> tuple[str, str]:
    name = f"pgqueue_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    info = psycopg.conninfo.conninfo_to_dict(ADMIN_DSN)
    info["dbname"] = name
    dsn = psycopg.conninfo.make_conninfo(**info)
    migrations.upgrade(dsn)
    return name, dsn


def drop_database(name: str) -> None:
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def completed(conn: psycopg.Connection[tuple[int]]) -> int:
    row = conn.execute("SELECT count(*) FROM pgqueue.tasks WHERE status = 'COMPLETED'")
    return int(row.fetchone()[0])  # type: ignore[index]


def run(broker: str, tasks: int, concurrency: int) -> dict[str, float]:
    name, dsn = fresh_database()
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    settings: Settings = load_settings(
        dsn=dsn, broker=broker, rabbitmq_url=RABBITMQ_URL, rabbitmq_prefix=prefix
    )
    manager = TaskManager(settings=settings)
    try:
        started = time.perf_counter()
        for start in range(0, tasks, 5000):
            manager.queue_tasks(noop, [{} for _ in range(min(5000, tasks - start))])
        enqueue_seconds = time.perf_counter() - started

        worker = WorkerManager(settings=settings)
        worker.set_queues(["bench"])
        worker.set_concurrent_tasks(concurrency)
        worker.set_polling_interval(1.0)
        thread = threading.Thread(target=lambda: asyncio.run(worker.start()), daemon=True)
        with psycopg.connect(dsn, autocommit=True) as conn:
            started = time.perf_counter()
            thread.start()
            while completed(conn) < tasks:
                time.sleep(0.05)
            drain_seconds = time.perf_counter() - started
        worker.stop()
        thread.join(60)
    finally:
        manager.close()
        if broker == "rabbitmq":
            delete_rabbitmq(prefix)
        drop_database(name)
    return {
        "enqueue_per_s": tasks / enqueue_seconds,
        "drain_seconds": drain_seconds,
        "drain_per_s": tasks / drain_seconds,
    }


def delete_rabbitmq(prefix: str) -> None:
    import aio_pika

    from pgqueue.brokers.rabbitmq import Topology

    topology = Topology(prefix)
    queues, exchanges = topology.all_names()

    async def delete() -> None:
        connection = await aio_pika.connect(RABBITMQ_URL)
        async with connection:
            channel = await connection.channel()
            for queue in [*queues, topology.main("bench"), topology.dead("bench")]:
                await channel.queue_delete(queue)
            for exchange in exchanges:
                await channel.exchange_delete(exchange)

    asyncio.run(delete())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=50)
    args = parser.parse_args()
    print(f"{args.tasks} no-op tasks, one worker, concurrency {args.concurrency}")
    print(f"{'broker':<10} {'enqueue/s':>10} {'drain s':>9} {'drain/s':>9}")
    for broker in ("rabbitmq", "database"):
        result = run(broker, args.tasks, args.concurrency)
        print(
            f"{broker:<10} {result['enqueue_per_s']:>10.0f} {result['drain_seconds']:>9.2f} "
            f"{result['drain_per_s']:>9.0f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
