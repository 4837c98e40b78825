"""Reconciliation: a terminal's open batch (SPIn StatusList) against the database, both ways."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Literal, get_args

import msgspec

from gatewayd.terminals.outcomes import BatchEntry

COMPLETED = ("completed", "refunded", "partially_refunded")
Kind = Literal[
    "missing_in_db", "missing_at_terminal", "amount_mismatch", "status_mismatch", "uncaptured", "needs_refund"
]

KINDS: tuple[str, ...] = get_args(Kind)


class Discrepancy(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One thing that does not agree, with what to do about it."""

    kind: Kind
    terminal_id: str
    reference_id: str
    suggested_action: str
    amount: int | None = None
    terminal_amount: int | None = None
    terminal_status: str | None = None
    gatewayd_status: str | None = None
    order_id: str | None = None
    order_status: str | None = None


class ReconcileReport(msgspec.Struct, kw_only=True):
    """POST /v1/reconcile."""

    terminals: list[str] = []
    matched: int = 0
    missing_in_db: list[Discrepancy] = []
    missing_at_terminal: list[Discrepancy] = []
    amount_mismatch: list[Discrepancy] = []
    status_mismatch: list[Discrepancy] = []
    # Authorizations held but not captured: not money received (yet).
    uncaptured: list[Discrepancy] = []
    # Charges that stand in a settled batch for an order that did not complete: refund them.
    needs_refund: list[Discrepancy] = []
    errors: dict[str, str] = {}

    @property
    def clean(self) -> bool:
        return not (
            self.missing_in_db
            or self.missing_at_terminal
            or self.amount_mismatch
            or self.status_mismatch
            or self.uncaptured
            or self.needs_refund
            or self.errors
        )

    def add(self, item: Discrepancy) -> None:
        getattr(self, item.kind).append(item)


def _moved_money(entry: BatchEntry) -> bool:
    """A sale or a captured authorization: money the merchant receives. An uncaptured hold is not."""
    return entry.type in ("sale", "capture") and entry.status in ("approved", "captured")


def _hold(entry: BatchEntry) -> bool:
    return entry.type == "auth" and entry.status == "approved"


def _db_status(row: Mapping[str, Any]) -> str:
    return str(row["status"])


def compare(
    terminal_id: str,
    batch: Iterable[BatchEntry],
    rows: Mapping[str, Mapping[str, Any]],
    recent: Iterable[Mapping[str, Any]],
    report: ReconcileReport,
    settled_orphans: Iterable[Mapping[str, Any]] = (),
) -> None:
    """Fold one terminal's batch into `report`. `rows`: gatewayd's transactions by reference id
    (any that the batch names); `recent`: gatewayd's transactions on this terminal since its last
    settlement (to find what the terminal does not have); `settled_orphans`: charges on this terminal
    that stand in a settled batch for an order that did not complete."""
    seen: set[str] = set()
    for entry in batch:
        seen.add(entry.reference_id)
        row = rows.get(entry.reference_id)
        base: dict[str, Any] = {
            "terminal_id": terminal_id,
            "reference_id": entry.reference_id,
            "terminal_amount": entry.amount,
            "terminal_status": entry.status,
        }
        if row is None:
            if _moved_money(entry) or entry.status == "returned":
                report.add(
                    Discrepancy(
                        kind="missing_in_db",
                        **base,
                        suggested_action=(
                            "unknown to gatewayd: void it at the terminal while the batch is open, or refund it;"
                            " find out which POS sent it"
                        ),
                    )
                )
            continue
        base.update(
            amount=row["amount"],
            gatewayd_status=_db_status(row),
            order_id=str(row["order_id"]),
            order_status=row["order_status"],
        )
        if _hold(entry) and row["kind"] == "payment":
            if row["order_status"] in COMPLETED:
                report.add(
                    Discrepancy(
                        kind="uncaptured",
                        **base,
                        suggested_action=(
                            "authorized, not yet captured: not money received; gatewayd captures it (settling"
                            " this terminal is refused until it has)"
                        ),
                    )
                )
            else:
                report.add(
                    Discrepancy(
                        kind="missing_in_db",
                        **base,
                        suggested_action="a hold for an order that did not complete: recovery voids it",
                    )
                )
        elif _moved_money(entry) and row["kind"] == "payment":
            if row["order_status"] not in COMPLETED:
                report.add(
                    Discrepancy(
                        kind="missing_in_db",
                        **base,
                        suggested_action=(
                            "charged, but the order is not completed: let recovery finish it (gatewayd runs it on a"
                            " timer); if it stays, void the charge"
                        ),
                    )
                )
            elif row["status"] != "approved":
                report.add(
                    Discrepancy(
                        kind="status_mismatch",
                        **base,
                        suggested_action=(
                            "the terminal has an approved charge that gatewayd records otherwise: inquire and correct"
                        ),
                    )
                )
            elif entry.amount != (row["approved_amount"] or row["amount"]):
                report.add(
                    Discrepancy(
                        kind="amount_mismatch",
                        **base,
                        suggested_action=(
                            "amounts differ: refund the difference or collect it; check for a tip adjustment"
                        ),
                    )
                )
            else:
                report.matched += 1
        elif entry.status == "returned" and row["kind"] == "refund":
            if row["status"] == "approved" and entry.amount == row["amount"]:
                report.matched += 1
            else:
                report.add(
                    Discrepancy(
                        kind="status_mismatch",
                        **base,
                        suggested_action=(
                            "the terminal refunded, gatewayd did not record it: let recovery finish the refund"
                        ),
                    )
                )
        elif row["status"] == "approved" and entry.status in ("voided", "declined"):
            report.add(
                Discrepancy(
                    kind="status_mismatch",
                    **base,
                    suggested_action=(
                        "gatewayd counts this charge, the terminal does not: the customer was not charged;"
                        " collect payment or void the order"
                    ),
                )
            )
        else:
            report.matched += 1
    for row in settled_orphans:
        report.add(
            Discrepancy(
                kind="needs_refund",
                terminal_id=terminal_id,
                reference_id=row["reference_id"],
                amount=row["approved_amount"] or row["amount"],
                gatewayd_status=row["status"],
                order_id=str(row["order_id"]),
                order_status=row["order_status"],
                suggested_action=(
                    "charged, the order did not complete, and the batch is settled (a void is no longer possible):"
                    f" refund it (POST /v1/checkouts/{row['order_id']}/refunds)"
                ),
            )
        )
    for row in recent:
        if row["reference_id"] in seen or row["status"] != "approved":
            continue
        if row["kind"] == "payment" and row["order_status"] in COMPLETED:
            report.add(
                Discrepancy(
                    kind="missing_at_terminal",
                    terminal_id=terminal_id,
                    reference_id=row["reference_id"],
                    amount=row["amount"],
                    gatewayd_status=row["status"],
                    order_id=str(row["order_id"]),
                    order_status=row["order_status"],
                    suggested_action=(
                        "completed order with no charge in the terminal's open batch: check whether the batch"
                        " was settled outside gatewayd; if the charge is truly missing, collect payment"
                    ),
                )
            )
