"""The eight money corners of the state-machine issue, each through the real API, PostgreSQL and the
SPIn simulator over HTTP. Every test here failed on the code before the state machine had a home."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gatewayd import failpoints
from gatewayd.terminals.lane import Lane
from tests.dialects import reconcile_listed
from tests.harness import Gateway, card, config_text, order, running_gateway

AUTH_CAPTURE = '[checkout]\ncard_mode = "auth_capture"\n'


async def _wait_for(gw: Gateway, query: str, *args: Any, timeout_s: float = 10.0) -> Any:
    """Poll until `query` returns a truthy first value (a state another task is about to reach)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while loop.time() < deadline:
        value = await gw.fetchval(query, *args)
        if value:
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"never reached: {query}")


def _edit(path: Path, change: Callable[[str], str]) -> None:
    """Rewrite the daemon's config file (before a SIGHUP-style reload)."""
    path.write_text(change(path.read_text()))


async def _metric(gw: Gateway, name: str) -> float:
    assert gw.daemon.metrics_runner is not None
    site = next(iter(gw.daemon.metrics_runner.sites))
    url = site.name.rstrip("/") + "/metrics"
    async with aiohttp.ClientSession() as s, s.get(url) as resp:
        text = await resp.text()
    total = 0.0
    for line in text.splitlines():
        if re.match(rf"^{re.escape(name)}(\{{|\s)", line):
            total += float(line.rsplit(" ", 1)[1])
    return total


# ------------------------------------------------------------------ 1. a void after the batch settled


async def test_void_after_settle_keeps_the_charge_and_tells_the_pos_to_refund(dsn: str, tmp_path: Path) -> None:
    async with running_gateway(dsn, tmp_path) as gw:
        answer = await gw.checkout(card(1500), lines=[{"sku": "MUG", "quantity": 1, "unit_price": 1500}])
        assert answer.status == 200, answer.body
        checkout_id = answer.body["id"]
        assert (await gw.client.settle("lane-1")).status == 200
        void = await gw.client.void(checkout_id)
        assert void.status == 409 and void.error_code == "already_settled", void.body
        details = void.body["error"]["details"]
        assert details["refund_amount"] == 1500 and details["next"].endswith(f"{checkout_id}/refunds")
        # The goods are back on the shelf; the charge stands, approved and settled, and stays listed.
        assert void.body["status"] == "voided"
        assert (void.body["tenders"][0]["status"], void.body["tenders"][0]["settled"]) == ("approved", True)
        assert await gw.fetchval("SELECT on_hand FROM inventory WHERE store_id = $1 AND sku = 'MUG'", gw.store_id) == 10
        assert await _metric(gw, "gatewayd_settled_charges_total") == 1
        orphans = (await gw.client.orphans()).body
        assert [(o["amount"], o["action"]) for o in orphans["orphans"]] == [(1500, "refund")]
        again = await gw.client.void(checkout_id)  # a retry says the same, and changes nothing
        assert again.status == 409 and again.error_code == "already_settled", again.body
        refund = await gw.client.refund(checkout_id, "refund-after-settle", 1500)
        assert refund.status == 200, refund.body
        assert refund.body["tenders"][0]["status"] == "refunded"
        assert (await gw.client.orphans()).body["count"] == 0
        assert sorted((t["type"], t["status"]) for t in await gw.ledger()) == [
            ("return", "returned"),
            ("sale", "approved"),
        ]
        await gw.check_invariants()


async def test_orphan_of_a_settled_batch_stays_listed_until_refunded(dsn: str, tmp_path: Path) -> None:
    """A rollback's void finds the batch settled (the terminal settled on its own): the charge stays
    approved, the order fails, and the charge is an orphan to refund, never erased."""
    async with running_gateway(dsn, tmp_path) as gw:
        failpoints.configure("during_void=raise")
        try:
            answer = await gw.checkout(card(1000, "lane-1"), card(2051, "lane-2"), key="settled-orphan")
        finally:
            failpoints.configure("")
        assert answer.status == 500, answer.body
        await gw.simulator_post(f"/_sim/terminals/{gw.tpns['lane-1']}/settle")
        await gw.daemon.recovery.run_once(startup=True)  # type: ignore[union-attr]
        view = (await gw.client.find_checkout("settled-orphan")).body
        assert view["status"] == "payment_failed", view
        assert [(t["status"], t.get("settled", False)) for t in view["tenders"]] == [
            ("approved", True),
            ("declined", False),
        ]
        orphans = (await gw.client.orphans()).body
        assert orphans["count"] == 1
        assert (orphans["orphans"][0]["amount"], orphans["orphans"][0]["action"]) == (1000, "refund")
        report = (await gw.client.reconcile("lane-1")).body
        if reconcile_listed(report, "lane-1"):
            assert [d["reference_id"] for d in report["needs_refund"]] == [view["tenders"][0]["reference_id"]]
        refund = await gw.client.refund(view["id"], "refund-orphan", 1000)
        assert refund.status == 200, refund.body
        assert (await gw.client.orphans()).body["count"] == 0
        assert (await gw.client.reconcile("lane-1")).body["needs_refund"] == []
        await gw.check_invariants()


