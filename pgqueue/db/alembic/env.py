"""Alembic environment of pgqueue's own migrations (version table: <schema>.alembic_version).

Run through `pgqueue migrate` or `pgqueue.migrations.upgrade()`; both pass the
connection or URL and the schema name in the alembic Config's attributes.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Connection

# Any fixed number: the advisory lock that serialises concurrent `pgqueue migrate` runs.
MIGRATION_LOCK_ID = 7_316_042_113

config = context.config
schema: str = config.attributes.get("schema", "pgqueue")


def run(connection: Connection) -> None:
    connection.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": MIGRATION_LOCK_ID})
    connection.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
    context.configure(
        connection=connection,
        version_table="alembic_version",
        version_table_schema=schema,
        transactional_ddl=True,
    )
    context.run_migrations()


def main() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        if connection.in_transaction():
            run(connection)
        else:
            with connection.begin():
                run(connection)
        return
    engine = create_engine(config.attributes["url"], poolclass=None)
    try:
        with engine.connect() as connection, connection.begin():
            run(connection)
    finally:
        engine.dispose()


if context.is_offline_mode():
    raise SystemExit("pgqueue migrations run online only: use `pgqueue migrate`")
main()
