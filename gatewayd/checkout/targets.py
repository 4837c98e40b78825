"""The deployment guide's success metrics, measured, against its own targets.

The guide (its "Success Metrics") sets targets for the first week, the second and the first month:

- week 1: failure rate < 10%, zero orphaned payments, all terminals showing health status,
  reconciliation finds no discrepancies;
- week 2: failure rate < 5%, average transaction time < 15 seconds (staff comfortable: not
  measurable here);
- month 1: failure rate < 3% (revenue recovered, payment complaints: not measurable here).

How each is measured (the figures come from one statement, `MaintenanceStore.targets`):

- **failure rate**: of the card checkouts (orders with a card tender) that reached a final state,
  those that failed for any reason but a genuine decline. Genuine declines (the card or its
  holder decided: `declined`, `cancelled_by_customer`, `no_card_presented`,
  `partial_approval_reversed`) are counted apart: the guide expects them to remain ("~3-5%
  failure rate, genuine card declines only") while its month-one target is under 3%, so its
  failure-rate targets can only be about everything else. The rate with declines is reported too.
  Weeks one and two: the last 7 days; month one: the last 30;
- **orphaned payments**: approved charges with no completed order, now (`find_orphaned_payments`);
- **terminals reporting health**: active terminals whose last health check says something (not
  `unknown`) and is at most 10 minutes old (two of the guide's five-minute sweeps);
- **reconciliation discrepancies**: every active terminal's latest reconciliation of the last 7
  days (`gatewayd reconcile`, `POST /v1/reconcile`); a terminal not reconciled in that time leaves
  the target unmeasured;
- **average transaction time**: from the intent to the final answer, card checkouts that
  completed or failed in the last 7 days.

Pure: the figures in, the rows and the Prometheus samples out.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import msgspec

Stage = Literal["week_1", "week_2", "month_1"]
WEEK_DAYS = 7
MONTH_DAYS = 30
HEALTH_STALE_S = 600.0
TRANSACTION_TARGET_S = 15.0
FAILURE_TARGETS: dict[Stage, float] = {"week_1": 0.10, "week_2": 0.05, "month_1": 0.03}


class WindowFigures(msgspec.Struct, frozen=True, kw_only=True):
    """Card checkouts of one window and how they ended."""

    days: int
    card_checkouts: int
    failed: int
    genuine_declines: int
    other_failures: int
    # None without a card checkout to measure
    failure_rate: float | None  # other_failures / card_checkouts: what the targets judge
    failure_rate_all: float | None  # failed / card_checkouts, genuine declines included
    genuine_decline_rate: float | None


class TerminalFigures(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    reporting_health: bool
    reconciled_at: str | None = None
    discrepancies: int | None = None  # of its latest reconciliation of the week
    reconcile_error: str | None = None


class Figures(msgspec.Struct, frozen=True, kw_only=True):
    week: WindowFigures
    month: WindowFigures
    average_transaction_s: float | None
    timed_checkouts: int
    orphaned_payments: int
    terminals: list[TerminalFigures]


class TargetRow(msgspec.Struct, frozen=True, kw_only=True):
    """One of the guide's targets: the measured value and whether it is met (None: not measured)."""

    stage: Stage
    metric: str
    target: str
    value: float | None
    measured: str
    met: bool | None


class TargetsView(msgspec.Struct, frozen=True, kw_only=True):
    """GET /v1/report/targets."""

    targets: list[TargetRow]
    figures: Figures


