"""The Django app: `manage.py migrate` also brings pgqueue's schema up to date."""

from __future__ import annotations

from typing import Any

from django.apps import AppConfig
from django.db.models.signals import post_migrate


class PgQueueConfig(AppConfig):
    name = "pgqueue.contrib.django"
    label = "pgqueue"
    verbose_name = "pgqueue"

    def ready(self) -> None:
        # Sent after Django's own migrations, for this app (it has an empty models module).
        post_migrate.connect(migrate_schema, sender=self, dispatch_uid="pgqueue.migrate")


def migrate_schema(using: str, **_: Any) -> None:
    """Run pgqueue's alembic upgrade (what `pgqueue migrate` does: idempotent) on the
    database `using`, if a PgQueueBackend of TASKS writes there."""
    from pgqueue.contrib.django.backend import backends_on
    from pgqueue.db.migrations import upgrade

    for backend in backends_on(using):
        upgrade(backend.settings.dsn, schema=backend.settings.schema_name)
        return
