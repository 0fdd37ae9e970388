"""A TaskManager that `.delay()` uses, for tests that queue tasks the way applications do."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from pgqueue.settings import Settings
from pgqueue.task_manager import TaskManager, set_default_task_manager


@contextlib.contextmanager
def default_task_manager(settings: Settings) -> Iterator[TaskManager]:
    """A TaskManager on `settings`, also the one .delay() uses until the block ends."""
    manager = TaskManager(settings=settings)
    set_default_task_manager(manager)
    try:
        yield manager
    finally:
        set_default_task_manager(None)
        manager.close()
