"""The health monitor: offline detection, thresholds, idle-only checks, one write per sweep, scale, logs."""

from __future__ import annotations

import asyncio
import itertools
import logging
from datetime import UTC, datetime
from typing import Any

import pytest

from gatewayd.terminals.health import HealthMonitor, Row
from gatewayd.terminals.lane import Lane, Sale
from gatewayd.terminals.outcomes import Approved, Health, Offline
from gatewayd.terminals.simulator import Simulator

from .conftest import MakeDriver
from .helpers import FakeClock, ScriptedDriver, fast_sleep, new_ref, new_tpn, running


class Writes:
    """Collects what the monitor writes: one list of rows per call."""

    def __init__(self) -> None:
        self.calls: list[list[Row]] = []

    async def __call__(self, rows: list[Row]) -> None:
        self.calls.append(list(rows))


def monitor_for(lanes: list[Lane], clock: FakeClock, writes: Writes, **kw: Any) -> HealthMonitor:
    settings: dict[str, Any] = {
        "write": writes,
        "clock": clock,
        "sleep": clock.sleep,
        "rand": lambda: 1.0,
        "confirm_delay_s": 0.0,
        **kw,
    }
    return HealthMonitor(lanes, 10.0, **settings)


def scripted_lane(name: str, clock: FakeClock, health: list[Any], **scripts: list[Any]) -> Lane:
    driver = ScriptedDriver(clock, health=health, **scripts)
    driver.terminal_id = name  # type: ignore[misc]
    return Lane(name, driver, clock=clock, sleep=clock.sleep)


async def test_offline_flips_within_one_sweep_and_back_after_online(
    simulator: Simulator, make_driver: MakeDriver
) -> None:
    clock, writes = FakeClock(), Writes()
    tpns = [new_tpn(), new_tpn()]
    lanes = [Lane(f"t{i}", make_driver(f"t{i}", tpn=tpn)) for i, tpn in enumerate(tpns)]
    monitor = monitor_for(lanes, clock, writes, offline_backoff_cap_s=60.0)
    async with running(*lanes):
        assert {row[:2] for row in await monitor.sweep()} == {("t0", "online"), ("t1", "online")}
        simulator.set_offline(tpns[0])
        rows = await monitor.sweep()
        assert [(r[0], r[1], r[3]) for r in rows if r[0] == "t0"] == [("t0", "offline", "terminal offline")]
        assert lanes[0].state == "offline" and monitor.status("t0") == "offline" and lanes[1].state == "online"
        simulator.set_offline(tpns[0], False)
        clock.now += 60.0  # the offline backoff has run out
        rows = await monitor.sweep()
        assert ("t0", "online") in {row[:2] for row in rows} and lanes[0].state == "online"
    assert len(writes.calls) == 3  # exactly one write per sweep
    for call in writes.calls:
        for terminal_id, state, checked_at, error in call:
            assert isinstance(terminal_id, str) and state in ("online", "offline")
            assert checked_at.tzinfo is UTC and (error is None) == (state == "online")
    assert lanes[0].last_health_check is not None and lanes[0].last_health_error is None


async def test_the_sweeper_task_notices_an_outage_in_real_time(simulator: Simulator, make_driver: MakeDriver) -> None:
    tpn, writes = new_tpn(), Writes()
    lane = Lane("rt", make_driver("rt", tpn=tpn))
    monitor = HealthMonitor([lane], 0.05, write=writes, confirm_delay_s=0.0, offline_backoff_cap_s=0.1)
    async with running(lane, monitor):
        await wait_for_state(lane, "online")
        simulator.set_offline(tpn)
        await wait_for_state(lane, "offline")
        simulator.set_offline(tpn, False)
        await wait_for_state(lane, "online")
    assert all(len(call) >= 1 for call in writes.calls)


async def wait_for_state(lane: Lane, state: str, within_s: float = 2.0) -> None:
    async with asyncio.timeout(within_s):
        while lane.state != state:  # noqa: ASYNC110 - polling the observable state is the point
            await asyncio.sleep(0.01)


async def test_an_online_terminal_needs_consecutive_failures_to_go_offline() -> None:
    clock, writes = FakeClock(), Writes()
    blip = scripted_lane("blip", clock, [Health(state="online"), Health(state="offline"), Health(state="online")])
    down = scripted_lane("down", clock, [Health(state="online"), Health(state="offline")])
    fresh = scripted_lane("fresh", clock, [Health(state="offline")])
    monitor = monitor_for([blip, down, fresh], clock, writes, failure_threshold=2)
    async with running(blip, down, fresh):
        await monitor.sweep()
        await monitor.sweep()
    assert (blip.state, down.state, fresh.state) == ("online", "offline", "offline")
    assert blip.driver.count("health") == 3  # type: ignore[attr-defined]
    assert down.driver.count("health") == 3  # type: ignore[attr-defined]


