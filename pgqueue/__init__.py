"""pgqueue: a Postgres-native background task queue for Python.

>>> from pgqueue import AsyncTask
>>> @AsyncTask(queue="emails", max_retries=3)
... async def send_email(to: str, subject: str):
...     return {"status": "sent", "recipient": to}
>>> task_id = send_email.delay(to="a@example.com", subject="Hi")
"""

from pgqueue.async_task import AsyncTask, TaskFunction
from pgqueue.control import Retry, Snooze, TaskContext, current_task
from pgqueue.errors import PgQueueError
from pgqueue.records import Task, TaskStatus
from pgqueue.results import TaskCancelled, TaskFailed, WaitTimeout
from pgqueue.task_manager import TaskManager
from pgqueue.worker import WorkerManager

__version__ = "0.1.0"

__all__ = [
    "AsyncTask",
    "PgQueueError",
    "Retry",
    "Snooze",
    "Task",
    "TaskCancelled",
    "TaskContext",
    "TaskFailed",
    "TaskFunction",
    "TaskManager",
    "TaskStatus",
    "WaitTimeout",
    "WorkerManager",
    "current_task",
]
