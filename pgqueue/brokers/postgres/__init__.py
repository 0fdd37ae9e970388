"""The database broker: the task table is the queue. `broker` (claims, outcomes, leases)
runs its parts: `listener` (LISTEN wake-ups), `completer` (outcomes in batches),
`maintenance` (rescue, cleanup) and `presence` (the worker registry)."""

from pgqueue.brokers.postgres.broker import PostgresBroker

__all__ = ["PostgresBroker"]
