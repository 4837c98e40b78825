"""What one seed throws at gatewayd: fault rates drawn from the seed, and what actually fired.

Every seed draws its own rates (often zero, sometimes very high: BUGGIFY-style), so a batch
of seeds covers both "one rare fault in a calm store" and "everything breaks at once".
`Coverage` counts the faults that fired and the recovery branches that ran; a batch in which
one of `REQUIRED` never happened proves nothing about it and fails as vacuous.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Literal

# Faults, by where they are injected.
TERMINAL_FAULTS = (
    "term.decline",  # the card is declined (recorded declined)
    "term.partial",  # 0001 partial approval: approved for less than asked
    "term.timeout_before_auth",  # the request is lost before authorization: nothing recorded, Unknown
    "term.response_lost",  # approved, the answer never arrives: Unknown after the HTTP timeout
    "term.reset_after_approval",  # approved, then the connection is reset: Unknown at once
    "term.late_cancel",  # 1012 after the proxy timeout: maybe approved (the lane must inquire)
    "term.busy",  # 2008 busy: nothing started, retry after a delay
    "term.offline",  # offline window: nothing recorded, Offline answers
    "term.reboot_inflight",  # reboot while a transaction is in flight: dropped, not recorded
    "term.status_busy",  # a Status inquiry answered busy
    "term.status_not_found",  # a Status inquiry answered not found (only ever when not recorded)
    "term.status_unknown",  # a Status inquiry timed out
    "term.void_declined",  # the terminal refuses a void
    "term.void_timeout",  # a void times out (applied or not)
    "term.batch_closed_outside",  # the terminal's batch closes without gatewayd (the processor's auto-close)
)
STORE_FAULTS = (
    "db.drop_before_commit",  # the connection drops before COMMIT: nothing applied
    "db.drop_after_commit",  # applied, the acknowledgement is lost
    "db.serialization",  # serialization failure / deadlock: nothing applied, retry
    "db.outage",  # the server is stopped and restarted (a window of refused connections)
)
PROCESS_FAULTS = (
    "proc.crash_random",  # kill -9 at a random moment
    "proc.crash_failpoint",  # kill -9 at a named failpoint (after intent, during void ...)
)
POS_FAULTS = (
    "pos.retry_same_key",  # the POS resends the same request after an error or a timeout
    "pos.concurrent_duplicate",  # the same request sent twice at once
    "pos.key_reuse_other_body",  # the same key with another body: must be refused, nothing charged
    "pos.disconnect",  # the POS stops waiting (the request goes on)
    "pos.void",  # a completed checkout is voided
    "pos.refund",  # a completed checkout is refunded
    "pos.void_settled",  # a void refused as already settled: the cashier refunds instead
)
OPERATOR_ACTIONS = (
    "ops.settle",  # the operator settles a terminal through gatewayd (refused while anything is open)
    "ops.refund_orphan",  # the operator refunds a settled orphan (a charge of an order that did not complete)
)
RECOVERY_BRANCHES = (
    "recovery.completed",  # recovery finished an order (commit)
    "recovery.rolled_back",  # recovery rolled an order back (fail)
    "recovery.voided_orphan",  # recovery voided an approved charge of a failed order
    "recovery.refund_finished",  # recovery finished a refund left pending
    "recovery.inquiry_approved",  # an inquiry by reference id resolved a tender: approved
    "recovery.inquiry_declined",  # ... declined
    "recovery.inquiry_not_found",  # ... not found (after the terminal's own timeout)
    "recovery.void_retried",  # a void was sent again after a failed or unknown attempt
    "charge.settled_void",  # a void found its charge settled: it stands, marked settled, to be returned
)
# The world's fault kinds, by the names every run reports (`python -m tests.sim --seed N` prints
# them; a batch sums them). Each is counted by `Coverage.hit(kind)` where it happens; a CI batch
# in which one never happened fails as vacuous.
FAULT_KINDS = (
    "settle",  # the operator settles a terminal through gatewayd (POST /v1/terminals/{id}/settle)
    "auto_settle",  # a terminal's batch closes on its own (the processor's auto-close), at any moment
    "keypad_void",  # a cashier voids a charge at the terminal's keypad, behind gatewayd's back
    "wrong_authkey",  # the world rotates a terminal's auth key: the daemons' key is refused (SPIn 2002)
    "reload_remove",  # a config reload removes a terminal with work in flight (it keeps its follow-ups)
    "reload_readd",  # a reload adds a removed terminal back
    "reload_edit",  # a reload edits a terminal in place (its new auth key: wrong_authkey fixed)
    "lease_expiry",  # a daemon stalls past its leases and the other daemon takes its orders over
    "clock_skew",  # a daemon runs with its wall clock minutes off the database's
    "inventory_row_appears",  # an inventory row is created for a SKU while checkouts of it are in flight
    "inventory_row_disappears",  # an inventory row is deleted while checkouts of it are in flight
    "auth_capture_settle",  # an operator settle in auth-capture mode (captures must come first)
    "split_refund",  # a refund of an order paid with more than one tender
    "void_refund_race",  # the POS voids and refunds the same checkout at once
    "db_reset",  # a database connection reset in the middle of a statement: nothing applied
    "lost_commit_ack",  # a statement committed, its acknowledgement lost
    "send_past_margin",  # a daemon freezes between an intent that stamped its card sent and the send
    "void_after_pending_refund",  # the cashier gives up on a refund still pending and voids the sale instead
)
CARD_MODES: tuple[Literal["sale", "auth_capture"], ...] = ("sale", "sale", "sale", "auth_capture")
REQUIRED = (
    TERMINAL_FAULTS + STORE_FAULTS + PROCESS_FAULTS + POS_FAULTS + OPERATOR_ACTIONS + RECOVERY_BRANCHES + FAULT_KINDS
)


def _rate(rng: random.Random, *levels: float) -> float:
    """Zero or one of a few levels: a seed either leaves a fault out or leans into it."""
    return rng.choice((0.0, *levels))


@dataclass(frozen=True)
class TerminalFaultRates:
    decline: float
    partial: float
    timeout_before_auth: float
    response_lost: float
    reset_after_approval: float
    late_cancel: float
    busy: float
    status_busy: float
    status_unknown: float
    void_declined: float
    void_timeout: float
    offline_windows: int  # per terminal, during the fault phase
    reboots: int
    slow: float  # share of transactions that take most of the proxy timeout


@dataclass(frozen=True)
class StoreFaultRates:
    drop_before: float
    drop_after: float
    serialization: float
    outages: int
    slow: float  # share of statements that wait on a lock for a while


@dataclass(frozen=True)
class FaultPlan:
    """Everything the seed decided up front (sizes, rates, policies)."""

    terminals: int
    timeout_s: int
    queue_depth: int
    card_mode: Literal["sale", "auth_capture"]
    clients: int
    fault_minutes: float
    term: TerminalFaultRates
    store: StoreFaultRates
    crashes: int  # random-time crashes in the fault phase
    failpoint_crash: float  # chance that a named failpoint kills the process
    duplicate: float
    key_reuse: float
    disconnect: float
    give_up: float
    void: float
    refund: float
    legacy_orphans: int  # approved charges of failed orders left by the old POS flow
    settles: int  # the operator settles a terminal through gatewayd, during the fault phase
    batch_closes: int  # a terminal's batch closes on its own (outside gatewayd), during the fault phase
    keypad_voids: int  # a cashier voids a charge at the keypad (during the fault phase)
    key_rotations: int  # a terminal's auth key changes; a reload (an edit) gives the daemons the new one
    reloads: int  # config reloads that remove a terminal (and, most times, add it back later)
    peer: bool  # a second daemon of the store (another instance id) runs recovery beside the first
    stalls: int  # a daemon freezes (no heartbeat, no I/O) for longer than its lease
    skew_s: float  # the second daemon's wall clock, this far off the database's
    inventory_events: int  # inventory rows created or deleted while checkouts are in flight
    race_void_refund: float  # the POS voids and refunds a checkout at once

    @staticmethod
    def draw(seed: int) -> FaultPlan:
        rng = random.Random(f"plan:{seed}")
        term = TerminalFaultRates(
            decline=_rate(rng, 0.05, 0.15, 0.4),
            partial=_rate(rng, 0.03, 0.1),
            timeout_before_auth=_rate(rng, 0.03, 0.1),
            response_lost=_rate(rng, 0.03, 0.1, 0.3),
            reset_after_approval=_rate(rng, 0.03, 0.1),
            late_cancel=_rate(rng, 0.03, 0.1),
            busy=_rate(rng, 0.05, 0.2, 0.5),
            status_busy=_rate(rng, 0.1, 0.3),
            status_unknown=_rate(rng, 0.05, 0.2),
            void_declined=_rate(rng, 0.1, 0.3, 0.6),
            void_timeout=_rate(rng, 0.1, 0.3),
            offline_windows=rng.choice((0, 0, 1, 2)),
            reboots=rng.choice((0, 0, 1, 2)),
            slow=_rate(rng, 0.05, 0.2),
        )
        store = StoreFaultRates(
            drop_before=_rate(rng, 0.01, 0.05, 0.15),
            drop_after=_rate(rng, 0.01, 0.05, 0.15),
            serialization=_rate(rng, 0.01, 0.05),
            outages=rng.choice((0, 0, 1, 2)),
            slow=_rate(rng, 0.02, 0.1),
        )
        return FaultPlan(
            terminals=rng.randint(2, 4),
            timeout_s=rng.choice((20, 30, 60, 120, 180)),
            queue_depth=rng.choice((2, 4, 32, 32)),
            card_mode=rng.choice(CARD_MODES),
            clients=rng.randint(2, 5),
            fault_minutes=rng.choice((3.0, 5.0, 8.0)),
            term=term,
            store=store,
            crashes=rng.choice((0, 1, 1, 2, 3)),
            failpoint_crash=_rate(rng, 0.02, 0.08, 0.2),
            duplicate=_rate(rng, 0.05, 0.2),
            key_reuse=_rate(rng, 0.03, 0.1),
            disconnect=_rate(rng, 0.05, 0.2),
            give_up=_rate(rng, 0.05, 0.3),
            void=_rate(rng, 0.05, 0.15, 0.3),
            refund=_rate(rng, 0.05, 0.2),
            legacy_orphans=rng.choice((0, 0, 1, 2)),
            settles=rng.choice((0, 0, 1, 2, 4)),
            batch_closes=rng.choice((0, 0, 0, 1, 2)),
            keypad_voids=rng.choice((0, 0, 1, 2, 4)),
            key_rotations=rng.choice((0, 0, 1, 2)),
            reloads=rng.choice((0, 0, 1, 2)),
            peer=rng.random() < 0.5,
            stalls=rng.choice((0, 0, 1)),
            skew_s=rng.choice((0.0, 0.0, -300.0, -90.0, 90.0, 300.0)),
            inventory_events=rng.choice((0, 0, 1, 2, 3)),
            race_void_refund=_rate(rng, 0.3),
        )

    def calm(self) -> FaultPlan:
        """The same world with every fault rate at zero (the healed phase)."""
        from dataclasses import replace

        return replace(
            self,
            term=calm_terminal(self.term),
            failpoint_crash=0.0,
            store=replace(self.store, drop_before=0.0, drop_after=0.0, serialization=0.0, slow=0.0),
        )


def calm_terminal(rates: TerminalFaultRates) -> TerminalFaultRates:
    """Every terminal fault rate at zero (offline windows and reboots are scheduled, not rated)."""
    from dataclasses import replace

    return replace(
        rates,
        decline=0.0,
        partial=0.0,
        timeout_before_auth=0.0,
        response_lost=0.0,
        reset_after_approval=0.0,
        late_cancel=0.0,
        busy=0.0,
        status_busy=0.0,
        status_unknown=0.0,
        void_declined=0.0,
        void_timeout=0.0,
        slow=0.0,
    )


@dataclass
class Coverage:
    """How often each fault fired and each recovery branch ran (summed over a batch)."""

    counts: Counter[str] = field(default_factory=Counter)

    def hit(self, name: str, n: int = 1) -> None:
        self.counts[name] += n

    def kinds(self) -> dict[str, int]:
        return fault_kinds(self.counts)


def fault_kinds(counts: Counter[str]) -> dict[str, int]:
    """How often each named fault kind happened."""
    return {kind: counts[kind] for kind in FAULT_KINDS}


def format_kinds(counts: Counter[str]) -> str:
    return " ".join(f"{kind}={n}" for kind, n in fault_kinds(counts).items())
