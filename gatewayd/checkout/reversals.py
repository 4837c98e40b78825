"""Voids and refunds of completed checkouts, on the coordinator's lanes and rows."""

from __future__ import annotations

import hashlib
import uuid
from typing import TYPE_CHECKING, Any

import msgspec

from gatewayd.checkout.errors import IdempotencyConflict, InvalidRequest, NotAllowed, NotFound, OutcomePending
from gatewayd.checkout.model import CheckoutView, RefundRequest
from gatewayd.errors import TerminalBusy
from gatewayd.terminals import ops
from gatewayd.terminals.outcomes import Approved, Busy, Declined, Misconfigured, Offline
from gatewayd.terminals.outcomes import NotFound as TermNotFound

if TYPE_CHECKING:
    from gatewayd.checkout.coordinator import Coordinator


async def void_checkout(coord: Coordinator, order_id: uuid.UUID) -> CheckoutView:
    """Void every card tender at its terminal, then the order; calling it again changes nothing."""
    rows = await coord._persist(lambda: coord.store.load(order_id=order_id))
    if rows is None:
        raise NotFound("no such checkout")
    status = rows.order["status"]
    if status == "voided":
        return await coord._view(order_id)
    if (
        status != "completed"
        or rows.order["refunded_amount"] > 0
        or any(r["status"] == "pending" for r in rows.refunds)
    ):
        raise NotAllowed(
            f"a checkout that is {status} cannot be voided",
            details={"status": status, "checkout_id": str(order_id)},
        )
    for tender in rows.tenders:
        if tender["kind"] == "payment" and tender["tender_type"] == "card" and tender["status"] == "approved":
            if not await coord.void_tender(tender):
                raise OutcomePending(
                    "the terminal did not confirm the void yet; ask again",
                    details={"checkout_id": str(order_id), "reference_id": tender["reference_id"]},
                )
    result = await coord._persist(lambda: coord.store.void_order(order_id))
    if result["outcome"] not in ("voided", "already"):
        raise NotAllowed(
            f"the checkout could not be voided: {result['outcome']}", details={"checkout_id": str(order_id)}
        )
    coord.metrics.checkout_finished("voided", 0.0)
    return await coord._view(order_id)


def _refund_hash(request: RefundRequest) -> str:
    return hashlib.sha256(msgspec.json.encode(request)).hexdigest()


async def refund_checkout(coord: Coordinator, order_id: uuid.UUID, request: RefundRequest) -> CheckoutView:
    """Refund through the terminal's Return (a new reference id); idempotent by the refund's key."""
    refund_id, tx_id = uuid.uuid4(), uuid.uuid4()
    if await coord._db(coord.store.void_pending(order_id)):
        raise NotAllowed(
            "a void of this checkout is under way; it cannot be refunded", details={"checkout_id": str(order_id)}
        )
    if request.amount > coord.policy.max_amount:
        raise InvalidRequest("amount", f"over the maximum amount {coord.policy.max_amount}")
    result = await coord._db(
        coord.store.begin_refund(
            {
                "order_id": str(order_id),
                "refund_id": str(refund_id),
                "transaction_id": str(tx_id),
                "idempotency_key": request.idempotency_key,
                "request_hash": _refund_hash(request),
                "amount": request.amount,
                "restock": request.restock,
                "reference_id": uuid.uuid4().hex[:20].upper(),
                "timeout_s": 120,
            }
        )
    )
    outcome = result["outcome"]
    if outcome == "conflict":
        raise IdempotencyConflict(
            "this refund key was used with another request",
            details={"idempotency_key": request.idempotency_key},
        )
    if outcome == "not_found":
        raise NotFound("no such checkout")
    if outcome == "not_refundable":
        raise NotAllowed(
            f"a checkout that is {result['status']} cannot be refunded", details={"status": result["status"]}
        )
    if outcome == "over_limit":
        raise InvalidRequest(
            "amount",
            f"at most {result['refundable']} can still be refunded"
            + (f" ({result['reason']})" if "reason" in result else ""),
        )
    await finish_refund(coord, uuid.UUID(result["refund_id"]))
    return await coord._view(order_id)


async def finish_refund(coord: Coordinator, refund_id: uuid.UUID, *, send_pending: bool = True) -> None:
    """Send (or inquire about) a pending refund's Return and record how it ended.

    A Return is card-present (the customer taps again), so recovery (`send_pending=False`) never
    sends one that was interrupted before it left: it fails that refund instead.
    """
    rows = await coord._persist(coord.store.unresolved_refunds)
    tx = next((r for r in rows if r["refund_id"] == refund_id), None)
    if tx is None:
        return
    if tx["tender_type"] == "cash":
        await coord._persist(lambda: coord.store.finish_refund(refund_id, True))
        return
    lane = coord.lanes.get(tx["payment_processor_id"])
    if lane is None:
        raise NotAllowed("the terminal that took this payment is no longer configured")
    if tx["status"] == "pending" and not send_pending:
        # Atomic: fails it only if the Return still has not left (a POS retry may be sending it now).
        await coord._persist(lambda: coord.store.fail_unsent_refund(refund_id, "interrupted before it was sent"))
        return
    timeout_s = int(getattr(getattr(lane, "driver", None), "timeout_s", 120))
    marked = False

    async def before_send() -> bool:
        nonlocal marked
        marked = bool(await coord._persist(lambda: coord.store.mark_refund_sent(tx["id"], timeout_s)))
        return marked

    if tx["status"] == "pending":
        op: ops.Op = ops.Refund(tx["reference_id"], tx["amount"])
    else:
        op = ops.Inquire(tx["reference_id"])
    try:
        outcome = await lane.execute(op, before_send=before_send if isinstance(op, ops.Refund) else None)
    except TerminalBusy:
        raise OutcomePending("the terminal is busy; the refund was not sent", details={}) from None
    if isinstance(op, ops.Refund) and not marked:
        raise OutcomePending("the refund is being finished elsewhere; ask again", details={"refund_id": str(refund_id)})
    if isinstance(outcome, TermNotFound) and isinstance(op, ops.Inquire) and not coord.past_timeout(tx):
        raise OutcomePending("the terminal has not finished the refund yet", details={"refund_id": str(refund_id)})
    await _apply_refund(coord, tx, refund_id, outcome)


async def _apply_refund(coord: Coordinator, tx: Any, refund_id: uuid.UUID, outcome: Any) -> None:
    if isinstance(outcome, Approved):
        await coord._record(tx, "approved", outcome=outcome)
        await coord._persist(lambda: coord.store.finish_refund(refund_id, True))
    elif isinstance(outcome, (Declined, TermNotFound)) or (
        isinstance(outcome, (Offline, Misconfigured, Busy)) and tx["status"] == "pending"
    ):
        # Offline/Busy to the Return itself means it never started; to an inquiry it says nothing.
        reason = getattr(outcome, "message", "") or type(outcome).__name__
        await coord._record(
            tx, "declined" if isinstance(outcome, Declined) else "failed", outcome=outcome, last_error=reason
        )
        await coord._persist(lambda: coord.store.finish_refund(refund_id, False, reason))
    else:
        await coord._record(tx, "unknown", last_error=f"refund outcome unknown: {type(outcome).__name__}")
        raise OutcomePending(
            "the refund's outcome is not known yet; recovery will finish it",
            details={"refund_id": str(refund_id)},
        )
