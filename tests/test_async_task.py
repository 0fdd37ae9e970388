"""@AsyncTask: options checked at definition time, names, inline calls, and .delay()/.adelay()
writing each option into the task row."""

from __future__ import annotations

import asyncio
import datetime
import inspect
import warnings
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from pgqueue import AsyncTask, TaskFunction
from pgqueue.errors import (
    EventLoopBlockingWarning,
    InvalidTaskArguments,
    InvalidTaskOption,
    PgQueueError,
    TaskDefinitionError,
)
from pgqueue.task_manager import TaskManager
from pgqueue.tasks import queueing
from pgqueue.tasks.registry import lookup


@AsyncTask(queue="emails", priority=7, max_retries=5, timeout=12)
async def send_email(to: str, subject: str = "Hi") -> dict[str, str]:
    return {"status": "sent", "recipient": to}


@AsyncTask
def plain(x: int) -> int:
    return x * 2


@AsyncTask(delay=datetime.timedelta(minutes=10))
def later(x: int = 0) -> int:
    return x


@AsyncTask(schedule_at=datetime.datetime(2030, 6, 1, 12))
def new_year() -> None:
    return None


def row_of(db: psycopg.Connection[Any], task_id: Any) -> dict[str, Any]:
    with db.cursor(row_factory=dict_row) as cursor:
        row = cursor.execute(
            "SELECT *, status::text AS status_text, "
            "extract(epoch FROM run_at - created_at)::float AS wait "
            "FROM pgqueue.tasks WHERE id = %s",
            (task_id,),
        ).fetchone()
    assert row is not None, f"no row for {task_id}"
    return row


def count(db: psycopg.Connection[Any]) -> int:
    return db.execute("SELECT count(*) FROM pgqueue.tasks").fetchone()[0]  # type: ignore[index]


# -- definition ----------------------------------------------------------------------------


def test_name_is_module_qualname_and_registered() -> None:
    assert send_email.name == "test_async_task.send_email"
    assert lookup("test_async_task.send_email") is send_email
    assert isinstance(plain, TaskFunction) and plain.name == "test_async_task.plain"
    assert send_email.__doc__ is None and send_email.__name__ == "send_email"
    assert (send_email.queue, send_email.priority, send_email.max_retries) == ("emails", 7, 5)
    assert send_email.timeout == 12.0 and send_email.is_async and not plain.is_async


def test_direct_call_runs_inline() -> None:
    assert plain(21) == 42
    assert asyncio.run(send_email("a@x")) == {"status": "sent", "recipient": "a@x"}


@pytest.mark.parametrize(
    "reserved",
    ["delay", "schedule_at", "priority", "queue", "max_retries", "connection", "unique_key"],
)
def test_reserved_option_as_parameter_is_refused_at_definition(reserved: str) -> None:
    namespace: dict[str, Any] = {}
    exec(f"def task(x, {reserved}=None):\n    return x", namespace)
    with pytest.raises(TypeError, match=f"parameter named '{reserved}'") as caught:
        AsyncTask(namespace["task"])
    assert isinstance(caught.value, TaskDefinitionError)
    assert "rename the parameter" in str(caught.value)


@pytest.mark.parametrize(
    ("options", "error", "words"),
    [
        ({"queue": ""}, ValueError, "queue name is empty"),
        ({"queue": "q" * 129}, ValueError, "129 characters"),
        ({"priority": 40000}, ValueError, "priority 40000 is outside"),
        ({"priority": "high"}, TypeError, "priority must be an int"),
        ({"max_retries": -1}, ValueError, "max_retries must be 0 or more"),
        ({"delay": -5}, ValueError, "delay must be a finite number of seconds >= 0"),
        ({"timeout": 0}, ValueError, "timeout must be more than 0"),
        (
            {"delay": 5, "schedule_at": datetime.datetime(2030, 1, 1)},
            ValueError,
            "either delay or schedule_at",
        ),
    ],
)
def test_bad_options_are_refused_at_definition(
    options: dict[str, Any], error: type[Exception], words: str
) -> None:
    with pytest.raises(error, match=words) as caught:

        @AsyncTask(**options)
        def task() -> None: ...

    assert isinstance(caught.value, PgQueueError)


# -- .delay() ------------------------------------------------------------------------------


def test_delay_writes_the_decorator_options(tm: TaskManager, db: psycopg.Connection[Any]) -> None:
    task_id = send_email.delay(to="a@example.com")
    row = row_of(db, task_id)
    assert row["name"] == "test_async_task.send_email"
    assert (row["queue"], row["priority"], row["max_retries"]) == ("emails", 7, 5)
    assert row["kwargs"] == {"to": "a@example.com"}
    assert row["status_text"] == "PENDING" and row["attempts"] == 0
    assert row["wait"] == pytest.approx(0, abs=0.01)


