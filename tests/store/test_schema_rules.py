"""The schema refuses what would break the money invariants; functions and views do what the guide says."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from tests.store import rows


@pytest.fixture
async def conn(dsn: str) -> AsyncIterator[asyncpg.Connection]:
    c = await asyncpg.connect(dsn)
    yield c
    await c.close()


async def test_negative_money_is_refused(conn: asyncpg.Connection, store_id: str) -> None:
    with pytest.raises(asyncpg.CheckViolationError):
        await rows.order(conn, store_id, total=-1)
    oid = await rows.order(conn, store_id)
    await rows.terminal(conn, store_id)
    with pytest.raises(asyncpg.CheckViolationError):
        await rows.tender(conn, store_id, oid, amount=-5)


async def test_unknown_status_is_refused(conn: asyncpg.Connection, store_id: str) -> None:
    with pytest.raises(asyncpg.CheckViolationError):
        await rows.order(conn, store_id, status="paid_probably")
    oid = await rows.order(conn, store_id)
    await rows.terminal(conn, store_id)
    with pytest.raises(asyncpg.CheckViolationError):
        await rows.tender(conn, store_id, oid, status="maybe")


async def test_reference_ids_unique_per_store(conn: asyncpg.Connection, store_id: str) -> None:
    await rows.terminal(conn, store_id)
    oid = await rows.order(conn, store_id)
    await rows.tender(conn, store_id, oid, ref="REF123")
    with pytest.raises(asyncpg.UniqueViolationError):
        await rows.tender(conn, store_id, oid, ref="REF123")
    other = store_id + "-b"
    await rows.terminal(conn, other)
    await rows.tender(conn, other, await rows.order(conn, other), ref="REF123")


async def test_idempotency_keys_unique_per_store(conn: asyncpg.Connection, store_id: str) -> None:
    await rows.order(conn, store_id, key="reg1-0001")
    with pytest.raises(asyncpg.UniqueViolationError):
        await rows.order(conn, store_id, key="reg1-0001")
    await rows.order(conn, store_id + "-b", key="reg1-0001")


async def test_reserved_never_above_on_hand(conn: asyncpg.Connection, store_id: str) -> None:
    await conn.execute("INSERT INTO inventory (store_id, sku, on_hand, reserved) VALUES ($1, 'A', 5, 5)", store_id)
    with pytest.raises(asyncpg.CheckViolationError):
        await conn.execute("UPDATE inventory SET reserved = 6 WHERE store_id = $1", store_id)
    with pytest.raises(asyncpg.CheckViolationError):
        await conn.execute("UPDATE inventory SET on_hand = -1, reserved = 0 WHERE store_id = $1", store_id)


async def test_audit_events_are_append_only(conn: asyncpg.Connection, store_id: str) -> None:
    await conn.execute("INSERT INTO audit_events (store_id, kind) VALUES ($1, 'x')", store_id)
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await conn.execute("UPDATE audit_events SET kind = 'y' WHERE store_id = $1", store_id)
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await conn.execute("DELETE FROM audit_events WHERE store_id = $1", store_id)


async def test_find_orphaned_payments(conn: asyncpg.Connection, store_id: str) -> None:
    await rows.terminal(conn, store_id)
    failed = await rows.order(conn, store_id, status="payment_failed")
    orphan_ref = await rows.tender(conn, store_id, failed, status="approved")
    done = await rows.order(conn, store_id, status="completed")
    await rows.tender(conn, store_id, done, status="approved")
    voided = await rows.order(conn, store_id, status="payment_failed")
    await rows.tender(conn, store_id, voided, status="voided")
    cash = await rows.order(conn, store_id, status="payment_failed")
    await rows.tender(conn, store_id, cash, status="approved", tender_type="cash")
    found = await conn.fetch("SELECT * FROM find_orphaned_payments($1)", store_id)
    assert [(r["reference_id"], r["order_status"]) for r in found] == [(orphan_ref, "payment_failed")]
    everywhere = await conn.fetch("SELECT reference_id FROM find_orphaned_payments()")
    assert orphan_ref in {r["reference_id"] for r in everywhere}


async def test_cleanup_cancels_stale_pending_and_releases(conn: asyncpg.Connection, store_id: str) -> None:
    await rows.terminal(conn, store_id)
    await conn.execute("INSERT INTO inventory (store_id, sku, on_hand, reserved) VALUES ($1, 'A', 10, 7)", store_id)
    stale = await rows.order(conn, store_id, minutes_old=30)
    await rows.item(conn, store_id, stale, "A", 3)
    await rows.tender(conn, store_id, stale, status="pending")
    fresh = await rows.order(conn, store_id, minutes_old=1)
    await rows.item(conn, store_id, fresh, "A", 2)
    risky = {}
    for status in ("processing", "unknown", "approved"):
        risky[status] = await rows.order(conn, store_id, minutes_old=30)
        await rows.item(conn, store_id, risky[status], "A", 0 + 1)
        await rows.tender(conn, store_id, risky[status], status=status)
    assert await conn.fetchval("SELECT cleanup_stale_pending_orders(15)") >= 1
    statuses = {
        r["id"]: r["status"] for r in await conn.fetch("SELECT id, status FROM orders WHERE store_id = $1", store_id)
    }
    assert statuses[stale] == "cancelled"
    assert statuses[fresh] == "pending_payment"
    assert {statuses[o] for o in risky.values()} == {"pending_payment"}
    assert await conn.fetchval("SELECT reserved FROM inventory WHERE store_id = $1", store_id) == 4
    assert (
        await conn.fetchval(
            "SELECT status FROM payment_transactions WHERE store_id = $1 AND order_id = $2", store_id, stale
        )
        == "failed"
    )
    assert await conn.fetchval("SELECT cleanup_stale_pending_orders(15, $1)", store_id) == 0


async def test_monitoring_views(conn: asyncpg.Connection, store_id: str) -> None:
    await rows.terminal(conn, store_id, "lane-1", "Lane 1")
    await rows.terminal(conn, store_id, "lane-2", "Lane 2")
    for status in ("approved", "approved", "approved", "declined"):
        await rows.tender(conn, store_id, await rows.order(conn, store_id, status="completed"), status=status)
    await rows.tender(conn, store_id, await rows.order(conn, store_id), status="approved", terminal_id="lane-2")
    rate = {
        r["status"]: (r["count"], float(r["percentage"]))
        for r in await conn.fetch("SELECT * FROM payment_success_last_hour WHERE store_id = $1", store_id)
    }
    assert rate == {"approved": (4, 80.0), "declined": (1, 20.0)}
    by_terminal = {
        r["terminal_id"]: float(r["success_rate"])
        for r in await conn.fetch("SELECT * FROM terminal_success_rate_7d WHERE store_id = $1", store_id)
    }
    assert by_terminal == {"lane-1": 75.0, "lane-2": 100.0}
    completion = {
        r["status"]: r["count"]
        for r in await conn.fetch("SELECT * FROM order_completion_last_hour WHERE store_id = $1", store_id)
    }
    assert completion == {"completed": 4, "pending_payment": 1}
    health = await conn.fetch("SELECT * FROM terminal_health_summary WHERE store_id = $1", store_id)
    assert {r["processor_name"] for r in health} == {"Lane 1", "Lane 2"}
