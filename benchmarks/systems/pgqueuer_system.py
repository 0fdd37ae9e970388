"""PgQueuer 1.x, in its fastest documented configuration for async no-op tasks.

Schema from ``pgq install`` (durable tables, its default). Worker: the asyncpg driver
(its docs measure it at about twice psycopg) on uvloop (as ``pgq run`` does), one
QueueManager per process. Concurrency C maps to its own knobs:
  C = 1:  batch_size 1 and the entrypoint's concurrency_limit 1 (serialised dispatch);
  C >= 2: max_concurrent_tasks C (a per-process hard cap) and batch_size C // 2 (its
          rule: the cap must be at least twice the batch size).
PgQueuer deletes a job once it is done (logging it in pgqueuer_log), so finished jobs
are N minus the rows still in the ``pgqueuer`` table.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

from systems import BaseSystem

ENTRYPOINT = "noop"


def knobs(concurrency: int) -> dict:
    if os.environ.get("BENCH_PGQUEUER_KNOBS"):  # experiments: "batch,max,limit"
        b, m, lim = (int(x) for x in os.environ["BENCH_PGQUEUER_KNOBS"].split(","))
        return {"batch_size": b, "max_concurrent_tasks": m or None, "concurrency_limit": lim}
    if concurrency <= 1:
        return {"batch_size": 1, "max_concurrent_tasks": None, "concurrency_limit": 1}
    return {
        "batch_size": max(1, concurrency // 2),
        "max_concurrent_tasks": concurrency,
        "concurrency_limit": 0,
    }


class PgQueuerSystem(BaseSystem):
    name = "pgqueuer"
    label = "PgQueuer"
    url = True

    @classmethod
    def available(cls) -> str | None:
        try:
            import asyncpg  # noqa: F401
            import pgqueuer  # noqa: F401
        except ImportError as exc:
            return f"pgqueuer/asyncpg not importable: {exc}"
        return None

    def install_schema(self, dsn: str) -> None:
        env = dict(os.environ, PGDSN=dsn)
        subprocess.run(
            [sys.executable, "-m", "pgqueuer", "install"],
            env=env,
            check=True,
            capture_output=True,
            timeout=120,
        )

    async def open(self, dsn: str) -> None:
        import asyncpg
        from pgqueuer.db import AsyncpgDriver
        from pgqueuer.queries import Queries

        self.dsn = dsn
        self.conn = await asyncpg.connect(dsn)
        self.queries = Queries(AsyncpgDriver(self.conn))

    async def close(self) -> None:
        await self.conn.close()

    async def enqueue_one(self, n: int) -> None:
        for _ in range(n):
            await self.queries.enqueue(ENTRYPOINT, None)

    async def enqueue_bulk(self, n: int, batch: int) -> None:
        for start in range(0, n, batch):
            k = min(batch, n - start)
            await self.queries.enqueue([ENTRYPOINT] * k, [None] * k, [0] * k)

    async def enqueue_wakeup(self, i: int) -> float:
        await self.queries.enqueue(ENTRYPOINT, str(i).encode())
        return time.time()

    def finished_sql(self, n: int) -> str:
        return f"SELECT {int(n)} - count(*) FROM pgqueuer"

    # ------------------------------------------------------------ worker side

    @classmethod
    def prepare_worker(cls) -> None:
        import asyncpg  # noqa: F401
        import pgqueuer  # noqa: F401
        import uvloop  # noqa: F401

    @classmethod
    def run_worker(cls, dsn: str, concurrency: int) -> None:
        import asyncpg
        import uvloop
        from pgqueuer.db import AsyncpgDriver
        from pgqueuer.models import Job
        from pgqueuer.qm import QueueManager
        from pgqueuer.queries import Queries

        k = knobs(concurrency)

        async def main() -> None:
            conn = await asyncpg.connect(dsn)
            qm = QueueManager(Queries(AsyncpgDriver(conn)))

            @qm.entrypoint(ENTRYPOINT, concurrency_limit=k["concurrency_limit"])
            async def noop(job: Job) -> None:
                if job.payload:
                    from wakeup import record

                    record(int(job.payload))

            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, qm.shutdown.set)
            await qm.run(batch_size=k["batch_size"], max_concurrent_tasks=k["max_concurrent_tasks"])

        uvloop.run(main())
