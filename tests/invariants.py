"""The money invariants of RELIABILITY.md, checked against the database AND the terminal's own ledger.

Written once, used after every checkout test, by the crash matrix and by the chaos run.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

import asyncpg

COMPLETED = ("completed", "refunded", "partially_refunded")


class InvariantViolation(AssertionError):
    pass


def _charges(ledger: list[dict[str, Any]], tpns: set[str]) -> list[dict[str, Any]]:
    """Ledger rows where money moved towards the store and stayed (approved sales, captures).
    An authorization not captured is a hold, never money received."""
    return [
        t
        for t in ledger
        if t["tpn"] in tpns and t["type"] in ("sale", "capture") and t["status"] in ("approved", "captured")
    ]


def _holds(ledger: list[dict[str, Any]], tpns: set[str]) -> list[dict[str, Any]]:
    return [t for t in ledger if t["tpn"] in tpns and t["type"] == "auth" and t["status"] == "approved"]


def _returned(ledger: list[dict[str, Any]], tpns: set[str]) -> int:
    return sum(t["amount"] for t in ledger if t["tpn"] in tpns and t["type"] == "return" and t["status"] == "returned")


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
    problems: list[str] = []
    tpns = set(tpn_by_terminal.values())
    txs = await conn.fetch(
        """SELECT t.reference_id, t.kind, t.tender_type, t.amount, t.approved_amount, t.status,
                  t.payment_processor_id, t.capture_status, t.settled_at, o.id AS order_id,
                  o.status AS order_status, o.payment_status, o.total
             FROM payment_transactions t JOIN orders o ON o.store_id = t.store_id AND o.id = t.order_id
            WHERE t.store_id = $1""",
        store_id,
    )
    by_ref = {r["reference_id"]: r for r in txs}
    charges = _charges(ledger, tpns)

    # I1 no money without goods; I2 no double charge
    per_ref = Counter(c["reference_id"] for c in charges)
    for ref, n in per_ref.items():
        if n > 1:
            problems.append(f"I2: {n} approved charges for reference {ref}")
    for c in charges:
        row = by_ref.get(c["reference_id"])
        if row is None:
            problems.append(f"I8: terminal charge {c['reference_id']} unknown to gatewayd")
        elif orphan_refs is not None and c["reference_id"] in orphan_refs and row["order_status"] not in COMPLETED:
            pass  # listed by /v1/orphans: money the operator is told to give back, not lost
        elif row["order_status"] not in COMPLETED and row["status"] != "refunded":
            # A charge of an order that did not complete is a loss unless it was returned (a settled
            # orphan, refunded through POST /v1/checkouts/{id}/refunds).
            problems.append(f"I1: charge {c['reference_id']} ({c['amount']}) belongs to a {row['order_status']} order")
        elif c["amount"] != row["amount"]:
            problems.append(f"I1: charge {c['reference_id']} is {c['amount']}, the tender is {row['amount']}")

    # Holds: an approved authorization is never money received. It belongs to a completed order
    # that still owes its capture (payment_status 'authorized'), or it is a loss to report.
    held = defaultdict(int)
    for h in _holds(ledger, tpns):
        row = by_ref.get(h["reference_id"])
        if row is None:
            continue  # I8 below
        if row["order_status"] not in COMPLETED or row["payment_status"] == "paid":
            problems.append(f"I1: hold {h['reference_id']} ({h['amount']}) on a {row['order_status']}/"
                            f"{row['payment_status']} order is not money received")  # fmt: skip
        held[row["order_id"]] += h["amount"]
    # An order's paid status claims money received: every capture done.
    for row in txs:
        if row["payment_status"] == "paid" and row["capture_status"] == "pending":
            problems.append(f"I1: order {row['order_id']} counted paid with a capture still owed")

    # I3 no goods without money; completed order's card charges add up
    charged = defaultdict(int)
    for c in charges:
        if c["reference_id"] in by_ref and by_ref[c["reference_id"]]["order_status"] in COMPLETED:
            charged[by_ref[c["reference_id"]]["order_id"]] += c["amount"]
    orders = await conn.fetch("SELECT id, status, total FROM orders WHERE store_id = $1", store_id)
    for o in orders:
        tenders = [t for t in txs if t["order_id"] == o["id"] and t["kind"] == "payment"]
        card = sum(t["amount"] for t in tenders if t["tender_type"] == "card")
        if o["status"] in COMPLETED:
            if any(t["status"] != "approved" for t in tenders):
                problems.append(f"I3: completed order {o['id']} has a tender not approved")
            if sum(t["amount"] for t in tenders) != o["total"]:
                problems.append(f"I3: order {o['id']} tenders do not add up to its total")
            if charged[o["id"]] + held[o["id"]] != card:
                problems.append(f"I2: order {o['id']} card tenders {card}, terminal charged {charged[o['id']]}"
                                f" (+{held[o['id']]} held)")  # fmt: skip
    # Orphans returned: what was charged for orders that did not complete was returned in full.
    orphaned = sum(
        c["amount"]
        for c in charges
        if c["reference_id"] in by_ref
        and by_ref[c["reference_id"]]["order_status"] not in COMPLETED
        and by_ref[c["reference_id"]]["status"] == "refunded"
    )
    if orphaned and _returned(ledger, tpns) < orphaned:
        problems.append(f"I1: {orphaned} charged for orders that did not complete, less returned")

    # I8: every terminal transaction known by reference id
    for t in ledger:
        if t["tpn"] in tpns and t["reference_id"] not in by_ref:
            problems.append(f"I8: terminal transaction {t['reference_id']} ({t['type']}) unknown to gatewayd")

    # I4 inventory conservation
    sold = {
        r["sku"]: r["qty"]
        for r in await conn.fetch(
            # what left the shelf through each line (what it reserved) less what went back
            """SELECT i.sku, sum(coalesce(i.reserved, i.quantity)
                                 - least(i.restocked, coalesce(i.reserved, i.quantity)))::bigint AS qty
                 FROM order_items i
             JOIN orders o ON o.store_id = i.store_id AND o.id = i.order_id
            WHERE i.store_id = $1 AND o.status = ANY($2::text[]) GROUP BY i.sku""",
            store_id,
            list(COMPLETED),
        )
    }
    for r in await conn.fetch("SELECT sku, on_hand, reserved FROM inventory WHERE store_id = $1", store_id):
        expected = initial_stock.get(r["sku"], 0) - sold.get(r["sku"], 0)
        if r["on_hand"] != expected:
            problems.append(f"I4: {r['sku']} on hand {r['on_hand']}, expected {expected}")
        if r["reserved"] != 0:
            problems.append(f"I4: {r['sku']} still has {r['reserved']} reserved")

    # I5 derived totals
    expected_points = await conn.fetch(
        """SELECT customer_id, sum(loyalty_points - (loyalty_points * refunded_amount) / greatest(total, 1))::bigint
                  AS pts
             FROM orders WHERE store_id = $1 AND customer_id IS NOT NULL AND status = ANY($2::text[])
            GROUP BY customer_id""",
        store_id,
        list(COMPLETED),
    )
    accounts = {
        r["customer_id"]: r["points"]
        for r in await conn.fetch("SELECT customer_id, points FROM loyalty_accounts WHERE store_id = $1", store_id)
    }
    for r in expected_points:
        if accounts.get(r["customer_id"], 0) != r["pts"]:
            problems.append(f"I5: loyalty {r['customer_id']} has {accounts.get(r['customer_id'])}, expected {r['pts']}")
    mismatch = await conn.fetch(
        """SELECT o.total, o.loyalty_points FROM orders o WHERE o.store_id = $1 AND o.status = ANY($2::text[])
              AND o.customer_id IS NOT NULL AND o.loyalty_points <> (o.total * $3) / 100""",
        store_id,
        list(COMPLETED),
        points_per_unit,
    )
    if mismatch:
        problems.append(f"I5: {len(mismatch)} order(s) with loyalty points not at the configured rate")
    sessions = await conn.fetch(
        """SELECT s.register_id, s.cash_total, s.card_total, s.checkout_count,
                  coalesce(sum(t.amount) FILTER (WHERE t.tender_type = 'cash'), 0) AS cash,
                  coalesce(sum(t.amount) FILTER (WHERE t.tender_type = 'card'), 0) AS card,
                  count(DISTINCT o.id) AS n
             FROM register_sessions s
             LEFT JOIN orders o ON o.store_id = s.store_id AND o.register_session_id = s.id
                                AND o.status = ANY($2::text[])
             LEFT JOIN payment_transactions t ON t.store_id = o.store_id AND t.order_id = o.id AND t.kind = 'payment'
            WHERE s.store_id = $1 GROUP BY s.store_id, s.id""",
        store_id,
        list(COMPLETED),
    )
    for s in sessions:
        if (s["cash_total"], s["card_total"], s["checkout_count"]) != (s["cash"], s["card"], s["n"]):
            problems.append(
                f"I5: register {s['register_id']} session totals "
                f"{(s['cash_total'], s['card_total'], s['checkout_count'])} != "
                f"{(s['cash'], s['card'], s['n'])}"
            )

    # quiescence: nothing left in doubt
    open_tx = [r["reference_id"] for r in txs if r["status"] in ("processing", "unknown")]
    if open_tx:
        problems.append(f"I7: tenders still undecided: {open_tx}")
    if problems:
        raise InvariantViolation("\n".join(problems))
    return {
        "charges": len(charges),
        "orders": len(orders),
        "completed": sum(1 for o in orders if o["status"] in COMPLETED),
    }
