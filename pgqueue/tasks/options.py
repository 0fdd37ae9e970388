"""Task options (queue, priority, retries, timing) and the checks they must pass."""

from __future__ import annotations

import dataclasses
import datetime
import math
import re
import unicodedata
from typing import TYPE_CHECKING, Any, Protocol

from pgqueue.errors import InvalidTaskArguments, InvalidTaskOption

if TYPE_CHECKING:
    from pgqueue.settings import TaskDefaults

MAX_QUEUE_LENGTH = 128
MIN_PRIORITY, MAX_PRIORITY = -32768, 32767
MAX_TASK_NAME_LENGTH = 1024

Delay = int | float | datetime.timedelta

_DURATION_TEXT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$", re.IGNORECASE)
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


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


def duration_seconds(value: Any, what: str = "delay", *, text: bool = False) -> float:
    """Seconds of a duration (`what` names it in errors): int or float seconds, or a
    timedelta; with `text` (the command line), also "90", "30s", "30m", "12h", "7d", "2w".
    Finite and never negative. A wrong type is a TypeError, a bad value a ValueError."""
    if isinstance(value, datetime.timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    elif text and isinstance(value, str):
        match = _DURATION_TEXT.match(value)
        if not match:
            raise InvalidTaskOption(
                f"{value!r} is not a duration: write a number with a unit, such as 90s, 30m, "
                "12h, 7d or 2w"
            )
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2).lower()]
    else:
        raise InvalidTaskArguments(
            f"{what} must be seconds (int or float) or a timedelta, not {type(value).__name__}"
        )
    if not math.isfinite(seconds) or seconds < 0:
        raise InvalidTaskOption(f"{what} must be a finite number of seconds >= 0, not {value!r}")
    return seconds


def aware_datetime(when: Any) -> datetime.datetime:
    """schedule_at as an aware datetime; a naive one means UTC."""
    if not isinstance(when, datetime.datetime):
        raise InvalidTaskArguments(f"schedule_at must be a datetime, not {type(when).__name__}")
    return when if when.tzinfo is not None else when.replace(tzinfo=datetime.UTC)


#: Limit and fair keys: at most this many characters, and at most MAX_LIMIT_KEYS per task.
MAX_KEY_LENGTH = 256
MAX_LIMIT_KEYS = 16


def check_key(key: Any, what: str) -> str:
    """A limit key, limit name or fair key: 1 to 256 printable characters."""
    if not isinstance(key, str):
        raise InvalidTaskArguments(f"{what} must be a string, not {type(key).__name__}")
    if not key:
        raise InvalidTaskOption(f"{what} is empty; give 1 to {MAX_KEY_LENGTH} characters")
    if len(key) > MAX_KEY_LENGTH:
        raise InvalidTaskOption(
            f"{what} {key[:40]!r}... is {len(key)} characters long; the limit is {MAX_KEY_LENGTH}"
        )
    if any(unicodedata.category(char) in ("Cc", "Cs") for char in key):
        raise InvalidTaskOption(f"{what} {key!r} contains a control character")
    return key


def check_limit_keys(keys: Any) -> tuple[str, ...] | None:
    """`limits=[...]`: distinct keys, in order; None for none."""
    if keys is None:
        return None
    if isinstance(keys, str | bytes) or not isinstance(keys, list | tuple | set | frozenset):
        raise InvalidTaskArguments(
            f'limits takes a list of keys such as ["ses"], not {type(keys).__name__}'
        )
    checked = tuple(dict.fromkeys(check_key(key, "limit key") for key in keys))
    if len(checked) > MAX_LIMIT_KEYS:
        raise InvalidTaskOption(
            f"a task holds at most {MAX_LIMIT_KEYS} limit keys, not {len(checked)}"
        )
    return checked or None


def merge_limit_keys(
    own: tuple[str, ...] | None, extra: tuple[str, ...] | None
) -> tuple[str, ...] | None:
    """The task's own keys (decorator) and a call's, each once."""
    if not extra:
        return own
    if not own:
        return extra
    merged = tuple(dict.fromkeys(own + extra))
    if len(merged) > MAX_LIMIT_KEYS:
        raise InvalidTaskOption(
            f"a task holds at most {MAX_LIMIT_KEYS} limit keys, not {len(merged)}"
        )
    return merged


def check_fair_key(key: Any) -> str | None:
    return None if key is None else check_key(key, "fair_key")


#: What a task does when a parent of its ends FAILED or CANCELLED.
ON_PARENT_FAILURE = ("cancel", "run")


