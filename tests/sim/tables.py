"""The store's tables in memory, and the SQL of `sql/002` to `sql/006` as plain functions.

Each method is one statement or one server-side function, applied atomically (the fake
database runs it between two awaits), with the same answers as the SQL: the same outcome
dicts, the same from-status guards, the same lease fencing (on the database's clock: the
`now` each statement is given), the same CHECK constraints (violations raise
PermanentStoreError and change nothing). Rows are dicts keyed like the columns; the fake
store (tests/sim/store.py) turns them into the typed rows of gatewayd.checkout.machine exactly
as CheckoutStore does with asyncpg records. The differential test replays a seed's history
against PostgreSQL to keep this second implementation honest.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from typing import Any, Literal

from gatewayd.errors import PermanentStoreError

OPEN_ORDER = ("pending_payment", "payment_processing", "payment_authorized")
COMPLETED = ("completed", "refunded", "partially_refunded")
FAILED_ORDER = ("payment_failed", "cancelled")
# Orders whose settled charges are orphans to refund (they did not complete, or were voided).
ORPHAN_ORDER = (*FAILED_ORDER, "voided")


def _money(t: Row) -> bool:
    """A settled charge that is money received: a sale, or a captured authorization (never a hold)."""
    return not (t["operation"] == "auth" and t["capture_status"] != "captured")


CHARGING = ("processing", "unknown", "approved")
IN_DOUBT = ("processing", "unknown")

Row = dict[str, Any]
# What a fenced write says (gatewayd.store.checkouts.Written).
Written = Literal["ok", "lease_lost", "stale"]


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

    def _took_by_sku(self, order_id: uuid.UUID) -> dict[str, int]:
        """sum(coalesce(reserved, quantity)) per SKU: what the order took off the shelf."""
        qty: dict[str, int] = {}
        for line in self.items.get(order_id, []):
            took = line["quantity"] if line["reserved"] is None else line["reserved"]
            qty[line["sku"]] = qty.get(line["sku"], 0) + took
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
            "failure_code": None,
            "raw_response": None,
            "attempts": 0,
            "last_error": None,
            "timeout_s": None,
            "sent_at": None,
            "resolved_at": None,
            "created_at": now,
            "updated_at": now,
            "void_requested_at": None,
            "settled_at": None,
            "payment_type": None,
            "entry_method": None,
            "application_label": None,
            "aid": None,
            "host_reference": None,
            "receipt_customer": None,
            "receipt_merchant": None,
            "decline_reason": None,
            "host_code": None,
            "host_message": None,
        }
        row.update(cols)
        return row

    # ------------------------------------------------------------ leases (gw_lease_held, gw_take_lease)

    def lease_held(self, now: datetime, order_id: uuid.UUID | None, owner: str | None) -> bool:
        """gw_lease_held: `owner` holds the order's lease at `now` (a NULL owner never does)."""
        o = self.orders.get(order_id) if order_id is not None else None
        return (
            o is not None
            and owner is not None
            and o["lease_owner"] == owner
            and o["lease_until"] is not None
            and o["lease_until"] > now
        )

    def _held_via_tender(self, now: datetime, tender_id: uuid.UUID, owner: str | None) -> bool:
        tx = self.txs.get(tender_id)
        return tx is not None and self.lease_held(now, tx["order_id"], owner)

    @staticmethod
    def _lease_lost(now: datetime, o: Row, owner: str | None) -> bool:
        """The commit/fail fence: `p_owner IS NOT NULL AND (lease_owner IS DISTINCT FROM p_owner
        OR lease_until <= now())` (a NULL lease_until compares as NULL: not lost)."""
        if owner is None:
            return False
        return o["lease_owner"] != owner or (o["lease_until"] is not None and o["lease_until"] <= now)

    def lease_live(self, now: datetime) -> dict[uuid.UUID, bool]:
        """Every order with a lease owner: whether its lease is live at `now` (for the differential
        replay, which runs on another clock)."""
        return {
            oid: o["lease_until"] is not None and o["lease_until"] > now
            for oid, o in self.orders.items()
            if o["lease_owner"] is not None
        }

    def take_lease(self, now: datetime, order_id: uuid.UUID, owner: str, lease_s: float) -> bool | None:
        o = self.orders.get(order_id)
        if o is None:
            return None
        if o["lease_until"] is None or o["lease_until"] <= now or (owner is not None and o["lease_owner"] == owner):
            o.update(lease_owner=owner, lease_until=now + timedelta(seconds=float(lease_s)))
            return True
        return False

    def renew_leases(self, now: datetime, order_ids: Iterable[uuid.UUID], owner: str, lease_s: float) -> set[uuid.UUID]:
        renewed: set[uuid.UUID] = set()
        for order_id in dict.fromkeys(order_ids):
            if self.lease_held(now, order_id, owner):
                self.orders[order_id]["lease_until"] = now + timedelta(seconds=float(lease_s))
                renewed.add(order_id)
        return renewed

    def release_lease(self, order_id: uuid.UUID, owner: str) -> None:
        o = self.orders.get(order_id)
        if o is not None and owner is not None and o["lease_owner"] == owner:
            o.update(lease_owner=None, lease_until=None)

    # ------------------------------------------------------------ gw_checkout_intent (sql/010)

    def prepare(self, now: datetime, p: dict[str, Any]) -> dict[str, Any]:
        """gw_checkout_intent: the intent; its first card tender stamped sent when `stamp` names
        it (as mark_sent writes it), a checkout without a card tender completed in the same
        transaction when `points_per_unit` is given."""
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
        # Each line records what it reserved: nothing for a SKU without an inventory row.
        self.items[order_id] = [
            {
                "line_no": i,
                "sku": line["sku"],
                "quantity": int(line["quantity"]),
                "unit_price": int(line["unit_price"]),
                "restocked": 0,
                "reserved": int(line["quantity"]) if line["sku"] in self.inventory else 0,
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
                    payment_type=t.get("payment_type"),
                )
            )
        stamp = p.get("stamp")
        stamped = None if stamp is None else self.txs.get(uuid.UUID(stamp))
        if stamped is not None and stamped["order_id"] == order_id and stamped["tender_type"] == "card":
            stamped.update(status="processing", sent_at=now, attempts=1)
            self.orders[order_id].update(status="payment_processing", payment_status="processing")
        self._audit(now, "checkout.prepared", order_id, detail={"idempotency_key": p["idempotency_key"]})
        result: dict[str, Any] = {
            "outcome": "created",
            "id": str(order_id),
            "request_hash": p["request_hash"],
            "order_number": number,
        }
        if p.get("points_per_unit") is not None and not any(t["type"] == "card" for t in p["tenders"]):
            result["committed"] = self.commit(
                now, order_id, p["points_per_unit"], p["minor_per_unit"], p["lease_owner"]
            )["outcome"]
        return result

    def retire_key(self, now: datetime, order_id: uuid.UUID, request_hash: str) -> str:
        """gw_retire_key (sql/007): a checkout that failed only because its terminal could not be
        reached gives its key back ('retired'); else 'gone', 'conflict' or 'final'."""
        o = self.orders.get(order_id)
        if o is None or o.get("retired_key") is not None:
            return "gone"
        if o["request_hash"] != request_hash:
            return "conflict"
        unreached = ("terminal_offline", "terminal_busy")
        if (
            o["status"] != "payment_failed"
            or o["failure_code"] not in unreached
            or any(
                t["tender_type"] == "card"
                and (
                    t["kind"] != "payment"
                    or t["status"] != "failed"
                    or (t["sent_at"] is not None and t["failure_code"] not in unreached)
                )
                for t in self.tenders_of(order_id)
            )
        ):
            return "final"
        key = o["idempotency_key"]
        o.update(retired_key=key, idempotency_key=f"retired {order_id}", updated_at=now)
        del self.by_key[key]
        self.by_key[o["idempotency_key"]] = order_id
        self._audit(now, "checkout.key_retired", order_id, detail={"idempotency_key": key})
        return "retired"

    def find_key(self, key: str) -> tuple[uuid.UUID, str] | None:
        order_id = self.by_key.get(key)
        return None if order_id is None else (order_id, self.orders[order_id]["request_hash"])

    # ------------------------------------------------------------ tenders (fenced by the order's lease)

    def mark_sent(self, now: datetime, order_id: uuid.UUID, tender_id: uuid.UUID, owner: str) -> Written:
        if not self.lease_held(now, order_id, owner):
            return "lease_lost"
        order = self.orders[order_id]
        if order["status"] not in ("pending_payment", "payment_processing"):
            return "stale"
        order.update(status="payment_processing", payment_status="processing", updated_at=now)
        tx = self.txs.get(tender_id)
        if tx is None or tx["order_id"] != order_id or tx["status"] not in ("pending", "processing", "unknown"):
            return "stale"
        tx.update(status="processing", sent_at=now, attempts=tx["attempts"] + 1, updated_at=now)
        return "ok"

    def record_tender(
        self,
        now: datetime,
        tender_id: uuid.UUID,
        status: str,
        owner: str,
        *,
        from_statuses: Iterable[str],
        approved_amount: int | None = None,
        auth_code: str | None = None,
        card_brand: str | None = None,
        last4: str | None = None,
        batch_number: str | None = None,
        transaction_number: str | None = None,
        status_code: str | None = None,
        failure_code: str | None = None,
        raw: dict[str, Any] | None = None,
        last_error: str | None = None,
        audit: dict[str, Any] | None = None,
        decline_reason: str | None = None,
        **receipt: str | None,
    ) -> Written:
        if not self._held_via_tender(now, tender_id, owner):
            return "lease_lost"
        tx = self.txs[tender_id]
        if tx["status"] not in list(from_statuses):
            return "stale"
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
            failure_code=failure_code,
            decline_reason=decline_reason,
            **{k: keep(v, tx[k]) for k, v in receipt.items()},
            capture_status=None if status in ("voided", "failed") else tx["capture_status"],
            resolved_at=None if status in IN_DOUBT else now,
            updated_at=now,
        )
        self._audit(now, f"tender.{status}", tx["order_id"], tender_id, audit or {})
        return "ok"

    def record_and_finish(
        self,
        now: datetime,
        tender_id: uuid.UUID,
        status: str,
        owner: str,
        *,
        then: str | None = None,
        points_per_unit: int = 0,
        minor_per_unit: int = 1,
        fail_code: str | None = None,
        fail_reason: str | None = None,
        fail_status: str = "payment_failed",
        **record: Any,
    ) -> tuple[Written, str | None]:
        """gw_record_tender_and (sql/010): record_tender, then in the same transaction the order's
        commit or fail when asked and the answer was stored."""
        written = self.record_tender(now, tender_id, status, owner, **record)
        if written != "ok" or then is None:
            return written, None
        order_id = self.txs[tender_id]["order_id"]
        try:  # a subtransaction of its own: a refusal of the schema never takes the answer with it
            if then == "commit":
                return written, self.commit(now, order_id, points_per_unit, minor_per_unit, owner)["outcome"]
            assert fail_code is not None and fail_reason is not None
            return written, self.fail(now, order_id, fail_code, fail_reason, fail_status, owner)["outcome"]
        except PermanentStoreError:
            return written, "error"

    def mark_settled(self, now: datetime, tender_id: uuid.UUID, owner: str, reason: str) -> Written:
        if not self._held_via_tender(now, tender_id, owner):
            return "lease_lost"
        tx = self.txs[tender_id]
        if tx["status"] != "approved":
            return "stale"
        tx.update(settled_at=tx["settled_at"] or now, last_error=reason, updated_at=now)
        self._audit(now, "tender.settled", tx["order_id"], tender_id, {"reason": reason})
        return "ok"

    def late_approval(self, now: datetime, tender_id: uuid.UUID, approved_amount: int) -> bool:
        tx = self.txs[tender_id]
        if tx["status"] != "failed" or tx["failure_code"] != "card_not_charged":
            return False
        tx.update(
            status="approved",
            approved_amount=approved_amount,
            failure_code=None,
            decline_reason=None,
            last_error="approved after all: the terminal answered a late charge",
            resolved_at=now,
            updated_at=now,
        )
        self._audit(now, "tender.late_approval", tx["order_id"], tender_id, {"amount": approved_amount})
        return True

    def mark_void_requested(self, now: datetime, tender_id: uuid.UUID, owner: str) -> Written:
        if not self._held_via_tender(now, tender_id, owner):
            return "lease_lost"
        tx = self.txs[tender_id]
        tx.update(void_requested_at=tx["void_requested_at"] or now, updated_at=now)
        return "ok"

    # ------------------------------------------------------------ gw_commit_checkout

    def commit(
        self, now: datetime, order_id: uuid.UUID, points_per_unit: int, minor_per_unit: int, owner: str | None
    ) -> dict[str, Any]:
        o = self.orders.get(order_id)
        if o is None:
            return {"outcome": "not_found"}
        if o["status"] in ("completed", "refunded", "partially_refunded", "voided"):
            return {"outcome": "already", "status": o["status"]}
        if o["status"] not in OPEN_ORDER:
            return {"outcome": "not_committable", "status": o["status"]}
        if self._lease_lost(now, o, owner):
            return {"outcome": "lease_lost", "status": o["status"]}
        if any(t["status"] != "approved" or t["approved_amount"] != t["amount"] for t in self._payment_cards(order_id)):
            return {"outcome": "not_ready", "status": o["status"]}
        payments = [t for t in self.tenders_of(order_id) if t["kind"] == "payment"]
        took = {sku: n for sku, n in self._took_by_sku(order_id).items() if n > 0 and sku in self.inventory}
        for sku, n in took.items():
            inv = self.inventory[sku]
            _check(
                inv["on_hand"] - n >= 0 and inv["reserved"] - n >= 0 and inv["reserved"] - n <= inv["on_hand"] - n,
                f"inventory {sku}",
            )
        for t in payments:
            if t["tender_type"] == "cash":
                t.update(status="approved", approved_amount=t["amount"], resolved_at=now, updated_at=now)
        for sku, n in took.items():
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
        self,
        now: datetime,
        order_id: uuid.UUID,
        code: str,
        reason: str,
        status: str = "payment_failed",
        owner: str | None = None,
    ) -> dict[str, Any]:
        o = self.orders.get(order_id)
        if o is None:
            return {"outcome": "not_found"}
        if o["status"] in FAILED_ORDER:
            return {"outcome": "already", "status": o["status"]}
        if o["status"] not in OPEN_ORDER:
            return {"outcome": "not_failable", "status": o["status"]}
        if self._lease_lost(now, o, owner):
            return {"outcome": "lease_lost", "status": o["status"]}
        # Nothing in doubt, and an approved charge only once its batch has settled (an orphan to return).
        if any(
            t["status"] in IN_DOUBT or (t["status"] == "approved" and t["settled_at"] is None)
            for t in self._payment_cards(order_id)
        ):
            return {"outcome": "not_ready", "status": o["status"]}
        took = {sku: n for sku, n in self._took_by_sku(order_id).items() if n > 0 and sku in self.inventory}
        for sku, n in took.items():
            _check(self.inventory[sku]["reserved"] - n >= 0, f"inventory {sku} reserved")
        for t in self.tenders_of(order_id):
            if t["kind"] == "payment" and t["status"] == "pending":
                t.update(status="voided" if t["tender_type"] == "cash" else "failed", resolved_at=now, updated_at=now)
        for sku, n in took.items():
            inv = self.inventory[sku]
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

    # ------------------------------------------------------------ recovery's claims and captures

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
            ours = take_own and o["lease_owner"] == owner
            lease_ok = o["lease_until"] is None or o["lease_until"] <= now or ours
            return lease_ok and (only is None or o["id"] == only)

        chosen = sorted((o for o in self.orders.values() if eligible(o)), key=lambda o: o["created_at"])[:limit]
        for o in chosen:
            prev = o["lease_owner"]
            o.update(lease_owner=owner, lease_until=now + timedelta(seconds=lease_s), updated_at=now)
            if prev is not None and prev != owner:  # taken over: a "not found" counts from now
                for t in self.tenders_of(o["id"]):
                    if t["status"] in ("processing", "unknown") and t["sent_at"] is not None:
                        t.update(sent_at=max(t["sent_at"], now), updated_at=now)
        return [o["id"] for o in chosen]

    def claim_uncaptured(self, limit: int) -> list[Row]:
        """Authorizations waiting for their capture, not lost to a settle."""
        return sorted(
            (
                t
                for t in self.txs.values()
                if t["capture_status"] == "pending" and t["status"] == "approved" and t["settled_at"] is None
            ),
            key=lambda t: t["created_at"],
        )[:limit]

    def set_captured(self, now: datetime, tender_id: uuid.UUID, owner: str) -> Written:
        if not self._held_via_tender(now, tender_id, owner):
            return "lease_lost"
        t = self.txs[tender_id]
        if t["capture_status"] != "pending":
            return "stale"
        o = self.orders[t["order_id"]]
        others = [x for x in self.tenders_of(o["id"]) if x["capture_status"] == "pending" and x["id"] != tender_id]
        t.update(capture_status="captured", updated_at=now)
        self._audit(now, "tender.captured", t["order_id"], tender_id)
        if o["payment_status"] == "authorized" and not others:
            o.update(payment_status="paid", updated_at=now)
        return "ok"

    # ------------------------------------------------------------ reads

    def load(self, order_id: uuid.UUID | None, key: str | None) -> tuple[Row, list[Row], list[Row]] | None:
        """The order, its transactions (by kind, tender index, creation) and refunds, as copies."""
        if order_id is None:
            order_id = self.by_key.get(key or "")
        o = self.orders.get(order_id) if order_id is not None else None
        if o is None:
            return None
        tenders = sorted(self.tenders_of(o["id"]), key=lambda t: (t["kind"], t["tender_index"], t["created_at"]))
        refunds = sorted((r for r in self.refunds.values() if r["order_id"] == o["id"]), key=lambda r: r["created_at"])
        return dict(o), [dict(t) for t in tenders], [dict(r) for r in refunds]

    def tender(self, transaction_id: uuid.UUID) -> Row | None:
        t = self.txs.get(transaction_id)
        return None if t is None else dict(t)

    def audit(
        self,
        now: datetime,
        kind: str,
        order_id: uuid.UUID | None,
        transaction_id: uuid.UUID | None,
        detail: dict[str, Any] | None,
    ) -> None:
        self._audit(now, kind, order_id, transaction_id, detail)

    # ------------------------------------------------------------ gw_restock

    def restock(self, now: datetime, order_id: uuid.UUID, lines: list[dict[str, Any]] | None) -> None:
        """Every line (lines None) or the named [{sku, quantity}]; only units the line took off the
        shelf (what it reserved) go back into inventory."""
        left: dict[str, int] = {}
        if lines is not None:
            for line in lines:
                left[line["sku"]] = left.get(line["sku"], 0) + int(line["quantity"])
        for item in sorted(self.items.get(order_id, []), key=lambda i: i["line_no"]):
            took = item["quantity"] if item["reserved"] is None else item["reserved"]
            want = item["quantity"] if lines is None else left.get(item["sku"], 0)
            put = min(want, item["quantity"] - item["restocked"])
            if put <= 0:
                continue
            back = max(min(put, took - item["restocked"]), 0)
            item["restocked"] += put
            inv = self.inventory.get(item["sku"])
            if inv is not None:
                inv.update(on_hand=inv["on_hand"] + back, updated_at=now)
            if lines is not None:
                left[item["sku"]] = want - put

    # ------------------------------------------------------------ gw_void_checkout

    def void_order(self, now: datetime, order_id: uuid.UUID, owner: str) -> dict[str, Any]:
        """CheckoutStore.void_order: gw_void_checkout under the lease ('already' whoever holds it)."""
        o = self.orders[order_id]
        if o["status"] == "voided":
            return {"outcome": "already"}
        if not self.lease_held(now, order_id, owner):
            return {"outcome": "lease_lost"}
        if o["status"] != "completed" or o["refunded_amount"] > 0:
            return {"outcome": "not_voidable", "status": o["status"]}
        if any(
            t["status"] not in ("voided", "failed") and not (t["status"] == "approved" and t["settled_at"] is not None)
            for t in self._payment_cards(order_id)
        ):
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
        self.restock(now, order_id, None)
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
        o.update(status="voided", payment_status="voided", lease_owner=None, lease_until=None, updated_at=now)
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
        orphan = o["status"] in ORPHAN_ORDER
        if o["status"] not in ("completed", "partially_refunded") and not orphan:
            return {"outcome": "not_refundable", "status": o["status"]}
        txs = self.tenders_of(o["id"])
        if any(
            t["kind"] == "payment"
            and t["status"] == "approved"
            and t["void_requested_at"] is not None
            and t["settled_at"] is None
            for t in txs
        ):
            return {"outcome": "void_pending"}
        amount = int(p["amount"])
        taken = sum(
            r["amount"]
            for r in self.refunds.values()
            if r["order_id"] == o["id"] and r["status"] in ("pending", "completed")
        )
        lines = p.get("lines")
        named = isinstance(lines, list) and len(lines) > 0
        if orphan:
            limit = sum(
                t["approved_amount"] or 0
                for t in txs
                if t["kind"] == "payment"
                and t["tender_type"] == "card"
                and t["status"] in ("approved", "refunded")
                and t["settled_at"] is not None
                and _money(t)
            )
            if limit == 0:
                return {"outcome": "not_refundable", "status": o["status"]}
            if named:
                return {"outcome": "bad_lines", "reason": "nothing of this order left the shelf"}
        else:
            limit = o["total"]
        if taken + amount > limit:
            return {"outcome": "over_limit", "refundable": limit - taken}
        if p["restock"] and not orphan:
            if not named:
                if taken + amount < limit:
                    return {
                        "outcome": "bad_lines",
                        "reason": "a partial refund with restock names the lines it puts back",
                    }
            else:
                asked: dict[str, int] = {}
                for line in lines or []:
                    asked[line["sku"]] = asked.get(line["sku"], 0) + int(line["quantity"])
                on_order: dict[str, int] = {}
                for item in self.items.get(o["id"], []):
                    on_order[item["sku"]] = on_order.get(item["sku"], 0) + item["quantity"] - item["restocked"]
                bad = [sku for sku, qty in asked.items() if sku not in on_order or qty > on_order[sku]]
                if bad:
                    return {"outcome": "bad_lines", "reason": "more than is left on the order for " + json.dumps(bad)}

        def left(t: Row) -> int:
            approved = t["amount"] if t["approved_amount"] is None else t["approved_amount"]
            return int(approved) - sum(
                int(r["amount"])
                for r in txs
                if r["kind"] == "refund"
                and r["tender_index"] == t["tender_index"]
                and r["status"] in ("pending", "processing", "unknown", "approved")
            )

        # sql/007: what each tender can still refund; the one named (tender_index), else a card
        # with enough left first, else the cash; a refusal lists them all.
        money = sorted(
            (
                t
                for t in txs
                if t["kind"] == "payment"
                and t["status"] == "approved"
                and _money(t)
                and (not orphan or (t["tender_type"] == "card" and t["settled_at"] is not None))
            ),
            key=lambda t: t["tender_index"],
        )
        named_index = p.get("tender_index")
        candidates = [
            t for t in money if left(t) >= amount and (named_index is None or t["tender_index"] == int(named_index))
        ]
        candidates.sort(key=lambda t: (t["tender_type"] != "card", t["tender_index"]))
        if not candidates:
            return {
                "outcome": "over_limit",
                "refundable": limit - taken,
                "tenders": [
                    {"tender_index": t["tender_index"], "type": t["tender_type"], "refundable": max(left(t), 0)}
                    for t in money
                ],
                "reason": "no single tender has that much left to refund"
                if named_index is None
                else f"tender {named_index} has not that much left to refund",
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
            "restock": bool(p["restock"]) and not orphan,
            "restock_lines": [dict(line) for line in lines or []] if named else None,
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

    def finish_refund(self, now: datetime, refund_id: uuid.UUID, ok: bool, reason: str, owner: str) -> dict[str, Any]:
        """CheckoutStore.finish_refund: gw_finish_refund under the order's lease."""
        r = self.refunds.get(refund_id)
        if r is None:
            return {"outcome": "not_found"}
        if r["status"] != "pending":
            return {"outcome": "already", "status": r["status"]}
        if not self.lease_held(now, r["order_id"], owner):
            return {"outcome": "lease_lost"}
        txs = [t for t in self.tenders_of(r["order_id"]) if t["refund_id"] == refund_id]
        if not ok:
            r.update(status="failed", failure_reason=reason)
            for t in txs:
                if t["status"] == "pending":
                    t.update(status="failed", updated_at=now)
            self._audit(now, "refund.failed", r["order_id"], detail={"refund_id": str(refund_id), "reason": reason})
            return {"outcome": "failed"}
        o = self.orders[r["order_id"]]
        if o["status"] in ORPHAN_ORDER:
            # An orphan's refund: the settled charge it returned is refunded once returned in full.
            index = txs[0]["tender_index"] if txs else None
            for t in txs:
                if t["tender_type"] == "cash":
                    t.update(status="approved", approved_amount=t["amount"], updated_at=now)
            before = sum(
                x["amount"]
                for x in self.refunds.values()
                if x["order_id"] == o["id"]
                and x["status"] == "completed"
                and any(y["refund_id"] == x["id"] and y["tender_index"] == index for y in self.tenders_of(o["id"]))
            )
            for t in self.tenders_of(o["id"]):
                charged = t["amount"] if t["approved_amount"] is None else t["approved_amount"]
                if (
                    t["kind"] == "payment"
                    and t["tender_index"] == index
                    and t["status"] == "approved"
                    and charged <= r["amount"] + before
                ):
                    t.update(status="refunded", updated_at=now)
            r.update(status="completed", completed_at=now)
            self._audit(
                now,
                "refund.completed",
                o["id"],
                detail={"refund_id": str(refund_id), "amount": r["amount"], "orphan": True},
            )
            return {"outcome": "completed"}
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
            self.restock(now, o["id"], r["restock_lines"])
        if o["register_session_id"] is not None:
            s = self.sessions[o["register_session_id"]]
            s["refund_total"] += r["amount"]
        r.update(status="completed", completed_at=now)
        refunded = o["refunded_amount"] + r["amount"]
        state = "refunded" if refunded >= o["total"] else "partially_refunded"
        o.update(refunded_amount=refunded, status=state, payment_status=state, updated_at=now)
        self._audit(now, "refund.completed", o["id"], detail={"refund_id": str(refund_id), "amount": r["amount"]})
        return {"outcome": "completed"}

    def unresolved_refunds(self, now: datetime, older_than_s: float, refund_id: uuid.UUID | None) -> list[Row]:
        def with_sale(t: Row) -> Row:
            sale = next(
                (
                    s
                    for s in self.tenders_of(t["order_id"])
                    if s["kind"] == "payment" and s["tender_index"] == t["tender_index"]
                ),
                None,
            )
            return {
                **t,
                "sale_reference": sale["reference_id"] if sale else None,
                "payment_type": t["payment_type"] or (sale["payment_type"] if sale else None),
            }

        return [
            with_sale(t)
            for t in self.txs.values()
            if t["kind"] == "refund"
            and self.refunds[t["refund_id"]]["status"] == "pending"
            and t["updated_at"] <= now - timedelta(seconds=older_than_s)
            and (refund_id is None or t["refund_id"] == refund_id)
        ]

    def mark_refund_sent(
        self, now: datetime, transaction_id: uuid.UUID, timeout_s: int, owner: str, payment_type: str | None = None
    ) -> Written:
        if not self._held_via_tender(now, transaction_id, owner):
            return "lease_lost"
        t = self.txs[transaction_id]
        if t["status"] not in ("pending", "processing"):
            return "stale"
        t.update(
            status="processing",
            sent_at=now,
            timeout_s=timeout_s,
            payment_type=payment_type or t["payment_type"],
            attempts=t["attempts"] + 1,
            updated_at=now,
        )
        return "ok"

    def fail_unsent_refund(self, now: datetime, refund_id: uuid.UUID, reason: str, owner: str) -> bool:
        r = self.refunds.get(refund_id)
        if r is None:
            return False
        txs = [
            t
            for t in self.tenders_of(r["order_id"])
            if t["refund_id"] == refund_id and t["status"] == "pending" and self.lease_held(now, t["order_id"], owner)
        ]
        for t in txs:
            t.update(status="failed", last_error=reason, updated_at=now)
        if not txs or r["status"] != "pending":
            return False
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
                        "store_id": "sim",
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
                        "settled": t["settled_at"] is not None,
                        "hold": not _money(t),
                        "unreturned": (t["amount"] if t["approved_amount"] is None else t["approved_amount"])
                        - sum(
                            r["amount"]
                            for r in self.tenders_of(o["id"])
                            if r["kind"] == "refund"
                            and r["tender_index"] == t["tender_index"]
                            and r["status"] in ("pending", "processing", "unknown", "approved")
                        ),
                    }
                )
        return rows

    def stale_pending(self, now: datetime, minutes: int) -> list[uuid.UUID]:
        """The orders cleanup_stale_pending_orders would cancel, oldest first: never one whose
        lease is live, nor one with a card tender that may have charged."""
        limit = now - timedelta(minutes=minutes)
        return [
            o["id"]
            for o in sorted(self.orders.values(), key=lambda o: o["created_at"])
            if o["status"] == "pending_payment"
            and o["created_at"] < limit
            and (o["lease_until"] is None or o["lease_until"] <= now)
            and not any(t["tender_type"] == "card" and t["status"] in CHARGING for t in self.tenders_of(o["id"]))
        ]

    def unresolved(self, now: datetime, older_than_s: float) -> list[Row]:
        rows = []
        for t in self.txs.values():
            since = t["sent_at"] or t["created_at"]
            if t["status"] in IN_DOUBT and since < now - timedelta(seconds=older_than_s):
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
        """Completed orders whose void stopped half-way (a card tender voided, or its void sent)."""
        return [
            o["id"]
            for o in self.orders.values()
            if o["status"] == "completed"
            and any(
                t["status"] == "voided" or (t["status"] == "approved" and t["void_requested_at"] is not None)
                for t in self._payment_cards(o["id"])
            )
        ]

    def open_on_terminal(self, terminal_id: str) -> int:
        n = 0
        for t in self.txs.values():
            if t["payment_processor_id"] != terminal_id:
                continue
            o = self.orders[t["order_id"]]
            if t["status"] in IN_DOUBT or (t["status"] == "approved" and o["status"] in OPEN_ORDER):
                n += 1
        return n

    def settled_orphans(self, terminal_id: str) -> list[Row]:
        """Approved charges on a terminal, settled, whose order did not complete."""
        return [
            {
                "reference_id": t["reference_id"],
                "amount": t["amount"],
                "approved_amount": t["approved_amount"],
                "status": t["status"],
                "order_id": t["order_id"],
                "order_status": self.orders[t["order_id"]]["status"],
            }
            for t in self.txs.values()
            if t["payment_processor_id"] == terminal_id
            and t["kind"] == "payment"
            and t["status"] == "approved"
            and t["settled_at"] is not None
            and self.orders[t["order_id"]]["status"] not in COMPLETED
        ]

    def captures_pending(self, terminal_id: str) -> int:
        return sum(
            1
            for t in self.txs.values()
            if t["payment_processor_id"] == terminal_id
            and t["capture_status"] == "pending"
            and t["status"] == "approved"
            and t["settled_at"] is None
        )
