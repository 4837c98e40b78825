"""From stored rows to the checkout the POS sees."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from gatewayd.checkout.machine import (
    FINAL_ORDER,
    NOT_CHARGED,
    Checkout,
    OrderStatus,
    Refund,
    Tender,
    TenderStatus,
    failed_tender,
    tender_reason,
)
from gatewayd.checkout.model import (
    CheckoutView,
    Failure,
    RefundView,
    TenderFailure,
    TenderView,
    TerminalReceipt,
)


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _failure(t: Tender) -> TenderFailure | None:
    """Why a card tender did not charge (None while it may, or if it was voided only because
    another tender of its order failed)."""
    if t.tender_type != "card" or t.status not in NOT_CHARGED:
        return None
    reason = tender_reason(t)
    if reason is None:
        return None
    # the executor's words carry the host's already ("Declined: DO NOT HONOR")
    words = t.last_error or t.host_message or ""
    return TenderFailure(reason=reason.value, message=words, host_code=t.host_code)  # type: ignore[arg-type]


def _card_fields(t: Tender) -> dict[str, Any]:
    """What a receipt needs of a card (once the terminal said it)."""
    if t.tender_type != "card":
        return {}
    copies = None
    if t.receipt_customer or t.receipt_merchant:
        copies = TerminalReceipt(customer=t.receipt_customer, merchant=t.receipt_merchant)
    return {
        "payment_type": t.payment_type,
        "entry_method": t.entry_method,
        "application_label": t.application_label,
        "aid": t.aid,
        "host_reference": t.host_reference,
        "batch_number": t.batch_number,
        "transaction_number": t.transaction_number,
        "terminal_receipt": copies,
        "failure": _failure(t),
    }


def _tender(t: Tender) -> TenderView:
    card = t.tender_type == "card"
    return TenderView(
        type=t.tender_type,
        amount=t.amount,
        status=t.status.value,
        terminal_id=t.payment_processor_id if card else None,
        reference_id=t.reference_id if card else None,
        approved_amount=t.approved_amount if card and t.approved_amount != t.amount else None,
        tendered=t.tendered,
        auth_code=t.auth_code,
        card_brand=t.card_brand,
        last4=t.last4,
        status_code=t.status_code if card and t.status != TenderStatus.APPROVED else None,
        message=t.last_error,
        settled=t.settled and t.status == TenderStatus.APPROVED,
        **_card_fields(t),
    )


def _refund(r: Refund, tenders: tuple[Tender, ...]) -> RefundView:
    tx = next((t for t in tenders if t.refund_id == r.id), None)
    card = tx is not None and tx.tender_type == "card"
    return RefundView(
        id=str(r.id),
        amount=r.amount,
        status=r.status.value,
        restock=r.restock,
        reference_id=tx.reference_id if tx is not None else None,
        message=r.failure_reason,
        tender_index=tx.tender_index if tx is not None else None,
        type=tx.tender_type if tx is not None else None,
        terminal_id=tx.terminal_id if tx is not None and card else None,
        payment_type=tx.payment_type if tx is not None and card else None,
        card_brand=tx.card_brand if tx is not None else None,
        last4=tx.last4 if tx is not None else None,
        entry_method=tx.entry_method if tx is not None else None,
        auth_code=tx.auth_code if tx is not None else None,
        host_reference=tx.host_reference if tx is not None else None,
        created_at=_iso(r.created_at),
        completed_at=_iso(r.completed_at),
    )


def _order_failure(checkout: Checkout) -> Failure | None:
    o = checkout.order
    if not o.failure_code:
        return None
    reason = None
    if o.status in FINAL_ORDER and o.status != OrderStatus.COMPLETED:
        failed = failed_tender(checkout.cards)
        found = tender_reason(failed) if failed is not None else None
        reason = found.value if found is not None else None
    return Failure(code=o.failure_code, message=o.failure_reason or "", reason=reason)  # type: ignore[arg-type]


def checkout_view(checkout: Checkout) -> CheckoutView:
    """The API's view of one stored checkout."""
    o = checkout.order
    failure = _order_failure(checkout)
    return CheckoutView(
        id=str(o.id),
        order_id=str(o.id),
        order_number=o.order_number,
        idempotency_key=o.retired_key or o.idempotency_key,
        status=o.status.value,
        payment_status=o.payment_status.value,
        currency=o.currency,
        subtotal=o.subtotal,
        tax=o.tax,
        discount=o.discount,
        total=o.total,
        change=o.change_due,
        tenders=[_tender(t) for t in checkout.payments],
        refunds=[_refund(r, checkout.tenders) for r in checkout.refunds],
        register_id=o.register_id,
        customer_id=o.customer_id,
        loyalty_points=o.loyalty_points,
        refunded_amount=o.refunded_amount,
        failure=failure,
        created_at=_iso(o.created_at) or "",
        completed_at=_iso(o.completed_at),
    )
