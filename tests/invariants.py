"""The money invariants of RELIABILITY.md, stated once.

`money_problems(state)` is the statement: a pure function of the store's rows and the terminals'
own ledger. Two adapters feed it: `money_state` reads PostgreSQL and the SPIn simulator's ledger
(every checkout test, the crash matrix, the chaos run); the seeded simulation builds the same
`MoneyState` from its fake tables and terminals (tests/simulator/invariants.py) and adds the checks only
a simulation can make (after every step, in virtual time).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg

COMPLETED = ("completed", "refunded", "partially_refunded")
Row = Mapping[str, Any]


class InvariantViolation(AssertionError):
    pass


@dataclass
class MoneyState:
    """What the invariants read. Rows are mappings keyed like the columns.

    `txs`: payment_transactions with their order's `order_status`, `payment_status` and `total`;
    `orders`: orders; `items`: order_items; `inventory`: inventory; `loyalty`: customer -> points;
    `sessions`: register_sessions; `ledger`: the terminals' own transactions (`tpn`, `type`,
    `status`, `amount`, `reference_id`), restricted to `tpns`; `orphan_refs`: references the
    operator is told to refund (GET /v1/orphans), None when the caller does not say."""

    txs: Sequence[Row]
    orders: Sequence[Row]
    items: Sequence[Row]
    inventory: Sequence[Row]
    loyalty: Mapping[str, int]
    sessions: Sequence[Row]
    ledger: Sequence[Row]
    tpns: set[str]
    initial_stock: Mapping[str, int]
    points_per_unit: int = 1
    minor_per_unit: int = 100
    orphan_refs: set[str] | None = None
    counts: dict[str, int] = field(default_factory=dict)


def _charges(ledger: Sequence[Row], tpns: set[str]) -> list[Row]:
    """Ledger rows where money moved towards the store and stayed (approved sales, captures).
    An authorization not captured is a hold, never money received."""
    return [
        t
        for t in ledger
        if t["tpn"] in tpns and t["type"] in ("sale", "capture") and t["status"] in ("approved", "captured")
    ]


def _holds(ledger: Sequence[Row], tpns: set[str]) -> list[Row]:
    """Authorizations held and not captured (a hold whose batch settled lapsed: nothing is held)."""
    return [
        t
        for t in ledger
        if t["tpn"] in tpns and t["type"] == "auth" and t["status"] == "approved" and not t.get("settled", False)
    ]


def _returned(ledger: Sequence[Row], tpns: set[str]) -> int:
    return sum(t["amount"] for t in ledger if t["tpn"] in tpns and t["type"] == "return" and t["status"] == "returned")


def money_problems(s: MoneyState) -> list[str]:
    """Every violated invariant, each line naming it first (I1 ... I8)."""
    problems: list[str] = []
    by_ref = {r["reference_id"]: r for r in s.txs}
    charges = _charges(s.ledger, s.tpns)

    # I1 no money without goods; I2 no double charge
    for ref, n in Counter(c["reference_id"] for c in charges).items():
        if n > 1:
            problems.append(f"I2: {n} approved charges for reference {ref}")
    for c in charges:
        row = by_ref.get(c["reference_id"])
        if row is None:
            problems.append(f"I8: terminal charge {c['reference_id']} unknown to gatewayd")
        elif s.orphan_refs is not None and c["reference_id"] in s.orphan_refs and row["order_status"] not in COMPLETED:
            pass  # listed by /v1/orphans: money the operator is told to give back, not lost
        elif row["order_status"] not in COMPLETED and row["status"] != "refunded":
            # A charge of an order that did not complete is a loss unless it was returned (a settled
            # orphan, refunded through POST /v1/checkouts/{id}/refunds).
            problems.append(f"I1: charge {c['reference_id']} ({c['amount']}) belongs to a {row['order_status']} order")
        elif row["status"] != "refunded" and c["amount"] != row["amount"]:
            problems.append(f"I1: charge {c['reference_id']} is {c['amount']}, the tender is {row['amount']}")

    # Holds: an approved authorization is never money received. It belongs to a completed order
    # that still owes its capture (payment_status 'authorized'), or it is a loss to report.
    held: dict[Any, int] = defaultdict(int)
    for h in _holds(s.ledger, s.tpns):
        row = by_ref.get(h["reference_id"])
        if row is None:
            continue  # I8 below
        if row["capture_status"] == "pending" and row["settled_at"] is not None:
            continue  # its batch closed before the capture: it lapsed (counted below), nothing is held
        if row["order_status"] not in COMPLETED or row["payment_status"] == "paid":
            problems.append(
                f"I1: hold {h['reference_id']} ({h['amount']}) on a {row['order_status']}/"
                f"{row['payment_status']} order is not money received"
            )
        held[row["order_id"]] += h["amount"]
    # An order's paid status claims money received: every capture done.
    for row in s.txs:
        if row["payment_status"] == "paid" and row["capture_status"] == "pending":
            problems.append(f"I1: order {row['order_id']} counted paid with a capture still owed")

    # I3 no goods without money; a completed order's card charges add up
    charged: dict[Any, int] = defaultdict(int)
    for c in charges:
        row = by_ref.get(c["reference_id"])
        if row is not None and row["order_status"] in COMPLETED:
            charged[row["order_id"]] += c["amount"]
    for o in s.orders:
        tenders = [t for t in s.txs if t["order_id"] == o["id"] and t["kind"] == "payment"]
        card = sum(t["amount"] for t in tenders if t["tender_type"] == "card")
        if o["status"] in COMPLETED:
            if any(t["status"] != "approved" for t in tenders):
                problems.append(f"I3: completed order {o['id']} has a tender not approved")
            if sum(t["amount"] for t in tenders) != o["total"]:
                problems.append(f"I3: order {o['id']} tenders do not add up to its total")
            # A hold whose batch settled before its capture lapsed: never money received, and shown
            # as such (payment_status stays authorized; gatewayd alerted). It takes nothing.
            lapsed = sum(
                t["amount"] for t in tenders if t["capture_status"] == "pending" and t["settled_at"] is not None
            )
            if charged[o["id"]] + held[o["id"]] + lapsed != card:
                problems.append(
                    f"I2: order {o['id']} card tenders {card}, terminal charged {charged[o['id']]}"
                    f" (+{held[o['id']]} held, {lapsed} lapsed)"
                )
    # Orphans returned: what was charged for orders that did not complete was returned in full.
    orphaned = sum(
        c["amount"]
        for c in charges
        if c["reference_id"] in by_ref
        and by_ref[c["reference_id"]]["order_status"] not in COMPLETED
        and by_ref[c["reference_id"]]["status"] == "refunded"
    )
    if orphaned and _returned(s.ledger, s.tpns) < orphaned:
        problems.append(f"I1: {orphaned} charged for orders that did not complete, less returned")

    # I8: every terminal transaction known by reference id
    for t in s.ledger:
        if t["tpn"] in s.tpns and t["reference_id"] not in by_ref:
            problems.append(f"I8: terminal transaction {t['reference_id']} ({t['type']}) unknown to gatewayd")

    # I4 inventory: what left the shelf through each line of a completed order (what it reserved)
    # less what went back
    status_of = {o["id"]: o["status"] for o in s.orders}
    sold: dict[str, int] = defaultdict(int)
    for i in s.items:
        if status_of.get(i["order_id"]) in COMPLETED:
            took = i["quantity"] if i["reserved"] is None else i["reserved"]
            sold[i["sku"]] += took - min(i["restocked"], took)
    for r in s.inventory:
        expected = s.initial_stock.get(r["sku"], 0) - sold.get(r["sku"], 0)
        if r["on_hand"] != expected:
            problems.append(f"I4: {r['sku']} on hand {r['on_hand']}, expected {expected}")
        if r["reserved"] != 0:
            problems.append(f"I4: {r['sku']} still has {r['reserved']} reserved")

    # I5 derived totals: loyalty points and register sessions
    completed = [o for o in s.orders if o["status"] in COMPLETED]
    expected_points: dict[str, int] = defaultdict(int)
    for o in completed:
        if o["customer_id"] is not None:
            points = o["loyalty_points"]
            expected_points[o["customer_id"]] += points - (points * o["refunded_amount"]) // max(o["total"], 1)
            if points != (o["total"] * s.points_per_unit) // s.minor_per_unit:
                problems.append(f"I5: order {o['id']} has loyalty points not at the configured rate")
    for customer, points in expected_points.items():
        if s.loyalty.get(customer, 0) != points:
            problems.append(f"I5: loyalty {customer} has {s.loyalty.get(customer)}, expected {points}")
    for session in s.sessions:
        mine = [o for o in completed if o["register_session_id"] == session["id"]]
        ids = {o["id"] for o in mine}
        pays = [t for t in s.txs if t["order_id"] in ids and t["kind"] == "payment"]
        want = (
            sum(t["amount"] for t in pays if t["tender_type"] == "cash"),
            sum(t["amount"] for t in pays if t["tender_type"] == "card"),
            len(mine),
        )
        got = (session["cash_total"], session["card_total"], session["checkout_count"])
        if got != want:
            problems.append(f"I5: register {session['register_id']} session totals {got} != {want}")

    # I7 quiescence: nothing left in doubt
    open_tx = [r["reference_id"] for r in s.txs if r["status"] in ("processing", "unknown")]
    if open_tx:
        problems.append(f"I7: tenders still undecided: {open_tx}")
    s.counts.update(charges=len(charges), orders=len(s.orders), completed=len(completed))
    return problems


async def money_state(
    conn: asyncpg.Connection,
    store_id: str,
    ledger: list[dict[str, Any]],
    tpn_by_terminal: dict[str, str],
    initial_stock: dict[str, int],
    points_per_unit: int = 1,
    orphan_refs: set[str] | None = None,
) -> MoneyState:
    """The store's rows in PostgreSQL and the simulator's ledger, for `money_problems`."""

    async def rows(query: str) -> list[Row]:
        return [dict(r) for r in await conn.fetch(query, store_id)]

    return MoneyState(
        txs=await rows(
            """SELECT t.*, o.status AS order_status, o.payment_status, o.total
                 FROM payment_transactions t JOIN orders o ON o.store_id = t.store_id AND o.id = t.order_id
                WHERE t.store_id = $1"""
        ),
        orders=await rows("SELECT * FROM orders WHERE store_id = $1"),
        items=await rows("SELECT * FROM order_items WHERE store_id = $1"),
        inventory=await rows("SELECT * FROM inventory WHERE store_id = $1"),
        loyalty={
            r["customer_id"]: r["points"] for r in await rows("SELECT * FROM loyalty_accounts WHERE store_id = $1")
        },
        sessions=await rows("SELECT * FROM register_sessions WHERE store_id = $1"),
        ledger=ledger,
        tpns=set(tpn_by_terminal.values()),
        initial_stock=initial_stock,
        points_per_unit=points_per_unit,
        orphan_refs=orphan_refs,
    )


async def check_money_invariants(
    conn: asyncpg.Connection,
    store_id: str,
    ledger: list[dict[str, Any]],
    tpn_by_terminal: dict[str, str],
    initial_stock: dict[str, int],
    points_per_unit: int = 1,
    orphan_refs: set[str] | None = None,
) -> dict[str, int]:
    """Raise InvariantViolation naming the invariant; returns a few counts for the caller's asserts.

    `orphan_refs`: reference ids of charges `GET /v1/orphans` lists (for the operator to refund);
    such a charge may belong to an order that did not complete. None: no charge may."""
    state = await money_state(conn, store_id, ledger, tpn_by_terminal, initial_stock, points_per_unit, orphan_refs)
    problems = money_problems(state)
    if problems:
        raise InvariantViolation("\n".join(problems))
    return state.counts
