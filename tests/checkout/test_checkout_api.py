"""The guide's testing checklist and failure scenarios, through the real socket API.

Each test runs a daemon on a unix socket against the real PostgreSQL and the SPIn simulator
over HTTP, then checks the money invariants between the database and the simulator's ledger.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.harness import Gateway, card, cash, order, running_gateway


@pytest.fixture
async def gw(dsn: str, tmp_path: Path) -> AsyncIterator[Gateway]:
    async with running_gateway(dsn, tmp_path) as gateway:
        yield gateway
        await gateway.check_invariants()


async def _stock(gw: Gateway, sku: str) -> tuple[int, int]:
    rows = await gw.fetch("SELECT on_hand, reserved FROM inventory WHERE store_id = $1 AND sku = $2", gw.store_id, sku)
    return rows[0]["on_hand"], rows[0]["reserved"]


async def test_cash_payment(gw: Gateway) -> None:
    answer = await gw.checkout(
        cash(3198, tendered=4000), lines=[{"sku": "COFFEE-1KG", "quantity": 2, "unit_price": 1599}]
    )
    assert answer.status == 200, answer.body
    body = answer.body
    assert (body["status"], body["total"], body["change"]) == ("completed", 3198, 802)
    assert body["tenders"] == [{"type": "cash", "amount": 3198, "status": "approved", "tendered": 4000}]
    assert await _stock(gw, "COFFEE-1KG") == (48, 0)
    assert await gw.ledger() == []


async def test_card_payment(gw: Gateway) -> None:
    answer = await gw.checkout(card(2454, "lane-2"))
    assert answer.status == 200, answer.body
    tender = answer.body["tenders"][0]
    assert tender["status"] == "approved" and tender["terminal_id"] == "lane-2"
    assert len(tender["auth_code"]) > 0 and len(tender["last4"]) == 4 and tender["card_brand"]
    ledger = await gw.ledger()
    assert [(t["reference_id"], t["amount"], t["status"]) for t in ledger] == [
        (tender["reference_id"], 2454, "approved")
    ]


async def test_split_cash_and_card(gw: Gateway) -> None:
    answer = await gw.checkout(cash(1000, tendered=2000), card(2454))
    assert answer.status == 200, answer.body
    assert [t["status"] for t in answer.body["tenders"]] == ["approved", "approved"]
    assert answer.body["change"] == 1000


async def test_split_card_and_card(gw: Gateway) -> None:
    answer = await gw.checkout(card(1000, "lane-1"), card(2000, "lane-2"))
    assert answer.status == 200, answer.body
    assert sorted(t["amount"] for t in await gw.ledger()) == [1000, 2000]


async def test_card_declined_rolls_back(gw: Gateway) -> None:
    """The second card is declined (51): 402, the first card voided, inventory back."""
    answer = await gw.checkout(
        card(1000, "lane-1"), card(1051, "lane-2"), lines=[{"sku": "MUG", "quantity": 1, "unit_price": 2051}]
    )
    assert answer.status == 402, answer.body
    body = answer.body
    assert body["error"]["code"] == "card_declined"
    assert body["status"] == "payment_failed"
    assert [t["status"] for t in body["tenders"]] == ["voided", "declined"]
    assert await _stock(gw, "MUG") == (10, 0)
    assert sorted((t["amount"], t["status"]) for t in await gw.ledger()) == [
        (1000, "voided"),
        (1051, "declined"),
    ]


@pytest.mark.parametrize("cents", [52, 53, 58])
async def test_network_dies_mid_payment(gw: Gateway, cents: int) -> None:
    """A lost answer is resolved by inquiry: completed, exactly one approved charge."""
    answer = await gw.checkout(card(2000 + cents))
    assert answer.status == 200, answer.body
    ref = answer.body["tenders"][0]["reference_id"]
    ledger = await gw.ledger()
    assert [(t["reference_id"], t["status"]) for t in ledger] == [(ref, "approved")]


async def test_card_never_read_is_not_charged(gw: Gateway) -> None:
    """57: no answer and nothing recorded: after the terminal's timeout the tender counts as not charged."""
    answer = await gw.checkout(card(2057))
    assert answer.status == 402, answer.body
    assert answer.body["tenders"][0]["status"] in ("failed", "declined")
    assert await gw.ledger() == []


