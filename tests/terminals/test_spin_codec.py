"""SPIn codec: request bodies, answer shapes, status-code classes, money conversion, secrets."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest

from gatewayd.errors import ProtocolError
from gatewayd.terminals.outcomes import (
    Approved,
    Busy,
    CardReceipt,
    Declined,
    Misconfigured,
    NotFound,
    Offline,
    Unknown,
    Voided,
)
from gatewayd.terminals.spin import codec

CRED = codec.Credentials(tpn="TPN123456789", authkey="AbCdEfGh12")
REF = "d6c871b6a580"


def answer(code: str, result: Any = "0", **extra: Any) -> bytes:
    general: dict[str, Any] = {"ResultCode": result, "StatusCode": code, "Message": "m"}
    general.update(extra.pop("general", {}))
    return json.dumps({"GeneralResponse": general, "ReferenceId": REF, **extra}).encode()


# ------------------------------------------------------------------ money conversion


@pytest.mark.parametrize(
    ("wire", "cents"),
    [
        (Decimal("12.3"), 1230),
        ("12.30", 1230),
        ("12.3", 1230),
        (12, 1200),
        (Decimal("0.01"), 1),
        ("1e2", 10000),
    ],
)
def test_to_cents_is_exact(wire: object, cents: int) -> None:
    assert codec.to_cents(wire) == cents


@pytest.mark.parametrize("wire", ["12.345", "abc", None, True, [], "NaN", "Infinity", Decimal("1e30")])
def test_to_cents_rejects_non_money(wire: object) -> None:
    with pytest.raises(ProtocolError):
        codec.to_cents(wire)


def test_float_amounts_in_answers_map_exactly() -> None:
    # 0.1 + 0.2 style trouble must not happen: 12.3 on the wire is 1230 cents.
    data = answer("0001", Amounts={"TotalAmount": 12.3, "Amount": 12.3})
    outcome = codec.parse_payment(data, op="sale", ref=REF, requested=2460)
    assert isinstance(outcome, Approved) and outcome.amount == 1230


def test_to_dollars() -> None:
    assert codec.to_dollars(1230) == Decimal("12.30")
    assert codec.to_dollars(5) == Decimal("0.05")


# ------------------------------------------------------------------ requests


def test_sale_body_fields() -> None:
    body = json.loads(codec.sale_body(CRED, REF, 1230, 120))
    assert body["Tpn"] == "TPN123456789" and body["Authkey"] == "AbCdEfGh12"
    assert body["SPInProxyTimeout"] == 120
    assert body["ReferenceId"] == REF and body["PaymentType"] == "Credit"
    assert body["InvoiceNumber"]
    raw = codec.sale_body(CRED, REF, 1230, 120)
    assert b'"Amount":12.30' in raw  # decimal dollars, exact, as a JSON number


@pytest.mark.parametrize(
    ("build", "expected"),
    [
        (lambda: codec.auth_body(CRED, REF, 100, 5), {"Amount": 1.0, "ReferenceId": REF}),
        (lambda: codec.capture_body(CRED, REF, 100, 5), {"Amount": 1.0, "ReferenceId": REF}),
        (lambda: codec.return_body(CRED, "new1", 250, 5), {"Amount": 2.5, "ReferenceId": "new1"}),
        (lambda: codec.void_body(CRED, REF, 5), {"ReferenceId": REF}),
        (lambda: codec.void_body(CRED, REF, 5, 99), {"Amount": 0.99}),
        (lambda: codec.status_body(CRED, REF, 5), {"ReferenceId": REF, "PaymentType": "Credit"}),
        (lambda: codec.status_list_body(CRED, 5), {"TransactionFromIndex": 1}),
        (lambda: codec.settle_body(CRED, "s1", 420), {"SPInProxyTimeout": 420}),
    ],
)
def test_request_bodies(build: Any, expected: dict[str, Any]) -> None:
    body = json.loads(build())
    assert body["Tpn"] == CRED.tpn
    for key, value in expected.items():
        assert body[key] == value


def test_proxy_timeout_is_clamped_to_spin_range() -> None:
    assert json.loads(codec.status_body(CRED, REF, 0.2))["SPInProxyTimeout"] == 1
    assert json.loads(codec.status_body(CRED, REF, 9999))["SPInProxyTimeout"] == 720


def test_terminal_status_params() -> None:
    assert codec.terminal_status_params(CRED) == {"request.tpn": CRED.tpn, "request.authkey": CRED.authkey}


def test_credentials_repr_hides_the_key() -> None:
    assert "AbCdEfGh12" not in repr(CRED) and "AbCdEfGh12" not in str(CRED)
    assert "TPN123456789" in repr(CRED)


# ------------------------------------------------------------------ answers


def test_documented_approved_sample() -> None:
    data = json.dumps(
        {
            "GeneralResponse": {
                "ResultCode": "0",
                "StatusCode": "0000",
                "Message": "Approved",
                "DetailedMessage": "APPROVAL VTLMC1",
                "HostResponseCode": "00",
            },
            "PaymentType": "Credit",
            "TransactionType": "Sale",
            "AuthCode": "VTLMC1",
            "ReferenceId": REF,
            "BatchNumber": "103",
            "TransactionNumber": "1",
            "Voided": False,
            "Amounts": {"TotalAmount": 1.05, "Amount": 1, "TipAmount": None, "FeeAmount": 0.03},
            "CardData": {
                "CardType": "Mastercard",
                "EntryType": "ChipContactless",
                "Last4": "4111",
                "First4": "5413",
                "BIN": "541333",
                "Name": "J DOE",
            },
        }
    ).encode()
    outcome = codec.parse_payment(data, op="sale", ref=REF, requested=100)
    assert outcome == Approved(
        reference_id=REF,
        amount=100,
        requested_amount=100,
        auth_code="VTLMC1",
        card_brand="Mastercard",
        last4="4111",
        batch_number="103",
        transaction_number="1",
        status_code="0000",
        transaction_type="sale",
        payment_type="credit",
        receipt=CardReceipt(entry_method="contactless"),
    )
    # Only brand and last four survive: no BIN, first digits or name anywhere.
    assert "541333" not in repr(outcome) and "5413" not in repr(outcome) and "DOE" not in repr(outcome)


def test_documented_duplicate_sample_is_unknown() -> None:
    data = b'{"GeneralResponse":{"ResultCode":"1","StatusCode":"1011","Message":"Canceled",'
    data += b'"DetailedMessage":"Duplicate Reference Id"},"PaymentType":"Credit","ReferenceId":"d6c871b6a580"}'
    outcome = codec.parse_payment(data, op="sale", ref=REF, requested=100)
    assert isinstance(outcome, Unknown) and outcome.status_code == "1011"


@pytest.mark.parametrize(("ok", "err", "proxy"), [("0", "1", "2"), ("Ok", "TerminalError", "ApiError")])
def test_both_result_code_spellings(ok: str, err: str, proxy: str) -> None:
    approved = codec.parse_payment(answer("0000", ok), op="sale", ref=REF, requested=5)
    declined = codec.parse_payment(answer("1015", err), op="sale", ref=REF, requested=5)
    busy = codec.parse_payment(answer("2008", proxy), op="sale", ref=REF, requested=5)
    assert isinstance(approved, Approved) and isinstance(declined, Declined) and isinstance(busy, Busy)


@pytest.mark.parametrize(
    ("delay", "seconds"),
    [(15, 15.0), ("15", 15.0), (" 2.5 ", 2.5), (None, codec.DEFAULT_BUSY_DELAY_S), ("soon", 2.0), (-3, 2.0)],
)
def test_delay_before_next_request_variants(delay: Any, seconds: float) -> None:
    data = answer("2008", "2", general={"DelayBeforeNextRequest": delay})
    outcome = codec.parse_payment(data, op="sale", ref=REF, requested=5)
    assert outcome == Busy(retry_after_s=seconds, status_code="2008", message="m")


def test_partial_approval_takes_the_smaller_amount() -> None:
    data = answer("0001", Amounts={"TotalAmount": "6.00", "Amount": 5.5})
    outcome = codec.parse_payment(data, op="sale", ref=REF, requested=1000)
    assert isinstance(outcome, Approved)
    assert (outcome.amount, outcome.requested_amount, outcome.partial) == (550, 1000, True)


def test_partial_approval_without_amounts_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError):
        codec.parse_payment(answer("0001"), op="sale", ref=REF, requested=1000)


def test_approval_code_with_error_result_code_is_unknown() -> None:
    outcome = codec.parse_payment(answer("0000", "2"), op="sale", ref=REF, requested=5)
    assert isinstance(outcome, Unknown)


def test_answer_for_another_reference_is_a_protocol_error() -> None:
    data = json.dumps({"GeneralResponse": {"ResultCode": "0", "StatusCode": "0000"}, "ReferenceId": "other"})
    with pytest.raises(ProtocolError):
        codec.parse_payment(data.encode(), op="sale", ref=REF, requested=5)


CLASS_TABLE: list[tuple[str, type]] = [
    ("0000", Approved),
    ("0001", Approved),
    ("1015", Declined),
    ("1016", Declined),
    ("1012", Declined),
    ("1000", Busy),
    ("2008", Busy),
    ("2001", Offline),
    ("2011", Offline),
    *[(c, Unknown) for c in ("1011", "2007", "2010", "1006", "1014", "1018", "1030", "1999")],
    *[(c, Misconfigured) for c in ("1009", "2002", "2003", "2004", "2005", "2006", "1013", "2201")],
    ("1001", NotFound),
    ("2009", NotFound),
    ("4242", Unknown),
    ("1004", Unknown),
]


@pytest.mark.parametrize(("code", "kind"), CLASS_TABLE)
def test_status_code_classes_on_status(code: str, kind: type) -> None:
    result = "0" if code in ("0000", "0001") else "1"
    data = answer(code, result, Amounts={"Amount": 1.0})
    assert isinstance(codec.parse_status(data, REF), kind)


@pytest.mark.parametrize("code", ["1001", "2009", "4242", "0002", "9999"])
def test_not_found_or_unrecognised_on_a_sale_is_unknown_never_declined(code: str) -> None:
    assert isinstance(codec.parse_payment(answer(code, "1"), op="sale", ref=REF, requested=5), Unknown)


def test_void_not_found_and_void_approved() -> None:
    assert isinstance(codec.parse_payment(answer("1001", "1"), op="void", ref=REF, requested=None), NotFound)
    ok = codec.parse_payment(answer("0000", Amounts={"Amount": 2}), op="void", ref=REF, requested=None)
    assert isinstance(ok, Voided) and ok.amount == 200


def test_status_reports_voided() -> None:
    data = answer("0000", Voided=True, Amounts={"Amount": "3.00"}, TransactionType="Sale")
    outcome = codec.parse_status(data, REF)
    assert isinstance(outcome, Voided) and outcome.amount == 300


def test_numeric_status_code_is_padded() -> None:
    data = json.dumps({"GeneralResponse": {"ResultCode": 0, "StatusCode": 0}}).encode()
    assert isinstance(codec.parse_payment(data, op="sale", ref=REF, requested=5), Approved)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"{",
        b'{"GeneralResponse": {"ResultCode": "0", "StatusCode": "00',  # truncated
        b"[]",
        b'{"no": "general"}',
        b'{"GeneralResponse": []}',
        b'{"GeneralResponse": {"ResultCode": "1"}}',
        b'{"GeneralResponse": {"ResultCode": "1", "StatusCode": "ABCD"}}',
        b"\xff\xfe",
        b" " * (codec.MAX_ANSWER_BYTES + 1),
    ],
)
def test_malformed_answers_raise_protocol_error(data: bytes) -> None:
    with pytest.raises(ProtocolError):
        codec.parse_payment(data, op="sale", ref=REF, requested=5)


def test_terminal_status() -> None:
    assert codec.parse_terminal_status(b'{"TerminalStatus":"Online","Tpn":"x"}').state == "online"
    assert codec.parse_terminal_status(b'{"TerminalStatus":"Offline"}').state == "offline"
    nf = codec.parse_terminal_status(b'{"TerminalStatus":"NotFound"}')
    assert nf.state == "offline" and nf.misconfigured
    with pytest.raises(ProtocolError):
        codec.parse_terminal_status(b'{"TerminalStatus":"Sleepy"}')


def test_status_list_and_settle() -> None:
    entries = [
        json.loads(answer("0000", TransactionType="Sale", Amounts={"Amount": 1.5}, AuthCode="A1")),
        json.loads(answer("1015", "1", TransactionType="Sale", Amounts={"Amount": 2})),
        json.loads(answer("0000", TransactionType="Return", Amounts={"Amount": 1}, Voided=True)),
    ]
    body = json.dumps({"GeneralResponse": {"ResultCode": "0", "StatusCode": "0000"}, "Transactions": entries})
    batch = codec.parse_status_list(body.encode())
    assert [(e.type, e.amount, e.status) for e in batch] == [
        ("sale", 150, "approved"),
        ("sale", 200, "declined"),
        ("return", 100, "voided"),
    ]
    settle = {
        "GeneralResponse": {"ResultCode": "0", "StatusCode": "0000"},
        "BatchNumber": "7",
        "SettleDetails": [{"TransactionsReports": [{"Count": 3, "Amount": 12.34}]}],
    }
    result = codec.parse_settle(json.dumps(settle).encode())
    assert (result.ok, result.batch, result.count, result.total) == (True, "7", 3, 1234)
    assert codec.parse_settle(answer("1020", "1")).ok
    assert not codec.parse_settle(answer("1015", "1")).ok
