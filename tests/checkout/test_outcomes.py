"""Outcomes the cashier can act on (issue 17): every way a card does not charge says why, in a
field the POS branches on, each reached through the simulator's magic cents or controls; and the
card's payment type, per terminal and per tender, carried by inquiry, void and refund.

Real daemon, real simulator over HTTP, real PostgreSQL (tests/harness.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gatewayd.checkout import machine
from tests.dialects import rest_only
from tests.harness import Gateway, card, running_gateway

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
async def gw(dsn: str, tmp_path: Path) -> AsyncIterator[Gateway]:
    async with running_gateway(dsn, tmp_path) as gateway:
        yield gateway


def _typed(amount: int, payment_type: str, terminal: str = "lane-1") -> dict[str, Any]:
    return {**card(amount, terminal), "payment_type": payment_type}


async def _row(gw: Gateway, reference_id: str) -> Any:
    rows = await gw.fetch(
        "SELECT status, failure_code, decline_reason, host_code, host_message, payment_type"
        " FROM payment_transactions WHERE store_id = $1 AND reference_id = $2",
        gw.store_id,
        reference_id,
    )
    assert len(rows) == 1
    return rows[0]


# ------------------------------------------------------------------ why a card did not charge


@pytest.mark.parametrize(
    ("amount", "reason", "code"),
    [
        (2051, "declined", "card_declined"),  # the issuer said no: ask for another card
        (2059, "cancelled_by_customer", "card_declined"),  # the customer pressed cancel
        (2057, "no_card_presented", "card_not_charged"),  # never read: not found after the deadline
        (2056, "partial_approval_reversed", "partial_approval"),  # approved for half, voided
    ],
)
async def test_each_card_refusal_says_why(gw: Gateway, amount: int, reason: str, code: str) -> None:
    answer = await gw.checkout(card(amount))
    body = answer.body
    # The API error stays card_declined (POS code depends on it); the body is the checkout.
    assert answer.status == 402 and answer.error_code == "card_declined", body
    assert body["status"] == "payment_failed" and body["tenders"][0]["amount"] == amount
    tender = body["tenders"][0]
    assert tender["failure"]["reason"] == reason, tender
    assert body["failure"] == {**body["failure"], "code": code, "reason": reason}
    assert body["error"]["details"]["reason"] == reason
    assert tender["failure"]["message"]  # words for the cashier
    row = await _row(gw, tender["reference_id"])
    assert (row["decline_reason"], row["failure_code"]) == (reason, code)
    if reason == "declined":  # the host's own code and words
        assert tender["failure"]["host_code"] == "05" and "DO NOT HONOR" in tender["failure"]["message"]
        assert (row["host_code"], row["host_message"]) == ("05", "DO NOT HONOR")
    if reason == "partial_approval_reversed":
        assert tender["status"] == "voided" and "1028 of 2056" in tender["failure"]["message"]
    await gw.check_invariants()


async def test_terminal_busy(gw: Gateway) -> None:
    """A terminal that stays busy longer than the lane waits: not sent, nothing charged."""
    rest_only("a busy answer names no delay: the lane resends it for its whole busy budget (120 s)")
    tpn = gw.tpns["lane-1"]
    await gw.simulator_post(f"/_sim/terminals/{tpn}/busy", {"delay_s": 300})
    try:
        answer = await gw.checkout(card(1200))
    finally:
        await gw.simulator_post(f"/_sim/terminals/{tpn}/free")
    body = answer.body
    assert answer.status == 503 and answer.error_code == "terminal_busy", body
    assert body["tenders"][0]["failure"]["reason"] == "terminal_busy"
    assert body["failure"]["reason"] == "terminal_busy" and body["error"]["details"]["reason"] == "terminal_busy"
    assert await gw.ledger() == []
    # the same key once the terminal is free: a new attempt that goes through
    again = await gw.client.checkout({**_order_of(body, card(1200))})
    assert again.status == 200, again.body


def _order_of(body: dict[str, Any], *tenders: dict[str, Any]) -> dict[str, Any]:
    return {
        "idempotency_key": body["idempotency_key"],
        "lines": [{"sku": "SERVICE", "quantity": 1, "unit_price": sum(t["amount"] for t in tenders)}],
        "tenders": list(tenders),
    }


async def test_terminal_offline_after_the_intent(dsn: str, tmp_path: Path) -> None:
    """The terminal drops off between health checks: the Sale is refused (2001) after the intent."""
    async with running_gateway(dsn, tmp_path, sections={"health": {"interval_s": 3600}}) as gw:
        for _ in range(100):  # the first health check has run
            if (await gw.client.terminal("lane-1")).body["status"] == "online":
                break
            await asyncio.sleep(0.05)
        await gw.simulator_post(f"/_sim/terminals/{gw.tpns['lane-1']}/offline")
        answer = await gw.checkout(card(1300))
        body = answer.body
        assert answer.status == 503 and answer.error_code == "terminal_offline", body
        assert body["tenders"][0]["failure"]["reason"] == "terminal_offline"
        assert body["failure"]["reason"] == "terminal_offline"
        assert await gw.ledger() == []


async def test_split_fails_for_the_tender_that_failed_not_for_the_one_reversed(gw: Gateway) -> None:
    answer = await gw.checkout(card(1000), card(2051, "lane-2"))
    body = answer.body
    assert answer.status == 402, body
    first, second = body["tenders"]
    assert first["status"] == "voided" and "failure" not in first  # reversed because the other failed
    assert second["status"] == "declined" and second["failure"]["reason"] == "declined"
    assert body["failure"]["code"] == "card_declined" and body["failure"]["reason"] == "declined"
    await gw.check_invariants()


async def test_an_approved_card_has_no_failure(gw: Gateway) -> None:
    answer = await gw.checkout(card(1000))
    assert answer.status == 200 and "failure" not in answer.body["tenders"][0]
    assert "failure" not in answer.body


def test_the_reasons_are_documented() -> None:
    """docs/api.md lists every reason the POS may branch on, with the failure codes beside it."""
    text = (ROOT / "docs" / "api.md").read_text()
    for reason in machine.Reason:
        assert f"`{reason.value}`" in text, reason
    for code in machine.REASON_OF_CODE:
        assert f"`{code}`" in text, code


def test_the_reason_table_in_the_state_docs_is_the_code_s() -> None:
    text = (ROOT / "docs" / "checkout-states.md").read_text()
    for answer, reason in machine.REASONS.items():
        assert f"| `{answer.value}` | `{reason.value}`" in text, answer


def test_a_reason_never_decides_money() -> None:
    """Every answer that ends a charge without charging has a reason, and no reason has a
    verdict of its own: ANSWERS alone says what an answer means for money."""
    for (asked, answer), verdict in machine.ANSWERS.items():
        if asked is machine.Asked.CHARGE and verdict in machine.NOT_CHARGED:
            assert answer in machine.REASONS, answer
    assert set(machine.REASONS.values()) <= set(machine.Reason)


# ------------------------------------------------------------------ payment types


async def test_a_tender_names_its_type_and_the_void_goes_as_the_sale_went(gw: Gateway) -> None:
    answer = await gw.checkout(_typed(1000, "debit"))
    assert answer.status == 200, answer.body
    tender = answer.body["tenders"][0]
    assert tender["payment_type"] == "debit"
    assert [t["payment_type"] for t in await gw.ledger()] == ["debit"]
    # The simulator refuses a Void of another type than the sale's (1016): a void sent as
    # Credit would never be confirmed.
    voided = await gw.client.void(answer.body["id"])
    assert voided.status == 200 and voided.body["status"] == "voided", voided.body
    assert [t["status"] for t in await gw.ledger()] == ["voided"]
    await gw.check_invariants()


async def test_card_lets_the_customer_choose_and_the_refund_follows(gw: Gateway) -> None:
    # `card`: the simulated customer chooses debit on odd whole dollars
    answer = await gw.checkout(_typed(1100, "card"))
    assert answer.status == 200, answer.body
    tender = answer.body["tenders"][0]
    assert tender["payment_type"] == "debit"  # the type it ran as, as the terminal said
    refund = await gw.client.refund(answer.body["id"], "refund-card-1", 1100)
    assert refund.status == 200, refund.body
    assert refund.body["refunds"][0]["payment_type"] == "debit"
    ledger = await gw.ledger()
    assert [(t["type"], t["payment_type"], t["status"]) for t in ledger] == [
        ("sale", "debit", "approved"),
        ("return", "debit", "returned"),
    ]
    await gw.check_invariants()


async def test_a_lost_answer_is_inquired_with_the_sales_type(gw: Gateway) -> None:
    # ..52: approved, the answer lost; a Status sent as Credit would be refused (1016)
    answer = await gw.checkout(_typed(2052, "gift"))
    assert answer.status == 200, answer.body
    assert answer.body["tenders"][0]["payment_type"] == "gift"
    await gw.check_invariants()


def _give_lane_a_type(path: Path, terminal_id: str, payment_type: str) -> None:
    head, lane, rest = path.read_text().partition(f'[[terminals]]\nid = "{terminal_id}"\n')
    path.write_text(head + lane + f'payment_type = "{payment_type}"\n' + rest)


async def test_the_terminals_type_is_the_default(gw: Gateway) -> None:
    _give_lane_a_type(Path(str(gw.daemon.config_path)), "lane-2", "ebt_food")
    assert await gw.daemon.reload()
    answer = await gw.checkout(card(1500, "lane-2"), card(1000, "lane-1"))
    assert answer.status == 200, answer.body
    assert [t["payment_type"] for t in answer.body["tenders"]] == ["ebt_food", "credit"]
    rows = await gw.fetch(
        "SELECT payment_type FROM payment_transactions WHERE store_id = $1 ORDER BY tender_index", gw.store_id
    )
    assert [r["payment_type"] for r in rows] == ["ebt_food", "credit"]  # recorded with the intent
    refund = await gw.client.refund(answer.body["id"], "refund-ebt-1", 500)  # goes back on the first card
    assert refund.status == 200, refund.body
    assert refund.body["refunds"][0]["payment_type"] == "ebt_food"
    await gw.check_invariants()


async def test_an_unknown_type_is_refused(gw: Gateway) -> None:
    answer = await gw.checkout(_typed(1000, "bitcoin"))
    assert answer.status == 400 and answer.error_code == "validation_error"
    assert answer.body["error"]["details"]["field"] == "tenders[0].payment_type"
