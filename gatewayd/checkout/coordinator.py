"""The checkout coordinator: a two-phase commit between PostgreSQL and the card terminals.

prepare (durable intent) -> charge each card tender on its lane -> commit the order, or void
every approved tender and fail the order. Ambiguous terminal outcomes are never treated as
declined: the lane inquires until the terminal gives a definite answer, and anything still
open when the daemon stops is finished by recovery from the same rows (`settle`).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from gatewayd import failpoints
from gatewayd.checkout.errors import (
    CheckoutError,
    DatabaseUnavailable,
    IdempotencyConflict,
    InsufficientInventory,
    NotFound,
    OutcomePending,
    ShuttingDown,
    TerminalOffline,
    UnknownTerminalRequested,
)
from gatewayd.checkout.model import CardTender, CashTender, CheckoutRequest, CheckoutView, RefundRequest
from gatewayd.checkout.validate import change_due, request_hash, validate
from gatewayd.checkout.views import checkout_view
from gatewayd.config import CheckoutConfig
from gatewayd.errors import StoreError, TerminalBusy, TransientStoreError
from gatewayd.store.checkouts import CheckoutRows, CheckoutStore
from gatewayd.store.db import retry_delay_s
from gatewayd.terminals import ops
from gatewayd.terminals.outcomes import Approved, Busy, Declined, Misconfigured, Offline, Outcome, Unknown
from gatewayd.terminals.outcomes import NotFound as TermNotFound

log = logging.getLogger(__name__)

# How long past a terminal's own transaction timeout a "not found" becomes believable.
NOT_FOUND_MARGIN_S = 10.0
VOID_ATTEMPTS = 6


class LaneLike(Protocol):
    """What the coordinator needs of a terminal lane."""

    @property
    def state(self) -> str: ...

    async def execute(self, op: Any, *, before_send: Any = None) -> Any: ...


class CheckoutMetrics(Protocol):
    """Hooks for metrics; the daemon passes the Prometheus implementation."""

    def checkout_finished(self, outcome: str, seconds: float) -> None: ...
    def tender_finished(self, tender_type: str, outcome: str) -> None: ...
    def recovery_action(self, action: str) -> None: ...


class _NoMetrics:
    def checkout_finished(self, outcome: str, seconds: float) -> None:
        pass

    def tender_finished(self, tender_type: str, outcome: str) -> None:
        pass

    def recovery_action(self, action: str) -> None:
        pass


@dataclass(frozen=True)
class TenderFailure:
    """Why a checkout is rolled back: the API error code and a sentence for the cashier."""

    code: str
    message: str


@dataclass
class _Inflight:
    request_hash: str
    task: asyncio.Task[CheckoutView]
    order_id: uuid.UUID | None = None


def _prepared_rows(intent: dict[str, Any]) -> CheckoutRows:
    """The rows gw_prepare_checkout wrote for this intent, as `load` would return them."""
    tenders = [
        {
            "id": uuid.UUID(t["id"]),
            "kind": "payment",
            "refund_id": None,
            "tender_index": i,
            "tender_type": t["type"],
            "operation": t["operation"],
            "amount": t["amount"],
            "approved_amount": None,
            "tendered": t.get("tendered"),
            "status": "pending",
            "capture_status": None,
            "reference_id": t["reference_id"],
            "payment_processor_id": t.get("terminal_id"),
            "auth_code": None,
            "card_brand": None,
            "last4": None,
            "status_code": None,
            "last_error": None,
            "timeout_s": t.get("timeout_s"),
            "sent_at": None,
            "attempts": 0,
        }
        for i, t in enumerate(intent["tenders"])
    ]
    return CheckoutRows({"id": uuid.UUID(intent["id"]), "status": "pending_payment"}, tenders, [])


def _failure_for(outcome: Outcome) -> TenderFailure:
    if isinstance(outcome, Declined):
        return TenderFailure("card_declined", outcome.message or f"declined ({outcome.status_code})")
    if isinstance(outcome, TermNotFound):
        return TenderFailure("card_declined", "the terminal has no record of the charge: not charged")
    if isinstance(outcome, Offline):
        return TenderFailure("terminal_offline", outcome.message or "terminal offline: nothing charged")
    if isinstance(outcome, Busy):
        return TenderFailure("terminal_busy", "terminal busy: nothing charged")
    if isinstance(outcome, Misconfigured):
        return TenderFailure("terminal_misconfigured", outcome.message or "terminal refused our configuration")
    return TenderFailure("card_declined", "payment not completed")


def _row_failure(row: Any) -> TenderFailure:
    message = row["last_error"] or f"tender {row['status']}"
    if row["status"] == "failed" and row["status_code"] in ("2001", "2011"):
        return TenderFailure("terminal_offline", message)
    return TenderFailure("card_declined", message)


class Coordinator:
    """Takes checkouts from the API and drives each to completed or failed, exactly once."""

    def __init__(
        self,
        store: CheckoutStore,
        lanes: Mapping[str, LaneLike],
        policy: CheckoutConfig,
        *,
        instance_id: str,
        lease_s: float = 600.0,
        metrics: CheckoutMetrics | None = None,
    ) -> None:
        self.store = store
        self.lanes = lanes
        self.policy = policy
        self.instance_id = instance_id
        self.lease_s = lease_s
        self.metrics: CheckoutMetrics = metrics or _NoMetrics()
        self.accepting = True
        self._inflight: dict[str, _Inflight] = {}
        self._driving: dict[uuid.UUID, asyncio.Task[None]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._locks: dict[uuid.UUID, asyncio.Lock] = {}

    # ---------------------------------------------------------------- the API's entry points

    @property
    def in_flight(self) -> int:
        return len(self._inflight)

    async def checkout(self, request: CheckoutRequest, wait_s: float) -> CheckoutView:
        """Take payment; returns the final checkout, or raises OutcomePending after `wait_s`."""
        if not self.accepting:
            raise ShuttingDown("the daemon is shutting down; nothing was started")
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
            entry = _Inflight(digest, self._spawn(self._run(request, digest)))
            self._inflight[request.idempotency_key] = entry
            entry.task.add_done_callback(lambda _: self._inflight.pop(request.idempotency_key, None))
        return await self._wait(entry, request.idempotency_key, wait_s)

    async def get(self, order_id: uuid.UUID | None = None, key: str | None = None) -> CheckoutView:
        """The checkout as stored now."""
        rows = await self._db(self.store.load(order_id=order_id, key=key))
        if rows is None:
            raise NotFound("no such checkout")
        return checkout_view(rows)

    async def void(self, order_id: uuid.UUID, wait_s: float) -> CheckoutView:
        """Void a completed checkout (every card tender, then the order); idempotent."""
        from gatewayd.checkout.reversals import void_checkout

        return await self._exclusive(order_id, lambda: void_checkout(self, order_id), wait_s)

    async def refund(self, order_id: uuid.UUID, request: RefundRequest, wait_s: float) -> CheckoutView:
        """Refund part or all of a completed checkout through its terminal."""
        from gatewayd.checkout.reversals import refund_checkout

        return await self._exclusive(order_id, lambda: refund_checkout(self, order_id, request), wait_s)

    def reversal_running(self, order_id: uuid.UUID) -> bool:
        """True while a void or refund of this order runs in this process."""
        lock = self._locks.get(order_id)
        return lock is not None and lock.locked()

    async def _exclusive(
        self, order_id: uuid.UUID, work: Callable[[], Awaitable[CheckoutView]], wait_s: float
    ) -> CheckoutView:
        """One reversal of an order at a time in this process; it goes on if the caller's wait ends."""
        if not self.accepting:
            raise ShuttingDown("the daemon is shutting down; nothing was started")
        lock = self._locks.setdefault(order_id, asyncio.Lock())

        async def locked() -> CheckoutView:
            async with lock:
                return await work()

        task = self._spawn(locked())
        try:
            return await asyncio.wait_for(asyncio.shield(task), wait_s)
        except TimeoutError:
            raise OutcomePending(
                "the terminal has not answered yet; ask again", details={"checkout_id": str(order_id)}
            ) from None

    async def _view(self, order_id: uuid.UUID) -> CheckoutView:
        rows = await self._persist(lambda: self.store.load(order_id=order_id))
        if rows is None:
            raise NotFound("no such checkout")
        return checkout_view(rows)

    async def drain(self, deadline_s: float) -> int:
        """Stop accepting, let in-flight checkouts finish within the deadline; returns how many were left."""
        self.accepting = False
        pending = [t for t in self._tasks if not t.done()]
        if pending:
            _, still = await asyncio.wait(pending, timeout=deadline_s)
            for task in still:
                task.cancel()
            if still:
                await asyncio.wait(still, timeout=5)
            return len(still)
        return 0

    # ---------------------------------------------------------------- one checkout

    def _spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _wait(self, entry: _Inflight, key: str, wait_s: float) -> CheckoutView:
        try:
            return await asyncio.wait_for(asyncio.shield(entry.task), wait_s)
        except TimeoutError:
            details: dict[str, Any] = {"idempotency_key": key}
            if entry.order_id is not None:
                details["checkout_id"] = str(entry.order_id)
            raise OutcomePending(
                "the outcome is not known yet; the checkout goes on: poll it", details=details
            ) from None

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
            found = await self._maybe(self.store.find_key(request.idempotency_key))
            if found is None:
                raise problem
            return await self._existing(found[0], found[1], digest), False
        order_id = uuid.uuid4()
        self._inflight[request.idempotency_key].order_id = order_id
        intent = self._intent(order_id, request, digest)
        result = await self._db(self.store.prepare(intent))
        if result["outcome"] == "insufficient":
            raise InsufficientInventory("not enough stock; nothing was charged", details={"skus": result["skus"]})
        if result["outcome"] == "exists" and uuid.UUID(result["id"]) != order_id:
            return await self._existing(uuid.UUID(result["id"]), result["request_hash"], digest), False
        log.info("checkout %s: intent recorded (key %s)", order_id, request.idempotency_key)
        await failpoints.hit("after_intent_commit")
        await self.drive(order_id, charge_pending=True, rows=_prepared_rows(intent))
        return await self._view(order_id), True

    def _preflight(self, request: CheckoutRequest) -> CheckoutError | None:
        for i, tender in enumerate(request.tenders):
            if not isinstance(tender, CardTender):
                continue
            lane = self.lanes.get(tender.terminal_id)
            if lane is None:
                return UnknownTerminalRequested(
                    f"no terminal {tender.terminal_id!r} is configured",
                    details={"field": f"tenders[{i}].terminal_id", "terminal_id": tender.terminal_id},
                )
            if lane.state == "offline":
                return TerminalOffline(
                    f"terminal {tender.terminal_id} is offline; nothing was charged",
                    details={"terminal_id": tender.terminal_id},
                )
        return None

    def _intent(self, order_id: uuid.UUID, request: CheckoutRequest, digest: str) -> dict[str, Any]:
        op = "auth" if self.policy.card_mode == "auth_capture" else "sale"
        tenders = []
        for tender in request.tenders:
            row: dict[str, Any] = {
                "id": str(uuid.uuid4()),
                "amount": tender.amount,
                "reference_id": uuid.uuid4().hex[:20].upper(),
            }
            if isinstance(tender, CashTender):
                row.update(type="cash", operation="cash", tendered=tender.tendered)
            else:
                driver = getattr(self.lanes[tender.terminal_id], "driver", None)
                row.update(
                    type="card",
                    operation=op,
                    terminal_id=tender.terminal_id,
                    timeout_s=int(getattr(driver, "timeout_s", 120)),
                )
            tenders.append(row)
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
            "lease_owner": self.instance_id,
            "lease_s": self.lease_s,
            "lines": [
                {"sku": line.sku, "quantity": line.quantity, "unit_price": line.unit_price} for line in request.lines
            ],
            "tenders": tenders,
        }

    async def _existing(self, order_id: uuid.UUID, stored_hash: str, digest: str) -> CheckoutView:
        """Another request already created this checkout: same body -> its outcome; else refuse."""
        if stored_hash != digest:
            raise IdempotencyConflict(
                "this idempotency key was used with another request", details={"checkout_id": str(order_id)}
            )
        delay = 0.05
        deadline = time.monotonic() + self.lease_s
        while True:
            view = await self.get(order_id)
            if view.final:
                return view
            claimed = await self._maybe(
                self.store.claim_unfinished(self.instance_id, self.lease_s, take_own=True, limit=1, only=order_id)
            )
            if claimed:
                charge = view.status == "pending_payment"
                await self.drive(order_id, charge_pending=charge)
                continue
            if time.monotonic() > deadline:
                raise OutcomePending(
                    "another process is finishing this checkout; poll it",
                    details={"checkout_id": str(order_id)},
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)

    # ---------------------------------------------------------------- driving an order to its end

    @property
    def driving(self) -> set[uuid.UUID]:
        """Orders this process is driving right now."""
        return set(self._driving)

    async def drive(self, order_id: uuid.UUID, *, charge_pending: bool, rows: CheckoutRows | None = None) -> None:
        """Settle the order once at a time in this process (recovery and retries join)."""
        running = self._driving.get(order_id)
        if running is None:
            running = self._spawn(self.settle(order_id, charge_pending=charge_pending, rows=rows))
            self._driving[order_id] = running
            running.add_done_callback(lambda _: self._driving.pop(order_id, None))
        await asyncio.shield(running)

    async def settle(self, order_id: uuid.UUID, *, charge_pending: bool, rows: CheckoutRows | None = None) -> None:
        """Drive a stored order to completed or failed from whatever state its rows are in
        (`rows`: the order just prepared, so that it need not be read back)."""
        if rows is None:
            rows = await self._persist(lambda: self.store.load(order_id=order_id))
        if rows is None or rows.order["status"] not in (
            "pending_payment",
            "payment_processing",
            "payment_authorized",
        ):
            return
        failure: TenderFailure | None = None
        for tender in (t for t in rows.tenders if t["kind"] == "payment" and t["tender_type"] == "card"):
            status = tender["status"]
            if status == "pending":
                if not charge_pending:
                    failure = TenderFailure("abandoned", "the checkout stopped before this card was charged")
                    break
                status, failure = await self._charge(order_id, tender)
            elif status in ("processing", "unknown"):
                status, failure = await self._resolve(order_id, tender)
            elif status == "approved" and tender["approved_amount"] != tender["amount"]:
                failure = await self._void_partial(tender)
                status = "voided"
            elif status != "approved":
                failure = _row_failure(tender)
            if status in ("processing", "unknown"):
                log.warning(
                    "checkout %s: tender %s still undecided; left for recovery",
                    order_id,
                    tender["reference_id"],
                )
                await self._maybe(self.store.release_lease(order_id, self.instance_id))
                return
            if failure is not None:
                break
        if failure is None:
            await self._commit(order_id, rows)
        else:
            await self._rollback(order_id, failure)

    async def _charge(self, order_id: uuid.UUID, tender: Any) -> tuple[str, TenderFailure | None]:
        lane = self.lanes.get(tender["payment_processor_id"])
        ref, amount = tender["reference_id"], tender["amount"]
        if lane is None:
            await self._record(tender, "failed", last_error="terminal no longer configured", from_=("pending",))
            return "failed", TenderFailure("unknown_terminal", "terminal no longer configured")
        op: ops.Op = ops.Auth(ref, amount) if tender["operation"] == "auth" else ops.Sale(ref, amount)
        marked = False

        async def before_send() -> bool:
            # The intent, stamped when the request really leaves (after any queue wait): recovery
            # believes a "not found" only a terminal timeout after this moment.
            nonlocal marked
            marked = bool(await self._persist(lambda: self.store.mark_sent(order_id, tender["id"])))
            return marked

        try:
            pending = asyncio.ensure_future(lane.execute(op, before_send=before_send))
            if failpoints.armed("after_sale_sent"):
                await asyncio.wait({pending}, timeout=0.3)
                await failpoints.hit("after_sale_sent")
            outcome = await pending
        except TerminalBusy:
            await self._record(tender, "failed", last_error="terminal queue full: not sent")
            return "failed", TenderFailure("terminal_busy", "terminal busy: nothing charged")
        if not marked:
            return "failed", TenderFailure("cancelled", "the order was cancelled before the charge")
        await failpoints.hit("after_sale_answer")
        return await self._apply(tender, outcome)

    async def _resolve(self, order_id: uuid.UUID, tender: Any) -> tuple[str, TenderFailure | None]:
        """A tender whose answer was never stored: ask the terminal what happened."""
        lane = self.lanes.get(tender["payment_processor_id"])
        if lane is None:
            return tender["status"], None
        while True:
            try:
                outcome = await lane.execute(ops.Inquire(tender["reference_id"]))
            except TerminalBusy:
                await asyncio.sleep(1.0)
                continue
            if isinstance(outcome, TermNotFound) and not self.past_timeout(tender):
                await asyncio.sleep(min(2.0, self._until_timeout_s(tender)))
                continue
            if isinstance(outcome, (Busy, Offline, Unknown)):
                await self._record(tender, "unknown", last_error=f"inquiry: {type(outcome).__name__.lower()}")
                return "unknown", None
            if isinstance(outcome, Approved) and outcome.voided:
                await self._record(tender, "voided", outcome=outcome)
                return "voided", TenderFailure("card_declined", "the charge was voided")
            return await self._apply(tender, outcome)

    def _until_timeout_s(self, tender: Any) -> float:
        sent: datetime | None = tender["sent_at"]
        if sent is None:
            return 0.0
        limit = sent + timedelta(seconds=(tender["timeout_s"] or 120) + NOT_FOUND_MARGIN_S)
        return max(0.0, (limit - datetime.now(UTC)).total_seconds())

    def past_timeout(self, tender: Any) -> bool:
        """True once a "not found" for this tender is believable: its terminal's timeout has passed."""
        return self._until_timeout_s(tender) <= 0

    async def _apply(self, tender: Any, outcome: Outcome) -> tuple[str, TenderFailure | None]:
        """Store a definite answer; a partial approval is voided at once (not enough for the tender)."""
        if isinstance(outcome, Approved):
            await self._record(tender, "approved", outcome=outcome)
            self.metrics.tender_finished("card", "approved")
            # Judged against the tender: a Status answer does not say what was asked for.
            if outcome.amount < tender["amount"]:
                return "voided", await self._void_partial(
                    {**dict(tender), "status": "approved", "approved_amount": outcome.amount}
                )
            return "approved", None
        if isinstance(outcome, Unknown):
            await self._record(
                tender,
                "unknown",
                last_error=f"outcome unknown: {outcome.reason}",
                status_code=outcome.status_code or None,
            )
            return "unknown", None
        status = "declined" if isinstance(outcome, Declined) else "failed"
        failure = _failure_for(outcome)
        await self._record(tender, status, outcome=outcome, last_error=failure.message)
        self.metrics.tender_finished("card", status)
        return status, failure

    async def _void_partial(self, tender: Any) -> TenderFailure:
        voided = await self.void_tender(tender)
        amount = tender["approved_amount"]
        message = f"partial approval ({amount} of {tender['amount']}) voided"
        if not voided:
            return TenderFailure("card_declined", message + " (void pending)")
        return TenderFailure("card_declined", message)

    async def _record(
        self,
        tender: Any,
        status: str,
        *,
        outcome: Outcome | None = None,
        last_error: str | None = None,
        status_code: str | None = None,
        from_: tuple[str, ...] = ("pending", "processing", "unknown"),
    ) -> None:
        fields: dict[str, Any] = {}
        if isinstance(outcome, Approved):
            fields = {
                "approved_amount": outcome.amount,
                "auth_code": outcome.auth_code or None,
                "card_brand": outcome.card_brand or None,
                "last4": outcome.last4 or None,
                "batch_number": outcome.batch_number or None,
                "transaction_number": outcome.transaction_number or None,
                "status_code": outcome.status_code or None,
            }
        elif outcome is not None:
            code: str = getattr(outcome, "status_code", "") or ""
            fields = {"status_code": code} if code else {}
        if status_code:
            fields["status_code"] = status_code
        if status == "voided":
            from_ = ("approved", "processing", "unknown")
        raw = None if outcome is None else {"outcome": type(outcome).__name__.lower(), **fields}
        audit = {"reference_id": tender["reference_id"], **({"error": last_error} if last_error else {})}
        await self._persist(
            lambda: self.store.record_tender(
                tender["id"],
                status,
                from_statuses=from_,
                raw=raw,
                last_error=last_error,
                audit=audit,
                **fields,
            )
        )

    async def void_tender(self, tender: Any) -> bool:
        """Void an approved charge, retrying with inquiry; False if it could not be done for now."""
        lane = self.lanes.get(tender["payment_processor_id"])
        if lane is None:
            return False
        # The void's intent first: if we die with the void in flight, recovery asks the terminal.
        await self._persist(lambda: self.store.mark_void_requested(tender["id"]))
        for attempt in range(VOID_ATTEMPTS):
            await failpoints.hit("during_void")
            try:
                outcome = await lane.execute(ops.Void(tender["reference_id"], tender["approved_amount"]))
            except TerminalBusy:
                outcome = Busy(retry_after_s=1.0)
            if isinstance(outcome, Approved) and outcome.voided:
                await self._record(tender, "voided", outcome=outcome)
                self.metrics.tender_finished("card", "voided")
                return True
            if isinstance(outcome, TermNotFound):
                await self._record(
                    tender, "failed", last_error="void: the terminal has no such charge", from_=("approved",)
                )
                return True
            log.warning(
                "void of %s on %s: %s (attempt %d)",
                tender["reference_id"],
                tender["payment_processor_id"],
                type(outcome).__name__,
                attempt + 1,
            )
            await asyncio.sleep(retry_delay_s(attempt, base_s=0.5, cap_s=10.0))
        return False

    async def _commit(self, order_id: uuid.UUID, rows: Any) -> None:
        # Never void because the database blinked: the charge stands, the commit is retried.
        result = await self._persist(
            lambda: self.store.commit(order_id, self.policy.loyalty_points_per_unit, self.policy.minor_units_per_unit)
        )
        if result["outcome"] not in ("completed", "already"):
            raise CheckoutError(f"checkout {order_id} could not be committed: {result}")
        for tender in rows.tenders:
            if tender["tender_type"] == "cash" and tender["kind"] == "payment":
                self.metrics.tender_finished("cash", "approved")
        log.info("checkout %s: completed", order_id)
        await failpoints.hit("after_commit")
        if self.policy.card_mode == "auth_capture":
            await self.capture_pending(order_id)

    async def capture_pending(self, order_id: uuid.UUID | None = None) -> None:
        """Capture authorizations of completed orders (right after commit, and from recovery)."""
        for row in await self._persist(self.store.claim_uncaptured):
            if order_id is not None and row["order_id"] != order_id:
                continue
            lane = self.lanes.get(row["payment_processor_id"])
            if lane is None:
                continue
            try:
                outcome = await lane.execute(ops.Capture(row["reference_id"], row["amount"]))
            except TerminalBusy:
                continue
            if isinstance(outcome, Approved):
                await self._persist(functools.partial(self.store.set_captured, row["id"]))
            else:
                log.warning("capture of %s: %s; will retry", row["reference_id"], type(outcome).__name__)

    async def _rollback(self, order_id: uuid.UUID, failure: TenderFailure) -> None:
        rows = await self._persist(lambda: self.store.load(order_id=order_id))
        for tender in rows.tenders:
            if tender["kind"] == "payment" and tender["tender_type"] == "card" and tender["status"] == "approved":
                if not await self.void_tender(tender):
                    log.error(
                        "checkout %s: void of %s failed; recovery will retry",
                        order_id,
                        tender["reference_id"],
                    )
                    await self._maybe(self.store.release_lease(order_id, self.instance_id))
                    return
        result = await self._persist(lambda: self.store.fail(order_id, failure.code, failure.message))
        log.info("checkout %s: %s (%s)", order_id, result.get("outcome"), failure.message)

    # ---------------------------------------------------------------- helpers

    async def _db(self, work: Awaitable[Any]) -> Any:
        try:
            return await work
        except TransientStoreError as exc:
            raise DatabaseUnavailable("the database is unavailable", details={"reason": exc.message}) from exc

    async def _persist(self, work: Callable[[], Awaitable[Any]]) -> Any:
        """Database work after the intent exists: retried until it succeeds (or the task is cancelled).

        From here on a database outage must never read as "nothing charged": the POS waits
        (and gets outcome_pending), and a shutdown leaves the rows to recovery.
        """
        attempt = 0
        while True:
            try:
                return await work()
            except TransientStoreError as exc:
                log.warning("database unavailable (%s); retrying", exc.message)
                await asyncio.sleep(retry_delay_s(attempt, base_s=0.2, cap_s=5.0))
                attempt += 1

    async def _maybe(self, work: Awaitable[Any]) -> Any:
        try:
            return await work
        except StoreError:
            return None
