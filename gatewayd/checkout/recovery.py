"""Recovery: every order left unfinished (a crash, a lost answer, a void that failed) is finished
or rolled back by the state machine's own rules, at start-up and on a timer.

Safe with two daemons of one store: orders are claimed with a lease under FOR UPDATE SKIP
LOCKED, so each is driven by one daemon at a time, every write is fenced by that lease, and
every step is idempotent.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass, field

from gatewayd import failpoints
from gatewayd.checkout.executor import Executor
from gatewayd.checkout.machine import OrderStatus
from gatewayd.checkout.persistence import after_intent
from gatewayd.checkout.reversals import Reversals
from gatewayd.errors import GatewayError, StoreError
from gatewayd.store.maintenance import MaintenanceStore

log = logging.getLogger(__name__)


@dataclass
class RecoveryReport:
    """What one recovery pass did."""

    claimed: int = 0
    finished: dict[str, int] = field(default_factory=dict)
    refunds: int = 0
    captures: int = 0
    orphans_voided: int = 0
    voids: int = 0
    seconds: float = 0.0

    def count(self, status: str) -> None:
        self.finished[status] = self.finished.get(status, 0) + 1


class Recovery:
    """Finds unfinished work in the database and drives it to an end."""

    def __init__(
        self,
        executor: Executor,
        reversals: Reversals,
        maintenance: MaintenanceStore,
        *,
        batch: int = 200,
        min_refund_age_s: float = 5.0,
    ) -> None:
        self.executor = executor
        self.reversals = reversals
        self.store = executor.store
        self.min_refund_age_s = min_refund_age_s
        self.maintenance = maintenance
        self.batch = batch

    async def run_once(self, *, startup: bool = False, min_age_s: float = 0.0) -> RecoveryReport:
        """One pass: claim unfinished orders (at start-up our own too), drive each, then refunds,
        captures and orphaned charges."""
        started = time.monotonic()
        report = RecoveryReport()
        ex = self.executor
        # Batch after batch until a claim comes back short: a crash with more than `batch` orders in
        # flight is finished in one pass, not one batch per `interval_s`. An order seen in this pass
        # (left undecided, its lease released) is not driven twice in it.
        seen: set[uuid.UUID] = set()
        while True:
            claimed = await self.store.claim_unfinished(
                ex.owner, ex.lease_s, take_own=startup, limit=self.batch, older_than_s=min_age_s
            )
            ids = [oid for oid in claimed if oid not in ex.driving and oid not in seen]
            seen.update(ids)
            await self._drive_batch(ids, report)
            if len(claimed) < self.batch or not ids:
                break
        report.refunds = await self._refunds(startup)
        report.captures = await ex.capture_pending()
        if report.captures:
            ex.metrics.recovery_action("captured")
        report.orphans_voided = await self._orphans()
        report.voids = await self._half_voided()
        report.seconds = time.monotonic() - started
        return report

    async def _drive_batch(self, ids: list[uuid.UUID], report: RecoveryReport) -> None:
        report.claimed += len(ids)
        if ids:
            log.info("recovery: %d unfinished order(s) claimed", len(ids))
        results = await asyncio.gather(*(self._recover(oid) for oid in ids), return_exceptions=True)
        for oid, result in zip(ids, results, strict=True):
            if isinstance(result, BaseException):
                if isinstance(result, asyncio.CancelledError):
                    raise result
                log.error("recovery of %s failed: %s", oid, result)
                continue
            report.count(result)
            self.executor.metrics.recovery_action(
                "completed"
                if result == OrderStatus.COMPLETED
                else "rolled_back"
                if result in (OrderStatus.PAYMENT_FAILED, OrderStatus.CANCELLED)
                else "inquired"
            )

    async def _recover(self, order_id: uuid.UUID) -> str:
        await failpoints.hit("during_recovery")
        ex = self.executor
        await self.store.audit("recovery.claimed", order_id=order_id, detail={"by": ex.owner})
        await ex.drive(order_id, charge_pending=False)
        c = await after_intent(lambda: self.store.load(order_id=order_id))
        status = str(c.order.status) if c is not None else "missing"
        await self.store.audit("recovery.finished", order_id=order_id, detail={"status": status})
        log.info("recovery: checkout %s is %s", order_id, status)
        return status

    async def _refunds(self, startup: bool) -> int:
        done = 0
        age_s = 0.0 if startup else self.min_refund_age_s  # after a crash, nothing of ours is in flight
        for tx in await self.store.unresolved_refunds(older_than_s=age_s):
            if self.executor.busy_with(tx.order_id) or tx.refund_id is None:
                continue
            try:
                async with self.executor.leased(tx.order_id) as ok:
                    if ok:
                        await self.reversals.finish(tx.refund_id, send_pending=False)
                        done += 1
            except GatewayError as exc:
                log.warning("recovery: refund %s not finished: %s", tx.refund_id, exc.message)
        return done

    async def _orphans(self) -> int:
        """Approved charges of orders that can no longer complete (failed, cancelled): void them.
        A settled one cannot be voided: it stays listed until it is refunded."""
        voided = 0
        ex = self.executor
        for row in await self.maintenance.orphans():
            if row["order_status"] not in ("payment_failed", "cancelled", "voided"):
                continue
            if row["settled"] and not row["hold"]:
                continue  # money in a closed batch: only a refund returns it
            found = await self.store.tender(row["transaction_id"])
            if found is None:
                continue
            async with ex.leased(row["order_id"]) as ok:
                if not ok or not await ex.void_charge(found[0]):
                    continue
            after = await self.store.tender(row["transaction_id"])
            if after is not None and after[0].settled:
                continue
            voided += 1
            ex.metrics.recovery_action("voided")
            await self.store.audit(
                "recovery.orphan_voided",
                order_id=row["order_id"],
                transaction_id=row["transaction_id"],
                detail={"reference_id": row["reference_id"]},
            )
        return voided

    async def _half_voided(self) -> int:
        """Completed orders whose void stopped half-way (a card voided, the order not yet): finish it."""
        done = 0
        for order_id in await self.maintenance.half_voided():
            if self.executor.busy_with(order_id):
                continue
            try:
                await self.reversals.void(order_id)
                done += 1
                self.executor.metrics.recovery_action("voided")
            except GatewayError as exc:
                log.warning("recovery: void of %s not finished: %s", order_id, exc.message)
        return done

    async def run_forever(self, interval_s: float, min_age_s: float = 5.0) -> None:
        """The timer: a pass every `interval_s`; a failing pass is logged and retried next time."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.run_once(min_age_s=min_age_s)
            except (StoreError, GatewayError) as exc:
                log.warning("recovery pass failed: %s", exc.message)
