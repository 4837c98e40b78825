"""Where PostgreSQL's CPU per checkout goes: the throughput benchmark's load at 8 clients on a
database of its own, measured as shipped and then with pieces taken away one after another
(secondary indexes, the audit rows' WAL, durable commits).

The variants change only that scratch database, which is dropped at the end; the last one
(`synchronous_commit = off`) is there to attribute the cost of durable commits, never a setting to
run gatewayd with. No goal: this says what the throughput ratio is made of.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from typing import Any

import asyncpg

from bench import env
from bench.throughput import drive

CLIENTS = 8
DATABASE = "gatewayd_dbcost"
# (what, statements on the scratch database, whether the daemon reconnects afterwards)
VARIANTS: list[tuple[str, list[str], bool]] = [
    ("as shipped", [], False),
    ("as shipped, again (the spread between two runs)", [], False),
    (
        "without orders_created, payment_transactions_created, orders_open_by_status",
        [
            "DROP INDEX orders_created",
            "DROP INDEX payment_transactions_created",
            "DROP INDEX orders_open_by_status",
        ],
        False,
    ),
    (
        "and without audit_events_order, payment_transactions_unresolved, orders_not_completed",
        [
            "DROP INDEX audit_events_order",
            "DROP INDEX payment_transactions_unresolved",
            "DROP INDEX orders_not_completed",
        ],
        False,
    ),
    ("and audit_events unlogged (its rows written without WAL)", ["ALTER TABLE audit_events SET UNLOGGED"], False),
    (
        "and synchronous_commit = off (attribution only)",
        [f"ALTER DATABASE {DATABASE} SET synchronous_commit = off"],
        True,
    ),
]


def _psql(server: Any, sql: str) -> None:
    psql = str(server.pg_tool("psql"))
    base = ["-h", "127.0.0.1", "-p", str(server.port), "-U", "postgres", "-d", "postgres"]
    subprocess.run([psql, *base, "-qc", sql], check=True, capture_output=True)


async def _execute(dsn: str, statements: list[str]) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        for sql in statements:
            await conn.execute(sql)
    finally:
        await conn.close()


async def run(quick: bool) -> dict[str, Any]:
    seconds = 5.0 if quick else 10.0
    server = env.postgres()
    await asyncio.to_thread(_psql, server, f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
    await asyncio.to_thread(_psql, server, f"CREATE DATABASE {DATABASE}")
    dsn = server.dsn.rsplit("/", 1)[0] + f"/{DATABASE}"
    await env.migrate(dsn)
    tmp = env.WORK / "run"
    tmp.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    try:
        async with env.simulator() as url:
            store = env.Store(dsn, url, tmp, 64)
            store.write_config()
            await store.seed({f"SKU-{i}": 10**9 for i in range(64)})
            daemon = await env.start_daemon(store)
            try:
                postmaster = env.postmaster_pid()
                # A first window to warm the caches and the fresh tables' statistics, not counted.
                await drive(store.socket, CLIENTS, store.terminal_ids(), 1.0, seconds)
                await asyncio.to_thread(env.vacuum, server, DATABASE)
                for what, statements, reconnect in VARIANTS:
                    await _execute(dsn, statements)
                    if reconnect:
                        await daemon.stop()
                        daemon = await env.start_daemon(store)
                    pg0, daemon0 = env.tree_cpu_seconds(postmaster), env.cpu_seconds(daemon.pid)
                    t0 = time.monotonic()
                    gw = await drive(store.socket, CLIENTS, store.terminal_ids(), 1.0, seconds)
                    per = max(1, gw["all_checkouts"])
                    row = {
                        "variant": what,
                        "checkouts_per_s": gw["checkouts_per_s"],
                        "p50_ms": gw["p50_ms"],
                        "non_200": gw["non_200"],
                        "postgres_cpu_ms_per_checkout": (env.tree_cpu_seconds(postmaster) - pg0) / per * 1000,
                        "daemon_cpu_ms_per_checkout": (env.cpu_seconds(daemon.pid) - daemon0) / per * 1000,
                        "window_s": time.monotonic() - t0,
                    }
                    rows.append(row)
                    print(
                        f"  {what}: {row['checkouts_per_s']:.0f}/s, PostgreSQL"
                        f" {row['postgres_cpu_ms_per_checkout']:.3f} ms per checkout",
                        flush=True,
                    )
                    await asyncio.to_thread(env.vacuum, server, DATABASE)
            finally:
                await daemon.stop()
    finally:
        await asyncio.to_thread(_psql, server, f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
    return {"benchmark": "dbcost", "clients": CLIENTS, "seconds": seconds, "rows": rows}


def table(result: dict[str, Any]) -> list[list[str]]:
    out = [["variant (each after the one above)", "checkouts/s", "PostgreSQL CPU ms/checkout", "daemon", "non-200"]]
    for r in result["rows"]:
        out.append(
            [
                r["variant"],
                f"{r['checkouts_per_s']:.0f}",
                f"{r['postgres_cpu_ms_per_checkout']:.3f}",
                f"{r['daemon_cpu_ms_per_checkout']:.3f}",
                str(r["non_200"]),
            ]
        )
    return out
