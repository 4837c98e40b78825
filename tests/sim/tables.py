"""The store's tables in memory, and the SQL of `sql/002` and `sql/004` as plain functions.

Each method is one statement or one server-side function, applied atomically (the fake
database runs it between two awaits), with the same answers as the SQL: the same outcome
dicts, the same from-status guards, the same CHECK constraints (violations raise
PermanentStoreError and change nothing). Rows are dicts keyed like the columns, so the
coordinator reads them exactly as it reads asyncpg records. The differential test replays a
seed's history against PostgreSQL to keep this second implementation honest.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from typing import Any

from gatewayd.errors import PermanentStoreError

OPEN_ORDER = ("pending_payment", "payment_processing", "payment_authorized")
COMPLETED = ("completed", "refunded", "partially_refunded")
CHARGING = ("processing", "unknown", "approved")

Row = dict[str, Any]

# Proposed SQL changes, switched on only by tests/sim/fixes.py (exploration): see there.
PROPOSED: set[str] = set()

_TENDER_COLUMNS = (
    "id",
    "kind",
    "refund_id",
    "tender_index",
    "tender_type",
    "operation",
    "amount",
    "approved_amount",
    "tendered",
    "status",
    "capture_status",
    "reference_id",
    "payment_processor_id",
    "auth_code",
    "card_brand",
    "last4",
    "status_code",
    "last_error",
    "timeout_s",
    "sent_at",
    "attempts",
)


def tender_view(t: Row) -> Row:
    """The columns `_LOAD_TENDERS` selects."""
    return {k: t[k] for k in _TENDER_COLUMNS}


def _check(ok: bool, what: str) -> None:
    if not ok:
        raise PermanentStoreError(f"database refused: CheckViolationError: {what}")


class Tables:
    """One store's rows: orders, order_items, inventory, payment_transactions, refunds, loyalty,
    register sessions, audit events."""

    def __init__(self, new_uuid: Callable[[], uuid.UUID]) -> None:
        self.new_uuid = new_uuid
        self.orders: dict[uuid.UUID, Row] = {}
        self.by_key: dict[str, uuid.UUID] = {}
        self.items: dict[uuid.UUID, list[Row]] = {}
        self.inventory: dict[str, Row] = {}
        self.txs: dict[uuid.UUID, Row] = {}
        self.tx_by_ref: dict[str, uuid.UUID] = {}
        self.txs_of: dict[uuid.UUID, list[uuid.UUID]] = {}
        self.refunds: dict[uuid.UUID, Row] = {}
        self.refund_by_key: dict[str, uuid.UUID] = {}
        self.loyalty: dict[str, int] = {}
        self.loyalty_ledger: list[Row] = []
        self.sessions: dict[uuid.UUID, Row] = {}
        self.open_session: dict[str, uuid.UUID] = {}
        self.audit_events: list[Row] = []
        self.order_seq = 0

    # ------------------------------------------------------------ helpers

    def tenders_of(self, order_id: uuid.UUID) -> list[Row]:
        return [self.txs[i] for i in self.txs_of.get(order_id, [])]

    def _payment_cards(self, order_id: uuid.UUID) -> list[Row]:
        return [t for t in self.tenders_of(order_id) if t["kind"] == "payment" and t["tender_type"] == "card"]

    def _qty_by_sku(self, order_id: uuid.UUID, minus_restocked: bool = False) -> dict[str, int]:
        qty: dict[str, int] = {}
        for line in self.items.get(order_id, []):
            n = line["quantity"] - (line["restocked"] if minus_restocked else 0)
            qty[line["sku"]] = qty.get(line["sku"], 0) + n
        return qty

    def _audit(
        self,
        now: datetime,
        kind: str,
        order_id: uuid.UUID | None = None,
        transaction_id: uuid.UUID | None = None,
        detail: dict[str, Any] | None = None,
    ) -> None:
        self.audit_events.append(
            {"at": now, "kind": kind, "order_id": order_id, "transaction_id": transaction_id, "detail": detail or {}}
        )

    def _insert_tx(self, row: Row) -> None:
        _check(row["reference_id"] not in self.tx_by_ref, "payment_transactions reference_id unique")
        self.txs[row["id"]] = row
        self.tx_by_ref[row["reference_id"]] = row["id"]
        self.txs_of.setdefault(row["order_id"], []).append(row["id"])

    @staticmethod
    def _new_tx(now: datetime, **cols: Any) -> Row:
        row: Row = {
            "kind": "payment",
            "refund_id": None,
            "tender_index": 0,
            "approved_amount": None,
            "tendered": None,
            "status": "pending",
            "capture_status": None,
            "payment_processor_id": None,
            "auth_code": None,
            "card_brand": None,
            "last4": None,
            "batch_number": None,
            "transaction_number": None,
            "status_code": None,
            "raw_response": None,
            "attempts": 0,
            "last_error": None,
            "timeout_s": None,
            "sent_at": None,
            "resolved_at": None,
            "created_at": now,
            "updated_at": now,
            "void_requested_at": None,
        }
        row.update(cols)
        return row

    # ------------------------------------------------------------ gw_prepare_checkout

    def prepare(self, now: datetime, p: dict[str, Any]) -> dict[str, Any]:
        existing = self.by_key.get(p["idempotency_key"])
        if existing is not None:
            return {"outcome": "exists", "id": str(existing), "request_hash": self.orders[existing]["request_hash"]}
        wanted: dict[str, int] = {}
        for line in p["lines"]:
            wanted[line["sku"]] = wanted.get(line["sku"], 0) + int(line["quantity"])
        short = [
            {
                "sku": sku,
                "requested": qty,
                "available": self.inventory[sku]["on_hand"] - self.inventory[sku]["reserved"],
            }
            for sku, qty in sorted(wanted.items())
            if sku in self.inventory and self.inventory[sku]["on_hand"] - self.inventory[sku]["reserved"] < qty
        ]
        if short:
            return {"outcome": "insufficient", "skus": short}
        order_id = uuid.UUID(p["id"])
        _check(order_id not in self.orders, "orders primary key")
        refs = [t["reference_id"] for t in p["tenders"]]
        _check(
            len(set(refs)) == len(refs) and not any(r in self.tx_by_ref for r in refs),
            "payment_transactions reference_id unique",
        )
        for sku, qty in wanted.items():
            if sku in self.inventory:
                inv = self.inventory[sku]
                inv["reserved"] += qty
                inv["updated_at"] = now
        self.order_seq += 1
        number = f"{self.order_seq:06d}"
        self.orders[order_id] = {
            "id": order_id,
            "order_number": number,
            "status": "pending_payment",
            "payment_status": "pending",
            "idempotency_key": p["idempotency_key"],
            "request_hash": p["request_hash"],
            "card_mode": p["card_mode"],
            "subtotal": p["subtotal"],
            "tax": p["tax"],
            "discount": p["discount"],
            "total": p["total"],
            "change_due": p["change_due"],
            "refunded_amount": 0,
            "currency": p["currency"],
            "register_id": p["register_id"],
            "register_session_id": None,
            "customer_id": p["customer_id"],
            "loyalty_points": 0,
            "failure_code": None,
            "failure_reason": None,
            "lease_owner": p["lease_owner"],
            "lease_until": now + timedelta(seconds=float(p["lease_s"])),
            "created_at": now,
            "updated_at": now,
            "completed_at": None,
            "failed_at": None,
        }
        self.by_key[p["idempotency_key"]] = order_id
        self.items[order_id] = [
            {
                "line_no": i,
                "sku": line["sku"],
                "quantity": int(line["quantity"]),
                "unit_price": int(line["unit_price"]),
                "restocked": 0,
            }
            for i, line in enumerate(p["lines"])
        ]
        for i, t in enumerate(p["tenders"]):
            self._insert_tx(
                self._new_tx(
                    now,
                    id=uuid.UUID(t["id"]),
                    order_id=order_id,
                    tender_index=i,
                    tender_type=t["type"],
                    operation=t["operation"],
                    amount=int(t["amount"]),
                    tendered=t.get("tendered"),
                    reference_id=t["reference_id"],
                    payment_processor_id=t.get("terminal_id"),
                    timeout_s=t.get("timeout_s"),
                )
            )
        self._audit(now, "checkout.prepared", order_id, detail={"idempotency_key": p["idempotency_key"]})
        return {"outcome": "created", "id": str(order_id), "order_number": number}

    def find_key(self, key: str) -> tuple[uuid.UUID, str] | None:
        order_id = self.by_key.get(key)
        return None if order_id is None else (order_id, self.orders[order_id]["request_hash"])

    # ------------------------------------------------------------ tenders

    def mark_sent(self, now: datetime, order_id: uuid.UUID, tender_id: uuid.UUID) -> bool:
        order = self.orders.get(order_id)
        if order is None or order["status"] not in ("pending_payment", "payment_processing"):
            return False
        order.update(status="payment_processing", payment_status="processing", updated_at=now)
        tx = self.txs.get(tender_id)
        if tx is None or tx["order_id"] != order_id or tx["status"] not in ("pending", "processing", "unknown"):
            return False
        tx.update(status="processing", sent_at=now, attempts=tx["attempts"] + 1, updated_at=now)
        return True

    def record_tender(
        self,
        now: datetime,
        tender_id: uuid.UUID,
        status: str,
        *,
        from_statuses: Iterable[str],
        approved_amount: int | None = None,
        auth_code: str | None = None,
        card_brand: str | None = None,
        last4: str | None = None,
        batch_number: str | None = None,
        transaction_number: str | None = None,
        status_code: str | None = None,
        raw: dict[str, Any] | None = None,
        last_error: str | None = None,
        audit: dict[str, Any] | None = None,
    ) -> bool:
        tx = self.txs.get(tender_id)
        if tx is None or tx["status"] not in list(from_statuses):
            return False
        _check(approved_amount is None or approved_amount >= 0, "approved_amount >= 0")
        _check(last4 is None or (len(last4) == 4 and last4.isdigit()), "last4")

        def keep(new: Any, old: Any) -> Any:
            return old if new is None else new

        tx.update(
            status=status,
            approved_amount=keep(approved_amount, tx["approved_amount"]),
            auth_code=keep(auth_code, tx["auth_code"]),
            card_brand=keep(card_brand, tx["card_brand"]),
            last4=keep(last4, tx["last4"]),
            batch_number=keep(batch_number, tx["batch_number"]),
            transaction_number=keep(transaction_number, tx["transaction_number"]),
            status_code=keep(status_code, tx["status_code"]),
            raw_response=keep(raw, tx["raw_response"]),
            last_error=last_error,
            capture_status=None if status in ("voided", "failed") else tx["capture_status"],
            resolved_at=None if status in ("processing", "unknown") else now,
            updated_at=now,
        )
        self._audit(now, f"tender.{status}", tx["order_id"], tender_id, audit or {})
        return True

    # ------------------------------------------------------------ gw_commit_checkout

    def commit(self, now: datetime, order_id: uuid.UUID, points_per_unit: int, minor_per_unit: int) -> dict[str, Any]:
        o = self.orders.get(order_id)
        if o is None:
            return {"outcome": "not_found"}
        if o["status"] in ("completed", "refunded", "partially_refunded", "voided"):
            return {"outcome": "already", "status": o["status"]}
        if o["status"] not in OPEN_ORDER:
            return {"outcome": "not_committable", "status": o["status"]}
        if any(t["status"] != "approved" or t["approved_amount"] != t["amount"] for t in self._payment_cards(order_id)):
            return {"outcome": "not_ready", "status": o["status"]}
        payments = [t for t in self.tenders_of(order_id) if t["kind"] == "payment"]
        qty = self._qty_by_sku(order_id)
        for sku, n in qty.items():
            if sku in self.inventory:
                inv = self.inventory[sku]
                _check(
                    inv["on_hand"] - n >= 0 and inv["reserved"] - n >= 0 and inv["reserved"] - n <= inv["on_hand"] - n,
                    f"inventory {sku}",
                )
        for t in payments:
            if t["tender_type"] == "cash":
                t.update(status="approved", approved_amount=t["amount"], resolved_at=now, updated_at=now)
        for sku, n in qty.items():
            if sku in self.inventory:
                inv = self.inventory[sku]
                inv.update(on_hand=inv["on_hand"] - n, reserved=inv["reserved"] - n, updated_at=now)
        points = (o["total"] * points_per_unit) // minor_per_unit if o["customer_id"] is not None else 0
        if points > 0:
            self.loyalty[o["customer_id"]] = self.loyalty.get(o["customer_id"], 0) + points
            self.loyalty_ledger.append(
                {"customer_id": o["customer_id"], "order_id": order_id, "points": points, "reason": "earn"}
            )
        session = None
        if o["register_id"] is not None:
            cash = sum(t["amount"] for t in payments if t["tender_type"] == "cash")
            card = sum(t["amount"] for t in payments if t["tender_type"] == "card")
            session = self.open_session.get(o["register_id"])
            if session is None:
                session = self.new_uuid()
                self.sessions[session] = {
                    "id": session,
                    "register_id": o["register_id"],
                    "status": "open",
                    "cash_total": 0,
                    "card_total": 0,
                    "checkout_count": 0,
                    "refund_total": 0,
                }
                self.open_session[o["register_id"]] = session
            s = self.sessions[session]
            s.update(
                cash_total=s["cash_total"] + cash,
                card_total=s["card_total"] + card,
                checkout_count=s["checkout_count"] + 1,
            )
        capture = False
        for t in payments:
            if t["operation"] == "auth" and t["capture_status"] is None:
                t.update(capture_status="pending", updated_at=now)
                capture = True
        o.update(
            status="completed",
            payment_status="authorized" if capture else "paid",
            loyalty_points=points,
            register_session_id=session,
            lease_owner=None,
            lease_until=None,
            completed_at=now,
            updated_at=now,
        )
        self._audit(now, "checkout.completed", order_id, detail={"total": o["total"], "loyalty_points": points})
        return {"outcome": "completed", "status": "completed"}

    # ------------------------------------------------------------ gw_fail_checkout

    def fail(
        self, now: datetime, order_id: uuid.UUID, code: str, reason: str, status: str = "payment_failed"
    ) -> dict[str, Any]:
        o = self.orders.get(order_id)
        if o is None:
            return {"outcome": "not_found"}
        if o["status"] in ("payment_failed", "cancelled"):
            return {"outcome": "already", "status": o["status"]}
        if o["status"] not in OPEN_ORDER:
            return {"outcome": "not_failable", "status": o["status"]}
        if any(t["status"] in CHARGING for t in self._payment_cards(order_id)):
            return {"outcome": "not_ready", "status": o["status"]}
        for t in self.tenders_of(order_id):
            if t["kind"] == "payment" and t["status"] == "pending":
                t.update(status="voided" if t["tender_type"] == "cash" else "failed", resolved_at=now, updated_at=now)
        for sku, n in self._qty_by_sku(order_id).items():
            if sku in self.inventory:
                inv = self.inventory[sku]
                _check(inv["reserved"] - n >= 0, f"inventory {sku} reserved")
                inv.update(reserved=inv["reserved"] - n, updated_at=now)
        voided = any(t["tender_type"] == "card" and t["status"] == "voided" for t in self.tenders_of(order_id))
        o.update(
            status=status,
            payment_status="voided" if voided else "failed",
            failure_code=code,
            failure_reason=reason,
            failed_at=now,
            updated_at=now,
            lease_owner=None,
            lease_until=None,
        )
        self._audit(now, f"checkout.{status}", order_id, detail={"code": code, "reason": reason})
        return {"outcome": status, "status": status}

    # ------------------------------------------------------------ leases and captures

    def claim_unfinished(
        self,
        now: datetime,
        owner: str,
        lease_s: float,
        *,
        take_own: bool,
        limit: int,
        older_than_s: float,
        only: uuid.UUID | None,
    ) -> list[uuid.UUID]:
        def eligible(o: Row) -> bool:
            if o["status"] not in OPEN_ORDER or not o["updated_at"] < now - timedelta(seconds=older_than_s):
                return False
            lease_ok = o["lease_until"] is None or o["lease_until"] < now or (take_own and o["lease_owner"] == owner)
            if not lease_ok or (only is not None and o["id"] != only):
                return False
            if only is not None or o["status"] != "pending_payment" or (take_own and o["lease_owner"] == owner):
                return True
            return any(t["status"] in CHARGING for t in self.tenders_of(o["id"]))

        chosen = sorted((o for o in self.orders.values() if eligible(o)), key=lambda o: o["created_at"])[:limit]
        for o in chosen:
            o.update(lease_owner=owner, lease_until=now + timedelta(seconds=lease_s), updated_at=now)
        return [o["id"] for o in chosen]

    def release_lease(self, order_id: uuid.UUID, owner: str) -> None:
        o = self.orders.get(order_id)
        if o is not None and o["lease_owner"] == owner:
            o.update(lease_owner=None, lease_until=None)

    def claim_uncaptured(self, limit: int) -> list[Row]:
        rows = sorted(
            (t for t in self.txs.values() if t["capture_status"] == "pending" and t["status"] == "approved"),
            key=lambda t: t["created_at"],
        )
        return [
            {k: t[k] for k in ("id", "order_id", "reference_id", "payment_processor_id", "amount")}
            for t in rows[:limit]
        ]

    def set_captured(self, now: datetime, tender_id: uuid.UUID) -> None:
        t = self.txs.get(tender_id)
        if t is None or t["capture_status"] != "pending":
            return
        t.update(capture_status="captured", updated_at=now)
        self._audit(now, "tender.captured", t["order_id"], tender_id)
        o = self.orders[t["order_id"]]
        others = [x for x in self.tenders_of(o["id"]) if x["capture_status"] == "pending" and x["id"] != tender_id]
        if o["payment_status"] == "authorized" and not others:
            o.update(payment_status="paid", updated_at=now)

    # ------------------------------------------------------------ reads

    def load(self, order_id: uuid.UUID | None, key: str | None) -> tuple[Row, list[Row], list[Row]] | None:
        if order_id is None:
            order_id = self.by_key.get(key or "")
        o = self.orders.get(order_id) if order_id is not None else None
        if o is None:
            return None
        order_rank = {"payment": 0, "refund": 1}
        tenders = sorted(
            self.tenders_of(o["id"]), key=lambda t: (order_rank[t["kind"]], t["tender_index"], t["created_at"])
        )
        refunds = sorted((r for r in self.refunds.values() if r["order_id"] == o["id"]), key=lambda r: r["created_at"])
        return dict(o), [tender_view(t) for t in tenders], [dict(r) for r in refunds]

    def tender(self, transaction_id: uuid.UUID) -> Row | None:
        t = self.txs.get(transaction_id)
        return None if t is None else tender_view(t)

    def audit(
        self,
        now: datetime,
        kind: str,
        order_id: uuid.UUID | None,
        transaction_id: uuid.UUID | None,
        detail: dict[str, Any] | None,
    ) -> None:
        self._audit(now, kind, order_id, transaction_id, detail)

    # ------------------------------------------------------------ gw_void_checkout

    def void_order(self, now: datetime, order_id: uuid.UUID) -> dict[str, Any]:
        o = self.orders.get(order_id)
        if o is None:
            return {"outcome": "not_found"}
        if o["status"] == "voided":
            return {"outcome": "already"}
        if o["status"] != "completed" or o["refunded_amount"] > 0:
            return {"outcome": "not_voidable", "status": o["status"]}
        if "void-refund-pending" in PROPOSED and any(
            r["order_id"] == order_id and r["status"] == "pending" for r in self.refunds.values()
        ):
            return {"outcome": "not_voidable", "status": o["status"]}
        if any(t["status"] not in ("voided", "failed") for t in self._payment_cards(order_id)):
            return {"outcome": "not_ready"}
        payments = [t for t in self.tenders_of(order_id) if t["kind"] == "payment"]
        cash = sum(t["amount"] for t in payments if t["tender_type"] == "cash")
        card = sum(t["amount"] for t in payments if t["tender_type"] == "card")
        s = self.sessions.get(o["register_session_id"]) if o["register_session_id"] is not None else None
        if s is not None:
            _check(
                s["cash_total"] - cash >= 0 and s["card_total"] - card >= 0 and s["checkout_count"] >= 1,
                "register_sessions totals >= 0",
            )
        for t in payments:
            if t["tender_type"] == "cash":
                t.update(status="voided", updated_at=now)
        for sku, n in self._qty_by_sku(order_id, minus_restocked=True).items():
            if sku in self.inventory:
                inv = self.inventory[sku]
                inv.update(on_hand=inv["on_hand"] + n, updated_at=now)
        for line in self.items.get(order_id, []):
            line["restocked"] = line["quantity"]
        if o["customer_id"] is not None and o["loyalty_points"] > 0:
            self.loyalty[o["customer_id"]] = self.loyalty.get(o["customer_id"], 0) - o["loyalty_points"]
            self.loyalty_ledger.append(
                {
                    "customer_id": o["customer_id"],
                    "order_id": order_id,
                    "points": -o["loyalty_points"],
                    "reason": "void",
                }
            )
        if s is not None:
            s.update(
                cash_total=s["cash_total"] - cash,
                card_total=s["card_total"] - card,
                checkout_count=s["checkout_count"] - 1,
            )
        o.update(status="voided", payment_status="voided", updated_at=now)
        self._audit(now, "checkout.voided", order_id, detail={"total": o["total"]})
        return {"outcome": "voided"}

    # ------------------------------------------------------------ gw_begin_refund / gw_finish_refund

    def begin_refund(self, now: datetime, p: dict[str, Any]) -> dict[str, Any]:
        existing_id = self.refund_by_key.get(p["idempotency_key"])
        if existing_id is not None:
            existing = self.refunds[existing_id]
            if existing["request_hash"] != p["request_hash"] or existing["order_id"] != uuid.UUID(p["order_id"]):
                return {"outcome": "conflict"}
            return {"outcome": "exists", "refund_id": str(existing_id)}
        o = self.orders.get(uuid.UUID(p["order_id"]))
        if o is None:
            return {"outcome": "not_found"}
        if o["status"] not in ("completed", "partially_refunded"):
            return {"outcome": "not_refundable", "status": o["status"]}
        if "void-intent" in PROPOSED and any(
            e["order_id"] == o["id"] and e["kind"] == "checkout.void_requested" for e in self.audit_events
        ):
            return {"outcome": "not_refundable", "status": "void requested"}
        amount = int(p["amount"])
        taken = sum(
            r["amount"]
            for r in self.refunds.values()
            if r["order_id"] == o["id"] and r["status"] in ("pending", "completed")
        )
        if taken + amount > o["total"]:
            return {"outcome": "over_limit", "refundable": o["total"] - taken}
        txs = self.tenders_of(o["id"])

        def left(t: Row) -> int:
            return int(t["amount"]) - sum(
                int(r["amount"])
                for r in txs
                if r["kind"] == "refund"
                and r["tender_index"] == t["tender_index"]
                and r["status"] in ("pending", "processing", "unknown", "approved")
            )

        candidates = [t for t in txs if t["kind"] == "payment" and t["status"] == "approved" and left(t) >= amount]
        candidates.sort(key=lambda t: (t["tender_type"] != "card", t["tender_index"]))
        if not candidates:
            return {
                "outcome": "over_limit",
                "refundable": o["total"] - taken,
                "reason": "no single tender has that much left to refund",
            }
        _check(amount > 0, "refunds amount > 0")
        tender = candidates[0]
        refund_id = uuid.UUID(p["refund_id"])
        self.refunds[refund_id] = {
            "id": refund_id,
            "order_id": o["id"],
            "idempotency_key": p["idempotency_key"],
            "request_hash": p["request_hash"],
            "amount": amount,
            "restock": bool(p["restock"]),
            "status": "pending",
            "failure_reason": None,
            "created_at": now,
            "completed_at": None,
        }
        self.refund_by_key[p["idempotency_key"]] = refund_id
        self._insert_tx(
            self._new_tx(
                now,
                id=uuid.UUID(p["transaction_id"]),
                order_id=o["id"],
                kind="refund",
                refund_id=refund_id,
                tender_index=tender["tender_index"],
                tender_type=tender["tender_type"],
                operation="return" if tender["tender_type"] == "card" else "cash",
                amount=amount,
                reference_id=p["reference_id"],
                payment_processor_id=tender["payment_processor_id"],
                timeout_s=p["timeout_s"],
            )
        )
        self._audit(now, "refund.requested", o["id"], detail={"amount": amount, "refund_id": p["refund_id"]})
        return {"outcome": "created", "refund_id": p["refund_id"]}

    def finish_refund(self, now: datetime, refund_id: uuid.UUID, ok: bool, reason: str) -> dict[str, Any]:
        r = self.refunds.get(refund_id)
        if r is None:
            return {"outcome": "not_found"}
        if r["status"] != "pending":
            return {"outcome": "already", "status": r["status"]}
        txs = [t for t in self.tenders_of(r["order_id"]) if t["refund_id"] == refund_id]
        if not ok:
            r.update(status="failed", failure_reason=reason)
            for t in txs:
                if t["status"] == "pending":
                    t.update(status="failed", updated_at=now)
            self._audit(now, "refund.failed", r["order_id"], detail={"refund_id": str(refund_id), "reason": reason})
            return {"outcome": "failed"}
        o = self.orders[r["order_id"]]
        if "void-refund-pending" in PROPOSED and o["status"] not in COMPLETED:
            return {"outcome": "not_refundable", "status": o["status"]}
        _check(o["refunded_amount"] + r["amount"] <= o["total"], "refunded_amount <= total")
        for t in txs:
            if t["tender_type"] == "cash":
                t.update(status="approved", approved_amount=t["amount"], updated_at=now)
        before = (o["loyalty_points"] * o["refunded_amount"]) // max(o["total"], 1)
        after = (o["loyalty_points"] * (o["refunded_amount"] + r["amount"])) // max(o["total"], 1)
        points = after - before
        if o["customer_id"] is not None and points > 0:
            self.loyalty[o["customer_id"]] = self.loyalty.get(o["customer_id"], 0) - points
            self.loyalty_ledger.append(
                {"customer_id": o["customer_id"], "order_id": o["id"], "points": -points, "reason": "refund"}
            )
        if r["restock"]:
            for sku, n in self._qty_by_sku(o["id"], minus_restocked=True).items():
                if sku in self.inventory:
                    inv = self.inventory[sku]
                    inv.update(on_hand=inv["on_hand"] + n, updated_at=now)
            for line in self.items.get(o["id"], []):
                line["restocked"] = line["quantity"]
        if o["register_session_id"] is not None:
            s = self.sessions[o["register_session_id"]]
            s["refund_total"] += r["amount"]
        r.update(status="completed", completed_at=now)
        refunded = o["refunded_amount"] + r["amount"]
        state = "refunded" if refunded >= o["total"] else "partially_refunded"
        o.update(refunded_amount=refunded, status=state, payment_status=state, updated_at=now)
        self._audit(now, "refund.completed", o["id"], detail={"refund_id": str(refund_id), "amount": r["amount"]})
        return {"outcome": "completed"}

    def unresolved_refunds(self, now: datetime, older_than_s: float = 0.0) -> list[Row]:
        rows = []
        for t in self.txs.values():
            if (
                t["kind"] == "refund"
                and self.refunds[t["refund_id"]]["status"] == "pending"
                and (now - t["updated_at"]).total_seconds() >= older_than_s
            ):
                rows.append({**t, "refund_row": t["refund_id"]})
        return rows

    def mark_void_requested(self, now: datetime, transaction_id: uuid.UUID) -> None:
        t = self.txs.get(transaction_id)
        if t is not None:
            t.update(void_requested_at=t["void_requested_at"] or now, updated_at=now)

    def void_pending(self, order_id: uuid.UUID) -> bool:
        return any(
            t["kind"] == "payment" and t["void_requested_at"] is not None and t["status"] == "approved"
            for t in self.tenders_of(order_id)
        )

    def mark_refund_sent(self, now: datetime, transaction_id: uuid.UUID, timeout_s: int) -> bool:
        t = self.txs.get(transaction_id)
        if t is None or t["status"] not in ("pending", "processing"):
            return False
        t.update(status="processing", sent_at=now, timeout_s=timeout_s, attempts=t["attempts"] + 1, updated_at=now)
        return True

    def fail_unsent_refund(self, now: datetime, refund_id: uuid.UUID, reason: str) -> bool:
        r = self.refunds.get(refund_id)
        txs = [t for t in self.txs.values() if t["refund_id"] == refund_id and t["status"] == "pending"]
        if r is None or r["status"] != "pending" or not txs:
            return False
        for t in txs:
            t.update(status="failed", last_error=reason, updated_at=now)
        r.update(status="failed", failure_reason=reason)
        self._audit(now, "refund.failed", r["order_id"], detail={"refund_id": str(refund_id), "reason": reason})
        return True

    # ------------------------------------------------------------ maintenance (find_orphaned_payments ...)

    def orphans(self, now: datetime) -> list[Row]:
        rows = []
        for t in sorted(self.txs.values(), key=lambda t: t["created_at"]):
            o = self.orders[t["order_id"]]
            if (
                t["kind"] == "payment"
                and t["tender_type"] == "card"
                and t["status"] == "approved"
                and o["status"] not in COMPLETED
            ):
                rows.append(
                    {
                        "transaction_id": t["id"],
                        "order_id": o["id"],
                        "order_number": o["order_number"],
                        "order_status": o["status"],
                        "reference_id": t["reference_id"],
                        "terminal_id": t["payment_processor_id"],
                        "amount": t["amount"],
                        "approved_amount": t["approved_amount"],
                        "created_at": t["created_at"],
                        "age": now - t["created_at"],
                    }
                )
        return rows

    def stale_pending(self, now: datetime, minutes: int) -> list[uuid.UUID]:
        """The orders cleanup_stale_pending_orders would cancel, oldest first."""
        limit = now - timedelta(minutes=minutes)
        return [
            o["id"]
            for o in sorted(self.orders.values(), key=lambda o: o["created_at"])
            if o["status"] == "pending_payment"
            and o["created_at"] < limit
            and not any(t["tender_type"] == "card" and t["status"] in CHARGING for t in self.tenders_of(o["id"]))
        ]

    def unresolved(self, now: datetime, older_than_s: float) -> list[Row]:
        rows = []
        for t in self.txs.values():
            since = t["sent_at"] or t["created_at"]
            if t["status"] in ("processing", "unknown") and since < now - timedelta(seconds=older_than_s):
                rows.append(
                    {
                        "id": t["id"],
                        "order_id": t["order_id"],
                        "reference_id": t["reference_id"],
                        "payment_processor_id": t["payment_processor_id"],
                        "status": t["status"],
                        "amount": t["amount"],
                        "kind": t["kind"],
                        "age_s": (now - since).total_seconds(),
                    }
                )
        return sorted(rows, key=lambda r: -r["age_s"])

    def half_voided(self) -> list[uuid.UUID]:
        """Completed orders with a card tender already voided (a void that stopped half-way)."""
        requested: set[uuid.UUID] = set()
        if "void-intent" in PROPOSED:
            requested = {e["order_id"] for e in self.audit_events if e["kind"] == "checkout.void_requested"}
        return [
            o["id"]
            for o in self.orders.values()
            if o["status"] == "completed"
            and (
                o["id"] in requested
                or any(
                    t["status"] == "voided" or (t["status"] == "approved" and t["void_requested_at"] is not None)
                    for t in self._payment_cards(o["id"])
                )
            )
        ]

    def open_on_terminal(self, terminal_id: str) -> int:
        n = 0
        for t in self.txs.values():
            if t["payment_processor_id"] != terminal_id:
                continue
            o = self.orders[t["order_id"]]
            if t["status"] in ("processing", "unknown") or (t["status"] == "approved" and o["status"] in OPEN_ORDER):
                n += 1
        return n
