"""kill -9 with N checkouts in flight (every one stalled right after its sale was sent), restart,
and time until every one is resolved."""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import aiohttp
import asyncpg

from bench import env
from bench.checkouts import body
from gatewayd.stack import DaemonProcess

GOAL_S = 10.0
OPEN = "('pending_payment', 'payment_processing', 'payment_authorized')"


async def run(quick: bool) -> dict[str, Any]:
    n = 1000  # the goal's figure: --quick measures it too (loading takes seconds)
    terminals = 64
    server = env.postgres()
    await env.migrate(server.dsn)
    tmp = env.WORK / "run"
    tmp.mkdir(parents=True, exist_ok=True)
    async with env.simulator() as url:
        return await _run(server, url, tmp, n, terminals)


async def _run(server: Any, url: str, tmp: Any, n: int, terminals: int) -> dict[str, Any]:
    db = await asyncpg.connect(server.dsn)
    try:
        store = env.Store(server.dsn, url, tmp, terminals)
        store.write_config()
        await store.seed({f"SKU-{i}": 10**9 for i in range(64)})
        daemon = await env.start_daemon(store, failpoints="after_sale_sent=stall:600@*", name="first")
        try:
            load_s, open_before = await _load_and_kill(db, store, daemon, n, terminals)
        finally:
            await daemon.kill()
        restart = time.monotonic()
        daemon = await env.start_daemon(store, name="second", wait=False)
        ready_s: float | None = None
        try:
            ready_task = asyncio.ensure_future(daemon.ready(timeout_s=120.0))
            while True:
                left = await db.fetchval(
                    f"SELECT count(*) FROM orders WHERE store_id = $1 AND status IN {OPEN}", store.store_id
                )
                if ready_task.done() and ready_s is None:
                    ready_s = time.monotonic() - restart
                if left == 0:
                    break
                if time.monotonic() - restart > 900:
                    raise RuntimeError(f"{left} orders still open after 900 s")
                await asyncio.sleep(0.05)
            resolved_s = time.monotonic() - restart
            if ready_s is None:
                await ready_task
                ready_s = time.monotonic() - restart
            outcome = {
                r["status"]: r["n"]
                for r in await db.fetch(
                    "SELECT status, count(*) n FROM orders WHERE store_id = $1 GROUP BY status", store.store_id
                )
            }
        finally:
            await daemon.stop()
    finally:
        await db.close()
    print(
        f"  {n} in flight (loaded in {load_s:.1f}s), open at kill {open_before}; resolved {resolved_s:.2f}s"
        f" after restart (ready at {ready_s:.2f}s): {outcome}",
        flush=True,
    )
    return {
        "benchmark": "recovery",
        "in_flight": n,
        "open_at_kill": open_before,
        "terminals": terminals,
        "resolved_s": resolved_s,
        "ready_s": ready_s,
        "final_status": outcome,
        "goal_s": GOAL_S,
        "met": resolved_s <= GOAL_S,
    }


async def _load_and_kill(
    db: asyncpg.Connection, store: env.Store, daemon: DaemonProcess, n: int, terminals: int
) -> tuple[float, int]:
    """n checkouts, each stalled right after its sale was sent; kill -9 once all n sales are at the
    terminal (the simulator's ledger: a tender is `processing` from its intent on when the intent
    stamps it sent, sql/010, so the rows alone do not say the request left)."""
    conns = [await env.HttpConn.open(store.socket) for _ in range(n)]
    rng = random.Random(5)
    kinds = ["card", "split"]
    posts = [
        asyncio.ensure_future(
            c.request("POST", "/v1/checkouts", body(kinds[i % 2], f"lane-{i % terminals + 1}", f"SKU-{i % 64}", rng))
        )
        for i, c in enumerate(conns)
    ]
    t0 = time.monotonic()
    async with aiohttp.ClientSession() as http:
        while True:
            processing = await db.fetchval(
                "SELECT count(*) FROM payment_transactions WHERE store_id = $1 AND status = 'processing'",
                store.store_id,
            )
            async with http.get(f"{store.simulator_url}/_sim/ledger") as resp:
                sent = len((await resp.json())["transactions"])
            if processing >= n and sent >= n:
                break
            if time.monotonic() - t0 > 300:
                raise RuntimeError(f"only {processing} tenders processing, {sent} sales at the terminals")
            await asyncio.sleep(0.05)
    load_s = time.monotonic() - t0
    await daemon.kill()
    for p in posts:
        p.cancel()
    await asyncio.gather(*posts, return_exceptions=True)
    for c in conns:
        c.close()
    open_before = await db.fetchval(
        f"SELECT count(*) FROM orders WHERE store_id = $1 AND status IN {OPEN}", store.store_id
    )
    return load_s, open_before


def table(r: dict[str, Any]) -> list[list[str]]:
    return [
        ["in flight at kill -9", "restart -> ready s", "restart -> all resolved s", "goal s", "final"],
        [
            str(r["open_at_kill"]),
            f"{r['ready_s']:.2f}",
            f"{r['resolved_s']:.2f}",
            f"<= {r['goal_s']:.0f}",
            ", ".join(f"{k} {v}" for k, v in r["final_status"].items()),
        ],
    ]


def figures(r: dict[str, Any]) -> list[tuple[str, str, str, bool | None]]:
    goal = r["open_at_kill"] >= 1000
    return [
        (
            f"recovery of {r['open_at_kill']} checkouts in flight at kill -9, s",
            f"{r['resolved_s']:.2f}",
            f"<= {r['goal_s']:.0f} (for 1,000)",
            bool(r["met"]) if goal else None,
        )
    ]
