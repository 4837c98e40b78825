"""Recovery: every order left unfinished (a crash, a lost answer, a void that failed) is finished
or rolled back by the coordinator's own rules, at start-up and on a timer.

Safe with two daemons of one store: orders are claimed with a lease under FOR UPDATE SKIP
LOCKED, so each is driven by one daemon at a time, and every step is idempotent.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass, field

from gatewayd import failpoints
from gatewayd.checkout.coordinator import Coordinator
from gatewayd.checkout.reversals import finish_refund
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
        coordinator: Coordinator,
        maintenance: MaintenanceStore,
        *,
        batch: int = 200,
        min_refund_age_s: float = 5.0,
    ) -> None:
        self.coordinator = coordinator
        self.min_refund_age_s = min_refund_age_s
        self.maintenance = maintenance
        self.batch = batch

    async def run_once(self, *, startup: bool = False, min_age_s: float = 0.0) -> RecoveryReport:
        """One pass: claim unfinished orders (at start-up our own too), settle each, then refunds,
        captures and orphaned charges."""
        started = time.monotonic()
        report = RecoveryReport()
        coord = self.coordinator
        # Batch after batch until a claim comes back short: a crash with more than `batch` orders in
        # flight is finished in one pass, not one batch per `interval_s`. An order seen in this pass
        # (left undecided, its lease released) is not driven twice in it.
        seen: set[uuid.UUID] = set()
        while True:
            claimed = await coord.store.claim_unfinished(
                coord.instance_id, coord.lease_s, take_own=startup, limit=self.batch, older_than_s=min_age_s
            )
            ids = [oid for oid in claimed if oid not in coord.driving and oid not in seen]
            seen.update(ids)
            await self._drive_batch(ids, report)
            if len(claimed) < self.batch or not ids:
                break
        report.refunds = await self._refunds(startup)
        report.captures = await self._captures()
        report.orphans_voided = await self._orphans()
        report.voids = await self._half_voided()
        report.seconds = time.monotonic() - started
        return report

    async def _drive_batch(self, ids: list[uuid.UUID], report: RecoveryReport) -> None:
        coord = self.coordinator
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
            coord.metrics.recovery_action(
                "completed"
                if result == "completed"
                else "rolled_back"
                if result in ("payment_failed", "cancelled")
                else "inquired"
            )

    async def _recover(self, order_id: uuid.UUID) -> str:
        await failpoints.hit("during_recovery")
        await self.coordinator.store.audit(
            "recovery.claimed", order_id=order_id, detail={"by": self.coordinator.instance_id}
        )
        await self.coordinator.drive(order_id, charge_pending=False)
        view = await self.coordinator.get(order_id)
        await self.coordinator.store.audit("recovery.finished", order_id=order_id, detail={"status": view.status})
        log.info("recovery: checkout %s is %s", order_id, view.status)
        return view.status

    async def _refunds(self, startup: bool) -> int:
        done = 0
        age_s = 0.0 if startup else self.min_refund_age_s  # after a crash, nothing of ours is in flight
        for row in await self.coordinator.store.unresolved_refunds(older_than_s=age_s):
            if self.coordinator.reversal_running(row["order_id"]):
                continue
            try:
                await finish_refund(self.coordinator, row["refund_id"], send_pending=False)
                done += 1
            except GatewayError as exc:
                log.warning("recovery: refund %s not finished: %s", row["refund_id"], exc.message)
        return done

    async def _captures(self) -> int:
        pending = await self.coordinator.store.claim_uncaptured()
        if pending:
            await self.coordinator.capture_pending()
            self.coordinator.metrics.recovery_action("captured")
        return len(pending)

    async def _orphans(self) -> int:
        """Approved charges of orders that can no longer complete (failed, cancelled): void them."""
        voided = 0
        for row in await self.maintenance.orphans():
            if row["order_status"] not in ("payment_failed", "cancelled"):
                continue
            tender = await self.coordinator.store.tender(row["transaction_id"])
            if tender is not None and await self.coordinator.void_tender(tender):
                voided += 1
                self.coordinator.metrics.recovery_action("voided")
                await self.coordinator.store.audit(
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
            if order_id in self.coordinator.driving:
                continue
            try:
                await self.coordinator.void(order_id, wait_s=60.0)
                done += 1
                self.coordinator.metrics.recovery_action("voided")
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
