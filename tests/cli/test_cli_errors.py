"""Mistakes a new user makes, each refused or warned of in one line that says what would have
been right: a broken task module, a missing extra, a misspelt queue or task name, a worker
started with only some of the task modules."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner, Result
from support.paths import ROOT, worker_pythonpath
from support.waiting import wait_until

from pgqueue import TaskManager, TaskStatus
from pgqueue.brokers import get_broker
from pgqueue.cli import main
from pgqueue.errors import ConfigurationError
from pgqueue.settings import get_settings, load_settings
from pgqueue.version import DISTRIBUTION


def pgqueue(
    *args: str, cwd: Path, dsn: str, prelude: str = "", **env: str
) -> subprocess.CompletedProcess[str]:
    """`pgqueue *args` in a subprocess run from `cwd` (the user's project folder)."""
    code = f"{prelude}\nfrom pgqueue.cli import main\nmain(prog_name='pgqueue')"
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        env={**os.environ, "PGQUEUE_DSN": dsn, "PYTHONPATH": worker_pythonpath(), **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.fixture
def cli(dsn: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    monkeypatch.setenv("PGQUEUE_DSN", dsn)
    monkeypatch.syspath_prepend(str(ROOT / "tests" / "tasks"))
    get_settings.cache_clear()

    def run(*args: str) -> Result:
        return CliRunner().invoke(main, list(args))

    yield run
    get_settings.cache_clear()


# -- task modules ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        (
            "from pgqueue import AsyncTask\n\ndef f(:\n    pass\n",
            "cannot import task module 'project.tasks': SyntaxError at project/tasks.py:3: "
            "invalid syntax",
        ),
        (
            "import os\nimport no_such_dependency_x\n",
            "cannot import task module 'project.tasks': ModuleNotFoundError at "
            "project/tasks.py:2: No module named 'no_such_dependency_x'",
        ),
        (
            "SETTING = {}\nSETTING['key']\n",
            "cannot import task module 'project.tasks': KeyError at project/tasks.py:2: 'key'",
        ),
    ],
)
def test_a_broken_task_module_is_one_line_with_file_and_line(
    tmp_path: Path, dsn: str, source: str, expected: str
) -> None:
    (tmp_path / "project").mkdir()
    (tmp_path / "project" / "__init__.py").write_text("")
    (tmp_path / "project" / "tasks.py").write_text(source)
    worker = one_line(pgqueue("worker", "--import", "project.tasks", cwd=tmp_path, dsn=dsn))
    assert worker == f"Error: {expected}"
    enqueue = one_line(pgqueue("enqueue", "project.tasks.f", cwd=tmp_path, dsn=dsn))
    assert enqueue == (
        f"Error: cannot check task 'project.tasks.f': {expected}; to queue it for workers that "
        "know it, add --unchecked"
    )


def test_a_module_that_is_not_there_says_where_it_was_looked_for(tmp_path: Path, dsn: str) -> None:
    line = one_line(pgqueue("worker", "--import", "absent_app.tasks", cwd=tmp_path, dsn=dsn))
    assert line.startswith(
        "Error: cannot import task module 'absent_app.tasks': no module named 'absent_app' (the "
        "command's folder and PYTHONPATH are searched"
    )


def test_the_rabbitmq_broker_without_its_extra_names_the_install_line(
    tmp_path: Path, dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    hide = "import sys\nsys.modules['aio_pika'] = None  # not installed"
    result = pgqueue(
        "worker", "--import", "worker_tasks", cwd=tmp_path, dsn=dsn, prelude=hide,
        PGQUEUE_BROKER="rabbitmq",
    )  # fmt: skip
    assert one_line(result) == (
        "Error: the RabbitMQ broker (PGQUEUE_BROKER=rabbitmq) needs the aio_pika package, "
        f"which is not installed: pip install '{DISTRIBUTION}[rabbitmq]'"
    )
    # Producers (.delay(), TaskManager) get the same error from get_broker.
    for name in [name for name in sys.modules if name.partition(".")[0] == "aio_pika"]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "aio_pika", None)
    monkeypatch.delitem(sys.modules, "pgqueue.brokers.rabbitmq.broker", raising=False)
    with pytest.raises(ConfigurationError, match=rf"pip install '{DISTRIBUTION}\[rabbitmq\]'"):
        get_broker(load_settings(dsn=dsn, broker="rabbitmq"))


