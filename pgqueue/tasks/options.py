"""Task options (queue, priority, retries, timing) and the checks they must pass."""

from __future__ import annotations

import dataclasses
import datetime
import math
import unicodedata
from typing import Any

from pgqueue.errors import InvalidTaskArguments, InvalidTaskOption

MAX_QUEUE_LENGTH = 128
MIN_PRIORITY, MAX_PRIORITY = -32768, 32767
MAX_TASK_NAME_LENGTH = 1024

Delay = int | float | datetime.timedelta


def check_queue(queue: Any) -> str:
    """1 to 128 printable characters; spaces, quotes and any Unicode letter are fine."""
    if not isinstance(queue, str):
        raise InvalidTaskArguments(f"queue must be a string, not {type(queue).__name__}")
    if not queue:
        raise InvalidTaskOption("queue name is empty; give 1 to 128 printable characters")
    if len(queue) > MAX_QUEUE_LENGTH:
        raise InvalidTaskOption(
            f"queue name is {len(queue)} characters long; the limit is {MAX_QUEUE_LENGTH}"
        )
    for char in queue:
        if unicodedata.category(char) in ("Cc", "Cs"):
            raise InvalidTaskOption(
                f"queue name {queue!r} contains the control character {char!r}; "
                "use printable characters only"
            )
    return queue


def check_priority(priority: Any) -> int:
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise InvalidTaskArguments(f"priority must be an int, not {type(priority).__name__}")
    if not MIN_PRIORITY <= priority <= MAX_PRIORITY:
        raise InvalidTaskOption(
            f"priority {priority} is outside the allowed range {MIN_PRIORITY} to {MAX_PRIORITY}"
        )
    return priority


def check_max_retries(max_retries: Any) -> int:
    if isinstance(max_retries, bool) or not isinstance(max_retries, int):
        raise InvalidTaskArguments(f"max_retries must be an int, not {type(max_retries).__name__}")
    if max_retries < 0 or max_retries > 2**31 - 1:
        raise InvalidTaskOption(f"max_retries must be 0 or more, not {max_retries}")
    return max_retries


def delay_seconds(delay: Any) -> float:
    """Seconds of a delay given as int, float or timedelta; never negative."""
    if isinstance(delay, datetime.timedelta):
        seconds = delay.total_seconds()
    elif isinstance(delay, (int, float)) and not isinstance(delay, bool):
        seconds = float(delay)
    else:
        raise InvalidTaskArguments(
            f"delay must be seconds (int or float) or a timedelta, not {type(delay).__name__}"
        )
    if not math.isfinite(seconds) or seconds < 0:
        raise InvalidTaskOption(f"delay must be a finite number of seconds >= 0, not {delay!r}")
    return seconds


def aware_datetime(when: Any) -> datetime.datetime:
    """schedule_at as an aware datetime; a naive one means UTC."""
    if not isinstance(when, datetime.datetime):
        raise InvalidTaskArguments(f"schedule_at must be a datetime, not {type(when).__name__}")
    return when if when.tzinfo is not None else when.replace(tzinfo=datetime.UTC)


def check_timeout(timeout: Any) -> float | None:
    if timeout is None:
        return None
    seconds = delay_seconds(timeout)
    if seconds <= 0:
        raise InvalidTaskOption(f"timeout must be more than 0 seconds, not {timeout!r}")
    return seconds


@dataclasses.dataclass(frozen=True, slots=True)
class Timing:
    """When a task may first run: after `delay` seconds or at `schedule_at`, never both."""

    delay: float = 0.0
    schedule_at: datetime.datetime | None = None

    @classmethod
    def of(cls, delay: Delay | None, schedule_at: datetime.datetime | None) -> Timing:
        if delay is not None and schedule_at is not None:
            raise InvalidTaskOption("give either delay or schedule_at, not both")
        if schedule_at is not None:
            return cls(schedule_at=aware_datetime(schedule_at))
        return cls(delay=delay_seconds(delay) if delay is not None else 0.0)


@dataclasses.dataclass(frozen=True, slots=True)
class TaskOptions:
    """The options a queued task row gets, already checked."""

    queue: str
    priority: int
    max_retries: int
    timing: Timing

    @classmethod
    def checked(
        cls,
        queue: Any,
        priority: Any,
        max_retries: Any,
        delay: Delay | None = None,
        schedule_at: datetime.datetime | None = None,
    ) -> TaskOptions:
        return cls(
            queue=check_queue(queue),
            priority=check_priority(priority),
            max_retries=check_max_retries(max_retries),
            timing=Timing.of(delay, schedule_at),
        )
