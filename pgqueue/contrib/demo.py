"""`make demo`: a realistic mixed workload run by a real `pgqueue worker`, shown live.

Emails on one queue, payments on a high-priority queue, delayed reminders, a flaky
call that succeeds on retry and a report that fails for good. With no PGQUEUE_DSN
it runs on the embedded PostgreSQL in ./.pgqueue.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from pgqueue import AsyncTask, TaskManager, current_task
from pgqueue.db.database import resolve_dsn
from pgqueue.dsn import mask_dsn
from pgqueue.settings import get_settings

QUEUES = ("emails", "payments", "reports")


@AsyncTask(queue="emails", max_retries=3)
async def send_welcome_email(user_id: int, email: str) -> dict[str, Any]:
    await asyncio.sleep(random.uniform(0.05, 0.3))  # the mail server's round trip
    return {"status": "sent", "email": email}


@AsyncTask(queue="payments", priority=10)
def process_payment(order_id: str, amount: float) -> dict[str, Any]:
    time.sleep(random.uniform(0.05, 0.2))  # a blocking payment SDK: runs in a thread
    return {"status": "completed", "order_id": order_id, "amount": amount}


@AsyncTask(queue="emails", priority=5)
async def send_reminder(user_id: int) -> dict[str, Any]:
    return {"status": "reminded", "user_id": user_id}


@AsyncTask(queue="payments", max_retries=3)
async def charge_with_flaky_gateway(order_id: str) -> dict[str, Any]:
    if current_task().attempt == 1:
        raise ConnectionError("payment gateway timed out (it recovers on retry)")
    return {"status": "charged", "order_id": order_id, "attempt": current_task().attempt}


@AsyncTask(queue="reports", max_retries=1)
def generate_broken_report(report_type: str) -> None:
    raise ValueError(f"report template {report_type!r} does not exist")


def queue_workload(tm: TaskManager) -> dict[uuid.UUID, str]:
    """Queue the demo's tasks; returns each id with the final status it must reach."""
    expected: dict[uuid.UUID, str] = {}
    emails = [{"user_id": n, "email": f"user{n}@example.com"} for n in range(1, 121)]
    for task_id in tm.queue_tasks(send_welcome_email, emails):
        expected[task_id] = "COMPLETED"
    for n in range(1, 41):
        expected[process_payment.delay(order_id=f"order-{n}", amount=round(n * 9.99, 2))] = (
            "COMPLETED"
        )
    for n in range(1, 6):
        expected[send_reminder.delay(delay=1 + n, user_id=n)] = "COMPLETED"
    for n in range(1, 4):
        expected[charge_with_flaky_gateway.delay(order_id=f"order-flaky-{n}")] = "COMPLETED"
    expected[generate_broken_report.delay(report_type="quarterly")] = "FAILED"
    return expected


def snapshot(tm: TaskManager, ids: list[uuid.UUID]) -> Counter[str]:
    with tm.store.database.connection() as conn:
        rows = conn.execute(
            "SELECT status::text, count(*) FROM pgqueue.tasks WHERE id = ANY(%s) GROUP BY 1", [ids]
        ).fetchall()
    return Counter({status: count for status, count in rows})


def render(counts: Counter[str], total: int, elapsed: float) -> Any:
    from rich.table import Table

    finished = counts["COMPLETED"] + counts["FAILED"]
    table = Table(title=f"pgqueue demo: {finished}/{total} finished in {elapsed:.1f}s")
    for column in ("pending", "running", "retrying", "completed", "failed", "tasks/s"):
        table.add_column(column, justify="right")
    table.add_row(
        str(counts["PENDING"]),
        str(counts["RUNNING"]),
        str(counts["RETRYING"]),
        f"[green]{counts['COMPLETED']}",
        f"[red]{counts['FAILED']}",
        f"{finished / elapsed:.0f}" if elapsed > 0 else "-",
    )
    return table


def run_worker(dsn: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PGQUEUE_DSN": dsn, "PGQUEUE_LOG_LEVEL": "WARNING"}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pgqueue.cli",
            "worker",
            "start",
            "--queues",
            ",".join(QUEUES),
            "--concurrent",
            "20",
            "--import",
            "pgqueue.contrib.demo",
        ],
        env=env,
    )


def main() -> int:
    from rich.console import Console
    from rich.live import Live

    from pgqueue.db import migrations

    console = Console()
    settings = get_settings()
    dsn = resolve_dsn(settings)
    migrations.upgrade(dsn, schema=settings.schema_name)
    tm = TaskManager(dsn=dsn)
    expected = queue_workload(tm)
    ids = list(expected)
    console.print(f"queued {len(ids)} tasks on queues {', '.join(QUEUES)}; starting a worker")
    worker = run_worker(dsn)
    started = time.monotonic()
    try:
        with Live(console=console, refresh_per_second=8) as live:
            while True:
                counts = snapshot(tm, ids)
                live.update(render(counts, len(ids), time.monotonic() - started))
                if counts["COMPLETED"] + counts["FAILED"] == len(ids):
                    break
                if worker.poll() is not None or time.monotonic() - started > 120:
                    console.print("[red]the worker stopped or the demo took too long")
                    return 1
                time.sleep(0.125)
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(60)
    return summarize(console, tm, expected, time.monotonic() - started, dsn)


def summarize(
    console: Any, tm: TaskManager, expected: dict[uuid.UUID, str], elapsed: float, dsn: str
) -> int:
    wrong = []
    for task_id, status in expected.items():
        task = tm.get_task(task_id)
        if task is None or task.status != status:
            wrong.append((task_id, status, task.status if task else None))
    flaky = [tm.get_task(task_id) for task_id in expected if expected[task_id] == "COMPLETED"]
    retried = sum(1 for task in flaky if task and task.attempts > 1)
    console.print(
        f"\n{len(expected) - len(wrong)}/{len(expected)} tasks reached their expected status in "
        f"{elapsed:.1f}s; {retried} succeeded on a retry; 1 report failed for good, as intended."
    )
    print(closing_note(dsn, embedded=not get_settings().dsn))
    for task_id, want, got in wrong:
        console.print(f"[red]task {task_id}: expected {want}, got {got}")
    return 1 if wrong else 0


def closing_note(dsn: str, *, embedded: bool) -> str:
    """Where to look next: the CLI first (as the user can type it here), then psql."""
    command = "pgqueue"
    if shutil.which(command) is None:  # not on PATH: say where it is (.venv/bin/pgqueue)
        installed = Path(sys.executable).with_name(command)
        command = (
            os.path.relpath(installed) if installed.is_relative_to(Path.cwd()) else str(installed)
        )
    lines = [
        "",
        "Look at them yourself" + (", from this folder:" if embedded else ":"),
        f"  {command} status",
        f"  {command} tasks list --status failed",
        f"  {command} tasks show ID    (an ID from that list)",
    ]
    if importlib.util.find_spec("pgqueue.web") is not None:  # the dashboard, once installed
        lines.append(f"  {command} dashboard")
    lines.append(f"  psql '{mask_dsn(dsn)}'")
    if embedded:
        lines.append(f"  {command} db stop    (stops the embedded server when you are done)")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
