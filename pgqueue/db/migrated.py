"""Whether a database holds the pgqueue schema this package needs: the one home of the error
that says `pgqueue migrate` (SchemaMissing), for producers, workers and the command line.

Producers pay nothing for it: a statement that finds no pgqueue table, function or schema
is translated where statements run (Database's connections, a caller's connection in
db/store.py, ops/admin.py). A worker asks once, as it opens its broker, so that it refuses
to start rather than log "started" and then fail every loop; it also refuses a database at
an older revision than this package's.

>>> with translated(dsn):
...     conn.execute(queries()["get_task"], {"id": task_id})   # no schema: SchemaMissing
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import re
from collections.abc import AsyncIterator, Iterator
from typing import Any

import psycopg

from pgqueue.db.queries import DEFAULT_SCHEMA, queries, resource_dir
from pgqueue.dsn import describe_dsn
from pgqueue.errors import SchemaMissing, first_line

#: What PostgreSQL raises for a statement that names a relation, function, type or schema
#: the database does not have; about pgqueue's schema, that means "not migrated".
UNDEFINED: tuple[type[psycopg.Error], ...] = (
    psycopg.errors.UndefinedTable,
    psycopg.errors.UndefinedFunction,
    psycopg.errors.UndefinedObject,
    psycopg.errors.InvalidSchemaName,
)

#: A revision read_revision could not tell: a schema without its revision record (made by
#: hand, or a failed first migration), or a database it could not ask.
UNKNOWN = ""

_REVISION = re.compile(r'^revision = "(\w+)"$', re.M)
_DOWN_REVISION = re.compile(r'^down_revision = (?:"(\w+)"|None)$', re.M)


@functools.cache
def known_revisions() -> list[str]:
    """The revisions this package ships, oldest first: the chain of their down_revision
    links (numbers are not their order: a revision may follow a higher one). Read from the
    scripts' text; no alembic import, which a worker never loads."""
    follows: dict[str | None, str] = {}
    for path in (resource_dir("alembic") / "versions").glob("*.py"):
        text = path.read_text(encoding="utf-8")
        revision, down = _REVISION.search(text), _DOWN_REVISION.search(text)
        if revision and down:
            follows[down.group(1)] = revision.group(1)
    chain: list[str] = []
    current = follows.get(None)
    while current is not None and current not in chain:
        chain.append(current)
        current = follows.get(current)
    return chain


def required_revision() -> str:
    """The revision this package needs: the last of its chain (alembic's head)."""
    return known_revisions()[-1]


def _about_schema(error: BaseException, schema: str) -> bool:
    """Whether an undefined-object error names pgqueue's schema (a user's own SQL in a
    transactional task may miss a table of its own: that one is left alone)."""
    # relation "pgqueue.tasks", function pgqueue.fail_task(...), schema "pgqueue"
    return re.search(rf'(?<![\w$])"?{schema}(?:"|\.)', first_line(error)) is not None


def schema_missing(
    error: BaseException, dsn: str, schema: str = DEFAULT_SCHEMA
) -> SchemaMissing | None:
    """The SchemaMissing that `error` means, or None when it is about something else.

    Only for an error already raised: it reads the database's revision over a connection
    of its own, to say which revision the database is at."""
    if not isinstance(error, UNDEFINED) or not _about_schema(error, schema):
        return None
    return missing(dsn, schema, read_revision(dsn, schema), detail=first_line(error))


@contextlib.contextmanager
def translated(dsn: str, schema: str = DEFAULT_SCHEMA) -> Iterator[None]:
    """Statements run inside raise SchemaMissing where they find no pgqueue schema."""
    try:
        yield
    except UNDEFINED as error:
        found = schema_missing(error, dsn, schema)
        if found is None:
            raise
        raise found from error


@contextlib.asynccontextmanager
async def atranslated(dsn: str, schema: str = DEFAULT_SCHEMA) -> AsyncIterator[None]:
    """translated() for async code (the revision is read in a thread)."""
    try:
        yield
    except UNDEFINED as error:
        found = await asyncio.to_thread(schema_missing, error, dsn, schema)
        if found is None:
            raise
        raise found from error


def missing(dsn: str, schema: str, revision: str | None, detail: str = "") -> SchemaMissing:
    """The error for a database whose pgqueue schema is at `revision` (None: no schema;
    UNKNOWN: cannot tell)."""
    required = required_revision()
    where = describe_dsn(dsn)
    how = "`pgqueue migrate`" + (
        "" if schema == DEFAULT_SCHEMA else f" (with PGQUEUE_SCHEMA_NAME={schema})"
    )
    if revision is None:
        text = f"the database {where} has no pgqueue schema {schema!r}: run {how} to create it"
    elif revision == UNKNOWN:
        because = f" ({detail})" if detail else ""
        text = (
            f"the pgqueue schema {schema!r} in {where} is missing or older than this pgqueue "
            f"needs{because}: run {how}"
        )
    else:
        text = (
            f"run {how}: the database {where} is at revision {revision}, this pgqueue needs "
            f"{required}"
        )
    return SchemaMissing(text, revision=revision or None, required=required)


def outdated(revision: str | None) -> bool:
    """Whether a database at `revision` lacks what this package needs: no schema, or a
    revision older than its own. A revision it does not ship is a newer pgqueue's (a rolling
    deploy migrated ahead): not outdated."""
    if revision is None:
        return True
    known = known_revisions()
    return revision in known and revision != known[-1]


def read_revision(dsn: str, schema: str = DEFAULT_SCHEMA) -> str | None:
    """The database's pgqueue revision over a short connection of its own: None when it has
    no pgqueue schema, UNKNOWN when that cannot be told (no record, or no connection)."""
    with (
        contextlib.suppress(psycopg.Error),
        psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn,
    ):
        return revision_on(conn, schema)
    return UNKNOWN


def revision_on(conn: psycopg.Connection[Any], schema: str = DEFAULT_SCHEMA) -> str | None:
    """The pgqueue revision of the database of `conn` (autocommit), as read_revision."""
    try:
        row = conn.execute(queries(schema)["schema_revision"]).fetchone()
    except (psycopg.errors.UndefinedTable, psycopg.errors.InvalidSchemaName):
        return _schema_exists(conn, schema)
    return str(row[0]) if row else UNKNOWN


def _schema_exists(conn: psycopg.Connection[Any], schema: str) -> str | None:
    row = conn.execute(queries(schema)["schema_exists"], {"schema": schema}).fetchone()
    return UNKNOWN if row and row[0] else None


async def arevision_on(
    conn: psycopg.AsyncConnection[Any], schema: str = DEFAULT_SCHEMA
) -> str | None:
    """revision_on for an async connection (autocommit)."""
    named = queries(schema)
    try:
        row = await (await conn.execute(named["schema_revision"])).fetchone()
    except (psycopg.errors.UndefinedTable, psycopg.errors.InvalidSchemaName):
        cursor = await conn.execute(named["schema_exists"], {"schema": schema})
        exists = await cursor.fetchone()
        return UNKNOWN if exists and exists[0] else None
    return str(row[0]) if row else UNKNOWN