def test_delay_call_options_override_the_decorator(
    tm: TaskManager, db: psycopg.Connection[Any]
) -> None:
    task_id = send_email.delay(
        "b@example.com", "Yo", queue="bulk", priority=-2, max_retries=0, delay=90
    )
    row = row_of(db, task_id)
    assert (row["queue"], row["priority"], row["max_retries"]) == ("bulk", -2, 0)
    assert row["kwargs"] == {"to": "b@example.com", "subject": "Yo"}
    assert row["wait"] == pytest.approx(90, abs=0.01)


def test_decorator_timing_lands_in_run_at(tm: TaskManager, db: psycopg.Connection[Any]) -> None:
    assert row_of(db, later.delay(x=1))["wait"] == pytest.approx(600, abs=0.01)
    # A call's own timing replaces the decorator's.
    assert row_of(db, later.delay(delay=datetime.timedelta(seconds=5)))["wait"] == pytest.approx(
        5, abs=0.01
    )
    assert row_of(db, new_year.delay())["run_at"] == datetime.datetime(
        2030, 6, 1, 12, tzinfo=datetime.UTC
    )
    # Defaults from settings when neither the decorator nor the call say.
    row = row_of(db, plain.delay(x=3))
    assert (row["queue"], row["priority"], row["max_retries"]) == ("default", 0, 3)


def test_schedule_at_aware_and_naive(tm: TaskManager, db: psycopg.Connection[Any]) -> None:
    tokyo = datetime.timezone(datetime.timedelta(hours=9))
    aware = datetime.datetime(2031, 1, 1, 18, tzinfo=tokyo)
    assert row_of(db, plain.delay(x=1, schedule_at=aware))["run_at"] == aware
    naive = datetime.datetime(2031, 1, 1, 9)
    assert row_of(db, plain.delay(x=1, schedule_at=naive))["run_at"] == naive.replace(
        tzinfo=datetime.UTC
    )


def test_adelay(tm: TaskManager, db: psycopg.Connection[Any]) -> None:
    async def main() -> Any:
        return await send_email.adelay(to="c@x", priority=3, delay=datetime.timedelta(seconds=30))

    row = row_of(db, asyncio.run(main()))
    assert row["priority"] == 3 and row["queue"] == "emails"
    assert row["wait"] == pytest.approx(30, abs=0.01)


@pytest.mark.parametrize(
    ("call", "error", "words"),
    [
        (lambda: send_email.delay(to="a", cc="b"), TypeError, "unexpected keyword argument 'cc'"),
        (lambda: send_email.delay(), TypeError, "missing a required argument: 'to'"),
        (lambda: send_email.delay(to=object()), TypeError, "argument 'to'"),
        (lambda: plain.delay(x=1, delay=-1), ValueError, "delay must be a finite number"),
        (
            lambda: plain.delay(x=1, delay=1, schedule_at=datetime.datetime(2030, 1, 1)),
            ValueError,
            "either delay or schedule_at",
        ),
        (lambda: plain.delay(x=1, queue=""), ValueError, "queue name is empty"),
        (lambda: plain.delay(x=1, queue="q" * 129), ValueError, "129 characters long"),
        (lambda: plain.delay(x=1, priority=32768), ValueError, "priority 32768 is outside"),
        (lambda: plain.delay(x=1, priority=-32769), ValueError, "priority -32769 is outside"),
        (lambda: plain.delay(x=1, connection="conn"), TypeError, "connection must be a psycopg"),
    ],
)
def test_bad_delay_calls_raise_and_write_nothing(
    tm: TaskManager, db: psycopg.Connection[Any], call: Any, error: type[Exception], words: str
) -> None:
    with pytest.raises(error, match=words) as caught:
        call()
    assert isinstance(caught.value, PgQueueError)
    assert isinstance(caught.value, (InvalidTaskArguments, InvalidTaskOption))
    assert count(db) == 0


def test_delay_positional_only_parameters_are_refused(tm: TaskManager) -> None:
    @AsyncTask
    def positional(a: int, /) -> int:
        return a

    with pytest.raises(TypeError, match="positional-only"):
        positional.delay(1)


# -- .options() ----------------------------------------------------------------------------


