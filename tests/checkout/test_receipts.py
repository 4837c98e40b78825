"""Receipts (issue 17): each kind of checkout rendered as plain text at 40 and 48 columns and as
HTML, carrying the EMV fields from the simulator's answers; and nothing of the card kept but what
a receipt needs, though the simulator sends the cardholder's name, expiry and BIN.

Real daemon, real simulator over HTTP, real PostgreSQL (tests/harness.py).
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gatewayd.checkout.model import CheckoutView, TenderView
from gatewayd.checkout.receipt import Header, Line, Receipt, render_html, render_text
from gatewayd.terminals.simulator.ledger import Card
from tests.harness import Gateway, card, cash, running_gateway

STORE = "Bean & <Leaf>"
RECEIPT = """[receipt]
store_name = "Bean & <Leaf>"
address = ["1 Main St", "Springfield, IL 62701"]
phone = "(555) 010-0100"
footer = ["Thank you!", "Returns within 30 days"]
"""
COFFEE = [{"sku": "COFFEE-1KG", "quantity": 2, "unit_price": 1599}]  # 31.98


@pytest.fixture
async def gw(dsn: str, tmp_path: Path) -> AsyncIterator[Gateway]:
    async with running_gateway(dsn, tmp_path, extra=RECEIPT) as gateway:
        # a stocked SKU whose name needs escaping in HTML
        await gateway.fetch(
            "UPDATE inventory SET name = 'Coffee <b>beans</b> 1 kg' WHERE store_id = $1 AND sku = 'COFFEE-1KG'",
            gateway.store_id,
        )
        yield gateway


async def _texts(gw: Gateway, checkout_id: str, copy: str = "customer") -> dict[int, str]:
    out = {}
    for width in (40, 48):
        answer = await gw.client.receipt(checkout_id, width=width, copy=copy)
        assert answer.status == 200, answer.body
        out[width] = answer.body
    return out


def _lines(text: str) -> list[str]:
    return text.split("\n")


def _amount_line(text: str, label: str, amount: str, width: int) -> str:
    """The line starting with `label`: the amount right-aligned to exactly the width."""
    found = [line for line in _lines(text) if line.startswith(label) and line.rstrip().endswith(amount)]
    assert found, (label, amount, text)
    assert all(len(line) == width for line in found), (label, found)
    return found[0]


def _check_width(text: str, width: int) -> None:
    too_long = [line for line in _lines(text) if len(line) > width]
    assert not too_long, (width, too_long)


def _check_sale(text: str, width: int) -> None:
    _check_width(text, width)
    assert STORE in text and "1 Main St" in text and "(555) 010-0100" in text
    assert "Returns within 30 days" in text and "CUSTOMER COPY" in text
    assert "Coffee <b>beans</b> 1 kg" in text  # the store's name for the SKU
    _amount_line(text, "  2 x 15.99", "31.98", width)
    _amount_line(text, "Subtotal", "31.98", width)


async def _sim_card(gw: Gateway, terminal: str, reference_id: str) -> Card:
    term = gw.simulator.ledger.terminals[gw.tpns[terminal]]
    txn = term.find(reference_id)
    assert txn is not None and txn.card is not None
    return txn.card


# ------------------------------------------------------------------ each kind of checkout


async def test_cash_receipt(gw: Gateway) -> None:
    answer = await gw.checkout(cash(3454, 5000), lines=COFFEE, tax=256)
    assert answer.status == 200, answer.body
    for width, text in (await _texts(gw, answer.body["id"])).items():
        _check_sale(text, width)
        _amount_line(text, "Tax", "2.56", width)
        _amount_line(text, "TOTAL", "USD 34.54", width)
        _amount_line(text, "Cash", "34.54", width)
        _amount_line(text, "  Tendered", "50.00", width)
        _amount_line(text, "Change due", "15.46", width)
        assert "AID" not in text and "- - -" not in text  # one slip


async def test_card_receipt_carries_the_emv_fields(gw: Gateway) -> None:
    # ..80: chip (cents ending 0-3), a discount of 1.00
    answer = await gw.checkout(card(3380), lines=COFFEE, tax=282, discount=100)
    assert answer.status == 200, answer.body
    tender = answer.body["tenders"][0]
    assert tender["entry_method"] == "chip" and tender["payment_type"] == "credit"
    assert tender["aid"] and tender["application_label"] and tender["auth_code"] and tender["host_reference"]
    assert tender["batch_number"] and tender["transaction_number"]
    local = gw.dialect == "local"  # SPIn Local answers carry no receipt copies of the terminal's own
    assert local or "CUSTOMER COPY" in tender["terminal_receipt"]["customer"]
    brand = tender["card_brand"].upper()
    for width, text in (await _texts(gw, answer.body["id"])).items():
        _check_sale(text, width)
        _amount_line(text, "Discount", "-1.00", width)
        _amount_line(text, "TOTAL", "USD 33.80", width)
        _amount_line(text, f"{brand} ****{tender['last4']}", "33.80", width)
        for field in (
            "Credit Chip",
            tender["application_label"],
            f"AID {tender['aid']}",
            f"Auth {tender['auth_code']}",
            f"Ref {tender['host_reference']}",
            f"Batch {tender['batch_number']} Txn {tender['transaction_number']}",
            "APPROVED",
        ):
            assert f"  {field}" in text, (field, text)
        assert "Change due" not in text
        # the terminal's own customer copy follows the card, its tags rendered
        assert local or ("SIMULATED TERMINAL" in text and f"AID: {tender['aid']}" in text and "<C>" not in text)
    merchant = await _texts(gw, answer.body["id"], copy="merchant")
    assert local or ("MERCHANT COPY" in merchant[48] and "CARDHOLDER: ***" in merchant[48])


async def test_split_receipt(gw: Gateway) -> None:
    # cash 10.00 (tendered 20.00) + a tapped card 24.54 (cents ..54 would be busy-once: use ..44)
    answer = await gw.checkout(cash(1000, 2000), card(2444, "lane-2"), lines=COFFEE, tax=246)
    assert answer.status == 200, answer.body
    tender = answer.body["tenders"][1]
    assert tender["entry_method"] == "contactless"
    for width, text in (await _texts(gw, answer.body["id"])).items():
        _check_sale(text, width)
        _amount_line(text, "TOTAL", "USD 34.44", width)
        _amount_line(text, "Cash", "10.00", width)
        _amount_line(text, f"{tender['card_brand'].upper()} ****{tender['last4']}", "24.44", width)
        _amount_line(text, "Change due", "10.00", width)
        assert "Credit Contactless" in text


async def test_refund_slips(gw: Gateway) -> None:
    answer = await gw.checkout(card(3454), lines=COFFEE, tax=256)
    assert answer.status == 200, answer.body
    checkout_id = answer.body["id"]
    first = await gw.client.refund(checkout_id, "receipt-refund-1", 1000)
    second = await gw.client.refund(checkout_id, "receipt-refund-2", 500)
    assert first.status == 200 and second.status == 200, (first.body, second.body)
    last4 = answer.body["tenders"][0]["last4"]
    for width, text in (await _texts(gw, checkout_id)).items():
        _check_width(text, width)
        slips = text.split("- " * (width // 2 - 1) + "-\n")
        assert len(slips) == 3, text  # the sale, then each refund on its own slip
        assert "SALE" in slips[0] and "REFUND" not in slips[0]
        for slip, amount in zip(slips[1:], ("-10.00", "-5.00"), strict=True):
            assert "REFUND" in slip and STORE in slip and "Refunded" in slip
            _amount_line(slip, f"{answer.body['tenders'][0]['card_brand'].upper()} ****{last4}", amount, width)
            _amount_line(slip, "TOTAL REFUNDED", f"USD {amount}", width)
            assert "  Auth " in slip


async def test_void_slip(gw: Gateway) -> None:
    answer = await gw.checkout(cash(1000), card(2454), lines=COFFEE, tax=256)
    assert answer.status == 200, answer.body
    voided = await gw.client.void(answer.body["id"])
    assert voided.status == 200, voided.body
    for width, text in (await _texts(gw, answer.body["id"])).items():
        _check_width(text, width)
        sale, void = text.split("- " * (width // 2 - 1) + "-\n")
        assert "SALE" in sale and "VOIDED" in sale  # the card's fate on the sale slip too
        assert "VOID" in void and "Voided" in void
        _amount_line(void, "Cash", "-10.00", width)
        _amount_line(void, "TOTAL VOIDED", "USD -34.54", width)


async def test_a_declined_checkout_says_nothing_was_charged(gw: Gateway) -> None:
    answer = await gw.checkout(card(2051))
    assert answer.status == 402
    for width, text in (await _texts(gw, answer.body["id"])).items():
        _check_width(text, width)
        assert "NOT COMPLETED - NO SALE" in text and "NOTHING WAS CHARGED" in text
        assert "DECLINED" in text and "DO NOT HONOR" in text


async def test_html_escapes_everything(gw: Gateway) -> None:
    answer = await gw.checkout(cash(1000), card(2454), lines=COFFEE, tax=256)
    assert answer.status == 200
    await gw.client.refund(answer.body["id"], "receipt-html-1", 500)
    page = await gw.client.receipt(answer.body["id"], html=True)
    assert page.status == 200 and page.body.startswith("<!doctype html>")
    body = page.body
    assert "Bean &amp; &lt;Leaf&gt;" in body and "Coffee &lt;b&gt;beans&lt;/b&gt; 1 kg" in body
    assert "<Leaf>" not in body and "<b>beans" not in body
    assert body.count('<section class="slip') == 2  # the sale and the refund
    assert "USD 34.54" in body and "AID A0" in body
    # with no text/html in Accept, plain text; a browser's Accept prefers HTML
    text = await gw.client.receipt(answer.body["id"])
    assert not text.body.startswith("<!doctype")


async def test_receipt_refusals(gw: Gateway) -> None:
    answer = await gw.checkout(cash(1000))
    wrong = await gw.client.receipt(answer.body["id"], width=42)
    assert wrong.status == 400 and wrong.body["error"]["details"]["field"] == "width"
    missing = await gw.client.receipt("00000000-0000-0000-0000-000000000000")
    assert missing.status == 404
    # ..57: the card is never read; while the terminal is asked, the checkout is not final
    pending = asyncio.ensure_future(gw.checkout(card(2057), key="receipt-pending"))
    for _ in range(100):
        found = await gw.client.find_checkout("receipt-pending")
        if found.status == 200:
            break
        await asyncio.sleep(0.05)
    early = await gw.client.receipt(found.body["id"])
    assert early.status == 409 and early.body["error"]["code"] == "invalid_state", early.body
    assert (await pending).status == 402


# ------------------------------------------------------------------ nothing else of the card


async def test_no_bin_name_or_expiry_kept_anywhere(gw: Gateway) -> None:
    sale = await gw.checkout(card(3454), lines=COFFEE, tax=256)
    assert sale.status == 200
    refund = await gw.client.refund(sale.body["id"], "minimise-1", 1000)
    assert refund.status == 200
    cards = [await _sim_card(gw, "lane-1", sale.body["tenders"][0]["reference_id"])]
    cards.append(await _sim_card(gw, "lane-1", refund.body["refunds"][0]["reference_id"]))
    secrets: set[str] = set()
    for c in cards:
        last, _, first = c.name.partition("/")
        secrets |= {c.name, first, last, c.bin, c.bin[:4], c.expiry, f"{c.expiry[:2]}/{c.expiry[2:]}"}
    stored = await gw.fetch(
        "SELECT row_to_json(t)::text AS r FROM payment_transactions t WHERE store_id = $1", gw.store_id
    )
    audit = await gw.fetch("SELECT row_to_json(a)::text AS r FROM audit_events a WHERE store_id = $1", gw.store_id)
    views = [json.dumps(sale.body), json.dumps(refund.body)]
    receipts = [
        (await gw.client.receipt(sale.body["id"], copy=copy, html=html)).body
        for copy in ("customer", "merchant")
        for html in (False, True)
    ]
    everything = [r["r"] for r in stored] + [r["r"] for r in audit] + views + receipts
    assert stored and all(isinstance(t, str) for t in everything)
    for secret in secrets:
        pattern = re.compile(rf"(?<![A-Za-z0-9]){re.escape(secret)}(?![A-Za-z0-9])", re.I)
        leaked = [t[:200] for t in everything if pattern.search(t)]
        assert not leaked, (secret, leaked)
    # what a receipt may show of the card is there
    assert any(f"****{sale.body['tenders'][0]['last4']}" in r for r in receipts)


# ------------------------------------------------------------------ the renderer alone


def _view(**changes: Any) -> CheckoutView:
    base: dict[str, Any] = {
        "id": "c1",
        "order_id": "c1",
        "order_number": "000042",
        "idempotency_key": "k",
        "status": "completed",
        "payment_status": "paid",
        "currency": "USD",
        "subtotal": 123456789,
        "tax": 0,
        "discount": 0,
        "total": 123456789,
        "change": 0,
        "tenders": [TenderView(type="cash", amount=123456789, status="approved")],
        "created_at": "2026-05-09T12:03:04+00:00",
    }
    return CheckoutView(**{**base, **changes})


@pytest.mark.parametrize("width", [40, 48])
def test_long_names_wrap_and_big_amounts_stay_right_aligned(width: int) -> None:
    long_name = "An extraordinarily long product name that no thermal printer could ever fit on one line"
    r = Receipt(
        checkout=_view(),
        lines=(Line("SKU-" + "X" * 60, 1, 123456789, long_name),),
        header=Header(name="A store whose name is far too long for forty columns of paper", footer=("Bye",)),
    )
    text = render_text(r, width)
    _check_width(text, width)
    _amount_line(text, "TOTAL", "USD 1,234,567.89", width)
    assert "extraordinarily" in text
    with pytest.raises(ValueError):
        render_text(r, 42)
    page = render_html(r)
    assert "A store whose name is far too long" in page and "USD 1,234,567.89" in page


@pytest.mark.parametrize(
    ("accept", "html"),
    [
        ("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", True),  # a browser
        ("text/html", True),
        ("text/plain;q=0.5, text/html", True),
        ("text/html;q=0.1, text/plain", False),
        ("text/plain", False),
        ("*/*", False),
        ("", False),
    ],
)
def test_accept_chooses_the_format(accept: str, html: bool) -> None:
    from gatewayd.api.app import _prefers_html

    assert _prefers_html(accept) is html
