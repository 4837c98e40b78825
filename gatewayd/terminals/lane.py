"""A terminal lane: one owner task per terminal, a bounded queue, one operation at a time.

Policy lives here, mechanism in the driver: a busy terminal is waited for and
the SAME request resent; an ambiguous outcome (Unknown, 1012 after a timeout,
1011 duplicate reference) is resolved with `status` inquiries (capped
exponential backoff with full jitter) until it is definite. A NotFound only
counts once the operation's own transaction timeout has passed. An operation
that was sent always runs to its end, whatever happens to its caller; its
result is kept by reference id for whoever asks next.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, overload

import msgspec

from gatewayd.errors import TerminalBusy, TerminalError
from gatewayd.retry import INQUIRY_BACKOFF, backoff_s, not_found_wait_s
from gatewayd.terminals.driver import TerminalDriver
from gatewayd.terminals.ops import (
    MONEY_OPS,
    Auth,
    Batch,
    Capture,
    HealthCheck,
    Inquire,
    MoneyOp,
    Op,
    Refund,
    Sale,
    Settle,
    Void,
    op_name,
)
from gatewayd.terminals.outcomes import (
    Approved,
    BatchEntry,
    Busy,
    Declined,
    Health,
    HealthState,
    NotFound,
    Offline,
    Outcome,
    SettleResult,
    Unknown,
    Voided,
)

__all__ = ["Auth", "Batch", "Capture", "HealthCheck", "Inquire", "Lane", "Refund", "Sale", "Settle", "Void"]

log = logging.getLogger("gatewayd.terminals.lane")

OnResult = Callable[[str, str, float], None]
# Awaited by the owner task right before the operation is sent; False withdraws it unsent.
BeforeSend = Callable[[], Awaitable[bool]]
Result = Outcome | SettleResult | list[BatchEntry] | Health


# Asked with no await between it and the request leaving: False withdraws it unsent (the caller's
# right to send, such as its lease, has lapsed meanwhile).
MaySend = Callable[[], bool]
# Told what the lane does about the caller's operation on its own: "unknown" (the answer was
# lost or unclear), then "inquiring" (it asks the terminal what became of it).
OnProgress = Callable[[Any], None]
# Told when the terminal's state changes: (new state, last health error).
OnState = Callable[[HealthState, str | None], None]


@dataclass(slots=True)
class _Job:
    op: Op
    future: asyncio.Future[Any]
    key: tuple[str, str] | None
    before_send: BeforeSend | None = None
    may_send: MaySend | None = None
    on_progress: OnProgress | None = None


def _key(op: Op) -> tuple[str, str] | None:
    ref = getattr(op, "ref", None)
    return (op_name(op), ref) if ref is not None else None


def _consume(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()  # mark retrieved: callers may have gone away


def result_tag(result: object) -> str:
    """A short tag for metrics: the outcome's tag, `ok`/`failed` for settle, etc."""
    if isinstance(result, msgspec.Struct) and isinstance(result.__struct_config__.tag, str):
        return result.__struct_config__.tag
    if isinstance(result, SettleResult):
        return "ok" if result.ok else "failed"
    if isinstance(result, Health):
        return result.state
    return "ok" if isinstance(result, list) else "error"


