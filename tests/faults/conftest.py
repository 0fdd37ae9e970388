"""Fixtures of the fault-injection suite: the effects/executions tables, a pool of real
worker processes, a cuttable TCP proxy, and a guard that leaves PostgreSQL running.

The helpers they use live in tests/support (faults.py, proxy.py, cluster.py).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from support.cluster import ensure_server_running
from support.faults import TABLES, WorkerPool
from support.pgbouncer import PgBouncer, pgbouncer_executable
from support.proxy import Proxy
from support.workers import WorkerProcess

from pgqueue.task_manager import TaskManager


@pytest.fixture
def fault_db(db: psycopg.Connection[Any]) -> psycopg.Connection[Any]:
    """The test database with the effects and executions tables."""
    db.execute(TABLES)
    return db


@pytest.fixture
def pool(spawn_worker: Callable[..., WorkerProcess], dsn: str) -> Iterator[WorkerPool]:
    workers = WorkerPool(spawn_worker, dsn)
    yield workers
    workers.stop_supervising()  # spawn_worker's teardown kills every process


@pytest.fixture
def proxy(local_cluster: str) -> Iterator[Proxy]:
    tcp = Proxy("127.0.0.1", 5432).start()
    yield tcp
    tcp.close()


@pytest.fixture
def pgbouncer(server_dsn: str) -> Iterator[PgBouncer]:
    """A PgBouncer in transaction pooling mode in front of the test server (.ci/run
    installs Debian's package where it is missing)."""
    if pgbouncer_executable() is None:
        message = "pgbouncer is not installed (apt-get install pgbouncer)"
        if os.environ.get("CI"):
            pytest.fail(message)  # .ci/run installs it: a skip there would hide the tests
        pytest.skip(message)
    bouncer = PgBouncer(server_dsn).start()
    yield bouncer
    bouncer.stop()


@pytest.fixture
def server_guard(local_cluster: str) -> Iterator[None]:
    """Whatever happens in the test, PostgreSQL is running when it ends."""
    try:
        yield
    finally:
        ensure_server_running()


@pytest.fixture
def faults_tm(dsn: str) -> Iterator[TaskManager]:
    manager = TaskManager(dsn=dsn)
    yield manager
    manager.close()
