"""Proposed fixes for the bugs the simulation found, as opt-in patches (exploration only).

gatewayd itself is not changed by the simulation. These patches let one check that a
proposed fix makes the failing seeds pass, and look for the next bug underneath a known one:

    python -m tests.sim --seeds 1-500 --fix lane-void-cache --fix refund-inquiry
    python -m tests.sim --seeds 1-500 --fix all

Each entry says which bug it addresses (see tests/sim/regressions.py and docs/simulation.md).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec

import gatewayd.checkout.coordinator as coordinator_module
import gatewayd.checkout.recovery as recovery_module
import gatewayd.checkout.reversals as reversals
from gatewayd.checkout.errors import NotAllowed, OutcomePending
from gatewayd.terminals import lane as lane_module
from gatewayd.terminals.ops import Capture, Void
from gatewayd.terminals.outcomes import Approved, Busy, Offline, Unknown
from tests.sim import tables


def _swap(module: Any, name: str, value: Any) -> None:
    setattr(module, name, value)


def _coordinator_now() -> datetime:
    """datetime.now(UTC) as the coordinator module sees it (virtual in the simulation)."""
    clock = vars(coordinator_module)["datetime"]
    now: datetime = clock.now(UTC)
    return now


@contextlib.contextmanager
def _lane_void_cache() -> Iterator[None]:
    """BUG lane-void-cache: Lane._finish keeps a Declined answer of a Void (or the lane's own
    "void not applied" verdict, or a Capture's) in `_replay`/`_known`, so every later Void of
    that reference id in the same process gets the cached refusal and is never sent again.
    Fix: keep only definite *successes* of Void/Capture; forget a refusal."""
    original = lane_module.Lane._finish

    def _finish(self: Any, job: Any, result: Any, seconds: float) -> None:
        before = self._known.get(job.op.ref) if isinstance(job.op, (Void, Capture)) else None
        original(self, job, result, seconds)
        if isinstance(job.op, (Void, Capture)) and not isinstance(result, Approved):
            self._replay.pop(job.key, None)
            if before is not None:
                self._known[job.op.ref] = before
            else:
                self._known.pop(job.op.ref, None)

    lane_module.Lane._finish = _finish  # type: ignore[method-assign]
    try:
        yield
    finally:
        lane_module.Lane._finish = original  # type: ignore[method-assign]


@contextlib.contextmanager
def _refund_inquiry() -> Iterator[None]:
    """BUG refund-inquiry: finish_refund inquires (Status) about a Return that may have left and
    `_apply_refund` takes a Busy or Offline answer to that inquiry as "the refund failed", though
    the Return may well have gone through. Fix: an inquiry answered Busy/Offline/Unknown leaves
    the refund pending (OutcomePending); only a Declined, or a NotFound past the terminal's
    timeout, fails it. (Busy/Offline to the Return itself still mean nothing was sent.)"""
    original = reversals._apply_refund

    async def _apply_refund(coord: Any, tx: Any, refund_id: Any, outcome: Any) -> None:
        inquiry = tx["status"] != "pending"
        if inquiry and isinstance(outcome, (Busy, Offline, Unknown)):
            raise OutcomePending(
                "the terminal could not say what became of the refund; recovery will ask again",
                details={"refund_id": str(refund_id)},
            )
        await original(coord, tx, refund_id, outcome)

    reversals._apply_refund = _apply_refund  # type: ignore[assignment]
    try:
        yield
    finally:
        reversals._apply_refund = original  # type: ignore[assignment]


@contextlib.contextmanager
def _not_found_anchor() -> Iterator[None]:
    """BUG not-found-anchor: Coordinator._until_timeout_s believes a "not found" once
    `sent_at + timeout_s + 10 s` has passed, but `sent_at` is when mark_sent ran, not when the
    request physically left: a sale that waited in the lane's queue (or was resent after Busy)
    can still be running on the terminal. After a restart recovery then fails the tender, and
    the charge the terminal approves a moment later belongs to a failed order. Fix (safety net
    shown here): never believe a "not found" before this process's own start + the timeout, since
    every request of an earlier process left before it died; the proper fix persists the time
    of every physical send (a lane `before_send` hook updating sent_at)."""
    original_init = coordinator_module.Coordinator.__init__
    original_until = coordinator_module.Coordinator._until_timeout_s

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        self._started_at = _coordinator_now()

    def _until_timeout_s(self: Any, tender: Any) -> float:
        sent = tender["sent_at"]
        if sent is None:
            return 0.0
        anchor = max(sent, getattr(self, "_started_at", sent))
        limit = anchor + timedelta(seconds=(tender["timeout_s"] or 120) + coordinator_module.NOT_FOUND_MARGIN_S)
        return max(0.0, float((limit - _coordinator_now()).total_seconds()))

    coordinator_module.Coordinator.__init__ = __init__  # type: ignore[method-assign]
    coordinator_module.Coordinator._until_timeout_s = _until_timeout_s  # type: ignore[method-assign]
    try:
        yield
    finally:
        coordinator_module.Coordinator.__init__ = original_init  # type: ignore[method-assign]
        coordinator_module.Coordinator._until_timeout_s = original_until  # type: ignore[method-assign]


@contextlib.contextmanager
def _inquiry_partial() -> Iterator[None]:
    """BUG inquiry-partial: a Status answer carries no requested amount, so a partial approval
    learnt by inquiry (recovery after a crash) is not `partial`: it is recorded as approved,
    the commit answers not_ready and the POS gets internal_error. Fix: in Coordinator._apply
    (or _resolve) name the tender's amount as the requested amount, as the lane's `_fit` does."""
    original = coordinator_module.Coordinator._apply

    async def _apply(self: Any, tender: Any, outcome: Any) -> Any:
        if isinstance(outcome, Approved) and not outcome.voided and outcome.requested_amount != tender["amount"]:
            outcome = msgspec.structs.replace(outcome, requested_amount=tender["amount"])
        return await original(self, tender, outcome)

    coordinator_module.Coordinator._apply = _apply  # type: ignore[method-assign]
    try:
        yield
    finally:
        coordinator_module.Coordinator._apply = original  # type: ignore[method-assign]


@contextlib.contextmanager
def _proposed_sql(name: str) -> Iterator[None]:
    tables.PROPOSED.add(name)
    try:
        yield
    finally:
        tables.PROPOSED.discard(name)


@contextlib.contextmanager
def _capture_after_void() -> Iterator[None]:
    """BUG capture-after-void (auth_capture mode): voiding a completed checkout whose
    authorization was not captured yet leaves `capture_status = 'pending'`; claim_uncaptured
    keeps returning it and every recovery pass sends a Capture for a voided authorization,
    forever. Fix (SQL): gw_void_checkout sets capture_status = NULL on the tenders it voids,
    and claim_uncaptured selects only tenders whose status is 'approved'. (Fixed in gatewayd;
    the fake tables now follow the fixed SQL, so this switch changes nothing any more.)"""
    with _proposed_sql("capture-after-void"):
        yield


@contextlib.contextmanager
def _void_intent() -> Iterator[None]:
    """BUG void-intent: void_checkout sends the voids before anything durable says a void was
    asked for. When the daemon dies while a void is in flight (or the POS gives up after
    outcome_pending) the terminal may have voided the charge while the order stays completed
    and the tender approved: goods gone, money returned, books say sold - and a later refund of
    that order pays the customer a second time. Recovery's half_voided only sees voids that were
    already recorded. Fix: record the request first (here an audit event
    'checkout.void_requested'; better a column), and let half_voided also pick completed orders
    with a void requested; recovery then finishes the void (a void is idempotent at the terminal);
    gw_begin_refund refuses a checkout with a void requested (else the refund of a charge that
    was in fact voided pays the customer twice)."""
    original = reversals.void_checkout

    async def void_checkout(coord: Any, order_id: Any) -> Any:
        rows = await coord._persist(lambda: coord.store.load(order_id=order_id))
        if rows is not None and rows.order["status"] == "completed" and rows.order["refunded_amount"] == 0:
            await coord._persist(lambda: coord.store.audit("checkout.void_requested", order_id=order_id))
        return await original(coord, order_id)

    reversals.void_checkout = void_checkout  # type: ignore[assignment]
    try:
        with _proposed_sql("void-intent"):
            yield
    finally:
        reversals.void_checkout = original  # type: ignore[assignment]


@contextlib.contextmanager
def _refund_race() -> Iterator[None]:
    """BUG refund-race: recovery's refund pass (`finish_refund(..., send_pending=False)`) fails a
    refund that is still `pending` as "interrupted before it was sent" - including one this very
    process is about to send for the POS (refund_checkout between begin_refund and
    mark_refund_sent). mark_refund_sent then changes nothing (the row is no longer pending), but
    finish_refund sends the Return anyway: the customer gets the money, the refund stays failed.
    Fix: recovery skips refunds of orders this process is reversing (the coordinator's per-order
    lock, or a set of refunds in flight), and only touches pending refunds older than a minimum
    age; mark_refund_sent returns whether it moved the row to processing and finish_refund does
    not send when it did not."""
    original = vars(recovery_module)["finish_refund"]

    async def finish_refund(coord: Any, refund_id: Any, *, send_pending: bool = True) -> None:
        if not send_pending:
            rows = await coord._persist(coord.store.unresolved_refunds)
            tx = next((r for r in rows if r["refund_id"] == refund_id), None)
            lock = coord._locks.get(tx["order_id"]) if tx is not None else None
            if lock is not None and lock.locked():
                return
        await original(coord, refund_id, send_pending=send_pending)

    _swap(recovery_module, "finish_refund", finish_refund)
    try:
        yield
    finally:
        _swap(recovery_module, "finish_refund", original)


@contextlib.contextmanager
def _void_refund_pending() -> Iterator[None]:
    """BUG void-refund-pending: void_checkout (and gw_void_checkout) only refuse an order with
    refunded_amount > 0; a refund still pending (its Return sent, the answer unknown) does not
    count. The void goes through, then recovery finishes the refund as approved and
    gw_finish_refund turns the voided order into partially_refunded: the customer got the void
    AND the refund (paid twice), loyalty and register totals go wrong (I2, I3, I5).
    Fix: refuse a void while any refund of the order is pending (Python, before voiding at the
    terminal, and in gw_void_checkout), and make gw_finish_refund refuse an order that is voided."""
    original = reversals.void_checkout

    async def void_checkout(coord: Any, order_id: Any) -> Any:
        rows = await coord._persist(lambda: coord.store.load(order_id=order_id))
        if (
            rows is not None
            and rows.order["status"] == "completed"
            and any(r["status"] == "pending" for r in rows.refunds)
        ):
            raise NotAllowed(
                "a refund of this checkout is still pending; it cannot be voided now",
                details={"checkout_id": str(order_id)},
            )
        return await original(coord, order_id)

    reversals.void_checkout = void_checkout  # type: ignore[assignment]
    try:
        with _proposed_sql("void-refund-pending"):
            yield
    finally:
        reversals.void_checkout = original  # type: ignore[assignment]


@contextlib.contextmanager
def _refund_timeout() -> Iterator[None]:
    """BUG refund-timeout: refund_checkout writes the refund transaction with `timeout_s` 120
    whatever the terminal's own timeout (SPInProxyTimeout up to 720 s), and past_timeout trusts
    it: with a slower terminal a "not found" for a Return still running is believed, the refund
    is failed, and the terminal returns the money moments later. Fix: use the terminal's
    timeout (the lane's driver.timeout_s, as _intent does for sales) for the refund's row, and
    in past_timeout never less than the terminal's current timeout."""
    original = coordinator_module.Coordinator._until_timeout_s

    def _until_timeout_s(self: Any, tender: Any) -> float:
        lane = self.lanes.get(tender["payment_processor_id"] or "")
        terminal_s = int(getattr(getattr(lane, "driver", None), "timeout_s", 0) or 0)
        if terminal_s > (tender["timeout_s"] or 120):
            tender = {**dict(tender), "timeout_s": terminal_s}
        return original(self, tender)  # type: ignore[no-any-return]

    coordinator_module.Coordinator._until_timeout_s = _until_timeout_s  # type: ignore[method-assign]
    try:
        yield
    finally:
        coordinator_module.Coordinator._until_timeout_s = original  # type: ignore[method-assign]


FIXES: dict[str, Callable[[], contextlib.AbstractContextManager[None]]] = {
    "lane-void-cache": _lane_void_cache,
    "refund-inquiry": _refund_inquiry,
    "not-found-anchor": _not_found_anchor,
    "inquiry-partial": _inquiry_partial,
    "capture-after-void": _capture_after_void,
    "void-intent": _void_intent,
    "refund-race": _refund_race,
    "void-refund-pending": _void_refund_pending,
    "refund-timeout": _refund_timeout,
}


@contextlib.contextmanager
def applied(names: tuple[str, ...]) -> Iterator[None]:
    with contextlib.ExitStack() as stack:
        for name in names:
            stack.enter_context(FIXES[name]())
        yield
