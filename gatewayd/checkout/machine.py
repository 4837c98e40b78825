"""The checkout state machine, in one place.

An order's life is decided here and nowhere else:

* the statuses of orders and tenders (enums that match the SQL `CHECK`s),
* the typed rows the store hands up (`Order`, `Tender`, `Refund`, `Checkout`),
* what a terminal's answer makes of a tender (`ANSWERS`, one row per question and answer), and
  why a tender that did not charge did not, for the cashier (`REASONS`: information only),
* the next step of an order from its stored state (`decide`): charge the next tender, inquire,
  void a charge, commit, fail, or leave it for later.

Everything here is pure: no I/O, no clock of its own (the database's `now()` comes in with the
rows). The live checkout, recovery, reversals and the simulation all execute these decisions
(`gatewayd/checkout/executor.py`); the SQL functions guard the same transitions and refuse any
step that does not fit the stored state. `docs/checkout-states.md` draws the tables below, and
a test keeps the drawing and the tables in step.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any, Literal

import msgspec

from gatewayd.retry import not_found_believable
from gatewayd.terminals.outcomes import (
    Approved,
    Busy,
    Declined,
    EntryMethod,
    Misconfigured,
    NotFound,
    Offline,
    Outcome,
    PaymentType,
    Unknown,
    Voided,
)


class OrderStatus(enum.StrEnum):
    """orders.status"""

    PENDING_PAYMENT = "pending_payment"
    PAYMENT_PROCESSING = "payment_processing"
    PAYMENT_AUTHORIZED = "payment_authorized"
    COMPLETED = "completed"
    PAYMENT_FAILED = "payment_failed"
    CANCELLED = "cancelled"
    VOIDED = "voided"
    REFUNDED = "refunded"
    PARTIALLY_REFUNDED = "partially_refunded"


class PaymentStatus(enum.StrEnum):
    """orders.payment_status"""

    PENDING = "pending"
    PROCESSING = "processing"
    AUTHORIZED = "authorized"
    PAID = "paid"
    FAILED = "failed"
    VOIDED = "voided"
    REFUNDED = "refunded"
    PARTIALLY_REFUNDED = "partially_refunded"


class TenderStatus(enum.StrEnum):
    """payment_transactions.status"""

    PENDING = "pending"  # recorded, never sent
    PROCESSING = "processing"  # sent, no answer stored yet
    APPROVED = "approved"
    DECLINED = "declined"
    FAILED = "failed"  # certainly not charged (never started, or not found after the deadline)
    UNKNOWN = "unknown"  # may have charged: ask again
    VOIDED = "voided"
    REFUNDED = "refunded"  # a settled charge of an order that did not complete, returned in full


class RefundStatus(enum.StrEnum):
    """refunds.status"""

    PENDING = "pending"
    COMPLETED = "completed"
    FAILED = "failed"


OPEN_ORDER = frozenset({OrderStatus.PENDING_PAYMENT, OrderStatus.PAYMENT_PROCESSING, OrderStatus.PAYMENT_AUTHORIZED})
FINAL_ORDER = frozenset(OrderStatus) - OPEN_ORDER
# A tender in doubt: it may have charged, only the terminal can say.
IN_DOUBT = frozenset({TenderStatus.PROCESSING, TenderStatus.UNKNOWN})
# A tender certainly not charging the customer.
NOT_CHARGED = frozenset({TenderStatus.DECLINED, TenderStatus.FAILED, TenderStatus.VOIDED})
# Statuses a terminal answer may move a tender out of.
OPEN_TENDER = frozenset({TenderStatus.PENDING, TenderStatus.PROCESSING, TenderStatus.UNKNOWN})


# Every move a tender may make; the SQL and the executor never make another.
TENDER_TRANSITIONS: frozenset[tuple[TenderStatus, TenderStatus]] = frozenset(
    {
        (TenderStatus.PENDING, TenderStatus.PROCESSING),  # the request leaves
        (TenderStatus.PENDING, TenderStatus.FAILED),  # never sent (withdrawn, terminal gone, order failed)
        (TenderStatus.PENDING, TenderStatus.APPROVED),  # cash, at commit
        (TenderStatus.PENDING, TenderStatus.VOIDED),  # cash, when the order fails
        (TenderStatus.PROCESSING, TenderStatus.PROCESSING),  # sent again after a busy answer
        (TenderStatus.PROCESSING, TenderStatus.APPROVED),
        (TenderStatus.PROCESSING, TenderStatus.DECLINED),
        (TenderStatus.PROCESSING, TenderStatus.FAILED),
        (TenderStatus.PROCESSING, TenderStatus.UNKNOWN),
        (TenderStatus.PROCESSING, TenderStatus.VOIDED),
        (TenderStatus.UNKNOWN, TenderStatus.PROCESSING),
        (TenderStatus.UNKNOWN, TenderStatus.UNKNOWN),
        (TenderStatus.UNKNOWN, TenderStatus.APPROVED),
        (TenderStatus.UNKNOWN, TenderStatus.DECLINED),
        (TenderStatus.UNKNOWN, TenderStatus.FAILED),
        (TenderStatus.UNKNOWN, TenderStatus.VOIDED),
        (TenderStatus.FAILED, TenderStatus.APPROVED),  # "not found" belied by a late approval (an orphan)
        (TenderStatus.APPROVED, TenderStatus.VOIDED),  # a void went through (or the keypad voided it)
        (TenderStatus.APPROVED, TenderStatus.REFUNDED),  # an orphan's settled charge, returned
    }
)


# ------------------------------------------------------------------ rows


class Tender(msgspec.Struct, frozen=True, kw_only=True):
    """One payment_transactions row (a checkout's tender, or a refund's Return)."""

    id: uuid.UUID
    order_id: uuid.UUID
    kind: Literal["payment", "refund"]
    tender_index: int
    tender_type: Literal["cash", "card"]
    operation: Literal["cash", "sale", "auth", "return"]
    amount: int
    status: TenderStatus
    reference_id: str
    refund_id: uuid.UUID | None = None
    approved_amount: int | None = None
    tendered: int | None = None
    capture_status: Literal["pending", "captured"] | None = None
    payment_processor_id: str | None = None
    auth_code: str | None = None
    card_brand: str | None = None
    last4: str | None = None
    status_code: str | None = None
    failure_code: str | None = None
    last_error: str | None = None
    timeout_s: int | None = None
    sent_at: datetime | None = None
    attempts: int = 0
    void_requested_at: datetime | None = None
    settled_at: datetime | None = None
    # sql/009: the card's type, what a receipt needs, why it did not charge (see REASONS)
    payment_type: PaymentType | None = None
    batch_number: str | None = None
    transaction_number: str | None = None
    entry_method: EntryMethod | None = None
    application_label: str | None = None
    aid: str | None = None
    host_reference: str | None = None
    receipt_customer: str | None = None
    receipt_merchant: str | None = None
    decline_reason: str | None = None
    host_code: str | None = None
    host_message: str | None = None
    created_at: datetime | None = None
    # A refund's Return, as unresolved_refunds reads it: the reference id of the sale it returns.
    sale_reference: str | None = None

    @property
    def terminal_id(self) -> str | None:
        return self.payment_processor_id

    @property
    def card_type(self) -> PaymentType:
        """The payment type its follow-ups (inquiry, void, capture, return) name: the one the
        sale ran as, or was sent with; credit for a row from before sql/009 (all ran as credit)."""
        return self.payment_type or "credit"

    @property
    def is_card_payment(self) -> bool:
        return self.kind == "payment" and self.tender_type == "card"

    @property
    def partial(self) -> bool:
        """Approved for less than asked: not enough for the tender, to be voided."""
        return self.status == TenderStatus.APPROVED and (self.approved_amount or 0) < self.amount

    @property
    def settled(self) -> bool:
        """Its batch closed while it was approved: it can no longer be voided, only returned."""
        return self.settled_at is not None


class Order(msgspec.Struct, frozen=True, kw_only=True):
    """One orders row."""

    id: uuid.UUID
    order_number: str
    status: OrderStatus
    payment_status: PaymentStatus
    idempotency_key: str
    retired_key: str | None = None  # the key this order gave back for a retry (sql/007)
    request_hash: str
    card_mode: Literal["sale", "auth_capture"]
    subtotal: int
    tax: int
    discount: int
    total: int
    change_due: int
    refunded_amount: int
    currency: str
    created_at: datetime | None = None  # None only for an order just prepared, never shown
    register_id: str | None = None
    customer_id: str | None = None
    loyalty_points: int = 0
    failure_code: str | None = None
    failure_reason: str | None = None
    lease_owner: str | None = None
    lease_until: datetime | None = None
    completed_at: datetime | None = None
    failed_at: datetime | None = None
    updated_at: datetime | None = None


class Refund(msgspec.Struct, frozen=True, kw_only=True):
    """One refunds row."""

    id: uuid.UUID
    order_id: uuid.UUID
    amount: int
    status: RefundStatus
    restock: bool = False
    failure_reason: str | None = None
    created_at: datetime | None = None
    completed_at: datetime | None = None


class Checkout(msgspec.Struct, frozen=True, kw_only=True):
    """An order with its tenders and refunds, read at `now` on the database's clock."""

    order: Order
    tenders: tuple[Tender, ...]
    refunds: tuple[Refund, ...] = ()
    now: datetime | None = None

    @property
    def payments(self) -> tuple[Tender, ...]:
        return tuple(t for t in self.tenders if t.kind == "payment")

    @property
    def cards(self) -> tuple[Tender, ...]:
        return tuple(t for t in self.tenders if t.is_card_payment)

    def with_tender(self, tender: Tender) -> Checkout:
        """This checkout with one tender replaced (after a write the executor made)."""
        return msgspec.structs.replace(self, tenders=tuple(tender if t.id == tender.id else t for t in self.tenders))


