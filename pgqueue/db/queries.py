"""Named SQL blocks from the `sql/` folder beside this module, parsed once per schema name,
and the LISTEN/NOTIFY channels that SQL sends on."""

from __future__ import annotations

import enum
import functools
import re
from pathlib import Path

from pgqueue.errors import ConfigurationError

DEFAULT_SCHEMA = "pgqueue"
SCHEMA_PATTERN = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_BLOCK_NAME = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)


def resource_dir(name: str) -> Path:
    """The folder `sql` or `alembic` beside this module, installed or in a checkout."""
    folder = Path(__file__).resolve().parent / name
    if not folder.is_dir():
        raise FileNotFoundError(f"pgqueue is missing its {name!r} folder; reinstall the package")
    return folder


def check_schema(schema: str) -> str:
    if not SCHEMA_PATTERN.match(schema):
        raise ConfigurationError(
            f"schema {schema!r} is not a valid schema name: use lowercase letters, digits "
            "and underscores, starting with a letter or underscore, at most 63 characters"
        )
    return schema


def for_schema(text: str, schema: str) -> str:
    """SQL written for the `pgqueue` schema, its `pgqueue.` prefixes pointed at `schema`."""
    if schema != DEFAULT_SCHEMA:
        text = text.replace(f"{DEFAULT_SCHEMA}.", f"{check_schema(schema)}.")
        text = text.replace(
            f"SCHEMA IF NOT EXISTS {DEFAULT_SCHEMA};", f"SCHEMA IF NOT EXISTS {schema};"
        )
    return text


@functools.cache
def sql_file(filename: str, schema: str = DEFAULT_SCHEMA) -> str:
    """The text of one file of `sql/`, its `pgqueue.` prefixes pointed at `schema`."""
    return for_schema((resource_dir("sql") / filename).read_text(encoding="utf-8"), schema)


def parse_blocks(text: str) -> dict[str, str]:
    """Split a file of `-- name: x` blocks into {name: statement}, comments dropped."""
    blocks: dict[str, str] = {}
    parts = _BLOCK_NAME.split(text)
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        lines = [line for line in body.splitlines() if not line.lstrip().startswith("--")]
        statement = "\n".join(lines).strip()
        blocks[name] = statement.removesuffix(";")
    return blocks


#: The files of named queries: the worker's and the CLI's, then the web dashboard's.
QUERY_FILES = ("queries.sql", "dashboard.sql")


@functools.cache
def queries(schema: str = DEFAULT_SCHEMA) -> dict[str, str]:
    """Every named query of the QUERY_FILES of `sql/`, for the given schema."""
    blocks: dict[str, str] = {}
    for filename in QUERY_FILES:
        blocks.update(parse_blocks(sql_file(filename, schema)))
    return blocks


class Channel(enum.StrEnum):
    """The LISTEN/NOTIFY channels, each named "<schema>.<value>" on the server. The SQL of
    `sql/` sends on them under those names ('pgqueue.tasks', ..., the schema rewritten like
    every `pgqueue.` prefix); tests/db/test_sql_functions.py holds the two lists equal."""

    #: New work, and tasks due again (payload: their queue).
    TASKS = "tasks"
    #: Messages to workers (payload: "cancel <task id>").
    CONTROL = "control"
    #: Finished tasks that someone waits for (payload: the task id).
    RESULTS = "results"
    #: Outbox rows committed for the RabbitMQ relay (payload: empty).
    OUTBOX = "outbox"

    def in_schema(self, schema: str = DEFAULT_SCHEMA) -> str:
        """The channel's name on the server for the pgqueue schema `schema`."""
        return f"{check_schema(schema)}.{self.value}"

    def listen(self, schema: str = DEFAULT_SCHEMA) -> str:
        """Its LISTEN statement (a channel is an identifier, never a bound parameter)."""
        return f'LISTEN "{self.in_schema(schema)}"'
