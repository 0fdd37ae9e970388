"""Checks of task options: queue names, priorities, retries, delays, schedule_at, timeouts."""

from __future__ import annotations

import datetime
import math

import pytest

from pgqueue.errors import InvalidTaskArguments, InvalidTaskOption, PgQueueError
from pgqueue.tasks.options import (
    MAX_PRIORITY,
    MIN_PRIORITY,
    TaskOptions,
    Timing,
    aware_datetime,
    check_max_retries,
    check_priority,
    check_queue,
    check_timeout,
    duration_seconds,
)


@pytest.mark.parametrize(
    "queue",
    ["default", "x" * 128, "with space", 'it\'s "quoted"', "émails-日本", "x'; DROP TABLE t; --"],
)
def test_queue_names_accepted(queue: str) -> None:
    assert check_queue(queue) == queue


@pytest.mark.parametrize(
    ("queue", "error", "words"),
    [
        ("", InvalidTaskOption, "empty"),
        ("x" * 129, InvalidTaskOption, "129 characters"),
        ("tab\there", InvalidTaskOption, "control character"),
        ("nul\x00", InvalidTaskOption, "control character"),
        ("\ud800", InvalidTaskOption, "control character"),
        (42, InvalidTaskArguments, "must be a string, not int"),
        (None, InvalidTaskArguments, "NoneType"),
    ],
)
def test_queue_names_refused(queue: object, error: type[Exception], words: str) -> None:
    with pytest.raises(error, match=words) as caught:
        check_queue(queue)
    assert isinstance(caught.value, PgQueueError)


def test_priority_bounds_are_the_smallint_range() -> None:
    assert check_priority(MIN_PRIORITY) == -32768
    assert check_priority(MAX_PRIORITY) == 32767
    for bad in (MAX_PRIORITY + 1, MIN_PRIORITY - 1):
        with pytest.raises(ValueError, match=rf"priority {bad} is outside.*-32768 to 32767"):
            check_priority(bad)
    for wrong_type in (True, 1.5, "1", None):
        with pytest.raises(TypeError, match="priority must be an int"):
            check_priority(wrong_type)


def test_max_retries() -> None:
    assert check_max_retries(0) == 0
    with pytest.raises(ValueError, match="max_retries must be 0 or more, not -1"):
        check_max_retries(-1)
    with pytest.raises(ValueError, match="max_retries"):
        check_max_retries(2**31)
    with pytest.raises(TypeError, match="max_retries must be an int, not bool"):
        check_max_retries(False)


def test_delay_seconds() -> None:
    assert duration_seconds(0) == 0.0
    assert duration_seconds(1.5) == 1.5
    assert duration_seconds(datetime.timedelta(hours=1)) == 3600.0
    for bad in (-1, -0.001, datetime.timedelta(seconds=-1), math.inf, math.nan):
        with pytest.raises(InvalidTaskOption, match="delay must be a finite number"):
            duration_seconds(bad)
    for wrong_type in ("10", True, None):  # text only where asked for (the command line)
        with pytest.raises(InvalidTaskArguments, match="delay must be seconds"):
            duration_seconds(wrong_type)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90", 90), ("90s", 90), ("30m", 1800), ("12h", 43200), ("7d", 604800), ("2w", 1209600),
     ("1.5h", 5400), ("7D", 604800), (" 5 m ", 300)],
)  # fmt: skip
def test_durations_written_on_the_command_line(text: str, seconds: float) -> None:
    assert duration_seconds(text, "--older-than", text=True) == seconds


@pytest.mark.parametrize("text", ["", "7x", "d7", "-1d", "7 days", "1e3"])
def test_bad_durations_say_how_to_write_one(text: str) -> None:
    with pytest.raises(InvalidTaskOption, match="is not a duration: write a number with a unit"):
        duration_seconds(text, "--older-than", text=True)


def test_schedule_at_naive_means_utc() -> None:
    naive = datetime.datetime(2027, 1, 1, 9)
    assert aware_datetime(naive) == datetime.datetime(2027, 1, 1, 9, tzinfo=datetime.UTC)
    paris = datetime.timezone(datetime.timedelta(hours=1))
    aware = datetime.datetime(2027, 1, 1, 9, tzinfo=paris)
    assert aware_datetime(aware) is aware
    with pytest.raises(TypeError, match="schedule_at must be a datetime, not date"):
        aware_datetime(datetime.date(2027, 1, 1))


def test_timing_refuses_delay_with_schedule_at() -> None:
    with pytest.raises(ValueError, match="either delay or schedule_at, not both"):
        Timing.of(5, datetime.datetime(2027, 1, 1))
    assert Timing.of(None, None) == Timing(delay=0.0)
    assert Timing.of(datetime.timedelta(minutes=1), None).delay == 60.0


def test_timeout() -> None:
    assert check_timeout(None) is None
    assert check_timeout(2) == 2.0
    with pytest.raises(ValueError, match="timeout must be more than 0"):
        check_timeout(0)
    with pytest.raises(ValueError, match="timeout must be a finite number"):
        check_timeout(-3)


def test_task_options_checks_every_field() -> None:
    options = TaskOptions.checked("emails", 5, 2, delay=10)
    assert (options.queue, options.priority, options.max_retries) == ("emails", 5, 2)
    assert options.timing.delay == 10.0
    with pytest.raises(ValueError, match="queue name is empty"):
        TaskOptions.checked("", 0, 0)