def row(type_: type[Any], record: Mapping[str, Any]) -> Any:
    """A typed row from an asyncpg record (or any mapping of columns); extra columns are ignored."""
    return msgspec.convert(dict(record), type_, from_attributes=False, strict=False)


def tenders_of(records: Iterable[Mapping[str, Any]]) -> tuple[Tender, ...]:
    return tuple(row(Tender, r) for r in records)


# ------------------------------------------------------------------ what an answer makes of a tender


class Asked(enum.StrEnum):
    """What the terminal was asked about a tender."""

    CHARGE = "charge"  # the Sale or Auth itself
    INQUIRY = "inquiry"  # Status of a charge in doubt
    VOID = "void"  # a Void of an approved charge (a sale, or a captured authorization)
    VOID_HOLD = "void hold"  # a Void of an authorization not captured: a hold, not money


class Answer(enum.StrEnum):
    """A terminal's answer, as the machine tells them apart."""

    APPROVED = "approved"
    PARTIAL = "partial"  # approved for less than asked
    VOIDED = "voided"
    DECLINED = "declined"
    NOT_FOUND = "not_found"  # "no such transaction", before it may be believed
    NOT_FOUND_LATE = "not_found_late"  # "no such transaction", past the terminal's own deadline
    BUSY = "busy"
    OFFLINE = "offline"
    MISCONFIGURED = "misconfigured"
    UNKNOWN = "unknown"


