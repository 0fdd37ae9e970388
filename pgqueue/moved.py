"""Module paths from before the layers became folders keep working: `import
pgqueue.async_task` gives `pgqueue.tasks.definition`, the same module object, so user code
written against the old paths (and `mock.patch` of their names) behaves as before."""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
from collections.abc import Sequence

#: old path -> new path
MOVED = {
    "pgqueue.admin": "pgqueue.ops.admin",
    "pgqueue.async_task": "pgqueue.tasks.definition",
    "pgqueue.background": "pgqueue.loops",
    "pgqueue.completer": "pgqueue.brokers.postgres.completer",
    "pgqueue.control": "pgqueue.tasks.context",
    "pgqueue.cron": "pgqueue.db.cron",
    "pgqueue.database": "pgqueue.db.database",
    "pgqueue.demo": "pgqueue.contrib.demo",
    "pgqueue.embedded": "pgqueue.contrib.embedded",
    "pgqueue.executor": "pgqueue.worker.executor",
    "pgqueue.listener": "pgqueue.brokers.postgres.listener",
    "pgqueue.maintenance": "pgqueue.brokers.postgres.maintenance",
    "pgqueue.metrics": "pgqueue.ops.metrics",
    "pgqueue.migrations": "pgqueue.db.migrations",
    "pgqueue.options": "pgqueue.tasks.options",
    "pgqueue.outbox": "pgqueue.brokers.rabbitmq.outbox",
    "pgqueue.queries": "pgqueue.db.queries",
    "pgqueue.registry": "pgqueue.tasks.registry",
    "pgqueue.store": "pgqueue.db.store",
    "pgqueue.threads": "pgqueue.worker.threads",
    "pgqueue.typed_arguments": "pgqueue.tasks.typed_arguments",
    "pgqueue.worker_registry": "pgqueue.brokers.postgres.presence",
    "pgqueue.brokers.amqp_connection": "pgqueue.brokers.rabbitmq.connection",
    "pgqueue.brokers.amqp_messages": "pgqueue.brokers.rabbitmq.messages",
    "pgqueue.brokers.amqp_records": "pgqueue.brokers.rabbitmq.status_writer",
    "pgqueue.brokers.amqp_topology": "pgqueue.brokers.rabbitmq.topology",
}


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds an old path and loads it as the module at its new path."""

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: types.ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in MOVED:
            return None
        return importlib.machinery.ModuleSpec(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        module = importlib.import_module(MOVED[spec.name])
        sys.modules[spec.name] = module
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        """Already executed under its new path."""


def install() -> None:
    if not any(isinstance(finder, _Alias) for finder in sys.meta_path):
        sys.meta_path.append(_Alias())
