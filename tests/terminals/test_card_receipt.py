"""What the SPIn codec keeps of a card for the receipt, why a terminal said no, and the payment
type on the wire; the simulator's cards, receipts, payment types and busy switch."""

from __future__ import annotations

import json
import uuid
from typing import Any

import aiohttp
import pytest

from gatewayd.terminals.outcomes import Approved, Busy, CardReceipt, Declined, Voided
from gatewayd.terminals.simulator.server import Simulator
from gatewayd.terminals.spin import codec
from gatewayd.terminals.spin.driver import SpinDriver

REF = "REF0001"
NAME, BIN, FIRST4, EXPIRY = "DOE/JANE", "476173", "4761", "1228"


def _answer(**extra: Any) -> bytes:
    answer = {
        "GeneralResponse": {"ResultCode": "0", "StatusCode": "0000", "Message": "Approved"},
        "PaymentType": "Debit",
        "TransactionType": "Sale",
        "AuthCode": "A1B2C3",
        "ReferenceId": REF,
        "BatchNumber": "7",
        "TransactionNumber": "12",
        "RRN": "412345678901",
        "PNReferenceId": "9988",
        "Amounts": {"TotalAmount": 12.34, "Amount": 12.34},
        "CardData": {
            "CardType": "Visa",
            "EntryType": "Chip",
            "Last4": "0119",
            "First4": FIRST4,
            "BIN": BIN,
            "Name": NAME,
            "ExpirationDate": EXPIRY,
        },
        "EMVData": {"ApplicationName": "US DEBIT", "AID": "a0000000980840", "TVR": "0000008000", "TSI": "E800"},
        "Receipts": {
            "Customer": "<C>STORE</C><L>VISA ************0119</L><L>APP: US DEBIT</L><C>APPROVED</C>",
            "Merchant": "<L>CARDHOLDER: JANE DOE</L><L>DOE/JANE</L><L>4761730000000119</L>"
            "<L>EXP 12/28</L><L>BIN 476173</L><L>RRN 412345678901</L><C>MERCHANT COPY</C>",
        },
        **extra,
    }
    return json.dumps(answer).encode()


def test_an_approval_keeps_what_a_receipt_needs() -> None:
    outcome = codec.parse_payment(_answer(), op="sale", ref=REF, requested=1234)
    assert isinstance(outcome, Approved)
    assert (outcome.card_brand, outcome.last4, outcome.auth_code) == ("Visa", "0119", "A1B2C3")
    assert (outcome.batch_number, outcome.transaction_number, outcome.payment_type) == ("7", "12", "debit")
    r = outcome.receipt
    assert (r.entry_method, r.application_label, r.aid, r.host_reference) == (
        "chip",
        "US DEBIT",
        "A0000000980840",
        "412345678901",
    )
    assert r.customer_copy.startswith("<C>STORE</C>") and "MERCHANT COPY" in r.merchant_copy


def test_nothing_else_of_the_card_survives_not_even_in_the_receipt_text() -> None:
    outcome = codec.parse_payment(_answer(), op="sale", ref=REF, requested=1234)
    text = repr(outcome)
    for secret in (NAME, "JANE", "DOE", BIN, FIRST4, EXPIRY, "12/28", "4761730000000119"):
        assert secret not in text, secret
    merchant = outcome.receipt.merchant_copy  # type: ignore[union-attr]
    assert "************0119" in merchant and "RRN 412345678901" in merchant  # 12 digits: not a card number
    assert "APP: US DEBIT" in outcome.receipt.customer_copy  # type: ignore[union-attr]


def test_an_aid_in_the_receipt_text_is_not_taken_for_a_card_number() -> None:
    text = codec.scrub_receipt("<L>AID: A0000000031010</L><L>4111 1111 1111 1111</L>", {})
    assert text == "<L>AID: A0000000031010</L><L>************1111</L>"


@pytest.mark.parametrize(
    ("entry", "method"),
    [("Chip", "chip"), ("ChipContactless", "contactless"), ("Contactless", "contactless"), ("Swipe", "swipe"),
     ("Manual", "manual"), ("None", None), ("Unknown", None), (7, None)],
)  # fmt: skip
def test_entry_methods(entry: object, method: str | None) -> None:
    data = json.loads(_answer())
    data["CardData"]["EntryType"] = entry
    outcome = codec.parse_payment(json.dumps(data).encode(), op="sale", ref=REF, requested=1234)
    assert isinstance(outcome, Approved) and outcome.receipt.entry_method == method


def test_odd_receipt_details_never_doubt_an_approval() -> None:
    odd = _answer(EMVData="garbage", Receipts=["x"], RRN={"a": 1}, PaymentType=3)
    outcome = codec.parse_payment(odd, op="sale", ref=REF, requested=1234)
    assert isinstance(outcome, Approved)
    # the RRN is odd: the PNReferenceId stands in
    assert outcome.receipt == CardReceipt(entry_method="chip", host_reference="9988") and outcome.payment_type is None
    bad_aid = json.loads(_answer())
    bad_aid["EMVData"]["AID"] = "not-an-aid"
    parsed = codec.parse_payment(json.dumps(bad_aid).encode(), op="sale", ref=REF, requested=1234)
    assert isinstance(parsed, Approved) and parsed.receipt.aid == ""