class Keep(enum.StrEnum):
    """An answer that decides nothing: the tender keeps its status."""

    ASK_AGAIN = "ask again"  # in doubt, inquire again (with backoff)
    WAIT = "wait"  # "not found" too early: ask again once the deadline has passed
    VOID_AGAIN = "void again"  # the void did not go through: retry it, the charge stands
    SETTLED = "settled"  # the batch closed: the charge stands and needs a Return, never a Void


Verdict = TenderStatus | Keep

# One row per (question, answer). Only a definitive answer decides a tender: approved, declined,
# voided, or "not found" after the terminal's own deadline. Everything else keeps asking.
ANSWERS: dict[tuple[Asked, Answer], Verdict] = {
    (Asked.CHARGE, Answer.APPROVED): TenderStatus.APPROVED,
    (Asked.CHARGE, Answer.PARTIAL): TenderStatus.APPROVED,  # then voided: not enough for the tender
    (Asked.CHARGE, Answer.VOIDED): TenderStatus.VOIDED,
    (Asked.CHARGE, Answer.DECLINED): TenderStatus.DECLINED,
    (Asked.CHARGE, Answer.NOT_FOUND): Keep.WAIT,
    (Asked.CHARGE, Answer.NOT_FOUND_LATE): TenderStatus.FAILED,
    (Asked.CHARGE, Answer.BUSY): TenderStatus.FAILED,  # refused before it started: nothing charged
    (Asked.CHARGE, Answer.OFFLINE): TenderStatus.FAILED,  # never reached the terminal
    (Asked.CHARGE, Answer.MISCONFIGURED): TenderStatus.FAILED,  # refused by the proxy: never started
    (Asked.CHARGE, Answer.UNKNOWN): TenderStatus.UNKNOWN,
    (Asked.INQUIRY, Answer.APPROVED): TenderStatus.APPROVED,
    (Asked.INQUIRY, Answer.PARTIAL): TenderStatus.APPROVED,
    (Asked.INQUIRY, Answer.VOIDED): TenderStatus.VOIDED,
    (Asked.INQUIRY, Answer.DECLINED): TenderStatus.DECLINED,
    (Asked.INQUIRY, Answer.NOT_FOUND): Keep.WAIT,
    (Asked.INQUIRY, Answer.NOT_FOUND_LATE): TenderStatus.FAILED,
    (Asked.INQUIRY, Answer.BUSY): Keep.ASK_AGAIN,
    (Asked.INQUIRY, Answer.OFFLINE): Keep.ASK_AGAIN,
    (Asked.INQUIRY, Answer.MISCONFIGURED): Keep.ASK_AGAIN,
    (Asked.INQUIRY, Answer.UNKNOWN): Keep.ASK_AGAIN,
    (Asked.VOID, Answer.VOIDED): TenderStatus.VOIDED,
    (Asked.VOID, Answer.APPROVED): Keep.VOID_AGAIN,
    (Asked.VOID, Answer.PARTIAL): Keep.VOID_AGAIN,
    (Asked.VOID, Answer.DECLINED): Keep.VOID_AGAIN,
    (Asked.VOID, Answer.NOT_FOUND): Keep.SETTLED,  # we know it was approved: "not found" is never "not charged"
    (Asked.VOID, Answer.NOT_FOUND_LATE): Keep.SETTLED,
    (Asked.VOID, Answer.BUSY): Keep.VOID_AGAIN,
    (Asked.VOID, Answer.OFFLINE): Keep.VOID_AGAIN,
    (Asked.VOID, Answer.MISCONFIGURED): Keep.VOID_AGAIN,
    (Asked.VOID, Answer.UNKNOWN): Keep.VOID_AGAIN,
    # A hold whose batch closed before it was captured lapsed: nothing was ever taken.
    (Asked.VOID_HOLD, Answer.VOIDED): TenderStatus.VOIDED,
    (Asked.VOID_HOLD, Answer.APPROVED): Keep.VOID_AGAIN,
    (Asked.VOID_HOLD, Answer.PARTIAL): Keep.VOID_AGAIN,
    (Asked.VOID_HOLD, Answer.DECLINED): Keep.VOID_AGAIN,
    (Asked.VOID_HOLD, Answer.NOT_FOUND): TenderStatus.VOIDED,
    (Asked.VOID_HOLD, Answer.NOT_FOUND_LATE): TenderStatus.VOIDED,
    (Asked.VOID_HOLD, Answer.BUSY): Keep.VOID_AGAIN,
    (Asked.VOID_HOLD, Answer.OFFLINE): Keep.VOID_AGAIN,
    (Asked.VOID_HOLD, Answer.MISCONFIGURED): Keep.VOID_AGAIN,
    (Asked.VOID_HOLD, Answer.UNKNOWN): Keep.VOID_AGAIN,
}


