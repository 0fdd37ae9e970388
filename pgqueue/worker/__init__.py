"""The worker: `manager` (WorkerManager: claims, runs up to N tasks, drains), `executor`
(one run of one task) and `threads` (the pool sync tasks run in). It drives any broker
through `pgqueue.brokers.base.Broker` and never touches the database itself."""

from pgqueue.worker.manager import WorkerManager

__all__ = ["WorkerManager"]
