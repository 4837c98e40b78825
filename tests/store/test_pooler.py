"""Through a real PgBouncer in transaction mode (Debian's pgbouncer, 1.18 on Debian 12): the guide's
checklist with `[database] statement_cache = false`, three server connections shared by the
daemon's pool, migrations, and what the statement cache does there when it is left on.

The checklist is the checkout tests themselves (tests/checkout/test_checkout_api.py), collected
here a second time with this module's `gw`: a daemon logged in as its app role (what `gatewayd
migrate --app-role` makes) whose DSN names the pooler, checked on a direct connection afterwards
(the money invariants against the simulator's ledger).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from gatewayd.store import migrate, roles
from gatewayd.store.db import POOLER_HINT
from gatewayd.store.embedded import EmbeddedPostgres
from tests.checkout.test_checkout_api import (  # noqa: F401 - collected again here, on this module's `gw`
    test_card_declined_rolls_back,
    test_card_payment,
    test_cash_payment,
    test_concurrent_duplicates_wait_for_the_first,
    test_insufficient_inventory_charges_nothing,
    test_network_dies_mid_payment,
    test_partial_approval_is_voided,
    test_refunds,
    test_retry_same_key_returns_same_answer,
    test_split_card_and_card,
    test_split_cash_and_card,
    test_terminal_offline_charges_nothing,
    test_totals_after_mixed_run,
    test_void_checkout,
)
from tests.harness import Gateway, card, cash, order, running_gateway
from tests.pooler import POOLED_APP_ROLE, PgBouncer, running_pgbouncer

POOLED = {"database": {"statement_cache": False, "pool_min": 2, "pool_max": 8}}


@pytest.fixture(scope="session")
async def app_role(dsn: str) -> str:
    """The daemon's login role, as `gatewayd migrate --app-role` makes it (no password: the test
    server trusts loopback)."""
    conn = await asyncpg.connect(dsn)
    try:
        await roles.ensure_app_role(conn, POOLED_APP_ROLE, None)
    finally:
        await conn.close()
    return POOLED_APP_ROLE


@pytest.fixture
async def gw(dsn: str, tmp_path: Path, pgbouncer: PgBouncer, app_role: str) -> AsyncIterator[Gateway]:
    """The daemon as its app role on the pooler (statement_cache = false); the test looks on the
    direct DSN, as the owner."""
    daemon_dsn = pgbouncer.dsn(user=app_role)
    async with running_gateway(dsn, tmp_path, daemon_dsn=daemon_dsn, sections=POOLED) as gateway:
        yield gateway
        await gateway.check_invariants()


async def test_concurrent_checkouts_on_one_terminal(gw: Gateway, pgbouncer: PgBouncer) -> None:
    """Twelve checkouts at once, eight of them on lane-1: the lane runs one at a time, every one
    completes, and the daemon's connections (more than three) shared three server connections."""
    bodies = [order(card(1000 + i, "lane-1")) for i in range(8)]
    bodies += [order(cash(500), card(700 + i, f"lane-{2 + i % 3}")) for i in range(4)]
    answers = await asyncio.gather(*(gw.client.checkout(b) for b in bodies))
    assert [a.status for a in answers] == [200] * len(bodies), [a.body for a in answers if a.status != 200]
    assert (await gw.max_concurrency())[gw.tpns["lane-1"]] == 1
    assert len(await gw.ledger()) == len(bodies)
    assert gw.daemon.db is not None and gw.daemon.db.size() > pgbouncer.pool_size
    assert pgbouncer.server_connections(POOLED_APP_ROLE) <= pgbouncer.pool_size
    assert pgbouncer.client_connections(POOLED_APP_ROLE) >= gw.daemon.db.size()
    role = await gw.fetchval(
        "SELECT DISTINCT usename FROM pg_stat_activity WHERE datname = 'gatewayd' AND usename = $1", POOLED_APP_ROLE
    )
    assert role == POOLED_APP_ROLE