def void_question(tender: Tender) -> Asked:
    """What a Void of this approved tender asks: the reversal of money received, or the release
    of a hold never captured."""
    if tender.operation == "auth" and tender.capture_status != "captured":
        return Asked.VOID_HOLD
    return Asked.VOID


def answer_of(outcome: Outcome, tender: Tender, *, late: bool) -> Answer:
    """Classify a typed terminal outcome for the table (`late`: past the not-found deadline)."""
    if isinstance(outcome, Approved):
        return Answer.PARTIAL if outcome.amount < tender.amount else Answer.APPROVED
    if isinstance(outcome, Voided):
        return Answer.VOIDED
    if isinstance(outcome, Declined):
        return Answer.DECLINED
    if isinstance(outcome, NotFound):
        return Answer.NOT_FOUND_LATE if late else Answer.NOT_FOUND
    if isinstance(outcome, Busy):
        return Answer.BUSY
    if isinstance(outcome, Offline):
        return Answer.OFFLINE
    if isinstance(outcome, Misconfigured):
        return Answer.MISCONFIGURED
    assert isinstance(outcome, Unknown)
    return Answer.UNKNOWN


def verdict(asked: Asked, outcome: Outcome, tender: Tender, *, late: bool) -> Verdict:
    """What `outcome` (the answer to `asked` about `tender`) makes of the tender."""
    return ANSWERS[(asked, answer_of(outcome, tender, late=late))]


