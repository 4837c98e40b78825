"""The guide's targets, measured (issue 17): `GET /v1/report/targets` and `gatewayd report
--targets` over a store with a known mix (approvals, genuine declines, a terminal-offline
failure, an orphan, a slow checkout, an old failure outside the week), their numbers equal to
numbers computed here independently from the rows; the same figures as Prometheus gauges.

Real daemon, real simulator over HTTP, real PostgreSQL (tests/harness.py).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from gatewayd.checkout import targets
from tests.harness import Gateway, card, cash, running_gateway
from tests.procs import run_cli

GENUINE = {"declined", "cancelled_by_customer", "no_card_presented", "partial_approval_reversed"}


async def _independent(gw: Gateway, days: int) -> dict[str, Any]:
    """The figures of one window, from the rows, without the report's SQL."""
    orders = await gw.fetch(
        """SELECT o.id, o.status, o.created_at, o.completed_at, o.failed_at, o.failure_code
             FROM orders o WHERE o.store_id = $1 AND o.created_at > now() - make_interval(days => $2)""",
        gw.store_id,
        days,
    )
    tenders = await gw.fetch(
        "SELECT order_id, tender_type, kind, decline_reason FROM payment_transactions WHERE store_id = $1",
        gw.store_id,
    )
    by_order: dict[Any, list[Any]] = {}
    for t in tenders:
        if t["kind"] == "payment":
            by_order.setdefault(t["order_id"], []).append(t)
    final = [
        o
        for o in orders
        if o["status"] not in ("pending_payment", "payment_processing", "payment_authorized")
        and any(t["tender_type"] == "card" for t in by_order.get(o["id"], []))
    ]
    failed = [o for o in final if o["status"] in ("payment_failed", "cancelled")]
    genuine = [o for o in failed if any(t["decline_reason"] in GENUINE for t in by_order[o["id"]])]
    timed = [o for o in final if o["status"] != "cancelled" and (o["completed_at"] or o["failed_at"])]
    seconds = [((o["completed_at"] or o["failed_at"]) - o["created_at"]).total_seconds() for o in timed]
    return {
        "card_checkouts": len(final),
        "failed": len(failed),
        "genuine_declines": len(genuine),
        "other_failures": len(failed) - len(genuine),
        "average_s": sum(seconds) / len(seconds) if seconds else None,
        "timed": len(timed),
    }


async def _make_the_mix(gw: Gateway) -> dict[str, str]:
    """Approvals, genuine declines, a terminal-offline failure, an orphan, a slow checkout."""
    made: dict[str, str] = {}
    for amount in (1000, 1201, 1302):
        assert (await gw.checkout(card(amount))).status == 200
    assert (await gw.checkout(cash(500))).status == 200  # cash only: not a card checkout
    assert (await gw.checkout(cash(700), card(800, "lane-2"))).status == 200  # split
    slow = await gw.checkout(card(1055))  # ..55: slow (slow_s)
    assert slow.status == 200, slow.body
    for amount in (2051, 2059, 2056):  # declined, cancelled by the customer, partial approval reversed
        assert (await gw.checkout(card(amount))).status == 402
    # the terminal drops off between health checks: the Sale is refused after the intent
    await gw.simulator_post(f"/_sim/terminals/{gw.tpns['lane-3']}/offline")
    offline = await gw.checkout(card(1400, "lane-3"))
    assert offline.status == 503 and offline.body["failure"]["reason"] == "terminal_offline", offline.body
    # an orphan: a completed sale whose batch the terminal settled on its own, then voided:
    # the order is voided around the charge, which stands until refunded
    sale = await gw.checkout(card(1500, "lane-4"))
    assert sale.status == 200
    await gw.simulator_post(f"/_sim/terminals/{gw.tpns['lane-4']}/settle")
    voided = await gw.client.void(sale.body["id"])
    assert voided.status == 409 and voided.error_code == "already_settled", voided.body
    made["orphan"] = sale.body["id"]
    # a failure 10 days old: in the month, not in the week
    old = await gw.checkout(card(3051))
    assert old.status == 402
    await gw.fetch(
        "UPDATE orders SET created_at = created_at - interval '10 days' WHERE store_id = $1 AND id = $2",
        gw.store_id,
        old.body["id"],
    )
    made["old"] = old.body["id"]
    return made


