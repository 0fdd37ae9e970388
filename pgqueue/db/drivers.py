"""The caller's own connections (psycopg 3, SQLAlchemy on psycopg or asyncpg, asyncpg) as
the driver connection that pgqueue writes on, inside the caller's transaction.

asyncpg takes `$1, $2, ...` where psycopg takes `%(name)s`: its statements are the same
named blocks of `sql/`, their placeholders numbered once per text (`numbered`), and its
connection wears the few methods of psycopg's that the store and the outbox call.
"""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import psycopg

from pgqueue.errors import InvalidTaskArguments

_PLACEHOLDER = re.compile(r"%\((\w+)\)s|%s|%%")


@functools.lru_cache(maxsize=256)
def numbered(query: str) -> tuple[str, tuple[str | int, ...]]:
    """`query` with asyncpg's placeholders, and what fills each: a name of `%(name)s`, or the
    position of a `%s`. A name used twice is one `$n`.

    >>> numbered("SELECT %(a)s, %(b)s, %(a)s")
    ('SELECT $1, $2, $1', ('a', 'b'))
    """
    order: list[str | int] = []
    positional = 0

    def number(match: re.Match[str]) -> str:
        nonlocal positional
        if match.group(0) == "%%":
            return "%"
        key: str | int = match.group(1)
        if key is None:
            key, positional = positional, positional + 1
        if key not in order:
            order.append(key)
        return f"${order.index(key) + 1}"

    return _PLACEHOLDER.sub(number, query), tuple(order)


def _arguments(
    keys: tuple[str | int, ...], params: Mapping[str, Any] | Sequence[Any] | None
) -> list[Any]:
    if params is None:
        return []
    return [params[key] for key in keys]  # type: ignore[index]


class AsyncpgRows:
    """The rows of one statement, read like a psycopg cursor's."""

    def __init__(self, rows: list[Any]) -> None:
        self._rows = [tuple(row) for row in rows]

    async def fetchone(self) -> tuple[Any, ...] | None:
        return self._rows[0] if self._rows else None

    async def fetchall(self) -> list[tuple[Any, ...]]:
        return self._rows


class AsyncpgConnection:
    """An asyncpg connection that runs pgqueue's named blocks (`%(name)s` placeholders).

    >>> conn = AsyncpgConnection(await asyncpg.connect(dsn))
    >>> rows = await conn.execute("SELECT %(x)s::int", {"x": 1})
    """

    def __init__(self, connection: Any) -> None:
        self.connection = connection

    async def execute(
        self, query: str, params: Mapping[str, Any] | Sequence[Any] | None = None
    ) -> AsyncpgRows:
        text, keys = numbered(query)
        return AsyncpgRows(await self.connection.fetch(text, *_arguments(keys, params)))

    def cursor(self) -> AsyncpgConnection:
        return self  # `async with conn.cursor() as cursor: await cursor.executemany(...)`

    async def executemany(self, query: str, params_seq: Iterable[Mapping[str, Any]]) -> None:
        text, keys = numbered(query)
        await self.connection.executemany(text, [_arguments(keys, p) for p in params_seq])

    async def __aenter__(self) -> AsyncpgConnection:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        return None


#: What pgqueue writes on in an async caller's transaction.
AsyncDriverConnection = psycopg.AsyncConnection[Any] | AsyncpgConnection


def sync_driver_connection(connection: Any) -> psycopg.Connection[Any]:
    """The psycopg connection behind a psycopg or SQLAlchemy (Session/Connection) object."""
    if isinstance(connection, psycopg.Connection):
        return connection
    sa_connection = (
        connection.connection() if callable(getattr(connection, "connection", None)) else connection
    )
    raw = getattr(getattr(sa_connection, "connection", None), "driver_connection", None)
    if isinstance(raw, psycopg.Connection):
        return raw
    raise InvalidTaskArguments(
        f"connection must be a psycopg 3 Connection or a SQLAlchemy Session/Connection using the "
        f"postgresql+psycopg driver, not {type(connection).__name__} (with an async "
        "connection, use adelay/aqueue_task)"
    )


def _is_asyncpg(connection: Any) -> bool:
    # By its module, so asyncpg is never imported here: a process without it has none.
    return type(connection).__module__.startswith("asyncpg.")


async def async_driver_connection(connection: Any) -> AsyncDriverConnection:
    """The driver connection behind a psycopg AsyncConnection, an asyncpg connection (or
    pool connection), or a SQLAlchemy AsyncSession/AsyncConnection on either driver."""
    if isinstance(connection, psycopg.AsyncConnection | AsyncpgConnection):
        return connection  # AsyncpgConnection: adapted already (the outbox's store write)
    if _is_asyncpg(connection):
        return AsyncpgConnection(connection)
    if not hasattr(connection, "get_raw_connection") and inspect.iscoroutinefunction(
        getattr(connection, "connection", None)
    ):  # AsyncSession (AsyncConnection.connection raises: never read it)
        connection = await connection.connection()
    if inspect.iscoroutinefunction(getattr(connection, "get_raw_connection", None)):
        raw = (await connection.get_raw_connection()).driver_connection
        if isinstance(raw, psycopg.AsyncConnection):
            return raw
        if _is_asyncpg(raw):
            return AsyncpgConnection(raw)
    raise InvalidTaskArguments(
        "with adelay/aqueue_task, connection must be a psycopg 3 AsyncConnection, an asyncpg "
        "Connection, or a SQLAlchemy AsyncSession/AsyncConnection using postgresql+psycopg or "
        f"postgresql+asyncpg, not {type(connection).__name__}"
    )