def elapsed_s(tender: Tender, now: datetime | None) -> float:
    """Seconds since the tender's request last left, on the database's clock (0 if never sent)."""
    if tender.sent_at is None or now is None:
        return 0.0
    return (now - tender.sent_at).total_seconds()


def not_found_late(tender: Tender, now: datetime | None) -> bool:
    """True once a "not found" for this tender may be believed (the one rule, gatewayd.retry)."""
    return tender.sent_at is not None and not_found_believable(elapsed_s(tender, now), tender.timeout_s)


# ------------------------------------------------------------------ failures


class Failure(msgspec.Struct, frozen=True):
    """Why a checkout is rolled back: the API error code and a sentence for the cashier."""

    code: str
    message: str


# What the POS is told for each way a tender can end without charging.
FAILURE_CODES = {
    Answer.DECLINED: "card_declined",
    Answer.NOT_FOUND_LATE: "card_not_charged",
    Answer.BUSY: "terminal_busy",
    Answer.OFFLINE: "terminal_offline",
    Answer.MISCONFIGURED: "terminal_misconfigured",
    Answer.VOIDED: "card_voided",
    Answer.PARTIAL: "partial_approval",
}


class Reason(enum.StrEnum):
    """Why a card tender did not charge, in words the POS can branch on (`tenders[i].failure.reason`
    and the checkout's `failure.reason`). Information for the cashier only: what an answer means
    for money is ANSWERS alone; a reason never decides a tender."""

    DECLINED = "declined"  # the card's issuer said no: ask for another card
    CANCELLED_BY_CUSTOMER = "cancelled_by_customer"  # the customer pressed cancel
    NO_CARD_PRESENTED = "no_card_presented"  # timed out waiting for a card; nothing charged
    PARTIAL_APPROVAL_REVERSED = "partial_approval_reversed"  # approved for less, and that voided
    TERMINAL_OFFLINE = "terminal_offline"
    TERMINAL_BUSY = "terminal_busy"
    TERMINAL_MISCONFIGURED = "terminal_misconfigured"  # the terminal refused gatewayd's credentials
    VOIDED_AT_TERMINAL = "voided_at_terminal"  # voided at the terminal (keypad, host reversal)
    NOT_CHARGED = "not_charged"  # anything else that certainly did not charge


