"""Carries out the state machine's decisions: terminal I/O and fenced writes, one order at a time.

`drive` loops `decide` -> execute until the order is final or can go no further for now (a
terminal that cannot answer, a void that did not go through): then the lease is released and
recovery asks again later. Every write of an order's state is fenced by its lease; a write
refused for the lease stops this daemon driving that order (`LeaseLost`), and a step the SQL
refuses for any other reason is an error with a metric (`TransitionRefused`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Iterable
from typing import Any, Literal, Protocol

import msgspec

from gatewayd import failpoints
from gatewayd.checkout import machine
from gatewayd.checkout.errors import CheckoutError
from gatewayd.checkout.errors import NotFound as NoSuchCheckout
from gatewayd.checkout.machine import (
    Asked,
    Checkout,
    Keep,
    Step,
    Tender,
    TenderStatus,
    answer_of,
    decide,
    not_found_late,
    verdict,
)
from gatewayd.checkout.persistence import after_intent, best_effort
from gatewayd.config import CheckoutConfig
from gatewayd.errors import GatewayError, StoreError, TerminalBusy
from gatewayd.retry import (
    INQUIRY_BACKOFF,
    SEND_MARGIN_S,
    VOID_ATTEMPTS,
    VOID_BACKOFF,
    backoff_s,
    not_found_wait_s,
)
from gatewayd.store.checkouts import CheckoutStore, FinishStep, Recorded, TenderAnswer, Written
from gatewayd.terminals import ops
from gatewayd.terminals.outcomes import (
    Approved,
    Busy,
    Declined,
    Misconfigured,
    NotFound,
    Offline,
    Outcome,
    PaymentType,
    Unknown,
    Voided,
)

log = logging.getLogger(__name__)

# Inquiries that get no definite answer before the order is left for the next recovery pass.
INQUIRY_ATTEMPTS = 4
# The share of a lease this process counts on (its clock and the database's may run apart a little).
LEASE_SAFETY = 0.9


class LaneLike(Protocol):
    """What the executor needs of a terminal lane."""

    @property
    def state(self) -> str: ...

    @property
    def idle(self) -> bool:
        """Nothing queued and nothing in flight: a request given to it now leaves at once."""
        ...

    async def execute(
        self, op: Any, *, before_send: Any = None, may_send: Any = None, on_progress: Any = None
    ) -> Any: ...


class Lanes(Protocol):
    """The store's terminals, as the executor reaches them."""

    def for_charge(self, terminal_id: str | None) -> LaneLike | None:
        """A configured terminal's lane: new charges go only there."""
        ...

    def for_followup(self, terminal_id: str | None) -> LaneLike | None:
        """Any lane that can still answer for its charges: inquiries, voids, captures, returns.
        A terminal removed from the configuration keeps its last settings for this."""
        ...

    def timeout_s(self, terminal_id: str) -> int:
        """The terminal's own transaction timeout."""
        ...

    def payment_type(self, terminal_id: str) -> PaymentType:
        """The payment type a card tender on this terminal runs as unless it says otherwise."""
        ...


class CheckoutMetrics(Protocol):
    """Hooks for metrics; the daemon passes the Prometheus implementation."""

    def checkout_finished(self, outcome: str, seconds: float) -> None: ...
    def reversal_finished(self, kind: str, outcome: str) -> None: ...
    def tender_finished(self, tender_type: str, outcome: str) -> None: ...
    def recovery_action(self, action: str) -> None: ...
    def transition_refused(self, step: str) -> None: ...
    def lease_lost(self) -> None: ...
    def charge_settled(self, what: str) -> None: ...


# The steps of a checkout the live event stream tells of (GET /v1/events, checkout.progress).
Phase = Literal[
    "intent_recorded",  # the order and its tenders are stored: nothing has left for a terminal yet
    "sent_to_terminal",  # a charge is leaving for its terminal (again, after a busy answer)
    "approved",
    "declined",
    "failed",  # not charged without a decline: unreachable, never read, not found after its deadline
    "unknown",  # the answer was lost or unclear: the terminal is asked
    "inquiring",  # the terminal is asked what became of the charge
    "voiding",  # a void of the charge is under way
    "voided",
]


class CheckoutEvents(Protocol):
    """Hooks for the live event stream; the daemon passes gatewayd.api.events.EventHub."""

    def progress(self, order_id: uuid.UUID, key: str | None, phase: Phase, tender: Tender | None = None) -> None: ...
    def finished(self, order_id: uuid.UUID, status: str) -> None: ...


class NoEvents:
    def progress(self, order_id: uuid.UUID, key: str | None, phase: Phase, tender: Tender | None = None) -> None:
        pass

    def finished(self, order_id: uuid.UUID, status: str) -> None:
        pass


