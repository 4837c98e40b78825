"""Migrations apply on an empty database, again as a no-op, and concurrently from two processes;
they are read from the package gatewayd.sql (the repository's sql/), and none found is refused."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

import asyncpg
import pytest

from gatewayd.cli import admin
from gatewayd.errors import PermanentStoreError
from gatewayd.store import migrate
from tests.procs import run_cli

ROOT = Path(__file__).resolve().parents[2]

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


def test_migrations_are_read_from_the_repository_sql_folder() -> None:
    """sql/ is their one home: the package gatewayd.sql is that folder (an editable install here)."""
    files = sorted(p.name for p in (ROOT / "sql").glob("*.sql"))
    assert files, ROOT / "sql"
    assert [f"{m.version:03d}_{m.name}.sql" for m in migrate.discover()] == files
    assert sorted(e.name for e in migrate.sql_dir().iterdir() if e.name.endswith(".sql")) == files


def test_no_migration_files_refused(tmp_path: Path) -> None:
    (tmp_path / "__init__.py").write_text('"""empty"""\n')
    with pytest.raises(PermanentStoreError, match="no migration files"):
        migrate.discover(tmp_path)


def test_gap_refused(tmp_path: Path) -> None:
    (tmp_path / "001_a.sql").write_text("SELECT 1;\n")
    (tmp_path / "003_c.sql").write_text("SELECT 1;\n")
    with pytest.raises(PermanentStoreError, match="without gaps"):
        migrate.discover(tmp_path)


def test_migrations_package_missing_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(migrate, "SQL_PACKAGE", "gatewayd.no_such_sql")
    with pytest.raises(PermanentStoreError, match="not installed"):
        migrate.discover()


def test_migrate_command_refuses_without_migration_files(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Not "database is up to date": a non-zero exit naming the problem, before any database."""
    monkeypatch.setattr(migrate, "sql_dir", lambda: tmp_path)
    code = admin.cmd_migrate(argparse.Namespace(dsn="postgresql://nobody@127.0.0.1:1/none", config=None))
    out = capsys.readouterr()
    assert code == 1
    assert "no migration files" in out.err and "up to date" not in out.out + out.err


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
