from __future__ import annotations

from pathlib import Path

from tests.harness import card, cash, running_gateway


async def test_cash_and_card(dsn: str, tmp_path: Path) -> None:
    async with running_gateway(dsn, tmp_path) as gw:
        a = await gw.checkout(cash(1000, tendered=2000))
        assert a.status == 200, a.body
        assert a.body["status"] == "completed" and a.body["change"] == 1000
        b = await gw.checkout(card(2454))
        assert b.status == 200, b.body
        assert b.body["tenders"][0]["status"] == "approved"
        await gw.check_invariants()