async def test_terminal_offline_charges_nothing(gw: Gateway) -> None:
    await gw.simulator_post(f"/_sim/terminals/{gw.tpns['lane-3']}/offline")
    await gw.daemon.fleet.monitor.check_now("lane-3")  # type: ignore[union-attr]
    answer = await gw.checkout(card(1500, "lane-3"))
    assert answer.status == 503 and answer.error_code == "terminal_offline", answer.body
    assert await gw.ledger() == []
    assert await gw.fetchval("SELECT count(*) FROM orders WHERE store_id = $1", gw.store_id) == 0
    await gw.simulator_post(f"/_sim/terminals/{gw.tpns['lane-3']}/online")


async def test_insufficient_inventory_charges_nothing(gw: Gateway) -> None:
    answer = await gw.checkout(
        card(3000),
        lines=[
            {"sku": "MUG", "quantity": 11, "unit_price": 1000},
            {"sku": "GIFT-WRAP", "quantity": 1, "unit_price": 0},
        ],
        tax=0,
        discount=8000,
    )
    assert answer.status == 422 and answer.error_code == "insufficient_inventory", answer.body
    assert answer.body["error"]["details"]["skus"] == [{"sku": "MUG", "requested": 11, "available": 10}]
    assert await gw.ledger() == []
    assert await _stock(gw, "MUG") == (10, 0)


async def test_retry_same_key_returns_same_answer(gw: Gateway) -> None:
    body = order(card(1234), key="reg1-000123")
    first = await gw.client.checkout(body)
    second = await gw.client.checkout(body)
    assert first.status == second.status == 200
    assert first.body == second.body
    assert len(await gw.ledger()) == 1


async def test_concurrent_duplicates_wait_for_the_first(gw: Gateway) -> None:
    body = order(card(4055), key="dup-1")  # 55: slow approval, so the duplicates overlap it
    answers = await asyncio.gather(*(gw.client.checkout(body) for _ in range(5)))
    assert {a.status for a in answers} == {200}
    assert len({a.body["id"] for a in answers}) == 1
    assert len(await gw.ledger()) == 1


async def test_same_key_other_body_conflicts(gw: Gateway) -> None:
    first = await gw.client.checkout(order(card(1000), key="reg1-7"))
    assert first.status == 200
    before = await gw.ledger()
    again = await gw.client.checkout(order(card(1001), key="reg1-7"))
    assert again.status == 409 and again.error_code == "idempotency_conflict"
    assert await gw.ledger() == before


async def test_partial_approval_is_voided(gw: Gateway) -> None:
    answer = await gw.checkout(card(2056))
    assert answer.status == 402, answer.body
    assert answer.body["tenders"][0]["status"] == "voided"
    assert [(t["amount"], t["status"]) for t in await gw.ledger()] == [(1028, "voided")]


async def test_totals_after_mixed_run(gw: Gateway) -> None:
    """Inventory, loyalty points and register-session totals exact after a mixed run."""
    runs = [
        (
            order(
                cash(3198),
                lines=[{"sku": "COFFEE-1KG", "quantity": 2, "unit_price": 1599}],
                customer_id="c1",
                register_id="r1",
            ),
            200,
        ),
        (
            order(
                card(1599),
                lines=[{"sku": "COFFEE-1KG", "quantity": 1, "unit_price": 1599}],
                customer_id="c1",
                register_id="r1",
            ),
            200,
        ),
        (
            order(
                card(1051),
                lines=[{"sku": "MUG", "quantity": 1, "unit_price": 1051}],
                customer_id="c1",
                register_id="r1",
            ),
            402,
        ),
        (
            order(
                cash(500),
                card(1000, "lane-2"),
                lines=[{"sku": "MUG", "quantity": 1, "unit_price": 1500}],
                customer_id="c2",
                register_id="r2",
            ),
            200,
        ),
    ]
    for body, status in runs:
        answer = await gw.client.checkout(body)
        assert answer.status == status, answer.body
    assert await _stock(gw, "COFFEE-1KG") == (47, 0)
    assert await _stock(gw, "MUG") == (9, 0)
    points = dict(await gw.fetch("SELECT customer_id, points FROM loyalty_accounts WHERE store_id = $1", gw.store_id))
    assert points == {"c1": 31 + 15, "c2": 15}
    sessions = {
        r["register_id"]: (r["cash_total"], r["card_total"], r["checkout_count"])
        for r in await gw.fetch("SELECT * FROM register_sessions WHERE store_id = $1", gw.store_id)
    }
    assert sessions == {"r1": (3198, 1599, 2), "r2": (500, 1000, 1)}


