"""`pgqueue migrate`: create or upgrade the schema."""

from __future__ import annotations

import logging

import click

from pgqueue.db import migrations
from pgqueue.db.database import resolve_dsn
from pgqueue.settings import get_settings


@click.command()
def migrate() -> None:
    """Create or upgrade the pgqueue schema (idempotent, safe to run concurrently)."""
    settings = get_settings()
    logging.getLogger("alembic").setLevel(logging.WARNING)
    migrations.upgrade(resolve_dsn(settings), schema=settings.schema_name)
    click.echo(
        f"pgqueue schema {settings.schema_name!r} is at revision {migrations.head_revision()}"
    )
