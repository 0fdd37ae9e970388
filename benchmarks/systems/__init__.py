"""One module per system; each exposes classes with the same small interface.

Producer side (run in the harness process, async):
    available() -> str | None            reason it cannot run, or None
    install_schema(dsn)                  apply the system's schema to a fresh database
    await open(dsn) / await close()
    await enqueue_one(n)                 n tasks, one transaction each
    await enqueue_bulk(n, batch)         n tasks, ``batch`` per call
    await enqueue_wakeup(i) -> float     one task carrying sample number i; time.time()
                                         right after its commit returned
    finished_sql(n) -> str               SQL counting finished tasks of this drain
    await seed_finished(n)               optional: n finished rows (the --scale workload)

Worker side (run in runner.py subprocesses):
    prepare_worker()                     heavy imports, before READY
    run_worker(dsn, concurrency)         runs until SIGTERM
"""

from __future__ import annotations

import importlib

MODULES = {
    "pgqueue": ("systems.pgqueue_system", "PgQueueSystem"),
    "pgqueue-history-off": ("systems.pgqueue_system", "PgQueueHistoryOffSystem"),
    "procrastinate": ("systems.procrastinate_system", "ProcrastinateSystem"),
    "pgqueuer": ("systems.pgqueuer_system", "PgQueuerSystem"),
    "plain-single": ("systems.plain", "PlainSingle"),
    "plain-batch": ("systems.plain", "PlainBatch"),
}

# --systems accepts "plain" for both plain baselines.
ALIASES = {"plain": ["plain-single", "plain-batch"]}


def get_system_class(name: str):
    module, cls = MODULES[name]
    return getattr(importlib.import_module(module), cls)


class BaseSystem:
    name = "base"
    label = "base"
    url = False  # True: the system wants a postgresql:// URL rather than a libpq DSN
    supports_scale = False

    @classmethod
    def available(cls) -> str | None:
        return None

    def install_schema(self, dsn: str) -> None:
        raise NotImplementedError

    def worker_env(self, dsn: str) -> dict:
        """Extra environment for the worker subprocess."""
        return {}

    async def open(self, dsn: str) -> None:
        self.dsn = dsn

    async def close(self) -> None:
        pass

    async def enqueue_one(self, n: int) -> None:
        raise NotImplementedError

    async def enqueue_bulk(self, n: int, batch: int) -> None:
        raise NotImplementedError

    async def enqueue_wakeup(self, i: int) -> float:
        raise NotImplementedError

    def finished_sql(self, n: int) -> str:
        raise NotImplementedError

    async def seed_finished(self, n: int) -> None:
        raise NotImplementedError

    @classmethod
    def prepare_worker(cls) -> None:
        pass

    @classmethod
    def run_worker(cls, dsn: str, concurrency: int) -> None:
        raise NotImplementedError