async def test_get_by_id_and_key(gw: Gateway) -> None:
    answer = await gw.checkout(card(777), key="lookup-1")
    by_id = await gw.client.get_checkout(answer.body["id"])
    by_key = await gw.client.find_checkout("lookup-1")
    assert by_id.body == by_key.body == answer.body
    missing = await gw.client.get_checkout(str(uuid.uuid4()))
    assert missing.status == 404 and missing.error_code == "not_found"


async def test_unknown_terminal(gw: Gateway) -> None:
    answer = await gw.checkout(card(100, "lane-9"))
    assert answer.status == 422 and answer.error_code == "unknown_terminal"
    assert answer.body["error"]["details"]["field"] == "tenders[0].terminal_id"


async def test_void_checkout(gw: Gateway) -> None:
    answer = await gw.checkout(
        cash(500),
        card(1000),
        lines=[{"sku": "MUG", "quantity": 1, "unit_price": 1500}],
        customer_id="c9",
        register_id="r9",
    )
    voided = await gw.client.void(answer.body["id"])
    assert voided.status == 200, voided.body
    assert voided.body["status"] == "voided"
    again = await gw.client.void(answer.body["id"])
    assert again.status == 200 and again.body == voided.body
    assert [t["status"] for t in await gw.ledger()] == ["voided"]
    assert await _stock(gw, "MUG") == (10, 0)
    assert await gw.fetchval("SELECT points FROM loyalty_accounts WHERE store_id = $1", gw.store_id) == 0


async def test_refunds(gw: Gateway) -> None:
    answer = await gw.checkout(card(2000), lines=[{"sku": "MUG", "quantity": 2, "unit_price": 1000}], customer_id="c5")
    cid = answer.body["id"]
    first = await gw.client.refund(cid, "rf-1", 500)
    assert first.status == 200, first.body
    assert (first.body["status"], first.body["refunded_amount"]) == ("partially_refunded", 500)
    assert await gw.client.refund(cid, "rf-1", 500) == first
    conflict = await gw.client.refund(cid, "rf-1", 600)
    assert conflict.status == 409
    too_much = await gw.client.refund(cid, "rf-2", 1600)
    assert too_much.status == 400 and too_much.body["error"]["details"]["field"] == "amount"
    rest = await gw.client.refund(cid, "rf-3", 1500, restock=True)
    assert rest.status == 200 and rest.body["status"] == "refunded"
    assert await _stock(gw, "MUG") == (10, 0)
    assert await gw.fetchval("SELECT points FROM loyalty_accounts WHERE store_id = $1", gw.store_id) == 0
    returns = [t for t in await gw.ledger() if t["type"] == "return"]
    assert sorted(t["amount"] for t in returns) == [500, 1500]


async def test_outcome_pending_then_poll(dsn: str, tmp_path: Path) -> None:
    async with running_gateway(dsn, tmp_path, extra="", slow_s=2.0) as gw:
        gw.daemon.coordinator.policy  # noqa: B018 - the wait is the API's
        from gatewayd.api.app import CONTEXT

        app = gw.daemon.runner.app  # type: ignore[union-attr]
        app[CONTEXT].checkout_wait_s = 0.5
        answer = await gw.checkout(card(3055), key="slow-1")
        assert answer.status == 504 and answer.error_code == "outcome_pending", answer.body
        for _ in range(100):
            polled = await gw.client.find_checkout("slow-1")
            if polled.body["status"] == "completed":
                break
            await asyncio.sleep(0.1)
        assert polled.body["status"] == "completed"
        await gw.check_invariants()
