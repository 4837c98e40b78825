"""The summary table (plain text) and the JSON report."""

from __future__ import annotations

from collections import Counter
from typing import Any

from tests.chaos.checks import INVARIANTS

ROW_FIELDS = (
    ("attempted", "checkouts"),
    ("completed", "completed"),
    ("charges", "charges"),
    ("orphaned", "orphaned"),
    ("double", "double"),
    ("lost", "lost"),
    ("failure_rate", "failure rate"),
)


def _cell(key: str, value: Any) -> str:
    if key == "failure_rate":
        return f"{100 * value:.1f}%"
    return str(value)


def flows_table(rows: dict[str, dict[str, Any]]) -> str:
    headers = ["flow"] + [label for _, label in ROW_FIELDS]
    body = [[name] + [_cell(k, row.get(k, "")) for k, _ in ROW_FIELDS] for name, row in rows.items()]
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *body, strict=True)]

    def fmt(cells: list[str]) -> str:
        return "  ".join(
            str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    lines = [fmt(headers), fmt(["-" * w for w in widths])] + [fmt(r) for r in body]
    return "\n".join(lines)


def render(report: dict[str, Any]) -> str:
    r = report
    out = [
        f"chaos run: seed {r['seed']}, {r['seconds']:.0f} s of faults, {r['clients']} clients per flow, "
        f"{r['lanes']} lanes; heal {r['heal_s']:.1f} s; wall {r['wall_s']:.1f} s",
        "",
        "nemesis (fired / planned):",
    ]
    fired, planned = r["nemesis"]["fired"], r["nemesis"]["planned"]
    names = sorted(set(planned) | set(fired))
    out += ["  " + ", ".join(f"{n} {fired.get(n, 0)}/{planned.get(n, 0)}" for n in names)]
    proc = r["process"]
    out += [
        f"  daemon starts {proc['daemon_starts']} (exit codes {proc['exit_codes']}), "
        f"final SIGTERM exit {proc['final_exit']}; PostgreSQL restarts {proc['pg_restarts']}"
    ]
    op = r.get("operator")
    if op:
        settles = Counter(s.split(": ", 1)[1].split(" ")[0] for s in op["settles"])  # by HTTP status
        kp, orph, refunds = op["keypad"], op["orphans"], op["refunds"]
        out += [
            "  operator: settles through the API "
            + (", ".join(f"{k} x{v}" for k, v in sorted(settles.items())) or "none")
            + f"; keypad voids {kp['voided']} (order failed {kp['order_failed']}, completed {kp['order_completed']}"
            f" of which reconciled as status_mismatch {kp['reconciled']})",
            f"  orphans after the heal: {refunds.get('to_refund', 0)} to refund, {refunds.get('refunded', 0)} refunded"
            f" {refunds.get('answers', {})}; charges without goods {orph['without_goods']}: refunded"
            f" {orph['refunded']}, still listed {orph['listed']}",
        ]
        out += [f"  note: {line}" for line in op.get("refund_notes", [])[:5]]
    out += ["", "invariants (gatewayd):"]
    for name in INVARIANTS:
        problems = r["invariants"].get(name, [])
        out.append(
            f"  {name}  {'ok' if not problems else 'VIOLATED (' + str(len(problems)) + ')'}"
            + (f"  {problems[0]}" if problems else "")
        )
    extra = r["invariants"].get("I?", [])
    if extra:
        out.append(f"  other: {extra[0]}")
    out += ["", "flows (same workload, same fault windows):", flows_table(r["flows"])]
    gw, old = r["flows"]["gatewayd"], r["flows"]["old flow"]
    out += [
        "",
        f"  gatewayd: {gw['failed_final']} failed (declined/offline, nothing charged), {gw['never_recorded']} "
        f"refused before an intent (503/422), {gw['gave_up']} given up by the cashier; "
        f"{r['i6_replays']} replays checked",
        f"  old flow: {old['orphaned_amount'] / 100:.2f} charged with no order, {old['duplicate_orders']} "
        f"checkout(s) saved twice, {old['declined']} declined, {old['crashes']} app crash(es)",
    ]
    codes = ", ".join(f"{k} {v}" for k, v in sorted(r["failure_codes"].items())) or "none"
    out += [f"  gatewayd failed checkouts by code: {codes}"]
    for line in r.get("contract", []):
        out += [f"  API contract: {line}"]
    out += ["", "RESULT: " + ("OK, no violation" if r["ok"] else "VIOLATIONS FOUND (seed " + str(r["seed"]) + ")")]
    if not r["ok"]:
        out.append(f"  kept: {r['workdir']}  (daemon log: {r['daemon_log']})")
    return "\n".join(out)
