"""Schema migrations: pgqueue's alembic scripts, run with a lock so that concurrent runs are safe.

To run pgqueue's migrations from your own alembic env.py, in the same transaction:

    from pgqueue.db.migrations import upgrade
    def run_migrations_online():
        with engine.connect() as connection:
            context.configure(connection=connection, target_metadata=target_metadata)
            with context.begin_transaction():
                context.run_migrations()
                upgrade(connection=connection)  # version table: pgqueue.alembic_version

Both sets of migrations then commit or roll back together. `upgrade(connection=...)` works
on any SQLAlchemy connection: inside its open transaction, or in one of its own.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
from alembic import command, context, op
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import OperationalError as SAOperationalError
from sqlalchemy.pool import NullPool

from pgqueue.db.database import CONNECT_TIMEOUT_SECONDS, unavailable
from pgqueue.db.queries import DEFAULT_SCHEMA, check_schema, for_schema, resource_dir, sql_file
from pgqueue.dsn import parse_dsn

# The current schema: these live files of sql/, run in this order on an empty schema (the
# other file, queries.sql, holds the worker's named queries). Revision 0001 is a frozen copy
# of them; every change since is a new revision, and tests/test_schema_matches_migrations.py
# checks that the revisions build exactly what these files build.
SCHEMA_FILES = (
    "schema.sql",
    "functions.sql",
    "operations.sql",
    "outbox.sql",
    "features.sql",
    "limits.sql",
    "wakeups.sql",
)


def sqlalchemy_url(dsn: str) -> str:
    """A libpq URL for SQLAlchemy's psycopg 3 driver."""
    for prefix in ("postgresql://", "postgres://"):
        if dsn.startswith(prefix):
            return "postgresql+psycopg://" + dsn[len(prefix) :]
    if "://" not in dsn:  # key=value conninfo, values possibly quoted
        from urllib.parse import quote

        return "postgresql+psycopg:///?" + "&".join(
            f"{key}={quote(value)}" for key, value in check_dsn(dsn).items()
        )
    return dsn


def check_dsn(dsn: str) -> dict[str, str]:
    """The parameters of a libpq DSN (URL or key=value); an unparsable one is InvalidDsn."""
    return parse_dsn(dsn)


def alembic_config(schema: str = DEFAULT_SCHEMA, **attributes: Any) -> Config:
    config = Config()
    config.set_main_option("script_location", str(resource_dir("alembic")))
    config.attributes["schema"] = check_schema(schema)
    config.attributes.update(attributes)
    return config


def schema_sql(schema: str = DEFAULT_SCHEMA) -> str:
    """The current schema as one script: the files of SCHEMA_FILES, in order, for `schema`."""
    return "\n".join(sql_file(filename, schema) for filename in SCHEMA_FILES)


def run_revision_sql(revision_file: str) -> None:
    """Run the `.sql` file beside a revision, pointed at the schema being migrated.

    A revision's upgrade() calls `run_revision_sql(__file__)`. The file is written for the
    schema `pgqueue`, as the live files of `sql/` are, and holds several statements.
    """
    # On psycopg itself, not op.execute(): the script holds several statements, and
    # SQLAlchemy's text() would take any ":word" in a function body for a bind parameter.
    run_downgrade_sql(Path(revision_file).with_suffix(".sql").read_text(encoding="utf-8"))


def run_downgrade_sql(script: str) -> None:
    """Run a revision's downgrade statements, written for the schema `pgqueue` as the
    revision files are, on the schema being migrated."""
    schema = context.config.attributes.get("schema", DEFAULT_SCHEMA)
    driver_connection = op.get_bind().connection.driver_connection
    assert driver_connection is not None
    driver_connection.execute(for_schema(script, schema).encode())


def frozen_function(script: str, name: str) -> str:
    """The `-- name: <name>` block of a revision's frozen script, through its closing `$$;`:
    how a downgrade puts back a function as an earlier revision made it."""
    start = script.index(f"-- name: {name}\n")
    return script[start : script.index("$$;\n", script.index("AS $$", start)) + 4]


@contextlib.contextmanager
def _keep_alembic_proxies() -> Iterator[None]:
    """Let upgrade() run from inside a user's own alembic env.py.

    Alembic binds `alembic.context` and `alembic.op` to the running environment; pgqueue's
    nested run would unbind them on exit and break the user's run, so they are bound back.
    """
    from alembic import context as alembic_context
    from alembic import op as alembic_op

    outer = [getattr(module, "_proxy", None) for module in (alembic_context, alembic_op)]
    try:
        yield
    finally:
        for proxy in outer:
            if proxy is not None:
                proxy._install_proxy()


def upgrade(
    dsn: str | None = None,
    *,
    connection: Connection | None = None,
    schema: str = DEFAULT_SCHEMA,
    revision: str = "heads",
) -> None:
    """Bring the pgqueue schema to `revision`; safe to run from many processes at once."""
    if connection is not None:
        with _keep_alembic_proxies():
            command.upgrade(alembic_config(schema, connection=connection), revision)
        return
    if dsn is None:
        raise ValueError("upgrade() needs a dsn or a connection")
    check_dsn(dsn)
    # libpq reads the DSN as given (URL, key=value, service, sslmode, ...): no translation.
    engine = create_engine(
        "postgresql+psycopg://",
        creator=lambda: psycopg.connect(dsn, connect_timeout=CONNECT_TIMEOUT_SECONDS),
        poolclass=NullPool,
    )
    try:
        with engine.connect() as conn:
            command.upgrade(alembic_config(schema, connection=conn), revision)
            conn.commit()
    except SAOperationalError as error:
        raise unavailable(dsn, error.orig or error) from error
    except DBAPIError as error:
        if isinstance(error.orig, psycopg.Error):
            raise error.orig from error  # the CLI prints a database error as one line
        raise
    finally:
        engine.dispose()


def head_revision() -> str:
    script = ScriptDirectory.from_config(alembic_config())
    return str(script.get_current_head())