class Lane:
    """The only way to talk to one terminal: `execute(op)` queues, `run()` is the owner task."""

    def __init__(
        self,
        terminal_id: str,
        driver: TerminalDriver,
        *,
        queue_depth: int = 32,
        inquiry_base_s: float = INQUIRY_BACKOFF[0],
        inquiry_cap_s: float = INQUIRY_BACKOFF[1],
        busy_budget_s: float = 120.0,
        results_kept: int = 1024,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rand: Callable[[], float] = random.random,
        on_result: OnResult | None = None,
        on_event: Callable[[str], None] | None = None,
        on_state: OnState | None = None,
    ) -> None:
        self.terminal_id = terminal_id
        self.driver = driver
        self._queue: asyncio.Queue[_Job] = asyncio.Queue(maxsize=queue_depth)
        self._inquiry_base_s = inquiry_base_s
        self._inquiry_cap_s = inquiry_cap_s
        self._busy_budget_s = busy_budget_s
        self._results_kept = results_kept
        self._clock = clock
        self._sleep = sleep
        self._rand = rand
        self._on_result = on_result
        self._on_event = on_event
        self._on_state = on_state
        self._pending: dict[tuple[str, str], _Job] = {}
        self._pending_by_ref: dict[str, _Job] = {}
        self._replay: OrderedDict[tuple[str, str], tuple[Op, Outcome]] = OrderedDict()
        self._known: OrderedDict[str, Outcome] = OrderedDict()
        self._current: _Job | None = None
        self._closed = False
        self._state: HealthState = "unknown"
        self.last_health_check: datetime | None = None
        self.last_health_error: str | None = None
        # When (this lane's clock) the terminal last answered a transaction definitely: it was
        # online then, so the health sweep need not ask it again within the interval.
        self.answered_at: float | None = None

    def __repr__(self) -> str:
        return f"Lane(terminal_id={self.terminal_id!r}, state={self.state!r}, queue_depth={self.queue_depth})"

    def reconfigure(self, driver: TerminalDriver) -> None:
        """New settings (address, credentials, timeout) from the next operation on; the one in
        flight finishes on the driver it started with. Nothing queued is dropped. (The queue's
        depth is fixed for the lane's life: a change of it takes effect at the next start.)"""
        self.driver = driver

    # ------------------------------------------------------------ observation

    @property
    def state(self) -> HealthState:
        """online, offline, busy or unknown: from health checks and transactions' own outcomes."""
        return self._state

    @state.setter
    def state(self, new: HealthState) -> None:
        if new == self._state:
            return
        self._state = new
        if self._on_state is not None:
            try:
                self._on_state(new, self.last_health_error)
            except Exception:
                log.exception("terminal %s: on_state hook failed", self.terminal_id)

    @property
    def queue_depth(self) -> int:
        """Operations waiting (not counting the one in flight)."""
        return self._queue.qsize()

    @property
    def in_flight(self) -> bool:
        """True while an operation is running on the terminal."""
        return self._current is not None

    @property
    def idle(self) -> bool:
        """Nothing queued and nothing in flight."""
        return self._current is None and self._queue.empty()

    def record_health(self, state: HealthState, checked_at: datetime, error: str | None) -> None:
        """Set the state decided by the health monitor."""
        self.last_health_check = checked_at
        self.last_health_error = error
        self.state = state

    def _observe(self, outcome: Outcome) -> None:
        if isinstance(outcome, Approved | Voided | Declined | NotFound):
            new: HealthState = "online"
            self.answered_at = self._clock()
        elif isinstance(outcome, Offline):
            new = "offline"
        elif isinstance(outcome, Busy):
            new = "busy"
        elif isinstance(outcome, Unknown):
            new = "unknown"
        else:
            return
        if new != self.state:
            log.debug("terminal %s: state %s -> %s", self.terminal_id, self.state, new)
            self.state = new

    # ------------------------------------------------------------ callers

    @overload
    async def execute(
        self,
        op: Settle,
        *,
        before_send: BeforeSend | None = None,
        may_send: MaySend | None = None,
        on_progress: OnProgress | None = None,
    ) -> SettleResult: ...
    @overload
    async def execute(
        self,
        op: Batch,
        *,
        before_send: BeforeSend | None = None,
        may_send: MaySend | None = None,
        on_progress: OnProgress | None = None,
    ) -> list[BatchEntry]: ...
    @overload
    async def execute(
        self,
        op: HealthCheck,
        *,
        before_send: BeforeSend | None = None,
        may_send: MaySend | None = None,
        on_progress: OnProgress | None = None,
    ) -> Health: ...
    @overload
    async def execute(
        self,
        op: MoneyOp | Inquire,
        *,
        before_send: BeforeSend | None = None,
        may_send: MaySend | None = None,
        on_progress: OnProgress | None = None,
    ) -> Outcome: ...

    async def execute(
        self,
        op: Op,
        *,
        before_send: BeforeSend | None = None,
        may_send: MaySend | None = None,
        on_progress: OnProgress | None = None,
    ) -> Result:
        """Run `op` on the terminal (or join the same operation already queued or running).

        `before_send` runs in the owner task just before the request leaves (after any queue
        wait): the caller records its intent there, stamped with the real send time.
        `on_progress` hears when the lane resolves an unclear answer on its own.
        """
        if self._closed:
            raise TerminalError("lane is stopped", terminal_id=self.terminal_id)
        joined = self._join(op)
        if joined is not None:
            result: Result = await joined
            return result
        job = _Job(
            op=op,
            future=asyncio.get_running_loop().create_future(),
            key=_key(op),
            before_send=before_send,
            may_send=may_send,
            on_progress=on_progress,
        )
        job.future.add_done_callback(_consume)
        try:
            self._queue.put_nowait(job)
        except asyncio.QueueFull:
            raise TerminalBusy(
                "terminal queue is full", terminal_id=self.terminal_id, queue_depth=self._queue.maxsize
            ) from None
        if job.key is not None:
            self._pending[job.key] = job
            if isinstance(op, MONEY_OPS):
                self._pending_by_ref[job.key[1]] = job
        return await asyncio.shield(job.future)  # type: ignore[no-any-return]

    def _join(self, op: Op) -> Awaitable[Any] | None:
        """A future or kept result for an operation already known, else None."""
        key = _key(op)
        if key is None:
            return None
        if isinstance(op, Inquire):
            job = self._pending_by_ref.get(op.ref) or self._pending.get(key)
            if job is not None:
                return asyncio.shield(job.future)
            known = None if op.fresh else self._known.get(op.ref)
            return _ready(known) if known is not None else None
        job = self._pending.get(key)
        if job is not None:
            self._check_same(job.op, op)
            return asyncio.shield(job.future)
        kept = self._replay.get(key)
        if kept is not None:
            self._check_same(kept[0], op)
            return _ready(kept[1])
        return None

    def _check_same(self, earlier: Op, op: Op) -> None:
        if isinstance(earlier, Void) and isinstance(op, Void):
            return  # a void's amount is informational: the reference id names the transaction
        if earlier != op:
            raise TerminalError(
                "another operation with this reference id is known",
                terminal_id=self.terminal_id,
                reference_id=getattr(op, "ref", ""),
            )

    # ------------------------------------------------------------ the owner task

    async def run(self) -> None:
        """The owner task: take one job at a time and run it to a definite end."""
        try:
            while True:
                job = await self._queue.get()
                self._current = job
                started = self._clock()
                result: Result | BaseException
                try:
                    if (job.before_send is not None and not await job.before_send()) or (
                        job.may_send is not None and not job.may_send()
                    ):
                        result = _withdrawn(job.op)
                    else:
                        result = await self._perform(job.op)
                except asyncio.CancelledError:
                    _settle_future(job.future, _stopped(job.op, sent=True))
                    raise
                except TerminalError as exc:
                    result = _failed(job.op, exc, self.terminal_id)
                except Exception as exc:
                    log.exception("terminal %s: %s failed", self.terminal_id, op_name(job.op))
                    result = _failed(job.op, exc, self.terminal_id)
                finally:
                    self._current = None
                self._finish(job, result, self._clock() - started)
        finally:
            self._closed = True
            self._drain()

    def _drain(self) -> None:
        while not self._queue.empty():
            job = self._queue.get_nowait()
            _settle_future(job.future, _stopped(job.op, sent=False))
        self._pending.clear()
        self._pending_by_ref.clear()

    def _finish(self, job: _Job, result: Result | BaseException, seconds: float) -> None:
        if job.key is not None:
            self._pending.pop(job.key, None)
            if self._pending_by_ref.get(job.key[1]) is job:
                del self._pending_by_ref[job.key[1]]
        if isinstance(job.op, MONEY_OPS) and isinstance(result, Approved | Voided | Declined | NotFound):
            # A refused void or capture is not final: a later one of the same charge must really
            # be sent, so only its success is kept (a charge's decline is final for its ref).
            retryable = (isinstance(job.op, Void) and not isinstance(result, Voided)) or (
                isinstance(job.op, Capture) and not isinstance(result, Approved)
            )
            if not retryable:
                _keep(self._known, job.op.ref, result, self._results_kept)
            if job.key is not None and isinstance(result, Approved | Voided | Declined) and not retryable:
                _keep(self._replay, job.key, (job.op, result), self._results_kept)
        _settle_future(job.future, result)
        if self._on_result is not None:
            try:
                self._on_result(op_name(job.op), result_tag(result), seconds)
            except Exception:
                log.exception("terminal %s: on_result hook failed", self.terminal_id)

    async def _perform(self, op: Op) -> Result:
        d = self.driver
        if isinstance(op, Sale):
            return await self._transact(op, lambda: d.sale(op.ref, op.amount, payment_type=op.payment_type))
        if isinstance(op, Auth):
            return await self._transact(op, lambda: d.auth(op.ref, op.amount, payment_type=op.payment_type))
        if isinstance(op, Capture):
            return await self._transact(op, lambda: d.capture(op.ref, op.amount, payment_type=op.payment_type))
        if isinstance(op, Void):
            return await self._transact(op, lambda: d.void(op.ref, op.amount, payment_type=op.payment_type))
        if isinstance(op, Refund):
            return await self._transact(
                op, lambda: d.refund(op.ref, op.amount, payment_type=op.payment_type, sale_ref=op.sale_ref)
            )
        if isinstance(op, Inquire):
            outcome = await d.status(op.ref, payment_type=op.payment_type)
            self._observe(outcome)
            return outcome
        if isinstance(op, Settle):
            return await d.settle()
        if isinstance(op, Batch):
            return await d.batch()
        return await d.health()

    # ------------------------------------------------------------ money policy

    async def _transact(self, op: MoneyOp, send: Callable[[], Awaitable[Outcome]]) -> Outcome:
        busy_until = self._clock() + self._busy_budget_s
        while True:
            sent_at = self._clock()
            outcome = await send()
            self._observe(outcome)
            if isinstance(outcome, Busy):
                if self._clock() + outcome.retry_after_s > busy_until:
                    return outcome
                log.debug(
                    "terminal %s: busy, resending %s in %.1fs",
                    self.terminal_id,
                    op.ref,
                    outcome.retry_after_s,
                )
                await self._sleep(outcome.retry_after_s)
                # The caller's intent is stamped again: a "not found" counts from this send.
                hook = self._current.before_send if self._current is not None else None
                may = self._current.may_send if self._current is not None else None
                if (hook is not None and not await hook()) or (may is not None and not may()):
                    return Declined(reference_id=op.ref, status_code="", message="not sent: withdrawn by the caller")
                continue
            if self._ambiguous(outcome, sent_at):
                self._emit("unknown")
                self._progress("unknown")
                log.info(
                    "terminal %s: %s %s outcome unknown (%s), inquiring",
                    self.terminal_id,
                    op_name(op),
                    op.ref,
                    getattr(outcome, "reason", getattr(outcome, "status_code", "")),
                )
                return await self._resolve(op, sent_at)
            return _fit(op, outcome)

    def _ambiguous(self, outcome: Outcome, sent_at: float) -> bool:
        if isinstance(outcome, Unknown):
            return True
        # A cancel that arrives once the terminal's own timeout has run out may be the proxy
        # interrupting a card flow whose authorization still went through.
        late = self._clock() - sent_at >= self.driver.timeout_s
        return isinstance(outcome, Declined) and outcome.cancelled and late

    def _emit(self, event: str) -> None:
        """Tell the metrics hook about an unknown outcome or an inquiry."""
        if self._on_event is not None:
            self._on_event(event)

    def _progress(self, phase: str) -> None:
        """Tell the caller of the operation in flight what the lane does about it."""
        hook = self._current.on_progress if self._current is not None else None
        if hook is not None:
            try:
                hook(phase)
            except Exception:
                log.exception("terminal %s: on_progress hook failed", self.terminal_id)

    async def _resolve(self, op: MoneyOp, sent_at: float) -> Outcome:
        # "Not found" is believed only once the request cannot still be on its way (one rule for
        # the whole daemon: gatewayd.retry), measured on this lane's own clock from its own send.
        margin_s = self.driver.transaction_timeout_s - self.driver.timeout_s
        deadline = sent_at + not_found_wait_s(self.driver.timeout_s, margin_s)
        self.state = "unknown"
        self._progress("inquiring")
        attempt = 0
        while True:
            self._emit("inquiry")
            answer = await self.driver.status(op.ref, payment_type=op.payment_type)
            self._observe(answer)
            now = self._clock()
            verdict = _verdict(op, answer, now >= deadline)
            if verdict is not None:
                log.info(
                    "terminal %s: %s %s resolved: %s",
                    self.terminal_id,
                    op_name(op),
                    op.ref,
                    result_tag(verdict),
                )
                return _fit(op, verdict)
            delay = backoff_s(attempt, self._inquiry_base_s, self._inquiry_cap_s, self._rand)
            if isinstance(answer, Busy):
                delay = max(delay, min(answer.retry_after_s, self._inquiry_cap_s))
            elif isinstance(answer, NotFound | Approved | Voided):
                delay = max(delay, min(deadline - now, self._inquiry_cap_s))
            attempt += 1
            await self._sleep(delay)