# What a stored answer makes of a tender, as the event stream says it.
_PHASES: dict[TenderStatus, Phase] = {
    TenderStatus.APPROVED: "approved",
    TenderStatus.DECLINED: "declined",
    TenderStatus.FAILED: "failed",
    TenderStatus.UNKNOWN: "unknown",
    TenderStatus.VOIDED: "voided",
}


class NoMetrics:
    def checkout_finished(self, outcome: str, seconds: float) -> None:
        pass

    def reversal_finished(self, kind: str, outcome: str) -> None:
        pass

    def tender_finished(self, tender_type: str, outcome: str) -> None:
        pass

    def recovery_action(self, action: str) -> None:
        pass

    def transition_refused(self, step: str) -> None:
        pass

    def lease_lost(self) -> None:
        pass

    def charge_settled(self, what: str) -> None:
        pass


class LeaseLost(GatewayError):
    """This daemon no longer holds the order's lease: another may be driving it. Stop."""

    def __init__(self, order_id: uuid.UUID) -> None:
        super().__init__(f"lease of checkout {order_id} lost: another daemon may be driving it")
        self.order_id = order_id


class TransitionRefused(CheckoutError):
    """The database refused a step the state machine chose: the two disagree about the order."""

    code = "internal_error"


def _fields(outcome: Outcome | None) -> dict[str, Any]:
    if isinstance(outcome, Approved):
        receipt = outcome.receipt
        return {
            "approved_amount": outcome.amount,
            "auth_code": outcome.auth_code or None,
            "card_brand": outcome.card_brand or None,
            "last4": outcome.last4 or None,
            "batch_number": outcome.batch_number or None,
            "transaction_number": outcome.transaction_number or None,
            "status_code": outcome.status_code or None,
            # what the terminal ran it as (`card`: the customer's choice); None keeps what was sent
            "payment_type": outcome.payment_type if outcome.payment_type != "card" else None,
            "entry_method": receipt.entry_method,
            "application_label": receipt.application_label or None,
            "aid": receipt.aid or None,
            "host_reference": receipt.host_reference or None,
            "receipt_customer": receipt.customer_copy or None,
            "receipt_merchant": receipt.merchant_copy or None,
        }
    code: str = getattr(outcome, "status_code", "") or ""
    fields: dict[str, Any] = {"status_code": code} if code else {}
    if isinstance(outcome, Declined):
        fields.update(host_code=outcome.host_code or None, host_message=outcome.host_message or None)
    return fields


def _answer(
    t: Tender,
    status: TenderStatus,
    outcome: Outcome | None,
    failure_code: str | None,
    reason: machine.Reason | None,
    last_error: str | None,
    from_: Iterable[TenderStatus],
) -> TenderAnswer:
    """What an answer writes on tender `t`: the outcome's fields, the raw outcome (without the
    receipt copies, stored apart), why it did not charge, and the audit event's detail."""
    fields = _fields(outcome)
    raw = None if outcome is None else {"outcome": type(outcome).__name__.lower()}
    if raw is not None:
        raw.update((k, v) for k, v in fields.items() if k not in _NOT_RAW)
    return TenderAnswer(
        status=status,
        from_statuses=tuple(sorted(from_)),
        raw=raw,
        last_error=last_error,
        failure_code=failure_code,
        decline_reason=None if reason is None else str(reason),
        audit={"reference_id": t.reference_id, **({"error": last_error} if last_error else {})},
        **fields,
    )


def _message(outcome: Outcome) -> str:
    if isinstance(outcome, Declined):  # the terminal's words, then the host's ("Declined: DO NOT HONOR")
        said = outcome.message or "declined"
        host = outcome.host_message
        return f"{said}: {host}" if host and host.lower() not in said.lower() else said
    text: str = getattr(outcome, "message", "") or getattr(outcome, "reason", "") or ""
    return text or type(outcome).__name__.lower()


_CARRIED = ("approved_amount", "auth_code", "card_brand", "last4", "status_code", "payment_type")
# Kept out of raw_response: the receipt copies have columns of their own (sql/009).
_NOT_RAW = ("receipt_customer", "receipt_merchant")


