"""card_mode = "auth_capture": authorize, commit the order, then capture; a rollback voids the hold."""

from __future__ import annotations

from pathlib import Path

from gatewayd import failpoints
from tests.harness import card, running_gateway

AUTH_CAPTURE = '[checkout]\ncard_mode = "auth_capture"\n'


async def test_authorize_commit_then_capture(dsn: str, tmp_path: Path) -> None:
    async with running_gateway(dsn, tmp_path, extra=AUTH_CAPTURE) as gw:
        answer = await gw.checkout(card(2500))
        assert answer.status == 200, answer.body
        assert answer.body["status"] == "completed"
        view = (await gw.client.get_checkout(answer.body["id"])).body
        assert view["payment_status"] == "paid"
        ledger = await gw.ledger()
        assert [(t["type"], t["status"], t["amount"]) for t in ledger] == [("capture", "captured", 2500)]
        rows = await gw.fetch(
            "SELECT operation, capture_status FROM payment_transactions WHERE store_id = $1", gw.store_id
        )
        assert [(r["operation"], r["capture_status"]) for r in rows] == [("auth", "captured")]
        await gw.check_invariants()


async def test_declined_second_card_voids_the_authorization(dsn: str, tmp_path: Path) -> None:
    async with running_gateway(dsn, tmp_path, extra=AUTH_CAPTURE) as gw:
        answer = await gw.checkout(card(1000, "lane-1"), card(1051, "lane-2"))
        assert answer.status == 402, answer.body
        ledger = sorted((t["type"], t["status"]) for t in await gw.ledger())
        assert ledger == [("auth", "declined"), ("auth", "voided")]
        await gw.check_invariants()


async def test_capture_left_undone_is_finished_by_recovery(dsn: str, tmp_path: Path) -> None:
    """The process stumbles right after the commit, before the capture: recovery captures."""
    async with running_gateway(dsn, tmp_path, extra=AUTH_CAPTURE) as gw:
        failpoints.configure("after_commit=raise")
        try:
            answer = await gw.checkout(card(3000), key="capture-later")
        finally:
            failpoints.configure("")
        assert answer.status == 500 and answer.error_code == "internal_error"
        view = (await gw.client.find_checkout("capture-later")).body
        assert (view["status"], view["payment_status"]) == ("completed", "authorized")
        assert [(t["type"], t["status"]) for t in await gw.ledger()] == [("auth", "approved")]
        report = await gw.daemon.recovery.run_once()  # type: ignore[union-attr]
        assert report.captures == 1
        view = (await gw.client.find_checkout("capture-later")).body
        assert view["payment_status"] == "paid"
        assert [(t["type"], t["status"]) for t in await gw.ledger()] == [("capture", "captured")]
        await gw.check_invariants()
