"""Connections to PostgreSQL: lazily opened pools, and errors that say which server failed."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
import weakref
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool, ConnectionPool, PoolTimeout

from pgqueue.db.migrated import arevision_on, atranslated, missing, outdated, translated
from pgqueue.db.queries import check_schema, queries
from pgqueue.dsn import describe_dsn, mask_dsn, mask_psycopg_logs, parse_dsn, redact
from pgqueue.errors import DatabaseUnavailable, first_line

if TYPE_CHECKING:
    from pgqueue.settings import Settings

POOL_TIMEOUT_SECONDS = 10.0
CONNECT_TIMEOUT_SECONDS = 5
# A network that drops packets without resetting the connection is noticed in about 25 s
# (TCP ignores these on unix sockets, where a dead server closes the socket anyway).
KEEPALIVES: dict[str, Any] = {
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
}


#: What psycopg and its pool raise when the database is away (down, restarting, unreachable,
#: or no pooled connection free in time) rather than refusing a statement.
DRIVER_UNAVAILABLE: tuple[type[Exception], ...] = (psycopg.OperationalError, PoolTimeout)
#: The same, with pgqueue's own DatabaseUnavailable (what Database's connections raise for
#: them): the errors after which a worker's loops wait and try again.
UNAVAILABLE: tuple[type[Exception], ...] = (*DRIVER_UNAVAILABLE, DatabaseUnavailable)


def unavailable(dsn: str, error: BaseException) -> DatabaseUnavailable:
    reason = redact(first_line(error))
    return DatabaseUnavailable(f"cannot use PostgreSQL at {describe_dsn(dsn)}: {reason}")


#: pgqueue's sessions use UTC, so timestamps come back as datetimes in datetime.timezone.utc
#: whatever the server's TimeZone. That is also the cheap case for psycopg: a zone it must
#: look up ("Etc/UTC", Debian's default) costs about 1 us more per value read or written, 4
#: values per claimed task; 10 of a worker's 44 us per task (docs/performance.md, 15).
#: A pooler in transaction mode keeps it too: PgBouncer tracks TimeZone per client and sets
#: it on whichever server connection runs the client's next transaction.
UTC_SESSION = "SET TimeZone = 'UTC'"
#: Asks the server which backend runs this session (see `behind_pooler`).
BACKEND_PID = "SELECT pg_backend_pid()"


def behind_pooler(conn: psycopg.Connection[Any]) -> bool:
    """Whether a pooler (PgBouncer, pgcat, Supavisor, ...) sits between `conn` and the server.

    A pooler hands each client a cancel key of its own, so the backend pid that libpq got
    at start-up is not the one the server reports. Behind one, the server session can change
    between transactions: no server-side prepared statements, no session state.

    >>> with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres") as conn:
    ...     behind_pooler(conn)
    False
    """
    row = conn.execute(BACKEND_PID).fetchone()
    return row is None or row[0] != conn.info.backend_pid


async def abehind_pooler(conn: psycopg.AsyncConnection[Any]) -> bool:
    """The async twin of `behind_pooler`."""
    row = await (await conn.execute(BACKEND_PID)).fetchone()
    return row is None or row[0] != conn.info.backend_pid


def _configure(conn: psycopg.Connection[Any]) -> None:
    conn.execute(UTC_SESSION)
    if behind_pooler(conn):
        conn.prepare_threshold = None  # its statements would vanish with the server session


async def configure_async(conn: psycopg.AsyncConnection[Any]) -> None:
    """Configure a new pooled connection: UTC, and no prepared statements behind a pooler."""
    await conn.execute(UTC_SESSION)
    if await abehind_pooler(conn):
        conn.prepare_threshold = None


class Database:
    """One PostgreSQL server and pgqueue schema; pools open at first use.

    Pooled connections are in autocommit mode: each pgqueue statement is its own
    transaction unless a caller opens one, which saves the BEGIN/COMMIT round trips.
    `listen_dsn` (PGQUEUE_LISTEN_DSN) is where LISTEN connections go, if not to `dsn`: a
    direct connection to the server when `dsn` goes through a pooler in transaction mode.
    """

    def __init__(
        self,
        dsn: str,
        schema: str = "pgqueue",
        max_connections: int = 10,
        listen_dsn: str | None = None,
    ) -> None:
        parse_dsn(dsn)  # before a pool sees it: its warnings would quote a DSN it cannot parse
        if listen_dsn is not None:
            parse_dsn(listen_dsn)
        mask_psycopg_logs()
        self.dsn = dsn
        self.listen_dsn = listen_dsn or dsn
        self.schema = check_schema(schema)
        self.queries = queries(schema)
        self.max_connections = max_connections
        self._pool: ConnectionPool | None = None
        self._pool_finalizer: weakref.finalize[Any, Any] | None = None
        self._async_pools: dict[asyncio.AbstractEventLoop, AsyncConnectionPool] = {}
        self._async_locks: dict[asyncio.AbstractEventLoop, asyncio.Lock] = {}
        self._pool_closers: dict[asyncio.AbstractEventLoop, asyncio.Task[None]] = {}
        self._lock = threading.Lock()

    def connect_kwargs(self) -> dict[str, Any]:
        return {"autocommit": True, "connect_timeout": CONNECT_TIMEOUT_SECONDS, **KEEPALIVES}

    def pool(self) -> ConnectionPool:
        with self._lock:
            if self._pool is None:
                self._pool = ConnectionPool(
                    self.dsn,
                    min_size=1,
                    max_size=self.max_connections,
                    kwargs=self.connect_kwargs(),
                    configure=_configure,
                    timeout=POOL_TIMEOUT_SECONDS,
                    open=True,
                    name="pgqueue",
                )
                self._pool_finalizer = weakref.finalize(self, _close_abandoned, self._pool)
            return self._pool

    async def async_pool(self) -> AsyncConnectionPool:
        # An async pool belongs to the event loop that opened it; asyncio.run() makes new ones.
        loop = asyncio.get_running_loop()
        pool = self._async_pools.get(loop)
        if pool is not None:
            return pool
        # Two coroutines' first calls must not each open a pool (one would leak).
        async with self._async_locks.setdefault(loop, asyncio.Lock()):
            return self._async_pools.get(loop) or await self._open_async_pool(loop)

    async def _open_async_pool(self, loop: asyncio.AbstractEventLoop) -> AsyncConnectionPool:
        for stale_loop in [old for old in self._async_pools if old.is_closed()]:
            del self._async_pools[stale_loop]
            self._pool_closers.pop(stale_loop, None)
            self._async_locks.pop(stale_loop, None)
        pool = AsyncConnectionPool(
            self.dsn,
            min_size=1,
            max_size=self.max_connections,
            kwargs=self.connect_kwargs(),
            configure=configure_async,
            timeout=POOL_TIMEOUT_SECONDS,
            open=False,
            name="pgqueue-async",
        )
        # Its first connection made before anyone asks for one: a request that found the
        # pool still connecting would start a second connection, which asyncio.run() may
        # cancel at its end ("error connecting in 'pgqueue-async'" on stderr).
        await pool.open(wait=True, timeout=POOL_TIMEOUT_SECONDS)
        self._async_pools[loop] = pool
        self._pool_closers[loop] = loop.create_task(
            _close_when_cancelled(pool), name="pgqueue-async-pool-closer"
        )
        return pool

    @contextlib.contextmanager
    def connection(self) -> Iterator[psycopg.Connection[Any]]:
        """A pooled connection; connection failures become DatabaseUnavailable, statements
        that find no pgqueue schema SchemaMissing (run `pgqueue migrate`)."""
        try:
            with translated(self.dsn, self.schema), self.pool().connection() as conn:
                yield conn
        except DRIVER_UNAVAILABLE as error:
            if not isinstance(error, PoolTimeout):
                # After a server restart every idle pooled connection is dead: drop them
                # all now, so that the caller's one retry gets a fresh connection.
                with contextlib.suppress(Exception):
                    self.pool().check()
            raise unavailable(self.dsn, error) from error

    @contextlib.asynccontextmanager
    async def async_connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        pool: AsyncConnectionPool | None = None
        try:
            pool = await self.async_pool()
            async with atranslated(self.dsn, self.schema), pool.connection() as conn:
                yield conn
        except DRIVER_UNAVAILABLE as error:
            if pool is not None and not isinstance(error, PoolTimeout):
                with contextlib.suppress(Exception):
                    await pool.check()
            raise unavailable(self.dsn, error) from error

    def fetch_one(self, query: str, params: dict[str, Any]) -> dict[str, Any] | None:
        """The first row of a named query (see fetch_all), or None."""
        rows = self.fetch_all(query, params)
        return rows[0] if rows else None

    async def afetch_one(self, query: str, params: dict[str, Any]) -> dict[str, Any] | None:
        rows = await self.afetch_all(query, params)
        return rows[0] if rows else None

    def fetch_all(self, query: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        """Run a named query once more on a fresh connection if the pooled one was stale."""
        for attempt in (1, 2):
            try:
                with self.connection() as conn, conn.cursor(row_factory=dict_row) as cursor:
                    cursor.execute(self.queries[query], params)
                    return cursor.fetchall()
            except DatabaseUnavailable:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    async def afetch_all(self, query: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        for attempt in (1, 2):
            try:
                async with self.async_connection() as conn:
                    cursor = conn.cursor(row_factory=dict_row)
                    await cursor.execute(self.queries[query], params)
                    return await cursor.fetchall()
            except DatabaseUnavailable:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    async def check_migrated(self) -> None:
        """SchemaMissing (run `pgqueue migrate`) if the database has no pgqueue schema, or
        one at an older revision than this pgqueue's; a worker asks once, at its start."""
        async with self.async_connection() as conn:
            revision = await arevision_on(conn, self.schema)
        if outdated(revision):
            raise missing(self.dsn, self.schema, revision)

    def close(self) -> None:
        with self._lock:
            if self._pool_finalizer is not None:
                self._pool_finalizer.detach()
                self._pool_finalizer = None
            if self._pool is not None:
                self._pool.close()
                self._pool = None

    async def aclose(self) -> None:
        loop = asyncio.get_running_loop()
        pool = self._async_pools.pop(loop, None)
        closer = self._pool_closers.pop(loop, None)
        if closer is not None:
            closer.cancel()
        if pool is not None:
            await pool.close()


