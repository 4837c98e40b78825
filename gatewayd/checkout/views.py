"""From stored rows to the checkout the POS sees."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from gatewayd.checkout.model import CheckoutView, Failure, RefundView, TenderView
from gatewayd.store.checkouts import CheckoutRows


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _tender(row: Any) -> TenderView:
    card = row["tender_type"] == "card"
    return TenderView(
        type=row["tender_type"],
        amount=row["amount"],
        status=row["status"],
        terminal_id=row["payment_processor_id"] if card else None,
        reference_id=row["reference_id"] if card else None,
        approved_amount=row["approved_amount"] if card and row["approved_amount"] != row["amount"] else None,
        tendered=row["tendered"],
        auth_code=row["auth_code"],
        card_brand=row["card_brand"],
        last4=row["last4"],
        status_code=row["status_code"] if card and row["status"] != "approved" else None,
        message=row["last_error"],
    )


def _refund(row: Any, tenders: list[Any]) -> RefundView:
    ref = next((t["reference_id"] for t in tenders if t["refund_id"] == row["id"]), None)
    return RefundView(
        id=str(row["id"]),
        amount=row["amount"],
        status=row["status"],
        restock=row["restock"],
        reference_id=ref,
        message=row["failure_reason"],
    )


def checkout_view(rows: CheckoutRows) -> CheckoutView:
    """The API's view of one stored checkout."""
    o = rows.order
    failure = Failure(code=o["failure_code"], message=o["failure_reason"] or "") if o["failure_code"] else None
    return CheckoutView(
        id=str(o["id"]),
        order_id=str(o["id"]),
        order_number=o["order_number"],
        idempotency_key=o["idempotency_key"],
        status=o["status"],
        payment_status=o["payment_status"],
        currency=o["currency"],
        subtotal=o["subtotal"],
        tax=o["tax"],
        discount=o["discount"],
        total=o["total"],
        change=o["change_due"],
        tenders=[_tender(t) for t in rows.tenders if t["kind"] == "payment"],
        refunds=[_refund(r, rows.tenders) for r in rows.refunds],
        register_id=o["register_id"],
        customer_id=o["customer_id"],
        loyalty_points=o["loyalty_points"],
        refunded_amount=o["refunded_amount"],
        failure=failure,
        created_at=o["created_at"].isoformat(),
        completed_at=_iso(o["completed_at"]),
    )
