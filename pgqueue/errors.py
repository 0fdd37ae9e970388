"""The exceptions pgqueue raises: one root, each also a matching built-in."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pgqueue.records import Task


class PgQueueError(Exception):
    """Root of every error pgqueue raises on purpose."""


class TaskDefinitionError(PgQueueError, TypeError):
    """A task was declared in a way pgqueue cannot queue (reserved parameter name, ...)."""


class InvalidTaskArguments(PgQueueError, TypeError):
    """Arguments of a task are of the wrong type: not JSON-serialisable, unknown keyword, ..."""


class InvalidTaskOption(PgQueueError, ValueError):
    """An option or argument has a bad value: empty queue, negative delay, NUL character, ..."""


class ConfigurationError(PgQueueError, ValueError):
    """A setting is missing or has a value pgqueue cannot use."""


class SchemaMissing(ConfigurationError):
    """The database lacks the pgqueue schema, or holds an older revision of it than this
    pgqueue needs; the message names the database (never its password) and `pgqueue migrate`.

    >>> try:
    ...     send.delay(to="a@example.com")
    ... except SchemaMissing as error:
    ...     print(error.revision, error.required)   # None (no schema) or '0001', and '0002'
    """

    def __init__(self, message: str, *, revision: str | None, required: str) -> None:
        super().__init__(message)
        #: The revision the database is at; None when it has no pgqueue schema (or no record).
        self.revision = revision
        #: The revision this pgqueue needs.
        self.required = required


class DatabaseUnavailable(PgQueueError, ConnectionError):
    """PostgreSQL could not be reached or dropped the connection."""


class BrokerUnavailable(PgQueueError, ConnectionError):
    """The message broker (RabbitMQ) could not be reached."""


class TaskNotFound(PgQueueError, LookupError):
    """No task has the given id."""


class UnknownTask(PgQueueError, LookupError):
    """A task name is not registered with @AsyncTask in this process."""


class EmbeddedServerError(PgQueueError, RuntimeError):
    """The embedded PostgreSQL server could not be started, stopped or used."""


class InvalidDsn(ConfigurationError):
    """A PostgreSQL DSN libpq cannot parse; the message shows it with its password masked."""


class TaskTimeout(PgQueueError, TimeoutError):
    """A run took longer than its task's `timeout`."""


class LeaseLost(PgQueueError):
    """A transactional task's completion was refused: another claim holds the task now."""


class TransactionUnsupported(PgQueueError, RuntimeError):
    """A transactional task ran on a broker that cannot give it a transaction."""


class TaskFailed(PgQueueError, RuntimeError):
    """The awaited task ended FAILED: `.task` is its record, `.error` its last error."""

    def __init__(self, task: Task, message: str | None = None) -> None:
        self.task = task
        self.error = task.error
        reason = first_line(task.error) or "no error text"
        super().__init__(message or f"task {task.id} {task.name} failed: {reason}")


class TaskCancelled(TaskFailed):
    """The awaited task was cancelled before it completed."""

    def __init__(self, task: Task) -> None:
        super().__init__(task, f"task {task.id} {task.name} was cancelled")


class WaitTimeout(PgQueueError, TimeoutError):
    """The awaited task did not finish in time; `.task` is its record as last read."""

    def __init__(self, task: Task, timeout: float) -> None:
        self.task = task
        super().__init__(
            f"task {task.id} {task.name} did not finish within {timeout:g} s "
            f"(it is {task.status.value}); it keeps running: wait again or cancel it"
        )


class PgQueueWarning(UserWarning):
    """Root of every warning pgqueue gives: `warnings.simplefilter("error", PgQueueWarning)`."""


class EventLoopBlockingWarning(PgQueueWarning):
    """A blocking call, such as `.delay()`, ran inside a running event loop: the loop (every
    request of a web app) waits for the database meanwhile; `await task.adelay(...)` does not."""


def closest(name: str, choices: Iterable[str], cutoff: float = 0.6) -> str | None:
    """The choice a misspelt `name` most likely meant, for a "did you mean ...?"; None when
    none is close enough.

    >>> closest("dns", ["dsn", "broker"])
    'dsn'
    """
    import difflib

    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=cutoff)
    if not close and name != name.lower():
        close = difflib.get_close_matches(name.lower(), list(choices), n=1, cutoff=cutoff)
    return close[0] if close else None


def first_line(text: str | BaseException | None, limit: int | None = None) -> str:
    """The first line of a text, or of an error's message, for a one-line log or table cell:
    libpq's messages and tracebacks run over several lines. "" when there is no text (an
    error without a message, or whose str() raises: its type's name); longer than `limit`:
    cut, its last character "…"."""
    if isinstance(text, BaseException):
        try:
            message = str(text)
        except Exception:
            message = ""
        line = _first_line(message) or type(text).__name__
    else:
        line = _first_line(text or "")
    if limit is not None and len(line) > limit:
        return line[: limit - 1] + "…"
    return line


def _first_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[0] if lines else ""