class Executor:
    """Drives orders by the machine's decisions, on the store's lanes, under leases."""

    def __init__(
        self,
        store: CheckoutStore,
        lanes: Lanes,
        policy: CheckoutConfig,
        *,
        owner: str,
        lease_s: float = 600.0,
        metrics: CheckoutMetrics | None = None,
        events: CheckoutEvents | None = None,
    ) -> None:
        self.store = store
        self.lanes = lanes
        self.policy = policy
        self.owner = owner
        self.lease_s = lease_s
        self.metrics: CheckoutMetrics = metrics or NoMetrics()
        self.events: CheckoutEvents = events or NoEvents()
        self._driving: dict[uuid.UUID, asyncio.Task[None]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._held: Counter[uuid.UUID] = Counter()
        # Until when (this process's monotonic clock) each held lease is surely still ours: a
        # charge leaves only before it, so a daemon that stalled past its lease never sends late.
        self._lease_deadline: dict[uuid.UUID, float] = {}
        self._lost: set[uuid.UUID] = set()
        self._locks: dict[uuid.UUID, asyncio.Lock] = {}
        self._lock_users: Counter[uuid.UUID] = Counter()

    # ---------------------------------------------------------------- tasks and leases

    def spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        """A task this executor tracks (drained at shutdown)."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    @property
    def tasks(self) -> set[asyncio.Task[Any]]:
        return self._tasks

    @property
    def driving(self) -> set[uuid.UUID]:
        """Orders this process is driving right now."""
        return set(self._driving)

    def busy_with(self, order_id: uuid.UUID) -> bool:
        """True while this process drives the order or runs a reversal of it."""
        return order_id in self._driving or self._held[order_id] > 0

    def _hold(self, order_id: uuid.UUID) -> None:
        if self._held[order_id] == 0:
            self._lost.discard(order_id)
            # the lease was just taken (prepare, claim or take_lease): it lasts lease_s from about now
            self._lease_deadline[order_id] = self._now() + self.lease_s * LEASE_SAFETY
        self._held[order_id] += 1

    @staticmethod
    def _now() -> float:
        return asyncio.get_running_loop().time()

    def may_send(self, order_id: uuid.UUID) -> bool:
        """True while this process surely still holds the order's lease (no await may come between
        this answer and the request leaving)."""
        return order_id not in self._lost and self._now() < self._lease_deadline.get(order_id, 0.0)

    def _let_go(self, order_id: uuid.UUID) -> bool:
        """Drop one hold; True when it was the last."""
        self._held[order_id] -= 1
        if self._held[order_id] > 0:
            return False
        del self._held[order_id]
        self._lost.discard(order_id)
        self._lease_deadline.pop(order_id, None)
        return True

    def check_lease(self, order_id: uuid.UUID) -> None:
        if order_id in self._lost:
            raise LeaseLost(order_id)

    def _lease(self, written: Written, order_id: uuid.UUID) -> bool:
        """Raise LeaseLost for a write refused for the lease; True when the write happened."""
        if written == "lease_lost":
            self._lost.add(order_id)
            raise LeaseLost(order_id)
        return written == "ok"

    @contextlib.asynccontextmanager
    async def leased(self, order_id: uuid.UUID) -> AsyncIterator[bool]:
        """Work on an order outside its checkout (capture, void, refund): one at a time in this
        process, and across daemons only under the order's lease. Yields False when another
        daemon holds the lease."""
        lock = self._locks.setdefault(order_id, asyncio.Lock())
        self._lock_users[order_id] += 1
        try:
            async with lock:
                async with self._leased(order_id) as ok:
                    yield ok
        finally:
            # The lock leaves the map only when nobody holds or waits for it (a waiter woken after
            # a release must find the same lock a newcomer would take).
            self._lock_users[order_id] -= 1
            if self._lock_users[order_id] == 0:
                del self._lock_users[order_id]
                self._locks.pop(order_id, None)

    @contextlib.asynccontextmanager
    async def _leased(self, order_id: uuid.UUID) -> AsyncIterator[bool]:
        taken = await after_intent(lambda: self.store.take_lease(order_id, self.owner, self.lease_s))
        if taken is None:
            raise NoSuchCheckout("no such checkout")
        if not taken:
            yield False
            return
        self._hold(order_id)
        try:
            yield True
        finally:
            if self._let_go(order_id) and order_id not in self._driving:
                await best_effort(self.store.release_lease(order_id, self.owner))

    async def renew_leases(self) -> set[uuid.UUID]:
        """Extend every lease this process holds; returns (and stops driving) those it lost."""
        ids = [oid for oid, n in self._held.items() if n > 0]
        if not ids:
            return set()
        asked_at = self._now()
        renewed = await self.store.renew_leases(ids, self.owner, self.lease_s)
        for order_id in renewed:
            if order_id in self._lease_deadline:
                self._lease_deadline[order_id] = asked_at + self.lease_s * LEASE_SAFETY
        lost = set(ids) - renewed - self._lost
        for order_id in lost:
            log.error("lease of checkout %s lost: another daemon may drive it; this one stops", order_id)
            self.metrics.lease_lost()
        self._lost |= lost
        return lost

    async def renew_forever(self) -> None:
        """The lease heartbeat: a third of the lease, so that two misses still leave time."""
        while True:
            await asyncio.sleep(self.lease_s / 3)
            try:
                await self.renew_leases()
            except StoreError as exc:
                log.warning("lease renewal failed: %s", exc.message)

    # ---------------------------------------------------------------- driving an order

    async def drive(
        self,
        order_id: uuid.UUID,
        *,
        charge_pending: bool,
        checkout: Checkout | None = None,
        stamped: tuple[uuid.UUID, float] | None = None,
    ) -> Checkout | None:
        """Drive the order as far as it goes now; once at a time in this process (recovery and
        retries join). `checkout`: the order just prepared, so that it need not be read back.
        `stamped`: (tender id, when this process asked for the intent, on its loop's clock) of
        a card tender the intent recorded as sent (sql/010): it is charged first, without a
        stamp of its own if it leaves within SEND_MARGIN_S of that moment.

        Returns the order as stored when the drive ended with it final and known without a read
        (the last write answered with the rows), else None."""
        running = self._driving.get(order_id)
        if running is None:
            running = self.spawn(self._drive(order_id, charge_pending, checkout, stamped))
            self._driving[order_id] = running
            running.add_done_callback(lambda _: self._driving.pop(order_id, None))
        final: Checkout | None = await asyncio.shield(running)
        return final

    async def _drive(
        self,
        order_id: uuid.UUID,
        charge_pending: bool,
        checkout: Checkout | None,
        stamped: tuple[uuid.UUID, float] | None = None,
    ) -> Checkout | None:
        self._hold(order_id)
        try:
            current = checkout or await after_intent(lambda: self.store.load(order_id=order_id))
            if current is not None and stamped is not None:
                # The intent stamped this tender sent: its charge is the first step (the one the
                # machine decides for a fresh order anyway: its first card tender).
                first = next((t for t in current.tenders if t.id == stamped[0]), None)
                if (
                    first is not None
                    and first.status == TenderStatus.PROCESSING
                    and current.order.status in machine.OPEN_ORDER
                ):
                    self.check_lease(order_id)
                    current = await self._charge(current, first, stamped_at=stamped[1])
            while current is not None:
                step = decide(current, charge_pending=charge_pending)
                if isinstance(step, machine.Done):
                    return current
                self.check_lease(order_id)
                current = await self._execute(current, step)
        except LeaseLost:
            log.warning("checkout %s: lease lost; another daemon finishes it", order_id)
            self.metrics.lease_lost()
            # If it was this daemon's own recovery that took the lease back meanwhile, let it go:
            # the next pass drives the order afresh (another daemon's lease is left alone).
            await best_effort(self.store.release_lease(order_id, self.owner))
        finally:
            self._let_go(order_id)
        return None

    async def _execute(self, c: Checkout, step: Step) -> Checkout | None:
        """One step; the checkout as it is after it, or None to stop here for now."""
        if isinstance(step, machine.Charge):
            return await self._charge(c, step.tender)
        if isinstance(step, machine.Inquire):
            return await self._inquire(c, step.tender)
        if isinstance(step, machine.VoidCharge):
            if not await self.void_charge(step.tender, c.order.idempotency_key):
                log.error("checkout %s: void of %s not done; recovery retries", c.order.id, step.tender.reference_id)
                return await self._park(c)
            return await self._reload(c)
        if isinstance(step, machine.Commit):
            await self._commit(c)
            return None
        assert isinstance(step, machine.Fail)
        await self._fail(c, step)
        return None

    async def _reload(self, c: Checkout) -> Checkout | None:
        return await after_intent(lambda: self.store.load(order_id=c.order.id))

    async def _park(self, c: Checkout) -> Checkout | None:
        """Nothing more can be done now: let the lease go so that recovery (ours or another
        daemon's) picks the order up again."""
        await best_effort(self.store.release_lease(c.order.id, self.owner))
        return None

    async def _charge(self, c: Checkout, t: Tender, *, stamped_at: float | None = None) -> Checkout | None:
        # Not sent: a tender the intent stamped sent (processing) was not sent either, and this
        # process, which holds the lease, knows it.
        unsent = (TenderStatus.PENDING,) if stamped_at is None else (TenderStatus.PENDING, TenderStatus.PROCESSING)
        lane = self.lanes.for_charge(t.terminal_id)
        if lane is None:
            failed = await self._record(
                c,
                t,
                TenderStatus.FAILED,
                failure_code="unknown_terminal",
                reason=machine.Reason.NOT_CHARGED,
                last_error="terminal no longer configured: not charged",
                from_=unsent,
                finish=True,
            )
            return failed
        kind = ops.Auth if t.operation == "auth" else ops.Sale
        op: ops.Op = kind(t.reference_id, t.amount, t.card_type)
        marked: Written | None = None
        on_the_wire: asyncio.Task[None] | None = None
        intent_stamp = stamped_at

        async def before_send() -> bool:
            # The intent, stamped when the request really leaves (after any queue wait), on the
            # database's clock: a "not found" is believed only a terminal timeout after it. The
            # intent's own stamp (sql/010) stands for it only while the request leaves within
            # SEND_MARGIN_S of asking for the intent (the not-found rule adds that margin); this
            # branch does not await, and the lane checks may_send and sends right after it.
            nonlocal marked, on_the_wire, intent_stamp
            if intent_stamp is not None and self._now() - intent_stamp <= SEND_MARGIN_S:
                marked = "ok"
            else:
                marked = await after_intent(lambda: self.store.mark_sent(c.order.id, t.id, self.owner))
            intent_stamp = None  # a resend (after a busy answer) is stamped again
            if marked == "ok":
                on_the_wire = failpoints.soon("after_sale_sent", 0.3)  # the request has left by then
                self.events.progress(c.order.id, c.order.idempotency_key, "sent_to_terminal", t)
            return marked == "ok"

        def on_progress(phase: Phase) -> None:  # the lane resolving a lost answer: unknown, inquiring
            self.events.progress(c.order.id, c.order.idempotency_key, phase, t)

        try:
            outcome = await lane.execute(
                op, before_send=before_send, may_send=lambda: self.may_send(c.order.id), on_progress=on_progress
            )
        except TerminalBusy:
            return await self._record(
                c,
                t,
                TenderStatus.FAILED,
                failure_code="terminal_busy",
                reason=machine.Reason.TERMINAL_BUSY,
                last_error="terminal queue full: not sent, nothing charged",
                from_=unsent,
                finish=True,
            )
        await failpoints.join(on_the_wire)
        if marked is not None and not self._lease(marked, c.order.id):
            log.info("checkout %s: moved on before its charge was sent; not charged", c.order.id)
            return None
        await failpoints.hit("after_sale_answer")
        try:
            return await self._apply(
                c, msgspec.structs.replace(t, status=TenderStatus.PROCESSING), Asked.CHARGE, outcome
            )
        except LeaseLost:
            await self._approved_after_all(c, t, outcome)
            raise

    async def _inquire(self, c: Checkout, t: Tender) -> Checkout | None:
        """A tender whose answer was never stored: ask its terminal until it says something definite."""
        lane = self.lanes.for_followup(t.terminal_id)
        if lane is None:
            log.error(
                "checkout %s: tender %s is in doubt on terminal %s, which is gone; the operator must resolve it",
                c.order.id,
                t.reference_id,
                t.terminal_id,
            )
            return await self._park(c)
        self.events.progress(c.order.id, c.order.idempotency_key, "inquiring", t)
        attempt = 0
        while True:
            self.check_lease(c.order.id)
            fresh = await after_intent(functools.partial(self.store.tender, t.id))
            if fresh is None:
                return None
            t, now = fresh  # sent_at read again: another send may have stamped it since
            if t.status not in machine.IN_DOUBT:
                return await self._reload(c)
            try:
                outcome: Outcome = await lane.execute(ops.Inquire(t.reference_id, payment_type=t.card_type))
            except TerminalBusy:
                outcome = Busy(retry_after_s=1.0)
            late = not_found_late(t, now)
            decided = verdict(Asked.INQUIRY, outcome, t, late=late)
            if decided is Keep.WAIT:
                wait_s = not_found_wait_s(t.timeout_s) - machine.elapsed_s(t, now)
                await asyncio.sleep(max(0.05, min(2.0, wait_s)))
                continue
            if decided is Keep.ASK_AGAIN:
                if t.status != TenderStatus.UNKNOWN or t.last_error != f"inquiry: {_message(outcome)}":
                    await self._record(c, t, TenderStatus.UNKNOWN, last_error=f"inquiry: {_message(outcome)}")
                attempt += 1
                if attempt >= INQUIRY_ATTEMPTS:
                    log.warning(
                        "checkout %s: tender %s still undecided (%s); left for recovery",
                        c.order.id,
                        t.reference_id,
                        _message(outcome),
                    )
                    return await self._park(c)
                await asyncio.sleep(backoff_s(attempt, *INQUIRY_BACKOFF))
                continue
            return await self._apply(c, t, Asked.INQUIRY, outcome, late=late)

    async def _apply(
        self, c: Checkout, t: Tender, asked: Asked, outcome: Outcome, *, late: bool = False
    ) -> Checkout | None:
        """Store what the answer makes of the tender (the machine's table) and carry on."""
        decided = verdict(asked, outcome, t, late=late)
        if isinstance(decided, Keep):
            return await self._record(
                c, t, TenderStatus.UNKNOWN, outcome=outcome, last_error=f"outcome unknown: {_message(outcome)}"
            )
        failure_code = None
        reason = None
        last_error = None
        if decided in machine.NOT_CHARGED:
            answer = answer_of(outcome, t, late=late)
            failure_code = machine.FAILURE_CODES.get(answer, "card_not_charged")
            reason = machine.reason_of(answer, outcome)  # for the cashier; the money is decided above
            last_error = _message(outcome)
            if isinstance(outcome, NotFound):
                last_error = "the terminal has no record of the charge: not charged"
        self.metrics.tender_finished("card", decided.value)
        return await self._record(
            c, t, decided, outcome=outcome, failure_code=failure_code, reason=reason, last_error=last_error, finish=True
        )

    async def _record(
        self,
        c: Checkout,
        t: Tender,
        status: TenderStatus,
        *,
        outcome: Outcome | None = None,
        failure_code: str | None = None,
        reason: machine.Reason | None = None,
        last_error: str | None = None,
        from_: tuple[TenderStatus, ...] | frozenset[TenderStatus] = machine.OPEN_TENDER,
        finish: bool = False,
    ) -> Checkout | None:
        """Store what the answer makes of the tender; the checkout as it is after it. `finish`:
        when the machine's next step after this answer completes or fails the order, that is done
        in the same transaction (one commit for both; the answer is stored either way)."""
        fields = {k: v for k, v in _fields(outcome).items() if k in _CARRIED}
        changed = msgspec.structs.replace(
            t,
            status=status,
            failure_code=failure_code,
            decline_reason=None if reason is None else str(reason),
            last_error=last_error,
            **fields,
        )
        after = c.with_tender(changed)
        # Not when this process knows it lost the lease meanwhile (its own recovery may have taken
        # it back, so the fence would let the write through): it stores the answer, then stops.
        then = self._then(after) if finish and c.order.id not in self._lost else None
        if then is None:
            if await self.record(
                t, status, outcome=outcome, failure_code=failure_code, reason=reason, last_error=last_error, from_=from_
            ):
                if phase := _PHASES.get(status):
                    self.events.progress(c.order.id, c.order.idempotency_key, phase, t)
            else:
                await self._approved_after_all(c, t, outcome)
            return after
        if isinstance(then, machine.Commit):
            await failpoints.hit("before_commit")
        recorded = await self.record_and_finish(
            t,
            status,
            then,
            outcome=outcome,
            failure_code=failure_code,
            reason=reason,
            last_error=last_error,
            from_=from_,
        )
        if recorded.written == "ok" and (phase := _PHASES.get(status)):
            self.events.progress(c.order.id, c.order.idempotency_key, phase, t)
        if recorded.written != "ok":
            await self._approved_after_all(c, t, outcome)
            return recorded.checkout  # the row had moved on: go on from what is stored
        if isinstance(then, machine.Commit):
            await self.committed(after, {"outcome": recorded.outcome})
        else:
            self._failed(after, then, {"outcome": recorded.outcome})
        return recorded.checkout

    async def _approved_after_all(self, c: Checkout, t: Tender, outcome: Outcome | None) -> None:
        """An approval this daemon could not record: the order was given up (its lease lost), or
        the tender had moved on meanwhile, as when another daemon concluded "not found, not
        charged" while this one paused between its last lease check and the wire (and this one may
        hold the order's lease again by now, for a refund or a recovery pass, so the write was
        refused as stale, not for the lease). The approval is hard evidence and corrects that
        conclusion: the charge becomes an orphan that recovery voids. Anything else the tender
        moved on to stays as it is (CheckoutStore.late_approval changes only a tender failed as
        not charged)."""
        if not isinstance(outcome, Approved):
            return
        if await best_effort(self.store.late_approval(t.id, outcome.amount)):
            log.error(
                "ALERT: checkout %s: charge %s approved after the order was given up; recovery voids it",
                c.order.id,
                t.reference_id,
            )

    @staticmethod
    def _then(after: Checkout) -> machine.Commit | machine.Fail | None:
        """The step that follows an answer when it is to complete or fail the order whatever the
        drive (a live checkout's, or recovery's): that step goes in the answer's transaction."""
        step = decide(after, charge_pending=True)
        if isinstance(step, machine.Commit):
            return step
        if isinstance(step, machine.Fail) and decide(after, charge_pending=False) == step:
            return step
        return None

    async def record(
        self,
        t: Tender,
        status: TenderStatus,
        *,
        outcome: Outcome | None = None,
        failure_code: str | None = None,
        reason: machine.Reason | None = None,
        last_error: str | None = None,
        from_: tuple[TenderStatus, ...] | frozenset[TenderStatus] = machine.OPEN_TENDER,
    ) -> bool:
        """Store an answer for a transaction (a tender or a refund's Return), fenced by its order's lease;
        `reason`: why it did not charge (machine.REASONS), stored beside `failure_code`."""
        answer = _answer(t, status, outcome, failure_code, reason, last_error, from_)
        written = await after_intent(lambda: self.store.record_tender(t.id, self.owner, answer))
        return self._lease(written, t.order_id)

    async def record_and_finish(
        self,
        t: Tender,
        status: TenderStatus,
        then: machine.Commit | machine.Fail,
        *,
        outcome: Outcome | None = None,
        failure_code: str | None = None,
        reason: machine.Reason | None = None,
        last_error: str | None = None,
        from_: tuple[TenderStatus, ...] | frozenset[TenderStatus] = machine.OPEN_TENDER,
    ) -> Recorded:
        """`record`, and in the same transaction the order's completion (`then`: Commit) or
        failure (Fail): the daemon's state machine chose that step for the order as it is once
        this answer is stored. Raises LeaseLost as `record` does."""
        answer = _answer(t, status, outcome, failure_code, reason, last_error, from_)
        fail = then if isinstance(then, machine.Fail) else None
        recorded = await after_intent(
            lambda: self.store.record_and_finish(
                t.id,
                self.owner,
                answer,
                FinishStep(
                    then="fail" if fail is not None else "commit",
                    points_per_unit=self.policy.loyalty_points_per_unit,
                    minor_per_unit=self.policy.minor_units_per_unit,
                    fail_code=None if fail is None else fail.failure.code,
                    fail_reason=None if fail is None else fail.failure.message,
                    fail_status=str(fail.status) if fail is not None else "payment_failed",
                ),
            )
        )
        if recorded.outcome == "lease_lost":
            self._lost.add(t.order_id)
            raise LeaseLost(t.order_id)
        self._lease(recorded.written, t.order_id)
        return recorded

    async def void_charge(self, t: Tender, key: str | None = None) -> bool:
        """Void an approved charge, retrying; True once decided (voided, or settled: it stands and
        needs a Return), False when it could not be done for now. `key`: the order's idempotency
        key, for the event stream."""
        lane = self.lanes.for_followup(t.terminal_id)
        if lane is None:
            return False
        # The void's intent first: if we die with the void in flight, recovery asks the terminal.
        self._lease(await after_intent(lambda: self.store.mark_void_requested(t.id, self.owner)), t.order_id)
        self.events.progress(t.order_id, key, "voiding", t)
        asked = machine.void_question(t)
        for attempt in range(VOID_ATTEMPTS):
            await failpoints.hit("during_void")
            try:
                outcome: Outcome = await lane.execute(
                    ops.Void(t.reference_id, t.approved_amount or t.amount, t.card_type)
                )
            except TerminalBusy:
                outcome = Busy(retry_after_s=1.0)
            if isinstance(outcome, NotFound):
                # "Not found" to a Void may be a void already done whose answer was lost: ask.
                outcome = await self._confirm(lane, t, outcome)
                if isinstance(outcome, Approved):  # captured (its answer was lost), then settled
                    if t.capture_status == "pending":
                        captured = await after_intent(functools.partial(self.store.set_captured, t.id, self.owner))
                        self._lease(captured, t.order_id)
                    await self.settled(t, "void: captured, and the batch is closed; the charge stands")
                    return True
            decided = verdict(asked, outcome, t, late=True)
            if decided == TenderStatus.VOIDED:
                from_ = (TenderStatus.APPROVED, TenderStatus.PROCESSING, TenderStatus.UNKNOWN)
                reason = "the hold lapsed with its batch" if isinstance(outcome, NotFound) else None
                if t.partial:  # the tender fails on its own account: approved for less than asked
                    reason = f"partial approval ({t.approved_amount} of {t.amount}) reversed: not charged"
                    await self.record(
                        t,
                        TenderStatus.VOIDED,
                        outcome=outcome,
                        from_=from_,
                        last_error=reason,
                        failure_code=machine.FAILURE_CODES[machine.Answer.PARTIAL],
                        reason=machine.Reason.PARTIAL_APPROVAL_REVERSED,
                    )
                else:
                    await self.record(t, TenderStatus.VOIDED, outcome=outcome, from_=from_, last_error=reason)
                self.metrics.tender_finished("card", "voided")
                self.events.progress(t.order_id, key, "voided", t)
                return True
            if decided is Keep.SETTLED:
                await self.settled(t, "void: the batch is closed; the charge stands and needs a refund")
                return True
            log.warning(
                "void of %s on %s: %s (attempt %d)", t.reference_id, t.terminal_id, type(outcome).__name__, attempt + 1
            )
            await asyncio.sleep(backoff_s(attempt, *VOID_BACKOFF))
        return False

    async def _confirm(self, lane: LaneLike, t: Tender, not_found: Outcome) -> Outcome:
        """What the terminal's Status says of a charge a Void or Capture did not find: voided or
        captured already (an earlier answer was lost), or else out of reach with its closed batch
        (still approved in the terminal's log, or not there at all): the "not found" stands."""
        try:
            status: Outcome = await lane.execute(ops.Inquire(t.reference_id, fresh=True, payment_type=t.card_type))
        except TerminalBusy:
            return Busy(retry_after_s=1.0)
        if isinstance(status, Voided) or (isinstance(status, Approved) and status.transaction_type == "capture"):
            return status
        if isinstance(status, Busy | Offline | Unknown | Misconfigured):
            return status  # no answer yet: ask again later
        return not_found

    async def settled(self, t: Tender, reason: str, what: str = "void") -> None:
        """A known-approved charge that its terminal no longer has open: it stays approved, is
        marked settled, and is alerted on (it needs a Return, never a Void)."""
        self._lease(await after_intent(lambda: self.store.mark_settled(t.id, self.owner, reason)), t.order_id)
        self.metrics.charge_settled(what)
        log.error(
            "ALERT: %s of %s on %s answered 'not found' (batch closed): %s", what, t.reference_id, t.terminal_id, reason
        )

    def refused(self, step: str, order_id: uuid.UUID, result: dict[str, Any]) -> TransitionRefused:
        self.metrics.transition_refused(step)
        return TransitionRefused(
            f"the database refused to {step} checkout {order_id}: {result.get('outcome')}",
            details={"checkout_id": str(order_id), "step": step, "stored_status": result.get("status")},
        )

    async def _commit(self, c: Checkout) -> None:
        # Never void because the database blinked: the charge stands, the commit is retried.
        await failpoints.hit("before_commit")
        order_id = c.order.id
        result = await after_intent(
            lambda: self.store.commit(
                order_id, self.policy.loyalty_points_per_unit, self.policy.minor_units_per_unit, self.owner
            )
        )
        await self.committed(c, result)

    async def committed(self, c: Checkout, result: dict[str, Any]) -> None:
        """After the order's completion was asked for (alone, with a tender's answer, or with a
        cash checkout's intent): its answer checked, counted and told."""
        order_id = c.order.id
        if result["outcome"] == "lease_lost":
            self._lost.add(order_id)
            raise LeaseLost(order_id)
        if result["outcome"] not in ("completed", "already"):
            raise self.refused("commit", order_id, result)
        for t in c.payments:
            if t.tender_type == "cash":
                self.metrics.tender_finished("cash", "approved")
        if result["outcome"] == "completed":
            self.events.finished(order_id, "completed")
        log.info("checkout %s: completed", order_id)
        await failpoints.hit("after_commit")
        if self.policy.card_mode == "auth_capture" and c.cards:
            await self.capture_pending(order_id)

    async def _fail(self, c: Checkout, step: machine.Fail) -> None:
        order_id = c.order.id
        result = await after_intent(
            lambda: self.store.fail(order_id, step.failure.code, step.failure.message, step.status, self.owner)
        )
        self._failed(c, step, result)

    def _failed(self, c: Checkout, step: machine.Fail, result: dict[str, Any]) -> None:
        order_id = c.order.id
        if result["outcome"] == "lease_lost":
            self._lost.add(order_id)
            raise LeaseLost(order_id)
        if result["outcome"] not in ("payment_failed", "cancelled", "already"):
            raise self.refused("fail", order_id, result)
        if result["outcome"] != "already":
            self.events.finished(order_id, result["outcome"])
        log.info("checkout %s: %s (%s)", order_id, result.get("outcome"), step.failure.message)

    async def capture_pending(self, order_id: uuid.UUID | None = None) -> int:
        """Capture authorizations of completed orders (right after commit, and from recovery)."""
        done = 0
        for claimed in await after_intent(self.store.claim_uncaptured):
            if order_id is not None and claimed.order_id != order_id:
                continue
            lane = self.lanes.for_followup(claimed.terminal_id)
            if lane is None:
                continue
            try:
                async with self.leased(claimed.order_id) as ok:
                    if ok and await self._capture(lane, claimed):
                        done += 1
            except LeaseLost:
                continue
        return done

    async def _capture(self, lane: LaneLike, claimed: Tender) -> bool:
        # Read again under the lease: a void of the order may have run while we waited for it.
        fresh = await after_intent(functools.partial(self.store.tender, claimed.id))
        if fresh is None:
            return False
        t = fresh[0]
        if t.status != TenderStatus.APPROVED or t.capture_status != "pending" or t.settled:
            return False
        if t.void_requested_at is not None:
            return False  # a void of it went out: until that is settled, a capture could take voided money
        try:
            outcome: Outcome = await lane.execute(
                ops.Capture(t.reference_id, t.approved_amount or t.amount, t.card_type)
            )
        except TerminalBusy:
            return False
        if isinstance(outcome, NotFound):
            outcome = await self._confirm(lane, t, outcome)
        if isinstance(outcome, Approved):
            written = await after_intent(functools.partial(self.store.set_captured, t.id, self.owner))
            self._lease(written, t.order_id)
            return True
        if isinstance(outcome, Voided):
            await self.record(
                t,
                TenderStatus.VOIDED,
                outcome=outcome,
                from_=(TenderStatus.APPROVED,),
                last_error="voided at the terminal before its capture",
            )
        elif isinstance(outcome, NotFound):
            await self.settled(t, "capture: the batch closed before the capture; the hold is lost", "capture")
        else:
            log.warning("capture of %s: %s; will retry", t.reference_id, type(outcome).__name__)
        return False
