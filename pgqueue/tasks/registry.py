"""The tasks this process knows: what @AsyncTask registered, by name. Workers run only these."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from pgqueue.errors import ConfigurationError

if TYPE_CHECKING:
    from pgqueue.tasks.definition import TaskFunction

_tasks: dict[str, TaskFunction] = {}


def register(task: TaskFunction) -> None:
    _tasks[task.name] = task


def lookup(name: str) -> TaskFunction | None:
    """The registered task of that name; never imports anything a database row names."""
    return _tasks.get(name)


def registered_names() -> list[str]:
    return sorted(_tasks)


def require_tasks() -> None:
    """A worker with no task registered could only give back what it claims: refuse it."""
    if not _tasks:
        raise ConfigurationError(
            "no task is registered, so this worker could run nothing: import the modules "
            "that define your tasks with --import (pgqueue worker --import myapp.tasks) or "
            "the PGQUEUE_IMPORTS setting"
        )


def import_task_modules(modules: list[str]) -> None:
    """Import the modules that define tasks (`--import`, the `imports` setting)."""
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as error:
            raise ConfigurationError(f"cannot import task module {module!r}: {error}") from error
