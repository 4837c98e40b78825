"""Point-of-sale clients: checkouts, retries, duplicates, key reuse, voids and refunds.

Each client is a register of the store. It behaves like a real POS app under a flaky
network: it resends the same request (same idempotency key) after an error, a timeout or a
reset connection, sometimes twice at once, sometimes stops waiting, sometimes gives up for
good; now and then it reuses an old key with another body (which must be refused without a
single terminal operation) and voids or refunds one of its completed checkouts.

Every answer is kept for the I6 checks (`Answers`).
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgspec

from gatewayd.checkout.errors import (
    AlreadySettled,
    CheckoutError,
    DatabaseUnavailable,
    IdempotencyConflict,
    InsufficientInventory,
    InvalidRequest,
    NotAllowed,
    NotFound,
    OutcomePending,
    RefundDeclined,
    TerminalOffline,
    UnknownTerminalRequested,
)
from gatewayd.checkout.model import (
    CardTender,
    CashTender,
    CheckoutRequest,
    CheckoutView,
    Line,
    RefundRequest,
    RestockLine,
)
from gatewayd.checkout.validate import request_hash
from tests.sim.daemon import Disconnected, Refused

if TYPE_CHECKING:
    from tests.sim.world import World

# sku -> (unit price, initial stock range; None: untracked)
CATALOGUE: dict[str, tuple[int, tuple[int, int] | None]] = {
    "COFFEE-1KG": (1299, (20, 60)),
    "MUG": (850, (3, 12)),
    "LAST-ONE": (4999, (1, 1)),
    "SCARCE": (2500, (1, 3)),
    "SERVICE": (500, None),
    "GIFTWRAP": (199, None),
}
NO_ORDER = (InsufficientInventory, TerminalOffline, UnknownTerminalRequested)


@dataclass
class Answer:
    """One answer the POS got."""

    at: float
    request: str  # the request tag (lane operations are counted by it)
    key: str
    digest: str
    kind: str  # view | conflict | error name
    order_id: str | None = None
    status: str | None = None


@dataclass
class Answers:
    """Every checkout answer, for the idempotency checks."""

    items: list[Answer] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


class Client:
    """One register."""

    def __init__(self, world: World, index: int) -> None:
        self.world = world
        self.index = index
        self.register = f"REG-{index + 1}"
        self.rng = random.Random(f"client:{world.seed}:{index}")
        # The cashier's second thoughts (its own stream: the register's other choices keep theirs).
        self.rethink = random.Random(f"rethink:{world.seed}:{index}")
        self.completed: dict[str, CheckoutView] = {}  # order id -> last view seen
        self.keys: list[tuple[str, CheckoutRequest]] = []
        self.seq = 0
        self.requests = 0

    # ------------------------------------------------------------ sending

    def _tag(self) -> str:
        self.requests += 1
        return f"{self.register}#{self.requests}"

    async def _send(self, work: Callable[[Any], Awaitable[Any]], tag: str) -> Any:
        w, rng = self.world, self.rng
        proc = w.process
        if proc is None or not proc.ready:
            raise Refused("connection refused")
        disconnect = w.faults_on and rng.random() < w.plan.disconnect
        patience = rng.uniform(0.05, 5.0) if disconnect else None
        try:
            return await proc.call(work, tag, patience, cancel_on_disconnect=rng.random() < 0.5)
        except Disconnected:
            if disconnect:
                w.coverage.hit("pos.disconnect")
            raise

    def _request(self) -> CheckoutRequest:
        w, rng = self.world, self.rng
        self.seq += 1
        key = f"{self.register}-{self.seq}-{rng.getrandbits(32):08x}"
        skus = list(CATALOGUE)
        lines = []
        for sku in rng.sample(skus, rng.randint(1, 3)):
            lines.append(Line(sku=sku, quantity=rng.choice((1, 1, 1, 2, 3)), unit_price=CATALOGUE[sku][0]))
        total = sum(line.quantity * line.unit_price for line in lines)
        terminals = list(w.terminals)
        mix = rng.choice(("cash", "card", "card", "card", "split", "card+card"))
        tenders: list[CashTender | CardTender] = []
        if mix == "cash":
            tenders = [CashTender(amount=total, tendered=total + rng.choice((0, 1, 500)))]
        elif mix == "card" or total < 2:
            tenders = [CardTender(amount=total, terminal_id=rng.choice(terminals))]
        elif mix == "split":
            cash = rng.randint(1, total - 1)
            tenders = [CashTender(amount=cash), CardTender(amount=total - cash, terminal_id=rng.choice(terminals))]
        else:
            first = rng.randint(1, total - 1)
            a, b = rng.sample(terminals, 2) if len(terminals) > 1 else (terminals[0], terminals[0])
            tenders = [CardTender(amount=first, terminal_id=a), CardTender(amount=total - first, terminal_id=b)]
        customer = rng.choice((None, None, "C-ALICE", "C-BOB", "C-CAROL"))
        return CheckoutRequest(
            idempotency_key=key, lines=lines, tenders=tenders, register_id=self.register, customer_id=customer
        )

    def _record(self, tag: str, request: CheckoutRequest, kind: str, view: CheckoutView | None = None) -> None:
        w = self.world
        # hashed as the daemon hashes it: a request without a currency names the store's (USD)
        digest = request_hash(request if request.currency else msgspec.structs.replace(request, currency="USD"))
        w.answers.items.append(
            Answer(
                w.now(),
                tag,
                request.idempotency_key,
                digest,
                kind,
                view.id if view else None,
                view.status if view else None,
            )
        )
        w.trace("pos", tag, request.idempotency_key, kind, view.status if view else None)
        stored = w.tables.find_key(request.idempotency_key)
        if kind == "conflict":
            if stored is not None and stored[1] == digest:
                w.answers.problems.append(
                    f"I6: {tag} was refused as a conflict, but key {request.idempotency_key} "
                    "is stored with this very body"
                )
        elif view is not None:
            if stored is None or str(stored[0]) != view.id or stored[1] != digest:
                w.answers.problems.append(
                    f"I6: {tag} got checkout {view.id} for key {request.idempotency_key}, "
                    f"which the store holds as {stored}"
                )
            if view.final and view.status in ("completed", "partially_refunded", "refunded"):
                self.completed[view.id] = view
            elif view.id in self.completed and view.final:
                self.completed[view.id] = view

    # ------------------------------------------------------------ one checkout, to its end

    async def checkout(self, request: CheckoutRequest, *, other_body: bool = False) -> None:
        """Send until the answer is final (or the cashier gives up); poll or resend meanwhile."""
        w, rng = self.world, self.rng
        delay = 0.5
        poll = False
        for attempt in range(200):
            if attempt and w.faults_on and rng.random() < w.plan.give_up:
                w.trace("pos", self.register, request.idempotency_key, "gives_up")
                return
            if attempt and not poll:
                w.coverage.hit("pos.retry_same_key")
            copies = 1
            if not poll and w.faults_on and rng.random() < w.plan.duplicate:
                copies = rng.randint(2, 3)
                w.coverage.hit("pos.concurrent_duplicate")
            wait_s = rng.choice((5.0, 15.0, 30.0, 90.0))
            if poll:
                results = [await self._poll(request)]
            else:
                results = list(await asyncio.gather(*(self._one(request, wait_s) for _ in range(copies))))
            if "final" in results or "conflict" in results:
                return
            if "no_order" in results:
                if other_body or not (w.faults_on and rng.random() < 0.3):
                    return
                await asyncio.sleep(rng.uniform(1.0, 30.0))  # the cashier tries once more
                continue
            # Polling by key reads whatever checkout holds the key: a request reusing a key with
            # another body resends instead (its answer is the conflict).
            poll = "pending" in results and not other_body and rng.random() < 0.7
            await asyncio.sleep(rng.uniform(0.0, delay))
            delay = min(delay * 2, 20.0)
        w.anomaly(f"checkout {request.idempotency_key}: no final answer after 200 attempts")

    async def _one(self, request: CheckoutRequest, wait_s: float) -> str:
        tag = self._tag()
        try:
            view: CheckoutView = await self._send(lambda c: c.checkout(request, wait_s), tag)
        except IdempotencyConflict:
            self._record(tag, request, "conflict")
            calls = self.world.calls_by_request[tag]
            if calls:
                self.world.answers.problems.append(
                    f"I6: {tag} was refused as a conflict after {calls} terminal operation(s)"
                )
            return "conflict"
        except NO_ORDER as exc:
            self._record(tag, request, type(exc).__name__)
            return "no_order"
        except OutcomePending:
            self._record(tag, request, "pending")
            return "pending"
        except (DatabaseUnavailable, Disconnected, Refused) as exc:
            self._record(tag, request, type(exc).__name__)
            return "retry"
        except CheckoutError as exc:  # internal_error (a 500), or not_found for a checkout that exists
            self._record(tag, request, f"error:{exc.code}")
            self.world.answers.problems.append(
                f"I6: checkout {request.idempotency_key} answered {exc.code} (an error, not its outcome): {exc}"
            )
            return "retry"
        except Exception as exc:  # an exception the API does not map: a 500
            self._record(tag, request, f"internal:{type(exc).__name__}")
            self.world.answers.problems.append(
                f"I6: checkout {request.idempotency_key} raised {type(exc).__name__} (a 5xx): {exc}"
            )
            return "retry"
        self._record(tag, request, "view", view)
        if not view.final:
            # A checkout answers with its outcome, or OutcomePending (202) while it goes on: a
            # non-final status as the answer looks final to a POS that reads the status code.
            self.world.answers.problems.append(
                f"I6: checkout {request.idempotency_key} was answered {view.status} as its outcome "
                "(not final, and not OutcomePending)"
            )
        return "final" if view.final else "pending"

    async def _poll(self, request: CheckoutRequest) -> str:
        tag = self._tag()
        try:
            view: CheckoutView = await self._send(lambda c: c.get(key=request.idempotency_key), tag)
        except NotFound:
            return "retry"  # not created (yet): resend the checkout
        except (CheckoutError, Disconnected, Refused):
            return "retry"
        except Exception as exc:
            self.world.anomaly(f"poll {request.idempotency_key}: unexpected {type(exc).__name__}: {exc}")
            return "retry"
        self._record(tag, request, "view", view)
        return "final" if view.final else "pending"

    # ------------------------------------------------------------ reversals

    @staticmethod
    async def _later(delay_s: float, work: Callable[[], Awaitable[None]]) -> None:
        await asyncio.sleep(delay_s)
        await work()

    async def void(self, view: CheckoutView) -> None:
        w, rng = self.world, self.rng
        w.coverage.hit("pos.void")
        for attempt in range(20):
            if attempt and (w.faults_on and rng.random() < w.plan.give_up):
                w.trace("pos", self.register, view.id, "void_gives_up")
                return
            tag = self._tag()
            try:
                result: CheckoutView = await self._send(lambda c: c.void(uuid.UUID(view.id), 30.0), tag)
            except AlreadySettled as exc:
                # The batch with the charge closed: it cannot be voided any more. Refund what gatewayd
                # says is left standing, as it tells the POS to.
                w.trace("pos", tag, "void", view.id, "AlreadySettled")
                w.coverage.hit("pos.void_settled")
                self.completed.pop(view.id, None)
                await self.refund(view, amount=int(exc.details.get("refund_amount") or 0))
                return
            except (NotAllowed, NotFound) as exc:
                w.trace("pos", tag, "void", view.id, type(exc).__name__)
                return
            except (OutcomePending, DatabaseUnavailable, Disconnected, Refused) as exc:
                w.trace("pos", tag, "void", view.id, type(exc).__name__)
                await asyncio.sleep(rng.uniform(1.0, 10.0))
                continue
            except Exception as exc:  # not an answer the API documents: a 500
                w.trace("pos", tag, "void", view.id, f"internal:{type(exc).__name__}")
                w.answers.problems.append(f"I6: void of {view.id} raised {type(exc).__name__} (a 5xx): {exc}")
                await asyncio.sleep(rng.uniform(1.0, 10.0))
                continue
            w.trace("pos", tag, "void", view.id, result.status)
            self.completed.pop(view.id, None)
            return

    def _restock_lines(self, view: CheckoutView) -> list[RestockLine] | None:
        """The goods a partial refund puts back: some of the checkout's lines (now and then more
        than is left of them, or none at all: both refused as bad lines)."""
        rng = self.rng
        request = next((r for k, r in self.keys if k == view.idempotency_key), None)
        if request is None or rng.random() < 0.15:
            return None
        lines = rng.sample(request.lines, rng.randint(1, len(request.lines)))
        extra = 1 if rng.random() < 0.1 else 0
        return [RestockLine(sku=line.sku, quantity=rng.randint(1, line.quantity) + extra) for line in lines]

    async def refund(self, view: CheckoutView, *, amount: int | None = None) -> None:
        """Refund part of a completed checkout (or `amount`: the goods come back if it is all that
        is left), resending with the same key until it is answered; then, now and then, send the
        same key with another amount (it must be refused). A partial refund with restock names the
        lines it puts back."""
        w, rng = self.world, self.rng
        w.coverage.hit("pos.refund")
        if len(view.tenders) > 1:
            w.coverage.hit("split_refund")
        left = view.total - view.refunded_amount
        if left <= 0 or (amount is not None and amount <= 0):
            return
        if amount is None:
            amount = rng.choice((left, max(1, left // 2), rng.randint(1, left)))
            restock = rng.random() < 0.5
        else:
            restock = amount >= left
        request = RefundRequest(
            idempotency_key=f"{self.register}-R{rng.getrandbits(32):08x}",
            amount=amount,
            restock=restock,
            lines=self._restock_lines(view) if restock and amount < left else None,
        )
        for attempt in range(20):
            if attempt and w.faults_on and rng.random() < w.plan.give_up:
                if self.rethink.random() < 0.5:
                    # The refund never said it went through: the cashier voids the sale instead
                    # (refused while the refund is pending: its Return may have paid already).
                    w.coverage.hit("void_after_pending_refund")
                    await self.void(view)
                return
            answer = await self._refund_once(view, request)
            if answer == "done":
                break
            if answer == "final":
                return
        else:
            return
        if w.faults_on and rng.random() < w.plan.key_reuse * 3:
            w.coverage.hit("pos.key_reuse_other_body")
            other = msgspec.structs.replace(request, amount=amount - 1 if amount > 1 else amount + 1)
            if await self._refund_once(view, other, expect_conflict=True) == "done":
                w.answers.problems.append(
                    f"I6: refund key {request.idempotency_key} reused with another amount was accepted"
                )

    async def _refund_once(self, view: CheckoutView, request: RefundRequest, *, expect_conflict: bool = False) -> str:
        """One refund request: "done" (answered with the checkout), "final" (refused), or "retry"."""
        w, rng = self.world, self.rng
        tag = self._tag()
        try:
            result: CheckoutView = await self._send(lambda c: c.refund(uuid.UUID(view.id), request, 30.0), tag)
        except IdempotencyConflict:
            w.trace("pos", tag, "refund", view.id, "conflict")
            if not expect_conflict:
                w.answers.problems.append(
                    f"I6: refund {request.idempotency_key} refused as a conflict with its own body"
                )
            if w.calls_by_request[tag]:
                w.answers.problems.append(f"I6: refund {tag} refused after terminal operations")
            return "final"
        except (NotAllowed, NotFound, InvalidRequest, RefundDeclined) as exc:
            w.trace("pos", tag, "refund", view.id, type(exc).__name__)
            return "final"
        except (OutcomePending, DatabaseUnavailable, Disconnected, Refused) as exc:
            w.trace("pos", tag, "refund", view.id, type(exc).__name__)
            await asyncio.sleep(rng.uniform(1.0, 10.0))
            return "retry"
        except Exception as exc:  # not an answer the API documents: a 500
            w.trace("pos", tag, "refund", view.id, f"internal:{type(exc).__name__}")
            w.answers.problems.append(f"I6: refund of {view.id} raised {type(exc).__name__} (a 5xx): {exc}")
            await asyncio.sleep(rng.uniform(1.0, 10.0))
            return "retry"
        w.trace("pos", tag, "refund", view.id, result.status, result.refunded_amount)
        if result.status in ("completed", "partially_refunded", "refunded"):
            self.completed[view.id] = result
        return "done"

    # ------------------------------------------------------------ the register's day

    async def run(self) -> None:
        w, rng = self.world, self.rng
        while w.faults_on:
            await asyncio.sleep(rng.uniform(0.5, 25.0))
            if not w.faults_on:
                break
            roll = rng.random()
            if roll < w.plan.void and self.completed:
                view = self.completed[rng.choice(sorted(self.completed))]
                if rng.random() < w.plan.race_void_refund:
                    # The void and a refund of the same checkout at once (two registers, or a retry
                    # through another screen): at most one of them may take the money back.
                    w.coverage.hit("void_refund_race")
                    await asyncio.gather(self.void(view), self.refund(view))
                elif w.plan.duplicate and rng.random() < w.plan.duplicate:
                    # The same void sent 2-3 times, seconds apart (a double tap, a resend over a
                    # flaky network): each copy runs while the one before may still hold the order.
                    w.coverage.hit("pos.concurrent_duplicate")
                    copies = rng.randint(2, 3)
                    delays = sorted(rng.uniform(0.0, 8.0) for _ in range(copies - 1))
                    await asyncio.gather(
                        self.void(view), *(self._later(d, lambda v=view: self.void(v)) for d in delays)
                    )
                else:
                    await self.void(view)
            elif roll < w.plan.void + w.plan.refund and self.completed:
                view = self.completed[rng.choice(sorted(self.completed))]
                await self.refund(view)
            elif roll < w.plan.void + w.plan.refund + w.plan.key_reuse and self.keys:
                key, old = self.keys[rng.randrange(len(self.keys))]
                other = self._request()
                other = msgspec.structs.replace(other, idempotency_key=key)
                if request_hash(other) == request_hash(old):
                    continue
                w.coverage.hit("pos.key_reuse_other_body")
                await self.checkout(other, other_body=True)
            else:
                request = self._request()
                self.keys.append((request.idempotency_key, request))
                await self.checkout(request)