@pytest.mark.parametrize(
    ("code", "message", "reason"),
    [
        ("1015", "Declined", "declined"),
        ("1016", "Payment type mismatch", "declined"),
        ("1012", "Canceled", "cancelled_by_customer"),
        ("1012", "Canceled: Timeout waiting for card", "no_card_presented"),
        ("1012", "Canceled: timed out", "no_card_presented"),
    ],
)
def test_decline_reasons(code: str, message: str, reason: str) -> None:
    text, _, detail = message.partition(": ")
    general = {"ResultCode": "1", "StatusCode": code, "Message": text, "DetailedMessage": detail or text}
    if code == "1015":
        general.update(HostResponseCode="05", HostResponseMessage="DO NOT HONOR")
    data = json.dumps({"GeneralResponse": general, "ReferenceId": REF}).encode()
    outcome = codec.parse_payment(data, op="sale", ref=REF, requested=100)
    assert isinstance(outcome, Declined) and outcome.reason == reason
    if code == "1015":
        assert (outcome.host_code, outcome.host_message) == ("05", "DO NOT HONOR")


@pytest.mark.parametrize("payment_type", ["credit", "debit", "card", "ebt_food", "ebt_cash", "gift"])
def test_payment_type_on_the_wire(payment_type: Any) -> None:
    cred = codec.Credentials(tpn="T1", authkey="K1")
    spelled = codec.SPIN_PAYMENT_TYPES[payment_type]
    bodies = [
        codec.sale_body(cred, REF, 100, 60, payment_type=payment_type),
        codec.auth_body(cred, REF, 100, 60, payment_type=payment_type),
        codec.capture_body(cred, REF, 100, 60, payment_type),
        codec.return_body(cred, REF, 100, 60, invoice="SALE1", payment_type=payment_type),
        codec.void_body(cred, REF, 60, 100, payment_type),
        codec.status_body(cred, REF, 5, payment_type),
    ]
    for body in bodies:
        assert json.loads(body)["PaymentType"] == spelled
    assert json.loads(bodies[0])["GetReceipt"] == "Both" and json.loads(bodies[3])["InvoiceNumber"] == "SALE1"
    assert codec.payment_type_of(spelled) == payment_type


# ------------------------------------------------------------------ the simulator


def _driver(simulator: Simulator, tpn: str | None = None) -> SpinDriver:
    return SpinDriver("t1", simulator.url, tpn or "T" + uuid.uuid4().hex[:11].upper(), "KEY0000001", 5)


async def test_simulated_cards_by_cents(simulator: Simulator) -> None:
    driver = _driver(simulator)
    try:
        seen = {}
        for amount in (1000, 1004, 1007, 1009):
            outcome = await driver.sale(uuid.uuid4().hex[:20], amount)
            assert isinstance(outcome, Approved)
            seen[amount] = outcome.receipt
        assert [seen[a].entry_method for a in (1000, 1004, 1007, 1009)] == ["chip", "contactless", "swipe", "manual"]
        assert seen[1000].aid and seen[1000].application_label and seen[1004].aid
        assert not seen[1007].aid and not seen[1009].application_label  # no chip read: no EMV data
        for receipt in seen.values():
            assert receipt.host_reference and "CUSTOMER COPY" in receipt.customer_copy
            assert "CARDHOLDER: ***" in receipt.merchant_copy  # the name was printed: taken out
    finally:
        await driver.aclose()


async def test_void_status_and_return_must_name_the_sales_type(simulator: Simulator) -> None:
    driver = _driver(simulator)
    try:
        debit_sale, card_sale = uuid.uuid4().hex[:20], uuid.uuid4().hex[:20]
        sale = await driver.sale(debit_sale, 1000, payment_type="debit")
        assert isinstance(sale, Approved) and sale.payment_type == "debit"
        refused = await driver.void(debit_sale, 1000)  # as Credit
        assert isinstance(refused, Declined) and refused.status_code == "1016"
        assert isinstance(await driver.status(debit_sale), Declined)  # a Status as Credit: refused too
        assert isinstance(await driver.status(debit_sale, payment_type="debit"), Approved)
        assert isinstance(await driver.void(debit_sale, 1000, payment_type="debit"), Voided)
        # `card`: the customer chooses (odd whole dollars: debit); Status as sent or as run
        chosen = await driver.sale(card_sale, 1100, payment_type="card")
        assert isinstance(chosen, Approved) and chosen.payment_type == "debit"
        assert isinstance(await driver.status(card_sale, payment_type="card"), Approved)
        wrong = await driver.refund(uuid.uuid4().hex[:20], 1100, payment_type="credit", sale_ref=card_sale)
        assert isinstance(wrong, Declined) and wrong.status_code == "1016"
        right = await driver.refund(uuid.uuid4().hex[:20], 1100, payment_type="debit", sale_ref=card_sale)
        assert isinstance(right, Approved) and right.last4 == chosen.last4  # the same card, paid back
    finally:
        await driver.aclose()


async def test_busy_until_freed(simulator: Simulator) -> None:
    tpn = "T" + uuid.uuid4().hex[:11].upper()
    driver = _driver(simulator, tpn)
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{simulator.url}/_sim/terminals/{tpn}/busy", json={"delay_s": 200}) as resp:
                assert resp.status == 200
            outcome = await driver.sale(uuid.uuid4().hex[:20], 1000)
            assert isinstance(outcome, Busy) and outcome.retry_after_s == 200
            async with http.post(f"{simulator.url}/_sim/terminals/{tpn}/free") as resp:
                assert resp.status == 200
        assert isinstance(await driver.sale(uuid.uuid4().hex[:20], 1000), Approved)
    finally:
        await driver.aclose()