def _verdict(op: MoneyOp, answer: Outcome, past_deadline: bool) -> Outcome | None:
    """The definite outcome of `op` given a Status answer, or None to keep inquiring.

    A charge found voided is `Voided` (never an approval); a void whose charge is still
    approved past the deadline did not apply.
    """
    if isinstance(answer, Declined | Voided):
        return answer
    if isinstance(answer, NotFound):
        return answer if past_deadline else None
    if not isinstance(answer, Approved):
        return None
    if isinstance(op, Void):
        return _not_applied(op, "void") if past_deadline else None
    if isinstance(op, Capture) and answer.transaction_type == "auth":
        return _not_applied(op, "capture") if past_deadline else None
    return answer


def _not_applied(op: MoneyOp, what: str) -> Declined:
    return Declined(reference_id=op.ref, status_code="", message=f"{what} not applied")


def _fit(op: MoneyOp, outcome: Outcome) -> Outcome:
    """Name the requested amount on an approval of a charge (Status answers do not carry it)."""
    if isinstance(outcome, Approved) and not isinstance(op, Void) and outcome.requested_amount != op.amount:
        return msgspec.structs.replace(outcome, requested_amount=op.amount)
    return outcome


def _withdrawn(op: Op) -> Result:
    """The result of an operation its caller withdrew just before it would have been sent."""
    if isinstance(op, Settle):
        return SettleResult(ok=False, message="not sent: withdrawn by the caller")
    return Declined(reference_id=getattr(op, "ref", ""), status_code="", message="not sent: withdrawn by the caller")


