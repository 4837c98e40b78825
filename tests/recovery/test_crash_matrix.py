"""kill -9 at every failpoint x tender mixes, with a real daemon process, PostgreSQL and simulator process.

After the restart, recovery must bring every checkout to completed-with-its-charges or
failed-with-none (I1-I8 against the simulator's ledger), a POS retry with the same key gets
that final outcome without a new charge, and orphans/reconcile report nothing to do.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gatewayd.stack import authkey_for
from tests.harness import card, cash, order
from tests.procs import DaemonProcess, Store, simulator_process

RECOVERY = "[recovery]\ninterval_s = 1\n"

MIXES: dict[str, list[dict[str, Any]]] = {
    "cash+card": [cash(1000), card(2000, "lane-1")],
    "card+card": [card(1000, "lane-1"), card(2000, "lane-2")],
    "card+declined": [card(1000, "lane-1"), card(2051, "lane-2")],
    "card-lost": [card(2052, "lane-1")],
}
# Where each failpoint can be reached (it is not, for example, a void when nothing is declined).
REACHES = {
    "after_intent_commit": set(MIXES),
    "after_sale_sent": set(MIXES),
    "after_sale_answer": set(MIXES),
    "before_commit": {"cash+card", "card+card", "card-lost"},
    "after_commit": {"cash+card", "card+card", "card-lost"},
    "during_void": {"card+declined"},
}


@pytest.fixture(scope="module")
async def simulator_url() -> AsyncIterator[str]:
    async with simulator_process() as url:
        yield url


@pytest.fixture
async def store(dsn: str, simulator_url: str, tmp_path: Path) -> Store:
    s = Store(dsn, simulator_url, tmp_path)
    await s.seed()
    return s


async def _checkout_until_death(daemon: DaemonProcess, body: dict[str, Any]) -> int | None:
    """Send the checkout; return the exit code if the daemon died on the way, None if it answered."""
    async with daemon.client() as client:
        try:
            await client.checkout(body)
        except (aiohttp.ClientError, OSError):
            return await daemon.exited(30)
    return None


async def _assert_final_and_clean(store: Store, daemon: DaemonProcess, body: dict[str, Any]) -> None:
    await store.quiescent()
    charges_before = await store.ledger()
    async with daemon.client() as client:
        retry = await client.checkout(body)
        assert retry.status in (200, 402), retry.body
        assert retry.body["status"] in ("completed", "payment_failed")
        approved = [t for t in retry.body["tenders"] if t["status"] == "approved"]
        if retry.body["status"] == "completed":
            assert len(approved) == len(body["tenders"])
        orphans = await client.orphans()
        assert orphans.status == 200 and orphans.body["count"] == 0, orphans.body
        reconcile = await client.reconcile()
        assert reconcile.status == 200, reconcile.body
        for kind in ("missing_in_db", "missing_at_terminal", "amount_mismatch", "status_mismatch"):
            assert reconcile.body[kind] == [], reconcile.body
    assert await store.ledger() == charges_before, "the retry charged again"
    await store.check()


@pytest.mark.parametrize("mix", sorted(MIXES))
@pytest.mark.parametrize("failpoint", sorted(REACHES))
async def test_kill_at_failpoint(store: Store, failpoint: str, mix: str) -> None:
    config = store.config(extra=RECOVERY)
    body = order(*MIXES[mix])
    daemon = await DaemonProcess(config, failpoints=f"{failpoint}=kill").start()
    code = await _checkout_until_death(daemon, body)
    if mix in REACHES[failpoint]:
        assert code == -9, f"{failpoint} was not reached for {mix}"
    else:
        assert code is None
        await daemon.stop()
    restarted = await DaemonProcess(config).start()
    try:
        await _assert_final_and_clean(store, restarted, body)
    finally:
        assert await restarted.stop() == 0


async def test_kill_during_recovery(store: Store) -> None:
    """Crash, then crash again while recovering, then recover for real."""
    config = store.config(extra=RECOVERY)
    body = order(card(1000, "lane-1"), card(2000, "lane-2"))
    first = await DaemonProcess(config, failpoints="after_sale_answer=kill@2").start()
    assert await _checkout_until_death(first, body) == -9
    second = await DaemonProcess(config, failpoints="during_recovery=kill").start(wait=False)
    assert await second.exited(30) == -9
    third = await DaemonProcess(config).start()
    try:
        await _assert_final_and_clean(store, third, body)
    finally:
        await third.stop()


async def test_killed_while_terminal_offline_resolves_when_back(store: Store) -> None:
    config = store.config(extra=RECOVERY)
    body = order(card(3052, "lane-1"))
    daemon = await DaemonProcess(config, failpoints="after_sale_sent=kill").start()
    assert await _checkout_until_death(daemon, body) == -9
    await store.simulator_post(f"/_sim/terminals/{store.tpns['lane-1']}/offline")
    restarted = await DaemonProcess(config).start()
    try:
        await asyncio.sleep(2.5)
        states = await store.fetch("SELECT status FROM payment_transactions WHERE store_id = $1", store.store_id)
        assert [r["status"] for r in states] in (["processing"], ["unknown"])
        await store.simulator_post(f"/_sim/terminals/{store.tpns['lane-1']}/online")
        await _assert_final_and_clean(store, restarted, body)
        rows = await store.fetch("SELECT status FROM orders WHERE store_id = $1", store.store_id)
        assert [r["status"] for r in rows] == ["completed"]
    finally:
        await restarted.stop()


async def test_two_daemons_recover_at_once_without_doing_anything_twice(store: Store) -> None:
    short_lease = RECOVERY + "lease_s = 2\n"
    config_a = store.config("a", extra=short_lease)
    crashed = await DaemonProcess(config_a, failpoints="after_sale_sent=stall:120@*").start()
    bodies = [order(card(1000 + i, f"lane-{1 + i % 2}")) for i in range(6)]
    async with crashed.client() as client:
        posts = [asyncio.ensure_future(client.checkout(b)) for b in bodies]
        for _ in range(100):
            rows = await store.fetch(
                "SELECT count(*) FROM payment_transactions WHERE store_id = $1 AND status = 'processing'",
                store.store_id,
            )
            if rows[0][0] == len(bodies):
                break
            await asyncio.sleep(0.1)
        await crashed.kill()
        await asyncio.gather(*posts, return_exceptions=True)
    await asyncio.sleep(2.5)  # the crashed daemon's leases expire
    b = DaemonProcess(store.config("b", extra=short_lease), name="b")
    c = DaemonProcess(store.config("c", extra=short_lease), name="c")
    await asyncio.gather(b.start(), c.start())
    try:
        await store.quiescent()
        claims = await store.fetch(
            "SELECT order_id, count(*) AS n FROM audit_events WHERE store_id = $1 AND kind = 'recovery.claimed'"
            " GROUP BY order_id",
            store.store_id,
        )
        assert len(claims) == len(bodies)
        assert {r["n"] for r in claims} == {1}
        statuses = await store.fetch("SELECT status FROM orders WHERE store_id = $1", store.store_id)
        assert {r["status"] for r in statuses} == {"completed"}
        await store.check()
    finally:
        await asyncio.gather(b.stop(), c.stop())


async def test_recovery_never_takes_misconfigured_for_not_charged(store: Store) -> None:
    """The terminal answers every inquiry "misconfigured" (its auth key was rotated): the tender
    stays unknown and is asked again; only a definitive answer decides it."""
    config = store.config(extra=RECOVERY)
    body = order(card(1200, "lane-1"))
    daemon = await DaemonProcess(config, failpoints="after_sale_answer=kill").start()
    assert await _checkout_until_death(daemon, body) == -9
    tpn = store.tpns["lane-1"]
    await store.simulator_post(f"/_sim/terminals/{tpn}/authkey", {"authkey": "ROTATED0000"})
    restarted = await DaemonProcess(config).start()
    try:
        await asyncio.sleep(3.0)  # start-up recovery and two timer passes, every inquiry refused
        rows = await store.fetch(
            "SELECT o.status AS o, t.status AS t FROM orders o JOIN payment_transactions t"
            " ON t.store_id = o.store_id AND t.order_id = o.id WHERE o.store_id = $1",
            store.store_id,
        )
        assert [(r["o"], r["t"]) for r in rows] == [("payment_processing", "unknown")]
        await store.simulator_post(f"/_sim/terminals/{tpn}/authkey", {"authkey": authkey_for(tpn)})
        await _assert_final_and_clean(store, restarted, body)
        statuses = await store.fetch("SELECT status FROM orders WHERE store_id = $1", store.store_id)
        assert [r["status"] for r in statuses] == ["completed"]
    finally:
        await restarted.stop()
