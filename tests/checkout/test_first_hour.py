"""What a POS developer meets first: error bodies that say what to do next, an offline terminal
answered one way, the catalogue, untracked SKUs, the store's currency, per-store order numbers."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.harness import Gateway, card, cash, order, running_gateway


@pytest.fixture
async def gw(dsn: str, tmp_path: Path) -> AsyncIterator[Gateway]:
    async with running_gateway(dsn, tmp_path, terminals=2) as gateway:
        yield gateway
        await gateway.check_invariants()


async def test_every_error_says_what_to_do_next(gw: Gateway) -> None:
    bad = await gw.client.checkout(order(card(100), key="k-bad") | {"tax": -1})
    assert (bad.status, bad.body["error"]["retry"]) == (400, "no"), bad.body
    declined = await gw.checkout(card(1051))
    assert (declined.status, declined.body["error"]["retry"]) == (402, "new_key"), declined.body
    first = await gw.checkout(card(1000), key="k-conflict")
    conflict = await gw.checkout(card(2000), key="k-conflict")
    assert first.status == 200
    assert (conflict.status, conflict.body["error"]["retry"]) == (409, "new_key"), conflict.body
    short = await gw.checkout(card(11_000), lines=[{"sku": "MUG", "quantity": 11, "unit_price": 1000}])
    assert (short.status, short.body["error"]["retry"]) == (422, "no"), short.body
    missing = await gw.client.get_checkout(str(uuid.uuid4()))
    assert (missing.status, missing.body["error"]["retry"]) == (404, "no")
    await gw.simulator_post(f"/_sim/terminals/{gw.tpns['lane-2']}/offline")
    await gw.daemon.fleet.monitor.check_now("lane-2")  # type: ignore[union-attr]
    offline = await gw.checkout(card(1500, "lane-2"))
    assert (offline.status, offline.body["error"]["retry"]) == (503, "same_key"), offline.body
    await gw.simulator_post(f"/_sim/terminals/{gw.tpns['lane-2']}/online")


async def test_offline_terminal_is_answered_alike_before_and_after_the_intent(gw: Gateway) -> None:
    """Caught before the intent (the monitor knew) or after it (the Sale found the terminal
    gone): the same 503 terminal_offline, retry same_key; and once the terminal is back, the
    same key goes through as a new attempt. The failed attempt stays, as history."""
    tpn = gw.tpns["lane-2"]
    await gw.simulator_post(f"/_sim/terminals/{tpn}/offline")
    await gw.daemon.fleet.monitor.check_now("lane-2")  # type: ignore[union-attr]
    before = await gw.checkout(card(1500, "lane-2"), key="k-before")
    assert before.status == 503 and before.error_code == "terminal_offline", before.body
    await gw.simulator_post(f"/_sim/terminals/{tpn}/online")
    await gw.daemon.fleet.monitor.check_now("lane-2")  # type: ignore[union-attr]

    # Offline again, and the daemon has not noticed: the intent is recorded, the Sale finds no terminal.
    await gw.simulator_post(f"/_sim/terminals/{tpn}/offline")
    body = order(card(1500, "lane-2"), key="k-after")
    after = await gw.client.checkout(body)
    assert after.status == 503 and after.error_code == "terminal_offline", after.body
    assert after.body["status"] == "payment_failed" and after.body["tenders"][0]["status"] == "failed"
    assert after.body["error"]["message"] == before.body["error"]["message"]
    assert after.body["error"]["retry"] == before.body["error"]["retry"] == "same_key"
    again = await gw.client.checkout(body)  # still offline: the same answer, nothing new recorded
    assert again.status == 503 and again.body["id"] == after.body["id"], again.body

    await gw.simulator_post(f"/_sim/terminals/{tpn}/online")
    await gw.daemon.fleet.monitor.check_now("lane-2")  # type: ignore[union-attr]
    retried = await gw.client.checkout(body)
    assert retried.status == 200, retried.body
    assert retried.body["id"] != after.body["id"] and retried.body["idempotency_key"] == "k-after"
    assert (await gw.client.find_checkout("k-after")).body["id"] == retried.body["id"]
    replay = await gw.client.checkout(body)
    assert replay.status == 200 and replay.body["id"] == retried.body["id"]
    old = await gw.client.get_checkout(after.body["id"])
    assert (old.body["status"], old.body["idempotency_key"]) == ("payment_failed", "k-after")
    ledger = await gw.ledger()
    assert [(t["reference_id"], t["status"]) for t in ledger] == [
        (retried.body["tenders"][0]["reference_id"], "approved")
    ]
    before_retry = await gw.client.checkout(order(card(1500, "lane-2"), key="k-before"))
    assert before_retry.status == 200, before_retry.body


async def test_a_decline_keeps_its_key(gw: Gateway) -> None:
    body = order(card(1051), key="k-declined")
    first = await gw.client.checkout(body)
    second = await gw.client.checkout(body)
    assert first.status == second.status == 402
    assert first.body["id"] == second.body["id"]
    assert await gw.fetchval("SELECT count(*) FROM orders WHERE store_id = $1", gw.store_id) == 1


async def test_catalog_shows_what_can_be_sold(gw: Gateway) -> None:
    answer = await gw.client.request("GET", "/v1/catalog")
    assert answer.status == 200, answer.body
    assert answer.body["currency"] == "USD" and answer.body["untracked_skus"] == "allow"
    items = {i["sku"]: i for i in answer.body["items"]}
    assert items["MUG"] == {"sku": "MUG", "name": "MUG", "on_hand": 10, "reserved": 0, "available": 10}
    sold = await gw.checkout(card(2000), lines=[{"sku": "MUG", "quantity": 2, "unit_price": 1000}])
    assert sold.status == 200
    items = {i["sku"]: i for i in (await gw.client.request("GET", "/v1/catalog")).body["items"]}
    assert (items["MUG"]["on_hand"], items["MUG"]["available"]) == (8, 8)
    assert "SERVICE" not in items  # untracked: sold without stock keeping


async def test_untracked_skus_refused_when_the_store_says_so(dsn: str, tmp_path: Path) -> None:
    async with running_gateway(dsn, tmp_path, terminals=1, extra='[checkout]\nuntracked_skus = "refuse"\n') as gw:
        answer = await gw.checkout(card(700), lines=[{"sku": "NO-SUCH-SKU", "quantity": 1, "unit_price": 700}])
        assert answer.status == 422 and answer.error_code == "untracked_sku", answer.body
        assert answer.body["error"]["details"]["skus"] == ["NO-SUCH-SKU"]
        assert "NO-SUCH-SKU" in answer.body["error"]["message"]
        assert await gw.ledger() == []
        assert await gw.fetchval("SELECT count(*) FROM orders WHERE store_id = $1", gw.store_id) == 0
        stocked = await gw.checkout(card(1000), lines=[{"sku": "MUG", "quantity": 1, "unit_price": 1000}])
        assert stocked.status == 200, stocked.body


async def test_currency_must_be_the_stores(dsn: str, tmp_path: Path) -> None:
    async with running_gateway(dsn, tmp_path, terminals=1, extra='[checkout]\ncurrency = "EUR"\n') as gw:
        wrong = await gw.checkout(cash(500), currency="USD")
        assert wrong.status == 400 and wrong.body["error"]["details"]["field"] == "currency", wrong.body
        assert "EUR" in wrong.body["error"]["message"]
        implied = await gw.checkout(cash(500))
        assert implied.status == 200 and implied.body["currency"] == "EUR", implied.body
        explicit = await gw.checkout(cash(500), currency="EUR")
        assert explicit.status == 200


async def test_order_numbers_count_per_store(dsn: str, tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    async with (
        running_gateway(dsn, tmp_path / "a", terminals=1) as a,
        running_gateway(dsn, tmp_path / "b", terminals=1) as b,
    ):
        numbers = []
        for gw in (a, b, a, b):
            answer = await gw.checkout(cash(100))
            numbers.append(answer.body["order_number"])
        assert numbers == ["000001", "000001", "000002", "000002"]


async def test_split_refund_lists_what_each_tender_can_refund_and_goes_in_parts(gw: Gateway) -> None:
    sale = await gw.checkout(card(1000), cash(500))
    assert sale.status == 200, sale.body
    refunds = f"/v1/checkouts/{sale.body['id']}/refunds"
    too_much = await gw.client.request("POST", refunds, {"idempotency_key": "r-1", "amount": 1200})
    assert too_much.status == 400 and too_much.body["error"]["retry"] == "no", too_much.body
    details = too_much.body["error"]["details"]
    assert details["field"] == "amount" and details["refundable"] == 1500
    assert details["tenders"] == [
        {"tender_index": 0, "type": "card", "refundable": 1000},
        {"tender_index": 1, "type": "cash", "refundable": 500},
    ]
    assert "tender 0 (card) 1000, tender 1 (cash) 500" in too_much.body["error"]["message"]
    card_part = await gw.client.request("POST", refunds, {"idempotency_key": "r-2", "amount": 1000, "tender_index": 0})
    assert card_part.status == 200, card_part.body
    cash_part = await gw.client.request("POST", refunds, {"idempotency_key": "r-3", "amount": 200, "tender_index": 1})
    assert cash_part.status == 200, cash_part.body
    assert cash_part.body["refunded_amount"] == 1200
    named = await gw.client.request("POST", refunds, {"idempotency_key": "r-4", "amount": 1, "tender_index": 0})
    assert named.status == 400, named.body
    assert named.body["error"]["details"]["tenders"][0] == {"tender_index": 0, "type": "card", "refundable": 0}
    assert "tender 0 has not that much left" in named.body["error"]["message"]
