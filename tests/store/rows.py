"""Hand-made rows for schema tests: the smallest valid order, tender and terminal."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg


async def terminal(conn: asyncpg.Connection, store: str, tid: str = "lane-1", name: str = "Lane 1") -> str:
    await conn.execute(
        "INSERT INTO payment_processors (store_id, id, processor_name, driver) VALUES ($1, $2, $3, 'spin')"
        " ON CONFLICT DO NOTHING",
        store,
        tid,
        name,
    )
    return tid


async def order(
    conn: asyncpg.Connection,
    store: str,
    *,
    status: str = "pending_payment",
    total: int = 1000,
    key: str | None = None,
    minutes_old: int = 0,
    **extra: Any,
) -> uuid.UUID:
    oid = uuid.uuid4()
    await conn.execute(
        """INSERT INTO orders (store_id, id, order_number, status, idempotency_key, request_hash,
                               subtotal, total, currency, created_at)
           VALUES ($1, $2, $3, $4, $5, 'h', $6::bigint, $6::bigint, 'USD', now() - make_interval(mins => $7::int))""",
        store,
        oid,
        uuid.uuid4().hex[:8],
        status,
        key or uuid.uuid4().hex,
        total,
        minutes_old,
    )
    return oid


async def tender(
    conn: asyncpg.Connection,
    store: str,
    order_id: uuid.UUID,
    *,
    status: str = "approved",
    amount: int = 1000,
    tender_type: str = "card",
    terminal_id: str | None = "lane-1",
    ref: str | None = None,
) -> str:
    ref = ref or uuid.uuid4().hex[:20]
    await conn.execute(
        """INSERT INTO payment_transactions (store_id, id, order_id, tender_type, operation, amount,
                                             approved_amount, status, reference_id, payment_processor_id)
           VALUES ($1, $2, $3, $4::text, CASE WHEN $4::text = 'cash' THEN 'cash' ELSE 'sale' END, $5::bigint,
                   CASE WHEN $6::text = 'approved' THEN $5::bigint END, $6::text, $7, $8)""",
        store,
        uuid.uuid4(),
        order_id,
        tender_type,
        amount,
        status,
        ref,
        terminal_id if tender_type == "card" else None,
    )
    return ref


async def item(conn: asyncpg.Connection, store: str, order_id: uuid.UUID, sku: str, qty: int, line_no: int = 0) -> None:
    await conn.execute(
        "INSERT INTO order_items (store_id, order_id, line_no, sku, quantity, unit_price)"
        " VALUES ($1, $2, $3, $4, $5, 100)",
        store,
        order_id,
        line_no,
        sku,
        qty,
    )
