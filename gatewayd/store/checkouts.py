"""The SQL of the checkout: each phase one statement (a server-side function where it is several)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from gatewayd import failpoints
from gatewayd.store.db import Database

# Tender statuses a terminal answer may move a tender out of.
OPEN_TENDER = ("pending", "processing", "unknown")


@dataclass(frozen=True)
class CheckoutRows:
    """An order with its tenders and refunds, as stored."""

    order: asyncpg.Record
    tenders: list[asyncpg.Record]
    refunds: list[asyncpg.Record]


# One round trip for an order with its tenders and refunds (arrays of the tables' row types, which
# asyncpg decodes into records with the columns' own types).
_LOAD = """
SELECT o,
       coalesce((SELECT array_agg(t ORDER BY t.kind, t.tender_index, t.created_at) FROM payment_transactions t
                  WHERE t.store_id = o.store_id AND t.order_id = o.id), '{{}}') AS tenders,
       coalesce((SELECT array_agg(r ORDER BY r.created_at) FROM refunds r
                  WHERE r.store_id = o.store_id AND r.order_id = o.id), '{{}}') AS refunds
  FROM orders o WHERE o.store_id = $1 AND {where}"""

_LOAD_TENDERS = """
SELECT id, kind, refund_id, tender_index, tender_type, operation, amount, approved_amount, tendered, status,
       capture_status, reference_id, payment_processor_id, auth_code, card_brand, last4, status_code,
       last_error, timeout_s, sent_at, attempts
  FROM payment_transactions WHERE store_id = $1 AND order_id = $2 ORDER BY kind, tender_index, created_at"""


class CheckoutStore:
    """Checkout persistence for one store."""

    def __init__(self, db: Database, store_id: str) -> None:
        self.db = db
        self.store_id = store_id

    async def prepare(self, payload: dict[str, Any]) -> dict[str, Any]:
        """Record the intent (order, lines, reservation, tenders) in one transaction.

        Two daemons racing on one idempotency key: the loser's insert hits the unique key and is
        rolled back whole; asked again, the function finds the winner's order ("exists").
        """

        async def work(c: asyncpg.Connection) -> Any:
            try:
                return await c.fetchval("SELECT gw_prepare_checkout($1, $2::jsonb)", self.store_id, payload)
            except asyncpg.UniqueViolationError:
                return await c.fetchval("SELECT gw_prepare_checkout($1, $2::jsonb)", self.store_id, payload)

        result: dict[str, Any] = await self.db.run(work, what="prepare checkout")
        return result

    async def find_key(self, key: str) -> tuple[uuid.UUID, str] | None:
        """(order id, request hash) of the checkout with this idempotency key, if any."""
        row = await self.db.run(
            lambda c: c.fetchrow(
                "SELECT id, request_hash FROM orders WHERE store_id = $1 AND idempotency_key = $2",
                self.store_id,
                key,
            ),
            what="find key",
        )
        return None if row is None else (row["id"], row["request_hash"])

    async def mark_sent(self, order_id: uuid.UUID, tender_id: uuid.UUID) -> bool:
        """Just before the first byte leaves: the tender is `processing`. False if the order moved on."""
        return bool(
            await self.db.run(
                lambda c: c.fetchval(
                    """WITH o AS (
                   UPDATE orders SET status = 'payment_processing', payment_status = 'processing',
                          updated_at = now()
                    WHERE store_id = $1 AND id = $2
                      AND status IN ('pending_payment', 'payment_processing')
                   RETURNING id)
               UPDATE payment_transactions
                  SET status = 'processing', sent_at = now(),
                      attempts = attempts + 1, updated_at = now()
                WHERE store_id = $1 AND id = $3 AND order_id IN (SELECT id FROM o)
                  AND status IN ('pending', 'processing', 'unknown')
               RETURNING true""",
                    self.store_id,
                    order_id,
                    tender_id,
                ),
                what="mark tender sent",
            )
        )

    async def record_tender(
        self,
        tender_id: uuid.UUID,
        status: str,
        *,
        from_statuses: Sequence[str] = OPEN_TENDER,
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
        """Store a terminal's answer for a tender (only from the given statuses); one audit event."""
        return bool(
            await self.db.run(
                lambda c: c.fetchval(
                    """WITH t AS (
                   UPDATE payment_transactions
                      SET status = $3, approved_amount = coalesce($5, approved_amount),
                          auth_code = coalesce($6, auth_code), card_brand = coalesce($7, card_brand),
                          last4 = coalesce($8, last4), batch_number = coalesce($9, batch_number),
                          transaction_number = coalesce($10, transaction_number),
                          status_code = coalesce($11, status_code), raw_response = coalesce($12, raw_response),
                          last_error = $13,
                          capture_status = CASE WHEN $3 IN ('voided', 'failed') THEN NULL ELSE capture_status END,
                          resolved_at = CASE WHEN $3 IN ('processing', 'unknown') THEN NULL ELSE now() END,
                          updated_at = now()
                    WHERE store_id = $1 AND id = $2 AND status = ANY($4::text[])
                   RETURNING id, order_id)
               INSERT INTO audit_events (store_id, kind, order_id, transaction_id, detail)
               SELECT $1, 'tender.' || $3, t.order_id, t.id, $14::jsonb FROM t
               RETURNING true""",
                    self.store_id,
                    tender_id,
                    status,
                    list(from_statuses),
                    approved_amount,
                    auth_code,
                    card_brand,
                    last4,
                    batch_number,
                    transaction_number,
                    status_code,
                    raw,
                    last_error,
                    audit or {},
                ),
                what="record tender",
            )
        )

    async def commit(self, order_id: uuid.UUID, points_per_unit: int, minor_per_unit: int) -> dict[str, Any]:
        """Complete the order (inventory, loyalty, register session) in one transaction."""
        query = "SELECT gw_commit_checkout($1, $2, $3, $4)"
        args = (self.store_id, order_id, points_per_unit, minor_per_unit)

        async def with_failpoint(c: asyncpg.Connection) -> Any:
            async with c.transaction():
                result = await c.fetchval(query, *args)
                await failpoints.hit("inside_commit")
                return result

        if failpoints.active():
            result: dict[str, Any] = await self.db.run(with_failpoint, what="commit checkout")
        else:
            result = await self.db.run(lambda c: c.fetchval(query, *args), what="commit checkout")
        return result

    async def fail(self, order_id: uuid.UUID, code: str, reason: str, status: str = "payment_failed") -> dict[str, Any]:
        """Fail the order and release its reservation (no tender may be charged or in doubt)."""
        result: dict[str, Any] = await self.db.run(
            lambda c: c.fetchval(
                "SELECT gw_fail_checkout($1, $2, $3, $4, $5)", self.store_id, order_id, code, reason, status
            ),
            what="fail checkout",
        )
        return result

    async def set_captured(self, tender_id: uuid.UUID) -> None:
        """An authorization was captured; the order is paid once none is left to capture."""
        await self.db.run(
            lambda c: c.execute(
                """WITH t AS (
                   UPDATE payment_transactions SET capture_status = 'captured', updated_at = now()
                    WHERE store_id = $1 AND id = $2 AND capture_status = 'pending'
                   RETURNING order_id, id)
               , a AS (INSERT INTO audit_events (store_id, kind, order_id, transaction_id)
                       SELECT $1, 'tender.captured', order_id, id FROM t)
               UPDATE orders o SET payment_status = 'paid', updated_at = now()
                 FROM t WHERE o.store_id = $1 AND o.id = t.order_id AND o.payment_status = 'authorized'
                  AND NOT EXISTS (SELECT 1 FROM payment_transactions p
                                   WHERE p.store_id = $1 AND p.order_id = t.order_id
                                     AND p.capture_status = 'pending' AND p.id <> t.id)""",
                self.store_id,
                tender_id,
            ),
            what="record capture",
        )

    async def load(self, *, order_id: uuid.UUID | None = None, key: str | None = None) -> CheckoutRows | None:
        """An order with its tenders and refunds, by id or idempotency key."""

        where = "o.id = $2" if order_id is not None else "o.idempotency_key = $2"

        async def work(c: asyncpg.Connection) -> CheckoutRows | None:
            row = await c.fetchrow(_LOAD.format(where=where), self.store_id, order_id if order_id else key)
            if row is None:
                return None
            return CheckoutRows(row["o"], list(row["tenders"]), list(row["refunds"]))

        return await self.db.run(work, what="load checkout")

    async def audit(
        self,
        kind: str,
        *,
        order_id: uuid.UUID | None = None,
        transaction_id: uuid.UUID | None = None,
        detail: dict[str, Any] | None = None,
    ) -> None:
        """Append one audit event."""
        await self.db.run(
            lambda c: c.execute(
                "INSERT INTO audit_events (store_id, kind, order_id, transaction_id, detail)"
                " VALUES ($1, $2, $3, $4, $5::jsonb)",
                self.store_id,
                kind,
                order_id,
                transaction_id,
                detail or {},
            ),
            what="audit",
        )

    async def claim_unfinished(
        self,
        owner: str,
        lease_s: float,
        *,
        take_own: bool,
        limit: int = 100,
        older_than_s: float = 0.0,
        only: uuid.UUID | None = None,
    ) -> list[uuid.UUID]:
        """Take the lease on unfinished orders for recovery: expired leases, and with `take_own` our own.

        SKIP LOCKED lets two daemons recover side by side without waiting on each other, and the
        lease keeps them from driving one order twice.
        """
        rows = await self.db.run(
            lambda c: c.fetch(
                """UPDATE orders o SET lease_owner = $2, lease_until = now() + make_interval(secs => $3),
                      updated_at = now()
                WHERE (o.store_id, o.id) IN (
                    SELECT store_id, id FROM orders
                     WHERE store_id = $1
                       AND status IN ('pending_payment', 'payment_processing', 'payment_authorized')
                       AND updated_at < now() - make_interval(secs => $6)
                       AND (lease_until IS NULL OR lease_until < now() OR ($4 AND lease_owner = $2))
                       AND ($7::uuid IS NULL OR id = $7)
                       AND ($7::uuid IS NOT NULL OR status <> 'pending_payment'
                            OR ($4 AND lease_owner = $2) OR EXISTS (
                            SELECT 1 FROM payment_transactions pt
                             WHERE pt.store_id = orders.store_id AND pt.order_id = orders.id
                               AND pt.status IN ('processing', 'unknown', 'approved')))
                     ORDER BY created_at LIMIT $5 FOR UPDATE SKIP LOCKED)
               RETURNING o.id""",
                self.store_id,
                owner,
                lease_s,
                take_own,
                limit,
                older_than_s,
                only,
            ),
            what="claim unfinished orders",
        )
        return [r["id"] for r in rows]

    async def claim_uncaptured(self, limit: int = 100) -> list[asyncpg.Record]:
        """Authorizations of completed orders still waiting for their capture."""
        return await self.db.run(
            lambda c: c.fetch(
                """SELECT id, order_id, reference_id, payment_processor_id, amount FROM payment_transactions
                WHERE store_id = $1 AND capture_status = 'pending' AND status = 'approved'
                ORDER BY created_at LIMIT $2""",
                self.store_id,
                limit,
            ),
            what="uncaptured",
        )

    async def release_lease(self, order_id: uuid.UUID, owner: str) -> None:
        await self.db.run(
            lambda c: c.execute(
                "UPDATE orders SET lease_owner = NULL, lease_until = NULL WHERE store_id = $1 AND id = $2"
                " AND lease_owner = $3",
                self.store_id,
                order_id,
                owner,
            ),
            what="release lease",
        )

    async def void_order(self, order_id: uuid.UUID) -> dict[str, Any]:
        """Once every card tender is voided: the order is voided and everything it credited is taken back."""
        result: dict[str, Any] = await self.db.run(
            lambda c: c.fetchval("SELECT gw_void_checkout($1, $2)", self.store_id, order_id),
            what="void checkout",
        )
        return result

    async def begin_refund(self, payload: dict[str, Any]) -> dict[str, Any]:
        """Record a refund request and the transaction that will carry it (idempotent by key)."""
        result: dict[str, Any] = await self.db.run(
            lambda c: c.fetchval("SELECT gw_begin_refund($1, $2::jsonb)", self.store_id, payload),
            what="begin refund",
        )
        return result

    async def finish_refund(self, refund_id: uuid.UUID, ok: bool, reason: str = "") -> dict[str, Any]:
        """Complete (or fail) a refund whose terminal answer is known."""
        result: dict[str, Any] = await self.db.run(
            lambda c: c.fetchval("SELECT gw_finish_refund($1, $2, $3, $4)", self.store_id, refund_id, ok, reason),
            what="finish refund",
        )
        return result

    async def unresolved_refunds(self, older_than_s: float = 0.0) -> list[asyncpg.Record]:
        """Refund transactions whose terminal answer was never stored (untouched for `older_than_s`)."""
        return await self.db.run(
            lambda c: c.fetch(
                """SELECT t.*, r.id AS refund_row FROM payment_transactions t JOIN refunds r
                 ON r.store_id = t.store_id AND r.id = t.refund_id
                WHERE t.store_id = $1 AND t.kind = 'refund' AND r.status = 'pending'
                  AND t.updated_at <= now() - make_interval(secs => $2)""",
                self.store_id,
                older_than_s,
            ),
            what="unresolved refunds",
        )

    async def mark_void_requested(self, transaction_id: uuid.UUID) -> None:
        """Just before a Void leaves: the charge may be voided from here on."""
        await self.db.run(
            lambda c: c.execute(
                """UPDATE payment_transactions SET void_requested_at = coalesce(void_requested_at, now()),
                          updated_at = now()
                    WHERE store_id = $1 AND id = $2""",
                self.store_id,
                transaction_id,
            ),
            what="mark void requested",
        )

    async def void_pending(self, order_id: uuid.UUID) -> bool:
        """True while a void of one of the order's charges was sent but is not known to be done."""
        return bool(
            await self.db.run(
                lambda c: c.fetchval(
                    """SELECT EXISTS (SELECT 1 FROM payment_transactions
                                       WHERE store_id = $1 AND order_id = $2 AND kind = 'payment'
                                         AND void_requested_at IS NOT NULL AND status = 'approved')""",
                    self.store_id,
                    order_id,
                ),
                what="void pending",
            )
        )

    async def mark_refund_sent(self, transaction_id: uuid.UUID, timeout_s: int) -> bool:
        """Just before a Return leaves (or leaves again): stamped with the real send time and the
        terminal's own timeout. False when the transaction is no longer pending or in progress."""
        return bool(
            await self.db.run(
                lambda c: c.fetchval(
                    """UPDATE payment_transactions SET status = 'processing', sent_at = now(), timeout_s = $3,
                              attempts = attempts + 1, updated_at = now()
                        WHERE store_id = $1 AND id = $2 AND status IN ('pending', 'processing')
                       RETURNING true""",
                    self.store_id,
                    transaction_id,
                    timeout_s,
                ),
                what="mark refund sent",
            )
        )

    async def fail_unsent_refund(self, refund_id: uuid.UUID, reason: str) -> bool:
        """Fail a refund whose Return never left, atomically: only while its transaction is pending."""
        return bool(
            await self.db.run(
                lambda c: c.fetchval(
                    """WITH t AS (
                           UPDATE payment_transactions SET status = 'failed', last_error = $3, updated_at = now()
                            WHERE store_id = $1 AND refund_id = $2 AND status = 'pending'
                           RETURNING refund_id, order_id),
                       r AS (
                           UPDATE refunds SET status = 'failed', failure_reason = $3
                             FROM t WHERE refunds.store_id = $1 AND refunds.id = t.refund_id
                              AND refunds.status = 'pending'
                           RETURNING refunds.id, refunds.order_id)
                       INSERT INTO audit_events (store_id, kind, order_id, detail)
                       SELECT $1, 'refund.failed', r.order_id, jsonb_build_object('refund_id', r.id, 'reason', $3::text)
                         FROM r
                       RETURNING true""",
                    self.store_id,
                    refund_id,
                    reason,
                ),
                what="fail unsent refund",
            )
        )

    async def tender(self, transaction_id: uuid.UUID) -> asyncpg.Record | None:
        """One payment transaction, as the coordinator reads tenders."""
        rows = await self.db.run(
            lambda c: c.fetch(_LOAD_TENDERS.replace("order_id = $2", "id = $2"), self.store_id, transaction_id),
            what="tender",
        )
        return rows[0] if rows else None
