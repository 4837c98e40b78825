"""Lanes driving the simulator: one at a time per terminal, lost answers resolved, nothing double-charged."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest

from gatewayd.terminals.lane import Inquire, Lane, Refund, Sale, Void
from gatewayd.terminals.outcomes import Approved, Declined, NotFound, Voided
from gatewayd.terminals.simulator import Simulator, running_simulator
from gatewayd.terminals.spin.driver import SpinDriver

from .conftest import MakeDriver
from .helpers import AUTHKEY, fast_sleep, new_ref, new_tpn, running


def lane_for(driver: SpinDriver, **kw: Any) -> Lane:
    settings: dict[str, Any] = {"sleep": fast_sleep, "inquiry_base_s": 0.01, "inquiry_cap_s": 0.05, **kw}
    return Lane(driver.terminal_id, driver, **settings)


def rows_for(simulator: Simulator, ref: str) -> list[dict[str, Any]]:
    return [t for t in simulator.ledger.transactions() if t["reference_id"] == ref]


async def test_fifty_concurrent_ops_per_lane_reach_the_terminal_one_at_a_time() -> None:
    async with running_simulator(latency_ms=1) as simulator, aiohttp.ClientSession() as session:
        tpns = [new_tpn() for _ in range(10)]
        lanes = [
            lane_for(SpinDriver(f"lane-{i}", simulator.url, tpn, AUTHKEY, 5, session=session), queue_depth=64)
            for i, tpn in enumerate(tpns)
        ]
        async with running(*lanes):
            calls = [lane.execute(Sale(new_ref(), 100 + n)) for lane in lanes for n in range(50)]
            outcomes = await asyncio.gather(*calls)
        assert all(isinstance(o, Approved) for o in outcomes)
        assert len(simulator.ledger.transactions()) == 500
        assert simulator.ledger.max_concurrency() == {tpn: 1 for tpn in tpns}


@pytest.mark.parametrize("cents", [1052, 1053, 1058])
async def test_lost_answer_is_resolved_to_approved_with_one_ledger_entry(
    simulator: Simulator, make_driver: MakeDriver, cents: int
) -> None:
    lane, ref = lane_for(make_driver()), new_ref()
    async with running(lane):
        outcome = await lane.execute(Sale(ref, cents))
    assert isinstance(outcome, Approved)
    assert (outcome.reference_id, outcome.amount, outcome.requested_amount) == (ref, cents, cents)
    assert [(r["type"], r["status"], r["amount"]) for r in rows_for(simulator, ref)] == [("sale", "approved", cents)]


async def test_57_resolves_to_not_charged_after_the_timeout(simulator: Simulator, make_driver: MakeDriver) -> None:
    lane, ref = lane_for(make_driver()), new_ref()
    async with running(lane):
        outcome = await lane.execute(Sale(ref, 1057))
    assert isinstance(outcome, NotFound) and outcome.reference_id == ref
    assert rows_for(simulator, ref) == []


async def test_busy_54_is_retried_with_the_same_reference(simulator: Simulator, make_driver: MakeDriver) -> None:
    lane, ref = lane_for(make_driver()), new_ref()
    async with running(lane):
        assert isinstance(await lane.execute(Sale(ref, 1054)), Approved)
    assert len(rows_for(simulator, ref)) == 1


async def test_partial_56_is_returned_not_voided(simulator: Simulator, make_driver: MakeDriver) -> None:
    lane, ref = lane_for(make_driver()), new_ref()
    async with running(lane):
        outcome = await lane.execute(Sale(ref, 1056))
    assert isinstance(outcome, Approved) and outcome.partial and outcome.amount == 528
    assert [r["status"] for r in rows_for(simulator, ref)] == ["approved"]


@pytest.mark.parametrize(("cents", "code"), [(1051, "1015"), (1059, "1012")])
async def test_declines_are_final(simulator: Simulator, make_driver: MakeDriver, cents: int, code: str) -> None:
    lane = lane_for(make_driver())
    async with running(lane):
        outcome = await lane.execute(Sale(new_ref(), cents))
    assert isinstance(outcome, Declined) and outcome.status_code == code


async def test_caller_timeout_keeps_the_sale_and_inquiry_joins_it(
    simulator: Simulator, make_driver: MakeDriver
) -> None:
    lane, ref = lane_for(make_driver()), new_ref()
    async with running(lane):
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(lane.execute(Sale(ref, 1052)), 0.1)
        assert lane.in_flight
        outcome = await lane.execute(Inquire(ref))
        assert isinstance(outcome, Approved) and outcome.reference_id == ref
        void = await lane.execute(Void(ref))
        assert isinstance(void, Voided)
        assert isinstance(await lane.execute(Refund(new_ref(), 200)), Approved)
    assert [r["status"] for r in rows_for(simulator, ref)] == ["voided"]


async def test_offline_while_inquiring_blocks_until_the_terminal_answers(
    simulator: Simulator, make_driver: MakeDriver
) -> None:
    tpn, ref = new_tpn(), new_ref()
    lane = lane_for(make_driver(tpn=tpn))
    async with running(lane):
        sale = asyncio.create_task(lane.execute(Sale(ref, 1052)))
        await asyncio.sleep(0.1)
        simulator.set_offline(tpn)  # drops the held connection: outcome unknown, terminal unreachable
        await asyncio.sleep(0.2)
        assert not sale.done() and lane.state == "offline"
        simulator.set_offline(tpn, False)
        outcome = await sale
    assert isinstance(outcome, Approved) and outcome.reference_id == ref
    assert len(rows_for(simulator, ref)) == 1 and lane.state == "online"
