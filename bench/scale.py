"""One daemon holding 1,000 and 10,000 simulated terminals: resident memory per terminal, the time of
one full health sweep, and idle CPU."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncpg

from bench import env

GOAL_KIB_PER_TERMINAL = 20.0
GOAL_SWEEP_10K_S = 5.0
GOAL_IDLE_CPU_PCT = 5.0


async def _checks(dsn: str, store_id: str) -> tuple[int, Any, Any]:
    conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow(
            "SELECT count(last_health_check) n, min(last_health_check) lo, max(last_health_check) hi"
            " FROM payment_processors WHERE store_id = $1 AND is_active",
            store_id,
        )
        return row["n"], row["lo"], row["hi"]
    finally:
        await conn.close()


async def one(n: int, interval_s: float, idle_s: float) -> dict[str, Any]:
    async with env.world(n, health_interval_s=interval_s) as (server, store, daemon, _sim):
        ready_s = time.monotonic()
        # sweep 1 starts at start-up; wait until every terminal has been checked once
        while True:
            count, lo, hi = await _checks(server.dsn, store.store_id)
            if count >= n:
                break
            await asyncio.sleep(0.1)
        first = (hi - lo).total_seconds()
        # sweep 2: every check newer than the first sweep's last one
        prev_hi = hi
        while True:
            count, lo, hi = await _checks(server.dsn, store.store_id)
            if count >= n and lo > prev_hi:
                break
            await asyncio.sleep(0.1)
        second = (hi - lo).total_seconds()
        rss = env.rss_bytes(daemon.pid)
        c0, t0 = env.cpu_seconds(daemon.pid), time.monotonic()
        await asyncio.sleep(idle_s)
        idle_pct = (env.cpu_seconds(daemon.pid) - c0) / (time.monotonic() - t0) * 100
        del ready_s
        return {
            "terminals": n,
            "rss_mib": rss / 2**20,
            "rss_bytes": rss,
            "sweep1_s": first,
            "sweep_s": second,
            "idle_cpu_pct": idle_pct,
            "idle_window_s": idle_s,
            "health_interval_s": interval_s,
        }


async def run(quick: bool) -> dict[str, Any]:
    # The idle goal is for 10,000 terminals at the default health interval (30 s): --quick measures
    # it too, over one interval instead of two.
    sizes = [1, 1000, 10000]
    interval = 30.0
    idle = 30.0 if quick else 60.0
    rows = []
    for n in sizes:
        row = await one(n, interval, idle)
        rows.append(row)
        print(
            f"  {n:>6} terminals: rss {row['rss_mib']:.1f} MiB  sweep {row['sweep_s']:.2f}s"
            f" (first {row['sweep1_s']:.2f}s)  idle cpu {row['idle_cpu_pct']:.2f}%",
            flush=True,
        )
    base = rows[0]["rss_bytes"]
    for row in rows[1:]:
        row["kib_per_terminal"] = (row["rss_bytes"] - base) / (row["terminals"] - 1) / 1024
    return {
        "benchmark": "scale",
        "rows": rows,
        "goal_kib_per_terminal": GOAL_KIB_PER_TERMINAL,
        "goal_sweep_10k_s": GOAL_SWEEP_10K_S,
        "goal_idle_cpu_pct": GOAL_IDLE_CPU_PCT,
        "note": "sweep = spread of last_health_check across terminals in the 2nd sweep; idle CPU over a"
        " window that includes health sweeps at the configured interval",
    }


def table(r: dict[str, Any]) -> list[list[str]]:
    out = [["terminals", "RSS MiB", "KiB/terminal", "goal", "sweep s", "goal", "idle CPU %", "goal"]]
    for row in r["rows"]:
        kib = row.get("kib_per_terminal")
        out.append(
            [
                str(row["terminals"]),
                f"{row['rss_mib']:.1f}",
                "-" if kib is None else f"{kib:.1f}",
                f"<= {GOAL_KIB_PER_TERMINAL:.0f}",
                f"{row['sweep_s']:.2f}",
                f"<= {GOAL_SWEEP_10K_S:.0f} (10k)",
                f"{row['idle_cpu_pct']:.2f}",
                f"< {GOAL_IDLE_CPU_PCT:.0f}",
            ]
        )
    return out


def figures(r: dict[str, Any]) -> list[tuple[str, str, str, bool | None]]:
    out: list[tuple[str, str, str, bool | None]] = []
    for row in r["rows"][1:]:
        n = row["terminals"]
        kib = row["kib_per_terminal"]
        out.append(
            (
                f"memory per terminal at {n:,} terminals, KiB",
                f"{kib:.1f}",
                f"<= {GOAL_KIB_PER_TERMINAL:.0f}",
                kib <= GOAL_KIB_PER_TERMINAL,
            )
        )
        big = n >= 10000
        out.append(
            (
                f"health sweep of {n:,} terminals, s",
                f"{row['sweep_s']:.2f}",
                f"<= {GOAL_SWEEP_10K_S:.0f}" if big else "",
                row["sweep_s"] <= GOAL_SWEEP_10K_S if big else None,
            )
        )
        out.append(
            (
                f"idle CPU at {n:,} terminals (health every {row['health_interval_s']:.0f} s), % of a core",
                f"{row['idle_cpu_pct']:.2f}",
                f"< {GOAL_IDLE_CPU_PCT:.0f}" if big else "",
                row["idle_cpu_pct"] < GOAL_IDLE_CPU_PCT if big else None,
            )
        )
    return out