# -- a worker with some of the task modules --------------------------------------------


def test_a_worker_gives_back_the_tasks_of_modules_it_did_not_import(
    spawn_worker: Any, tm: TaskManager, db: psycopg.Connection[Any]
) -> None:
    other = tm.queue_task("sample_tasks.echo", value=1)  # defined in a module not imported
    mine = tm.queue_task("worker_tasks.record", label="mine")
    spawn_worker("--import", "worker_tasks", "--interval", "0.2")
    wait_until(lambda: tm.get_task(mine).status is TaskStatus.COMPLETED)  # type: ignore[union-attr]
    wait_until(lambda: tm.get_task(other).error is not None)  # type: ignore[union-attr]
    given_back = tm.get_task(other)
    assert given_back is not None
    assert (given_back.status, given_back.attempts) == (TaskStatus.PENDING, 0)
    assert "has no task named 'sample_tasks.echo' registered; given back" in (
        given_back.error or ""
    )


# -- queue names -----------------------------------------------------------------------


def test_pausing_a_queue_never_seen_is_refused_with_the_known_ones(
    cli: Any, tm: TaskManager, db: psycopg.Connection[Any]
) -> None:
    tm.queue_task("app.send", queue="emails")
    tm.queue_task("app.report", queue="reports")
    refused = cli("queue", "pause", "emals")
    assert refused.exit_code == 1
    assert refused.output.strip() == (
        "Error: queue 'emals' is unknown (no task, worker or cron task uses it): did you mean "
        "'emails'? known queues: emails, reports; pause it ahead of time with --force"
    )
    assert db.execute("SELECT count(*) FROM pgqueue.paused_queues").fetchone() == (0,)

    assert cli("queue", "pause", "emails").exit_code == 0
    forced = cli("queue", "pause", "tomorrow", "--force")
    assert forced.exit_code == 0, forced.output
    paused = db.execute("SELECT queue FROM pgqueue.paused_queues ORDER BY queue").fetchall()
    assert paused == [("emails",), ("tomorrow",)]
    # Paused once, a queue is known: pausing it again needs no --force.
    assert "already paused" in cli("queue", "pause", "tomorrow").output


# -- task names ------------------------------------------------------------------------


def test_enqueue_refuses_a_misspelt_task_name(
    cli: Any, tm: TaskManager, db: psycopg.Connection[Any]
) -> None:
    refused = cli("enqueue", "worker_tasks.recrod", "--kwargs", '{"label": "x"}')
    assert refused.exit_code == 1
    assert refused.output.strip() == (
        "Error: no task 'worker_tasks.recrod' is registered in worker_tasks: did you mean "
        "'worker_tasks.record'?; to queue it for workers that know it, add --unchecked"
    )
    missing = cli("enqueue", "nosuch_module_x.task")
    assert missing.exit_code == 1
    assert "cannot import task module 'nosuch_module_x'" in missing.output
    assert "--import" in missing.output and "--unchecked" in missing.output
    assert db.execute("SELECT count(*) FROM pgqueue.tasks").fetchone() == (0,)


def test_enqueue_imports_the_module_of_the_name_or_queues_unchecked(
    cli: Any, db: psycopg.Connection[Any]
) -> None:
    # Its module imported without --import: the declared queue applies, arguments checked.
    checked = cli("enqueue", "sample_tasks.echo", "--kwargs", '{"value": 1}', "--json")
    assert checked.exit_code == 0, checked.output
    bad_arguments = cli("enqueue", "sample_tasks.echo", "--kwargs", '{"valeu": 1}')
    assert bad_arguments.exit_code == 1
    unchecked = cli("enqueue", "elsewhere.only_workers_know", "--unchecked", "--json")
    assert unchecked.exit_code == 0, unchecked.output
    rows = db.execute("SELECT name, queue FROM pgqueue.tasks ORDER BY name").fetchall()
    assert rows == [("elsewhere.only_workers_know", "default"), ("sample_tasks.echo", "default")]
    assert json.loads(unchecked.output)["name"] == "elsewhere.only_workers_know"