def _stopped(op: Op, *, sent: bool) -> Result | BaseException:
    if isinstance(op, Settle):
        return SettleResult(ok=False, message="lane stopped")
    if isinstance(op, HealthCheck):
        return Health(state="unknown", message="lane stopped")
    if isinstance(op, Batch):
        return TerminalError("lane stopped")
    if sent:
        return Unknown(reason="lane stopped while the operation was in flight")
    return Offline(message="lane stopped before sending")


def _failed(op: Op, exc: Exception, terminal_id: str) -> Result | BaseException:
    if isinstance(op, Batch):
        return exc if isinstance(exc, TerminalError) else TerminalError("batch failed", terminal_id=terminal_id)
    if isinstance(op, Settle):
        return SettleResult(ok=False, message=f"outcome unknown: {type(exc).__name__}")
    if isinstance(op, HealthCheck):
        return Health(state="unknown", message=type(exc).__name__)
    return Unknown(reason=f"internal error: {type(exc).__name__}")


def _settle_future(future: asyncio.Future[Any], result: Result | BaseException) -> None:
    if future.done():
        return
    if isinstance(result, BaseException):
        future.set_exception(result)
    else:
        future.set_result(result)


def _keep(store: OrderedDict[Any, Any], key: Any, value: Any, limit: int) -> None:
    store[key] = value
    store.move_to_end(key)
    while len(store) > limit:
        store.popitem(last=False)


async def _ready(value: Outcome) -> Outcome:
    return value
