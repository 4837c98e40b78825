"""The fake PostgreSQL server: latency, faults and outages around the in-memory tables.

The store classes call the REAL `gatewayd.store.db.Database.run`/`connection` (retry loop,
error classification, backoff), whose pool is replaced by this fake. A statement takes
virtual time, then is applied atomically, then its answer travels back; the seed decides
whether the connection drops before the change is applied (nothing happened), after it
(applied, the acknowledgement lost), or whether the server asks for a retry (serialization
failure / deadlock), and when the server is stopped for a while. The errors are the real
asyncpg/OS exception classes, so `classify()` is exercised as in production.

A statement issued by a process that has been killed never reaches the tables: a crash is
`kill -9`, nothing of the dead process runs on.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import asyncpg

from gatewayd.store.db import Database
from tests.sim.determinism import vnow
from tests.sim.faults import Coverage, StoreFaultRates
from tests.sim.loop import OWNER

if TYPE_CHECKING:
    from tests.sim.tables import Tables

READS = frozenset(
    {
        "find_key",
        "catalog",
        "receipt_lines",
        "load",
        "tender",
        "claim_uncaptured",
        "unresolved_refunds",
        "orphans",
        "unresolved",
        "open_on_terminal",
        "last_settled",
        "half_voided",
        "captures_pending",
        "settled_orphans",
    }
)

StepHook = Callable[[str, tuple[Any, ...]], None]
History = tuple[str, tuple[Any, ...], dict[str, Any], Any, "dict[Any, bool] | None"]


class FakeServer:
    """One PostgreSQL server holding one store's tables; survives daemon crashes."""

    def __init__(
        self, tables: Tables, rng: random.Random, rates: StoreFaultRates, coverage: Coverage, trace: Callable[..., None]
    ) -> None:
        self.tables = tables
        self.rng = rng
        self.rates = rates
        self.coverage = coverage
        self.trace = trace
        self.down_until = -1.0
        # Every write, in order: (name, args, kwargs, answer, leases) where `leases` says, for every
        # order with a lease owner, whether its lease was live when the statement ran (recorded
        # only with `record_leases`: the differential replay runs on another clock).
        self.history: list[History] = []
        self.record_leases = False
        self.on_step: StepHook | None = None
        # The lease fence, checked independently of the SQL mirror (tests/sim/invariants.py).
        self.on_fenced: Callable[[str, tuple[Any, ...], dict[str, Any], datetime], Callable[[], None] | None] | None = (
            None
        )
        self._last_now: datetime | None = None
        self.statements = 0

    def now(self) -> datetime:
        """now() of a transaction: the virtual clock, strictly increasing (like PostgreSQL's)."""
        now = vnow()
        if self._last_now is not None and now <= self._last_now:
            now = self._last_now + timedelta(microseconds=1)
        self._last_now = now
        return now

    def down(self) -> bool:
        return asyncio.get_running_loop().time() < self.down_until

    def stop_for(self, seconds: float) -> None:
        """pg_ctl stop -m immediate, back after `seconds`."""
        self.down_until = max(self.down_until, asyncio.get_running_loop().time() + seconds)
        self.coverage.hit("db.outage")
        self.trace("db", "outage", round(seconds, 3))

    async def _latency(self) -> None:
        if self.rates.slow and self.rng.random() < self.rates.slow:
            await asyncio.sleep(self.rng.uniform(0.2, 3.0))  # waiting on a row lock
        else:
            await asyncio.sleep(self.rng.uniform(0.0005, 0.004))

    async def execute(
        self, name: str, apply: Callable[[datetime], Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        """One statement (or server-side function) of `name`, applied by `apply(now)`."""
        owner = OWNER.get()
        await _thawed(owner)  # a stalled daemon sends nothing until it wakes up
        await self._latency()
        write = name not in READS
        if self.down():
            raise asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation")
        roll = self.rng.random()
        if write and roll < self.rates.serialization:
            self.coverage.hit("db.serialization")
            self.trace("db", name, "serialization_failure")
            raise self.rng.choice(
                (
                    asyncpg.SerializationError("could not serialize access"),
                    asyncpg.DeadlockDetectedError("deadlock detected"),
                )
            )
        roll = self.rng.random()
        if roll < self.rates.drop_before:
            self.coverage.hit("db.drop_before_commit")
            self.coverage.hit("db_reset")
            self.trace("db", name, "dropped_before_commit")
            raise self.rng.choice(
                (
                    asyncpg.ConnectionDoesNotExistError("connection was closed"),
                    ConnectionResetError("Connection reset by peer"),
                )
            )
        if owner is not None and not getattr(owner, "alive", True):
            raise asyncio.CancelledError()  # kill -9: the dead process sends nothing more
        self.statements += 1
        now = self.now()
        leases = self.tables.lease_live(now) if write and self.record_leases else None
        fenced = self.on_fenced(name, args, kwargs, now) if write and self.on_fenced is not None else None
        result = apply(now)
        if fenced is not None:
            fenced()
        if write:
            self.history.append((name, args, kwargs, result, leases))
            self.trace("db", name, _short(args), _short(result))
            if self.on_step is not None:
                self.on_step(name, args)
        dropped_after = write and self.rng.random() < self.rates.drop_after
        await asyncio.sleep(self.rng.uniform(0.0002, 0.002))
        if dropped_after:
            self.coverage.hit("db.drop_after_commit")
            self.coverage.hit("lost_commit_ack")
            self.trace("db", name, "dropped_after_commit")
            raise asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation")
        await _thawed(owner)  # stalled between the commit and reading its answer
        return result


async def _thawed(owner: Any) -> None:
    wait = getattr(owner, "thawed", None)
    if wait is not None:
        await wait()


def _short(value: Any) -> Any:
    """A compact, deterministic rendering for the trace."""
    if isinstance(value, dict):
        return {k: _short(v) for k, v in value.items() if k not in ("lines", "tenders", "raw", "audit")}
    if isinstance(value, (set, frozenset)):
        return sorted(_short(v) for v in value)[:6]
    if isinstance(value, (list, tuple)):
        return [_short(v) for v in value][:6]
    if hasattr(value, "hex") and not isinstance(value, (str, bytes, float)):
        return str(value)[:8]
    return value


class FakeConnection:
    """What a store's `work(conn)` receives: `conn.call(name, apply, *args)` runs one statement."""

    def __init__(self, server: FakeServer) -> None:
        self.server = server

    async def call(self, name: str, apply: Callable[[datetime], Any], *args: Any, **kwargs: Any) -> Any:
        return await self.server.execute(name, apply, args, kwargs)

    def is_closed(self) -> bool:
        """The fake raises connection losses as their own (transient) exception classes."""
        return False


class _Acquire:
    def __init__(self, server: FakeServer) -> None:
        self.server = server

    async def __aenter__(self) -> FakeConnection:
        await asyncio.sleep(0)
        if self.server.down():
            raise asyncpg.CannotConnectNowError("the database system is shutting down")
        return FakeConnection(self.server)

    async def __aexit__(self, *exc: object) -> None:
        return None


class FakePool:
    def __init__(self, server: FakeServer) -> None:
        self.server = server

    def acquire(self) -> _Acquire:
        return _Acquire(self.server)

    def get_size(self) -> int:
        return 1

    def get_idle_size(self) -> int:
        return 1


class SimDatabase(Database):
    """gatewayd's Database (its retry loop and error classes) over the fake server."""

    def __init__(self, server: FakeServer) -> None:
        super().__init__("postgresql://sim/sim")
        self._pool = FakePool(server)  # type: ignore[assignment]
        self.up = True

    async def open(self) -> None:
        return None

    async def close(self, timeout_s: float = 5.0) -> None:
        return None

    @asynccontextmanager
    async def conn(self) -> AsyncIterator[FakeConnection]:
        """A single attempt, like Database.fetch/execute (the maintenance queries)."""
        async with self.connection() as c:
            yield c  # type: ignore[misc]
