"""The CLI in an 80-column terminal, and its one exit-status convention.

Tables fit 80 columns with ids, names and statuses whole (checked through click's runner
and through a real `pgqueue` process); the short ids they show are taken back by every
command that takes an id; every error path ends with the documented status (2: called
wrong, 1: pgqueue could not do it) and one line."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import worker_tasks
from click.testing import CliRunner, Result
from support.paths import ROOT
from support.waiting import wait_until

from pgqueue import TaskManager
from pgqueue.cli import main
from pgqueue.settings import get_settings

Run = Callable[..., Result]
WIDTH = 80
NAMES = ("myapp.tasks.send_welcome_email", "myapp.billing.charge_card")
ERROR = "ConnectionError: the SMTP server at smtp.example.com:587 refused the connection"


@pytest.fixture
def cli(dsn: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Run]:
    """cli(*args) -> the Result of `pgqueue *args` on the test database, 80 columns wide."""
    monkeypatch.setenv("PGQUEUE_DSN", dsn)
    get_settings.cache_clear()
    runner = CliRunner(env={"COLUMNS": str(WIDTH)})

    def run(*args: str) -> Result:
        result = runner.invoke(main, list(args), prog_name="pgqueue")
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception
        return result

    yield run
    get_settings.cache_clear()


@pytest.fixture
def crowd(tm: TaskManager, db: psycopg.Connection[Any]) -> None:
    """10,001 retrying emails, due now, with a long error; 3 failed charges; 1 for later."""
    tm.queue_tasks(NAMES[0], [{"n": n} for n in range(10_001)], queue="emails")
    db.execute(
        "UPDATE pgqueue.tasks SET status = 'RETRYING', attempts = 1, error = %s,"
        " run_at = now() - interval '1 minute'",
        [ERROR + "\n\nTraceback (most recent call last): ..."],
    )
    for n in range(3):
        tm.queue_task(NAMES[1], queue="billing", order=n)
    db.execute(
        "UPDATE pgqueue.tasks SET status = 'FAILED', attempts = 4, finished_at = now(),"
        " error = 'ValueError: card declined' WHERE queue = 'billing'"
    )
    tm.queue_task(NAMES[1], queue="billing", delay=3600, order=99)


def assert_fits(text: str) -> list[str]:
    lines = text.splitlines()
    assert lines, "no output"
    too_wide = [line for line in lines if len(line) > WIDTH]
    assert not too_wide, "\n".join(too_wide)
    return lines


def rows_of(lines: list[str]) -> list[list[str]]:
    """The rows of the tables in `lines`: what follows each header rule."""
    rows, inside = [], False
    for line in lines:
        if set(line.strip()) == {"─"}:
            inside = True
        elif not line.strip() or (not line.startswith(" ") and line.endswith(":")):
            inside = False
        elif inside:
            rows.append(line.split())
    return rows


def test_tasks_list_fits_80_columns_with_ids_names_and_statuses_whole(
    cli: Run, crowd: None, db: psycopg.Connection[Any]
) -> None:
    newest = [row[0] for row in db.execute("SELECT id FROM pgqueue.tasks ORDER BY id DESC")]
    lines = assert_fits(cli("tasks", "list").stdout)
    assert lines[0] == "50 of 10,005 tasks, newest first"
    assert lines[1] == "Names are in myapp."  # the module every listed name shares, once
    # No room left for the errors at 80 columns: that column alone is left out.
    assert lines[2].split() == ["ID", "Name", "Queue", "Status", "Tries", "When"]
    rows = rows_of(lines)
    assert len(rows) == 50
    for row, task_id in zip(rows, newest, strict=False):
        assert row[0] == task_id.hex[-8:]  # the short id: the last 8 hex digits, whole
        assert f"myapp.{row[1]}" in NAMES and row[2] in ("emails", "billing")
        assert row[3] in ("PENDING", "FAILED", "RETRYING")
        assert row[-1].endswith("Z")  # times in UTC, said so (a date before them if not today)
    assert [row[3] for row in rows[:4]] == ["PENDING", "FAILED", "FAILED", "FAILED"]
    assert not any("…" in " ".join(row[:6]) for row in rows)  # only an error may be cut

    # Filtered: the columns the filter fixes are said once, in the title.
    failed = assert_fits(cli("tasks", "list", "--status", "failed", "--queue", "billing").stdout)
    assert failed[0] == "3 of 3 FAILED tasks in queue 'billing', newest first"
    assert failed[1] == "Names are in myapp.billing."
    assert failed[2].split() == ["ID", "Name", "Tries", "When", "Error"]
    assert [row[1:3] + row[4:] for row in rows_of(failed)] == [
        ["charge_card", "4/4", "ValueError:", "card", "declined"]
    ] * 3
    emails = assert_fits(cli("tasks", "list", "--queue", "emails", "--limit", "5").stdout)
    assert emails[0] == "5 of 10,001 tasks in queue 'emails', newest first"


def test_long_names_of_one_module_fit_whole(cli: Run, tm: TaskManager) -> None:
    """The demo's names (43 characters) used to wrap onto a second line at 80 columns."""
    names = [
        "pgqueue.contrib.demo.generate_broken_report",
        "pgqueue.contrib.demo.charge_with_flaky_gateway",
    ]
    for name in names:
        tm.queue_task(name, queue="reports")
    lines = assert_fits(cli("tasks", "list").stdout)
    assert lines[1] == "Names are in pgqueue.contrib.demo."
    assert [row[1] for row in rows_of(lines)] == [
        "charge_with_flaky_gateway",
        "generate_broken_report",
    ]


