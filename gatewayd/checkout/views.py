"""From stored rows to the checkout the POS sees."""

from __future__ import annotations

from datetime import datetime

from gatewayd.checkout.machine import Checkout, Refund, Tender, TenderStatus
from gatewayd.checkout.model import CheckoutView, Failure, RefundView, TenderView


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


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
    )


def _refund(r: Refund, tenders: tuple[Tender, ...]) -> RefundView:
    ref = next((t.reference_id for t in tenders if t.refund_id == r.id), None)
    return RefundView(
        id=str(r.id),
        amount=r.amount,
        status=r.status.value,
        restock=r.restock,
        reference_id=ref,
        message=r.failure_reason,
    )


def checkout_view(checkout: Checkout) -> CheckoutView:
    """The API's view of one stored checkout."""
    o = checkout.order
    failure = Failure(code=o.failure_code, message=o.failure_reason or "") if o.failure_code else None
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