async def test_migrate_through_the_pooler(pg_server: EmbeddedPostgres, pgbouncer: PgBouncer) -> None:
    """Two `gatewayd migrate` runs at once through the pooler, on an empty database: every file
    applied once, and no advisory lock left behind on a server connection (the runner's lock is
    transaction-scoped: a session lock taken through the pooler would stay on whichever server
    connection took it, and the next run would wait for it forever)."""
    name = "t_" + uuid.uuid4().hex[:12]
    admin = await asyncpg.connect(pg_server.dsn)
    await admin.execute(f"CREATE DATABASE {name}")
    try:
        pooled = pgbouncer.dsn(database=name)
        first, second = await asyncio.wait_for(asyncio.gather(migrate.apply_dsn(pooled), migrate.apply_dsn(pooled)), 60)
        applied = sorted(m.version for m in first + second)
        assert applied == [m.version for m in migrate.discover()]
        assert await asyncio.wait_for(migrate.apply_dsn(pooled), 30) == []
        direct = await asyncpg.connect(pg_server.dsn.rsplit("/", 1)[0] + "/" + name)
        try:
            versions = [r[0] for r in await direct.fetch("SELECT version FROM schema_migrations ORDER BY version")]
            locks = await direct.fetchval("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'")
        finally:
            await direct.close()
        assert versions == [m.version for m in migrate.discover()]
        assert locks == 0
    finally:
        await admin.execute(f"DROP DATABASE {name} WITH (FORCE)")
        await admin.close()


async def _statement_errors(dsn: str, cache_size: int, rounds: int = 200) -> int:
    """How many of `rounds` pairs of parameterised queries fail, on an asyncpg pool of eight."""
    pool = await asyncpg.create_pool(dsn, min_size=8, max_size=8, statement_cache_size=cache_size)
    failed = 0

    async def one(i: int) -> None:
        nonlocal failed
        try:
            async with pool.acquire() as conn:
                await conn.fetchval(f"SELECT $1::int + {i % 5}", i)
                await conn.fetchval("SELECT pg_backend_pid() + $1", i)
        except (asyncpg.InvalidSQLStatementNameError, asyncpg.DuplicatePreparedStatementError):
            failed += 1

    try:
        await asyncio.gather(*(one(i) for i in range(rounds)))
    finally:
        await pool.close()
    return failed


async def test_statement_cache_on_through_the_pooler(
    dsn: str, pg_server: EmbeddedPostgres, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """What `statement_cache = true` does through PgBouncer 1.18 in transaction mode: asyncpg
    names its prepared statements per connection, PgBouncer runs the next transaction on another
    server connection, and PostgreSQL answers "prepared statement ... does not exist" (or "already
    exists": the name was another client's statement there). With the cache off asyncpg names
    none and parses each statement again in the transaction that runs it.

    In the daemon the statement that met the error did not run, so no money moves: a checkout
    fails before its intent (503 database_unavailable, retry with the same key) or its step is
    retried after it; the log names the fix, and the money invariants hold.
    """
    assert pg_server.port is not None
    with running_pgbouncer(pg_server.port, tmp_path / "pgbouncer", pool_size=3) as bouncer:
        assert await _statement_errors(bouncer.dsn(), cache_size=100) > 0
        assert await _statement_errors(bouncer.dsn(), cache_size=0) == 0

        caplog.set_level(logging.ERROR, logger="gatewayd.store.db")
        cached = {"database": {"statement_cache": True, "pool_min": 4, "pool_max": 8}}
        async with running_gateway(dsn, tmp_path, daemon_dsn=bouncer.dsn(), sections=cached) as gw:
            refused = []
            for _ in range(20):  # the failure is a race between connections: a few rounds show it
                bodies = [order(card(1200 + i, f"lane-{1 + i % 4}"), cash(100)) for i in range(16)]
                answers = await asyncio.gather(*(gw.client.checkout(b) for b in bodies))
                refused += [a for a in answers if a.status != 200]
                if refused:
                    break
            assert refused, "statement_cache = true through PgBouncer in transaction mode went unnoticed"
            for answer in refused:
                assert (answer.status, answer.error_code) in ((503, "database_unavailable"), (504, "outcome_pending"))
            assert any(POOLER_HINT in str((a.body["error"].get("details") or {}).get("reason", "")) for a in refused), [
                a.body for a in refused
            ]
            assert gw.daemon.coordinator is not None
            assert await gw.daemon.coordinator.drain(30) == 0
            await gw.check_invariants()
        assert any(POOLER_HINT in r.getMessage() for r in caplog.records)