# ------------------------------------------------------------------ 2. a charge voided at the terminal


async def test_a_charge_voided_at_the_keypad_before_the_inquiry_is_voided_not_approved(
    dsn: str, tmp_path: Path
) -> None:
    async with running_gateway(dsn, tmp_path) as gw:
        # ..52: approved, the answer lost: the lane inquires once the HTTP timeout has passed.
        pending = asyncio.ensure_future(gw.checkout(card(3052), key="keypad-void"))
        ref = await _wait_for(
            gw, "SELECT reference_id FROM payment_transactions WHERE store_id = $1 AND status = 'processing'",
            gw.store_id,
        )  # fmt: skip
        for _ in range(100):  # until the terminal has the approval on record
            if any(t["reference_id"] == ref for t in await gw.ledger()):
                break
            await asyncio.sleep(0.05)
        await gw.simulator_post(f"/_sim/terminals/{gw.tpns['lane-1']}/void/{ref}")
        answer = await pending
        assert answer.status == 402, answer.body
        assert answer.body["status"] == "payment_failed"
        assert answer.body["tenders"][0]["status"] == "voided"
        assert answer.body["failure"]["code"] == "card_voided"
        await gw.check_invariants()


# ------------------------------------------------------------------ 3. "misconfigured" never decides
# (through a real crash and restart: tests/recovery/test_crash_matrix.py,
# test_recovery_never_takes_misconfigured_for_not_charged)


# ------------------------------------------------------------------ 4. 200 only for completed


async def test_a_checkout_whose_void_did_not_go_through_is_504_not_200(dsn: str, tmp_path: Path) -> None:
    async with running_gateway(dsn, tmp_path) as gw:
        failpoints.configure("during_void=stall:0.5@1")
        try:
            pending = asyncio.ensure_future(gw.checkout(card(1000, "lane-1"), card(2051, "lane-2")))
            await _wait_for(
                gw, "SELECT 1 FROM payment_transactions WHERE store_id = $1 AND status = 'declined'", gw.store_id
            )
            await gw.simulator_post(f"/_sim/terminals/{gw.tpns['lane-1']}/offline")
            answer = await pending
        finally:
            failpoints.configure("")
        assert answer.status == 504 and answer.error_code == "outcome_pending", answer.body
        assert answer.body["status"] == "payment_processing"  # the checkout itself, beside the error
        await gw.simulator_post(f"/_sim/terminals/{gw.tpns['lane-1']}/online")
        await gw.daemon.recovery.run_once(startup=True)  # type: ignore[union-attr]
        view = (await gw.client.get_checkout(answer.body["id"])).body
        assert view["status"] == "payment_failed"
        await gw.check_invariants()


