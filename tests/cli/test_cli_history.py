"""`pgqueue tasks show ID` prints a task's history within 80 columns; `pgqueue history
[on|off]` says and switches whether it is kept."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import operations_tasks
import pytest
from click.testing import CliRunner, Result
from support.waiting import wait_until

from pgqueue.cli import main
from pgqueue.settings import get_settings
from pgqueue.task_manager import TaskManager

Run = Callable[..., Result]


@pytest.fixture
def cli(dsn: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Run]:
    """cli(*args) -> the Result of `pgqueue *args` on the test database, 80 columns wide."""
    monkeypatch.setenv("PGQUEUE_DSN", dsn)
    monkeypatch.setenv("COLUMNS", "80")
    get_settings.cache_clear()

    def run(*args: str, code: int = 0) -> Result:
        result = CliRunner().invoke(main, list(args))
        assert result.exit_code == code, result.output
        return result

    yield run
    get_settings.cache_clear()


def test_tasks_show_prints_each_attempt_in_the_timeline(
    cli: Run, tm: TaskManager, start_worker: Any
) -> None:
    task_id = str(tm.queue_task(operations_tasks.flaky, message="kaput " * 30))
    start_worker(queues=["ops"])
    wait_until(lambda: (task := tm.get_task(task_id)) and task.status.value == "FAILED")

    shown = cli("tasks", "show", task_id).stdout
    timeline = shown[shown.index("History") :].splitlines()
    assert max(len(line) for line in shown.splitlines()) <= 80
    lines = [line.split() for line in timeline if "#" in line]
    assert [(line[1], line[2]) for line in lines] == [
        ("enqueued", "#0"),
        ("started", "#1"),
        ("failed", "#1"),
        ("retry_scheduled", "#1"),
        ("started", "#2"),
        ("failed", "#2"),
    ]
    assert lines[2][3:5] == ["RuntimeError:", "kaput"]  # that attempt's error, cut to fit

    as_json = json.loads(cli("tasks", "show", task_id, "--json").stdout)
    assert [e["event"] for e in as_json["history"]][-2:] == ["started", "failed"]
    assert as_json["history"][1]["worker_id"] == as_json["worker_id"]


def test_history_off_and_on_and_what_show_says_meanwhile(cli: Run, tm: TaskManager) -> None:
    assert cli("history").stdout == "history is on\n"
    assert cli("history", "off").stdout == "history is off\n"
    assert cli("history", "off").stdout == "history is off (it was already)\n"
    assert json.loads(cli("history", "--json").stdout) == {"history": False}
    task_id = str(tm.queue_task(operations_tasks.explode))
    assert (
        "no events: history is off (`pgqueue history on`)" in cli("tasks", "show", task_id).stdout
    )
    assert cli("history", "on").stdout == "history is on\n"
    assert tm.history(task_id) == []  # nothing is made up afterwards
