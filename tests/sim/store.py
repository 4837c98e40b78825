"""CheckoutStore and MaintenanceStore for the simulation: the same methods, signatures and
retry behaviour as `gatewayd/store/checkouts.py` and `maintenance.py`, over the fake server.

Every method goes through the real `Database.run` (5 attempts with backoff, as in production)
or, for the maintenance queries, through a single `Database.connection()` attempt, exactly
as the real classes do. `load` is three statements outside a transaction in production, and
here too: another statement may land between reading the order and reading its tenders.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from gatewayd.store.checkouts import OPEN_TENDER, CheckoutRows
from tests.sim.db import SimDatabase
from tests.sim.tables import Tables


class SimCheckoutStore:
    """Duck-types gatewayd.store.checkouts.CheckoutStore."""

    def __init__(self, db: SimDatabase, tables: Tables, store_id: str = "sim") -> None:
        self.db = db
        self.t = tables
        self.store_id = store_id

    async def prepare(self, payload: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = await self.db.run(
            lambda c: c.call("prepare", lambda now: self.t.prepare(now, payload), payload), what="prepare checkout"
        )
        return result

    async def find_key(self, key: str) -> tuple[uuid.UUID, str] | None:
        return await self.db.run(lambda c: c.call("find_key", lambda now: self.t.find_key(key), key), what="find key")

    async def mark_sent(self, order_id: uuid.UUID, tender_id: uuid.UUID) -> bool:
        return bool(
            await self.db.run(
                lambda c: c.call(
                    "mark_sent", lambda now: self.t.mark_sent(now, order_id, tender_id), order_id, tender_id
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
        kwargs: dict[str, Any] = {
            "from_statuses": tuple(from_statuses),
            "approved_amount": approved_amount,
            "auth_code": auth_code,
            "card_brand": card_brand,
            "last4": last4,
            "batch_number": batch_number,
            "transaction_number": transaction_number,
            "status_code": status_code,
            "raw": raw,
            "last_error": last_error,
            "audit": audit,
        }
        return bool(
            await self.db.run(
                lambda c: c.call(
                    "record_tender",
                    lambda now: self.t.record_tender(now, tender_id, status, **kwargs),
                    tender_id,
                    status,
                    **kwargs,
                ),
                what="record tender",
            )
        )

    async def commit(self, order_id: uuid.UUID, points_per_unit: int, minor_per_unit: int) -> dict[str, Any]:
        result: dict[str, Any] = await self.db.run(
            lambda c: c.call(
                "commit",
                lambda now: self.t.commit(now, order_id, points_per_unit, minor_per_unit),
                order_id,
                points_per_unit,
                minor_per_unit,
            ),
            what="commit checkout",
        )
        return result

    async def fail(self, order_id: uuid.UUID, code: str, reason: str, status: str = "payment_failed") -> dict[str, Any]:
        result: dict[str, Any] = await self.db.run(
            lambda c: c.call(
                "fail", lambda now: self.t.fail(now, order_id, code, reason, status), order_id, code, reason, status
            ),
            what="fail checkout",
        )
        return result

    async def set_captured(self, tender_id: uuid.UUID) -> None:
        await self.db.run(
            lambda c: c.call("set_captured", lambda now: self.t.set_captured(now, tender_id), tender_id),
            what="record capture",
        )

    async def load(self, *, order_id: uuid.UUID | None = None, key: str | None = None) -> CheckoutRows | None:
        async def work(c: Any) -> CheckoutRows | None:
            order = await c.call("load", lambda now: self.t.load(order_id, key))
            if order is None:
                return None
            # The tenders and refunds are read by later statements, as in production.
            again = await c.call("load", lambda now: self.t.load(order[0]["id"], None))
            return CheckoutRows(order[0], again[1], again[2])  # type: ignore[arg-type]

        return await self.db.run(work, what="load checkout")

    async def audit(
        self,
        kind: str,
        *,
        order_id: uuid.UUID | None = None,
        transaction_id: uuid.UUID | None = None,
        detail: dict[str, Any] | None = None,
    ) -> None:
        await self.db.run(
            lambda c: c.call("audit", lambda now: self.t.audit(now, kind, order_id, transaction_id, detail), kind),
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
        return await self.db.run(
            lambda c: c.call(
                "claim_unfinished",
                lambda now: self.t.claim_unfinished(
                    now, owner, lease_s, take_own=take_own, limit=limit, older_than_s=older_than_s, only=only
                ),
                owner,
                take_own,
                only,
            ),
            what="claim unfinished orders",
        )

    async def claim_uncaptured(self, limit: int = 100) -> list[dict[str, Any]]:
        return await self.db.run(
            lambda c: c.call("claim_uncaptured", lambda now: self.t.claim_uncaptured(limit)), what="uncaptured"
        )

    async def release_lease(self, order_id: uuid.UUID, owner: str) -> None:
        await self.db.run(
            lambda c: c.call("release_lease", lambda now: self.t.release_lease(order_id, owner), order_id, owner),
            what="release lease",
        )

    async def void_order(self, order_id: uuid.UUID) -> dict[str, Any]:
        result: dict[str, Any] = await self.db.run(
            lambda c: c.call("void_order", lambda now: self.t.void_order(now, order_id), order_id), what="void checkout"
        )
        return result

    async def begin_refund(self, payload: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = await self.db.run(
            lambda c: c.call("begin_refund", lambda now: self.t.begin_refund(now, payload), payload),
            what="begin refund",
        )
        return result

    async def finish_refund(self, refund_id: uuid.UUID, ok: bool, reason: str = "") -> dict[str, Any]:
        result: dict[str, Any] = await self.db.run(
            lambda c: c.call(
                "finish_refund", lambda now: self.t.finish_refund(now, refund_id, ok, reason), refund_id, ok, reason
            ),
            what="finish refund",
        )
        return result

    async def unresolved_refunds(self, older_than_s: float = 0.0) -> list[dict[str, Any]]:
        return await self.db.run(
            lambda c: c.call(
                "unresolved_refunds", lambda now: self.t.unresolved_refunds(now, older_than_s), older_than_s
            ),
            what="unresolved refunds",
        )

    async def mark_void_requested(self, transaction_id: uuid.UUID) -> None:
        await self.db.run(
            lambda c: c.call(
                "mark_void_requested", lambda now: self.t.mark_void_requested(now, transaction_id), transaction_id
            ),
            what="mark void requested",
        )

    async def void_pending(self, order_id: uuid.UUID) -> bool:
        return bool(
            await self.db.run(
                lambda c: c.call("void_pending", lambda now: self.t.void_pending(order_id), order_id),
                what="void pending",
            )
        )

    async def mark_refund_sent(self, transaction_id: uuid.UUID, timeout_s: int) -> bool:
        return bool(
            await self.db.run(
                lambda c: c.call(
                    "mark_refund_sent",
                    lambda now: self.t.mark_refund_sent(now, transaction_id, timeout_s),
                    transaction_id,
                    timeout_s,
                ),
                what="mark refund sent",
            )
        )

    async def fail_unsent_refund(self, refund_id: uuid.UUID, reason: str) -> bool:
        return bool(
            await self.db.run(
                lambda c: c.call(
                    "fail_unsent_refund",
                    lambda now: self.t.fail_unsent_refund(now, refund_id, reason),
                    refund_id,
                    reason,
                ),
                what="fail unsent refund",
            )
        )

    async def tender(self, transaction_id: uuid.UUID) -> dict[str, Any] | None:
        return await self.db.run(
            lambda c: c.call("tender", lambda now: self.t.tender(transaction_id), transaction_id), what="tender"
        )


class SimMaintenanceStore:
    """Duck-types gatewayd.store.maintenance.MaintenanceStore (the queries recovery and the
    maintenance schedule use); one attempt each, like `Database.fetch`."""

    def __init__(self, db: SimDatabase, tables: Tables, store_id: str = "sim") -> None:
        self.db = db
        self.t = tables
        self.store_id = store_id

    async def orphans(self) -> list[dict[str, Any]]:
        async with self.db.conn() as c:
            return await c.call("orphans", lambda now: self.t.orphans(now))  # type: ignore[no-any-return]

    async def cleanup(self, minutes: int) -> int:
        def apply(now: datetime) -> list[uuid.UUID]:
            stale = self.t.stale_pending(now, minutes)
            for order_id in stale:
                self.t.fail(
                    now, order_id, "stale_pending", f"pending_payment for more than {minutes} minutes", "cancelled"
                )
            return stale

        async with self.db.conn() as c:
            return len(await c.call("cleanup", apply, minutes))

    async def unresolved(self, older_than_s: float = 0.0) -> list[dict[str, Any]]:
        async with self.db.conn() as c:
            return await c.call("unresolved", lambda now: self.t.unresolved(now, older_than_s))  # type: ignore[no-any-return]

    async def half_voided(self) -> list[uuid.UUID]:
        async with self.db.conn() as c:
            return await c.call("half_voided", lambda now: self.t.half_voided())  # type: ignore[no-any-return]

    async def open_on_terminal(self, terminal_id: str) -> int:
        async with self.db.conn() as c:
            return int(await c.call("open_on_terminal", lambda now: self.t.open_on_terminal(terminal_id)))

    async def record_settlement(self, terminal_id: str, detail: dict[str, Any]) -> None:
        async with self.db.conn() as c:
            await c.call(
                "record_settlement",
                lambda now: self.t.audit(now, "terminal.settled", None, None, {"terminal_id": terminal_id, **detail}),
            )
