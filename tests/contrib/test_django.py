"""The Django tasks backend, in a real small Django project (tests/contrib/django_project)
on the real PostgreSQL: enqueue on Django's own connection (committed or rolled back with
the model writes), priorities, run_after and queues mapped, `manage.py pgqueue_worker` as
a subprocess running the tasks, get_result/aget_result, and both migrate commands."""

from __future__ import annotations

import asyncio
import datetime
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from support.database import with_dbname
from support.waiting import wait_until

pytest.importorskip("django")
try:
    import django.tasks  # noqa: F401
except ImportError:
    pytest.importorskip("django_tasks")

PROJECT = Path(__file__).resolve().parent / "django_project"
ROOT = PROJECT.parents[2]


def project_env(dsn: str) -> dict[str, str]:
    return {
        **os.environ,
        "PGQUEUE_TEST_DJANGO_DSN": dsn,
        "DJANGO_SETTINGS_MODULE": "project.settings",
        "PYTHONPATH": os.pathsep.join([str(PROJECT), str(ROOT)]),
        "PYTHONUNBUFFERED": "1",
    }


def manage(dsn: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=PROJECT,
        env=project_env(dsn),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def django_dsn(server_dsn: str, template_db: str) -> Iterator[str]:
    """One database (pgqueue migrated) for the module, and Django set up on it in-process."""
    name = f"pgqueue_django_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"')
    dsn = with_dbname(server_dsn, name)
    os.environ["PGQUEUE_TEST_DJANGO_DSN"] = dsn
    os.environ["DJANGO_SETTINGS_MODULE"] = "project.settings"
    sys.path.insert(0, str(PROJECT))
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0)
    yield dsn
    from django.db import connections

    from pgqueue.contrib.django.api import task_backends

    task_backends["default"].manager.close()
    connections.close_all()
    with psycopg.connect(server_dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def project_db(django_dsn: str) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit connection on the project's database, emptied for each test."""
    with psycopg.connect(django_dsn, autocommit=True) as conn:
        conn.execute("TRUNCATE pgqueue.tasks, shop_order")
        yield conn


@pytest.fixture(scope="module")
def django_worker(django_dsn: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """`manage.py pgqueue_worker` running for the module; yields its log file."""
    log_path = tmp_path_factory.mktemp("django") / "worker.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "manage.py",
                "pgqueue_worker",
                "--queues",
                "default,emails",
                "--interval",
                "0.5",
            ],
            cwd=PROJECT,
            env=project_env(django_dsn),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_until(lambda: "tasks registered" in log_path.read_text(), timeout=60)
            yield log_path
        finally:
            process.terminate()
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def rows(db: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    return db.execute(
        "SELECT name, queue, priority, kwargs, max_retries FROM pgqueue.tasks ORDER BY name"
    ).fetchall()


def test_enqueue_commits_with_the_models_write(project_db: psycopg.Connection[Any]) -> None:
    from django.db import transaction
    from shop.models import Order
    from shop.tasks import send_receipt

    with transaction.atomic():
        order = Order.objects.create(total=12)
        result = send_receipt.enqueue(order.id)
        assert rows(project_db) == [], "uncommitted: invisible to workers"
    assert rows(project_db) == [
        ("shop.tasks.send_receipt", "emails", 10, {"args": [order.id], "kwargs": {}}, 0)
    ]
    assert result.status == "READY" and uuid.UUID(result.id)
    assert send_receipt.get_result(result.id).status == "READY"


def test_enqueue_rolls_back_with_the_atomic_block(project_db: psycopg.Connection[Any]) -> None:
    from django.db import transaction
    from shop.models import Order
    from shop.tasks import send_receipt

    with pytest.raises(RuntimeError), transaction.atomic():
        order = Order.objects.create(total=12)
        send_receipt.enqueue(order.id)
        raise RuntimeError("the view failed")
    assert rows(project_db) == []
    assert project_db.execute("SELECT count(*) FROM shop_order").fetchone() == (0,)


def test_priority_run_after_and_queue_map_onto_pgqueue(
    project_db: psycopg.Connection[Any],
) -> None:
    from shop.tasks import add

    later = datetime.datetime(2031, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
    add.using(priority=-100, run_after=later, queue_name="emails").enqueue(1, b=2)
    assert project_db.execute(
        "SELECT queue, priority, run_at, kwargs FROM pgqueue.tasks"
    ).fetchall() == [("emails", -100, later, {"args": [1], "kwargs": {"b": 2}})]


def test_the_worker_command_runs_tasks_and_results_come_back(
    project_db: psycopg.Connection[Any], django_worker: Path
) -> None:
    from shop.models import Order
    from shop.tasks import add, async_double, explode, send_receipt, which_attempt

    order = Order.objects.create(total=7)
    results = {
        "receipt": send_receipt.enqueue(order.id),
        "add": add.enqueue(2, b=3),
        "async": async_double.enqueue(21),
        "context": which_attempt.enqueue(label="x"),
        "explode": explode.enqueue(),
    }

    def finished() -> dict[str, Any] | None:
        for result in results.values():
            result.refresh()
        return results if all(r.is_finished for r in results.values()) else None

    wait_until(finished, timeout=60)
    assert results["receipt"].return_value == f"receipt for order {order.id}: 7"
    assert results["add"].return_value == 5
    assert results["async"].return_value == 42
    assert results["context"].return_value == {
        "label": "x",
        "attempt": 1,
        "id": results["context"].id,
    }
    failed = results["explode"]
    assert failed.status == "FAILED" and failed.attempts == 1  # MAX_RETRIES 0: no retry
    (error,) = failed.errors
    assert error.exception_class is ValueError
    assert "the shop is closed" in error.traceback
    done = send_receipt.get_result(results["receipt"].id)
    assert done.status == "SUCCESSFUL" and done.finished_at is not None
    assert done.args == [order.id] and done.kwargs == {}

    async def read() -> Any:
        return await add.aget_result(results["add"].id)

    assert asyncio.run(read()).return_value == 5


def test_an_unknown_result_id_does_not_exist(project_db: psycopg.Connection[Any]) -> None:
    from shop.tasks import add

    from pgqueue.contrib.django.api import ResultDoesNotExist

    for result_id in (str(uuid.uuid4()), "not-a-task-id"):
        with pytest.raises(ResultDoesNotExist):
            add.get_result(result_id)


def test_manage_py_migrate_and_pgqueue_migrate_both_succeed(empty_dsn: str) -> None:
    migrated = manage(empty_dsn, "migrate", "--verbosity", "0")
    assert migrated.returncode == 0, migrated.stderr
    with psycopg.connect(empty_dsn) as conn:
        tables = conn.execute(
            "SELECT to_regclass('pgqueue.tasks') IS NOT NULL, to_regclass('shop_order') IS NOT NULL"
        ).fetchone()
    assert tables == (True, True)
    pgqueue = subprocess.run(
        [sys.executable, "-m", "pgqueue.cli", "migrate"],
        env={**os.environ, "PGQUEUE_DSN": empty_dsn},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert pgqueue.returncode == 0, pgqueue.stderr
    again = manage(empty_dsn, "migrate", "--verbosity", "0")
    assert again.returncode == 0, again.stderr


def test_the_worker_command_refuses_a_backend_that_is_not_pgqueue(django_dsn: str) -> None:
    refused = manage(django_dsn, "pgqueue_worker", "--backend", "missing")
    assert refused.returncode != 0
    assert "no task backend 'missing' in TASKS" in refused.stderr
    assert "Traceback" not in refused.stderr
