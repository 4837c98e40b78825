"""Concurrency edges on the real stack: one key hammered, registers racing for the last unit,
and serialization failures / deadlocks forced inside PostgreSQL."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg

from gatewayd.api.client import GatewayClient
from gatewayd.config import parse
from gatewayd.daemon import Daemon
from gatewayd.observe.systemd import Notifier
from tests.harness import card, cash, config_text, order, running_gateway


async def test_one_key_a_hundred_times_at_once(dsn: str, tmp_path: Path) -> None:
    async with running_gateway(dsn, tmp_path) as gw:
        body = order(card(1500, "lane-1"), card(2500, "lane-2"), key="hammer-1")
        answers = await asyncio.gather(*(gw.client.checkout(body) for _ in range(100)))
        assert {a.status for a in answers} == {200}
        assert len({a.body["id"] for a in answers}) == 1
        assert len({str(a.body) for a in answers}) == 1
        assert await gw.fetchval("SELECT count(*) FROM orders WHERE store_id = $1", gw.store_id) == 1
        assert sorted(t["amount"] for t in await gw.ledger()) == [1500, 2500]
        await gw.check_invariants()


async def test_one_key_across_two_daemons(dsn: str, tmp_path: Path) -> None:
    """Two daemons of one store: the database's unique key decides, one charge per tender."""
    async with running_gateway(dsn, tmp_path) as gw:
        text = config_text(gw.store_id, tmp_path / "second.sock", tmp_path / "second", dsn, gw.simulator.url, gw.tpns)
        second = Daemon(parse(text), notifier=Notifier(""))
        await second.start()
        try:
            body = order(card(3100), key="two-daemons")
            async with GatewayClient(str(tmp_path / "second.sock")) as other:
                answers = await asyncio.gather(*(c.checkout(body) for c in [gw.client, other] * 20))
            assert {a.status for a in answers} == {200}, {a.status for a in answers}
            assert len({a.body["id"] for a in answers}) == 1
            assert [t["amount"] for t in await gw.ledger()] == [3100]
        finally:
            await second.stop()
        await gw.check_invariants()


async def test_registers_race_for_the_last_unit(dsn: str, tmp_path: Path) -> None:
    """1,000 rounds: one unit in stock, three registers want it; one wins, the others pay nothing."""
    rounds = 1000
    async with running_gateway(dsn, tmp_path, terminals=3, stock={"LAST-ONE": 0}) as gw:
        gw.stock["LAST-ONE"] = rounds
        conn = await asyncpg.connect(dsn)
        try:
            for i in range(rounds):
                await conn.execute(
                    "UPDATE inventory SET on_hand = on_hand + 1 WHERE store_id = $1 AND sku = 'LAST-ONE'",
                    gw.store_id,
                )
                bodies = [
                    order(
                        card(1000 + r, f"lane-{r + 1}"),
                        key=f"race-{i}-{r}",
                        lines=[{"sku": "LAST-ONE", "quantity": 1, "unit_price": 1000 + r}],
                        register_id=f"r{r}",
                    )
                    for r in range(3)
                ]
                answers = await asyncio.gather(*(gw.client.checkout(b) for b in bodies))
                assert sorted(a.status for a in answers) == [200, 422, 422], [a.body for a in answers]
                stock = await conn.fetchrow(
                    "SELECT on_hand, reserved FROM inventory WHERE store_id = $1 AND sku = 'LAST-ONE'",
                    gw.store_id,
                )
                assert (stock["on_hand"], stock["reserved"]) == (0, 0)
        finally:
            await conn.close()
        ledger = await gw.ledger()
        assert len(ledger) == rounds and all(t["status"] == "approved" for t in ledger)
        await gw.check_invariants()


FAULT_TRIGGER = """
CREATE SEQUENCE IF NOT EXISTS test_fault_seq;
CREATE OR REPLACE FUNCTION test_fault() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.store_id = current_setting('test.fault_store', true) OR NEW.store_id = '{store}' THEN
        IF nextval('test_fault_seq') % 7 = 0 THEN
            IF random() < 0.5 THEN
                RAISE EXCEPTION 'forced serialization failure' USING ERRCODE = '40001';
            ELSE
                RAISE EXCEPTION 'forced deadlock' USING ERRCODE = '40P01';
            END IF;
        END IF;
    END IF;
    RETURN NEW;
END;
$$;
CREATE TRIGGER test_fault_orders BEFORE INSERT OR UPDATE ON orders FOR EACH ROW EXECUTE FUNCTION test_fault();
CREATE TRIGGER test_fault_tenders BEFORE INSERT OR UPDATE ON payment_transactions
    FOR EACH ROW EXECUTE FUNCTION test_fault();
"""


async def test_forced_serialization_failures_and_deadlocks(dsn: str, tmp_path: Path) -> None:
    """Every seventh write in this store fails as a serialization failure or deadlock: retries are
    bounded, nothing happens twice."""
    async with running_gateway(dsn, tmp_path) as gw:
        conn = await asyncpg.connect(dsn)
        await conn.execute(FAULT_TRIGGER.replace("{store}", gw.store_id))
        try:
            bodies = [
                order(
                    cash(500),
                    card(1000 + i, f"lane-{1 + i % 4}"),
                    customer_id="c1",
                    register_id="r1",
                    lines=[{"sku": "MUG", "quantity": 1, "unit_price": 1500 + i}],
                )
                for i in range(8)
            ]
            answers = await asyncio.gather(*(gw.client.checkout(b) for b in bodies))
            assert {a.status for a in answers} <= {200, 503}, [a.body for a in answers]
            # a refused one ("database_unavailable": nothing charged) goes through on retry
            for body, answer in zip(bodies, answers, strict=True):
                for _ in range(5):
                    if answer.status == 200:
                        break
                    assert answer.error_code == "database_unavailable", answer.body
                    answer = await gw.client.checkout(body)
                assert answer.status == 200, answer.body
        finally:
            await conn.execute(
                "DROP TRIGGER test_fault_orders ON orders; DROP TRIGGER test_fault_tenders ON payment_transactions"
            )
            await conn.close()
        completed = await gw.fetchval(
            "SELECT count(*) FROM orders WHERE store_id = $1 AND status = 'completed'", gw.store_id
        )
        assert completed == len(bodies)
        audits = await gw.fetch(
            "SELECT order_id, count(*) AS n FROM audit_events WHERE store_id = $1"
            " AND kind = 'checkout.completed' GROUP BY order_id",
            gw.store_id,
        )
        assert len(audits) == len(bodies) and {r["n"] for r in audits} == {1}
        earned = await gw.fetch(
            "SELECT order_id, count(*) AS n FROM loyalty_ledger WHERE store_id = $1 GROUP BY order_id",
            gw.store_id,
        )
        assert {r["n"] for r in earned} == {1}
        assert len(await gw.ledger()) == len(bodies)
        await gw.check_invariants()
