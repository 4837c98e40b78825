"""Operations a lane runs on its terminal: small frozen Structs, compared by value.

Every card operation names its payment type (`credit` unless said): a void, a capture, a return
and an inquiry carry the type the sale used.
"""

from __future__ import annotations

import msgspec

from gatewayd.terminals.outcomes import PaymentType


class Sale(msgspec.Struct, frozen=True):
    """Charge `amount` cents under reference id `ref`."""

    ref: str
    amount: int
    payment_type: PaymentType = "credit"


class Auth(msgspec.Struct, frozen=True):
    """Authorize (hold) `amount` cents under reference id `ref`."""

    ref: str
    amount: int
    payment_type: PaymentType = "credit"


class Capture(msgspec.Struct, frozen=True):
    """Capture `amount` cents of the authorization `ref`."""

    ref: str
    amount: int
    payment_type: PaymentType = "credit"


class Void(msgspec.Struct, frozen=True):
    """Void transaction `ref` (open batch only); `amount` is the original's, when known."""

    ref: str
    amount: int | None = None
    payment_type: PaymentType = "credit"


class Refund(msgspec.Struct, frozen=True):
    """Refund `amount` cents as a new transaction with the NEW reference id `ref`; `sale_ref`: the
    reference id of the sale it returns (sent as the Return's invoice number)."""

    ref: str
    amount: int
    payment_type: PaymentType = "credit"
    sale_ref: str | None = None


class Inquire(msgspec.Struct, frozen=True):
    """Ask what became of `ref` (joins the operation on `ref` if one is queued or running).

    `fresh`: ask the terminal even when this lane kept an earlier answer for `ref` (that answer
    may be stale: a Void or Capture since may have changed the transaction)."""

    ref: str
    fresh: bool = False
    payment_type: PaymentType = "credit"


class Settle(msgspec.Struct, frozen=True):
    """Close the open batch."""


class Batch(msgspec.Struct, frozen=True):
    """List the open batch."""


class HealthCheck(msgspec.Struct, frozen=True):
    """Ask whether the terminal is reachable."""


MoneyOp = Sale | Auth | Capture | Void | Refund
Op = MoneyOp | Inquire | Settle | Batch | HealthCheck
MONEY_OPS = (Sale, Auth, Capture, Void, Refund)


def op_name(op: Op) -> str:
    """Lower-case name of an operation, for logs and metrics."""
    return type(op).__name__.lower()
