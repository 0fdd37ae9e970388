"""pgqueue: a Postgres-native background task queue for Python.

>>> from pgqueue import AsyncTask
>>> @AsyncTask(queue="emails", max_retries=3)
... async def send_email(to: str, subject: str):
...     return {"status": "sent", "recipient": to}
>>> task_id = send_email.delay(to="a@example.com", subject="Hi")
"""

from pgqueue import moved
from pgqueue.errors import PgQueueError, TaskCancelled, TaskFailed, WaitTimeout
from pgqueue.records import Limit, Task, TaskEvent, TaskStatus
from pgqueue.task_manager import TaskManager
from pgqueue.tasks.context import Retry, Snooze, TaskContext, current_task
from pgqueue.tasks.definition import AsyncTask, TaskFunction
from pgqueue.tasks.workflow import Signature, chain, chord, group
from pgqueue.version import __version__ as __version__
from pgqueue.worker import WorkerManager

moved.install()

__all__ = [
    "AsyncTask",
    "Limit",
    "PgQueueError",
    "Retry",
    "Signature",
    "Snooze",
    "Task",
    "TaskCancelled",
    "TaskContext",
    "TaskEvent",
    "TaskFailed",
    "TaskFunction",
    "TaskManager",
    "TaskStatus",
    "WaitTimeout",
    "WorkerManager",
    "chain",
    "chord",
    "current_task",
    "group",
]
