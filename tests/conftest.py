"""Shared fixtures: a real PostgreSQL found anywhere, a fresh database per test, workers.

The suite mirrors the package where a module has tests of its own (worker/, brokers/, db/,
ops/, cli/); behaviours that cross the layers (cancel, cron, outcomes, ...) and the ground
floor's modules are tested at the top; faults/ injects crashes and cuts into real worker
processes. The helpers behind these fixtures, and those tests import, are in support/;
tasks/ holds the task modules that workers import (`pgqueue worker --import ...`).
"""

from __future__ import annotations

import contextlib
import os
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from support.database import LOCAL_DSN, find_server, with_dbname
from support.paths import TASK_MODULES, worker_pythonpath
from support.producer import default_task_manager
from support.rabbitmq import delete_rabbitmq_names, find_rabbitmq
from support.workers import InProcessWorker, WorkerProcess

from pgqueue.db import migrations
from pgqueue.settings import Settings, load_settings
from pgqueue.task_manager import TaskManager
from pgqueue.worker import WorkerManager

# The task modules of tests/tasks import under the same names in-process as in
# `pgqueue worker --import` subprocesses (whose PYTHONPATH holds that folder).
if str(TASK_MODULES) not in sys.path:
    sys.path.insert(0, str(TASK_MODULES))


@pytest.fixture(scope="session")
def server_dsn() -> Iterator[str]:
    """A DSN of a maintenance database on the test server (CREATE DATABASE rights)."""
    with find_server() as dsn:
        yield dsn


@pytest.fixture(scope="session")
def local_cluster(server_dsn: str) -> str:
    """The test server is this machine's cluster on 127.0.0.1:5432, which tests may cut
    (TCP proxy) and restart (pg_ctlcluster); the embedded or a named server cannot be."""
    if server_dsn != LOCAL_DSN:
        pytest.skip("needs the local PostgreSQL cluster on 127.0.0.1:5432 to cut or restart")
    return server_dsn


@pytest.fixture(scope="session")
def template_db(server_dsn: str) -> Iterator[str]:
    """A database migrated once; each test clones it (CREATE DATABASE ... TEMPLATE)."""
    name = f"pgqueue_template_{os.getpid()}"
    with psycopg.connect(server_dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    migrations.upgrade(with_dbname(server_dsn, name))
    yield name
    with psycopg.connect(server_dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def dsn(server_dsn: str, template_db: str) -> Iterator[str]:
    """A fresh, migrated database of its own for this test; dropped afterwards."""
    name = f"pgqueue_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"')
    yield with_dbname(server_dsn, name)
    with psycopg.connect(server_dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def empty_dsn(server_dsn: str) -> Iterator[str]:
    """A fresh database without the pgqueue schema (for migration tests); dropped afterwards."""
    name = f"pgqueue_empty_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield with_dbname(server_dsn, name)
    with psycopg.connect(server_dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def settings(dsn: str) -> Settings:
    return load_settings(dsn=dsn, lease_seconds=30)


@pytest.fixture
def tm(settings: Settings) -> Iterator[TaskManager]:
    """A TaskManager on the test database, also the one .delay() uses."""
    with default_task_manager(settings) as manager:
        yield manager


@pytest.fixture(scope="session")
def rabbitmq_url() -> str:
    """PGQUEUE_TEST_RABBITMQ_URL, else guest@127.0.0.1:5672; skipped if down (failed on CI)."""
    return find_rabbitmq()


@pytest.fixture
def rabbitmq_settings(settings: Settings, rabbitmq_url: str, dsn: str) -> Iterator[Settings]:
    """Settings of the RabbitMQ broker, under a prefix of this test's own; its queues,
    delay chain and exchanges are deleted afterwards."""
    prefix = f"pgqt-{uuid.uuid4().hex[:10]}"
    chosen = load_settings(
        **{
            **settings.to_dict(),
            "broker": "rabbitmq",
            "rabbitmq_url": rabbitmq_url,
            "rabbitmq_prefix": prefix,
        }
    )
    yield chosen
    used = {"default"}
    with contextlib.suppress(psycopg.Error), psycopg.connect(dsn, autocommit=True) as conn:
        used |= {row[0] for row in conn.execute("SELECT DISTINCT queue FROM pgqueue.tasks")}
    delete_rabbitmq_names(rabbitmq_url, prefix, used)


@pytest.fixture
def db(dsn: str) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit connection for assertions on the tables."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        yield conn


@pytest.fixture
def start_worker(settings: Settings) -> Iterator[Callable[..., InProcessWorker]]:
    """start_worker(queues=[...], concurrency=N, polling_interval=S) -> a running worker."""
    workers: list[InProcessWorker] = []

    def start(
        queues: list[str] | None = None,
        concurrency: int = 4,
        polling_interval: float = 30.0,
        worker_settings: Settings | None = None,
        **setting_overrides: Any,
    ) -> InProcessWorker:
        chosen = worker_settings or (
            load_settings(**{**settings.to_dict(), **setting_overrides})
            if setting_overrides
            else settings
        )
        manager = WorkerManager(settings=chosen)
        manager.set_queues(queues or ["default"])
        manager.set_concurrent_tasks(concurrency)
        manager.set_polling_interval(polling_interval)
        worker = InProcessWorker(manager).start()
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        if worker.running:
            worker.stop()


@pytest.fixture
def spawn_worker(dsn: str, tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """spawn_worker(*cli_args, env={...}) -> a `pgqueue worker` subprocess on the test database.

    Task modules are imported from tests/tasks (on PYTHONPATH) with --import.
    """
    processes: list[WorkerProcess] = []

    def spawn(*args: str, env: dict[str, str] | None = None) -> WorkerProcess:
        environment = {
            **os.environ,
            "PGQUEUE_DSN": dsn,
            "PYTHONPATH": worker_pythonpath(),
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        log_path = tmp_path / f"worker-{len(processes)}.log"
        worker = WorkerProcess(list(args), environment, tmp_path, log_path)
        processes.append(worker)
        return worker

    yield spawn
    for worker in processes:
        worker.kill()