# The reason each way a charge ends without charging stands for. A decline is refined by what the
# terminal said (`Declined.reason`: a cancel by the customer, or one that timed out waiting for
# the card); "not found" past the terminal's own deadline means the card flow never completed:
# most often no card was presented (the simulator's ..57), or the request never got there.
REASONS: dict[Answer, Reason] = {
    Answer.DECLINED: Reason.DECLINED,
    Answer.NOT_FOUND_LATE: Reason.NO_CARD_PRESENTED,
    Answer.BUSY: Reason.TERMINAL_BUSY,
    Answer.OFFLINE: Reason.TERMINAL_OFFLINE,
    Answer.MISCONFIGURED: Reason.TERMINAL_MISCONFIGURED,
    Answer.VOIDED: Reason.VOIDED_AT_TERMINAL,
    Answer.PARTIAL: Reason.PARTIAL_APPROVAL_REVERSED,
}

# Failure codes stored without an answer behind them (the lane's queue full, a terminal gone, a
# partial approval voided), and rows from before sql/009: their reason.
REASON_OF_CODE: dict[str, Reason] = {
    "card_declined": Reason.DECLINED,
    "card_not_charged": Reason.NO_CARD_PRESENTED,
    "terminal_busy": Reason.TERMINAL_BUSY,
    "terminal_offline": Reason.TERMINAL_OFFLINE,
    "terminal_misconfigured": Reason.TERMINAL_MISCONFIGURED,
    "card_voided": Reason.VOIDED_AT_TERMINAL,
    "partial_approval": Reason.PARTIAL_APPROVAL_REVERSED,
}


def reason_of(answer: Answer, outcome: Outcome | None = None) -> Reason:
    """Why a charge that ended with `answer` did not charge."""
    if answer is Answer.DECLINED and isinstance(outcome, Declined):
        return Reason(outcome.reason)
    return REASONS.get(answer, Reason.NOT_CHARGED)


def tender_reason(tender: Tender) -> Reason | None:
    """The stored reason of a card tender that did not charge on its own account; None for one
    that charged, or that was voided only because another tender of its order failed."""
    if tender.decline_reason is not None:
        return Reason(tender.decline_reason)
    if tender.failure_code is not None:
        return REASON_OF_CODE.get(tender.failure_code, Reason.NOT_CHARGED)
    if tender.status == TenderStatus.DECLINED:
        return Reason.DECLINED
    return None


# Failures that mean the terminal was never reached, so nothing was charged: a retry with the
# same idempotency key is a new attempt (sql/007's gw_retire_key checks the same, atomically).
UNREACHED = frozenset({"terminal_offline", "terminal_busy"})


def unreached_message(code: str, terminal_id: str | None) -> str:
    """What the cashier is told when a terminal could not be reached, before or after the
    intent was recorded alike."""
    state = "busy" if code == "terminal_busy" else "offline"
    return (
        f"terminal {terminal_id} is {state}; nothing was charged:"
        " retry with the same idempotency key once it is back, or use another terminal"
    )


def failure_of(tender: Tender) -> Failure:
    """The failure a tender that did not charge stands for."""
    code = tender.failure_code or ("card_declined" if tender.status == TenderStatus.DECLINED else "card_not_charged")
    if code in UNREACHED:
        return Failure(code, unreached_message(code, tender.payment_processor_id))
    return Failure(code, tender.last_error or f"tender {tender.status}")


# ------------------------------------------------------------------ the next step of an order


class Charge(msgspec.Struct, frozen=True):
    """Send the tender's Sale or Auth."""

    tender: Tender