async def test_a_cancelled_checkout_answers_402_checkout_cancelled(
    dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running_gateway(dsn, tmp_path) as gw:
        body = order(card(900), key="cancelled-later")
        # Its lane busy when the intent was recorded, so the intent did not stamp the card sent
        # (sql/010): a checkout stopped before its card left is pending, which cleanup cancels.
        monkeypatch.setattr(Lane, "idle", property(lambda self: False))
        failpoints.configure("after_intent_commit=raise")
        try:
            assert (await gw.client.checkout(body)).status == 500
        finally:
            failpoints.configure("")
        # Twenty minutes pass: the order is stale and its lease long gone.
        await gw.fetch(
            "UPDATE orders SET created_at = now() - interval '20 minutes', lease_until = now() - interval '1 minute'"
            " WHERE store_id = $1",
            gw.store_id,
        )
        assert (await gw.client.cleanup(15)).body["cancelled"] == 1
        again = await gw.client.checkout(body)
        assert again.status == 402 and again.error_code == "checkout_cancelled", again.body
        assert again.body["status"] == "cancelled"
        assert await gw.ledger() == []
        await gw.check_invariants()


# ------------------------------------------------------------------ 5. auth-capture and settling


async def test_settle_is_refused_while_a_capture_is_owed(dsn: str, tmp_path: Path) -> None:
    async with running_gateway(dsn, tmp_path, extra=AUTH_CAPTURE) as gw:
        failpoints.configure("after_commit=raise")
        try:
            assert (await gw.checkout(card(2500), key="owed")).status == 500
        finally:
            failpoints.configure("")
        refused = await gw.client.settle("lane-1")
        assert refused.status == 409 and refused.body["error"]["details"]["captures_pending"] == 1, refused.body
        report = (await gw.client.reconcile("lane-1")).body
        if reconcile_listed(report, "lane-1"):
            assert [d["kind"] for d in report["uncaptured"]] == ["uncaptured"] and report["matched"] == 0
        await gw.daemon.recovery.run_once()  # type: ignore[union-attr]
        assert (await gw.client.settle("lane-1")).status == 200
        view = (await gw.client.find_checkout("owed")).body
        assert view["payment_status"] == "paid"
        await gw.check_invariants()


async def test_a_capture_lost_to_a_settle_is_alerted_and_never_counted_as_paid(dsn: str, tmp_path: Path) -> None:
    async with running_gateway(dsn, tmp_path, extra=AUTH_CAPTURE) as gw:
        failpoints.configure("after_commit=raise")
        try:
            assert (await gw.checkout(card(2500), key="lost-capture")).status == 500
        finally:
            failpoints.configure("")
        await gw.simulator_post(f"/_sim/terminals/{gw.tpns['lane-1']}/settle")  # the terminal settles on its own
        await gw.daemon.recovery.run_once()  # type: ignore[union-attr]
        view = (await gw.client.find_checkout("lost-capture")).body
        assert (view["status"], view["payment_status"]) == ("completed", "authorized")
        assert view["tenders"][0]["settled"] is True
        assert await _metric(gw, "gatewayd_settled_charges_total") == 1
        capture = await gw.fetchval("SELECT capture_status FROM payment_transactions WHERE store_id = $1", gw.store_id)
        assert capture == "pending"
        # Never money received: the invariants count the hold as held, not charged, and pass.
        await gw.check_invariants()
        await gw.daemon.recovery.run_once()  # type: ignore[union-attr]
        assert [(t["type"], t["status"]) for t in await gw.ledger()] == [("auth", "approved")]  # no capture retried


# ------------------------------------------------------------------ 6. reloads never abandon a sale


async def test_reload_edits_a_lane_in_place_while_a_sale_is_in_flight(dsn: str, tmp_path: Path) -> None:
    async with running_gateway(dsn, tmp_path, slow_s=2.0) as gw:
        assert gw.daemon.fleet is not None
        lane = gw.daemon.fleet["lane-1"]
        pending = asyncio.ensure_future(gw.checkout(card(1055)))  # ..55: slow
        await _wait_for(
            gw, "SELECT 1 FROM payment_transactions WHERE store_id = $1 AND status = 'processing'", gw.store_id
        )
        assert gw.daemon.config_path is not None
        _edit(Path(gw.daemon.config_path), lambda text: text.replace('name = "Lane lane-1"', 'name = "Front counter"'))
        started = asyncio.get_running_loop().time()
        assert await gw.daemon.reload()
        assert asyncio.get_running_loop().time() - started < 1.0  # nothing waited for the sale
        assert gw.daemon.fleet["lane-1"] is lane
        answer = await pending
        assert answer.status == 200 and answer.body["status"] == "completed", answer.body
        await gw.check_invariants()


async def test_a_removed_terminal_still_answers_for_its_charges(dsn: str, tmp_path: Path) -> None:
    async with running_gateway(dsn, tmp_path) as gw:
        failpoints.configure("after_sale_answer=raise")
        try:
            assert (await gw.checkout(card(1300, "lane-1"), key="removed-terminal")).status == 500
        finally:
            failpoints.configure("")
        assert gw.daemon.config_path is not None
        tpns = {tid: tpn for tid, tpn in gw.tpns.items() if tid != "lane-1"}
        body = config_text(gw.store_id, Path("x"), Path("y"), gw.dsn, gw.simulator_url, tpns)
        terminals = body[body.index("[[terminals]]") :]
        _edit(Path(gw.daemon.config_path), lambda text: text[: text.index("[[terminals]]")] + terminals)
        assert await gw.daemon.reload()
        assert "lane-1" not in gw.daemon.fleet  # type: ignore[operator]
        refused = await gw.checkout(card(500, "lane-1"))
        assert refused.status == 422 and refused.error_code == "unknown_terminal"
        await gw.daemon.recovery.run_once(startup=True)  # type: ignore[union-attr]
        view = (await gw.client.find_checkout("removed-terminal")).body
        assert view["status"] == "completed", view
        await gw.check_invariants()


# ------------------------------------------------------------------ 7. inventory rows that appear mid-flight


async def test_an_inventory_row_created_while_the_card_is_read_does_not_break_the_commit(
    dsn: str, tmp_path: Path
) -> None:
    async with running_gateway(dsn, tmp_path, slow_s=1.5) as gw:
        body = order(card(1055), lines=[{"sku": "GIFT-WRAP", "quantity": 1, "unit_price": 1055}])
        pending = asyncio.ensure_future(gw.client.checkout(body))
        await _wait_for(
            gw, "SELECT 1 FROM payment_transactions WHERE store_id = $1 AND status = 'processing'", gw.store_id
        )
        await gw.fetch("INSERT INTO inventory (store_id, sku, on_hand) VALUES ($1, 'GIFT-WRAP', 5)", gw.store_id)
        answer = await pending
        assert answer.status == 200 and answer.body["status"] == "completed", answer.body
        row = (await gw.fetch("SELECT on_hand, reserved FROM inventory WHERE store_id = $1 AND sku = 'GIFT-WRAP'",
                              gw.store_id))[0]  # fmt: skip
        assert (row["on_hand"], row["reserved"]) == (5, 0)  # sold untracked: the new row is not touched
        gw.stock["GIFT-WRAP"] = 5
        await gw.check_invariants()


async def test_a_partial_refund_with_restock_puts_back_only_the_refunded_lines(dsn: str, tmp_path: Path) -> None:
    async with running_gateway(dsn, tmp_path) as gw:
        lines = [
            {"sku": "COFFEE-1KG", "quantity": 2, "unit_price": 1000},
            {"sku": "MUG", "quantity": 1, "unit_price": 500},
        ]
        answer = await gw.client.checkout(order(card(2500), lines=lines))
        assert answer.status == 200, answer.body
        checkout_id = answer.body["id"]
        unnamed = await gw.client.refund(checkout_id, "r-unnamed", 500, restock=True)
        assert unnamed.status == 400 and unnamed.body["error"]["details"]["field"] == "lines", unnamed.body
        refund = await gw.client.refund(checkout_id, "r-mug", 500, restock=True, lines=[{"sku": "MUG", "quantity": 1}])
        assert refund.status == 200 and refund.body["status"] == "partially_refunded", refund.body
        stock = dict(await gw.fetch("SELECT sku, on_hand FROM inventory WHERE store_id = $1", gw.store_id))
        assert (stock["COFFEE-1KG"], stock["MUG"]) == (48, 10)
        await gw.check_invariants()


# ------------------------------------------------------------------ 8. leases fence every write


async def test_a_daemon_that_lost_the_lease_stops_and_writes_nothing(dsn: str, tmp_path: Path) -> None:
    async with running_gateway(dsn, tmp_path) as gw:
        failpoints.configure("after_sale_answer=stall:1.5")
        try:
            pending = asyncio.ensure_future(gw.checkout(card(1400), key="stolen"))
            await _wait_for(
                gw, "SELECT 1 FROM payment_transactions WHERE store_id = $1 AND status = 'processing'", gw.store_id
            )
            # Another daemon of the store took the order over (this one's lease ran out under it).
            await gw.fetch(
                "UPDATE orders SET lease_owner = 'another-daemon', lease_until = now() + interval '10 minutes'"
                " WHERE store_id = $1",
                gw.store_id,
            )
            answer = await pending
        finally:
            failpoints.configure("")
        assert answer.status == 504 and answer.error_code == "outcome_pending", answer.body
        rows = await gw.fetch("SELECT status FROM payment_transactions WHERE store_id = $1", gw.store_id)
        assert [r["status"] for r in rows] == ["processing"]  # the stale owner's answer was refused
        assert await _metric(gw, "gatewayd_leases_lost_total") >= 1
        # The lease comes back free: this daemon's recovery finishes the order by inquiry.
        await gw.fetch("UPDATE orders SET lease_until = now() - interval '1 second' WHERE store_id = $1", gw.store_id)
        await gw.daemon.recovery.run_once()  # type: ignore[union-attr]
        assert (await gw.client.find_checkout("stolen")).body["status"] == "completed"
        await gw.check_invariants()


async def test_a_void_waits_for_the_lease_another_daemon_holds(dsn: str, tmp_path: Path) -> None:
    async with running_gateway(dsn, tmp_path) as gw:
        answer = await gw.checkout(card(1600))
        assert answer.status == 200
        await gw.fetch(
            "UPDATE orders SET lease_owner = 'another-daemon', lease_until = now() + interval '10 minutes'"
            " WHERE store_id = $1",
            gw.store_id,
        )
        void = await gw.client.void(answer.body["id"])
        assert void.status == 504 and void.error_code == "outcome_pending", void.body
        assert [(t["type"], t["status"]) for t in await gw.ledger()] == [("sale", "approved")]
        await gw.fetch("UPDATE orders SET lease_owner = NULL, lease_until = NULL WHERE store_id = $1", gw.store_id)
        assert (await gw.client.void(answer.body["id"])).status == 200
        await gw.check_invariants()
