"""The asyncpg pool: lifecycle, error classes decided by exception type, and bounded retries."""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import asyncpg
import msgspec

from gatewayd.errors import PermanentStoreError, StoreError, TransientStoreError
from gatewayd.retry import STATEMENT_BACKOFF, backoff_s

log = logging.getLogger(__name__)
T = TypeVar("T")

# Errors after which the same work may succeed: the server asked us to retry (serialization,
# deadlock), is restarting, or the connection broke. Decided by class, never by message text.
_TRANSIENT: tuple[type[BaseException], ...] = (
    asyncpg.SerializationError,
    asyncpg.DeadlockDetectedError,
    asyncpg.LockNotAvailableError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.TooManyConnectionsError,
    asyncpg.ConnectionDoesNotExistError,
    asyncpg.ConnectionFailureError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,  # "connection is closed", "another operation is in progress" after a drop
    asyncpg.QueryCanceledError,  # statement timeout
    ConnectionError,
    OSError,
    TimeoutError,
)


# Client-side errors that no retry can fix (they would otherwise look like InterfaceError):
# among them a DSN asyncpg cannot use (a CA file that is not there, an unknown sslmode).
_PERMANENT: tuple[type[BaseException], ...] = (
    asyncpg.exceptions.UnsupportedClientFeatureError,
    asyncpg.exceptions.InternalClientError,
    asyncpg.exceptions.DataError,
    asyncpg.exceptions.ClientConfigurationError,
)

# A named prepared statement missing, or already there, on the server connection: the statement
# did not run. With asyncpg's statement cache off gatewayd names none, so these come from a
# transaction-mode pooler handing the next transaction to another server connection.
_POOLED_STATEMENT: tuple[type[BaseException], ...] = (
    asyncpg.exceptions.InvalidSQLStatementNameError,
    asyncpg.exceptions.DuplicatePreparedStatementError,
)
POOLER_HINT = (
    "a transaction-mode pooler (PgBouncer pool_mode = transaction, Supabase's pooler on port 6543)"
    " sits in front of PostgreSQL: set [database] statement_cache = false"
)


def classify(exc: BaseException) -> StoreError:
    """The StoreError class that says whether retrying `exc` can help."""
    if isinstance(exc, StoreError):
        return exc
    if isinstance(exc, ssl.SSLCertVerificationError):
        why = (exc.verify_message or str(exc)).rstrip(".")
        return PermanentStoreError(
            f"the database server's certificate was refused ({why}): the CA in"
            " [database] ssl_root_cert (or the DSN's sslrootcert) must have signed it, and the DSN's"
            " host must be a name in it"
        )
    if isinstance(exc, _POOLED_STATEMENT):
        said = getattr(exc, "message", None) or str(exc).splitlines()[0]
        return TransientStoreError(f"{said} ({type(exc).__name__}): {POOLER_HINT}")
    if isinstance(exc, _PERMANENT):
        return PermanentStoreError(f"database client error: {type(exc).__name__}: {exc}")
    if isinstance(exc, _TRANSIENT):
        return TransientStoreError(f"database unavailable: {type(exc).__name__}: {exc}")
    return PermanentStoreError(f"database refused: {type(exc).__name__}: {exc}")


