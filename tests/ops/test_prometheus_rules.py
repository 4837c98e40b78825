"""The Prometheus alert rules and the Grafana dashboard: promtool checks and unit tests, metric
names limited to what the daemon exports, runbook links that resolve, the panels operators need."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROM = ROOT / "config" / "prometheus"
ALERTS = PROM / "alerts.yml"
ALERTS_TEST = PROM / "alerts_test.yml"
DASHBOARD = PROM / "gatewayd-dashboard.json"
OPERATIONS = ROOT / "docs" / "operations.md"

# What the daemon exports (the metrics contract); histograms also have _bucket/_count/_sum.
GAUGES_AND_COUNTERS = {
    "gatewayd_build_info",
    "gatewayd_terminal_up",
    "gatewayd_terminal_status",
    "gatewayd_terminal_queue_depth",
    "gatewayd_terminal_in_flight",
    "gatewayd_terminal_last_health_check_timestamp_seconds",
    "gatewayd_checkouts_total",
    "gatewayd_checkouts_in_flight",
    "gatewayd_tenders_total",
    "gatewayd_unknown_outcomes_total",
    "gatewayd_inquiries_total",
    "gatewayd_tenders_unresolved",
    "gatewayd_oldest_unresolved_tender_age_seconds",
    "gatewayd_recovery_actions_total",
    "gatewayd_transitions_refused_total",
    "gatewayd_leases_lost_total",
    "gatewayd_settled_charges_total",
    "gatewayd_orphaned_payments",
    "gatewayd_database_up",
    "gatewayd_database_pool_in_use",
    "gatewayd_database_pool_size",
    "gatewayd_database_errors_total",
    "gatewayd_database_role_privileged",
    # the deployment guide's targets (gatewayd.checkout.targets.samples)
    "gatewayd_target_card_checkouts",
    "gatewayd_target_failure_rate",
    "gatewayd_target_transaction_seconds_avg",
    "gatewayd_target_terminals_active",
    "gatewayd_target_terminals_reporting_health",
    "gatewayd_target_terminals_unreconciled",
    "gatewayd_target_reconcile_discrepancies",
    "gatewayd_target_met",
}
HISTOGRAMS = {
    "gatewayd_terminal_request_duration_seconds",
    "gatewayd_checkout_duration_seconds",
}
Dashboard = dict[str, Any]
METRIC = re.compile(r"\bgatewayd_[a-z_]+")


def known_metric(name: str) -> bool:
    if name in GAUGES_AND_COUNTERS:
        return True
    base = re.sub(r"_(bucket|count|sum)$", "", name)
    return base in HISTOGRAMS and base != name


def rule_exprs(text: str) -> list[str]:
    """The `expr:` values of a rules file (inline or folded block), without a YAML library."""
    lines = text.splitlines()
    exprs: list[str] = []
    i = 0
    while i < len(lines):
        m = re.match(r"^(\s*)(?:- )?expr:\s*(.*)$", lines[i])
        i += 1
        if not m:
            continue
        indent, rest = len(m.group(1)), m.group(2).strip()
        if rest and rest not in (">", ">-", "|", "|-"):
            exprs.append(rest.strip("'\""))
            continue
        block = []
        while i < len(lines) and (not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > indent):
            block.append(lines[i].strip())
            i += 1
        exprs.append(" ".join(block).strip())
    return exprs


def alert_blocks(text: str) -> dict[str, str]:
    """Each alerting rule's text, by alert name."""
    parts = re.split(r"(?m)^\s*- (?=alert:|record:)", text)
    blocks = {}
    for part in parts:
        m = re.match(r"alert:\s*(\S+)", part)
        if m:
            blocks[m.group(1)] = part
    return blocks


def dashboard_exprs(dashboard: Dashboard) -> list[str]:
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", []) if t.get("expr")]


def github_anchor(heading: str) -> str:
    slug = heading.strip().lower()
    slug = re.sub(r"[^\w\- ]", "", slug)
    return slug.replace(" ", "-")


