"""RELIABILITY.md's invariants over the simulation's state: the fake tables and the terminals'
own ledgers (the ground truth), in the spirit of tests/invariants.py.

Two levels:

* `step` checks, after every statement that changed the tables and every change of a ledger,
  what must hold at ALL times (money never silently moves: a tender the database calls
  declined/failed/voided is not charged at its terminal; approved means charged; inventory,
  loyalty and register totals always match a recomputation; every terminal transaction is
  known by its reference id; no void for a charge that was never approved);
* `final` checks, at quiescence after the healed phase, the full set I1-I9 (money only for
  completed orders, exactly their card amounts; nothing left undecided; refunds as the
  terminal did them; captures done; no card number anywhere).

Settled batches: a charge of an order that did not complete whose batch closed before it could
be voided is an orphan that stays charged until it is returned; that is not a violation by
itself as long as gatewayd shows it (approved and settled in the database) and it is then
returned. An authorization never captured is a hold, never money received: it lapses when its
batch closes, and must then neither count as paid nor be refunded (a Return of money never
received is I2).

A violation names its invariant first ("I2 ..."), then the order/reference, with enough
detail to read the trace from.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from tests.invariants import MoneyState, money_problems
from tests.sim.tables import COMPLETED, OPEN_ORDER, Tables
from tests.sim.terminal import CHARGES, Entry, FakeTerminal

FAILED = ("payment_failed", "cancelled", "voided")
# The writes the lease fences (gw_lease_held): what locates the order (its id, a transaction's or a
# refund's), and where the writer's owner is among the statement's arguments.
FENCED: dict[str, tuple[str, int]] = {
    "mark_sent": ("order", 2),
    "record_tender": ("tx", 1),
    "record_and_finish": ("tx", 1),
    "mark_settled": ("tx", 1),
    "mark_void_requested": ("tx", 1),
    "commit": ("order", 3),
    "fail": ("order", 4),
    "set_captured": ("tx", 1),
    "void_order": ("order", 1),
    "finish_refund": ("refund", 3),
    "mark_refund_sent": ("tx", 2),
    "fail_unsent_refund": ("refund", 2),
}
_PAN = re.compile(r"(?<!\d)\d{13,19}(?!\d)")
_IDS = re.compile(r"[0-9A-Fa-f-]{20,}")  # reference ids, UUIDs, digests: ours, not card numbers


@dataclass(frozen=True)
class Violation:
    code: str  # I1 ... I9
    message: str
    at: float  # virtual seconds

    def __str__(self) -> str:
        return f"{self.code} @{self.at:.3f}s: {self.message}"


def luhn(number: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(number)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


class Checker:
    """Holds the violations found so far (each reported once, at its first sighting)."""

    def __init__(
        self,
        tables: Tables,
        terminals: Mapping[str, FakeTerminal],
        initial_stock: Mapping[str, int],
        points_per_unit: int,
        minor_per_unit: int,
        clock: Any,
    ) -> None:
        self.t = tables
        self.terminals = terminals
        self.initial = dict(initial_stock)
        self.ppu = points_per_unit
        self.mpu = minor_per_unit
        self.clock = clock
        self.violations: list[Violation] = []
        self._seen: set[str] = set()

    def fail(self, code: str, message: str, key: str | None = None) -> None:
        key = key or f"{code}:{message}"
        if key in self._seen:
            return
        self._seen.add(key)
        self.violations.append(Violation(code, message, self.clock()))

    # ------------------------------------------------------------ hooks

    def on_store_step(self, name: str, args: tuple[Any, ...]) -> None:
        t = self.t
        orders: list[uuid.UUID] = []
        if name == "prepare":
            orders = [uuid.UUID(args[0]["id"])]
        elif name in ("mark_sent", "commit", "fail", "void_order"):
            orders = [args[0]]
        elif name in ("record_tender", "mark_refund_sent", "set_captured", "mark_settled", "mark_void_requested"):
            tx = t.txs.get(args[0])
            orders = [tx["order_id"]] if tx else []
        elif name == "begin_refund":
            orders = [uuid.UUID(args[0]["order_id"])]
        elif name in ("finish_refund", "fail_unsent_refund"):
            refund = t.refunds.get(args[0])
            orders = [refund["order_id"]] if refund else []
        elif name == "cleanup":
            orders = list(t.orders)
        for order_id in orders:
            if order_id in t.orders:
                self.order(order_id)
        if name in ("prepare", "commit", "fail", "void_order", "finish_refund", "cleanup", "mark_settled"):
            self.aggregates()

    def on_ledger(self, terminal_id: str, ref: str) -> None:
        tx_id = self.t.tx_by_ref.get(ref)
        if tx_id is None:
            self.fail("I8", f"terminal {terminal_id} recorded {ref}, which gatewayd does not know")
            return
        self.order(self.t.txs[tx_id]["order_id"])

    def on_void_request(self, terminal_id: str, ref: str, entry: Entry | None) -> None:
        if entry is None or entry.type not in CHARGES or entry.status == "declined":
            state = "nothing" if entry is None else f"{entry.type} {entry.status}"
            self.fail(
                "I8",
                f"void sent for {ref} on {terminal_id}, where the terminal holds {state}: "
                "a void for a charge that was not approved",
            )

    def on_capture_request(self, terminal_id: str, ref: str, entry: Entry | None) -> None:
        if entry is None or entry.voided or entry.status == "declined" or entry.type not in ("auth", "capture"):
            state = "nothing" if entry is None else f"{entry.type} {entry.status}"
            self.fail(
                "I8",
                f"capture sent for {ref} on {terminal_id}, where the terminal holds {state}: "
                "a capture of what is not an approved authorization",
            )

    def on_fenced(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any], now: Any) -> Any:
        """I8, the lease fence, judged here rather than by the SQL mirror: a write of an order's
        state by a daemon changes something only while that daemon holds the order's live lease
        (on the database's clock). Returns the after-check, or None for a write the fence does not
        govern."""
        where = FENCED.get(name)
        if where is None or len(args) <= where[1]:
            return None
        kind, owner_at = where
        owner = args[owner_at]
        t = self.t
        if kind == "order":
            order_id = args[0]
        elif kind == "tx":
            tx = t.txs.get(args[0])
            order_id = tx["order_id"] if tx else None
        else:
            refund = t.refunds.get(args[0])
            order_id = refund["order_id"] if refund else None
        o = t.orders.get(order_id) if order_id is not None else None
        if o is None or owner is None:
            return None
        live = o["lease_owner"] == owner and o["lease_until"] is not None and o["lease_until"] > now
        if live:
            return None
        before = self._snapshot(order_id)
        holder = f"{o['lease_owner']} until {o['lease_until']}"

        def after() -> None:
            if self._snapshot(order_id) != before:
                self.fail(
                    "I8",
                    f"{name} by {owner} changed order {o['order_number']} without its lease (held by {holder}, "
                    f"now {now}): an unfenced write, two daemons may drive it",
                    key=f"I8:fence:{order_id}",
                )

        return after

    def _snapshot(self, order_id: uuid.UUID) -> Any:
        o = {k: v for k, v in self.t.orders[order_id].items() if k not in ("lease_owner", "lease_until")}
        return repr((o, self.t.tenders_of(order_id), [r for r in self.t.refunds.values() if r["order_id"] == order_id]))

    # ------------------------------------------------------------ what holds at all times

    def _entry(self, tx: Mapping[str, Any]) -> Entry | None:
        term = self.terminals.get(tx["payment_processor_id"] or "")
        return None if term is None else term.ledger.get(tx["reference_id"])

    def _returned(self, order_id: uuid.UUID, tender_index: int | None = None) -> int:
        """What the terminals returned to the card for refunds of this order (of one tender)."""
        total = 0
        for tx in self.t.tenders_of(order_id):
            if tx["kind"] != "refund" or tx["tender_type"] != "card":
                continue
            if tender_index is not None and tx["tender_index"] != tender_index:
                continue
            e = self._entry(tx)
            if e is not None and e.type == "return" and e.moves_money():
                total += e.amount
        return total

    def settled_orphan(self, tx: Mapping[str, Any], e: Entry | None) -> bool:
        """An approved charge of an order that did not complete, whose batch closed before it could
        be voided: the money stays with the merchant, it can only be returned. Not a violation by
        itself, as long as it is visible (approved and settled in the database: find_orphaned_payments
        lists it with settled, reconcile as needs_refund) and true (settled at its terminal)."""
        return (
            tx["kind"] == "payment"
            and tx["status"] == "approved"
            and tx["settled_at"] is not None
            and e is not None
            and e.settled
            and not self.lapsed_hold(e)  # a hold that lapsed took nothing: nothing to return
            and self.t.orders[tx["order_id"]]["status"] not in COMPLETED
        )

    @staticmethod
    def lapsed_hold(e: Entry | None) -> bool:
        """An authorization whose batch closed before it was captured: nothing was ever received."""
        return e is not None and e.type == "auth" and e.settled and not e.voided and e.status == "approved"

    def order(self, order_id: uuid.UUID, *, final: bool = False) -> None:
        o = self.t.orders[order_id]
        txs = self.t.tenders_of(order_id)
        card_total = 0
        charged_total = 0
        orphaned = 0  # charged, settled, visible: waits for a Return
        lapsed_total = 0  # holds of a completed order lost to a batch closed before their capture
        voided_approved = False  # a tender approved in the database, voided at the terminal (I3 says it)
        for tx in txs:
            if tx["tender_type"] != "card":
                continue
            e = self._entry(tx)
            ref = tx["reference_id"]
            if tx["kind"] == "refund":
                self._refund_tx(o, tx, e, final)
                continue
            card_total += tx["amount"]
            charged = e is not None and e.type in CHARGES and e.moves_money()
            if charged:
                assert e is not None
                charged_total += e.amount
                if self.settled_orphan(tx, e):
                    orphaned += e.amount
            if self.lapsed_hold(e) and tx["status"] == "approved" and o["status"] in COMPLETED:
                assert e is not None
                lapsed_total += tx["amount"]
                if e.settled_by != "outside":
                    self.fail(
                        "I2",
                        f"authorization {ref} of {o['status']} order {o['order_number']} lapsed: gatewayd settled "
                        f"terminal {tx['payment_processor_id']}'s batch before capturing it (never paid)",
                        key=f"I2:lapsed:{ref}",
                    )
                elif final and tx["settled_at"] is None:
                    self.fail(
                        "I7",
                        f"authorization {ref} of {o['status']} order {o['order_number']} lapsed in a batch closed "
                        "outside gatewayd, and gatewayd never noticed (not marked settled, no alert)",
                        key=f"I7:lapsed:{ref}",
                    )
            # A tender failed as "not found" may be charged for a moment: a daemon that lost the order
            # (a pause between its lease check and the wire) sent it late; its late approval corrects
            # the tender and recovery voids the charge. At the end it must be so.
            late = tx["status"] == "failed" and not final
            if tx["status"] in ("pending", "declined", "failed", "voided") and charged and not late:
                assert e is not None
                self.fail(
                    "I2",
                    f"tender {ref} of {o['status']} order {o['order_number']} is {tx['status']} in the "
                    f"database, but terminal {tx['payment_processor_id']} holds an approved charge of "
                    f"{e.amount}: the customer is charged and nobody will void it",
                    key=f"I2:notcharged:{ref}",
                )
            if tx["settled_at"] is not None and (e is None or not e.settled):
                self.fail(
                    "I3",
                    f"tender {ref} is marked settled in the database, but terminal "
                    f"{tx['payment_processor_id']} still has it in an open batch (it could be voided)",
                    key=f"I3:settled:{ref}",
                )
            if tx["status"] == "refunded":
                returned = self._returned(order_id, tx["tender_index"])
                if tx["kind"] != "payment" or o["status"] in COMPLETED or returned < (tx["approved_amount"] or 0):
                    self.fail(
                        "I2",
                        f"tender {ref} of {o['status']} order {o['order_number']} is refunded in the database, "
                        f"its terminal returned {returned} of {tx['approved_amount']}",
                        key=f"I2:refunded:{ref}",
                    )
            if tx["status"] == "approved":
                if e is None or e.type not in CHARGES or e.status == "declined":
                    self.fail(
                        "I3",
                        f"tender {ref} is approved in the database, the terminal has "
                        f"{'nothing' if e is None else e.status}",
                        key=f"I3:approved:{ref}",
                    )
                elif e.amount != tx["approved_amount"]:
                    self.fail("I2", f"tender {ref}: database approved {tx['approved_amount']}, terminal {e.amount}")
                elif e.voided and final:
                    voided_approved = True
                    self.fail(
                        "I3",
                        f"tender {ref} of {o['status']} order {o['order_number']} is approved in the "
                        "database but voided at the terminal",
                        key=f"I3:voided:{ref}",
                    )
        status = o["status"]
        if charged_total > card_total:
            self.fail(
                "I2", f"order {o['order_number']}: terminals hold {charged_total} for {card_total} of card tenders"
            )
        returned = self._returned(order_id)
        if final and returned > charged_total:
            why = sorted(
                {
                    "a hold that lapsed" if self.lapsed_hold(e) else "a charge voided at the terminal"
                    for tx in txs
                    if tx["kind"] == "payment"
                    and tx["tender_type"] == "card"
                    and (e := self._entry(tx)) is not None
                    and (self.lapsed_hold(e) or e.voided)
                }
            )
            self.fail(
                "I2",
                f"{status} order {o['order_number']}: {returned} returned to cards that paid {charged_total} "
                f"(a Return of money never received: {', '.join(why) or 'nothing was charged'})",
                key=f"I2:overreturned:{order_id}",
            )
        if status in COMPLETED:
            half_voided = voided_approved  # a card voided under a completed order: that says the rest (I2)
            for tx in txs:
                if tx["kind"] != "payment":
                    continue
                bad = tx["status"] != "approved"
                if bad and not final and tx["tender_type"] == "card" and tx["status"] in ("voided", "failed"):
                    bad = False  # a void of the completed order is on its way; final() requires it to finish
                if bad:
                    half_voided = half_voided or (tx["tender_type"] == "card" and tx["status"] == "voided")
                    self.fail(
                        "I3",
                        f"{status} order {o['order_number']} has a {tx['tender_type']} tender "
                        f"{tx['reference_id']} that is {tx['status']}",
                        key=f"I3:tender:{tx['id']}",
                    )
                elif (
                    tx["tender_type"] == "card" and tx["status"] == "approved" and tx["approved_amount"] != tx["amount"]
                ):
                    self.fail(
                        "I3",
                        f"{status} order {o['order_number']}: tender {tx['reference_id']} approved "
                        f"{tx['approved_amount']} of {tx['amount']}",
                    )
            if final and not half_voided and charged_total + lapsed_total != card_total:
                self.fail(
                    "I2",
                    f"{status} order {o['order_number']}: card tenders {card_total}, terminals hold {charged_total}",
                )
            if o["payment_status"] == "paid" and any(tx["capture_status"] == "pending" for tx in txs):
                self.fail(
                    "I1",
                    f"order {o['order_number']} counted paid with a capture still owed (a hold is not money received)",
                )
            if o["customer_id"] is not None and o["loyalty_points"] != (o["total"] * self.ppu) // self.mpu:
                self.fail("I5", f"order {o['order_number']} earned {o['loyalty_points']} points")
        elif status in FAILED:
            if any(
                tx["kind"] == "payment" and tx["tender_type"] == "card" and tx["status"] in ("processing", "unknown")
                for tx in txs
            ):
                self.fail("I7", f"{status} order {o['order_number']} has a tender still in doubt")
            kept = charged_total - returned
            if final and kept > orphaned:
                self.fail(
                    "I1",
                    f"{status} order {o['order_number']} still has {kept} charged at its "
                    f"terminal(s) (settled and returnable: {orphaned}): money without goods",
                    key=f"I1:failed:{order_id}",
                )

    def _refund_tx(self, o: Mapping[str, Any], tx: Mapping[str, Any], e: Entry | None, final: bool) -> None:
        returned = e is not None and e.type == "return" and e.moves_money()
        ref = tx["reference_id"]
        if returned and tx["status"] in ("pending", "declined", "failed"):
            self.fail(
                "I2",
                f"refund {ref} of order {o['order_number']} is {tx['status']} in the database, but "
                f"terminal {tx['payment_processor_id']} returned {e.amount if e else 0} to the card: "
                "the customer got the money back and the books say they did not",
                key=f"I2:refund:{ref}",
            )
        if tx["status"] == "approved" and not returned:
            self.fail(
                "I2",
                f"refund {ref} is approved in the database, the terminal returned nothing",
                key=f"I2:refund-approved:{ref}",
            )
        refund = self.t.refunds[tx["refund_id"]]
        if refund["status"] == "completed" and tx["status"] != "approved":
            self.fail("I2", f"refund {ref} completed with its transaction {tx['status']}")
        if final and returned and e is not None and e.amount != tx["amount"]:
            self.fail("I2", f"refund {ref}: {tx['amount']} asked, {e.amount} returned")

    def aggregates(self) -> None:
        t = self.t
        sold: dict[str, int] = {}
        reserved: dict[str, int] = {}
        for order_id, o in t.orders.items():
            for line in t.items.get(order_id, []):
                # What the line took off the shelf (its reservation); a restock puts back only that.
                took = line["quantity"] if line["reserved"] is None else line["reserved"]
                if o["status"] in COMPLETED:
                    sold[line["sku"]] = sold.get(line["sku"], 0) + took - min(line["restocked"], took)
                elif o["status"] in OPEN_ORDER:
                    reserved[line["sku"]] = reserved.get(line["sku"], 0) + took
        for sku, inv in t.inventory.items():
            expected = self.initial.get(sku, 0) - sold.get(sku, 0)
            if inv["on_hand"] != expected:
                self.fail("I4", f"{sku}: on hand {inv['on_hand']}, expected {expected}", key=f"I4:onhand:{sku}")
            if inv["reserved"] != reserved.get(sku, 0):
                self.fail(
                    "I4",
                    f"{sku}: reserved {inv['reserved']}, open orders hold {reserved.get(sku, 0)}",
                    key=f"I4:reserved:{sku}",
                )
            if inv["on_hand"] < 0 or not 0 <= inv["reserved"] <= inv["on_hand"]:
                self.fail("I4", f"{sku}: on hand {inv['on_hand']}, reserved {inv['reserved']}")
        points: dict[str, int] = {}
        sessions: dict[uuid.UUID, list[int]] = {}
        for order_id, o in t.orders.items():
            if o["status"] not in COMPLETED:
                continue
            if o["customer_id"] is not None:
                earned = o["loyalty_points"] - (o["loyalty_points"] * o["refunded_amount"]) // max(o["total"], 1)
                points[o["customer_id"]] = points.get(o["customer_id"], 0) + earned
            if o["register_session_id"] is not None:
                acc = sessions.setdefault(o["register_session_id"], [0, 0, 0, 0])
                for tx in t.tenders_of(order_id):
                    if tx["kind"] == "payment":
                        acc[0 if tx["tender_type"] == "cash" else 1] += tx["amount"]
                acc[2] += 1
                acc[3] += sum(
                    r["amount"] for r in t.refunds.values() if r["order_id"] == order_id and r["status"] == "completed"
                )
        for customer in sorted(set(points) | set(t.loyalty)):
            if t.loyalty.get(customer, 0) != points.get(customer, 0):
                self.fail(
                    "I5",
                    f"loyalty {customer}: {t.loyalty.get(customer, 0)} points, completed orders "
                    f"earned {points.get(customer, 0)}",
                    key=f"I5:loyalty:{customer}",
                )
        for session_id, s in t.sessions.items():
            have = [s["cash_total"], s["card_total"], s["checkout_count"], s["refund_total"]]
            want = sessions.get(session_id, [0, 0, 0, 0])
            if have != want:
                self.fail(
                    "I5",
                    f"register {s['register_id']} session (cash, card, count, refunds) {have}, "
                    f"completed orders give {want}",
                    key=f"I5:session:{session_id}",
                )

    # ------------------------------------------------------------ at quiescence

    def final(self, log_lines: Iterable[str] = ()) -> None:
        t = self.t
        for order_id in t.orders:
            self.order(order_id, final=True)
        self.aggregates()
        for terminal_id, term in self.terminals.items():
            for ref, e in term.ledger.items():
                tx_id = t.tx_by_ref.get(ref)
                if tx_id is None:
                    self.fail("I8", f"terminal {terminal_id} transaction {ref} ({e.type}) unknown to gatewayd")
                    continue
                tx = t.txs[tx_id]
                o = t.orders[tx["order_id"]]
                if e.type in CHARGES and e.moves_money():
                    if o["status"] not in COMPLETED:
                        # A settled orphan (to be returned) or one returned already is not lost money:
                        # order() and the orphan check below hold those to account.
                        if not self.settled_orphan(tx, e) and tx["status"] != "refunded":
                            self.fail(
                                "I1",
                                f"charge {ref} ({e.amount}) on {terminal_id} belongs to a {o['status']} order "
                                f"{o['order_number']}: money without goods",
                                key=f"I1:failed:{o['id']}",
                            )
                    elif e.amount != tx["amount"]:
                        self.fail("I1", f"charge {ref} is {e.amount}, its tender {tx['amount']}")
                    if tx["operation"] == "auth" and e.type != "capture" and o["status"] in COMPLETED:
                        self.fail("I7", f"authorization {ref} of completed order {o['order_number']} never captured")
                if e.type == "return" and e.moves_money() and tx["kind"] != "refund":
                    self.fail("I2", f"return {ref} is not a refund gatewayd knows")
        for tx in t.txs.values():
            if tx["status"] in ("processing", "unknown"):
                self.fail("I7", f"{tx['kind']} {tx['reference_id']} still {tx['status']} after healing")
            if tx["capture_status"] == "pending" and not self.lapsed_hold(self._entry(tx)):  # order() judges those
                self.fail("I7", f"capture of {tx['reference_id']} still pending after healing")
        for o in t.orders.values():
            if o["status"] in OPEN_ORDER:
                self.fail("I7", f"order {o['order_number']} still {o['status']} after healing")
        for r in t.refunds.values():
            if r["status"] == "pending":
                self.fail("I7", f"refund {r['id']} still pending after healing")
        for tx in t.txs.values():
            o = t.orders[tx["order_id"]]
            if self.settled_orphan(tx, self._entry(tx)):
                self.fail(
                    "I7",
                    f"settled orphan {tx['reference_id']} of {o['status']} order {o['order_number']} still not "
                    "refunded after healing (the operator refunds every one gatewayd lists)",
                )
        self.shared()
        self.hygiene(log_lines)

    def shared(self) -> None:
        """The money invariants as tests/invariants.py states them once for every suite, over this
        run's tables and the terminals' own ledgers."""
        t = self.t
        txs = []
        for tx in t.txs.values():
            o = t.orders[tx["order_id"]]
            txs.append({**tx, "order_status": o["status"], "payment_status": o["payment_status"], "total": o["total"]})
        ledger = [
            {"tpn": terminal_id, "reference_id": ref, "type": e.type, "status": e.status, "amount": e.amount,
             "settled": e.settled}
            for terminal_id, term in self.terminals.items()
            for ref, e in term.ledger.items()
        ]  # fmt: skip
        state = MoneyState(
            txs=txs,
            orders=list(t.orders.values()),
            items=[{**line, "order_id": order_id} for order_id, lines in t.items.items() for line in lines],
            inventory=[{"sku": sku, **row} for sku, row in t.inventory.items()],
            loyalty=t.loyalty,
            sessions=[{"id": sid, **row} for sid, row in t.sessions.items()],
            ledger=ledger,
            tpns=set(self.terminals),
            initial_stock=self.initial,
            points_per_unit=self.ppu,
            minor_per_unit=self.mpu,
        )
        for problem in money_problems(state):
            code, _, message = problem.partition(": ")
            self.fail(code, f"(tests/invariants.py) {message}")

    def hygiene(self, log_lines: Iterable[str]) -> None:
        """I9: no card number (13-19 digits passing Luhn) in any stored value or log line."""

        def scan(value: Any, where: str) -> None:
            if isinstance(value, str):
                for m in _PAN.finditer(_IDS.sub(" ", value)):
                    if luhn(m.group()):
                        self.fail("I9", f"card-number-like {m.group()[:4]}... in {where}")
            elif isinstance(value, Mapping):
                for k, v in value.items():
                    if k not in ("request_hash", "idempotency_key"):  # hex digests; keys are the POS's
                        scan(v, where)
            elif isinstance(value, (list, tuple)):
                for v in value:
                    scan(v, where)

        scan(list(self.t.orders.values()), "orders")
        scan(list(self.t.txs.values()), "payment_transactions")
        scan(self.t.audit_events, "audit_events")
        scan(list(self.t.refunds.values()), "refunds")
        for line in log_lines:
            scan(line, "logs")
