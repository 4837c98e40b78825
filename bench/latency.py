"""p50/p99 of one card checkout at 1 client, beside its unavoidable parts measured in the same run:
two durable commits (an autocommit INSERT round trip, twice, with asyncpg) plus one SPIn Sale
round trip to the simulator (aiohttp)."""

from __future__ import annotations

import random
import time
import uuid
from typing import Any

import aiohttp
import asyncpg

from bench import env
from bench.checkouts import amount, body
from gatewayd.terminals.spin import codec

GOAL_ADDED_P99_MS = 2.0


async def floor_samples(dsn: str, simulator_url: str, n: int) -> tuple[list[float], list[float]]:
    conn = await asyncpg.connect(dsn)
    commits: list[float] = []
    sales: list[float] = []
    rng = random.Random(7)
    try:
        await conn.execute("CREATE TABLE IF NOT EXISTS bench_commit (id bigserial PRIMARY KEY, v int)")
        async with aiohttp.ClientSession() as http:
            tpn = "LAT" + uuid.uuid4().hex[:9].upper()
            for i in range(n):
                t0 = time.perf_counter()
                await conn.execute("INSERT INTO bench_commit (v) VALUES ($1)", i)  # autocommit: one durable commit
                await conn.execute("INSERT INTO bench_commit (v) VALUES ($1)", i)
                commits.append((time.perf_counter() - t0) * 1000)
                cents = amount(rng)
                payload = codec.sale_body(
                    codec.Credentials(tpn=tpn, authkey="K" + tpn), uuid.uuid4().hex[:20].upper(), cents, 30.0
                )  # what the driver sends
                t0 = time.perf_counter()
                async with http.post(
                    simulator_url + "/v2/Payment/Sale", data=payload, headers={"Content-Type": "application/json"}
                ) as resp:
                    await resp.read()
                sales.append((time.perf_counter() - t0) * 1000)
        await conn.execute("TRUNCATE bench_commit")
    finally:
        await conn.close()
    return commits, sales


async def checkout_samples(socket: str, n: int, warmup: int) -> list[float]:
    conn = await env.HttpConn.open(socket)
    rng = random.Random(3)
    out: list[float] = []
    try:
        for i in range(n + warmup):
            payload = body("card", "lane-1", "SKU-0", rng)
            t0 = time.perf_counter()
            status, answer = await conn.request("POST", "/v1/checkouts", payload)
            if status != 200:
                raise RuntimeError(f"checkout answered {status}: {answer[:300]!r}")
            if i >= warmup:
                out.append((time.perf_counter() - t0) * 1000)
    finally:
        conn.close()
    return out


async def run(quick: bool) -> dict[str, Any]:
    n = 1000 if quick else 4000
    async with env.world(4) as (server, store, _daemon, _sim):
        # interleaved in blocks so that both see the same machine state
        ck: list[float] = []
        commits: list[float] = []
        sales: list[float] = []
        blocks = 4
        for _ in range(blocks):
            ck += await checkout_samples(store.socket, n // blocks, 20)
            c, s = await floor_samples(server.dsn, store.simulator_url, n // blocks)
            commits += c
            sales += s
    floor = [c + s for c, s in zip(commits, sales, strict=True)]
    p = env.percentile
    result: dict[str, Any] = {
        "benchmark": "latency",
        "samples": len(ck),
        "tender": "one card tender (sale)",
        "checkout_p50_ms": p(ck, 50),
        "checkout_p99_ms": p(ck, 99),
        "two_commits_p50_ms": p(commits, 50),
        "two_commits_p99_ms": p(commits, 99),
        "sim_sale_p50_ms": p(sales, 50),
        "sim_sale_p99_ms": p(sales, 99),
        "floor_p50_ms": p(floor, 50),
        "floor_p99_ms": p(floor, 99),
        "added_p50_ms": p(ck, 50) - p(floor, 50),
        "added_p99_ms": p(ck, 99) - p(floor, 99),
        "goal_added_p99_ms": GOAL_ADDED_P99_MS,
    }
    result["met"] = p(ck, 99) - p(floor, 99) <= GOAL_ADDED_P99_MS
    return result


def table(r: dict[str, Any]) -> list[list[str]]:
    return [
        ["", "p50 ms", "p99 ms", "goal"],
        ["checkout (card, 1 client)", f"{r['checkout_p50_ms']:.2f}", f"{r['checkout_p99_ms']:.2f}", ""],
        ["2 x INSERT;COMMIT (asyncpg)", f"{r['two_commits_p50_ms']:.2f}", f"{r['two_commits_p99_ms']:.2f}", ""],
        ["SPIn Sale to simulator (aiohttp)", f"{r['sim_sale_p50_ms']:.2f}", f"{r['sim_sale_p99_ms']:.2f}", ""],
        ["floor = commits + sale", f"{r['floor_p50_ms']:.2f}", f"{r['floor_p99_ms']:.2f}", ""],
        ["gatewayd adds", f"{r['added_p50_ms']:.2f}", f"{r['added_p99_ms']:.2f}", f"<= {GOAL_ADDED_P99_MS} at p99"],
    ]


def figures(r: dict[str, Any]) -> list[tuple[str, str, str, bool | None]]:
    return [
        ("card checkout, 1 client, p50 / p99 ms", f"{r['checkout_p50_ms']:.2f} / {r['checkout_p99_ms']:.2f}", "", None),
        ("floor (2 commits + SPIn sale), p50 / p99 ms", f"{r['floor_p50_ms']:.2f} / {r['floor_p99_ms']:.2f}", "", None),
        ("gatewayd adds at p50 ms", f"{r['added_p50_ms']:.2f}", "", None),
        ("gatewayd adds at p99 ms", f"{r['added_p99_ms']:.2f}", f"<= {GOAL_ADDED_P99_MS}", bool(r["met"])),
    ]
