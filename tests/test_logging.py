"""Logger names: each module of pgqueue logs under a name of its own below `pgqueue.`, so a
log line says which part of the queue wrote it and each part's level can be set alone."""

from __future__ import annotations

import ast
import logging
from typing import Any

import pytest
import worker_tasks
from support.paths import ROOT
from support.waiting import wait_until

from pgqueue import TaskManager


def pgqueue_logger_names() -> dict[str, set[str]]:
    """{logger name: the pgqueue files that get it} of each getLogger("pgqueue...") call."""
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / "pgqueue").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "getLogger"
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and str(node.args[0].value).startswith("pgqueue")
            ):
                found.setdefault(node.args[0].value, set()).add(str(path.relative_to(ROOT)))
    return found


def test_each_module_logs_under_a_name_of_its_own() -> None:
    names = pgqueue_logger_names()
    assert "pgqueue.executor" in names and "pgqueue.completer" in names
    assert "pgqueue" not in names, "a module logs under the package's own name"
    shared = {name: sorted(files) for name, files in names.items() if len(files) > 1}
    assert not shared, f"modules sharing a logger name: {shared}"


def test_a_run_is_logged_by_the_worker_and_the_executor(
    tm: TaskManager, start_worker: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="pgqueue")
    worker = start_worker()
    task_id = worker_tasks.record.delay(label="logged")
    wait_until(lambda: f"task {task_id} worker_tasks.record completed" in caplog.text)
    worker.stop()
    by_logger = {r.name for r in caplog.records if str(task_id) in r.getMessage()}
    assert by_logger == {"pgqueue.executor"}
    assert any(
        r.name == "pgqueue.worker" and " started: queues=" in r.getMessage() for r in caplog.records
    )
