"""Schema migrations: pgqueue's alembic scripts, run with a lock so that concurrent runs are safe.

To run pgqueue's migrations from your own alembic env.py, in the same transaction:

    from pgqueue.migrations import upgrade
    def run_migrations_online():
        with engine.connect() as connection:
            context.configure(connection=connection, target_metadata=target_metadata)
            with context.begin_transaction():
                context.run_migrations()
            upgrade(connection=connection)   # pgqueue's own version table: pgqueue.alembic_version
"""

from __future__ import annotations

from typing import Any

from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine
from sqlalchemy.engine import Connection
from sqlalchemy.exc import OperationalError as SAOperationalError

from alembic import command
from pgqueue.database import unavailable
from pgqueue.queries import DEFAULT_SCHEMA, check_schema, resource_dir, sql_file


def sqlalchemy_url(dsn: str) -> str:
    """A libpq URL for SQLAlchemy's psycopg 3 driver."""
    for prefix in ("postgresql://", "postgres://"):
        if dsn.startswith(prefix):
            return "postgresql+psycopg://" + dsn[len(prefix) :]
    if "://" not in dsn:  # key=value conninfo
        from urllib.parse import quote

        return "postgresql+psycopg:///?" + "&".join(
            f"{key}={quote(value)}" for key, value in (item.split("=", 1) for item in dsn.split())
        )
    return dsn


def alembic_config(schema: str = DEFAULT_SCHEMA, **attributes: Any) -> Config:
    config = Config()
    config.set_main_option("script_location", str(resource_dir("alembic")))
    config.attributes["schema"] = check_schema(schema)
    config.attributes.update(attributes)
    return config


def run_sql_file(connection: Connection, filename: str, schema: str) -> None:
    """Execute a whole file of `sql/` on the migration's connection (no bind parameters)."""
    driver_connection = connection.connection.driver_connection
    assert driver_connection is not None
    driver_connection.execute(sql_file(filename, schema).encode())  # several statements


def upgrade(
    dsn: str | None = None,
    *,
    connection: Connection | None = None,
    schema: str = DEFAULT_SCHEMA,
    revision: str = "heads",
) -> None:
    """Bring the pgqueue schema to `revision`; safe to run from many processes at once."""
    if connection is not None:
        command.upgrade(alembic_config(schema, connection=connection), revision)
        return
    if dsn is None:
        raise ValueError("upgrade() needs a dsn or a connection")
    engine = create_engine(sqlalchemy_url(dsn))
    try:
        with engine.connect() as conn:
            command.upgrade(alembic_config(schema, connection=conn), revision)
            conn.commit()
    except SAOperationalError as error:
        raise unavailable(dsn, error.orig or error) from error
    finally:
        engine.dispose()


def head_revision() -> str:
    script = ScriptDirectory.from_config(alembic_config())
    return str(script.get_current_head())
