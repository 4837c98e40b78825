"""Differential check of the fake store against PostgreSQL.

The fake tables (tests/sim/tables.py) are a second implementation of the SQL functions; if
they drift, the simulation tests a store that does not exist. So: take a seed's history (every
statement the fake applied, in order, with its arguments and its answer), replay it through
the REAL CheckoutStore (and the SQL functions MaintenanceStore calls) against a migrated
database under a fresh store_id, and compare each answer and, at the end, the rows (orders,
tenders, refunds, order lines, inventory, loyalty, register sessions).

Leases are fenced on the database's clock, and the fake's clock is the simulation's virtual
time: before each statement the replay sets every leased order's `lease_until` in PostgreSQL
live or expired exactly as the fake saw it when it ran the statement (the history records
that), so that every fence decides the same. Statements whose selection depends on the clock
otherwise are replayed as their effect: cleanup_stale_pending_orders as the gw_fail_checkout
calls it made, a claim of orders older than some age as the leases it took. The replay runs
outside the virtual loop, on a real event loop.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import asyncpg

from gatewayd.store.checkouts import CheckoutStore
from gatewayd.store.db import Database
from tests.sim.tables import Tables
from tests.sim.world import SeedResult

# Bookkeeping that no answer and no compared row depends on.
SKIP = frozenset({"record_settlement"})


def _answer(name: str, value: Any) -> Any:
    """What must agree between the fake and PostgreSQL (sequence numbers and times do not)."""
    if name == "record_and_finish":  # the rows it answers with are compared at the end
        return (value.written, value.outcome)
    if isinstance(value, dict):
        value = {k: v for k, v in value.items() if k not in ("order_number", "checkout")}
        reason = value.get("reason")
        if value.get("outcome") == "bad_lines" and isinstance(reason, str) and "[" in reason:
            # jsonb_agg without ORDER BY: the SKUs may come in any order
            head, _, listed = reason.partition("[")
            value["reason"] = (head, sorted(json.loads("[" + listed)))
        return value
    if name == "fail_unsent_refund":
        return bool(value)
    if name == "claim_unfinished":
        return sorted(value)  # UPDATE ... RETURNING: in no particular order
    return value


async def _setup(conn: asyncpg.Connection, store_id: str, result: SeedResult, store: CheckoutStore) -> None:
    for tid in result.setup["terminals"]:
        await conn.execute(
            "INSERT INTO payment_processors (store_id, id, processor_name, driver) VALUES ($1, $2, $2, 'spin')",
            store_id,
            tid,
        )
    for sku, stock in result.setup["stock"].items():
        await conn.execute("INSERT INTO inventory (store_id, sku, on_hand) VALUES ($1, $2, $3)", store_id, sku, stock)
    for legacy in result.setup["legacy"]:
        payload = legacy["payload"]
        await store.prepare(payload)
        await conn.execute(
            "UPDATE payment_transactions SET status = 'approved', approved_amount = amount,"
            " sent_at = now(), attempts = 1 WHERE store_id = $1 AND id = $2",
            store_id,
            uuid.UUID(legacy["tender_id"]),
        )
        await conn.execute(
            "UPDATE orders SET status = 'payment_failed', payment_status = 'failed',"
            " failure_code = 'legacy', failure_reason = 'old POS flow', lease_owner = NULL,"
            " lease_until = NULL, failed_at = now() WHERE store_id = $1 AND id = $2",
            store_id,
            uuid.UUID(payload["id"]),
        )


async def _sync_leases(conn: asyncpg.Connection, store_id: str, leases: dict[uuid.UUID, bool] | None) -> None:
    """Every leased order's lease live or expired in PostgreSQL as the fake saw it (the lease
    owners agree already: every statement that writes them is replayed)."""
    if not leases:
        return
    ids = list(leases)
    await conn.execute(
        """UPDATE orders o SET lease_until = CASE WHEN l.live THEN now() + interval '1 hour'
                                                  ELSE now() - interval '1 hour' END
             FROM unnest($2::uuid[], $3::boolean[]) AS l(id, live)
            WHERE o.store_id = $1 AND o.id = l.id AND o.lease_owner IS NOT NULL""",
        store_id,
        ids,
        [leases[i] for i in ids],
    )


async def _apply(
    conn: asyncpg.Connection,
    store: CheckoutStore,
    name: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    fake: Any,
) -> tuple[Any, Any]:
    """Run one statement of the history for real; (real answer, fake answer) to compare."""
    if name == "cleanup":
        minutes = args[0]
        outcomes = [
            (
                await store.fail(
                    order_id, "stale_pending", f"pending_payment for more than {minutes} minutes", "cancelled", None
                )  # type: ignore[arg-type]
            )["outcome"]
            for order_id in fake
        ]
        return outcomes, ["cancelled"] * len(fake)
    if name == "inventory_insert":  # the world's own SQL: a row created mid-run
        sku, on_hand = args
        await conn.execute(
            "INSERT INTO inventory (store_id, sku, on_hand) VALUES ($1, $2, $3)", store.store_id, sku, on_hand
        )
        return None, None
    if name == "inventory_delete":
        await conn.execute("DELETE FROM inventory WHERE store_id = $1 AND sku = $2", store.store_id, args[0])
        return None, None
    if name == "claim_unfinished" and kwargs["older_than_s"] > 0:
        # "untouched for older_than_s" is virtual time: take the leases the fake took.
        owner, lease_s = args
        await conn.execute(
            """UPDATE orders SET lease_owner = $3, lease_until = now() + make_interval(secs => $4),
                      updated_at = now()
                WHERE store_id = $1 AND id = ANY($2::uuid[])""",
            store.store_id,
            list(fake),
            owner,
            lease_s,
        )
        return fake, fake
    method = getattr(store, name)
    return await method(*args, **kwargs), fake


async def replay(dsn: str, result: SeedResult) -> list[str]:
    """Replay `result.history` against PostgreSQL; the disagreements (empty when none)."""
    store_id = f"sim-{result.seed}-{uuid.uuid4().hex[:8]}"
    db = Database(dsn, pool_min=1, pool_max=2)
    await db.open()
    problems: list[str] = []
    try:
        store = CheckoutStore(db, store_id)
        async with db.connection() as conn:
            await _setup(conn, store_id, result, store)
            for i, (name, args, kwargs, fake, leases) in enumerate(result.history):
                if name in SKIP:
                    continue
                await _sync_leases(conn, store_id, leases)
                real, expected = await _apply(conn, store, name, args, kwargs, fake)
                if _answer(name, real) != _answer(name, expected):
                    problems.append(f"#{i} {name}{args!r:.120}: postgres {real!r}, fake {expected!r}")
                    if len(problems) > 10:
                        break
            problems += await _compare_rows(conn, store_id, result)
    finally:
        await db.close()
    return problems


async def _compare_rows(conn: asyncpg.Connection, store_id: str, result: SeedResult) -> list[str]:
    tables: Tables = result.tables
    problems: list[str] = []

    def same(what: str, real: dict[Any, Any], fake: dict[Any, Any]) -> None:
        differ = [k for k in sorted(set(real) | set(fake), key=str) if real.get(k) != fake.get(k)]
        for key in differ[:5]:
            problems.append(f"{what} {key}: postgres {real.get(key)!r}, fake {fake.get(key)!r}")
        if len(differ) > 5:
            problems.append(f"{what}: {len(differ) - 5} more rows differ")

    cols = (
        "status",
        "payment_status",
        "total",
        "refunded_amount",
        "loyalty_points",
        "failure_code",
        "failure_reason",
        "lease_owner",
    )
    real_orders = {
        r["id"]: tuple(r[c] for c in cols)
        for r in await conn.fetch(f"SELECT id, {', '.join(cols)} FROM orders WHERE store_id = $1", store_id)
    }
    same("orders", real_orders, {o["id"]: tuple(o[c] for c in cols) for o in tables.orders.values()})
    cols = (
        "status",
        "approved_amount",
        "capture_status",
        "amount",
        "kind",
        "attempts",
        "failure_code",
        "last_error",
        "status_code",
        "timeout_s",
        "tender_index",
    )
    stamps = ("settled_at", "void_requested_at", "sent_at", "resolved_at")
    real_txs = {
        r["id"]: tuple(r[c] for c in cols) + tuple(r[c] is not None for c in stamps)
        for r in await conn.fetch(
            f"SELECT id, {', '.join(cols + stamps)} FROM payment_transactions WHERE store_id = $1", store_id
        )
    }
    same(
        "payment_transactions",
        real_txs,
        {t["id"]: tuple(t[c] for c in cols) + tuple(t[c] is not None for c in stamps) for t in tables.txs.values()},
    )
    cols = ("status", "amount", "restock", "restock_lines", "failure_reason")
    real_refunds = {
        r["id"]: tuple(r[c] for c in cols)
        for r in await conn.fetch(f"SELECT id, {', '.join(cols)} FROM refunds WHERE store_id = $1", store_id)
    }
    same("refunds", real_refunds, {r["id"]: tuple(r[c] for c in cols) for r in tables.refunds.values()})
    real_inventory = {
        r["sku"]: (r["on_hand"], r["reserved"])
        for r in await conn.fetch("SELECT sku, on_hand, reserved FROM inventory WHERE store_id = $1", store_id)
    }
    same("inventory", real_inventory, {k: (v["on_hand"], v["reserved"]) for k, v in tables.inventory.items()})
    real_loyalty = {
        r["customer_id"]: r["points"]
        for r in await conn.fetch("SELECT customer_id, points FROM loyalty_accounts WHERE store_id = $1", store_id)
    }
    same("loyalty_accounts", real_loyalty, dict(tables.loyalty))
    totals = ("cash_total", "card_total", "checkout_count", "refund_total")
    real_sessions = {
        r["register_id"]: tuple(r[c] for c in totals)
        for r in await conn.fetch(
            f"SELECT register_id, {', '.join(totals)} FROM register_sessions WHERE store_id = $1", store_id
        )
    }
    same(
        "register_sessions",
        real_sessions,
        {s["register_id"]: tuple(s[c] for c in totals) for s in tables.sessions.values()},
    )
    real_items = {
        (r["order_id"], r["line_no"]): (r["restocked"], r["reserved"])
        for r in await conn.fetch(
            "SELECT order_id, line_no, restocked, reserved FROM order_items WHERE store_id = $1", store_id
        )
    }
    same(
        "order_items (restocked, reserved)",
        real_items,
        {
            (oid, line["line_no"]): (line["restocked"], line["reserved"])
            for oid, lines in tables.items.items()
            for line in lines
        },
    )
    return problems