@pytest.fixture(scope="module")
def alerts_text() -> str:
    return ALERTS.read_text()


@pytest.fixture(scope="module")
def dashboard() -> Dashboard:
    loaded: Dashboard = json.loads(DASHBOARD.read_text())
    return loaded


def _promtool() -> str:
    tool = shutil.which("promtool")
    if tool is None:
        pytest.skip("promtool not installed (apt-get install prometheus); CI installs it")
    return tool


# ---------------------------------------------------------------------------- promtool


def test_promtool_check_rules() -> None:
    result = subprocess.run([_promtool(), "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_unit_tests() -> None:
    result = subprocess.run(
        [_promtool(), "test", "rules", str(ALERTS_TEST)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=PROM,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboard_queries_parse(tmp_path: Path, dashboard: Dashboard) -> None:
    """Every panel query is valid PromQL (checked as a recording rule, Grafana variables filled in)."""
    tool = _promtool()
    rules = []
    for i, expr in enumerate(dashboard_exprs(dashboard)):
        expr = expr.replace("$__rate_interval", "5m").replace("$instance", ".*").replace("$terminal", ".*")
        rules.append({"record": f"dashboard:query{i}", "expr": expr})
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))  # JSON is YAML
    result = subprocess.run([tool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


# ---------------------------------------------------------------------------- the rules themselves


def test_alert_metrics_are_exported(alerts_text: str) -> None:
    exprs = rule_exprs(alerts_text)
    assert len(exprs) >= 10
    used = {name for expr in exprs for name in METRIC.findall(expr)}
    unknown = sorted(n for n in used if not known_metric(n))
    assert not unknown, f"alerts use metrics the daemon does not export: {unknown}"


def test_every_alert_is_documented(alerts_text: str) -> None:
    blocks = alert_blocks(alerts_text)
    expected = {
        "GatewaydDown",
        "GatewaydDatabaseDown",
        "GatewaydTerminalDown",
        "GatewaydTendersUnresolved",
        "GatewaydOrphanedPayments",
        "GatewaydCheckoutFailureRateCritical",
        "GatewaydCheckoutFailureRateHigh",
        "GatewaydCheckoutFailureRateElevated",
        "GatewaydCheckoutSlow",
    }
    assert expected <= set(blocks), expected - set(blocks)
    headings = {github_anchor(m) for m in re.findall(r"(?m)^#{1,6}\s+(.+)$", OPERATIONS.read_text())}
    for name, block in blocks.items():
        assert re.search(r"severity:\s*(critical|warning|info)\b", block), name
        for key in ("summary", "description", "runbook_url"):
            assert re.search(rf"\b{key}:", block), f"{name}: no {key} annotation"
        anchor = re.search(r'runbook_url:\s*"docs/operations\.md#([\w-]+)"', block)
        assert anchor, f"{name}: runbook_url should point into docs/operations.md"
        assert anchor.group(1) in headings, f"{name}: docs/operations.md has no #{anchor.group(1)}"
    assert "{{ $labels.terminal }}" in blocks["GatewaydTerminalDown"]


def test_thresholds(alerts_text: str) -> None:
    blocks = alert_blocks(alerts_text)
    assert "gatewayd_terminal_up == 0" in blocks["GatewaydTerminalDown"]
    assert re.search(r"for:\s*5m", blocks["GatewaydTerminalDown"])
    assert "gatewayd_oldest_unresolved_tender_age_seconds > 600" in blocks["GatewaydTendersUnresolved"]
    assert "gatewayd_orphaned_payments > 0" in blocks["GatewaydOrphanedPayments"]
    assert re.search(r"for:\s*10m", blocks["GatewaydOrphanedPayments"])
    assert "gatewayd_database_up == 0" in blocks["GatewaydDatabaseDown"]
    assert 'up{job="gatewayd"} == 0' in blocks["GatewaydDown"]
    assert "> 0.10" in blocks["GatewaydCheckoutFailureRateCritical"]
    assert "> 0.05" in blocks["GatewaydCheckoutFailureRateHigh"]
    assert "> 0.03" in blocks["GatewaydCheckoutFailureRateElevated"]
    assert "histogram_quantile(0.95" in blocks["GatewaydCheckoutSlow"]
    assert "[10m]" in blocks["GatewaydCheckoutSlow"] and ") > 15" in blocks["GatewaydCheckoutSlow"]
    # the failure rate ignores the POS's own mistakes
    assert alerts_text.count("validation_error|idempotency_conflict") >= 2


def test_every_alert_is_tested_firing_and_quiet(alerts_text: str) -> None:
    tests = ALERTS_TEST.read_text()
    cases = re.findall(r"alertname:\s*(\S+)\s*\n\s*exp_alerts:\s*(\[\])?", tests)
    fires = {name for name, empty in cases if not empty}
    quiet = {name for name, empty in cases if empty}
    for name in alert_blocks(alerts_text):
        assert name in fires, f"no promtool test where {name} fires"
        assert name in quiet, f"no promtool test where {name} stays quiet"


def test_rule_parser_agrees_with_yaml(alerts_text: str) -> None:
    yaml = pytest.importorskip("yaml")
    doc = yaml.safe_load(alerts_text)
    exprs = [" ".join(str(r["expr"]).split()) for g in doc["groups"] for r in g["rules"]]
    assert [" ".join(e.split()) for e in rule_exprs(alerts_text)] == exprs


# ---------------------------------------------------------------------------- the dashboard


def test_dashboard_metrics_are_exported(dashboard: Dashboard) -> None:
    used = {name for expr in dashboard_exprs(dashboard) for name in METRIC.findall(expr)}
    unknown = sorted(n for n in used if not known_metric(n))
    assert not unknown, f"dashboard uses metrics the daemon does not export: {unknown}"


def test_dashboard_shape(dashboard: Dashboard) -> None:
    assert dashboard["uid"] and dashboard["title"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    for panel in dashboard["panels"]:
        assert {"x", "y", "w", "h"} <= set(panel["gridPos"]), panel["title"]
        if panel["type"] != "row":
            assert panel.get("targets"), f"{panel['title']}: no query"
    names = {v["name"] for v in dashboard["templating"]["list"]}
    assert {"datasource", "instance", "terminal"} <= names


REQUIRED_PANELS = {
    "terminals up": lambda e: "gatewayd_terminal_up" in e,
    "terminal status": lambda e: "gatewayd_terminal_status" in e,
    "queue depth": lambda e: "gatewayd_terminal_queue_depth" in e,
    "checkouts by outcome rate": lambda e: "by (outcome)" in e and "rate(gatewayd_checkouts_total" in e,
    "failure rate": lambda e: "gatewayd_checkouts_total" in e and '"completed|' in e and "/" in e,
    "checkout p95": lambda e: "histogram_quantile(0.95" in e and "gatewayd_checkout_duration_seconds_bucket" in e,
    "tenders unresolved": lambda e: "gatewayd_tenders_unresolved" in e,
    "orphans": lambda e: "gatewayd_orphaned_payments" in e,
    "database up": lambda e: "gatewayd_database_up" in e,
    "the guide's failure rate target": lambda e: "gatewayd_target_failure_rate" in e and 'cause="other"' in e,
    "the guide's transaction time target": lambda e: "gatewayd_target_transaction_seconds_avg" in e,
    "database pool": lambda e: "gatewayd_database_pool_in_use" in e,
    "terminal request latency": lambda e: (
        "histogram_quantile" in e and "gatewayd_terminal_request_duration_seconds_bucket" in e
    ),
}


@pytest.mark.parametrize("topic", sorted(REQUIRED_PANELS))
def test_dashboard_has_panel(dashboard: Dashboard, topic: str) -> None:
    matches = [
        p["title"]
        for p in dashboard["panels"]
        if any(REQUIRED_PANELS[topic](t.get("expr", "")) for t in p.get("targets", []))
    ]
    assert matches, f"no panel shows {topic}"
