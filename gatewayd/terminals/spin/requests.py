"""SPIn REST (v2) request bodies and money on the wire: pure functions, no I/O.

Amounts travel as exact decimal dollars (`spin.shared`, with the payment types both dialects
share); credentials live in `Credentials`, whose repr never shows the auth key.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import msgspec

from gatewayd.terminals.outcomes import PaymentType
from gatewayd.terminals.spin.shared import MAX_DOLLARS, SPIN_PAYMENT_TYPES, spin_type, to_cents, to_dollars

__all__ = [
    "MAX_DOLLARS",
    "SPIN_PAYMENT_TYPES",
    "Credentials",
    "auth_body",
    "capture_body",
    "return_body",
    "sale_body",
    "settle_body",
    "spin_type",
    "status_body",
    "status_list_body",
    "terminal_status_params",
    "to_cents",
    "to_dollars",
    "void_body",
]

_encoder = msgspec.json.Encoder(decimal_format="number")


@dataclass(frozen=True, slots=True)
class Credentials:
    """A terminal's SPIn credentials; the auth key never shows in repr or str."""

    tpn: str
    authkey: str = field(repr=False)


# ---------------------------------------------------------------- requests


def _body(cred: Credentials, timeout_s: float, fields: dict[str, Any]) -> bytes:
    payload: dict[str, Any] = {
        "Tpn": cred.tpn,
        "Authkey": cred.authkey,
        "SPInProxyTimeout": max(1, min(720, math.ceil(timeout_s))),
        **fields,
    }
    return _encoder.encode(payload)


def _money_fields(
    ref: str, amount: int, invoice: str | None, payment_type: PaymentType, receipts: str = "No"
) -> dict[str, Any]:
    return {
        "Amount": to_dollars(amount),
        "PaymentType": spin_type(payment_type),
        "ReferenceId": ref,
        "InvoiceNumber": invoice or ref[:50],
        "PrintReceipt": "No",
        "GetReceipt": receipts,
    }


def sale_body(
    cred: Credentials,
    ref: str,
    amount: int,
    timeout_s: float,
    invoice: str | None = None,
    payment_type: PaymentType = "credit",
) -> bytes:
    """Body of `POST /v2/Payment/Sale` (both receipt copies asked for, none printed)."""
    return _body(cred, timeout_s, {**_money_fields(ref, amount, invoice, payment_type, "Both"), "TipAmount": 0})


def auth_body(
    cred: Credentials,
    ref: str,
    amount: int,
    timeout_s: float,
    invoice: str | None = None,
    payment_type: PaymentType = "credit",
) -> bytes:
    """Body of `POST /v2/Payment/Auth` (no tip: SPIn refuses tips in an Auth)."""
    return _body(cred, timeout_s, _money_fields(ref, amount, invoice, payment_type, "Both"))


def capture_body(
    cred: Credentials, ref: str, amount: int, timeout_s: float, payment_type: PaymentType = "credit"
) -> bytes:
    """Body of `POST /v2/Payment/Capture` for the Auth with reference id `ref`."""
    return _body(cred, timeout_s, _money_fields(ref, amount, None, payment_type))


def return_body(
    cred: Credentials,
    ref: str,
    amount: int,
    timeout_s: float,
    invoice: str | None = None,
    payment_type: PaymentType = "credit",
) -> bytes:
    """Body of `POST /v2/Payment/Return`; `ref` must be a new reference id. `invoice`: the sale's
    reference id, so that the terminal's reports tie the Return to it."""
    return _body(cred, timeout_s, _money_fields(ref, amount, invoice, payment_type, "Both"))


def void_body(
    cred: Credentials, ref: str, timeout_s: float, amount: int | None = None, payment_type: PaymentType = "credit"
) -> bytes:
    """Body of `POST /v2/Payment/Void` naming the original reference id, with its payment type."""
    fields: dict[str, Any] = {"PaymentType": spin_type(payment_type), "ReferenceId": ref, "PrintReceipt": "No"}
    if amount is not None:
        fields["Amount"] = to_dollars(amount)
    return _body(cred, timeout_s, fields)


def status_body(cred: Credentials, ref: str, timeout_s: float, payment_type: PaymentType = "credit") -> bytes:
    """Body of `POST /v2/Payment/Status` (inquiry by reference id, with the sale's payment type)."""
    return _body(cred, timeout_s, {"PaymentType": spin_type(payment_type), "ReferenceId": ref})


def status_list_body(cred: Credentials, timeout_s: float, first: int = 1, last: int = 5000) -> bytes:
    """Body of `POST /v2/Payment/StatusList` (the open batch)."""
    fields = {"PaymentType": "Credit", "TransactionFromIndex": first, "TransactionToIndex": last}
    return _body(cred, timeout_s, fields)


def settle_body(cred: Credentials, ref: str, timeout_s: float) -> bytes:
    """Body of `POST /v2/Payment/Settle`."""
    return _body(cred, timeout_s, {"ReferenceId": ref, "SettlementType": "Close", "GetReceipt": "No"})


def terminal_status_params(cred: Credentials) -> dict[str, str]:
    """Query parameters of `GET /v2/Common/TerminalStatus`."""
    return {"request.tpn": cred.tpn, "request.authkey": cred.authkey}
