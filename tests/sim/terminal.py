"""Fake card terminals: a device with its own ledger, and the driver a lane talks to it through.

The device (`FakeTerminal`) belongs to the simulated world and outlives daemon crashes: a
transaction it has started runs to its end on the device's own time, whether or not the
daemon that sent it is still there to read the answer. The ledger is the ground truth the
invariants are checked against (reference id -> type, amount, status, batch).

Faults come from the seed. The device never lies: `Offline` and `Busy` only when nothing was
started, `NotFound` only for a reference it has not recorded (yet), and every transaction is
decided (recorded or dropped) within the proxy timeout `timeout_s` of reaching the device,
so a "not found" is true once that has passed - the contract the lane and recovery rely on.

`FakeDriver` implements gatewayd.terminals.driver.TerminalDriver: money methods never raise,
answer `Unknown` when the request may have left, and take virtual time.
"""

from __future__ import annotations

import asyncio
import contextvars
import random
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from gatewayd.terminals.outcomes import (
    Approved,
    BatchEntry,
    Busy,
    Declined,
    Health,
    Misconfigured,
    NotFound,
    Offline,
    Outcome,
    SettleResult,
    Unknown,
    Voided,
)
from tests.sim.faults import Coverage, TerminalFaultRates, calm_terminal
from tests.sim.loop import OWNER

HTTP_MARGIN_S = 10.0
STATUS_TIMEOUT_S = 5.0
CHARGES = ("sale", "auth", "capture")


