"""Every example of framefox-task-system.txt, run end to end with the imports changed to pgqueue.

`ServiceContainer` becomes plain construction: `TaskManager()`, `WorkerManager(get_broker())`.
The tasks live in tests/tasks/seed_tasks.py (and myapp/tasks.py for those queued by name).
"""

from __future__ import annotations

import datetime
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from datetime import UTC, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
import seed_tasks
from seed_tasks import (
    cleanup_old_data,
    daily_report,
    flaky_task,
    low_priority_task,
    normal_task,
    process_critical_alert,
    process_order,
    process_payment,
    send_email,
    send_reminder,
    send_welcome_email,
    task_with_custom_retry,
    urgent_task,
)
from support.paths import worker_pythonpath
from support.waiting import wait_until
from support.workers import InProcessWorker

from pgqueue import TaskManager, TaskStatus, WorkerManager
from pgqueue.brokers import get_broker
from pgqueue.events import dispatcher
from pgqueue.settings import get_settings, load_settings
from pgqueue.task_manager import default_task_manager


@pytest.fixture
def seed_env(dsn: str, tm: TaskManager, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The environment a seed user has: PGQUEUE_DSN set, so plain construction finds it."""
    monkeypatch.setenv("PGQUEUE_DSN", dsn)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.fixture
def seed_worker(seed_env: None) -> Iterator[Any]:
    """seed_worker(queues, concurrency): the seed's WorkerManager(broker), configured its way."""
    started: list[InProcessWorker] = []

    def start(queues: list[str], concurrency: int = 10) -> InProcessWorker:
        broker = get_broker()
        worker = WorkerManager(broker)
        worker.set_queues(queues)
        worker.set_polling_interval(5)
        worker.set_concurrent_tasks(concurrency)
        worker.set_cleanup_config(interval_hours=1, retain_days=7)
        running = InProcessWorker(worker).start()
        started.append(running)
        return running

    yield start
    for running in started:
        running.stop()


def done(*ids: Any) -> bool:
    manager = default_task_manager()  # the `tm` fixture's
    return all(manager.get_task(i).status.is_finished for i in ids)  # type: ignore[union-attr]


def db_now(db: psycopg.Connection[Any]) -> datetime.datetime:
    return db.execute("SELECT now()").fetchone()[0]  # type: ignore[index,no-any-return]


# -- Quick Start ------------------------------------------------------------------------------


def test_quick_start(seed_worker: Any, capsys: pytest.CaptureFixture[str]) -> None:
    seed_worker(["default", "high_priority"])
    # Queue with .delay() method
    task_id = send_email.delay(
        to="user@example.com", subject="Welcome!", body="Thanks for signing up!"
    )
    print(f"Task queued: {task_id}")

    # Or use TaskManager directly
    task_manager = TaskManager()
    task_id_2 = task_manager.queue_task(
        task=send_email, to="user@example.com", subject="Welcome!", body="Thanks for signing up!"
    )
    payment = process_payment.delay(order_id="A-17", amount=12.5)
    wait_until(lambda: done(task_id, task_id_2, payment))

    for sent in (task_id, task_id_2):
        task = task_manager.get_task(sent)
        assert task is not None and task.status == TaskStatus.COMPLETED
        assert task.result == {"status": "sent", "recipient": "user@example.com"}
        assert (task.queue, task.priority, task.max_retries) == ("default", 0, 3)
    paid = task_manager.get_task(payment)
    assert paid is not None and paid.result == {"status": "completed", "order_id": "A-17"}
    assert (paid.queue, paid.priority) == ("high_priority", 10)
    out = capsys.readouterr().out
    assert f"Task queued: {task_id}" in out
    assert "Sending email to user@example.com: Welcome!" in out
    assert "Processing payment for order A-17: $12.5" in out
    assert {"to": "user@example.com", "subject": "Welcome!", "body": "Thanks for signing up!"} in (
        seed_tasks.email_service.sent
    )


# -- TaskManager --------------------------------------------------------------------------------


def test_task_manager_examples(seed_worker: Any, db: Any) -> None:
    from datetime import datetime, timedelta

    task_manager = TaskManager()
    now = db_now(db)

    # Queue a task
    by_name = task_manager.queue_task(
        task="myapp.tasks.send_email",
        queue="emails",
        priority=5,
        max_retries=3,
        to="user@example.com",
        subject="Hello",
    )
    # Queue with delay (in seconds)
    reminder = task_manager.queue_task(task="myapp.tasks.send_reminder", delay=3600, user_id=123)
    # Queue with timedelta delay
    report = task_manager.queue_task(
        task="myapp.tasks.generate_report", delay=timedelta(hours=24), report_type="monthly"
    )
    # Schedule for specific time
    newsletter = task_manager.queue_task(
        task="myapp.tasks.send_newsletter",
        schedule_at=datetime(2024, 1, 1, 9, 0, 0),
        campaign_id="new_year_2024",
    )
    seed_worker(["default", "emails"])
    wait_until(lambda: done(by_name, newsletter))

    sent = task_manager.get_task(by_name)
    assert sent is not None and sent.status == TaskStatus.COMPLETED
    assert (sent.queue, sent.priority, sent.max_retries) == ("emails", 5, 3)
    assert sent.result == {"status": "sent", "recipient": "user@example.com", "subject": "Hello"}
    past = task_manager.get_task(newsletter)
    assert past is not None and past.result == {"campaign": "new_year_2024"}
    assert past.run_at == datetime(2024, 1, 1, 9, tzinfo=UTC)  # naive means UTC
    for task_id, seconds in ((reminder, 3600), (report, 86400)):
        waiting = task_manager.get_task(task_id)
        assert waiting is not None and waiting.status == TaskStatus.PENDING
        assert abs((waiting.run_at - now).total_seconds() - seconds) < 5


# -- Queues and Priorities -------------------------------------------------------------------


def test_queues_and_priorities(seed_worker: Any, tm: TaskManager, db: Any) -> None:
    ids = [low_priority_task.delay(), normal_task.delay(), urgent_task.delay()]
    queued = {
        process_critical_alert.delay(alert_id="a1"): ("urgent", 10),
        process_order.delay(order_id="o1"): ("default", 5),
        cleanup_old_data.delay(days=30): ("maintenance", 1),
    }
    seed_worker(["default"], concurrency=1)
    wait_until(lambda: done(*ids))
    ran = [
        name.rsplit(".", 1)[1]
        for (name,) in db.execute(
            "SELECT name FROM pgqueue.tasks WHERE status = 'COMPLETED' ORDER BY started_at"
        )
    ]
    # Priority 10 first, then process_order (5) and normal_task (5) in queueing order, then 1.
    assert ran == ["urgent_task", "normal_task", "process_order", "low_priority_task"]
    seed_worker(["urgent", "maintenance"])
    wait_until(lambda: done(*queued))
    for task_id, (queue, priority) in queued.items():
        task = tm.get_task(task_id)
        assert task is not None and task.status == TaskStatus.COMPLETED
        assert (task.queue, task.priority) == (queue, priority)


# -- Worker Manager and the programmatic worker script -----------------------------------------

WORKER_MANAGER_EXAMPLE = """\
from pgqueue import WorkerManager
from pgqueue.brokers import get_broker

broker = get_broker()
worker = WorkerManager(broker)

# Configure worker
worker.set_queues(["default", "urgent", "emails"])
worker.set_polling_interval(5)  # Check every 5 seconds
worker.set_concurrent_tasks(10)  # Process 10 tasks concurrently

# Configure cleanup
worker.set_cleanup_config(
    interval_hours=1,  # Clean every hour
    retain_days=7      # Keep failed tasks for 7 days
)

# Start processing
import asyncio
asyncio.run(worker.start())
"""

PROGRAMMATIC_WORKER = """\
# worker.py
import asyncio
from pgqueue import WorkerManager
from pgqueue.brokers import get_broker

async def main():
    broker = get_broker()
    worker = WorkerManager(broker)

    # Configure
    worker.set_queues(["default", "urgent"])
    worker.set_concurrent_tasks(5)
    worker.set_polling_interval(5)

    # Start
    await worker.start()

if __name__ == "__main__":
    asyncio.run(main())
"""


def seed_env_vars(dsn: str) -> dict[str, str]:
    return {
        **os.environ,
        "PGQUEUE_DSN": dsn,
        "PGQUEUE_IMPORTS": "seed_tasks",
        "PYTHONPATH": worker_pythonpath(),
        "PYTHONUNBUFFERED": "1",
    }


@pytest.mark.parametrize(
    "script", [WORKER_MANAGER_EXAMPLE, PROGRAMMATIC_WORKER], ids=["worker_manager", "worker_py"]
)
def test_worker_scripts(
    dsn: str, tm: TaskManager, seed_env: None, tmp_path: Path, script: str
) -> None:
    (tmp_path / "worker.py").write_text(script)
    log = tmp_path / "worker.log"
    with open(log, "wb") as out:
        # Run the worker: python worker.py
        process = subprocess.Popen(
            [sys.executable, "worker.py"],
            cwd=tmp_path,
            env=seed_env_vars(dsn),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            alert = process_critical_alert.delay(alert_id="fire")
            email = send_email.delay(to="a@example.com", subject="s", body="b")
            wait_until(lambda: done(alert, email), timeout=20)
            process.send_signal(signal.SIGTERM)
            assert process.wait(20) == 0, log.read_text()
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    assert tm.get_task(email).result == {"status": "sent", "recipient": "a@example.com"}  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "args",
    [
        [],  # Start worker for default queue
        ["--queues", "default,urgent,emails"],  # Start worker for specific queues
        ["--concurrent", "20"],  # Configure concurrency
        ["--interval", "10"],  # Set polling interval
    ],
    ids=["start", "queues", "concurrent", "interval"],
)
def test_cli_commands(spawn_worker: Any, tm: TaskManager, seed_env: None, args: list[str]) -> None:
    worker = spawn_worker(*args, "--import", "seed_tasks")
    task_id = send_email.delay(to="cli@example.com", subject="s", body="b")
    wait_until(lambda: done(task_id))
    worker.signal(signal.SIGTERM)
    assert worker.wait() == 0
    assert tm.get_task(task_id).status == TaskStatus.COMPLETED  # type: ignore[union-attr]


# -- Task Status and Retry ---------------------------------------------------------------------


def test_statuses_and_retries(seed_worker: Any, tm: TaskManager) -> None:
    from pgqueue import TaskStatus

    # Available statuses:
    assert [s.value for s in TaskStatus][:5] == [
        "PENDING",  # Waiting to be processed
        "RUNNING",  # Currently executing
        "COMPLETED",  # Successfully finished
        "FAILED",  # Failed after retries
        "RETRYING",  # Failed, will retry
    ]
    seed_worker(["default"])
    flaky = flaky_task.delay()
    custom = task_with_custom_retry.delay()
    wait_until(lambda: done(flaky, custom))
    automatic = tm.get_task(flaky)
    assert automatic is not None and automatic.status == TaskStatus.COMPLETED
    assert (automatic.attempts, automatic.max_retries) == (2, 5)
    assert automatic.error is not None and "upstream API unavailable" in automatic.error
    assert automatic.result == {"api": "ok", "attempt": 2}
    manual = tm.get_task(custom)
    assert manual is not None and manual.status == TaskStatus.COMPLETED
    assert manual.attempts == 1 and manual.result == {"service": "ok", "calls": 2}


# -- Scheduled and Delayed Tasks ----------------------------------------------------------------


def test_delayed_scheduled_and_recurring(seed_worker: Any, tm: TaskManager, db: Any) -> None:
    from datetime import datetime

    task_manager = TaskManager()
    now = db_now(db)
    # Delay by seconds
    by_seconds = send_reminder.delay(delay=3600, user_id=123)
    # Delay by timedelta
    by_timedelta = task_manager.queue_task(
        task=send_reminder, delay=timedelta(hours=1, minutes=30), user_id=123
    )
    # Schedule for specific datetime
    scheduled_time = datetime(2024, 12, 25, 9, 0, 0)
    greeting = task_manager.queue_task(
        task="myapp.tasks.send_holiday_greeting",
        schedule_at=scheduled_time,
        campaign="holiday_2024",
    )
    report = daily_report.delay()
    seed_worker(["default"])
    wait_until(lambda: done(greeting, report))

    for task_id, seconds in ((by_seconds, 3600), (by_timedelta, 5400)):
        task = tm.get_task(task_id)
        assert task is not None and task.status == TaskStatus.PENDING
        assert abs((task.run_at - now).total_seconds() - seconds) < 5
    sent = tm.get_task(greeting)
    assert sent is not None and sent.result == {"campaign": "holiday_2024"}
    assert sent.run_at == datetime(2024, 12, 25, 9, tzinfo=UTC)
    # The recurring task queued its next run: tomorrow at 09:00 (naive datetimes are UTC).
    rows = db.execute(
        "SELECT run_at FROM pgqueue.tasks WHERE name = %s AND status = 'PENDING'",
        (daily_report.name,),
    ).fetchall()
    assert len(rows) == 1
    next_run = rows[0][0].astimezone(UTC)
    tomorrow = (datetime.now() + timedelta(days=1)).date()
    assert (next_run.date(), next_run.hour, next_run.minute) == (tomorrow, 9, 0)


# -- Event Integration -------------------------------------------------------------------------


class TaskMonitor:
    def on_task_start(self, payload):  # type: ignore[no-untyped-def]
        task = payload.get("task")
        print(f"Task {task.id} started: {task.name}")

    def on_task_complete(self, payload):  # type: ignore[no-untyped-def]
        task = payload.get("task")
        result = payload.get("result")
        print(f"Task {task.id} completed: {result}")

    def on_task_error(self, payload):  # type: ignore[no-untyped-def]
        task = payload.get("task")
        error = payload.get("error")
        print(f"Task {task.id} failed: {error}")

    def register_listeners(self, dispatcher):  # type: ignore[no-untyped-def]
        dispatcher.add_listener("worker.task.before_execution", self.on_task_start)
        dispatcher.add_listener("worker.task.after_execution", self.on_task_complete)
        dispatcher.add_listener("worker.task.execution_error", self.on_task_error)


def test_task_monitor(
    seed_worker: Any, tm: TaskManager, capsys: pytest.CaptureFixture[str]
) -> None:
    # Register monitor
    monitor = TaskMonitor()
    monitor.register_listeners(dispatcher)
    try:
        seed_worker(["emails"])
        ok = send_welcome_email.delay(user_id=1, email="new@example.com")
        bad = send_welcome_email.delay(user_id=2, email="gone@bounce.invalid", max_retries=0)
        wait_until(lambda: done(ok, bad))
    finally:
        dispatcher.remove_listener("worker.task.before_execution", monitor.on_task_start)
        dispatcher.remove_listener("worker.task.after_execution", monitor.on_task_complete)
        dispatcher.remove_listener("worker.task.execution_error", monitor.on_task_error)
    out = capsys.readouterr().out
    assert f"Task {ok} started: seed_tasks.send_welcome_email" in out
    assert f"Task {ok} completed: {{'status': 'sent', 'email': 'new@example.com'}}" in out
    assert f"Task {bad} started: seed_tasks.send_welcome_email" in out
    assert f"Task {bad} failed: mailbox gone@bounce.invalid does not exist" in out
    assert tm.get_task(bad).status == TaskStatus.FAILED  # type: ignore[union-attr]


# -- Broker Configuration ----------------------------------------------------------------------


def test_broker_configuration_files(
    dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    database = tmp_path / "database.yaml"
    database.write_text(
        textwrap.dedent("""\
            # config/services.yaml
            task:
              broker: database
              defaults:
                queue: default
                priority: 0
                max_retries: 3
            """)
    )
    monkeypatch.setenv("PGQUEUE_CONFIG", str(database))
    settings = load_settings(dsn=dsn)
    assert settings.broker == "database"
    manager = TaskManager(settings=settings)
    try:
        task = manager.get_task(manager.queue_task(task="myapp.tasks.send_reminder", user_id=1))
        assert task is not None
        assert (task.queue, task.priority, task.max_retries) == ("default", 0, 3)
    finally:
        manager.close()

    rabbit = tmp_path / "rabbitmq.yaml"
    rabbit.write_text(
        textwrap.dedent("""\
            # config/services.yaml
            task:
              broker: rabbitmq
              rabbitmq:
                host: localhost
                port: 5672
                username: guest
                password: guest
                vhost: /
            """)
    )
    monkeypatch.setenv("PGQUEUE_CONFIG", str(rabbit))
    settings = load_settings()
    assert settings.broker == "rabbitmq"
    assert settings.rabbitmq_connection_url() == "amqp://guest:guest@localhost:5672/%2F"


# -- Complete Example ----------------------------------------------------------------------------


def test_complete_example(seed_worker: Any, tm: TaskManager) -> None:
    import asyncio
    import dataclasses

    @dataclasses.dataclass
    class User:
        id: int
        email: str
        username: str

    def create_user(email: str, username: str) -> User:
        return User(id=42, email=email, username=username)

    # routes.py; FastAPI's @app.post("/register") only routes the request to this function.
    async def register(email: str, username: str):  # type: ignore[no-untyped-def]
        # Create user
        user = create_user(email, username)

        # Queue welcome email
        task_id = send_welcome_email.delay(user_id=user.id, email=user.email)

        return {"user_id": user.id, "email_task_id": task_id}

    seed_worker(["emails"])
    response = asyncio.run(register(email="ada@example.com", username="ada"))
    assert response["user_id"] == 42
    wait_until(lambda: done(response["email_task_id"]))
    task = tm.get_task(response["email_task_id"])
    assert task is not None and task.status == TaskStatus.COMPLETED
    assert task.result == {"status": "sent", "email": "ada@example.com"}
    assert task.kwargs == {"user_id": 42, "email": "ada@example.com"}
    assert {
        "to": "ada@example.com",
        "subject": "Welcome to Our App!",
        "body": "",
        "template": "welcome",
        "context": {"user_id": 42},
    } in seed_tasks.email_service.sent
