"""One seeded run: the store, its terminals, the daemon, the POS clients and the nemesis.

Phases: a fault phase (`plan.fault_minutes` of virtual time: POS traffic, terminal, database
and process faults at the seed's rates, terminals settled by the operator through gatewayd or
their batches closed on their own), then the healed phase (every fault off, terminals online,
the daemon running; the POS finishes what it was doing and recovery must bring every checkout
to a final state within `HEAL_BOUND_S`), then the final check of I1-I9. All along, an operator
works gatewayd's orphan list: what it lists to refund (a charge whose batch settled before it
could be voided) is refunded through the API. Safety invariants are checked after every step.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import random
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gatewayd.checkout.errors import CheckoutError, NotAllowed
from gatewayd.checkout.model import RefundRequest
from gatewayd.checkout.operations import Operations
from gatewayd.errors import GatewayError
from tests.sim.daemon import (
    INSTANCE_ID,
    LEASE_S,
    PEER_ID,
    RECOVERY_INTERVAL_S,
    Disconnected,
    SimMetrics,
    SimProcess,
)
from tests.sim.db import FakeServer, History, SimDatabase
from tests.sim.faults import Coverage, FaultPlan
from tests.sim.invariants import Checker
from tests.sim.pos import CATALOGUE, Answers, Client
from tests.sim.store import SimCheckoutStore, SimMaintenanceStore
from tests.sim.tables import COMPLETED, OPEN_ORDER, Tables
from tests.sim.terminal import Entry, FakeTerminal, world_task

PEER_GENERATION = 1000  # the second daemon's generation numbers (in the trace) start here

# I7: once the faults stop, everything is final within this (an expired lease, a recovery
# pass, a terminal timeout and a void's retries, with room to spare).
HEAL_BOUND_S = LEASE_S + 5 * RECOVERY_INTERVAL_S + 300.0
MAX_CRASHES = 6
SETTLE_TRIES = 4  # an operator settle refused (something open) is tried again this many times in all


@dataclass
class SeedResult:
    seed: int
    violations: list[str]
    anomalies: list[str]
    coverage: Counter[str]
    trace_hash: str
    stats: dict[str, Any]
    trace: list[tuple[Any, ...]] = field(default_factory=list)
    history: list[History] = field(default_factory=list)
    setup: dict[str, Any] = field(default_factory=dict)
    tables: Any = None  # the final rows (kept with the history, for the differential check)

    @property
    def ok(self) -> bool:
        return not self.violations


class World:
    """Everything one seed owns; the daemon comes and goes, the rest persists."""

    def __init__(self, seed: int, *, verbose: bool = False) -> None:
        self.seed = seed
        self.plan = FaultPlan.draw(seed)
        self.verbose = verbose
        self.events: list[tuple[Any, ...]] = []
        self.coverage = Coverage()
        self.anomalies: list[str] = []
        self.faults_on = True
        self.crashes = 0
        self.generation = 0
        self.process: SimProcess | None = None  # the daemon the POS talks to
        self.peer: SimProcess | None = None  # the store's second daemon (another instance id): recovery only
        self.stalls: list[tuple[float, float]] = []
        # When the last fault ends: the heal, or a freeze armed before it that sprang after it.
        self.last_fault_ends = 0.0
        self.calls_by_request: Counter[str] = Counter()
        self.answers = Answers()
        self.metrics = SimMetrics(self.coverage, self.anomaly)
        self.nemesis = random.Random(f"nemesis:{seed}")
        self.failpoints = random.Random(f"failpoints:{seed}")
        world_rng = random.Random(f"world:{seed}")
        self.tables = Tables(uuid.uuid4)
        self.initial_stock: dict[str, int] = {}
        for sku, (_, stock) in CATALOGUE.items():
            if stock is not None:
                self.initial_stock[sku] = world_rng.randint(*stock)
                self.tables.inventory[sku] = {"on_hand": self.initial_stock[sku], "reserved": 0, "updated_at": None}
        self.server = FakeServer(self.tables, random.Random(f"db:{seed}"), self.plan.store, self.coverage, self.trace)
        self.db = SimDatabase(self.server)
        self.store = SimCheckoutStore(self.db, self.tables)
        self.maintenance = SimMaintenanceStore(self.db, self.tables)
        self.terminals: dict[str, FakeTerminal] = {}
        for i in range(self.plan.terminals):
            tid = f"T{i + 1}"
            self.terminals[tid] = FakeTerminal(
                tid, self.plan.timeout_s, random.Random(f"term:{seed}:{tid}"), self.plan.term, self.coverage, self.trace
            )
            self.terminals[tid].health_rng = random.Random(f"term-health:{seed}:{tid}")
        # The daemons' configuration: the terminals configured, and the auth key each is bound to.
        self.configured: set[str] = set(self.terminals)
        self.config_keys: dict[str, str] = {tid: term.auth_key for tid, term in self.terminals.items()}
        self.checker = Checker(self.tables, self.terminals, self.initial_stock, 1, 100, self.now)
        self.server.on_step = self.checker.on_store_step
        self.server.on_fenced = self.checker.on_fenced
        for term in self.terminals.values():
            term.on_ledger = functools.partial(self._ledger_changed, term.terminal_id)
            term.on_void_request = functools.partial(self.checker.on_void_request, term.terminal_id)
            term.on_capture_request = functools.partial(self.checker.on_capture_request, term.terminal_id)
        self.setup: dict[str, Any] = {
            "stock": dict(self.initial_stock),
            "terminals": list(self.terminals),
            "legacy": [],
        }
        self.stats: dict[str, Any] = {}
        self.log_lines: Callable[[], list[str]] = list
        self.operator_passes = 0

    # ------------------------------------------------------------ bookkeeping

    def _ledger_changed(self, terminal_id: str, ref: str, what: str) -> None:
        self.checker.on_ledger(terminal_id, ref)

    def now(self) -> float:
        try:
            return asyncio.get_running_loop().time()
        except RuntimeError:
            return -1.0

    def trace(self, *fields: Any) -> None:
        event = (round(self.now(), 6), *fields)
        self.events.append(event)
        if self.verbose:
            print(f"{event[0]:10.3f} " + " ".join(str(f) for f in fields))

    def anomaly(self, message: str) -> None:
        self.anomalies.append(f"@{self.now():.3f}s {message}")
        self.trace("anomaly", message)

    # ------------------------------------------------------------ the daemon's life

    def start_process(self) -> None:
        self.generation += 1
        skew = 0.0 if self.plan.peer else self.plan.skew_s
        proc = SimProcess(self, self.generation, INSTANCE_ID, skew)
        self.process = proc
        self.trace("proc", self.generation, "start")
        proc.spawn(proc.start())

    def start_peer(self) -> None:
        """The store's second daemon: same database and terminals, another instance id; it runs
        recovery, captures and maintenance beside the first (the POS talks to the first)."""
        proc = SimProcess(self, PEER_GENERATION, PEER_ID, self.plan.skew_s)
        self.peer = proc
        self.trace("proc", proc.generation, "start", "peer")
        proc.spawn(proc.start())

    def daemons(self) -> list[SimProcess]:
        return [p for p in (self.process, self.peer) if p is not None and p.alive]

    def crash(self, reason: str, *, planned: bool, failpoint: bool = False) -> None:
        proc = self.process
        if proc is None or not proc.alive or (planned and self.crashes >= MAX_CRASHES):
            return
        self.crashes += 1
        if planned:
            self.coverage.hit("proc.crash_failpoint" if failpoint else "proc.crash_random")
        self.trace("proc", proc.generation, "killed", reason)
        proc.kill()
        self.process = None
        world_task(self._restart(self.nemesis.uniform(1.0, 10.0)))

    async def _restart(self, after_s: float) -> None:
        await asyncio.sleep(after_s)
        if self.process is None:
            self.start_process()

    def failpoint_roll(self, name: str) -> bool:
        return (
            self.faults_on
            and self.plan.failpoint_crash > 0
            and self.crashes < MAX_CRASHES
            and self.failpoints.random() < self.plan.failpoint_crash
        )

    # ------------------------------------------------------------ the nemesis

    async def _at(self, t: float) -> None:
        await asyncio.sleep(max(0.0, t - self.now()))

    async def _crash_schedule(self, fault_s: float) -> None:
        for t in sorted(self.nemesis.uniform(5.0, fault_s) for _ in range(self.plan.crashes)):
            await self._at(t)
            self.crash("random", planned=True)

    async def _terminal_schedule(self, term: FakeTerminal, fault_s: float) -> None:
        rng = random.Random(f"term-nemesis:{self.seed}:{term.terminal_id}")
        events = [(rng.uniform(0.0, fault_s), "offline") for _ in range(self.plan.term.offline_windows)]
        events += [(rng.uniform(0.0, fault_s), "reboot") for _ in range(self.plan.term.reboots)]
        for t, what in sorted(events):
            await self._at(t)
            if what == "offline":
                term.go_offline(rng.uniform(5.0, 120.0))
            else:
                term.reboot(rng.uniform(10.0, 60.0))

    async def _db_schedule(self, fault_s: float) -> None:
        rng = random.Random(f"db-nemesis:{self.seed}")
        for t in sorted(rng.uniform(0.0, fault_s) for _ in range(self.plan.store.outages)):
            await self._at(t)
            self.server.stop_for(rng.uniform(1.0, 60.0))

    async def _keypad_schedule(self, fault_s: float) -> None:
        """Cashiers void charges at the keypad, behind gatewayd's back: a charge whose approval no daemon
        has heard of (in doubt: gatewayd must learn "voided" from its inquiry), or an approved charge of
        an order that did not complete (the orphan gatewayd was about to void). A charge whose approval
        gatewayd already heard is not voided here: voided after gatewayd acted on it (committed the
        order), it is a discrepancy only reconciliation can show (docs/simulation.md)."""
        rng = random.Random(f"keypad-nemesis:{self.seed}")
        for t in sorted(rng.uniform(5.0, fault_s) for _ in range(self.plan.keypad_voids)):
            await self._at(t)
            for _ in range(30):
                candidates = []
                for tid in sorted(self.terminals):
                    for ref in sorted(self.terminals[tid].ledger):
                        tx_id = self.tables.tx_by_ref.get(ref)
                        tx = self.tables.txs.get(tx_id) if tx_id is not None else None
                        if tx is None or tx["kind"] != "payment":
                            continue
                        order = self.tables.orders[tx["order_id"]]
                        entry = self.terminals[tid].ledger[ref]
                        orphan = tx["status"] == "approved" and order["status"] in ("payment_failed", "cancelled")
                        if (tx["status"] in ("processing", "unknown") and not entry.told) or orphan:
                            candidates.append((tid, ref, orphan))
                picked = rng.choice(candidates) if candidates else None
                if picked is not None and self.terminals[picked[0]].keypad_void(picked[1], untold_only=not picked[2]):
                    self.coverage.hit("keypad_void")
                    break
                await asyncio.sleep(rng.uniform(2.0, 8.0))

    async def _key_schedule(self, fault_s: float) -> None:
        """A terminal's auth key is rotated at the device; the daemons' configuration still has the
        old one (every request refused with SPIn 2002: Misconfigured) until a reload edits it in."""
        rng = random.Random(f"key-nemesis:{self.seed}")
        for i, t in enumerate(sorted(rng.uniform(0.0, fault_s) for _ in range(self.plan.key_rotations))):
            await self._at(t)
            tid = rng.choice(sorted(self.terminals))
            term = self.terminals[tid]
            term.auth_key = f"key-{i + 1}-{rng.getrandbits(16):04x}"
            self.coverage.hit("wrong_authkey")
            self.trace("world", "rotate_key", tid)
            world_task(self._fix_key_later(tid, rng.uniform(5.0, 120.0)))

    async def _fix_key_later(self, tid: str, after_s: float) -> None:
        await asyncio.sleep(after_s)
        self.fix_key(tid)

    def fix_key(self, tid: str) -> None:
        """The operator edits the terminal's new key into the configuration and reloads."""
        key = self.terminals[tid].auth_key
        if self.config_keys[tid] == key:
            return
        self.config_keys[tid] = key
        for proc in self.daemons():
            proc.lanes.edit(tid, key)
        self.coverage.hit("reload_edit")
        self.trace("world", "reload_edit", tid)

    async def _reload_schedule(self, fault_s: float) -> None:
        """Reloads that remove a terminal while it has work in flight; most times it is added back
        later (the other times it stays removed to the end: its charges are followed up all the same)."""
        rng = random.Random(f"reload-nemesis:{self.seed}")
        for t in sorted(rng.uniform(5.0, fault_s) for _ in range(self.plan.reloads)):
            await self._at(t)
            tid = rng.choice(sorted(self.terminals))
            if tid not in self.configured or len(self.configured) < 2:
                continue
            self.configured.discard(tid)
            for proc in self.daemons():
                proc.lanes.remove(tid)
            self.coverage.hit("reload_remove")
            self.trace("world", "reload_remove", tid)
            if rng.random() < 0.6:
                world_task(self._readd_later(tid, rng.uniform(10.0, 180.0)))

    async def _readd_later(self, tid: str, after_s: float) -> None:
        await asyncio.sleep(after_s)
        if tid in self.configured:
            return
        self.configured.add(tid)
        for proc in self.daemons():
            proc.lanes.add(tid)
        self.coverage.hit("reload_readd")
        self.trace("world", "reload_add", tid)

    async def _stall_schedule(self, fault_s: float) -> None:
        """One of the two daemons freezes for longer than its lease: the other takes its orders over,
        and when it wakes its writes must be fenced off."""
        rng = random.Random(f"stall-nemesis:{self.seed}")
        for t in sorted(rng.uniform(10.0, fault_s) for _ in range(self.plan.stalls)):
            await self._at(t)
            target = rng.choice([p for p in (self.process, self.peer) if p is not None and p.alive] or [None])
            if target is None:
                continue
            seconds = LEASE_S + rng.uniform(30.0, 240.0)
            held = {oid for oid, o in self.tables.orders.items() if o["lease_owner"] == target.instance_id}
            target.stall(seconds)
            self.trace("proc", target.generation, "stalls", round(seconds, 3), len(held))
            world_task(self._after_stall(target, seconds, held))

    async def _stall_at_stamp_schedule(self, fault_s: float) -> None:
        """Now and then a daemon freezes at the worst moment: right after a tender is stamped sent,
        before the request leaves (its own seed stream, so that the other stalls keep their stories)."""
        rng = random.Random(f"stall-at-stamp:{self.seed}")
        if not self.plan.peer or rng.random() >= 0.15:
            return  # with a peer: the other daemon takes the order over while this one is frozen
        await self._at(rng.uniform(10.0, max(10.0, fault_s / 2)))
        target = rng.choice([p for p in (self.process, self.peer) if p is not None and p.alive] or [None])
        if target is None:
            return
        seconds = LEASE_S + rng.uniform(30.0, 120.0)
        target.stall_at_next_stamp(seconds)
        self.trace("proc", target.generation, "stalls_at_next_stamp", round(seconds, 3))

    async def _late_stall_schedule(self, fault_s: float) -> None:
        """With a peer, now and then the POS's daemon freezes at the very end of the fault phase,
        with checkouts in flight, for a little longer than its leases: they expire just before it
        wakes (too late for the peer's recovery to have taken them, most times), so its own recovery
        takes them back while its drives go on. A drive then finds its lease lost and must let its
        own daemon's fresh lease go, or the order waits out a whole lease past the healed bound.
        Its own seed stream."""
        rng = random.Random(f"late-stall:{self.seed}")
        if not self.plan.peer or rng.random() >= 0.3:
            return
        await self._at(fault_s - rng.uniform(1.0, 25.0))
        target = self.process
        if target is None or not target.alive or target.executor is None or not target.executor.driving:
            return
        seconds = LEASE_S + rng.uniform(5.0, 50.0)
        held = {oid for oid, o in self.tables.orders.items() if o["lease_owner"] == target.instance_id}
        target.stall(seconds)
        self.trace("proc", target.generation, "stalls_late", round(seconds, 3), len(held))
        world_task(self._after_stall(target, seconds, held))

    async def _stall_at_intent_schedule(self, fault_s: float) -> None:
        """Now and then the daemon freezes right after an intent that stamped its card sent
        (sql/010), before it reads the intent's answer: it wakes past gatewayd.retry.SEND_MARGIN_S,
        so it must stamp the card again before sending it. It is killed once the request has left,
        while the terminal still reads the card (that transaction takes most of its timeout), so
        that the restarted daemon asks the terminal at once: a "not found" then must not be believed
        from the intent's old stamp. Its own seed stream, so that the other nemeses keep their stories."""
        rng = random.Random(f"stall-at-intent:{self.seed}")
        if rng.random() >= 0.2:
            return
        await self._at(rng.uniform(10.0, max(10.0, fault_s / 2)))
        target = self.process
        if target is None or not target.alive:
            return

        def freeze(payload: dict[str, Any]) -> None:
            target.stall_after_intent = None
            tid = next(t["terminal_id"] for t in payload["tenders"] if t["id"] == payload["stamp"])
            term = self.terminals[tid]
            seconds = term.timeout_s + rng.uniform(15.0, 60.0)
            target.stall(seconds)
            target.crash_at_next_send = True
            term.slow_next = True
            self.coverage.hit("send_past_margin")
            self.trace("proc", target.generation, "stalls_after_intent", round(seconds, 3), tid)

        target.stall_after_intent = freeze

    async def _after_stall(self, target: SimProcess, seconds: float, held: set[uuid.UUID]) -> None:
        await asyncio.sleep(seconds)
        owners = {oid: self.tables.orders[oid]["lease_owner"] for oid in sorted(held)}
        taken = [oid for oid, owner in owners.items() if owner not in (None, target.instance_id)]
        moved = [oid for oid in sorted(held) if self.tables.orders[oid]["lease_owner"] != target.instance_id]
        if moved:
            self.coverage.hit("lease_expiry", len(moved))
        self.trace("proc", target.generation, "wakes", len(held), len(taken))

    async def _inventory_schedule(self, fault_s: float) -> None:
        """Inventory rows created (for a SKU sold untracked until now) or deleted while checkouts of
        the SKU are in flight, as an admin's SQL would: each line keeps what it reserved."""
        rng = random.Random(f"inventory-nemesis:{self.seed}")
        appeared: set[str] = set()
        for t in sorted(rng.uniform(5.0, fault_s) for _ in range(self.plan.inventory_events)):
            await self._at(t)
            untracked = [sku for sku, (_, stock) in CATALOGUE.items() if stock is None and sku not in appeared]
            if untracked and (rng.random() < 0.6 or not self.tables.inventory):
                sku = rng.choice(untracked)
                on_hand = rng.randint(0, 30)
                appeared.add(sku)
                self.tables.inventory[sku] = {"on_hand": on_hand, "reserved": 0, "updated_at": self.server.now()}
                self.checker.initial[sku] = on_hand
                self.server.history.append(("inventory_insert", (sku, on_hand), {}, None, None))
                self.coverage.hit("inventory_row_appears")
                self.trace("world", "inventory_row_appears", sku, on_hand)
            elif self.tables.inventory:
                sku = rng.choice(sorted(self.tables.inventory))
                del self.tables.inventory[sku]
                appeared.add(sku)  # never back
                self.server.history.append(("inventory_delete", (sku,), {}, None, None))
                self.coverage.hit("inventory_row_disappears")
                self.trace("world", "inventory_row_disappears", sku)
            self.checker.aggregates()

    async def _settle_schedule(self, fault_s: float) -> None:
        """The operator settles terminals through gatewayd (refused while anything on them is open),
        and now and then a terminal's batch closes on its own (the processor's auto-close)."""
        rng = random.Random(f"settle-nemesis:{self.seed}")
        events = [(rng.uniform(10.0, fault_s), "operator") for _ in range(self.plan.settles)]
        events += [(rng.uniform(10.0, fault_s), "outside") for _ in range(self.plan.batch_closes)]
        for t, who in sorted(events):
            await self._at(t)
            tid = rng.choice(sorted(self.terminals))
            if who == "outside":
                if self.terminals[tid].close_batch("outside").ok:
                    self.coverage.hit("term.batch_closed_outside")
                    self.coverage.hit("auto_settle")
                continue
            proc = self.process
            if tid in self.configured and proc is not None and proc.ready and proc.operations is not None:
                proc.spawn(self._operator_settle(proc.operations, tid))

    async def _operator_settle(self, operations: Operations, terminal_id: str) -> None:
        """One settle through gatewayd; refused (something open), the operator tries again a few
        times, seconds apart, while the fault phase lasts (each try races the terminal's traffic)."""
        rng = random.Random(f"settle-retry:{self.seed}:{terminal_id}:{self.now():.6f}")
        for attempt in range(SETTLE_TRIES):
            try:
                result = await operations.settle(terminal_id)
            except NotAllowed as exc:
                self.trace("ops", "settle", terminal_id, "refused", exc.message[:60])
                if attempt + 1 < SETTLE_TRIES and self.faults_on:
                    await asyncio.sleep(rng.uniform(2.0, 20.0))
                    if terminal_id in self.configured:  # as the API: no settle of a terminal removed since
                        continue
                return
            except GatewayError as exc:
                self.trace("ops", "settle", terminal_id, type(exc).__name__)
                return
            except Exception as exc:  # not an answer the API documents: a 500
                self.answers.problems.append(f"I6: settle of {terminal_id} raised {type(exc).__name__}: {exc}")
                return
            break
        self.trace("ops", "settle", terminal_id, result.ok, result.message)
        if result.ok:
            self.coverage.hit("ops.settle")
            self.coverage.hit("settle")
            if self.plan.card_mode == "auth_capture":
                self.coverage.hit("auth_capture_settle")

    async def _operator(self) -> None:
        """The operator works gatewayd's orphan list: a charge that can no longer be voided (its batch
        settled) is listed to be refunded, and the operator refunds it, through the API."""
        rng = random.Random(f"operator:{self.seed}")
        while True:
            await asyncio.sleep(rng.uniform(20.0, 60.0))
            await self._operator_pass(refund=True)

    async def _operator_pass(self, *, refund: bool) -> None:
        """One look at the orphan list (GET /v1/orphans): what gatewayd says to refund must be money
        it received; with `refund`, refund it."""
        proc = self.process
        if proc is None or not proc.ready or proc.operations is None:
            return
        operations = proc.operations
        self.operator_passes += 1
        try:
            listing = await proc.call(
                lambda c, ops=operations: ops.orphans(), f"ops#{self.operator_passes}", None, False
            )
        except (GatewayError, Disconnected) as exc:
            self.trace("ops", "orphans", type(exc).__name__)
            return
        for orphan in listing.orphans:
            if orphan.action == "refund":
                self._check_advice(orphan.transaction_id, f"{orphan.order_status} order {orphan.order_number}")
                if refund:
                    if orphan.unreturned > 0:
                        await self._refund_orphan(proc, orphan.order_id, orphan.reference_id, orphan.unreturned)

    def _check_advice(self, transaction_id: str, order: str) -> None:
        """What gatewayd tells the operator to refund must be money it received."""
        tx = self.tables.txs[uuid.UUID(transaction_id)]
        term = self.terminals.get(tx["payment_processor_id"] or "")
        entry = term.ledger.get(tx["reference_id"]) if term is not None else None
        what = (
            "a hold that lapsed with its batch"
            if self.checker.lapsed_hold(entry)
            else "a charge voided at the terminal"
            if entry is not None and entry.voided
            else None
        )
        if what is not None:
            self.checker.fail(
                "I2",
                f"gatewayd lists {tx['reference_id']} of {order} as a charge to refund, but it is {what}: "
                "the refund pays the customer money never received",
                key=f"I2:advice:{tx['reference_id']}",
            )

    async def _refund_orphan(self, proc: SimProcess, order_id: str, reference_id: str, amount: int) -> None:
        tag = f"ops-refund-{reference_id}"
        try:
            view = await proc.call(lambda c: c.get(uuid.UUID(order_id)), tag, None, False)
        except (GatewayError, Disconnected) as exc:
            self.trace("ops", "refund", reference_id, type(exc).__name__)
            return
        if any(r.status == "pending" for r in view.refunds):
            return  # one is on its way
        # A new key for each new attempt (after a decline, or another charge of the order refunded),
        # the same key while this one is answered.
        request = RefundRequest(idempotency_key=f"orphan-{reference_id}-{len(view.refunds)}", amount=amount)
        try:
            await proc.call(lambda c: c.refund(uuid.UUID(order_id), request, 30.0), tag, None, False)
        except CheckoutError as exc:
            self.trace("ops", "refund", reference_id, type(exc).__name__)
            if exc.code == "internal_error":
                self.answers.problems.append(f"I6: refund of orphan {reference_id} answered internal_error: {exc}")
            return
        except (GatewayError, Disconnected) as exc:
            self.trace("ops", "refund", reference_id, type(exc).__name__)
            return
        except Exception as exc:  # not an answer the API documents: a 500
            self.trace("ops", "refund", reference_id, f"internal:{type(exc).__name__}")
            self.answers.problems.append(f"I6: refund of orphan {reference_id} raised {type(exc).__name__}: {exc}")
            return
        self.trace("ops", "refund", reference_id, "refunded", amount)
        self.coverage.hit("ops.refund_orphan")

    # ------------------------------------------------------------ setup: what the old POS flow left behind

    def add_legacy_orphans(self) -> None:
        """Approved charges of failed orders, left by the old flow (the seed document's 17.7%):
        recovery's orphan voider is the only thing that can repair them."""
        rng = random.Random(f"legacy:{self.seed}")
        now = self.server.now()
        for i in range(self.plan.legacy_orphans):
            tid = rng.choice(list(self.terminals))
            amount = rng.randint(100, 5000)
            order_id, tender_id = uuid.uuid4(), uuid.uuid4()
            ref = f"LEGACY{i}{uuid.uuid4().hex[:10].upper()}"
            payload = {
                "id": str(order_id),
                "idempotency_key": f"legacy-{i}",
                "request_hash": "legacy",
                "card_mode": "sale",
                "subtotal": amount,
                "tax": 0,
                "discount": 0,
                "total": amount,
                "change_due": 0,
                "currency": "USD",
                "register_id": None,
                "customer_id": None,
                "lease_owner": None,
                "lease_s": 0,
                "lines": [{"sku": "SERVICE", "quantity": 1, "unit_price": amount}],
                "tenders": [
                    {
                        "id": str(tender_id),
                        "amount": amount,
                        "reference_id": ref,
                        "type": "card",
                        "operation": "sale",
                        "terminal_id": tid,
                        "timeout_s": self.plan.timeout_s,
                    }
                ],
            }
            self.tables.prepare(now, payload)
            self.tables.txs[tender_id].update(status="approved", approved_amount=amount, sent_at=now, attempts=1)
            self.tables.orders[order_id].update(
                status="payment_failed",
                payment_status="failed",
                failure_code="legacy",
                failure_reason="old POS flow",
                lease_owner=None,
                lease_until=None,
                failed_at=now,
            )
            term = self.terminals[tid]
            term.ledger[ref] = Entry(ref, "sale", amount, amount, "approved", "0000", term.batch, len(term.ledger) + 1)
            self.setup["legacy"].append({"payload": payload, "tender_id": str(tender_id)})
            self.trace("setup", "legacy_orphan", tid, ref, amount)

    # ------------------------------------------------------------ the run

    def heal(self) -> None:
        self.faults_on = False
        self.plan = self.plan.calm()
        self.server.rates = self.plan.store
        self.server.down_until = min(self.server.down_until, self.now())
        for term in self.terminals.values():
            term.heal()
        for tid in sorted(self.terminals):
            self.fix_key(tid)  # the operator has every terminal's key right by now
        for proc in self.daemons():
            # A freeze the fault phase armed for a daemon's next stamp or intent and that has not
            # sprung yet (the daemon was frozen or idle meanwhile) stays armed: it may spring after
            # the heal (seed 1125: armed at 137 s, sprung at 807 s). It is a fault too, so the healed
            # bound then counts from the end of that freeze.
            proc.stall_after_stamp = self._after_heal(proc, proc.stall_after_stamp)
            proc.stall_after_intent = self._after_heal(proc, proc.stall_after_intent)
        self.trace("phase", "healed")

    def _after_heal(self, proc: SimProcess, trap: Callable[..., None] | None) -> Callable[..., None] | None:
        if trap is None:
            return None

        def sprung(*args: Any) -> None:
            trap(*args)
            self.last_fault_ends = max(self.last_fault_ends, proc.stalled_until)

        return sprung

    def _needs_operator(self, orphan: dict[str, Any]) -> bool:
        """An orphan someone still has to act on: recovery voids it, or the operator refunds it. A
        hold that lapsed with its batch took nothing (listed or not, nothing is owed)."""
        tx = self.tables.txs[orphan["transaction_id"]]
        term = self.terminals.get(tx["payment_processor_id"] or "")
        entry = term.ledger.get(tx["reference_id"]) if term is not None else None
        return not (orphan["settled"] and self.checker.lapsed_hold(entry))

    def quiescent(self) -> bool:
        t = self.tables
        proc = self.process
        return (
            proc is not None
            and proc.ready
            and not any(o["status"] in OPEN_ORDER for o in t.orders.values())
            and not any(
                x["status"] in ("processing", "unknown") or (x["capture_status"] == "pending" and not x["settled_at"])
                for x in t.txs.values()
            )
            and not any(r["status"] == "pending" for r in t.refunds.values())
            and not any(self._needs_operator(row) for row in t.orphans(self.server.now()))
            and not t.half_voided()
            and not any(term.current is not None for term in self.terminals.values())
        )

    async def run(self) -> None:
        fault_s = self.plan.fault_minutes * 60.0
        self.add_legacy_orphans()
        self.start_process()
        if self.plan.peer:
            self.start_peer()
        nemeses = [world_task(self._crash_schedule(fault_s)), world_task(self._db_schedule(fault_s))]
        nemeses += [world_task(self._keypad_schedule(fault_s)), world_task(self._key_schedule(fault_s))]
        nemeses += [world_task(self._reload_schedule(fault_s)), world_task(self._inventory_schedule(fault_s))]
        if self.plan.peer:
            nemeses.append(world_task(self._stall_schedule(fault_s)))
        nemeses += [world_task(self._terminal_schedule(term, fault_s)) for term in self.terminals.values()]
        nemeses.append(world_task(self._settle_schedule(fault_s)))
        operator = world_task(self._operator())
        clients = [world_task(Client(self, i).run()) for i in range(self.plan.clients)]
        nemeses.append(world_task(self._stall_at_stamp_schedule(fault_s)))  # last: the others keep their order
        nemeses.append(world_task(self._stall_at_intent_schedule(fault_s)))
        nemeses.append(world_task(self._late_stall_schedule(fault_s)))
        await asyncio.sleep(fault_s)
        for task in nemeses:
            task.cancel()
        self.heal()
        healed_at = self.now()
        self.last_fault_ends = healed_at
        await asyncio.wait(clients, timeout=HEAL_BOUND_S)
        while self.now() < self.last_fault_ends + HEAL_BOUND_S and not self.quiescent():  # noqa: ASYNC110 - polling the world
            await asyncio.sleep(5.0)
        operator.cancel()
        await self._operator_pass(refund=False)  # the operator's last look at the orphan list
        healed_in = self.now() - healed_at
        self.trace("phase", "final_check", round(healed_in, 3))
        self.checker.final(self.log_lines())
        for problem in self.answers.problems:
            self.checker.fail("I6", problem)
        self.stats["healed_in_s"] = round(healed_in, 3)
        self.stats["virtual_s"] = round(self.now(), 3)
        for proc in self.daemons():
            proc.kill()

    def result(self, keep_trace: bool, keep_history: bool) -> SeedResult:
        digest = hashlib.sha256()
        for event in self.events:
            digest.update(repr(event).encode())
            digest.update(b"\n")
        orders = list(self.tables.orders.values())
        stats = {
            **self.stats,
            "orders": len(orders),
            "completed": sum(o["status"] in COMPLETED for o in orders),
            "failed": sum(o["status"] in ("payment_failed", "cancelled") for o in orders),
            "voided": sum(o["status"] == "voided" for o in orders),
            "refunds": len(self.tables.refunds),
            "crashes": self.crashes,
            "statements": self.server.statements,
            "terminal_calls": sum(sum(t.calls.values()) for t in self.terminals.values()),
            "answers": len(self.answers.items),
            "events": len(self.events),
        }
        return SeedResult(
            self.seed,
            [str(v) for v in self.checker.violations],
            list(self.anomalies),
            Counter(self.coverage.counts),
            digest.hexdigest(),
            stats,
            trace=self.events if keep_trace else [],
            history=list(self.server.history) if keep_history else [],
            setup=self.setup if keep_history else {},
            tables=self.tables if keep_history else None,
        )