def world_task(coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
    """A task of the simulated world (not of any daemon process): crashes do not touch it."""
    ctx = contextvars.copy_context()
    ctx.run(OWNER.set, None)
    return asyncio.get_running_loop().create_task(coro, context=ctx)


@dataclass
class Entry:
    """One transaction in a terminal's ledger."""

    ref: str
    type: str  # sale | auth | capture | return
    amount: int
    requested: int
    status: str  # approved | declined | voided | returned | captured
    code: str
    batch: int
    number: int
    voided: bool = False
    settled: bool = False
    settled_by: str = ""  # "gatewayd" (a Settle it sent) or "outside" (the batch closed on its own)
    told: bool = False  # its approval reached a daemon (an answer or a Status): gatewayd may act on it

    def moves_money(self) -> bool:
        """Charged, held or returned. An authorization never captured is a hold, never money
        received: it lapses when its batch settles."""
        if self.voided or self.status not in ("approved", "captured", "returned"):
            return False
        return not (self.type == "auth" and self.settled)


@dataclass
class _Txn:
    kind: str
    ref: str
    amount: int
    plan: str  # approve | decline | partial | never | late_cancel | ...
    delivery: str  # normal | lost | reset
    latency: float
    answer: asyncio.Future[Outcome]
    dropped: bool = False


@dataclass
class FakeTerminal:
    """One card terminal and its proxy; world-owned, keeps its ledger across daemon restarts."""

    terminal_id: str
    timeout_s: int
    rng: random.Random
    rates: TerminalFaultRates
    coverage: Coverage
    trace: Callable[..., None]
    on_ledger: Callable[[str, str], None] = lambda ref, what: None
    on_void_request: Callable[[str, Entry | None], None] = lambda ref, entry: None
    on_capture_request: Callable[[str, Entry | None], None] = lambda ref, entry: None
    ledger: dict[str, Entry] = field(default_factory=dict)
    batch: int = 1
    current: _Txn | None = None
    offline_until: float = -1.0
    calls: Counter[str] = field(default_factory=Counter)
    void_requests: Counter[str] = field(default_factory=Counter)
    auth_key: str = "key-0"  # the key the SPIn proxy expects; a request with another is refused (2002)
    slow_next: bool = False  # the next charge is approved just before the proxy timeout (a nemesis sets it)
    # How long a health check takes: a stream of its own, so that how often the daemons check
    # (a scheduling choice of gatewayd's) does not change what the device does with the money.
    health_rng: random.Random = field(default_factory=lambda: random.Random(0))

    def refuses(self, key: str) -> Misconfigured | None:
        """A request signed with the wrong auth key: SPIn answers 2002, nothing is started."""
        if key == self.auth_key:
            return None
        self.coverage.hit("term.wrong_authkey_refused")
        return Misconfigured(status_code="2002", message="Invalid AuthKey")

    def keypad_void(self, ref: str, *, untold_only: bool = True) -> bool:
        """A cashier voids an approved charge at the keypad, behind gatewayd's back (`untold_only`:
        only one whose approval no daemon has heard of yet)."""
        entry = self.ledger.get(ref)
        if entry is None or entry.voided or entry.settled or entry.type not in CHARGES or entry.status == "declined":
            return False
        if untold_only and entry.told:
            return False
        entry.voided, entry.status = True, "voided"
        self.trace("term", self.terminal_id, "keypad_void", ref)
        self.on_ledger(ref, "void")
        return True

    # ------------------------------------------------------------ world side

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    def offline(self) -> bool:
        return self.now() < self.offline_until

    def go_offline(self, seconds: float) -> None:
        """Disconnected from the proxy for a while: open connections reset, the device carries on."""
        self.offline_until = max(self.offline_until, self.now() + seconds)
        self.trace("term", self.terminal_id, "offline", round(seconds, 3))
        txn = self.current
        if txn is not None and not txn.answer.done():
            txn.answer.set_result(Unknown(reason="connection reset: terminal went offline"))

    def reboot(self, seconds: float) -> None:
        """A reboot: the transaction in flight is lost (never recorded), offline meanwhile."""
        txn = self.current
        if txn is not None:
            txn.dropped = True
            self.current = None
            self.coverage.hit("term.reboot_inflight")
            self.trace("term", self.terminal_id, "reboot_drops", txn.kind, txn.ref)
            if not txn.answer.done():
                txn.answer.set_result(Unknown(reason="connection reset by peer"))
        self.go_offline(seconds)

    def heal(self) -> None:
        self.rates = calm_terminal(self.rates)
        self.offline_until = min(self.offline_until, self.now())

    def _record(self, txn: _Txn, kind: str, amount: int, status: str, code: str) -> Entry:
        entry = Entry(
            txn.ref,
            kind,
            amount,
            txn.amount,
            status,
            code,
            self.batch,
            sum(1 for e in self.ledger.values() if not e.settled) + 1,
        )
        self.ledger[txn.ref] = entry
        self.trace("term", self.terminal_id, "record", kind, txn.ref, amount, status)
        self.on_ledger(txn.ref, "record")
        return entry

    def _answer_of(self, entry: Entry, requested: int | None = None) -> Outcome:
        if entry.status == "declined":
            cancelled = entry.code == "1012"  # the card flow was cancelled (SPIn's CANCELLED class)
            return Declined(
                reference_id=entry.ref,
                status_code=entry.code,
                message="Canceled" if cancelled else "Declined",
                cancelled=cancelled,
            )
        if entry.voided:
            return Voided(reference_id=entry.ref, amount=entry.amount, status_code=entry.code)
        entry.told = True
        return Approved(
            reference_id=entry.ref,
            amount=entry.amount,
            requested_amount=entry.amount if requested is None else requested,
            auth_code=f"A{abs(hash_ref(entry.ref)) % 100000:05d}",
            card_brand="VISA",
            last4=f"{abs(hash_ref(entry.ref)) % 10000:04d}",
            batch_number=str(entry.batch),
            transaction_number=str(entry.number),
            status_code=entry.code,
            transaction_type=entry.type,
        )

    async def _process(self, txn: _Txn) -> None:
        """The device side of one transaction: decided after `latency`, then answered (or not)."""
        await asyncio.sleep(txn.latency)
        if txn.dropped:
            return
        self.current = None
        outcome = self._decide(txn)
        if txn.answer.done():
            return  # the connection was reset meanwhile
        if txn.delivery == "lost":
            self.coverage.hit("term.response_lost")
            self.trace("term", self.terminal_id, "answer_lost", txn.ref)
            return
        if txn.delivery == "reset" and isinstance(outcome, Approved):
            self.coverage.hit("term.reset_after_approval")
            self.trace("term", self.terminal_id, "reset_after_approval", txn.ref)
            txn.answer.set_result(Unknown(reason="connection reset by peer"))
            return
        txn.answer.set_result(outcome)

    def _decide(self, txn: _Txn) -> Outcome:
        kind, plan = txn.kind, txn.plan
        if kind == "void":
            return self._apply_void(txn)
        if kind == "capture":
            entry = self.ledger.get(txn.ref)
            if entry is None or entry.voided or entry.settled or entry.type not in ("auth", "capture"):
                return NotFound(reference_id=txn.ref, status_code="1001")
            if entry.type == "auth":
                entry.type, entry.status, entry.amount = "capture", "captured", txn.amount
                self.on_ledger(txn.ref, "capture")
            return self._answer_of(entry, txn.amount)
        ok_status = "returned" if kind == "return" else "approved"
        if plan == "never":
            self.coverage.hit("term.timeout_before_auth")
            self.trace("term", self.terminal_id, "timeout_before_auth", txn.ref)
            return Unknown(reason="The operation has timed out", status_code="2007")
        if plan == "decline":
            self.coverage.hit("term.decline")
            return self._answer_of(self._record(txn, kind, txn.amount, "declined", "1015"))
        if plan == "partial":
            self.coverage.hit("term.partial")
            entry = self._record(txn, kind, max(1, txn.amount // 2), ok_status, "0001")
            return self._answer_of(entry, txn.amount)
        if plan.startswith("late_cancel"):
            self.coverage.hit("term.late_cancel")
            if plan == "late_cancel_approved":
                self._record(txn, kind, txn.amount, ok_status, "0000")
            elif plan == "late_cancel_declined":
                self._record(txn, kind, txn.amount, "declined", "1012")
            return Declined(reference_id=txn.ref, status_code="1012", message="Canceled", cancelled=True)
        return self._answer_of(self._record(txn, kind, txn.amount, ok_status, "0000"), txn.amount)

    def _apply_void(self, txn: _Txn) -> Outcome:
        entry = self.ledger.get(txn.ref)
        if txn.plan == "void_declined":
            self.coverage.hit("term.void_declined")
            return Declined(reference_id=txn.ref, status_code="1015", message="void refused")
        if txn.plan == "void_timeout_lost":
            self.coverage.hit("term.void_timeout")
            self.trace("term", self.terminal_id, "void_timeout_not_applied", txn.ref)
            return Unknown(reason="The operation has timed out", status_code="2007")
        if entry is None or entry.status == "declined" or entry.settled:
            return NotFound(reference_id=txn.ref, status_code="1001")
        if not entry.voided:
            entry.voided, entry.status = True, "voided"
            self.trace("term", self.terminal_id, "voided", txn.ref)
            self.on_ledger(txn.ref, "void")
        if txn.plan == "void_timeout_applied":
            self.coverage.hit("term.void_timeout")
            return Unknown(reason="The operation has timed out", status_code="2007")
        return self._answer_of(entry)

    # ------------------------------------------------------------ what the proxy answers

    def _plan(self, kind: str) -> tuple[str, str, float]:
        r, rng, t = self.rates, self.rng, float(self.timeout_s)
        if kind == "void":
            roll = rng.random()
            if roll < r.void_declined:
                return "void_declined", "normal", rng.uniform(0.2, 2.0)
            if roll < r.void_declined + r.void_timeout:
                plan = rng.choice(("void_timeout_applied", "void_timeout_lost"))
                return plan, "normal", t
            return "void", "normal", rng.uniform(0.2, 2.0)
        latency = rng.uniform(0.5 * t, t) if rng.random() < r.slow else rng.uniform(0.3, min(8.0, 0.9 * t))
        if kind == "capture":
            return "capture", "lost" if rng.random() < r.response_lost else "normal", rng.uniform(0.2, 2.0)
        roll = rng.random()
        plan = "approve"
        for name, rate in (
            ("decline", r.decline),
            ("partial", r.partial if kind != "return" else 0.0),
            ("never", r.timeout_before_auth),
            ("late_cancel", r.late_cancel),
        ):
            if roll < rate:
                plan = name
                break
            roll -= rate
        if plan == "never":
            return plan, rng.choice(("normal", "lost")), t
        if plan == "late_cancel":
            return rng.choice(("late_cancel_approved", "late_cancel_declined", "late_cancel_nothing")), "normal", t
        roll = rng.random()
        delivery = (
            "lost"
            if roll < r.response_lost
            else "reset"
            if roll < r.response_lost + r.reset_after_approval
            else "normal"
        )
        return plan, delivery, latency

    async def transact(self, kind: str, ref: str, amount: int) -> Outcome:
        """A money operation from a driver (sale, auth, capture, void, return)."""
        self.calls[kind] += 1
        await asyncio.sleep(self.rng.uniform(0.005, 0.05))
        if kind == "void":
            self.void_requests[ref] += 1
            if self.void_requests[ref] > 1:
                self.coverage.hit("recovery.void_retried")
            self.on_void_request(ref, self.ledger.get(ref))
        if kind == "capture":
            self.on_capture_request(ref, self.ledger.get(ref))
        if self.offline():
            self.coverage.hit("term.offline")
            return Offline(status_code="2001", message="Terminal not connected to SPIn Proxy server")
        if self.current is not None or self.rng.random() < self.rates.busy:
            self.coverage.hit("term.busy")
            return Busy(retry_after_s=round(self.rng.uniform(0.5, 3.0), 3), status_code="2008")
        if kind in ("sale", "auth", "return") and ref in self.ledger:
            return Unknown(reason="Duplicate Reference Id", status_code="1011")
        plan, delivery, latency = self._plan(kind)
        if self.slow_next and kind in ("sale", "auth"):
            self.slow_next = False
            plan, delivery, latency = "approve", "normal", 0.9 * float(self.timeout_s)
        txn = _Txn(kind, ref, amount, plan, delivery, latency, asyncio.get_running_loop().create_future())
        self.current = txn
        self.trace("term", self.terminal_id, "start", kind, ref, amount, plan, delivery, round(latency, 3))
        world_task(self._process(txn))
        try:
            return await asyncio.wait_for(asyncio.shield(txn.answer), self.timeout_s + HTTP_MARGIN_S)
        except TimeoutError:
            return Unknown(reason="TimeoutError: the HTTP request timed out")

    async def status(self, ref: str, **_: Any) -> Outcome:
        self.calls["status"] += 1
        await asyncio.sleep(self.rng.uniform(0.01, 0.3))
        if self.offline():
            return Offline(status_code="2001")
        roll = self.rng.random()
        if roll < self.rates.status_busy:
            self.coverage.hit("term.status_busy")
            return Busy(retry_after_s=round(self.rng.uniform(0.5, 2.0), 3), status_code="2008")
        if roll < self.rates.status_busy + self.rates.status_unknown:
            self.coverage.hit("term.status_unknown")
            await asyncio.sleep(STATUS_TIMEOUT_S)
            return Unknown(reason="TimeoutError: status timed out")
        entry = self.ledger.get(ref)
        if entry is None:
            self.coverage.hit("term.status_not_found")
            return NotFound(reference_id=ref, status_code="1001")
        return self._answer_of(entry)

    async def health(self) -> Health:
        self.calls["health"] += 1
        await asyncio.sleep(self.health_rng.uniform(0.01, 0.1))
        if self.offline():
            return Health(state="offline", message="Terminal not connected")
        return Health(state="online")

    async def settle(self) -> SettleResult:
        """A Settle from a driver (gatewayd's lane)."""
        self.calls["settle"] += 1
        await asyncio.sleep(self.rng.uniform(0.5, 2.0))
        if self.offline():
            return SettleResult(ok=False, message="offline")
        if self.current is not None:
            return SettleResult(ok=False, message="busy")
        return self.close_batch("gatewayd")

    def close_batch(self, by: str) -> SettleResult:
        """Close the open batch: its charges can no longer be voided (nor its holds captured), only
        returned; an authorization never captured lapses."""
        closed = [e for e in self.ledger.values() if not e.settled]
        if not closed:
            return SettleResult(ok=False, message="no open batch")
        for e in closed:
            e.settled, e.settled_by = True, by
        self.trace("term", self.terminal_id, "settled", by, self.batch, len(closed))
        self.batch += 1
        for e in closed:
            self.on_ledger(e.ref, "settle")
        return SettleResult(ok=True, batch=str(self.batch - 1), count=len(closed))

    def open_batch(self) -> list[BatchEntry]:
        return [
            BatchEntry(reference_id=e.ref, type=e.type, amount=e.amount, status=e.status, batch=str(e.batch))
            for e in self.ledger.values()
            if not e.settled
        ]


def hash_ref(ref: str) -> int:
    """A stable small hash (Python's str hash is salted per process)."""
    h = 0
    for ch in ref:
        h = (h * 131 + ord(ch)) % 1_000_003
    return h


class FakeDriver:
    """gatewayd.terminals.driver.TerminalDriver over a FakeTerminal (one per lane of a daemon process).

    `key`: the auth key this daemon's configuration binds to the terminal (a reload edits it in
    place). `thawed`: waits while the daemon is stalled (an answer arrives, the frozen process does
    not read it until it wakes)."""

    def __init__(self, terminal: FakeTerminal, key: str = "key-0", thawed: Callable[[], Any] | None = None) -> None:
        self.terminal = terminal
        self.key = key
        self.thawed = thawed

    async def _wake(self, outcome: Any) -> Any:
        if self.thawed is not None:
            await self.thawed()
        return outcome

    async def _money(self, kind: str, ref: str, amount: int) -> Outcome:
        if self.thawed is not None:
            await self.thawed()
        refused = self.terminal.refuses(self.key)
        if refused is not None:
            await asyncio.sleep(0.05)
            return refused
        return await self._wake(await self.terminal.transact(kind, ref, amount))

    @property
    def terminal_id(self) -> str:
        return self.terminal.terminal_id

    @property
    def timeout_s(self) -> float:
        return float(self.terminal.timeout_s)

    @property
    def transaction_timeout_s(self) -> float:
        return self.terminal.timeout_s + HTTP_MARGIN_S

    async def sale(self, ref: str, amount: int, **_: Any) -> Outcome:
        return await self._money("sale", ref, amount)

    async def auth(self, ref: str, amount: int, **_: Any) -> Outcome:
        return await self._money("auth", ref, amount)

    async def capture(self, ref: str, amount: int, **_: Any) -> Outcome:
        return await self._money("capture", ref, amount)

    async def void(self, ref: str, amount: int | None = None, **_: Any) -> Outcome:
        outcome = await self._money("void", ref, amount or 0)
        if isinstance(outcome, Approved):  # as the SPIn codec does: an approval of a Void is Voided
            return Voided(reference_id=ref, amount=outcome.amount, status_code=outcome.status_code)
        return outcome

    async def refund(self, ref: str, amount: int, **_: Any) -> Outcome:
        return await self._money("return", ref, amount)

    async def status(self, ref: str, **_: Any) -> Outcome:
        if self.thawed is not None:
            await self.thawed()
        refused = self.terminal.refuses(self.key)
        if refused is not None:
            await asyncio.sleep(0.05)
            return refused
        return await self._wake(await self.terminal.status(ref))

    async def health(self) -> Health:
        if self.terminal.refuses(self.key) is not None:
            await asyncio.sleep(0.05)
            return Health(state="online", message="Invalid AuthKey", misconfigured=True)
        return await self.terminal.health()

    async def settle(self) -> SettleResult:
        if self.terminal.refuses(self.key) is not None:
            await asyncio.sleep(0.05)
            return SettleResult(ok=False, message="Invalid AuthKey")
        return await self._wake(await self.terminal.settle())

    async def batch(self) -> list[BatchEntry]:
        await asyncio.sleep(0.1)
        return self.terminal.open_batch()

    async def aclose(self) -> None:
        return None
