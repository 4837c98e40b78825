"""The PostgreSQL server stopped (`pg_ctl stop -m immediate`) during a checkout and started again:
nothing lost, nothing doubled."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from gatewayd.store import migrate
from gatewayd.store.embedded import EmbeddedPostgres
from tests.harness import card, cash, order
from tests.procs import DaemonProcess, Store, simulator_process


@pytest.fixture
async def own_pg(tmp_path: Path) -> AsyncIterator[EmbeddedPostgres]:
    """A server of this test's own: stopping it must not disturb the other tests."""
    server = EmbeddedPostgres(tmp_path / "pg", durable=False)
    await asyncio.to_thread(server.start)
    conn = await asyncpg.connect(server.dsn)
    try:
        await migrate.apply(conn)
    finally:
        await conn.close()
    yield server
    await asyncio.to_thread(server.stop, "immediate")


async def test_database_crash_during_checkout(own_pg: EmbeddedPostgres, tmp_path: Path) -> None:
    async with simulator_process(slow_s=2.0) as simulator_url:
        store = Store(own_pg.dsn, simulator_url, tmp_path)
        await store.seed()
        daemon = await DaemonProcess(store.config(extra="[recovery]\ninterval_s = 1\n")).start()
        try:
            async with daemon.client() as client:
                body = order(
                    cash(500),
                    card(2055, "lane-1"),  # 55: the terminal takes 2 s to approve
                    lines=[{"sku": "MUG", "quantity": 1, "unit_price": 2555}],
                    customer_id="c1",
                    register_id="r1",
                )
                pending = asyncio.ensure_future(client.checkout(body))
                await asyncio.sleep(0.8)  # the intent is recorded, the card is being charged
                port = own_pg.port
                await asyncio.to_thread(own_pg.stop, "immediate")
                await asyncio.sleep(2.5)  # the approval arrives while the database is down
                restarted = await asyncio.to_thread(own_pg.start)
                assert own_pg.port == port, restarted
                answer = await pending
                assert answer.status == 200, answer.body
                assert answer.body["status"] == "completed"
                retry = await client.checkout(body)
                assert retry.status == 200 and retry.body["id"] == answer.body["id"]
            await store.quiescent()
            ledger = await store.ledger()
            assert [(t["amount"], t["status"]) for t in ledger] == [(2055, "approved")]
            await store.check()
        finally:
            assert await daemon.stop() == 0
