"""Operator and maintenance queries: orphans, stale orders, unresolved tenders, reconciliation, reports."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import asyncpg

from gatewayd.store.db import Database

# The guide's reports over the monitoring views (sql/003): title, query, column headers.
REPORTS: dict[str, list[tuple[str, str, list[str]]]] = {
    "hourly": [
        (
            "Payment success rate, last hour",
            "SELECT status, count, percentage FROM payment_success_last_hour WHERE store_id = $1 ORDER BY count DESC",
            ["STATUS", "COUNT", "%"],
        ),
        (
            "Order completion, last hour",
            "SELECT status, payment_status, count FROM order_completion_last_hour WHERE store_id = $1"
            " ORDER BY count DESC",
            ["STATUS", "PAYMENT", "COUNT"],
        ),
    ],
    "daily": [
        (
            "Orphaned payments",
            "SELECT reference_id, terminal_id, amount, order_number, order_status, date_trunc('second', age)"
            " FROM find_orphaned_payments($1)",
            ["REFERENCE", "TERMINAL", "AMOUNT", "ORDER", "STATUS", "AGE"],
        ),
        (
            "Orders stuck in payment for more than an hour",
            "SELECT order_number, status, payment_status, created_at, date_trunc('second', age) FROM stuck_orders"
            " WHERE store_id = $1 ORDER BY created_at",
            ["ORDER", "STATUS", "PAYMENT", "CREATED", "AGE"],
        ),
    ],
    "weekly": [
        (
            "Terminal health",
            "SELECT processor_name, health_status, last_health_check, last_health_error, is_active, is_live"
            " FROM terminal_health_summary WHERE store_id = $1 ORDER BY last_health_check DESC NULLS LAST",
            ["TERMINAL", "STATUS", "LAST CHECK", "LAST ERROR", "ACTIVE", "LIVE"],
        ),
        (
            "Payment success rate by terminal, 7 days",
            "SELECT processor_name, total_transactions, successful, failed, success_rate"
            " FROM terminal_success_rate_7d WHERE store_id = $1 ORDER BY success_rate DESC",
            ["TERMINAL", "TOTAL", "OK", "FAILED", "SUCCESS %"],
        ),
    ],
}


# The guide's success metrics (gatewayd report --targets, GET /v1/report/targets), in one
# statement. A card checkout is an order with a card tender, counted once final; it failed when
# it ended payment_failed or cancelled. A genuine decline is one the card or its holder decided
# (sql/009 decline_reason declined, cancelled_by_customer, no_card_presented,
# partial_approval_reversed; for rows before sql/009 the order's failure code says it).
# Transaction time: from the intent to the final answer (completed or failed), card checkouts.
GENUINE_DECLINES = ("declined", "cancelled_by_customer", "no_card_presented", "partial_approval_reversed")
_TARGETS = """
WITH card_orders AS (
    SELECT o.status, o.created_at, o.failure_code,
           coalesce(o.completed_at, o.failed_at) AS ended_at,
           o.status IN ('payment_failed', 'cancelled') AS failed,
           EXISTS (SELECT 1 FROM payment_transactions t
                    WHERE t.store_id = o.store_id AND t.order_id = o.id AND t.kind = 'payment'
                      AND t.decline_reason = ANY($2::text[])) AS genuine_reason,
           EXISTS (SELECT 1 FROM payment_transactions t
                    WHERE t.store_id = o.store_id AND t.order_id = o.id AND t.kind = 'payment'
                      AND t.decline_reason IS NOT NULL) AS any_reason
      FROM orders o
     WHERE o.store_id = $1 AND o.created_at > now() - make_interval(days => $4)
       AND o.status NOT IN ('pending_payment', 'payment_processing', 'payment_authorized')
       AND EXISTS (SELECT 1 FROM payment_transactions t WHERE t.store_id = o.store_id AND t.order_id = o.id
                      AND t.kind = 'payment' AND t.tender_type = 'card')),
classified AS (
    SELECT *, failed AND (genuine_reason OR (NOT any_reason AND failure_code IN
                          ('card_declined', 'card_not_charged', 'partial_approval'))) AS genuine,
           created_at > now() - make_interval(days => $3) AS in_week
      FROM card_orders)
