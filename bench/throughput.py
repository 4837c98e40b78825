"""Checkouts/s at 1, 8, 32 and 64 POS clients, beside pgbench on the same server with the same clients.

Two durable commits per checkout are the floor (the intent, then the outcome), so the limit for
gatewayd is half of what pgbench's TPC-B-like transaction (one commit each) achieves.
"""

from __future__ import annotations

import asyncio
import random
import resource
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
    by_kind = {k: sum(1 for d in window if d[2] == k) for k in ("cash", "card", "split")}
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
        "by_kind": by_kind,
        "all_checkouts": len(done),
    }


async def run(quick: bool) -> dict[str, Any]:
    levels = [1, 8, 32, 64]
    seconds = 5.0 if quick else 15.0
    warmup = 1.0 if quick else 3.0
    rows = []
    async with env.world(64) as (server, store, daemon, sim_url):
        postmaster = env.postmaster_pid()
        simulator = env.pid_of(f"--port {sim_url.rsplit(':', 1)[1]}")
        for clients in levels:
            pg_cpu0, children0 = env.tree_cpu_seconds(postmaster), resource.getrusage(resource.RUSAGE_CHILDREN)
            t0 = time.monotonic()
            pg = await asyncio.to_thread(env.pgbench, server, clients, seconds, PGBENCH_SCALE)
            pg_s = time.monotonic() - t0
            children1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            pgbench_cpu = {
                "postgres_cpu_pct": (env.tree_cpu_seconds(postmaster) - pg_cpu0) / pg_s * 100,
                "pgbench_client_cpu_pct": (
                    children1.ru_utime + children1.ru_stime - children0.ru_utime - children0.ru_stime
                )
                / pg_s
                * 100,
            }
            # Each side's dead rows vacuumed before the other runs, so that neither pays for the
            # other's autovacuum in its window (each pays its own autovacuum, inside its window;
            # this VACUUM is outside both windows and counted in neither).
            await asyncio.to_thread(env.vacuum, server, "pgbench")
            cpu0 = {
                "daemon": env.cpu_seconds(daemon.pid),
                "postgres": env.tree_cpu_seconds(postmaster),
                "simulator": env.cpu_seconds(simulator) if simulator else 0.0,
                "load_generator": time.process_time(),
            }
            t0 = time.monotonic()
            gw = await drive(store.socket, clients, store.terminal_ids(), warmup, seconds)
            took = time.monotonic() - t0
            used = {
                "daemon": env.cpu_seconds(daemon.pid) - cpu0["daemon"],
                "postgres": env.tree_cpu_seconds(postmaster) - cpu0["postgres"],
                "simulator": (env.cpu_seconds(simulator) if simulator else 0.0) - cpu0["simulator"],
                "load_generator": time.process_time() - cpu0["load_generator"],
            }
            await asyncio.to_thread(env.vacuum, server, "gatewayd")
            limit = pg["tps"] / 2
            ratio = gw["checkouts_per_s"] / limit
            per = max(1, gw["all_checkouts"])
            cpu_ms = {k: v / per * 1000 for k, v in used.items()}
            pg_ms_per_tx = pgbench_cpu["postgres_cpu_pct"] / 100 / max(pg["tps"], 1) * 1000
            rows.append(
                {
                    **gw,
                    "pgbench_tps": pg["tps"],
                    "pgbench": pgbench_cpu,
                    "limit_checkouts_per_s": limit,
                    "ratio": ratio,
                    "goal_ratio": GOAL_RATIO,
                    "met": ratio >= GOAL_RATIO,
                    "daemon_cpu_pct": round(used["daemon"] / took * 100, 1),
                    "cpu_pct": {k: round(v / took * 100, 1) for k, v in used.items()},
                    # CPU per checkout (all checkouts of the run, warm-up included), by process
                    "cpu_ms_per_checkout": {k: round(v, 3) for k, v in cpu_ms.items()},
                    "postgres_cpu_ms_per_pgbench_tx": round(pg_ms_per_tx, 3),
                    # What stands between the ratio and its goal, in CPU: every process here shares
                    # the machine's cores, so checkouts/s cannot pass cores / (CPU per checkout);
                    # and the ratio PostgreSQL's own CPU allows, were the daemon, the simulator and
                    # the POS on other hosts (as in a store on a chain's database): two pgbench
                    # transactions' worth of PostgreSQL CPU over a checkout's.
                    "cpu_ceiling_checkouts_per_s": round(env.nproc() * 1000 / max(sum(cpu_ms.values()), 1e-9), 1),
                    "postgres_bound_ratio": round(2 * pg_ms_per_tx / max(cpu_ms["postgres"], 1e-9), 3),
                }
            )
            print(
                f"  {clients:>3} clients: {gw['checkouts_per_s']:8.1f} checkouts/s  pgbench {pg['tps']:8.1f} tps"
                f"  ratio {ratio:.2f}  cpu % daemon {used['daemon'] / took * 100:.0f} postgres"
                f" {used['postgres'] / took * 100:.0f} simulator {used['simulator'] / took * 100:.0f}"
                f" load {used['load_generator'] / took * 100:.0f}  p99 {gw['p99_ms']:.1f} ms  non-200 {gw['non_200']}",
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
        [
            "clients",
            "checkouts/s",
            "pgbench tps",
            "limit (tps/2)",
            "ratio",
            "goal",
            "p50 ms",
            "p99 ms",
            "CPU ms/checkout: daemon",
            "postgres",
            "simulator",
            "load",
            "postgres ms/pgbench tx",
            "CPU ceiling/s",
            "ratio by postgres CPU",
        ]
    ]
    for r in result["rows"]:
        cpu = r["cpu_ms_per_checkout"]
        out.append(
            [
                str(r["clients"]),
                f"{r['checkouts_per_s']:.0f}",
                f"{r['pgbench_tps']:.0f}",
                f"{r['limit_checkouts_per_s']:.0f}",
                f"{r['ratio']:.2f}",
                f">= {GOAL_RATIO}" if r["clients"] in (8, 32) else "",
                f"{r['p50_ms']:.1f}",
                f"{r['p99_ms']:.1f}",
                f"{cpu['daemon']:.2f}",
                f"{cpu['postgres']:.2f}",
                f"{cpu['simulator']:.2f}",
                f"{cpu['load_generator']:.2f}",
                f"{r['postgres_cpu_ms_per_pgbench_tx']:.2f}",
                f"{r['cpu_ceiling_checkouts_per_s']:.0f}",
                f"{r['postgres_bound_ratio']:.2f}",
            ]
        )
    return out


def figures(r: dict[str, Any]) -> list[tuple[str, str, str, bool | None]]:
    """The goal is at 8 and 32 clients; 1 and 64 are shown beside them."""
    out: list[tuple[str, str, str, bool | None]] = []
    for row in r["rows"]:
        goal = row["clients"] in (8, 32)
        out.append(
            (
                f"throughput, {row['clients']} clients: checkouts/s / (pgbench tps / 2)",
                f"{row['ratio']:.2f} ({row['checkouts_per_s']:.0f} vs {row['limit_checkouts_per_s']:.0f}/s)",
                f">= {GOAL_RATIO}" if goal else "",
                (row["ratio"] >= GOAL_RATIO) if goal else None,
            )
        )
    for row in r["rows"]:
        if row["clients"] in (8, 32):
            out.append(
                (
                    f"throughput, {row['clients']} clients: the ratio PostgreSQL's CPU allows"
                    " (2 x its ms per pgbench tx / its ms per checkout)",
                    f"{row['postgres_bound_ratio']:.2f}",
                    "",
                    None,
                )
            )
    return out