async def test_the_targets_report_matches_the_rows(dsn: str, tmp_path: Path) -> None:
    # health checks once at start (then hourly): lane-3 can drop off between two of them
    async with running_gateway(dsn, tmp_path, sections={"health": {"interval_s": 3600}}) as gw:
        await _wait_until_checked(gw)
        made = await _make_the_mix(gw)
        reconcile = await gw.client.reconcile()
        assert reconcile.status == 200, reconcile.body
        answer = await gw.client.request("GET", "/v1/report/targets")
        assert answer.status == 200, answer.body
        body = answer.body
        figures = body["figures"]
        week, month = await _independent(gw, 7), await _independent(gw, 30)
        for mine, theirs in ((week, figures["week"]), (month, figures["month"])):
            for key in ("card_checkouts", "failed", "genuine_declines", "other_failures"):
                assert theirs[key] == mine[key], (key, theirs, mine)
            assert theirs["failure_rate"] == pytest.approx(mine["other_failures"] / mine["card_checkouts"])
            assert theirs["genuine_decline_rate"] == pytest.approx(mine["genuine_declines"] / mine["card_checkouts"])
            assert theirs["failure_rate_all"] == pytest.approx(mine["failed"] / mine["card_checkouts"])
        # the mix as made: 3 + split + slow + orphan's sale approved, 3 genuine declines, 1 offline
        assert (week["card_checkouts"], week["genuine_declines"], week["other_failures"]) == (10, 3, 1)
        assert (month["card_checkouts"], month["genuine_declines"]) == (11, 4)
        assert figures["average_transaction_s"] == pytest.approx(week["average_s"], abs=1e-3)
        assert figures["timed_checkouts"] == week["timed"]
        assert figures["average_transaction_s"] > 0.2  # the slow one weighs in (3 s of 10)
        orphans = await gw.client.orphans()
        assert figures["orphaned_payments"] == orphans.body["count"] == 1
        assert orphans.body["orphans"][0]["order_id"] == made["orphan"]
        rows = await gw.fetch(
            "SELECT id, health_status, last_health_check > now() - interval '10 minutes' AS fresh"
            " FROM payment_processors WHERE store_id = $1 AND is_active",
            gw.store_id,
        )
        reporting = {r["id"] for r in rows if r["health_status"] != "unknown" and r["fresh"]}
        assert {t["id"] for t in figures["terminals"] if t["reporting_health"]} == reporting
        found = sum(len(reconcile.body[k]) for k in ("missing_in_db", "missing_at_terminal", "amount_mismatch",
                                                       "status_mismatch", "uncaptured", "needs_refund"))  # fmt: skip
        assert sum(t["discrepancies"] for t in figures["terminals"]) == found
        assert all(t["reconciled_at"] for t in figures["terminals"])

        met = {(t["stage"], t["metric"]): t for t in body["targets"]}
        week_rate = week["other_failures"] / week["card_checkouts"]  # 1 of 10: 10%
        assert met[("week_1", "failure_rate")]["met"] is (week_rate < 0.10)
        assert met[("week_2", "failure_rate")]["met"] is (week_rate < 0.05)
        assert met[("month_1", "failure_rate")]["met"] is (month["other_failures"] / month["card_checkouts"] < 0.03)
        assert met[("week_1", "orphaned_payments")]["met"] is False
        assert met[("week_1", "terminals_reporting_health")]["met"] is (len(reporting) == len(rows))
        unread = reconcile.body.get("errors", {})
        assert met[("week_1", "reconciliation_discrepancies")]["met"] is (found == 0 and not unread)
        assert met[("week_2", "average_transaction_time")]["met"] is (week["average_s"] < 15)
        assert met[("month_1", "revenue_recovered")]["met"] is None  # not measurable here
        assert [t["stage"] for t in body["targets"]].count("week_1") == 4

        # the CLI, through the daemon and on the database directly: the same report
        sock = gw.daemon.config.api.socket
        code, out = await run_cli("report", "--targets", "--socket", sock, "--json")
        assert code == 3, out  # a target not met (the orphan)
        assert json.loads(out)["figures"]["week"] == figures["week"]
        code, out = await run_cli("report", "--targets", "--socket", sock)
        assert "NOT MET" in out and "orphaned payments" in out and "week 1" in out, out
        code, out = await run_cli(
            "report", "--targets", "--json", "--socket", str(tmp_path / "nobody.sock"), "--dsn", dsn,
            "--store", gw.store_id,
        )  # fmt: skip
        assert code == 3, out
        direct = json.loads(out[out.index("{") :])
        assert direct["figures"]["month"] == figures["month"]

        # the same figures as gauges, for the dashboard
        samples = targets.samples(targets.figures_of(await gw.daemon.maintenance.targets()))  # type: ignore[union-attr]
        gauges = {(name, tuple(sorted(labels.items()))): value for name, _, labels, value in samples}
        rate_key = ("gatewayd_target_failure_rate", (("cause", "other"), ("window", "7d")))
        assert gauges[rate_key] == pytest.approx(week_rate)
        assert gauges[("gatewayd_target_met", (("metric", "orphaned_payments"), ("stage", "week_1")))] == 0.0
        gw.daemon.metrics.snapshot.targets = samples
        scraped = gw.daemon.metrics.registry.get_sample_value(
            "gatewayd_target_failure_rate", {"cause": "other", "window": "7d"}
        )
        assert scraped == pytest.approx(week_rate)


async def _wait_until_checked(gw: Gateway) -> None:
    for _ in range(200):
        rows = await gw.fetch(
            "SELECT count(*) AS n FROM payment_processors WHERE store_id = $1 AND health_status = 'online'",
            gw.store_id,
        )
        if rows[0]["n"] == len(gw.tpns):
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the terminals were never checked")


def test_an_empty_store_measures_nothing_it_cannot() -> None:
    row = {
        "week_checkouts": 0,
        "week_failed": 0,
        "week_genuine": 0,
        "week_avg_s": None,
        "week_timed": 0,
        "month_checkouts": 0,
        "month_failed": 0,
        "month_genuine": 0,
        "orphans": 0,
        "terminals": [{"id": "lane-1", "reporting": True, "reconciled_at": None, "reconcile": None}],
    }
    view = targets.evaluate(targets.figures_of(row))
    met = {(t.stage, t.metric): t.met for t in view.targets}
    assert met[("week_1", "failure_rate")] is None and met[("week_2", "average_transaction_time")] is None
    assert met[("week_1", "orphaned_payments")] is True and met[("week_1", "terminals_reporting_health")] is True
    assert met[("week_1", "reconciliation_discrepancies")] is None  # lane-1 never reconciled