SELECT count(*) FILTER (WHERE in_week) AS week_checkouts,
       count(*) FILTER (WHERE in_week AND failed) AS week_failed,
       count(*) FILTER (WHERE in_week AND genuine) AS week_genuine,
       (avg(extract(epoch FROM ended_at - created_at))
            FILTER (WHERE in_week AND status <> 'cancelled' AND ended_at IS NOT NULL))::float8 AS week_avg_s,
       count(*) FILTER (WHERE in_week AND status <> 'cancelled' AND ended_at IS NOT NULL) AS week_timed,
       count(*) AS month_checkouts,
       count(*) FILTER (WHERE failed) AS month_failed,
       count(*) FILTER (WHERE genuine) AS month_genuine,
       (SELECT count(*) FROM find_orphaned_payments($1)) AS orphans,
       (SELECT coalesce(jsonb_agg(jsonb_build_object(
                   'id', p.id, 'reporting', p.health_status <> 'unknown'
                        AND p.last_health_check > now() - make_interval(secs => $5),
                   'reconciled_at', r.at, 'reconcile', r.detail) ORDER BY p.id), '[]'::jsonb)
          FROM payment_processors p
          LEFT JOIN LATERAL (SELECT a.at, a.detail FROM audit_events a
                              WHERE a.store_id = p.store_id AND a.kind = 'reconcile.finished'
                                AND a.detail->>'terminal_id' = p.id
                                AND a.at > now() - make_interval(days => $3)
                              ORDER BY a.at DESC LIMIT 1) r ON true
         WHERE p.store_id = $1 AND p.is_active) AS terminals
  FROM classified"""


class MaintenanceStore:
    """Read-mostly queries over one store's payments."""

    def __init__(self, db: Database, store_id: str) -> None:
        self.db = db
        self.store_id = store_id

    async def orphans(self) -> list[asyncpg.Record]:
        """find_orphaned_payments() for this store, with whether each charge's batch has settled
        (then it can only be refunded)."""
        return await self.db.fetch(
            """SELECT f.*, t.settled_at IS NOT NULL AS settled,
                      (t.operation = 'auth' AND t.capture_status IS DISTINCT FROM 'captured') AS hold,
                      coalesce(t.approved_amount, t.amount) - coalesce((
                          SELECT sum(r.amount) FROM payment_transactions r
                           WHERE r.store_id = t.store_id AND r.order_id = t.order_id AND r.kind = 'refund'
                             AND r.tender_index = t.tender_index
                             AND r.status IN ('pending', 'processing', 'unknown', 'approved')), 0) AS unreturned
                 FROM find_orphaned_payments($1) f
                 JOIN payment_transactions t ON t.store_id = f.store_id AND t.id = f.transaction_id""",
            self.store_id,
        )

    async def orphan_count(self) -> int:
        """How many approved card charges have no completed order (find_orphaned_payments' rows),
        counted from this store's orders that are not completed (the partial index
        orders_not_completed, sql/010), each looked up by its own tenders: it costs what is not
        completed, not the store's history (the metrics snapshot asks every 5 s)."""
        return int(
            await self.db.fetchval(
                """SELECT coalesce(sum((SELECT count(*) FROM payment_transactions pt
                                         WHERE pt.store_id = o.store_id AND pt.order_id = o.id
                                           AND pt.kind = 'payment' AND pt.tender_type = 'card'
                                           AND pt.status = 'approved')), 0)
                     FROM orders o
                    WHERE o.store_id = $1 AND o.status NOT IN ('completed', 'refunded', 'partially_refunded')""",
                self.store_id,
            )
        )

    async def cleanup(self, minutes: int) -> int:
        """cleanup_stale_pending_orders(minutes) for this store."""
        return int(await self.db.fetchval("SELECT cleanup_stale_pending_orders($1, $2)", minutes, self.store_id))

    async def unresolved(self, older_than_s: float = 0.0) -> list[asyncpg.Record]:
        """Tenders still processing/unknown, oldest first."""
        return await self.db.fetch(
            """SELECT t.id, t.order_id, t.reference_id, t.payment_processor_id, t.status, t.amount, t.kind,
                      extract(epoch FROM now() - coalesce(t.sent_at, t.created_at))::float8 AS age_s
                 FROM payment_transactions t
                WHERE t.store_id = $1 AND t.status IN ('processing', 'unknown')
                  AND coalesce(t.sent_at, t.created_at) < now() - make_interval(secs => $2)
                ORDER BY coalesce(t.sent_at, t.created_at)""",
            self.store_id,
            older_than_s,
        )

    async def open_on_terminal(self, terminal_id: str) -> int:
        """Tenders on a terminal that are in doubt or charged for an order not yet final."""
        return int(
            await self.db.fetchval(
                """SELECT count(*) FROM payment_transactions t JOIN orders o
                   ON o.store_id = t.store_id AND o.id = t.order_id
                WHERE t.store_id = $1 AND t.payment_processor_id = $2
                  AND (t.status IN ('processing', 'unknown')
                       OR (t.status = 'approved' AND o.status IN
                           ('pending_payment', 'payment_processing', 'payment_authorized')))""",
                self.store_id,
                terminal_id,
            )
        )

    async def settled_orphans(self, terminal_id: str) -> list[asyncpg.Record]:
        """Approved charges on a terminal, settled, whose order did not complete: each needs a Return."""
        return await self.db.fetch(
            """SELECT t.reference_id, t.amount, t.approved_amount, t.status, t.order_id, o.status AS order_status
                 FROM payment_transactions t JOIN orders o ON o.store_id = t.store_id AND o.id = t.order_id
                WHERE t.store_id = $1 AND t.payment_processor_id = $2 AND t.kind = 'payment'
                  AND t.status = 'approved' AND t.settled_at IS NOT NULL
                  AND o.status NOT IN ('completed', 'refunded', 'partially_refunded')""",
            self.store_id,
            terminal_id,
        )

    async def captures_pending(self, terminal_id: str) -> int:
        """Authorizations of completed orders on a terminal still waiting for their capture: a settle
        now would close the batch under them and the merchant would never be paid."""
        return int(
            await self.db.fetchval(
                """SELECT count(*) FROM payment_transactions
                    WHERE store_id = $1 AND payment_processor_id = $2 AND capture_status = 'pending'
                      AND status = 'approved' AND settled_at IS NULL""",
                self.store_id,
                terminal_id,
            )
        )

    async def terminal_transactions(self, terminal_id: str, since: datetime | None) -> list[asyncpg.Record]:
        """Every card transaction gatewayd sent to a terminal since its last settlement."""
        return await self.db.fetch(
            """SELECT t.id, t.reference_id, t.kind, t.operation, t.amount, t.approved_amount, t.status,
                      t.capture_status, t.settled_at, t.order_id, o.status AS order_status, o.order_number, t.created_at
                 FROM payment_transactions t JOIN orders o ON o.store_id = t.store_id AND o.id = t.order_id
                WHERE t.store_id = $1 AND t.payment_processor_id = $2 AND t.tender_type = 'card'
                  AND ($3::timestamptz IS NULL OR t.created_at > $3)""",
            self.store_id,
            terminal_id,
            since,
        )

    async def by_references(self, refs: list[str]) -> dict[str, asyncpg.Record]:
        rows = await self.db.fetch(
            """SELECT t.reference_id, t.amount, t.approved_amount, t.status, t.kind, t.order_id,
                      o.status AS order_status,
                      t.payment_processor_id
                 FROM payment_transactions t JOIN orders o ON o.store_id = t.store_id AND o.id = t.order_id
                WHERE t.store_id = $1 AND t.reference_id = ANY($2::text[])""",
            self.store_id,
            refs,
        )
        return {r["reference_id"]: r for r in rows}

    async def last_settled(self, terminal_id: str) -> datetime | None:
        value: datetime | None = await self.db.fetchval(
            "SELECT max(at) FROM audit_events WHERE store_id = $1 AND kind = 'terminal.settled'"
            " AND detail->>'terminal_id' = $2",
            self.store_id,
            terminal_id,
        )
        return value

    async def record_settlement(self, terminal_id: str, detail: dict[str, Any]) -> None:
        await self.db.execute(
            "INSERT INTO audit_events (store_id, kind, detail) VALUES ($1, 'terminal.settled', $2::jsonb)",
            self.store_id,
            {"terminal_id": terminal_id, **detail},
        )

    async def report(self, period: str) -> list[tuple[str, list[str], list[asyncpg.Record]]]:
        """The guide's reports of one period (hourly, daily, weekly): (title, column headers, rows)."""
        return [
            (title, headers, await self.db.fetch(query, self.store_id)) for title, query, headers in REPORTS[period]
        ]

    async def targets(self, week_days: int = 7, month_days: int = 30, health_stale_s: float = 600.0) -> dict[str, Any]:
        """The figures behind the guide's success metrics (see _TARGETS): card checkouts, failures
        and genuine declines over the last `week_days` and `month_days`, the average transaction
        time over the week, orphaned payments now, and per active terminal whether it reports its
        health (a check within `health_stale_s`) and its latest reconciliation of the week."""
        rows = await self.db.fetch(
            _TARGETS, self.store_id, list(GENUINE_DECLINES), week_days, month_days, health_stale_s
        )
        figures = dict(rows[0])
        terminals = figures["terminals"]
        figures["terminals"] = json.loads(terminals) if isinstance(terminals, str) else terminals
        return figures

    async def record_reconcile(self, terminal_id: str, counts: dict[str, int], error: str | None) -> None:
        """One terminal's reconciliation, for the targets report: how many of each discrepancy it
        found (or why its batch could not be read)."""
        await self.db.execute(
            "INSERT INTO audit_events (store_id, kind, detail) VALUES ($1, 'reconcile.finished', $2::jsonb)",
            self.store_id,
            {"terminal_id": terminal_id, "discrepancies": sum(counts.values()), "kinds": counts, "error": error},
        )

    async def seed_inventory(self, items: list[tuple[str, str, int]]) -> None:
        """Put SKUs on the shelf ((sku, name, on hand)) unless the store already has them: the
        demo's catalog."""
        await self.db.run(
            lambda c: c.executemany(
                "INSERT INTO inventory (store_id, sku, name, on_hand) VALUES ($1, $2, $3, $4)"
                " ON CONFLICT (store_id, sku) DO NOTHING",
                [(self.store_id, sku, name, n) for sku, name, n in items],
            ),
            what="seed inventory",
        )

    async def recent_orders(self, limit: int = 15) -> list[asyncpg.Record]:
        """The last checkouts, newest first, for the status page."""
        return await self.db.fetch(
            "SELECT order_number, status, total, currency, created_at FROM orders WHERE store_id = $1"
            " ORDER BY created_at DESC LIMIT $2",
            self.store_id,
            limit,
        )

    async def unresolved_summary(self) -> tuple[int, float]:
        """(count, age of the oldest in seconds) of tenders processing/unknown."""
        row = await self.db.run(
            lambda c: c.fetchrow(
                """SELECT count(*) AS n,
                      coalesce(extract(epoch FROM now() - min(coalesce(sent_at, created_at))), 0)::float8 AS age
                 FROM payment_transactions WHERE store_id = $1 AND status IN ('processing', 'unknown')""",
                self.store_id,
            ),
            attempts=1,
            what="unresolved summary",
        )
        return int(row["n"]), float(row["age"])

    async def half_voided(self) -> list[Any]:
        """Completed orders whose void stopped half-way: a card tender voided, or its void sent."""
        rows = await self.db.fetch(
            """SELECT DISTINCT o.id FROM orders o JOIN payment_transactions t
                   ON t.store_id = o.store_id AND t.order_id = o.id
                WHERE o.store_id = $1 AND o.status = 'completed' AND t.kind = 'payment'
                  AND t.tender_type = 'card'
                  AND (t.status = 'voided' OR (t.status = 'approved' AND t.void_requested_at IS NOT NULL))""",
            self.store_id,
        )
        return [r["id"] for r in rows]