def _rate(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def _window(days: int, checkouts: int, failed: int, genuine: int) -> WindowFigures:
    other = failed - genuine
    return WindowFigures(
        days=days,
        card_checkouts=checkouts,
        failed=failed,
        genuine_declines=genuine,
        other_failures=other,
        failure_rate=_rate(other, checkouts),
        failure_rate_all=_rate(failed, checkouts),
        genuine_decline_rate=_rate(genuine, checkouts),
    )


def figures_of(row: Mapping[str, Any], week_days: int = WEEK_DAYS, month_days: int = MONTH_DAYS) -> Figures:
    """The statement's row as typed figures."""
    terminals = []
    for t in row["terminals"] or []:
        reconcile = t.get("reconcile") or {}
        at = t.get("reconciled_at")
        terminals.append(
            TerminalFigures(
                id=t["id"],
                reporting_health=bool(t["reporting"]),
                reconciled_at=None if at is None else str(at),
                discrepancies=None if at is None else int(reconcile.get("discrepancies") or 0),
                reconcile_error=reconcile.get("error") or None,
            )
        )
    average = row["week_avg_s"]
    return Figures(
        week=_window(week_days, int(row["week_checkouts"]), int(row["week_failed"]), int(row["week_genuine"])),
        month=_window(month_days, int(row["month_checkouts"]), int(row["month_failed"]), int(row["month_genuine"])),
        average_transaction_s=None if average is None else float(average),
        timed_checkouts=int(row["week_timed"]),
        orphaned_payments=int(row["orphans"]),
        terminals=terminals,
    )


def _pct(rate: float) -> str:
    return f"{rate * 100:.1f}%"


def _failure_row(stage: Stage, w: WindowFigures) -> TargetRow:
    limit = FAILURE_TARGETS[stage]
    if w.failure_rate is None:
        measured = f"no card checkout in the last {w.days} days"
        return TargetRow(
            stage=stage, metric="failure_rate", target=f"< {_pct(limit)}", value=None, measured=measured, met=None
        )
    measured = (
        f"{_pct(w.failure_rate)} ({w.other_failures} of {w.card_checkouts} card checkouts, last {w.days} days;"
        f" genuine declines apart: {w.genuine_declines}, {_pct(w.genuine_decline_rate or 0.0)};"
        f" all failures {_pct(w.failure_rate_all or 0.0)})"
    )
    return TargetRow(
        stage=stage,
        metric="failure_rate",
        target=f"< {_pct(limit)}",
        value=w.failure_rate,
        measured=measured,
        met=w.failure_rate < limit,
    )


def _terminals_row(f: Figures) -> TargetRow:
    active = len(f.terminals)
    reporting = sum(t.reporting_health for t in f.terminals)
    silent = [t.id for t in f.terminals if not t.reporting_health]
    measured = f"{reporting} of {active} active terminals" + (
        f" (not reporting: {', '.join(silent)})" if silent else ""
    )
    return TargetRow(
        stage="week_1",
        metric="terminals_reporting_health",
        target="all",
        value=float(reporting),
        measured=measured if active else "no active terminal",
        met=(reporting == active) if active else None,
    )


def _reconcile_row(f: Figures) -> TargetRow:
    done = [t for t in f.terminals if t.reconciled_at is not None]
    missing = [t.id for t in f.terminals if t.reconciled_at is None]
    errors = [t.id for t in done if t.reconcile_error]
    found = sum(t.discrepancies or 0 for t in done)
    parts = [f"{found} in the latest reconciliation of {len(done)} of {len(f.terminals)} terminals (last 7 days)"]
    if errors:
        parts.append(f"batch unreadable: {', '.join(errors)}")
    if missing:
        parts.append(f"not reconciled: {', '.join(missing)} (run gatewayd reconcile)")
    met: bool | None
    if found or errors:
        met = False
    elif missing or not f.terminals:
        met = None
    else:
        met = True
    return TargetRow(
        stage="week_1",
        metric="reconciliation_discrepancies",
        target="0",
        value=float(found) if done else None,
        measured="; ".join(parts),
        met=met,
    )


def _time_row(f: Figures) -> TargetRow:
    average = f.average_transaction_s
    target = f"< {TRANSACTION_TARGET_S:.0f} s"
    if average is None:
        return TargetRow(
            stage="week_2",
            metric="average_transaction_time",
            target=target,
            value=None,
            measured="no card checkout in the last 7 days",
            met=None,
        )
    return TargetRow(
        stage="week_2",
        metric="average_transaction_time",
        target=target,
        value=average,
        measured=f"{average:.1f} s ({f.timed_checkouts} card checkouts, last 7 days)",
        met=average < TRANSACTION_TARGET_S,
    )


def _unmeasured(stage: Stage, metric: str, target: str) -> TargetRow:
    return TargetRow(
        stage=stage, metric=metric, target=target, value=None, measured="not measured by gatewayd", met=None
    )


def evaluate(f: Figures) -> TargetsView:
    """Every target of the guide, in its order, with what was measured."""
    rows = [
        _failure_row("week_1", f.week),
        TargetRow(
            stage="week_1",
            metric="orphaned_payments",
            target="0",
            value=float(f.orphaned_payments),
            measured=f"{f.orphaned_payments} now",
            met=f.orphaned_payments == 0,
        ),
        _terminals_row(f),
        _reconcile_row(f),
        _failure_row("week_2", f.week),
        _time_row(f),
        _unmeasured("week_2", "staff_comfortable", "staff comfortable with the new system"),
        _failure_row("month_1", f.month),
        _unmeasured("month_1", "revenue_recovered", "~$3,000-4,000/month"),
        _unmeasured("month_1", "payment_complaints", "near zero"),
    ]
    return TargetsView(targets=rows, figures=f)


# ------------------------------------------------------------------ Prometheus

Sample = tuple[str, str, dict[str, str], float]


def samples(f: Figures) -> list[Sample]:
    """The same figures as gauges (name, help, labels, value); a figure not measured is left out."""
    out: list[Sample] = []
    rate_help = "Card checkouts that failed, by cause (genuine declines apart), over the window: a ratio"
    for name, w in (("7d", f.week), ("30d", f.month)):
        out.append(
            (
                "gatewayd_target_card_checkouts",
                "Card checkouts that reached a final state",
                {"window": name},
                float(w.card_checkouts),
            )
        )
        for cause, rate in (
            ("other", w.failure_rate),
            ("genuine_decline", w.genuine_decline_rate),
            ("all", w.failure_rate_all),
        ):
            if rate is not None:
                out.append(("gatewayd_target_failure_rate", rate_help, {"window": name, "cause": cause}, rate))
    if f.average_transaction_s is not None:
        out.append(
            (
                "gatewayd_target_transaction_seconds_avg",
                "Average card checkout time, intent to final answer",
                {"window": "7d"},
                f.average_transaction_s,
            )
        )
    out.append(("gatewayd_target_terminals_active", "Active terminals", {}, float(len(f.terminals))))
    out.append(
        (
            "gatewayd_target_terminals_reporting_health",
            "Active terminals whose health check is recent and says something",
            {},
            float(sum(t.reporting_health for t in f.terminals)),
        )
    )
    out.append(
        (
            "gatewayd_target_terminals_unreconciled",
            "Active terminals with no reconciliation in the last 7 days",
            {},
            float(sum(t.reconciled_at is None for t in f.terminals)),
        )
    )
    out.append(
        (
            "gatewayd_target_reconcile_discrepancies",
            "Discrepancies found by each terminal's latest reconciliation of the last 7 days",
            {},
            float(sum(t.discrepancies or 0 for t in f.terminals)),
        )
    )
    for row in evaluate(f).targets:
        if row.met is not None:
            out.append(
                (
                    "gatewayd_target_met",
                    "1 when the guide's target is met, 0 when not (absent: not measured)",
                    {"stage": row.stage, "metric": row.metric},
                    1.0 if row.met else 0.0,
                )
            )
    return out
