"""How pgqueue's log lines look: plain text for people, or one JSON object per line for log
collectors, each naming the task it is about.

While a worker runs a task, every line logged in that run (pgqueue's, and the task's own
through any logger) carries the task's id, name, queue and attempt:

>>> import logging, sys
>>> from pgqueue.logs import configure_logging
>>> configure_logging("INFO", "json", stream=sys.stdout)
>>> logging.getLogger("myapp").info("hello")  # doctest: +ELLIPSIS
{"time": "...", "level": "INFO", "logger": "myapp", "message": "hello"}
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime
import json
import logging
import sys
from collections.abc import Iterator
from typing import IO, Any, Literal

from pgqueue.errors import ConfigurationError
from pgqueue.records import Task

LogFormat = Literal["text", "json"]
LOG_FORMATS: tuple[LogFormat, ...] = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

#: The fields of the task being run in this coroutine or thread (none outside a run).
_task_fields: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "pgqueue_log_task", default=None
)


#: The keys a line about a task has (pass task_fields(task) as a log call's `extra`).
TASK_FIELDS = ("task_id", "task", "queue", "attempt")


def task_fields(task: Task) -> dict[str, Any]:
    """What a log line says of a task: its id, name, queue and attempt."""
    return {
        "task_id": str(task.id),
        "task": task.name,
        "queue": task.queue,
        "attempt": task.attempts,
    }


@contextlib.contextmanager
def about_task(task: Task) -> Iterator[None]:
    """Lines logged inside this block (in this coroutine, and threads it starts with a copy
    of its context) carry the task's fields in the JSON format."""
    token = _task_fields.set(task_fields(task))
    try:
        yield
    finally:
        _task_fields.reset(token)


def log_with_traceback(
    logger: logging.Logger,
    level: int,
    trace: str | None,
    message: str,
    *args: Any,
    fields: dict[str, Any] | None = None,
) -> None:
    """Log a line with a traceback kept as text (an error stored with its task, whose
    exception is gone): printed under the line as logging prints exc_info, or the JSON
    line's "exc". `fields` as task_fields() gives them."""
    if not logger.isEnabledFor(level):
        return
    record = logger.makeRecord(
        logger.name, level, "(pgqueue)", 0, message, args, None, extra=fields
    )
    record.exc_text = trace
    logger.handle(record)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message; task_id,
    task, queue and attempt when the line is about a task; exc (the traceback as text)
    when it carries one."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        line.update(_task_fields.get() or {})
        line.update({key: record.__dict__[key] for key in TASK_FIELDS if key in record.__dict__})
        if record.exc_info and record.exc_info[0] is not None:
            line["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exc"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, ensure_ascii=False, default=str)


class _Handler(logging.StreamHandler[IO[str]]):
    """The handler configure_logging installs (and a later call replaces)."""


def configure_logging(
    level: str = "INFO", log_format: str = "text", *, stream: IO[str] | None = None
) -> None:
    """Send the root logger's lines to `stream` (stderr) in `log_format`, at `level`.

    Like logging.basicConfig, it leaves a root logger alone that has handlers of its own
    (an application's, a test runner's), and sets the level only; a second call replaces
    the handler of the first.
    """
    if log_format not in LOG_FORMATS:
        raise ConfigurationError(
            f"log format must be one of {', '.join(LOG_FORMATS)}, not {log_format!r}"
        )
    root = logging.getLogger()
    root.setLevel(level.upper())
    ours = [handler for handler in root.handlers if isinstance(handler, _Handler)]
    if len(ours) != len(root.handlers):
        return
    for handler in ours:
        root.removeHandler(handler)
    handler = _Handler(stream or sys.stderr)
    handler.setFormatter(
        JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)
    )
    root.addHandler(handler)
