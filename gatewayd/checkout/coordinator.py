"""The API's entry to checkouts: idempotency, pre-flight checks and the durable intent.

prepare (durable intent) -> the executor drives the order by the state machine's decisions
(charge each card tender, commit, or void every approved tender and fail the order). Ambiguous
terminal outcomes are never treated as declined: the tender stays in doubt and is asked again,
and anything still open when the daemon stops is finished by recovery from the same rows.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import msgspec

from gatewayd import failpoints
from gatewayd.checkout.errors import (
    CheckoutError,
    IdempotencyConflict,
    InsufficientInventory,
    NotFound,
    OutcomePending,
    RefundDeclined,
    ShuttingDown,
    TerminalOffline,
    UnknownTerminalRequested,
    UntrackedSku,
)
from gatewayd.checkout.executor import Executor
from gatewayd.checkout.machine import (
    FINAL_ORDER,
    UNREACHED,
    Checkout,
    RefundStatus,
    unreached_message,
)
from gatewayd.checkout.model import (
    CardTender,
    CashTender,
    CatalogItem,
    CatalogView,
    CheckoutRequest,
    CheckoutView,
    RefundRequest,
)
from gatewayd.checkout.persistence import after_intent, before_intent, best_effort
from gatewayd.checkout.reversals import Reversals
from gatewayd.checkout.validate import change_due, request_hash, validate
from gatewayd.checkout.views import checkout_view
from gatewayd.errors import StoreError

log = logging.getLogger(__name__)


@dataclass
class _Inflight:
    request_hash: str
    task: asyncio.Task[CheckoutView]
    order_id: uuid.UUID | None = None


class Coordinator:
    """Takes checkouts, voids and refunds from the API and has each driven to its end, exactly once."""

    def __init__(self, executor: Executor, reversals: Reversals) -> None:
        self.executor = executor
        self.reversals = reversals
        self.store = executor.store
        self.policy = executor.policy
        self.metrics = executor.metrics
        self.events = executor.events
        self.accepting = True
        self._inflight: dict[str, _Inflight] = {}

    # ---------------------------------------------------------------- the API's entry points

    @property
    def in_flight(self) -> int:
        return len(self._inflight)

    async def checkout(self, request: CheckoutRequest, wait_s: float) -> CheckoutView:
        """Take payment; returns the checkout once final, or raises OutcomePending (with the
        checkout as it stands) after `wait_s`."""
        if not self.accepting:
            raise ShuttingDown("the daemon is shutting down; nothing was started")
        if request.currency is None:  # hashed as the store's currency, as an explicit one would be
            request = msgspec.structs.replace(request, currency=self.policy.currency)
        validate(request, self.policy)
        digest = request_hash(request)
        entry = self._inflight.get(request.idempotency_key)
        if entry is not None:
            if entry.request_hash != digest:
                raise IdempotencyConflict(
                    "this idempotency key was used with another request",
                    details={"idempotency_key": request.idempotency_key},
                )
        else:
            entry = _Inflight(digest, self.executor.spawn(self._run(request, digest)))
            self._inflight[request.idempotency_key] = entry
            entry.task.add_done_callback(lambda _: self._inflight.pop(request.idempotency_key, None))
        return await self._wait(entry, request.idempotency_key, wait_s)

    async def get(self, order_id: uuid.UUID | None = None, key: str | None = None) -> CheckoutView:
        """The checkout as stored now."""
        c = await before_intent(self.store.load(order_id=order_id, key=key))
        if c is None:
            raise NotFound("no such checkout")
        return checkout_view(c)

    async def receipt(self, order_id: uuid.UUID) -> tuple[CheckoutView, list[dict[str, Any]], datetime | None]:
        """What the checkout's receipt shows: the checkout as stored now, its lines (with the
        store's names for its SKUs) and when it was voided."""
        view = await self.get(order_id)
        lines, voided_at = await before_intent(self.store.receipt_lines(order_id))
        return view, lines, voided_at

    async def catalog(self) -> CatalogView:
        """What the POS may sell, with what is available now."""
        rows = await before_intent(self.store.catalog())
        items = [
            CatalogItem(
                sku=r["sku"],
                name=r["name"],
                on_hand=r["on_hand"],
                reserved=r["reserved"],
                available=r["on_hand"] - r["reserved"],
            )
            for r in rows
        ]
        return CatalogView(currency=self.policy.currency, untracked_skus=self.policy.untracked_skus, items=items)

    async def void(self, order_id: uuid.UUID, wait_s: float) -> CheckoutView:
        """Void a completed checkout (every card tender, then the order); idempotent."""
        task = self._start(self.reversals.void(order_id))
        return checkout_view(await self._await(task, order_id, wait_s))

    async def refund(self, order_id: uuid.UUID, request: RefundRequest, wait_s: float) -> CheckoutView:
        """Refund part or all of a checkout through its terminal; the answer is final only once
        the refund is (completed, or declined as RefundDeclined)."""
        task = self._start(self.reversals.refund(order_id, request))
        c, refund_id = await self._await(task, order_id, wait_s)
        view = checkout_view(c)
        refund = next((r for r in c.refunds if r.id == refund_id), None)
        if refund is None or refund.status == RefundStatus.PENDING:
            raise OutcomePending(
                "the refund's outcome is not known yet; ask again",
                details={"checkout_id": str(order_id), "refund_id": str(refund_id)},
                checkout=view,
            )
        if refund.status == RefundStatus.FAILED:
            raise RefundDeclined(
                f"the refund was not made: {refund.failure_reason or 'declined'}",
                details={"checkout_id": str(order_id), "refund_id": str(refund_id)},
                checkout=view,
            )
        return view

    def _start(self, work: Any) -> asyncio.Task[Any]:
        if not self.accepting:
            work.close()
            raise ShuttingDown("the daemon is shutting down; nothing was started")
        return self.executor.spawn(work)

    async def _view_if_any(self, order_id: uuid.UUID) -> CheckoutView | None:
        """The checkout as stored now, for an answer that is not final; None when it cannot be read
        (the database is away, or the intent has not landed yet): the error is the answer then."""
        try:
            return await self.get(order_id)
        except (CheckoutError, StoreError):
            return None

    async def _await(self, task: asyncio.Task[Any], order_id: uuid.UUID, wait_s: float) -> Any:
        """The reversal's result; it goes on if the caller's wait ends."""
        try:
            return await asyncio.wait_for(asyncio.shield(task), wait_s)
        except TimeoutError:
            view = await self._view_if_any(order_id)
            raise OutcomePending(
                "the terminal has not answered yet; ask again", details={"checkout_id": str(order_id)}, checkout=view
            ) from None

    async def drain(self, deadline_s: float) -> int:
        """Stop accepting, let in-flight work finish within the deadline; returns how many were left."""
        self.accepting = False
        pending = [t for t in self.executor.tasks if not t.done()]
        if pending:
            _, still = await asyncio.wait(pending, timeout=deadline_s)
            for task in still:
                task.cancel()
            if still:
                await asyncio.wait(still, timeout=5)
            return len(still)
        return 0

    # ---------------------------------------------------------------- one checkout

    async def _wait(self, entry: _Inflight, key: str, wait_s: float) -> CheckoutView:
        try:
            view = await asyncio.wait_for(asyncio.shield(entry.task), wait_s)
        except TimeoutError:
            view = None
        if view is not None and view.final:
            return view
        details: dict[str, Any] = {"idempotency_key": key}
        if entry.order_id is not None:
            details["checkout_id"] = str(entry.order_id)
            view = view or await self._view_if_any(entry.order_id)
        raise OutcomePending(
            "the outcome is not known yet; the checkout goes on: poll it", details=details, checkout=view
        )

    async def _run(self, request: CheckoutRequest, digest: str) -> CheckoutView:
        started = time.monotonic()
        outcome = "internal_error"
        try:
            view, fresh = await self._run_inner(request, digest)
            outcome = view.status if fresh else "replayed"
            return view
        except CheckoutError as exc:
            outcome = exc.code
            raise
        finally:
            if outcome != "replayed":
                self.metrics.checkout_finished(outcome, time.monotonic() - started)

    async def _run_inner(self, request: CheckoutRequest, digest: str) -> tuple[CheckoutView, bool]:
        """The checkout's answer, and whether this request drove it (False: a replay of an earlier one)."""
        problem = self._preflight(request)
        if problem is not None:
            # A retry of a checkout that already exists gets its answer even if a terminal is down now.
            # When the database cannot say whether it exists, the answer is 503 (ask again), never
            # the rejection: an earlier attempt with this key may have charged.
            found = await before_intent(self.store.find_key(request.idempotency_key))
            if found is None:
                raise problem
            return await self._existing(found[0], found[1], digest), False
        order_id = uuid.uuid4()
        self._inflight[request.idempotency_key].order_id = order_id
        intent = self._intent(order_id, request, digest)
        while True:
            asked_at = asyncio.get_running_loop().time()  # before the intent can stamp its card sent
            result = await before_intent(self.store.prepare(intent))
            if result["outcome"] == "insufficient":
                raise InsufficientInventory("not enough stock; nothing was charged", details={"skus": result["skus"]})
            if result["outcome"] == "untracked":
                raise UntrackedSku(
                    f"this store keeps no stock of {', '.join(result['skus'])} and refuses untracked SKUs;"
                    " nothing was charged: check the SKUs against GET /v1/catalog",
                    details={"field": "lines", "skus": result["skus"]},
                )
            if result["outcome"] != "exists" or uuid.UUID(result["id"]) == order_id:
                break
            existing = await self._existing(uuid.UUID(result["id"]), result["request_hash"], digest)
            if not await self._gave_key_back(existing, digest):
                return existing, False
        log.info("checkout %s: intent recorded (key %s)", order_id, request.idempotency_key)
        self.events.progress(order_id, request.idempotency_key, "intent_recorded")
        await failpoints.hit("after_intent_commit")
        prepared: Checkout | None = result.get("checkout")
        if prepared is not None and result.get("committed") is not None:
            # No card tender: the intent completed the order in its own transaction (one commit).
            await self.executor.committed(prepared, {"outcome": result["committed"]})
            return checkout_view(prepared), True
        stamp = intent.get("stamp")
        final = await self.executor.drive(
            order_id,
            charge_pending=True,
            checkout=prepared,
            stamped=None if stamp is None else (uuid.UUID(stamp), asked_at),
        )
        if final is not None and final.order.status in FINAL_ORDER:
            return checkout_view(final), True  # the last write answered with the rows
        return await self._view(order_id), True

    async def _gave_key_back(self, earlier: CheckoutView, digest: str) -> bool:
        """A retry of a checkout that failed only because its terminal could not be reached
        (nothing charged) is a new attempt: the failed order gives the key back (and stays, as
        history). Anything else that failed stays the answer for its key."""
        if earlier.status != "payment_failed" or earlier.failure is None:
            return False
        if earlier.failure.code not in UNREACHED:
            return False
        answer = await before_intent(self.store.retire_key(uuid.UUID(earlier.id), digest))
        if answer == "retired":
            log.info("checkout %s: key %s given back for a new attempt", earlier.id, earlier.idempotency_key)
        return answer in ("retired", "gone")

    async def _view(self, order_id: uuid.UUID) -> CheckoutView:
        c = await after_intent(lambda: self.store.load(order_id=order_id))
        if c is None:
            raise NotFound("no such checkout")
        return checkout_view(c)

    def _preflight(self, request: CheckoutRequest) -> CheckoutError | None:
        for i, tender in enumerate(request.tenders):
            if not isinstance(tender, CardTender):
                continue
            lane = self.executor.lanes.for_charge(tender.terminal_id)
            if lane is None:
                return UnknownTerminalRequested(
                    f"no terminal {tender.terminal_id!r} is configured",
                    details={"field": f"tenders[{i}].terminal_id", "terminal_id": tender.terminal_id},
                )
            if lane.state == "offline":
                return TerminalOffline(
                    unreached_message("terminal_offline", tender.terminal_id),
                    details={"terminal_id": tender.terminal_id},
                )
        return None

    def _intent(self, order_id: uuid.UUID, request: CheckoutRequest, digest: str) -> dict[str, Any]:
        op = "auth" if self.policy.card_mode == "auth_capture" else "sale"
        tenders: list[dict[str, Any]] = []
        for tender in request.tenders:
            row: dict[str, Any] = {
                "id": str(uuid.uuid4()),
                "amount": tender.amount,
                "reference_id": uuid.uuid4().hex[:20].upper(),
            }
            if isinstance(tender, CashTender):
                row.update(type="cash", operation="cash", tendered=tender.tendered)
            else:
                row.update(
                    type="card",
                    operation=op,
                    terminal_id=tender.terminal_id,
                    timeout_s=self.executor.lanes.timeout_s(tender.terminal_id),
                    # the tender's own, else its terminal's ([[terminals]] payment_type)
                    payment_type=tender.payment_type or self.executor.lanes.payment_type(tender.terminal_id),
                )
            tenders.append(row)
        # The first card tender is charged first (machine.decide): the intent stamps it sent when
        # its lane is idle, so that its request leaves without a stamp of its own (executor.drive).
        first = next((t for t in tenders if t["type"] == "card"), None)
        lane = None if first is None else self.executor.lanes.for_charge(first["terminal_id"])
        stamp = first["id"] if first is not None and lane is not None and lane.idle else None
        return {
            "id": str(order_id),
            "idempotency_key": request.idempotency_key,
            "request_hash": digest,
            "card_mode": self.policy.card_mode,
            "subtotal": request.subtotal,
            "tax": request.tax,
            "discount": request.discount,
            "total": request.total,
            "change_due": change_due(request),
            "currency": request.currency,
            "register_id": request.register_id,
            "customer_id": request.customer_id,
            "untracked_skus": self.policy.untracked_skus,
            "lease_owner": self.executor.owner,
            "lease_s": self.executor.lease_s,
            "lines": [
                {"sku": line.sku, "quantity": line.quantity, "unit_price": line.unit_price} for line in request.lines
            ],
            "tenders": tenders,
            "stamp": stamp,
            # a checkout without a card tender is completed by its intent (one commit)
            "points_per_unit": self.policy.loyalty_points_per_unit,
            "minor_per_unit": self.policy.minor_units_per_unit,
        }

    async def _existing(self, order_id: uuid.UUID, stored_hash: str, digest: str) -> CheckoutView:
        """Another request already created this checkout: same body -> its outcome; else refuse."""
        if stored_hash != digest:
            raise IdempotencyConflict(
                "this idempotency key was used with another request", details={"checkout_id": str(order_id)}
            )
        delay = 0.05
        deadline = time.monotonic() + self.executor.lease_s
        ex = self.executor
        while True:
            view = await self.get(order_id)
            if view.final:
                return view
            claimed = await best_effort(
                self.store.claim_unfinished(ex.owner, ex.lease_s, take_own=True, limit=1, only=order_id)
            )
            if claimed:
                charge = view.status == "pending_payment"
                await ex.drive(order_id, charge_pending=charge)
                view = await self.get(order_id)
                if view.final:
                    return view
                raise OutcomePending(
                    "the outcome is not known yet; the checkout goes on: poll it",
                    details={"checkout_id": str(order_id)},
                    checkout=view,
                )
            if time.monotonic() > deadline:
                raise OutcomePending(
                    "another process is finishing this checkout; poll it",
                    details={"checkout_id": str(order_id)},
                    checkout=view,
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)