def test_options_bind_the_queueing_options(tm: TaskManager, db: psycopg.Connection[Any]) -> None:
    configured = send_email.options(queue="bulk", priority=-2, max_retries=0, delay=90)
    task_id = configured.delay("b@example.com", "Yo")
    row = row_of(db, task_id)
    assert (row["queue"], row["priority"], row["max_retries"]) == ("bulk", -2, 0)
    assert row["kwargs"] == {"to": "b@example.com", "subject": "Yo"}
    assert row["wait"] == pytest.approx(90, abs=0.01)
    assert "priority=-2" in repr(configured) and "test_async_task.send_email" in repr(configured)

    async def main() -> Any:
        return await send_email.options(unique_key="once").adelay(to="c@x")

    first = asyncio.run(main())
    assert asyncio.run(main()) == first
    assert row_of(db, first)["queue"] == "emails"  # the decorator's, not set by .options()


def test_options_connection_writes_in_the_callers_transaction(
    tm: TaskManager, db: psycopg.Connection[Any], dsn: str
) -> None:
    with psycopg.connect(dsn) as conn:
        plain.options(connection=conn).delay(x=1)
        conn.rollback()
    assert count(db) == 0


@pytest.mark.parametrize(
    ("options", "error", "words"),
    [
        ({"queue": ""}, ValueError, "queue name is empty"),
        ({"priority": 40000}, ValueError, "priority 40000 is outside"),
        ({"max_retries": "3"}, TypeError, "max_retries must be an int"),
        ({"delay": -1}, ValueError, "delay must be a finite number"),
        ({"delay": 1, "schedule_at": datetime.datetime(2030, 1, 1)}, ValueError, "either delay"),
        ({"unique_key": ""}, ValueError, "unique_key"),
    ],
)
def test_bad_options_are_refused_by_options(
    options: dict[str, Any], error: type[Exception], words: str
) -> None:
    with pytest.raises(error, match=words) as caught:
        plain.options(**options)
    assert isinstance(caught.value, PgQueueError)


def test_an_option_given_to_options_and_delay_is_refused(
    tm: TaskManager, db: psycopg.Connection[Any]
) -> None:
    with pytest.raises(TypeError, match=r"priority given to both \.options\(\) and \.delay\(\)"):
        plain.options(priority=1).delay(x=1, priority=2)  # type: ignore[call-arg]
    assert count(db) == 0


# -- .delay() inside an event loop ---------------------------------------------------------


@pytest.fixture
def fresh_process(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[warnings.WarningMessage]]:
    """As in a process that has not warned yet; every warning recorded, none filtered."""
    monkeypatch.setattr(queueing, "_warned_in_event_loop", False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield caught


def line_below() -> int:
    frame = inspect.currentframe()
    assert frame is not None and frame.f_back is not None
    return frame.f_back.f_lineno + 1


def test_delay_in_an_event_loop_warns_once_at_the_callers_line(
    tm: TaskManager, db: psycopg.Connection[Any], fresh_process: list[warnings.WarningMessage]
) -> None:
    async def handler() -> int:
        line = line_below()
        plain.delay(x=1)
        plain.delay(x=2)
        plain.options(priority=1).delay(x=3)
        return line

    line = asyncio.run(handler())
    asyncio.run(handler())
    [warning] = fresh_process
    assert warning.category is EventLoopBlockingWarning
    assert (warning.filename, warning.lineno) == (__file__, line)
    assert "test_async_task.plain.delay() was called inside a running event loop" in str(
        warning.message
    )
    assert "`await plain.adelay(...)`" in str(warning.message)
    assert count(db) == 6  # warned, and queued all the same


def test_options_delay_in_an_event_loop_warns_at_the_callers_line(
    tm: TaskManager, fresh_process: list[warnings.WarningMessage]
) -> None:
    async def handler() -> int:
        line = line_below()
        plain.options(priority=1).delay(x=3)
        return line

    line = asyncio.run(handler())
    [warning] = fresh_process
    assert (warning.category, warning.filename, warning.lineno) == (
        EventLoopBlockingWarning,
        __file__,
        line,
    )


def test_no_warning_without_a_running_loop_in_the_thread(
    tm: TaskManager, db: psycopg.Connection[Any], fresh_process: list[warnings.WarningMessage]
) -> None:
    async def handler() -> None:
        await asyncio.to_thread(plain.delay, x=1)  # a thread of its own: the loop runs on
        await plain.adelay(x=2)
        await plain.options(priority=1).adelay(x=3)

    asyncio.run(handler())
    plain.delay(x=4)  # plain sync code, as a worker's sync task runs
    assert fresh_process == []
    assert count(db) == 4
