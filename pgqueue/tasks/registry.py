"""The tasks this process knows: what @AsyncTask registered, by name. Workers run only these."""

from __future__ import annotations

import importlib
import os
import traceback
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
    """Import the modules that define tasks (`--import`, the `imports` setting). Whatever a
    module raises as it imports is one line naming the module, the file and line, and why:

    >>> import_task_modules(["myapp.tasks"])
    ConfigurationError: cannot import task module 'myapp.tasks': SyntaxError at
    myapp/tasks.py:12: invalid syntax
    """
    for module in modules:
        try:
            importlib.import_module(module)
        except Exception as error:  # a module's own code raised: its author's mistake
            raise ConfigurationError(
                f"cannot import task module {module!r}: {import_problem(module, error)}"
            ) from error


def import_problem(module: str, error: BaseException) -> str:
    """Why `module` did not import, in one line: the error, where it happened, its message."""
    if isinstance(error, ModuleNotFoundError) and module_missing(module, error):
        return (
            f"no module named {error.name!r} (the command's folder and PYTHONPATH are searched: "
            "run it from your project's folder, or set PYTHONPATH)"
        )
    if isinstance(error, SyntaxError) and error.filename:
        where = f"{_shown_path(error.filename)}:{error.lineno}"
        return f"{type(error).__name__} at {where}: {error.msg}"
    frames = [
        frame
        for frame in traceback.extract_tb(error.__traceback__)
        if not frame.filename.startswith("<frozen ") and frame.filename != __file__
    ]
    where = f" at {_shown_path(frames[-1].filename)}:{frames[-1].lineno}" if frames else ""
    message = str(error).strip().splitlines()
    return f"{type(error).__name__}{where}" + (f": {message[0]}" if message else "")


def module_missing(module: str, error: BaseException | None) -> bool:
    """Whether `error` says that `module` itself, or a package it lives in, is not there
    (rather than a dependency it imports)."""
    if not isinstance(error, ModuleNotFoundError) or not error.name:
        return False
    return module == error.name or module.startswith(error.name + ".")


def _shown_path(path: str) -> str:
    """A path relative to the current folder when it is inside it (myapp/tasks.py)."""
    relative = os.path.relpath(path)
    return path if relative.startswith("..") else relative