def test_status_fits_80_columns_and_counts_each_task_once(cli: Run, crowd: None) -> None:
    lines = assert_fits(cli("status").stdout)
    assert lines[0].startswith("pgqueue at ") and lines[0].split()[2].endswith("Z:")
    assert "2 queues, 0 live workers" in lines[0]
    by_status, by_time = lines[: lines.index("")], lines[lines.index("") :]
    assert by_status[1].split() == [
        "Queue", "Pending", "Running", "Retrying", "Waiting", "Failed", "Completed", "Cancelled"
    ]  # fmt: skip
    assert rows_of(by_status) == [
        ["billing", "1", "0", "0", "0", "3", "0", "0"],
        ["emails", "0", "0", "10,001", "0", "0", "0", "0"],
    ]
    # The pending and retrying tasks again, by when they run: a second table, said so.
    assert by_time[1].startswith("Pending and retrying tasks by when they run")
    assert by_time[2].split() == ["Queue", "Due", "now", "Later", "Oldest", "due", "Done/min",
                                  "Failed/min"]  # fmt: skip
    billing, emails = rows_of(by_time)
    assert billing[:3] == ["billing", "0", "1"] and emails[:3] == ["emails", "10,001", "0"]


def test_workers_and_cron_fit_80_columns(cli: Run, start_worker: Any) -> None:
    assert worker_tasks.record  # a worker needs a task registered
    assert assert_fits(cli("cron", "list").stdout) == [
        "no cron schedule yet: a worker records its cron tasks when it starts"
    ]
    worker = start_worker(queues=["emails", "billing", "reports"], concurrency=20)
    listed = wait_until(lambda: (out := cli("workers").stdout).startswith("1 ") and out)
    lines = assert_fits(listed)
    worker.stop()
    assert lines[0] == "1 live worker"
    assert lines[1].split() == ["ID", "Queues", "Running", "Version", "Up", "Heartbeat"]
    [row] = rows_of(lines)
    assert row[:3] == [worker.manager.worker_id, "emails,billing,reports", "0/20"]


def test_short_ids_are_taken_back_by_every_command_that_takes_an_id(
    cli: Run, db: psycopg.Connection[Any]
) -> None:
    ids = [
        uuid.UUID("01900000-0000-7000-8000-00001234abcd"),  # two ends alike: shown longer
        uuid.UUID("01900000-0000-7000-8000-00011234abcd"),
        uuid.UUID("01900000-0000-7000-8000-0000deadbeef"),
    ]
    for task_id in ids:
        db.execute("INSERT INTO pgqueue.tasks (id, name) VALUES (%s, 'app.x')", [task_id])
    shown = [row[0] for row in rows_of(cli("tasks", "list").stdout.splitlines())]
    assert shown == ["011234abcd", "00deadbeef", "001234abcd"]  # newest first

    page = cli("tasks", "show", "deadbeef")
    assert page.exit_code == 0 and str(ids[2]) in page.stdout
    assert f"task {ids[2]} app.x (PENDING" in cli("tasks", "explain", "deadbeef").stdout
    assert cli("tasks", "cancel", "011234abcd").stdout.strip() == f"cancelled {ids[1]}"
    assert cli("tasks", "retry", "011234abcd").stdout.strip() == f"retried {ids[1]}"
    ambiguous = cli("tasks", "cancel", "deadbeef", "1234abcd")
    assert ambiguous.exit_code == 1
    assert ambiguous.stderr.strip() == (
        f"Error: more than one task id ends with 1234abcd ({ids[0]}, {ids[1]}); "
        "give more digits or the whole id"
    )
    # All ids are found before any task is touched: the first one was not cancelled.
    untouched = db.execute("SELECT status::text FROM pgqueue.tasks WHERE id = %s", [ids[2]])
    assert untouched.fetchone() == ("PENDING",)


