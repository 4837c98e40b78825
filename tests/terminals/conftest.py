"""Shared fixtures for the terminal tests: an in-process simulator and fast drivers."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from gatewayd.terminals.simulator import Simulator, running_simulator
from gatewayd.terminals.spin.driver import SpinDriver

from .helpers import AUTHKEY, MARGIN_S, TIMEOUT_S, new_tpn

MakeDriver = Callable[..., SpinDriver]


@pytest.fixture
async def simulator() -> AsyncIterator[Simulator]:
    """A simulator on 127.0.0.1, any free port, with a short slow-approval delay."""
    async with running_simulator(slow_s=0.2) as simulator:
        yield simulator


@pytest.fixture
async def make_driver(simulator: Simulator) -> AsyncIterator[MakeDriver]:
    """Drivers against the simulator with small timeouts; each gets a fresh TPN unless given one."""
    drivers: list[SpinDriver] = []

    def make(terminal_id: str | None = None, tpn: str | None = None, **kwargs: Any) -> SpinDriver:
        tpn = tpn or new_tpn()
        settings: dict[str, Any] = {"http_margin_s": MARGIN_S, "status_timeout_s": 2.0, **kwargs}
        driver = SpinDriver(terminal_id or f"t-{tpn}", simulator.url, tpn, AUTHKEY, TIMEOUT_S, **settings)
        drivers.append(driver)
        return driver

    yield make
    for driver in drivers:
        await driver.aclose()
