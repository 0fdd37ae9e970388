"""Task lifecycle events: listeners (sync or async) that never break the worker.

>>> from pgqueue.events import dispatcher
>>> dispatcher.add_listener("worker.task.after_execution", lambda payload: print(payload["result"]))
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger("pgqueue.events")

TASK_BEFORE_EXECUTION = "worker.task.before_execution"  # {"task": Task}
TASK_AFTER_EXECUTION = "worker.task.after_execution"  # {"task": Task, "result": Any}
TASK_EXECUTION_ERROR = "worker.task.execution_error"  # {"task": Task, "error": BaseException}
WORKER_STARTED = "worker.started"  # {"worker_id": str, "queues": list[str]}
WORKER_STOPPED = "worker.stopped"  # {"worker_id": str}

Listener = Callable[[dict[str, Any]], Any]


class EventDispatcher:
    """Named events and their listeners."""

    def __init__(self) -> None:
        self._listeners: dict[str, list[Listener]] = {}

    def add_listener(self, event: str, listener: Listener) -> None:
        self._listeners.setdefault(event, []).append(listener)

    def remove_listener(self, event: str, listener: Listener) -> None:
        listeners = self._listeners.get(event, [])
        if listener in listeners:
            listeners.remove(listener)

    def has_listeners(self, event: str) -> bool:
        return bool(self._listeners.get(event))

    async def dispatch(self, event: str, payload: dict[str, Any]) -> None:
        """Call every listener of `event`; one that raises is logged and skipped."""
        for listener in list(self._listeners.get(event, ())):
            try:
                outcome = listener(payload)
                if inspect.isawaitable(outcome):
                    await outcome
            except Exception:
                log.exception("listener %r of %s raised; the worker carries on", listener, event)


dispatcher = EventDispatcher()