class Inquire(msgspec.Struct, frozen=True):
    """Ask the terminal what became of a tender in doubt."""

    tender: Tender


class VoidCharge(msgspec.Struct, frozen=True):
    """Void an approved charge (a partial approval, or a rollback)."""

    tender: Tender


class Commit(msgspec.Struct, frozen=True):
    """Every tender approved for its amount: complete the order."""


class Fail(msgspec.Struct, frozen=True):
    """Nothing charges the customer any more (or what does can only be returned): fail the order."""

    failure: Failure
    status: OrderStatus = OrderStatus.PAYMENT_FAILED


class Done(msgspec.Struct, frozen=True):
    """The order is final: nothing to do."""


class VoidOrder(msgspec.Struct, frozen=True):
    """No card charge of a completed order can be voided any more: take the order back (stock,
    points, register). A charge that stands in a settled batch stays approved: an orphan to refund."""


Step = Charge | Inquire | VoidCharge | Commit | Fail | Done
ReversalStep = VoidCharge | VoidOrder | Done

ABANDONED = Failure("abandoned", "the checkout stopped before this card was charged: not charged")


def decide(checkout: Checkout, *, charge_pending: bool) -> Step:
    """The next step of an order, from its stored state alone.

    `charge_pending`: a tender never sent may be sent now (the live checkout); recovery passes
    False, since a card flow interrupted before it started cannot be resumed without the customer.

    1. a final order: done;
    2. a tender in doubt: inquire (nothing is decided while a charge may stand unknown);
    3. a partial approval: void it (never enough for its tender);
    4. a tender that did not charge (or one that may no longer be sent): void every approved
       charge that can still be voided, then fail the order; settled charges stay, as orphans
       that need a Return;
    5. a tender not yet sent: charge it, one at a time in order;
    6. all approved: commit.
    """
    if checkout.order.status not in OPEN_ORDER:
        return Done()
    cards = checkout.cards
    for t in cards:
        if t.status in IN_DOUBT:
            return Inquire(t)
    for t in cards:
        if t.partial and voidable(t):
            return VoidCharge(t)
    failed = failed_tender(cards)
    pending = next((t for t in cards if t.status == TenderStatus.PENDING), None)
    stuck_partial = next((t for t in cards if t.partial), None)
    if failed is not None or stuck_partial is not None or (pending is not None and not charge_pending):
        for t in cards:
            if voidable(t):
                return VoidCharge(t)
        if failed is not None:
            return Fail(failure_of(failed))
        if stuck_partial is not None:
            return Fail(Failure("partial_approval", "partial approval in a closed batch: to be returned"))
        return Fail(ABANDONED)
    if pending is not None:
        return Charge(pending)
    return Commit()


def failed_tender(cards: Iterable[Tender]) -> Tender | None:
    """The card tender an order fails for: the first that did not charge on its own account (a
    decline, a terminal out of reach ...), before one voided only because another failed."""
    not_charged = [t for t in cards if t.status in NOT_CHARGED]
    return next((t for t in not_charged if t.failure_code is not None), None) or next(iter(not_charged), None)


def decide_void(checkout: Checkout) -> ReversalStep:
    """The next step of voiding a completed order: void each approved charge that can still be
    voided, then the order. A settled charge cannot be voided: it stays approved, the order is
    voided around it, and it is an orphan to refund (the POS is answered `already_settled`). The
    caller has checked that the order may be voided at all (completed, nothing refunded)."""
    if checkout.order.status == OrderStatus.VOIDED:
        return Done()
    for t in checkout.cards:
        if voidable(t):
            return VoidCharge(t)
    return VoidOrder()


def voidable(t: Tender) -> bool:
    """An approved charge a Void can still take back: one whose batch is open, or a hold never
    captured (if its batch closed, the hold lapsed: releasing it records that)."""
    return t.status == TenderStatus.APPROVED and (not t.settled or void_question(t) == Asked.VOID_HOLD)
