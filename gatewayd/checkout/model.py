"""Checkout requests and answers: the Structs the API validates with and answers in.

Money is an int of minor units everywhere; a float, a negative or a missing field is refused
by the decoder itself, before any code of ours runs.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from gatewayd.terminals.outcomes import EntryMethod, PaymentType

Money = Annotated[int, Meta(ge=0, le=2**53)]
PositiveMoney = Annotated[int, Meta(gt=0, le=2**53)]
Key = Annotated[str, Meta(min_length=1, max_length=200, pattern=r"^[\x21-\x7e]+$")]
ShortId = Annotated[str, Meta(min_length=1, max_length=100, pattern=r"^[^\x00-\x1f\x7f]+$")]

CheckoutStatus = Literal[
    "pending_payment",
    "payment_processing",
    "payment_authorized",
    "completed",
    "payment_failed",
    "cancelled",
    "voided",
    "refunded",
    "partially_refunded",
]
TenderStatus = Literal["pending", "processing", "approved", "declined", "failed", "unknown", "voided", "refunded"]
FINAL_STATUSES = frozenset({"completed", "payment_failed", "cancelled", "voided", "refunded", "partially_refunded"})


class _In(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    pass


class Line(_In, frozen=True):
    """One order line."""

    sku: ShortId
    quantity: Annotated[int, Meta(ge=1, le=1_000_000)]
    unit_price: Money


class CashTender(_In, frozen=True, tag="cash", tag_field="type"):
    """Cash: approved at once; `tendered` (optional, >= amount) gives change."""

    amount: Money
    tendered: Money | None = None


# omit_defaults: a request without payment_type encodes (and so hashes) as it did before the
# field existed, so a retry with the same key of a checkout made before it still matches.
class CardTender(_In, frozen=True, tag="card", tag_field="type", omit_defaults=True):
    """A card charge on one of the store's terminals; `payment_type` (left out: the terminal's
    `[[terminals]] payment_type`, credit unless configured) is what the terminal runs it as:
    `card` lets the customer choose on the terminal."""

    amount: PositiveMoney
    terminal_id: ShortId
    payment_type: PaymentType | None = None


Tender = CashTender | CardTender


class CheckoutRequest(_In, frozen=True):
    """POST /v1/checkouts: take payment for an order."""

    idempotency_key: Key
    lines: Annotated[list[Line], Meta(min_length=1)]
    tenders: Annotated[list[Tender], Meta(min_length=1)]
    # ISO 4217; must be the store's ([checkout] currency), which is taken when it is left out.
    currency: Annotated[str, Meta(pattern=r"^[A-Z]{3}$")] | None = None
    tax: Money = 0
    discount: Money = 0
    register_id: ShortId | None = None
    customer_id: ShortId | None = None

    @property
    def subtotal(self) -> int:
        return sum(line.quantity * line.unit_price for line in self.lines)

    @property
    def total(self) -> int:
        return self.subtotal + self.tax - self.discount


class RestockLine(_In, frozen=True):
    """Goods a refund puts back on the shelf."""

    sku: ShortId
    quantity: Annotated[int, Meta(ge=1, le=1_000_000)]


class RefundRequest(_In, frozen=True):
    """POST /v1/checkouts/{id}/refunds.

    `restock` puts goods back on the shelf: a refund of everything left puts back every line; a
    partial one names the `lines` it puts back. A refund goes back on one tender: a split order
    refunded beyond what one tender has left is refunded in parts, each naming its tender.
    """

    idempotency_key: Key
    amount: PositiveMoney
    restock: bool = False
    lines: list[RestockLine] | None = None
    # The tender it goes back on (its index in the checkout's tenders). Left out: a card tender
    # with enough left first, in tender order, then the cash.
    tender_index: Annotated[int, Meta(ge=0, le=49)] | None = None


class _Out(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    pass


FailureReason = Literal[
    "declined",
    "cancelled_by_customer",
    "no_card_presented",
    "partial_approval_reversed",
    "terminal_offline",
    "terminal_busy",
    "terminal_misconfigured",
    "voided_at_terminal",
    "not_charged",
]


class TenderFailure(_Out, frozen=True):
    """Why a card tender did not charge: `reason` to branch on (docs/api.md, "Why a card did not
    charge"), the words for the cashier (the host's when it gave some), the host's own code."""

    reason: FailureReason
    message: str = ""
    host_code: str | None = None


class TerminalReceipt(_Out, frozen=True):
    """The terminal's own receipt text (SPIn `Receipts`), per copy, in Dejavoo's tag format
    (`<C>centred</C><L>left</L>` ...); nothing of the card in it but brand and last four."""

    customer: str | None = None
    merchant: str | None = None


class TenderView(_Out, frozen=True):
    """One tender of a checkout, as the POS sees it. A card carries what a receipt needs once
    the terminal said it; nothing else of the card is kept (no BIN, no name, no expiry)."""

    type: Literal["cash", "card"]
    amount: int
    status: TenderStatus
    terminal_id: str | None = None
    reference_id: str | None = None
    approved_amount: int | None = None
    tendered: int | None = None
    auth_code: str | None = None
    card_brand: str | None = None
    last4: str | None = None
    status_code: str | None = None
    message: str | None = None
    # The charge stands in a closed batch: it can no longer be voided, only refunded.
    settled: bool = False
    # What the card ran as: as asked, or for `card` the customer's choice, as the terminal said.
    payment_type: PaymentType | None = None
    entry_method: EntryMethod | None = None
    application_label: str | None = None
    aid: str | None = None
    host_reference: str | None = None  # the processor's retrieval reference (RRN)
    batch_number: str | None = None
    transaction_number: str | None = None
    terminal_receipt: TerminalReceipt | None = None
    failure: TenderFailure | None = None


class RefundView(_Out, frozen=True):
    """One refund of a checkout: the tender it went back on, and for a card what its receipt needs."""

    id: str
    amount: int
    status: Literal["pending", "completed", "failed"]
    restock: bool = False
    reference_id: str | None = None
    message: str | None = None
    tender_index: int | None = None
    type: Literal["cash", "card"] | None = None
    terminal_id: str | None = None
    payment_type: PaymentType | None = None
    card_brand: str | None = None
    last4: str | None = None
    entry_method: EntryMethod | None = None
    auth_code: str | None = None
    host_reference: str | None = None
    created_at: str | None = None
    completed_at: str | None = None


class Failure(_Out, frozen=True):
    """Why a checkout did not complete: `code` as it always was (card_declined, card_not_charged,
    partial_approval, card_voided, terminal_offline ...), and for a card that did not charge the
    `reason` the POS branches on (the failing tender's `failure.reason`)."""

    code: str
    message: str = ""
    reason: FailureReason | None = None


class CheckoutView(_Out, frozen=True):
    """A checkout in whatever state it is (the answer of POST and GET /v1/checkouts)."""

    id: str
    order_id: str
    order_number: str
    idempotency_key: str
    status: CheckoutStatus
    payment_status: str
    currency: str
    subtotal: int
    tax: int
    discount: int
    total: int
    change: int
    tenders: list[TenderView]
    created_at: str
    register_id: str | None = None
    customer_id: str | None = None
    loyalty_points: int = 0
    refunded_amount: int = 0
    refunds: list[RefundView] = []
    failure: Failure | None = None
    completed_at: str | None = None

    @property
    def final(self) -> bool:
        return self.status in FINAL_STATUSES


class CatalogItem(_Out, frozen=True):
    """One stocked SKU: what is on the shelf, what checkouts under way hold, what can be sold."""

    sku: str
    name: str
    on_hand: int
    reserved: int
    available: int


class CatalogView(_Out, frozen=True):
    """GET /v1/catalog. A SKU not listed is untracked: sold without stock keeping when
    `untracked_skus` is "allow", refused (422 untracked_sku) when it is "refuse"."""

    currency: str
    untracked_skus: Literal["allow", "refuse"]
    items: list[CatalogItem]
