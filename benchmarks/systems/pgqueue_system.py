"""pgqueue, driven only through its public API (docs: shared reference api.md).

Tasks live in ``benchmarks/tasks_pgqueue.py``. Schema: ``pgqueue migrate`` (PGQUEUE_DSN).
Enqueue: ``TaskManager(dsn=...).queue_task(task=noop)`` per task, ``queue_tasks`` in bulk.
Worker: ``pgqueue worker start --queues bench --concurrent C --import tasks_pgqueue
--log-level WARNING`` (no per-task INFO lines),
run in-process by runner.py (same code as the console script, minus interpreter start-up).
Finished tasks: ``status = 'COMPLETED'`` in ``pgqueue.tasks``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from systems import BaseSystem

QUEUE = "bench"


def _cli_argv(*args: str) -> list[str]:
    script = Path(sys.executable).parent / "pgqueue"
    if script.exists():
        return [str(script), *args]
    code = "import sys; from pgqueue.cli import main; sys.argv[0] = 'pgqueue'; sys.exit(main())"
    return [sys.executable, "-c", code, *args]


class PgQueueSystem(BaseSystem):
    name = "pgqueue"
    label = "pgqueue"
    url = True
    supports_scale = True

    @classmethod
    def available(cls) -> str | None:
        try:
            import pgqueue
            import pgqueue.cli
        except Exception as exc:  # being written right now: any error means "not yet"
            return f"pgqueue not importable yet ({type(exc).__name__}: {exc})"
        missing = [n for n in ("AsyncTask", "TaskManager") if not hasattr(pgqueue, n)]
        if not hasattr(pgqueue.cli, "main"):
            missing.append("cli.main")
        if missing:
            return f"pgqueue lacks {', '.join(missing)} so far"
        return None

    def install_schema(self, dsn: str) -> None:
        env = dict(os.environ, PGQUEUE_DSN=dsn)
        res = subprocess.run(
            _cli_argv("migrate"),
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            cwd=str(Path(__file__).resolve().parent.parent),
        )
        if res.returncode != 0:
            raise RuntimeError(f"pgqueue migrate failed: {res.stderr[-2000:]}")

    def worker_env(self, dsn: str) -> dict:
        return {"PGQUEUE_DSN": dsn}

    async def open(self, dsn: str) -> None:
        os.environ["PGQUEUE_DSN"] = dsn
        import tasks_pgqueue

        from pgqueue import TaskManager

        self.dsn = dsn
        self.tasks = tasks_pgqueue
        self.tm = TaskManager(dsn=dsn)

    async def close(self) -> None:
        for meth in ("close", "dispose"):
            fn = getattr(self.tm, meth, None)
            if callable(fn):
                fn()
                break

    async def enqueue_one(self, n: int) -> None:
        noop = self.tasks.noop
        for _ in range(n):
            self.tm.queue_task(task=noop)

    async def enqueue_bulk(self, n: int, batch: int) -> None:
        for start in range(0, n, batch):
            k = min(batch, n - start)
            self.tm.queue_tasks(self.tasks.noop, [{}] * k)

    async def enqueue_wakeup(self, i: int) -> float:
        self.tm.queue_task(task=self.tasks.wake, i=i)
        return time.time()

    def finished_sql(self, n: int) -> str:
        return "SELECT count(*) FROM pgqueue.tasks WHERE status = 'COMPLETED'"

    def remaining_sql(self) -> str:
        # Unfinished rows only, from the partial indexes of runnable and running rows: cheap
        # however many finished rows the table holds (a drain ends with none left).
        return (
            "SELECT (SELECT count(*) FROM pgqueue.tasks WHERE status IN ('PENDING', "
            "'RETRYING')) + (SELECT count(*) FROM pgqueue.tasks WHERE status = 'RUNNING')"
        )

    async def seed_finished(self, n: int) -> None:
        import psycopg

        step = 100_000
        for start in range(0, n, step):
            self.tm.queue_tasks(self.tasks.noop, [{}] * min(step, n - start))
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(
                "UPDATE pgqueue.tasks SET status = 'COMPLETED', finished_at = now() "
                "WHERE status = 'PENDING'"
            )

    # ------------------------------------------------------------ worker side

    @classmethod
    def prepare_worker(cls) -> None:
        import tasks_pgqueue  # noqa: F401

        import pgqueue.cli  # noqa: F401

    @classmethod
    def run_worker(cls, dsn: str, concurrency: int) -> None:
        from pgqueue.cli import main

        os.environ["PGQUEUE_DSN"] = dsn
        # WARNING: at the default INFO level the worker logs two lines per task ("started",
        # "completed"), 25 us of CPU per task, which the peers do not do by default.
        sys.argv = [
            "pgqueue",
            "worker",
            "start",
            "--queues",
            QUEUE,
            "--concurrent",
            str(concurrency),
            "--import",
            "tasks_pgqueue",
            "--log-level",
            "WARNING",
        ]
        main()


class PgQueueHistoryOffSystem(PgQueueSystem):
    """pgqueue with task history off (``pgqueue history off`` after the migration): the
    same workloads, interleaved with pgqueue's, so that "pgqueue / history off" in the
    report is the share of throughput that history keeps (goal: >= 0.85 in the drains)."""

    name = "pgqueue-history-off"
    label = "pgqueue, history off"

    def install_schema(self, dsn: str) -> None:
        super().install_schema(dsn)
        env = dict(os.environ, PGQUEUE_DSN=dsn)
        subprocess.run(_cli_argv("history", "off"), env=env, check=True, capture_output=True)