async def test_offline_terminals_are_rechecked_with_capped_backoff() -> None:
    clock, writes = FakeClock(), Writes()
    lane = scripted_lane("down", clock, [Health(state="offline")])
    monitor = monitor_for([lane], clock, writes, offline_backoff_cap_s=40.0)
    checks: list[float] = []
    async with running(lane):
        for _ in range(60):
            before = lane.driver.count("health")  # type: ignore[attr-defined]
            await monitor.sweep()
            if lane.driver.count("health") > before:  # type: ignore[attr-defined]
                checks.append(clock.now)
            clock.now += 10.0
    gaps = [b - a for a, b in itertools.pairwise(checks)]
    assert gaps[:3] == [20.0, 40.0, 40.0] and max(gaps) == 40.0


async def test_a_lane_running_a_transaction_is_not_checked() -> None:
    clock, writes = FakeClock(), Writes()
    lane = scripted_lane("busy", clock, [Health(state="online")], sale=[Offline(status_code="2001")])
    gate = asyncio.Event()
    lane.driver.gate = gate  # type: ignore[attr-defined]
    monitor = monitor_for([lane], clock, writes)
    async with running(lane):
        sale = asyncio.create_task(lane.execute(Sale(new_ref(), 100)))
        await asyncio.sleep(0.01)
        assert lane.in_flight
        assert await monitor.sweep() == []
        assert writes.calls == []
        gate.set()
        assert isinstance(await sale, Offline)
        assert lane.state == "offline"  # the transaction's own outcome is evidence
    assert lane.driver.count("health") == 0  # type: ignore[attr-defined]


async def test_transaction_outcomes_update_the_lane_state() -> None:
    clock = FakeClock()
    lane = scripted_lane(
        "t",
        clock,
        [Health(state="online")],
        sale=[Offline(), Approved(reference_id="r", amount=1, requested_amount=1)],
    )
    async with running(lane):
        await lane.execute(Sale("a", 1))
        assert lane.state == "offline"
        await lane.execute(Sale("r", 1))
        assert lane.state == "online"


async def test_check_now_checks_and_writes_one_row() -> None:
    clock, writes = FakeClock(), Writes()
    lane = scripted_lane("t", clock, [Health(state="offline", message="cable")])
    monitor = monitor_for([lane], clock, writes)
    async with running(lane):
        assert await monitor.check_now("t") == "offline"
    assert [[(r[0], r[1], r[3]) for r in call] for call in writes.calls] == [[("t", "offline", "cable")]]


async def test_a_flapping_terminal_warns_once_per_outage_then_debug(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="gatewayd.terminals.health")
    clock, writes = FakeClock(), Writes()
    answers = [Health(state="online")] + [Health(state="offline")] * 4 + [Health(state="online")]
    answers += [Health(state="offline")] * 2 + [Health(state="online")]
    lane = scripted_lane("flappy", clock, answers)
    monitor = monitor_for([lane], clock, writes, failure_threshold=1, offline_backoff_cap_s=10.0)
    async with running(lane):
        for _ in range(7):
            await monitor.sweep()
            clock.now += 10.0
    records = [(r.levelname, r.getMessage()) for r in caplog.records if "flappy" in r.getMessage()]
    warnings = [m for level, m in records if level == "WARNING"]
    assert warnings == ["terminal flappy offline: offline"]
    assert any(level == "DEBUG" and "still offline" in m for level, m in records)
    assert any(level == "DEBUG" and "offline" in m and "still" not in m for level, m in records)  # 2nd outage


async def test_ten_thousand_style_sweep_uses_bounded_concurrency_and_one_write() -> None:
    clock, writes = FakeClock(), Writes()
    running_now = peak = 0

    async def slow_health() -> Health:
        nonlocal running_now, peak
        running_now += 1
        peak = max(peak, running_now)
        await asyncio.sleep(0.001)
        running_now -= 1
        return Health(state="online")

    class Driver(ScriptedDriver):
        async def health(self) -> Health:
            return await slow_health()

    lanes = [Lane(f"t{i}", Driver(clock, health=[Health(state="online")])) for i in range(2000)]
    monitor = monitor_for(lanes, clock, writes, concurrency=64)
    async with running(*lanes):
        rows = await monitor.sweep()
    assert len(rows) == 2000 and len(writes.calls) == 1
    assert 1 < peak <= 64
    assert all(isinstance(r[2], datetime) for r in rows)


async def test_an_unhealthy_write_does_not_stop_the_monitor(simulator: Simulator, make_driver: MakeDriver) -> None:
    async def broken(rows: list[Row]) -> None:
        raise RuntimeError("database away")

    lane = Lane("w", make_driver("w"), sleep=fast_sleep)
    monitor = HealthMonitor([lane], 10.0, write=broken)
    async with running(lane):
        assert len(await monitor.sweep()) == 1
        assert len(await monitor.sweep()) == 1  # nothing recorded as written: rows keep coming