def test_a_real_terminal_process_of_80_columns(dsn: str, crowd: None) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PGQUEUE_")}
    env.update({"PGQUEUE_DSN": dsn, "PYTHONPATH": str(ROOT), "COLUMNS": str(WIDTH)})
    for args in (["status"], ["tasks", "list"], ["tasks", "list", "--status", "retrying"]):
        done = subprocess.run(
            [sys.executable, "-m", "pgqueue", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        lines = assert_fits(done.stdout)
        assert "…" not in "\n".join(line[:60] for line in lines), done.stdout
    assert "50 of 10,001 RETRYING tasks, newest first" in lines[0]
    assert lines[1] == "Names are in myapp.tasks."
    assert all(row[1] == "send_welcome_email" for row in rows_of(lines))


# -- exit statuses -------------------------------------------------------------------------

NOT_AN_ID = "00000000-0000-0000-0000-000000000000"


@pytest.mark.parametrize(
    ("args", "code", "words"),
    [
        # 2: called wrong (click's usage errors and bad values), one line, where the help is.
        (["stauts"], 2, "No such command 'stauts'; see 'pgqueue --help'"),
        (["--log-format", "xml", "status"], 2, "'xml' is not one of 'text', 'json'"),
        (["tasks", "list", "--bogus"], 2, "No such option '--bogus'"),
        (["tasks", "list", "--status", "done"], 2, "unknown status 'done': use one of pending,"),
        (["tasks", "list", "--limit", "0"], 2, "--limit"),
        (["tasks", "show"], 2, "Missing argument 'TASK_ID'"),
        (["tasks", "show", "not-an-id"], 2, "'not-an-id' is not a task id"),
        (["tasks", "explain", "abc"], 2, "'abc' is too short for a task id"),
        (["tasks", "retry"], 2, "give task ids or --failed"),
        (["tasks", "retry", "--queue", "q", "abcdef12"], 2, "--queue goes with --failed"),
        (["tasks", "cancel", "x!"], 2, "'x!' is not a task id"),
        (["tasks", "purge", "--status", "failed", "--older-than", "7x"], 2, "'7x' is not a dur"),
        (["enqueue", "app.x", "--kwargs", "{nope"], 2, "--kwargs is not valid JSON"),
        (["enqueue", "app.x", "--kwargs", "[1]"], 2, "--kwargs must be a JSON object"),
        (["enqueue", "app.x", "--delay", "soon"], 2, "'soon' is not a duration"),
        (["status", "--interval", "0"], 2, "--interval"),
        (["worker", "--concurrent", "0"], 2, "--concurrent"),
        (["db", "status", "--bogus"], 2, "No such option '--bogus'"),
        # 1: pgqueue could not do it: not found, refused, database away.
        (["tasks", "show", NOT_AN_ID], 1, f"no task has id {NOT_AN_ID}"),
        (["tasks", "explain", "abcdef12"], 1, "no task id ends with abcdef12"),
        (["tasks", "purge", "--status", "running", "--older-than", "1d"], 1, "RUNNING tasks"),
        (["queue", "pause", ""], 1, "queue name is empty"),
        (["enqueue", "app.x", "--queue", "a\x01b"], 1, "queue"),
    ],
)
def test_error_paths_end_with_their_exit_status_and_one_line(
    cli: Run, args: list[str], code: int, words: str
) -> None:
    result = cli(*args)
    assert result.exit_code == code, (result.exit_code, result.output)
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert words in lines[0]
    assert "Traceback" not in result.stderr


def test_refusals_and_an_unreachable_database_exit_1_success_0(
    cli: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    task_id = cli("enqueue", "app.x", "--unchecked").stdout.strip()
    assert cli("tasks", "show", task_id).exit_code == 0
    refused = cli("tasks", "retry", task_id)
    assert refused.exit_code == 1
    assert refused.stderr.count("\n") == 1 and refused.stderr.startswith("not retried: ")
    monkeypatch.setenv("PGQUEUE_DSN", "postgresql://postgres@127.0.0.1:1/nothing")
    get_settings.cache_clear()
    for args in (["status"], ["tasks", "list"], ["tasks", "cancel", task_id], ["migrate"]):
        away = cli(*args)
        assert away.exit_code == 1, args
        assert away.stderr.startswith("Error: cannot use PostgreSQL at ")
        assert away.stderr.count("\n") == 1


def test_help_states_the_exit_statuses(cli: Run) -> None:
    text = " ".join(cli("--help").stdout.split())
    assert "Exit status: 0 done; 1 pgqueue could not do it" in text
    assert "2 the command was called wrong" in text


def test_the_demo_ends_by_pointing_to_the_cli(monkeypatch: pytest.MonkeyPatch) -> None:
    from pgqueue.contrib.demo import closing_note

    monkeypatch.setenv("PATH", "/nonexistent")  # not on PATH: the note says where it is
    note = closing_note("postgresql://postgres:secret@127.0.0.1:5433/postgres", embedded=True)
    command = str(Path(sys.executable).with_name("pgqueue"))
    lines = note.strip().splitlines()
    assert lines[0] == "Look at them yourself, from this folder:"
    assert [line.split("    ")[0].strip() for line in lines[1:4]] == [
        f"{os.path.relpath(command) if Path(command).is_relative_to(Path.cwd()) else command}"
        f" {args}"
        for args in ("status", "tasks list --status failed", "tasks show ID")
    ]
    assert "psql 'postgresql://postgres:****@127.0.0.1:5433/postgres'" in note
    assert "secret" not in note and lines[-1].strip().split("    ")[0].endswith(" db stop")
