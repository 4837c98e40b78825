"""Voids and refunds of completed checkouts, executed under the order's lease.

A void reverses every card charge at its terminal, then the order. A charge whose batch has
settled cannot be voided: it stays approved and the void is answered `already_settled`, telling
the POS to refund instead. A refund sends a Return (a new reference id) and is idempotent by its
own key; an order that did not complete but kept a settled charge (an orphan) is refunded the
same way.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from typing import Any

import msgspec

from gatewayd.checkout.errors import (
    AlreadySettled,
    IdempotencyConflict,
    InvalidRequest,
    NotAllowed,
    NotFound,
    OutcomePending,
)
from gatewayd.checkout.executor import Executor, LeaseLost
from gatewayd.checkout.machine import (
    NOT_CHARGED,
    Checkout,
    Done,
    OrderStatus,
    RefundStatus,
    Tender,
    TenderStatus,
    VoidCharge,
    decide_void,
    not_found_late,
)
from gatewayd.checkout.model import RefundRequest
from gatewayd.checkout.persistence import after_intent, before_intent
from gatewayd.checkout.views import checkout_view
from gatewayd.errors import TerminalBusy
from gatewayd.terminals import ops
from gatewayd.terminals.outcomes import Approved, Busy, Declined, Misconfigured, Offline, Outcome, Voided
from gatewayd.terminals.outcomes import NotFound as TermNotFound

log = logging.getLogger(__name__)


def _refund_hash(request: RefundRequest) -> str:
    body = msgspec.to_builtins(request)
    if body.get("tender_index") is None:  # hashed as before tender_index existed
        body.pop("tender_index", None)
    return hashlib.sha256(msgspec.json.encode(body)).hexdigest()


def _unreturned(c: Checkout, t: Tender) -> int:
    """What of a charge is not yet returned (refunds under way or done count as returned)."""
    returned = sum(
        r.amount
        for r in c.tenders
        if r.kind == "refund" and r.tender_index == t.tender_index and r.status not in NOT_CHARGED
    )
    return max(0, (t.approved_amount or t.amount) - returned)


def settled_details(c: Checkout) -> dict[str, Any]:
    """What the POS needs to refund the charges a void could not reverse."""
    settled = [t for t in c.cards if t.status == TenderStatus.APPROVED and t.settled]
    return {
        "checkout_id": str(c.order.id),
        "refund_amount": sum(_unreturned(c, t) for t in settled),
        "tenders": [
            {"reference_id": t.reference_id, "terminal_id": t.terminal_id, "amount": _unreturned(c, t)} for t in settled
        ],
        "next": f"POST /v1/checkouts/{c.order.id}/refunds",
    }


class Reversals:
    """Voids and refunds, on the executor's lanes and leases."""

    def __init__(self, executor: Executor, max_amount: int) -> None:
        self.executor = executor
        self.store = executor.store
        self.max_amount = max_amount

    async def _load(self, order_id: uuid.UUID) -> Checkout:
        c = await after_intent(lambda: self.store.load(order_id=order_id))
        if c is None:
            raise NotFound("no such checkout")
        return c

    async def void(self, order_id: uuid.UUID) -> Checkout:
        """Void every card tender at its terminal, then the order; calling it again changes nothing."""
        try:
            return await self._void(order_id)
        except LeaseLost:
            raise OutcomePending(
                "another process took this checkout over; ask again", details={"checkout_id": str(order_id)}
            ) from None

    async def _void(self, order_id: uuid.UUID) -> Checkout:
        async with self.executor.leased(order_id) as ok:
            if not ok:
                raise OutcomePending(
                    "another process is working on this checkout; ask again", details={"checkout_id": str(order_id)}
                )
            c = await self._load(order_id)
            status = c.order.status
            if status == OrderStatus.VOIDED:
                return _voided(c)
            if (
                status != OrderStatus.COMPLETED
                or c.order.refunded_amount > 0
                or any(r.status == RefundStatus.PENDING for r in c.refunds)
            ):
                raise NotAllowed(
                    f"a checkout that is {status} cannot be voided",
                    details={"status": str(status), "checkout_id": str(order_id)},
                )
            while True:
                step = decide_void(c)
                if not isinstance(step, VoidCharge):
                    break
                if not await self.executor.void_charge(step.tender, c.order.idempotency_key):
                    raise OutcomePending(
                        "the terminal did not confirm the void yet; ask again",
                        details={"checkout_id": str(order_id), "reference_id": step.tender.reference_id},
                    )
                c = await self._load(order_id)
            if isinstance(step, Done):
                return _voided(c)
            result = await after_intent(lambda: self.store.void_order(order_id, self.executor.owner))
            if result["outcome"] == "lease_lost":
                raise OutcomePending(
                    "another process took this checkout over; ask again", details={"checkout_id": str(order_id)}
                )
            if result["outcome"] not in ("voided", "already"):
                raise self.executor.refused("void", order_id, result)
            self.executor.metrics.reversal_finished("void", "completed")
            if result["outcome"] == "voided":
                self.executor.events.finished(order_id, "voided")
            voided = await self._load(order_id)
            log.info(
                "checkout %s: voided (order %s, %d card tender(s), %d)",
                order_id,
                voided.order.order_number,
                len(voided.cards),
                voided.order.total,
            )
            return _voided(voided)

    async def refund(self, order_id: uuid.UUID, request: RefundRequest) -> tuple[Checkout, uuid.UUID]:
        """Refund through the terminal's Return (a new reference id); idempotent by the refund's key.
        Returns the checkout and the refund's id."""
        if request.amount > self.max_amount:
            raise InvalidRequest("amount", f"over the maximum amount {self.max_amount}")
        refund_id, tx_id = uuid.uuid4(), uuid.uuid4()
        payload = {
            "order_id": str(order_id),
            "refund_id": str(refund_id),
            "transaction_id": str(tx_id),
            "idempotency_key": request.idempotency_key,
            "request_hash": _refund_hash(request),
            "amount": request.amount,
            "restock": request.restock,
            "tender_index": request.tender_index,
            "lines": [{"sku": line.sku, "quantity": line.quantity} for line in request.lines or []],
            "reference_id": uuid.uuid4().hex[:20].upper(),
            "timeout_s": 120,
        }
        try:
            # Begun under the order's lease, like a void: a void and a refund of one order never
            # interleave (the second sees what the first did: a voided order is not refunded).
            async with self.executor.leased(order_id) as ok:
                if not ok:
                    raise OutcomePending(
                        "another process is working on this checkout; ask again",
                        details={"checkout_id": str(order_id)},
                    )
                result = await before_intent(self.store.begin_refund(payload))
                _refused(result, request)
                refund_id = uuid.UUID(result["refund_id"])
                completed = await self.finish(refund_id)
        except LeaseLost:
            raise OutcomePending(
                "another process took this checkout over; ask again", details={"checkout_id": str(order_id)}
            ) from None
        c = await self._load(order_id)
        if completed:  # refunded, or partially refunded: the order says which
            self.executor.events.finished(order_id, str(c.order.status))
        return c, refund_id

    async def finish(self, refund_id: uuid.UUID, *, send_pending: bool = True) -> bool:
        """Send (or inquire about) a pending refund's Return and record how it ended; the caller
        holds the order's lease. True when this call completed the refund.

        A Return is card-present (the customer taps again), so recovery (`send_pending=False`)
        never sends one that was interrupted before it left: it fails that refund instead.
        """
        ex = self.executor
        found = await after_intent(lambda: self.store.unresolved_refunds(refund_id=refund_id))
        if not found:
            return False
        tx = found[0]
        owner = ex.owner
        if tx.tender_type == "cash":
            return await self._finished(tx, True, "")
        lane = ex.lanes.for_followup(tx.terminal_id)
        if lane is None:
            raise NotAllowed("the terminal that took this payment is no longer configured")
        if tx.status == TenderStatus.PENDING and not send_pending:
            # Atomic: fails it only if the Return still has not left (a POS retry may be sending it now).
            await after_intent(
                lambda: self.store.fail_unsent_refund(refund_id, "interrupted before it was sent", owner)
            )
            return False
        timeout_s = ex.lanes.timeout_s(tx.terminal_id or "")
        marked = None
        # The Return goes as the sale went (its payment type), naming the sale as its invoice.
        payment_type = tx.card_type

        async def before_send() -> bool:
            nonlocal marked
            marked = await after_intent(lambda: self.store.mark_refund_sent(tx.id, timeout_s, owner, payment_type))
            return marked == "ok"

        op: ops.Op = (
            ops.Refund(tx.reference_id, tx.amount, payment_type, tx.sale_reference)
            if tx.status == TenderStatus.PENDING
            else ops.Inquire(tx.reference_id, payment_type=payment_type)
        )
        try:
            if isinstance(op, ops.Refund):
                outcome = await lane.execute(op, before_send=before_send, may_send=lambda: ex.may_send(tx.order_id))
            else:
                outcome = await lane.execute(op)
        except TerminalBusy:
            raise OutcomePending("the terminal is busy; the refund was not sent", details={}) from None
        if isinstance(op, ops.Refund) and marked != "ok":
            raise OutcomePending(
                "the refund is being finished elsewhere; ask again", details={"refund_id": str(refund_id)}
            )
        if isinstance(op, ops.Inquire) and isinstance(outcome, TermNotFound):
            fresh = await after_intent(lambda: self.store.tender(tx.id))
            if fresh is not None and not not_found_late(*fresh):
                raise OutcomePending(
                    "the terminal has not finished the refund yet", details={"refund_id": str(refund_id)}
                )
        return await self._apply(tx, outcome)

    async def _apply(self, tx: Tender, outcome: Outcome) -> bool:
        ex = self.executor
        sent = tx.status != TenderStatus.PENDING
        if isinstance(outcome, Approved):
            await ex.record(tx, TenderStatus.APPROVED, outcome=outcome)
            return await self._finished(tx, True, "")
        elif isinstance(outcome, Declined | Voided | TermNotFound) or (
            isinstance(outcome, Offline | Misconfigured | Busy) and not sent
        ):
            # Offline/Busy to the Return itself means it never started; to an inquiry it says nothing.
            reason = getattr(outcome, "message", "") or type(outcome).__name__
            status = TenderStatus.DECLINED if isinstance(outcome, Declined) else TenderStatus.FAILED
            await ex.record(tx, status, outcome=outcome, last_error=reason)
            return await self._finished(tx, False, reason)
        await ex.record(tx, TenderStatus.UNKNOWN, last_error=f"refund outcome unknown: {type(outcome).__name__}")
        raise OutcomePending(
            "the refund's outcome is not known yet; recovery will finish it",
            details={"refund_id": str(tx.refund_id)},
        )

    async def _finished(self, tx: Tender, ok: bool, reason: str) -> bool:
        """Record how the refund ended; True when it completed it now (not already)."""
        assert tx.refund_id is not None
        refund_id = tx.refund_id
        result = await after_intent(lambda: self.store.finish_refund(refund_id, ok, reason, self.executor.owner))
        if result.get("outcome") == "lease_lost":
            raise OutcomePending(
                "another process took this checkout over; ask again", details={"refund_id": str(refund_id)}
            )
        if result.get("outcome") != "already":
            outcome = "completed" if ok else "failed"
            self.executor.metrics.reversal_finished("refund", outcome)
            log.info(
                "checkout %s: refund %s %s (%d %s on %s)%s",
                tx.order_id,
                refund_id,
                outcome,
                tx.amount,
                tx.tender_type,
                tx.terminal_id or "cash",
                f": {reason}" if reason else "",
            )
            return ok
        return False


