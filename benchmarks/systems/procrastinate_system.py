"""Procrastinate 3.x, in its fastest documented configuration for async no-op tasks.

Async task, PsycopgConnector (psycopg 3 pool) sized to the worker's concurrency plus its
own listener and housekeeping connections, ``run_worker_async(concurrency=C)`` with
LISTEN/NOTIFY on (its default). Jobs are kept on success (its default), so finished
jobs are counted as ``status = 'succeeded'``.
"""

from __future__ import annotations

import asyncio
import os
import time

from systems import BaseSystem

QUEUE = "bench"
POOL_CAP = int(os.environ.get("BENCH_PROCRASTINATE_POOL_CAP", "30"))
_app = None


def make_app(dsn: str, pool_size: int = 4):
    """One App per process; the tasks are registered on it under fixed names."""
    import procrastinate

    global _app
    app = procrastinate.App(
        connector=procrastinate.PsycopgConnector(
            conninfo=dsn, min_size=pool_size, max_size=pool_size
        ),
    )

    @app.task(name="noop", queue=QUEUE)
    async def noop(i: int | None = None) -> None:
        if i is not None:
            from wakeup import record

            record(i)

    _app = app
    return app


class ProcrastinateSystem(BaseSystem):
    name = "procrastinate"
    label = "Procrastinate"
    supports_scale = True

    @classmethod
    def available(cls) -> str | None:
        try:
            import procrastinate  # noqa: F401
        except ImportError as exc:
            return f"procrastinate not importable: {exc}"
        return None

    def install_schema(self, dsn: str) -> None:
        async def apply() -> None:
            app = make_app(dsn, pool_size=1)
            async with app.open_async():
                await app.schema_manager.apply_schema_async()

        asyncio.run(apply())

    async def open(self, dsn: str) -> None:
        self.dsn = dsn
        self.app = make_app(dsn, pool_size=2)
        await self.app.open_async()
        self.noop = self.app.tasks["noop"]

    async def close(self) -> None:
        await self.app.close_async()

    async def enqueue_one(self, n: int) -> None:
        for _ in range(n):
            await self.noop.defer_async()

    async def enqueue_bulk(self, n: int, batch: int) -> None:
        for start in range(0, n, batch):
            k = min(batch, n - start)
            await self.noop.batch_defer_async(*([{}] * k))

    async def enqueue_wakeup(self, i: int) -> float:
        await self.noop.defer_async(i=i)
        return time.time()

    def finished_sql(self, n: int) -> str:
        return "SELECT count(*) FROM procrastinate_jobs WHERE status = 'succeeded'"

    async def seed_finished(self, n: int) -> None:
        conn = self.app.connector
        await conn.execute_query_async(
            "INSERT INTO procrastinate_jobs (queue_name, task_name, args, status) "
            "SELECT 'bench', 'noop', '{}'::jsonb, 'succeeded' FROM generate_series(1, %(n)s)",
            n=n,
        )

    # ------------------------------------------------------------ worker side

    @classmethod
    def prepare_worker(cls) -> None:
        import procrastinate  # noqa: F401

    @classmethod
    def run_worker(cls, dsn: str, concurrency: int) -> None:
        # Pool: one connection per concurrent job (capped so that two workers at
        # concurrency 50 fit in max_connections=100), plus listener and heartbeat.
        app = make_app(dsn, pool_size=min(concurrency, POOL_CAP) + 2)

        async def main() -> None:
            async with app.open_async():
                await app.run_worker_async(
                    queues=[QUEUE],
                    concurrency=concurrency,
                    wait=True,
                    install_signal_handlers=True,
                    shutdown_graceful_timeout=2,
                )

        asyncio.run(main())
