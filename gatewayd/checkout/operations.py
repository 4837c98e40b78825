"""Operator work behind the API and the CLI: orphans, cleanup, reconciliation, settlement, maintenance."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

import msgspec

from gatewayd.checkout.errors import NotAllowed, NotFound
from gatewayd.checkout.persistence import after_intent, before_intent, best_effort
from gatewayd.checkout.reconcile import KINDS, ReconcileReport, compare
from gatewayd.checkout.targets import HEALTH_STALE_S, MONTH_DAYS, WEEK_DAYS, TargetsView, evaluate, figures_of
from gatewayd.errors import GatewayError, StoreError
from gatewayd.store.maintenance import MaintenanceStore
from gatewayd.terminals import ops
from gatewayd.terminals.outcomes import BatchEntry, SettleResult

log = logging.getLogger(__name__)


class Orphan(msgspec.Struct, frozen=True, kw_only=True):
    """An approved card charge whose order is not completed."""

    transaction_id: str
    order_id: str
    order_number: str
    order_status: str
    reference_id: str
    terminal_id: str | None
    amount: int
    age_s: float
    # The batch is settled: the charge can no longer be voided; refund it.
    settled: bool = False
    action: str = "void"
    # What is still to be returned of it (refunds under way or done count as returned).
    unreturned: int = 0


class OrphanList(msgspec.Struct, frozen=True, kw_only=True):
    count: int
    orphans: list[Orphan]


def _orphan(row: Mapping[str, Any]) -> Orphan:
    return Orphan(
        transaction_id=str(row["transaction_id"]),
        order_id=str(row["order_id"]),
        order_number=row["order_number"],
        order_status=row["order_status"],
        reference_id=row["reference_id"],
        terminal_id=row["terminal_id"],
        amount=row["approved_amount"] or row["amount"],
        age_s=row["age"].total_seconds(),
        settled=bool(row["settled"]),
        # a settled charge can only be refunded; a hold (never captured) is only ever released
        action="refund" if row["settled"] and not row["hold"] else "void",
        unreturned=row["unreturned"],
    )


PERIODS = ("hourly", "daily", "weekly")


def _cell(value: Any) -> int | str | bool | None:
    """A report value for JSON: integers and booleans as they are, everything else as text."""
    if value is None or isinstance(value, bool | int):
        return value  # type: ignore[no-any-return]
    return str(value)


class Operations:
    """Orphans, cleanup, reconciliation, settlement and reports for one store."""

    def __init__(self, maintenance: MaintenanceStore, lanes: Mapping[str, Any]) -> None:
        self.maintenance = maintenance
        self.lanes = lanes

    async def orphans(self) -> OrphanList:
        rows = [_orphan(r) for r in await self.maintenance.orphans()]
        return OrphanList(count=len(rows), orphans=rows)

    async def report(self, period: str | None = None) -> list[dict[str, Any]]:
        """The guide's reports of one period, or of all three: title, period, columns, rows."""
        sections = []
        for name in [period] if period else PERIODS:
            for title, headers, records in await before_intent(self.maintenance.report(name)):
                rows = [[_cell(v) for v in r.values()] for r in records]
                sections.append({"title": title, "period": name, "columns": headers, "rows": rows})
        return sections

    async def targets(self) -> TargetsView:
        """The guide's success metrics against its week-one, week-two and month-one targets."""
        row = await before_intent(self.maintenance.targets(WEEK_DAYS, MONTH_DAYS, HEALTH_STALE_S))
        return evaluate(figures_of(row, WEEK_DAYS, MONTH_DAYS))

    async def cleanup(self, older_than_minutes: int) -> int:
        cancelled = await self.maintenance.cleanup(older_than_minutes)
        if cancelled:
            log.info("cleanup: %d stale pending order(s) cancelled", cancelled)
        return cancelled

    async def reconcile(self, terminal_id: str | None) -> ReconcileReport:
        """Each named (or every) terminal's open batch against the database."""
        if terminal_id is not None and terminal_id not in self.lanes:
            raise NotFound(f"no terminal {terminal_id!r}")
        ids = [terminal_id] if terminal_id else sorted(self.lanes)
        report = ReconcileReport(terminals=ids)
        for tid in ids:
            try:
                batch = await self.lanes[tid].execute(ops.Batch())
            except GatewayError as exc:
                report.errors[tid] = exc.message
            else:
                await self.fold(tid, batch, report)
            await self.record_reconciliation(tid, report)
        return report

    async def record_reconciliation(self, terminal_id: str, report: ReconcileReport) -> None:
        """Keep what one terminal's reconciliation found, for the targets report (best effort)."""
        counts = {kind: sum(1 for item in getattr(report, kind) if item.terminal_id == terminal_id) for kind in KINDS}
        await best_effort(self.maintenance.record_reconcile(terminal_id, counts, report.errors.get(terminal_id)))

    async def fold(self, terminal_id: str, batch: list[BatchEntry], report: ReconcileReport) -> None:
        """Compare one terminal's batch (however it was fetched) into the report."""
        rows = await self.maintenance.by_references([e.reference_id for e in batch])
        since = await self.maintenance.last_settled(terminal_id)
        recent = await self.maintenance.terminal_transactions(terminal_id, since)
        settled = await self.maintenance.settled_orphans(terminal_id)
        compare(terminal_id, batch, rows, recent, report, settled)

    async def settle(self, terminal_id: str) -> SettleResult:
        """Close the terminal's batch; refused while any of its tenders is in doubt or any of its
        authorizations still owes its capture. Checked once here and again on the terminal's own
        queue, just before the Settle leaves: a charge or capture queued meanwhile comes first."""
        refusal = await self._settle_refusal(terminal_id)
        if refusal is not None:
            raise refusal
        late: list[NotAllowed] = []

        async def still_clear() -> bool:
            found = await self._settle_refusal(terminal_id)
            if found is not None:
                late.append(found)
            return found is None

        lane = self.lanes.get(terminal_id)  # looked up after the awaits: a reload may have removed it
        if lane is None:
            raise NotFound(f"no terminal {terminal_id!r}")
        result: SettleResult = await lane.execute(ops.Settle(), before_send=still_clear)
        if late:
            raise late[0]
        if result.ok:
            await after_intent(
                lambda: self.maintenance.record_settlement(
                    terminal_id, {"batch": result.batch, "count": result.count, "total": result.total}
                )
            )
        return result

    async def _settle_refusal(self, terminal_id: str) -> NotAllowed | None:
        open_count = await before_intent(self.maintenance.open_on_terminal(terminal_id))
        if open_count:
            return NotAllowed(
                f"terminal {terminal_id} has {open_count} unresolved tender(s); settle refused",
                details={"terminal_id": terminal_id, "unresolved": open_count},
            )
        captures = await before_intent(self.maintenance.captures_pending(terminal_id))
        if captures:
            return NotAllowed(
                f"terminal {terminal_id} has {captures} authorization(s) still to capture; settling now would"
                " lose them. Settle refused: try again once they are captured",
                details={"terminal_id": terminal_id, "captures_pending": captures},
            )
        return None

    async def maintain_forever(
        self, interval_s: float, stale_minutes: int, alert_minutes: int, on_orphans: Any = None
    ) -> None:
        """The schedule: stale orders cleaned up, orphans counted, long-unresolved tenders alerted."""
        while True:
            try:
                await self.maintain_once(stale_minutes, alert_minutes, on_orphans)
            except StoreError as exc:
                log.warning("maintenance pass failed: %s", exc.message)
            await asyncio.sleep(interval_s)

    async def maintain_once(self, stale_minutes: int, alert_minutes: int, on_orphans: Any = None) -> None:
        await self.cleanup(stale_minutes)
        orphans = await self.maintenance.orphans()
        if on_orphans is not None:
            on_orphans(len(orphans))
        old = [o for o in orphans if o["age"].total_seconds() > alert_minutes * 60]
        if old:
            log.error(
                "ALERT: %d orphaned payment(s) (charged, order not completed), oldest %s: %s",
                len(old),
                old[0]["reference_id"],
                ", ".join(o["reference_id"] for o in old[:10]),
            )
        for row in await self.maintenance.unresolved(alert_minutes * 60):
            log.error(
                "ALERT: tender %s on terminal %s unresolved for %.0f minutes (checkout %s)",
                row["reference_id"],
                row["payment_processor_id"],
                row["age_s"] / 60,
                row["order_id"],
            )
