"""Operator commands and endpoints: orphans, cleanup, reconcile (both ways), settle guard, report."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from gatewayd.stack import authkey_for
from tests.dialects import rest_only
from tests.harness import Gateway, card, running_gateway
from tests.procs import run_cli

NO_BATCH = "reconcile compares the terminal's open batch, which the XML dialect cannot list"


@pytest.fixture
async def gw(dsn: str, tmp_path: Path) -> AsyncIterator[Gateway]:
    async with running_gateway(dsn, tmp_path, terminals=2) as gateway:
        yield gateway


async def _sim_sale(gw: Gateway, tpn: str, ref: str, amount: str) -> None:
    body = {
        "Tpn": tpn,
        "Authkey": authkey_for(tpn),
        "Amount": amount,
        "PaymentType": "Credit",
        "ReferenceId": ref,
        "SPInProxyTimeout": 5,
    }
    async with aiohttp.ClientSession() as s, s.post(gw.simulator.url + "/v2/Payment/Sale", json=body) as resp:
        assert resp.status == 200


async def test_orphans_listed_and_voided_by_recovery(gw: Gateway) -> None:
    answer = await gw.checkout(card(1200))
    assert answer.status == 200
    # Simulate the old failure: the order failed but the charge stayed approved.
    await gw.fetch("UPDATE orders SET status = 'payment_failed' WHERE store_id = $1", gw.store_id)
    sock = gw.daemon.config.api.socket
    code, out = await run_cli("orphans", "--socket", sock)
    assert code == 3 and answer.body["tenders"][0]["reference_id"] in out
    code, out = await run_cli("orphans", "--socket", sock, "--json")
    assert json.loads(out)["count"] == 1
    report = await gw.daemon.recovery.run_once()  # type: ignore[union-attr]
    assert report.orphans_voided == 1
    assert [t["status"] for t in await gw.ledger()] == ["voided"]
    code, out = await run_cli("orphans", "--socket", sock)
    assert code == 0 and "no orphaned payments" in out


async def test_reconcile_finds_both_ways(gw: Gateway) -> None:
    rest_only(NO_BATCH)
    ok = await gw.checkout(card(1500))
    lost = await gw.checkout(card(1600))
    assert ok.status == lost.status == 200
    stranger = "STRANGER" + uuid.uuid4().hex[:8].upper()
    await _sim_sale(gw, gw.tpns["lane-1"], stranger, "9.99")
    # The terminal's batch loses one charge (as if settled elsewhere): the clerk voids it on the keypad.
    ref_lost = lost.body["tenders"][0]["reference_id"]
    await gw.simulator_post(f"/_sim/terminals/{gw.tpns['lane-1']}/void/{ref_lost}")
    await gw.fetch(
        "UPDATE payment_transactions SET amount = 1501, approved_amount = 1501 WHERE store_id = $1"
        " AND reference_id = $2",
        gw.store_id,
        ok.body["tenders"][0]["reference_id"],
    )
    answer = await gw.client.reconcile("lane-1")
    assert answer.status == 200, answer.body
    body = answer.body
    assert [d["reference_id"] for d in body["missing_in_db"]] == [stranger]
    assert [d["reference_id"] for d in body["status_mismatch"]] == [ref_lost]
    assert [d["reference_id"] for d in body["amount_mismatch"]] == [ok.body["tenders"][0]["reference_id"]]
    assert all(d["suggested_action"] for k in ("missing_in_db", "status_mismatch", "amount_mismatch") for d in body[k])
    code, out = await run_cli("reconcile", "--socket", gw.daemon.config.api.socket, "--terminal", "lane-1")
    assert code == 3 and stranger in out


async def test_reconcile_missing_at_terminal_after_settlement(gw: Gateway) -> None:
    rest_only(NO_BATCH)
    answer = await gw.checkout(card(1700, "lane-2"))
    settled = await gw.client.settle("lane-2")
    assert settled.status == 200 and settled.body["ok"], settled.body
    later = await gw.checkout(card(1800, "lane-2"))
    assert later.status == 200
    await gw.simulator_post(f"/_sim/terminals/{gw.tpns['lane-2']}/settle")  # on its own, behind gatewayd's back
    body = (await gw.client.reconcile("lane-2")).body
    assert [d["reference_id"] for d in body["missing_at_terminal"]] == [later.body["tenders"][0]["reference_id"]]
    assert answer.body["tenders"][0]["reference_id"] not in json.dumps(body)


async def test_settle_refused_while_unresolved(gw: Gateway) -> None:
    answer = await gw.checkout(card(1900))
    await gw.fetch("UPDATE payment_transactions SET status = 'unknown' WHERE store_id = $1", gw.store_id)
    refused = await gw.client.settle("lane-1")
    assert refused.status == 409 and refused.error_code == "invalid_state"
    assert refused.body["error"]["details"]["unresolved"] == 1
    await gw.fetch("UPDATE payment_transactions SET status = 'approved' WHERE store_id = $1", gw.store_id)
    assert (await gw.client.settle("lane-1")).status == 200
    assert answer.status == 200


async def test_cleanup_and_report_straight_to_the_database(gw: Gateway) -> None:
    await gw.fetch(
        """INSERT INTO orders (store_id, id, order_number, status, idempotency_key, request_hash, subtotal,
                               total, currency, created_at)
           VALUES ($1, $2, 'OLD1', 'pending_payment', 'old-1', 'h', 0, 0, 'USD', now() - interval '1 hour')""",
        gw.store_id,
        uuid.uuid4(),
    )
    code, out = await run_cli(
        "cleanup",
        "--older-than",
        "30m",
        "--socket",
        "/nonexistent.sock",
        "--dsn",
        gw.dsn,
        "--store",
        gw.store_id,
    )
    assert code == 0 and "cancelled 1" in out, out
    await gw.checkout(card(2100))
    code, out = await run_cli("report", "--socket", "/nonexistent.sock", "--dsn", gw.dsn, "--store", gw.store_id)
    assert code == 0, out
    assert "Payment success rate, last hour" in out and "Lane lane-1" in out
    assert "cannot reach gatewayd at /nonexistent.sock (from --socket)" in out  # said, then worked around
    code, out = await run_cli("orphans", "--socket", "/nonexistent.sock")
    assert code == 1 and "cannot reach gatewayd at /nonexistent.sock (from --socket)" in out, out
    assert "give --config or --dsn" in out


async def test_direct_reconcile_never_drives_a_terminal_behind_a_running_daemon(gw: Gateway) -> None:
    """One owner per terminal: with the daemon up (but its socket not given), the CLI refuses to
    talk to the terminals itself and names the daemon; once the daemon has let go, it may."""
    rest_only(NO_BATCH)
    assert gw.daemon.config_path is not None
    args = ("reconcile", "--socket", "/nonexistent.sock", "--config", gw.daemon.config_path)
    code, out = await run_cli(*args)
    assert code == 1 and "driven by a running gatewayd" in out, out
    await gw.fetch("UPDATE payment_processors SET owner_until = now() - interval '1 second' WHERE store_id = $1",
                   gw.store_id)  # fmt: skip
    code, out = await run_cli(*args)
    assert code == 0 and "nothing to do" in out, out
    code, out = await run_cli(*args, "--terminal", "lane-9")
    assert code == 1 and f"error: no terminal 'lane-9' in {gw.daemon.config_path}" in out, out
