"""The Django tasks API, from Django itself (6.0+, `django.tasks`) or else from the
`django-tasks` backport (module `django_tasks`, the same API on older Django)."""

from __future__ import annotations

from typing import Any

try:
    from django.tasks import TaskContext, TaskResult, TaskResultStatus, exceptions, task_backends
    from django.tasks.backends.base import BaseTaskBackend
    from django.tasks.base import Task, TaskError
except ImportError:  # Django < 6: the backport
    from django_tasks import (
        TaskContext,
        TaskResult,
        TaskResultStatus,
        exceptions,
        task_backends,
    )
    from django_tasks.backends.base import BaseTaskBackend
    from django_tasks.base import Task, TaskError

#: Named TaskResultDoesNotExist in Django 6 and recent backports, ResultDoesNotExist before.
ResultDoesNotExist: type[Exception] = getattr(
    exceptions, "TaskResultDoesNotExist", getattr(exceptions, "ResultDoesNotExist", LookupError)
)


def set_field(result: Any, name: str, value: Any) -> None:
    """Set a field of a frozen TaskResult (as Django's own backends do)."""
    object.__setattr__(result, name, value)


__all__ = [
    "BaseTaskBackend",
    "ResultDoesNotExist",
    "Task",
    "TaskContext",
    "TaskError",
    "TaskResult",
    "TaskResultStatus",
    "set_field",
    "task_backends",
]
