"""Lane policy against a scripted driver on a virtual clock: busy, inquiry, deadlines, cancellation, queue."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gatewayd.errors import TerminalBusy, TerminalError
from gatewayd.retry import backoff_s
from gatewayd.terminals.lane import Capture, HealthCheck, Inquire, Lane, Sale, Settle, Void
from gatewayd.terminals.outcomes import (
    Approved,
    Busy,
    Declined,
    Health,
    NotFound,
    Offline,
    SettleResult,
    Unknown,
    Voided,
)

from .helpers import FakeClock, ScriptedDriver, running


def approved(ref: str = "r1", amount: int = 500, **kw: Any) -> Approved:
    return Approved(reference_id=ref, amount=amount, requested_amount=amount, **kw)


def make_lane(driver: ScriptedDriver, clock: FakeClock, **kw: Any) -> Lane:
    return Lane("fake-1", driver, clock=clock, sleep=clock.sleep, rand=lambda: 1.0, **kw)


def test_backoff_is_capped_exponential_with_full_jitter() -> None:
    assert [backoff_s(n, 0.5, 30.0, lambda: 1.0) for n in range(8)] == [0.5, 1, 2, 4, 8, 16, 30, 30]
    assert backoff_s(3, 0.5, 30.0, lambda: 0.0) == 0.0
    assert backoff_s(10_000, 0.5, 30.0, lambda: 0.5) == 15.0


async def test_busy_waits_the_advised_delay_and_resends_the_same_reference() -> None:
    clock = FakeClock()
    driver = ScriptedDriver(clock, sale=[Busy(retry_after_s=1.0, status_code="2008"), approved()])
    lane = make_lane(driver, clock)
    async with running(lane):
        assert await lane.execute(Sale("r1", 500)) == approved()
    assert driver.calls == [("sale", "r1"), ("sale", "r1")]
    assert clock.sleeps == [1.0]


async def test_busy_for_too_long_gives_busy_back_without_charging() -> None:
    clock = FakeClock()
    driver = ScriptedDriver(clock, sale=[Busy(retry_after_s=1.0)])
    lane = make_lane(driver, clock, busy_budget_s=3.0)
    async with running(lane):
        assert isinstance(await lane.execute(Sale("r1", 500)), Busy)
    assert driver.count("sale") == 4 and driver.count("status") == 0


async def test_unknown_is_resolved_by_inquiry_through_offline_and_busy() -> None:
    clock = FakeClock()
    driver = ScriptedDriver(
        clock,
        sale=[Unknown(reason="timeout")],
        status=[
            Offline(status_code="2001"),
            Offline(status_code="2001"),
            Busy(retry_after_s=7.0),
            Unknown(reason="reset"),
            approved(amount=250, status_code="0001"),
        ],
    )
    lane = make_lane(driver, clock, inquiry_base_s=0.5, inquiry_cap_s=4.0)
    states: list[str] = []
    async with running(lane):
        task = asyncio.create_task(lane.execute(Sale("r1", 500)))
        while not task.done():
            states.append(lane.state)
            await asyncio.sleep(0)
        outcome = await task
    assert isinstance(outcome, Approved)
    assert (outcome.amount, outcome.requested_amount, outcome.partial) == (250, 500, True)
    assert driver.count("sale") == 1 and driver.count("status") == 5  # never re-sent
    assert clock.sleeps == [0.5, 1.0, 4.0, 4.0]  # backoff, capped; busy advice capped too
    assert "offline" in states and lane.state == "online"


async def test_not_found_only_counts_after_the_transaction_timeout() -> None:
    clock = FakeClock()
    driver = ScriptedDriver(clock, sale=[Unknown(reason="reset")], status=[NotFound(reference_id="r1")])
    lane = make_lane(driver, clock, inquiry_base_s=0.01)
    start = clock.now
    async with running(lane):
        outcome = await lane.execute(Sale("r1", 500))
    assert isinstance(outcome, NotFound)
    assert clock.now >= start + driver.transaction_timeout_s
    assert driver.count("status") == 2


async def test_a_late_1012_is_inquired_a_quick_one_is_final() -> None:
    clock = FakeClock()

    def late_cancel() -> Declined:
        clock.now += 1.0  # the answer came when the terminal's own timeout ran out
        return Declined(reference_id="r1", status_code="1012", cancelled=True)

    driver = ScriptedDriver(clock, sale=[late_cancel, Declined(reference_id="r2", status_code="1012", cancelled=True)])
    driver.scripts["status"] = [approved()]
    lane = make_lane(driver, clock)
    async with running(lane):
        assert isinstance(await lane.execute(Sale("r1", 500)), Approved)
        assert isinstance(await lane.execute(Sale("r2", 500)), Declined)
    assert driver.count("status") == 1


async def test_void_is_resolved_until_the_terminal_shows_it_voided() -> None:
    clock = FakeClock()
    driver = ScriptedDriver(
        clock, void=[Unknown(reason="timeout")], status=[approved(), Voided(reference_id="r1", amount=500)]
    )
    lane = make_lane(driver, clock)
    async with running(lane):
        outcome = await lane.execute(Void("r1"))
    assert isinstance(outcome, Voided)


async def test_a_void_that_never_applied_is_reported_not_applied() -> None:
    clock = FakeClock()
    driver = ScriptedDriver(clock, void=[Unknown(reason="timeout")], status=[approved()])
    lane = make_lane(driver, clock)
    async with running(lane):
        outcome = await lane.execute(Void("r1"))
    assert isinstance(outcome, Declined) and outcome.message == "void not applied"


async def test_capture_resolution_reads_the_transaction_type() -> None:
    clock = FakeClock()
    driver = ScriptedDriver(
        clock,
        capture=[Unknown(reason="timeout")],
        status=[approved(transaction_type="auth"), approved(amount=400, transaction_type="capture")],
    )
    lane = make_lane(driver, clock)
    async with running(lane):
        outcome = await lane.execute(Capture("r1", 400))
    assert isinstance(outcome, Approved) and outcome.amount == 400


async def test_a_cancelled_caller_never_abandons_the_operation() -> None:
    clock = FakeClock()
    driver = ScriptedDriver(clock, sale=[approved()])
    driver.gate = asyncio.Event()
    lane = make_lane(driver, clock)
    async with running(lane):
        caller = asyncio.create_task(lane.execute(Sale("r1", 500)))
        await asyncio.sleep(0.01)
        assert lane.in_flight
        caller.cancel()
        with pytest.raises(asyncio.CancelledError):
            await caller
        joined = asyncio.create_task(lane.execute(Inquire("r1")))
        same = asyncio.create_task(lane.execute(Sale("r1", 500)))
        await asyncio.sleep(0.01)
        driver.gate.set()
        assert await joined == approved() and await same == approved()
        # Later askers get the kept result; nothing is sent again.
        assert await lane.execute(Inquire("r1")) == approved()
        assert await lane.execute(Sale("r1", 500)) == approved()
    assert driver.calls == [("sale", "r1")]


async def test_same_reference_with_another_amount_is_refused() -> None:
    clock = FakeClock()
    driver = ScriptedDriver(clock, sale=[approved()])
    lane = make_lane(driver, clock)
    async with running(lane):
        await lane.execute(Sale("r1", 500))
        with pytest.raises(TerminalError):
            await lane.execute(Sale("r1", 999))


async def test_full_queue_raises_terminal_busy_at_once_and_sends_nothing() -> None:
    clock = FakeClock()
    driver = ScriptedDriver(clock, sale=[approved()])
    driver.gate = asyncio.Event()
    lane = make_lane(driver, clock, queue_depth=2)
    async with running(lane):
        first = asyncio.create_task(lane.execute(Sale("a", 1)))
        await asyncio.sleep(0.01)  # taken by the owner task, in flight
        queued = [asyncio.create_task(lane.execute(Sale(r, 1))) for r in ("b", "c")]
        await asyncio.sleep(0.01)
        assert lane.queue_depth == 2
        with pytest.raises(TerminalBusy):
            await lane.execute(Sale("d", 1))
        assert driver.calls == [("sale", "a")]
        driver.gate.set()
        await asyncio.gather(first, *queued)
    assert [ref for _, ref in driver.calls] == ["a", "b", "c"]


async def test_stopping_the_owner_reports_unknown_for_the_sent_op_and_offline_for_queued() -> None:
    clock = FakeClock()
    driver = ScriptedDriver(clock, sale=[approved()])
    driver.gate = asyncio.Event()
    lane = make_lane(driver, clock)
    owner = asyncio.create_task(lane.run())
    sent = asyncio.create_task(lane.execute(Sale("a", 1)))
    await asyncio.sleep(0.01)
    queued = asyncio.create_task(lane.execute(Sale("b", 1)))
    await asyncio.sleep(0.01)
    owner.cancel()
    with pytest.raises(asyncio.CancelledError):
        await owner
    assert owner.cancelled()
    assert isinstance(await sent, Unknown)
    assert isinstance(await queued, Offline)
    with pytest.raises(TerminalError):
        await lane.execute(Sale("c", 1))


async def test_on_result_hook_and_non_money_ops() -> None:
    clock = FakeClock()
    seen: list[tuple[str, str]] = []
    driver = ScriptedDriver(
        clock,
        sale=[Declined(reference_id="r1", status_code="1015")],
        settle=[SettleResult(ok=True, batch="3")],
        health=[Health(state="online")],
    )
    lane = make_lane(driver, clock, on_result=lambda op, tag, seconds: seen.append((op, tag)))
    async with running(lane):
        await lane.execute(Sale("r1", 1))
        assert (await lane.execute(Settle())).batch == "3"
        assert (await lane.execute(HealthCheck())).state == "online"
    assert seen == [("sale", "declined"), ("settle", "ok"), ("healthcheck", "online")]
    assert lane.idle and not lane.in_flight and lane.queue_depth == 0
