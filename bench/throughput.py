"""Checkouts/s at 1, 8, 32 and 64 POS clients, beside pgbench on the same server with the same clients.

Two durable commits per checkout are the floor (the intent, then the outcome), so the limit for
gatewayd is half of what pgbench's TPC-B-like transaction (one commit each) achieves.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

from bench import env
from bench.checkouts import body, pick

GOAL_RATIO = 0.8
PGBENCH_SCALE = 64  # pgbench recommends scale >= clients; at scale 1 its branches row serialises everything


async def drive(
    socket: str, clients: int, terminals: list[str], warmup_s: float, seconds: float, seed: int = 1
) -> dict[str, Any]:
    """`clients` POS loops, each its own keep-alive connection; count what finishes in the window."""
    conns = [await env.HttpConn.open(socket) for _ in range(clients)]
    start = time.perf_counter() + warmup_s
    end = start + seconds
    done: list[tuple[float, float, str, int]] = []

    async def pos(i: int) -> None:
        rng = random.Random(seed * 1000 + i)
        conn = conns[i]
        term = terminals[i % len(terminals)]
        while True:
            kind = pick(rng)
            t0 = time.perf_counter()
            if t0 >= end:
                return
            status, _ = await conn.request("POST", "/v1/checkouts", body(kind, term, f"SKU-{i % 64}", rng))
            done.append((t0, time.perf_counter(), kind, status))

    try:
        await asyncio.gather(*(pos(i) for i in range(clients)))
    finally:
        for c in conns:
            c.close()
    window = [d for d in done if start <= d[1] < end]
    lat = [(d[1] - d[0]) * 1000 for d in window]
    bad = [d for d in done if d[3] != 200]
    return {
        "clients": clients,
        "checkouts": len(window),
        "seconds": seconds,
        "checkouts_per_s": len(window) / seconds,
        "p50_ms": env.percentile(lat, 50),
        "p99_ms": env.percentile(lat, 99),
        "non_200": len(bad),
        "by_kind": {k: sum(1 for d in window if d[2] == k) for k in ("cash", "card", "split")},
    }


async def run(quick: bool) -> dict[str, Any]:
    levels = [1, 8, 32, 64]
    seconds = 5.0 if quick else 15.0
    warmup = 1.0 if quick else 3.0
    rows = []
    async with env.world(64) as (server, store, daemon, _sim):
        for clients in levels:
            pg = await asyncio.to_thread(env.pgbench, server, clients, seconds, PGBENCH_SCALE)
            cpu0 = env.cpu_seconds(daemon.pid)
            t0 = time.monotonic()
            gw = await drive(store.socket, clients, store.terminal_ids(), warmup, seconds)
            daemon_cpu = (env.cpu_seconds(daemon.pid) - cpu0) / (time.monotonic() - t0)
            limit = pg["tps"] / 2
            ratio = gw["checkouts_per_s"] / limit
            rows.append(
                {
                    **gw,
                    "pgbench_tps": pg["tps"],
                    "limit_checkouts_per_s": limit,
                    "ratio": ratio,
                    "goal_ratio": GOAL_RATIO,
                    "met": ratio >= GOAL_RATIO,
                    "daemon_cpu_pct": round(daemon_cpu * 100, 1),
                }
            )
            print(
                f"  {clients:>3} clients: {gw['checkouts_per_s']:8.1f} checkouts/s  pgbench {pg['tps']:8.1f} tps"
                f"  ratio {ratio:.2f}  daemon cpu {daemon_cpu * 100:.0f}%  p99 {gw['p99_ms']:.1f} ms"
                f"  non-200 {gw['non_200']}",
                flush=True,
            )
    return {
        "benchmark": "throughput",
        "rows": rows,
        "pgbench_scale": PGBENCH_SCALE,
        "terminals": 64,
        "mix": "40% card, 30% cash, 30% split",
        "seconds": seconds,
    }


def table(result: dict[str, Any]) -> list[list[str]]:
    out = [
        ["clients", "checkouts/s", "pgbench tps", "limit (tps/2)", "ratio", "goal", "daemon CPU", "p50 ms", "p99 ms"]
    ]
    for r in result["rows"]:
        out.append(
            [
                str(r["clients"]),
                f"{r['checkouts_per_s']:.0f}",
                f"{r['pgbench_tps']:.0f}",
                f"{r['limit_checkouts_per_s']:.0f}",
                f"{r['ratio']:.2f}",
                f">= {GOAL_RATIO}",
                f"{r['daemon_cpu_pct']:.0f}%",
                f"{r['p50_ms']:.1f}",
                f"{r['p99_ms']:.1f}",
            ]
        )
    return out