async def _init_connection(conn: asyncpg.Connection) -> None:
    """json and jsonb in and out as Python values, through msgspec.

    Binary format, so that rows holding jsonb can also be decoded inside composite values
    (a table's row type in an array), which asyncpg only supports in binary.
    """
    await conn.set_type_codec(
        "json", schema="pg_catalog", format="binary", encoder=msgspec.json.encode, decoder=msgspec.json.decode
    )
    await conn.set_type_codec(
        "jsonb", schema="pg_catalog", format="binary", encoder=_encode_jsonb, decoder=_decode_jsonb
    )


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Release without asyncpg's reset query (a round trip on every release).

    asyncpg still rolls back a transaction left open before calling this; gatewayd sets no session
    state on pooled connections (no SET, LISTEN, temporary tables, cursors, or session advisory
    locks: the migration runner's lock is transaction-scoped), so there is nothing else to reset,
    and a transaction-mode pooler may hand each transaction to another server connection.
    """


def _closed(conn: asyncpg.Connection) -> bool:
    """Whether the connection is gone; a lost one may already be back with the pool, which then
    refuses every call on it (InterfaceError), `is_closed()` included."""
    try:
        return bool(conn.is_closed())
    except asyncpg.InterfaceError:
        return True


_JSONB_VERSION = b"\x01"


def _encode_jsonb(value: Any) -> bytes:
    return _JSONB_VERSION + msgspec.json.encode(value)


def _decode_jsonb(data: bytes) -> Any:
    return msgspec.json.decode(data[1:])


class Database:
    """A pool to one PostgreSQL database; every statement goes through here."""

    def __init__(
        self,
        dsn: str,
        *,
        statement_cache: bool = True,
        pool_min: int = 2,
        pool_max: int = 10,
        connect_timeout_s: float = 10.0,
        command_timeout_s: float = 30.0,
    ) -> None:
        self._dsn = dsn
        self._statement_cache = statement_cache
        self._pool_min = pool_min
        self._pool_max = pool_max
        self._connect_timeout_s = connect_timeout_s
        self._command_timeout_s = command_timeout_s
        self._pool: asyncpg.Pool | None = None
        self.errors = 0
        self.up = False
        self._pooler_said = False

    async def open(self) -> None:
        """Create the pool; raises TransientStoreError when the server cannot be reached."""
        try:
            self._pool = await asyncpg.create_pool(
                self._dsn,
                min_size=self._pool_min,
                max_size=self._pool_max,
                timeout=self._connect_timeout_s,
                command_timeout=self._command_timeout_s,
                # Off behind a transaction-mode pooler: asyncpg then names no prepared statement
                # and parses each statement again right before it runs (one more round trip).
                statement_cache_size=100 if self._statement_cache else 0,
                max_inactive_connection_lifetime=300,
                init=_init_connection,
                reset=_keep_session,
            )
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError):
                raise
            raise classify(exc) from exc
        self.up = True

    async def close(self, timeout_s: float = 5.0) -> None:
        """Close gracefully, then abort whatever did not finish in time."""
        if self._pool is None:
            return
        pool, self._pool = self._pool, None
        try:
            await asyncio.wait_for(pool.close(), timeout_s)
        except TimeoutError:
            pool.terminate()

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise TransientStoreError("database pool is not open")
        return self._pool

    def in_use(self) -> int:
        pool = self._pool
        if pool is None:
            return 0
        return int(pool.get_size() - pool.get_idle_size())

    def size(self) -> int:
        return 0 if self._pool is None else self._pool.get_size()

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection; driver errors come out as StoreError subclasses."""
        try:
            async with self.pool.acquire() as conn:
                try:
                    yield conn
                except Exception as exc:
                    # Whatever the error says, a connection that is now closed was lost (a backend
                    # terminated behind a proxy surfaces as a client error): the pool drops it and
                    # the same work on another connection may well succeed.
                    if not isinstance(classify(exc), TransientStoreError) and _closed(conn):
                        raise TransientStoreError(f"database connection lost: {type(exc).__name__}: {exc}") from exc
                    raise
            self.up = True
        except (asyncio.CancelledError, GeneratorExit):
            raise
        except BaseException as exc:
            error = classify(exc)
            self.errors += 1
            if isinstance(exc, _POOLED_STATEMENT):
                # The server answered: it is up, the configuration is wrong. Said once, loudly.
                if not self._pooler_said:
                    self._pooler_said = True
                    log.error("%s", error.message)
            elif isinstance(error, TransientStoreError):
                self.up = False
            if error is exc:
                raise
            raise error from exc

    async def run(
        self,
        work: Callable[[asyncpg.Connection], Awaitable[T]],
        *,
        attempts: int = 5,
        what: str = "database work",
    ) -> T:
        """Run `work` on a connection, retrying transient failures (the work must be idempotent)."""
        for attempt in range(attempts):
            try:
                async with self.connection() as conn:
                    return await work(conn)
            except TransientStoreError as exc:
                if attempt + 1 >= attempts:
                    raise
                delay = backoff_s(attempt, *STATEMENT_BACKOFF)
                log.info("%s: %s; retrying in %.2fs", what, exc.message, delay)
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    async def fetchval(self, query: str, *args: Any) -> Any:
        async with self.connection() as conn:
            return await conn.fetchval(query, *args)

    async def fetch(self, query: str, *args: Any) -> list[asyncpg.Record]:
        async with self.connection() as conn:
            return list(await conn.fetch(query, *args))

    async def execute(self, query: str, *args: Any) -> str:
        async with self.connection() as conn:
            return str(await conn.execute(query, *args))

    async def ping(self) -> bool:
        """True when a trivial query answers."""
        try:
            await asyncio.wait_for(self.fetchval("SELECT 1"), 5.0)
        except (StoreError, TimeoutError):
            self.up = False
            return False
        self.up = True
        return True