def _voided(c: Checkout) -> Checkout:
    """A voided checkout, or AlreadySettled while a charge of it stands in a settled batch (an
    orphan to refund, listed until it is)."""
    if any(t.status == TenderStatus.APPROVED and t.settled for t in c.cards):
        raise AlreadySettled(
            "voided, but a charge's batch was already settled: the customer is still charged for it;"
            " refund it (it stays listed as an orphan until then)",
            details=settled_details(c),
            checkout=checkout_view(c),
        )
    return c


def _refused(result: dict[str, Any], request: RefundRequest) -> None:
    """Turn begin_refund's refusals into the API's errors."""
    outcome = result["outcome"]
    if outcome == "conflict":
        raise IdempotencyConflict(
            "this refund key was used with another request", details={"idempotency_key": request.idempotency_key}
        )
    if outcome == "not_found":
        raise NotFound("no such checkout")
    if outcome == "not_refundable":
        raise NotAllowed(
            f"a checkout that is {result['status']} cannot be refunded", details={"status": result["status"]}
        )
    if outcome == "void_pending":
        raise NotAllowed("a void of this checkout is under way; it cannot be refunded", details={})
    if outcome == "bad_lines":
        raise InvalidRequest("lines", str(result.get("reason", "")))
    if outcome == "over_limit":
        tenders = result.get("tenders") or []
        each = ", ".join(f"tender {t['tender_index']} ({t['type']}) {t['refundable']}" for t in tenders)
        error = InvalidRequest(
            "amount",
            f"at most {result['refundable']} can still be refunded"
            + (f" ({result['reason']})" if "reason" in result else "")
            + (f"; each tender can still refund: {each}. Refund in parts, naming tender_index" if each else ""),
        )
        error.details.update(refundable=result["refundable"], tenders=tenders)
        raise error