def check_on_parent_failure(value: Any) -> str:
    if value not in ON_PARENT_FAILURE:
        raise InvalidTaskOption(f'on_parent_failure must be "cancel" or "run", not {value!r}')
    return str(value)


def check_timeout(timeout: Any) -> float | None:
    if timeout is None:
        return None
    seconds = duration_seconds(timeout, "timeout")
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
        return cls(delay=duration_seconds(delay) if delay is not None else 0.0)


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

    @classmethod
    def resolve(
        cls,
        declared: DeclaredOptions | None,
        defaults: TaskDefaults,
        *,
        queue: Any = None,
        priority: Any = None,
        max_retries: Any = None,
        delay: Delay | None = None,
        schedule_at: datetime.datetime | None = None,
    ) -> TaskOptions:
        """The options of one queueing of a task: each the call's own (not None), else the
        decorator's (`declared`; None for a task queued by name), else the settings'
        default; the timing the call's, else the decorator's. The one place of that order."""
        own = (
            (None, None, None)
            if declared is None
            else (declared.queue, declared.priority, declared.max_retries)
        )
        options = cls.checked(
            _first(queue, own[0], defaults.queue),
            _first(priority, own[1], defaults.priority),
            _first(max_retries, own[2], defaults.max_retries),
            delay,
            schedule_at,
        )
        if delay is None and schedule_at is None and declared is not None and declared.has_timing:
            return cls(options.queue, options.priority, options.max_retries, declared.timing)
        return options


class DeclaredOptions(Protocol):
    """The options a task's decorator set, None where it set none (a TaskFunction)."""

    queue: str | None
    priority: int | None
    max_retries: int | None
    timing: Timing
    has_timing: bool


def _first(*values: Any) -> Any:
    return next(value for value in values if value is not None)


def check_limit(name: Any, concurrency: Any, rate: Any, per: Any, burst: Any) -> dict[str, Any]:
    """The fields of `set_limit`, checked: a name (a pattern ends with "*"), a concurrency
    of 0 or more and/or a rate over `per` seconds (a number or a timedelta) with a burst of
    1 or more (default: the rate, at least 1). Returns the row's values."""
    check_key(name, "limit name")
    if concurrency is not None and (
        isinstance(concurrency, bool) or not isinstance(concurrency, int)
    ):
        raise InvalidTaskArguments(f"concurrency must be an int, not {type(concurrency).__name__}")
    if concurrency is not None and not 0 <= concurrency <= 2**31 - 1:
        raise InvalidTaskOption(f"concurrency must be 0 or more, not {concurrency}")
    if rate is None and per is None and burst is None:
        if concurrency is None:
            raise InvalidTaskOption(
                f"limit {name!r} needs a concurrency, or a rate with per, or both"
            )
        return {"name": name, "concurrency": concurrency, "rate": None, "per": None, "burst": None}
    if rate is None or per is None:
        raise InvalidTaskOption(
            f"limit {name!r}: a rate needs both rate= (starts) and per= (seconds), "
            "e.g. rate=10, per=1"
        )
    if isinstance(rate, bool) or not isinstance(rate, int | float):
        raise InvalidTaskArguments(f"rate must be a number, not {type(rate).__name__}")
    if not math.isfinite(rate) or rate <= 0:
        raise InvalidTaskOption(f"rate must be a number above 0, not {rate!r}")
    per_seconds = duration_seconds(per, "per")
    if per_seconds <= 0:
        raise InvalidTaskOption(f"per must be more than 0 seconds, not {per!r}")
    if burst is None:
        burst = max(float(rate), 1.0)
    if isinstance(burst, bool) or not isinstance(burst, int | float):
        raise InvalidTaskArguments(f"burst must be a number, not {type(burst).__name__}")
    if not math.isfinite(burst) or burst < 1:
        raise InvalidTaskOption(f"burst must be 1 or more, not {burst!r}")
    return {
        "name": name,
        "concurrency": concurrency,
        "rate": float(rate),
        "per": per_seconds,
        "burst": float(burst),
    }


def check_weight(weight: Any) -> float:
    if isinstance(weight, bool) or not isinstance(weight, int | float):
        raise InvalidTaskArguments(f"weight must be a number, not {type(weight).__name__}")
    if not math.isfinite(weight) or not 0 < weight <= 1_000_000:
        raise InvalidTaskOption(f"weight must be above 0 and at most 1000000, not {weight!r}")
    return float(weight)
