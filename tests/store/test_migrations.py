"""Migrations apply on an empty database, again as a no-op, and concurrently from two processes."""

from __future__ import annotations

import asyncio

import asyncpg

from gatewayd.store import migrate
from tests.procs import run_cli

TABLES = {
    "payment_processors",
    "orders",
    "order_items",
    "inventory",
    "loyalty_accounts",
    "loyalty_ledger",
    "register_sessions",
    "payment_transactions",
    "audit_events",
    "refunds",
    "schema_migrations",
}
FUNCTIONS = {"find_orphaned_payments", "cleanup_stale_pending_orders"}
VIEWS = {
    "payment_success_last_hour",
    "order_completion_last_hour",
    "terminal_health_summary",
    "terminal_success_rate_7d",
    "stuck_orders",
}


async def _catalog(dsn: str) -> tuple[set[str], set[str], set[str]]:
    conn = await asyncpg.connect(dsn)
    try:
        tables = {r[0] for r in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
        functions = {
            r[0] for r in await conn.fetch("SELECT proname FROM pg_proc WHERE pronamespace = 'public'::regnamespace")
        }
        views = {r[0] for r in await conn.fetch("SELECT viewname FROM pg_views WHERE schemaname = 'public'")}
        return tables, functions, views
    finally:
        await conn.close()


async def test_migrate_twice_via_cli(empty_dsn: str) -> None:
    code, out = await run_cli("migrate", "--dsn", empty_dsn)
    assert code == 0, out
    assert "applied 001_schema" in out
    tables, functions, views = await _catalog(empty_dsn)
    assert TABLES <= tables
    assert FUNCTIONS <= functions
    assert VIEWS <= views
    code, out = await run_cli("migrate", "--dsn", empty_dsn)
    assert code == 0, out
    assert "up to date" in out


async def test_migrations_are_rerunnable_sql(empty_dsn: str) -> None:
    """Each file may be applied again by hand without harm (the additive, re-runnable rule)."""
    conn = await asyncpg.connect(empty_dsn)
    try:
        await migrate.apply(conn)
        for m in migrate.discover():
            await conn.execute(m.sql)
        assert await conn.fetchval("SELECT count(*) FROM schema_migrations") == len(migrate.discover())
    finally:
        await conn.close()


async def test_two_processes_migrate_at_once(empty_dsn: str) -> None:
    results = await asyncio.gather(run_cli("migrate", "--dsn", empty_dsn), run_cli("migrate", "--dsn", empty_dsn))
    assert [code for code, _ in results] == [0, 0], results
    outputs = "".join(out for _, out in results)
    assert outputs.count("applied 001_schema") == 1
    conn = await asyncpg.connect(empty_dsn)
    try:
        assert await conn.fetchval("SELECT count(*) FROM schema_migrations") == len(migrate.discover())
    finally:
        await conn.close()


async def test_every_key_starts_with_store_id(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("""
            SELECT c.conrelid::regclass::text AS tbl, c.conname,
                   (SELECT a.attname FROM pg_attribute a
                     WHERE a.attrelid = c.conrelid AND a.attnum = c.conkey[1]) AS first_col
              FROM pg_constraint c
             WHERE c.contype IN ('p', 'u') AND c.connamespace = 'public'::regnamespace
               AND c.conrelid::regclass::text <> 'schema_migrations'""")
        assert rows
        assert {r["tbl"]: r["first_col"] for r in rows if r["first_col"] != "store_id"} == {}
    finally:
        await conn.close()
