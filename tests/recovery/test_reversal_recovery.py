"""Recovery finishes voids and refunds that a crash interrupted."""

from __future__ import annotations

import uuid
from pathlib import Path

import aiohttp

from gatewayd import failpoints
from gatewayd.stack import authkey_for
from tests.harness import card, running_gateway


async def test_void_stopped_half_way_is_finished(dsn: str, tmp_path: Path) -> None:
    async with running_gateway(dsn, tmp_path) as gw:
        answer = await gw.checkout(
            card(1000, "lane-1"), card(2000, "lane-2"), lines=[{"sku": "MUG", "quantity": 1, "unit_price": 3000}]
        )
        first = answer.body["tenders"][0]["reference_id"]
        # the first card was voided at the terminal and recorded, then the process died
        tpn = gw.tpns["lane-1"]
        async with aiohttp.ClientSession() as s:
            await s.post(
                gw.simulator_url + "/v2/Payment/Void",
                json={"Tpn": tpn, "Authkey": authkey_for(tpn), "ReferenceId": first, "SPInProxyTimeout": 5},
            )
        await gw.fetch(
            "UPDATE payment_transactions SET status = 'voided' WHERE store_id = $1 AND reference_id = $2",
            gw.store_id,
            first,
        )
        report = await gw.daemon.recovery.run_once()  # type: ignore[union-attr]
        assert report.voids == 1
        view = (await gw.client.get_checkout(answer.body["id"])).body
        assert view["status"] == "voided"
        assert sorted(t["status"] for t in await gw.ledger()) == ["voided", "voided"]
        await gw.check_invariants()


async def test_refund_interrupted_before_sending_is_failed_not_sent(dsn: str, tmp_path: Path) -> None:
    async with running_gateway(dsn, tmp_path) as gw:
        answer = await gw.checkout(card(1500))
        store = gw.daemon.coordinator.store  # type: ignore[union-attr]
        refund_id = uuid.uuid4()
        result = await store.begin_refund(
            {
                "order_id": answer.body["id"],
                "refund_id": str(refund_id),
                "transaction_id": str(uuid.uuid4()),
                "idempotency_key": "rf-crash",
                "request_hash": "h",
                "amount": 500,
                "restock": False,
                "reference_id": uuid.uuid4().hex[:20].upper(),
                "timeout_s": 2,
            }
        )
        assert result["outcome"] == "created"
        report = await gw.daemon.recovery.run_once(startup=True)  # type: ignore[union-attr]
        assert report.refunds == 1
        view = (await gw.client.get_checkout(answer.body["id"])).body
        assert view["status"] == "completed" and view["refunds"][0]["status"] == "failed"
        assert [t["type"] for t in await gw.ledger()] == ["sale"]
        await gw.check_invariants()


async def test_partial_approval_learnt_by_inquiry_is_voided(dsn: str, tmp_path: Path) -> None:
    """Found by the simulation: a Status answer carries no requested amount, so a partial approval
    learnt by inquiry must be judged against the tender's own amount."""
    async with running_gateway(dsn, tmp_path) as gw:
        failpoints.configure("after_sale_sent=raise")
        try:
            answer = await gw.checkout(card(2056), key="partial-inquiry")
        finally:
            failpoints.configure("")
        assert answer.status == 500
        await gw.daemon.recovery.run_once(startup=True)  # type: ignore[union-attr]
        view = (await gw.client.find_checkout("partial-inquiry")).body
        assert view["status"] == "payment_failed" and view["tenders"][0]["status"] == "voided", view
        assert [(t["amount"], t["status"]) for t in await gw.ledger()] == [(1028, "voided")]
        await gw.check_invariants()


async def test_voided_authorization_is_never_captured(dsn: str, tmp_path: Path) -> None:
    """Found by the simulation: a checkout voided before its capture must not be captured later."""
    async with running_gateway(dsn, tmp_path, extra='[checkout]\ncard_mode = "auth_capture"\n') as gw:
        failpoints.configure("after_commit=raise")
        try:
            answer = await gw.checkout(card(2500), key="void-before-capture")
        finally:
            failpoints.configure("")
        view = (await gw.client.find_checkout("void-before-capture")).body
        voided = await gw.client.void(view["id"])
        assert voided.status == 200 and voided.body["status"] == "voided", voided.body
        report = await gw.daemon.recovery.run_once()  # type: ignore[union-attr]
        assert report.captures == 0
        assert [(t["type"], t["status"]) for t in await gw.ledger()] == [("auth", "voided")]
        assert answer.status == 500
        await gw.check_invariants()


async def test_void_in_flight_blocks_refunds_and_is_finished(dsn: str, tmp_path: Path) -> None:
    """Found by the simulation: a void has a durable intent; until it is resolved no refund may pay
    the customer a second time, and recovery finishes it."""
    async with running_gateway(dsn, tmp_path) as gw:
        answer = await gw.checkout(card(1800))
        failpoints.configure("during_void=raise")
        try:
            failed = await gw.client.void(answer.body["id"])
        finally:
            failpoints.configure("")
        assert failed.status == 500
        refused = await gw.client.refund(answer.body["id"], "rf-during-void", 1800)
        assert refused.status == 409 and refused.error_code == "invalid_state", refused.body
        report = await gw.daemon.recovery.run_once()  # type: ignore[union-attr]
        assert report.voids == 1
        assert (await gw.client.get_checkout(answer.body["id"])).body["status"] == "voided"
        assert [(t["type"], t["status"]) for t in await gw.ledger()] == [("sale", "voided")]
        await gw.check_invariants()