def _close_abandoned(pool: ConnectionPool) -> None:
    """Close the pool of a Database that was dropped, or is still open at exit, unclosed.

    Left to psycopg_pool, the pool (a reference cycle with its connections) is closed by
    its __del__ in whichever thread the garbage collector runs, often one of the pool's
    own, which cannot join itself ("Exception ignored in: ConnectionPool.__del__ ...
    cannot join current thread"). This runs when the Database goes (or at exit, in the
    main thread) and closes the pool from a thread that is not one of the pool's.
    """
    if threading.current_thread() is threading.main_thread():
        pool.close()
    else:
        threading.Thread(target=pool.close, name="pgqueue-pool-closer", daemon=True).start()


async def _close_when_cancelled(pool: AsyncConnectionPool) -> None:
    """Close `pool` when the event loop shuts down.

    asyncio.run() cancels every task left at its end. psycopg_pool's maintenance workers
    swallow a cancellation that arrives while they run a task (adding a connection, say)
    and then wait on their queue forever, so a script that only did `await task.adelay()`
    would hang at exit. This task is cancelled with them and closes the pool, whose stop
    messages end the workers.
    """
    try:
        await asyncio.Event().wait()
    finally:
        with contextlib.suppress(Exception):
            await pool.close(timeout=2.0)


_printed_embedded: set[str] = set()


def resolve_dsn(settings: Settings) -> str:
    """The configured DSN, else the embedded server's (started on first use)."""
    if settings.dsn:
        return settings.dsn
    from pgqueue.contrib.embedded import ensure_server

    dsn = ensure_server(settings.data_dir)
    if dsn not in _printed_embedded:
        _printed_embedded.add(dsn)
        print(
            f"pgqueue: no database configured (PGQUEUE_DSN); using the embedded PostgreSQL "
            f"in {settings.data_dir}: psql '{mask_dsn(dsn)}'",
            file=sys.stderr,
        )
    return dsn


def check_reachable(dsn: str) -> None:
    """Connect once; DatabaseUnavailable (one line naming the server) if that fails."""
    parse_dsn(dsn)
    try:
        with psycopg.connect(dsn, connect_timeout=CONNECT_TIMEOUT_SECONDS):
            pass
    except psycopg.Error as error:
        raise unavailable(dsn, error) from error


def database_from_settings(settings: Settings) -> Database:
    return Database(
        resolve_dsn(settings), schema=settings.schema_name, listen_dsn=settings.listen_dsn
    )
